"""Load test of ``OnnxSampler``: many threads share one session; every answer is checked against its seed.

    python tools/load_test_serving.py [export/mnist_ebm/sampler.onnx] [--threads 32] [--requests 640]

Each request asks for ``1..--max-n`` samples with its own seed. Before the run, a reference answer for every
seed is computed serially; during the run ``--threads`` threads (bounded by ``--seconds``) fire the requests
at one shared sampler. Reported: errors, answers that differ from the reference (a graph with
``noise="internal"`` draws fresh noise, so only its shapes and finiteness are checked), latency percentiles,
throughput, and the process's resident memory after the first and the last quarter of the requests (steady
memory: no growth with the request count). No server, no sockets: the sampler is called in-process.
"""

import argparse
import os
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from keras_shortrun.serving import OnnxSampler
from keras_shortrun.training import cpu_model

ROOT = Path(__file__).resolve().parents[1]


def resident_mb():
    """The process's resident set size in MB (Linux ``/proc``)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("VmRSS not found in /proc/self/status")


def load_test(path, threads=32, requests=640, max_n=4, seconds=120.0, seed=0):
    """Runs the load test; returns a dict of counts, latencies (ms), throughput and memory (MB)."""
    sampler = OnnxSampler(path)
    rng = np.random.default_rng(seed)
    plan = [(int(rng.integers(1, max_n + 1)), 1000 + i) for i in range(requests)]
    reference = {s: sampler.sample(n, seed=s) for n, s in plan} if sampler.deterministic else {}
    lock, done, latencies, errors, wrong, memory = threading.Lock(), [0], [], [], [], {}
    deadline = time.monotonic() + seconds

    def request(item):
        n, s = item
        if time.monotonic() > deadline:
            return
        start = time.perf_counter()
        try:
            out = sampler.sample(n, seed=s)
        except Exception as error:  # counted and reported, never silently dropped
            with lock:
                errors.append(f"seed {s}: {type(error).__name__}: {error}")
            return
        elapsed = time.perf_counter() - start
        ok = out.shape == (n, *sampler.sample_shape) and bool(np.all(np.isfinite(out)))
        if ok and sampler.deterministic:
            ok = np.array_equal(out, reference[s])
        with lock:
            latencies.append(elapsed)
            if not ok:
                wrong.append(s)
            done[0] += 1
            for quarter in (1, 4):
                if done[0] == requests * quarter // 4:
                    memory[quarter] = resident_mb()

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(request, plan))
    wall = time.perf_counter() - start
    memory.setdefault(4, resident_mb())  # cut short by the deadline
    memory.setdefault(1, memory[4])
    ms = sorted(1e3 * t for t in latencies)
    return {
        "graph": str(path), "threads": threads, "planned": requests, "completed": len(latencies),
        "errors": errors, "wrong": wrong, "checked_exactly": sampler.deterministic,
        "p50_ms": statistics.median(ms) if ms else None, "p99_ms": ms[int(0.99 * (len(ms) - 1))] if ms else None,
        "requests_per_s": len(latencies) / wall, "samples_per_s": sum(n for n, _ in plan[: len(latencies)]) / wall,
        "rss_first_quarter_mb": memory.get(1), "rss_end_mb": memory.get(4), "wall_s": wall,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("graphs", nargs="*", type=Path,
                        default=[ROOT / "export/mnist_ebm/sampler.onnx", ROOT / "export/mnist_lvm/generator.onnx"])
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--requests", type=int, default=640)
    parser.add_argument("--max-n", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=300.0, help="no request starts after this")
    args = parser.parse_args()
    print("| graph | threads | requests done / planned | errors | wrong answers | p50 ms | p99 ms | requests/s | "
          "RSS after 1/4 -> end (MB) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for path in args.graphs:
        r = load_test(path, args.threads, args.requests, args.max_n, args.seconds)
        check = "" if r["checked_exactly"] else " (shapes, finite)"
        print(f"| {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} | {r['threads']} | "
              f"{r['completed']} / {r['planned']} | {len(r['errors'])} | {len(r['wrong'])}{check} | "
              f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['requests_per_s']:.1f} | "
              f"{r['rss_first_quarter_mb']:.0f} -> {r['rss_end_mb']:.0f} |", flush=True)
        for error in r["errors"][:5]:
            print(f"  error: {error}")
    print(f"\nMachine: {cpu_model()}, {os.cpu_count()} cores; 1 to {args.max_n} samples per request.")


if __name__ == "__main__":
    main()
