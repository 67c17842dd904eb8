"""Training throughput of the short-run EBM: images/s of ``fit`` at K=100, and whether the input pipeline keeps up.

    python tools/bench_fit.py                      # 28x28x1 EnergyConvNet nf=32, batch 64, K=100, TF and JAX
    python tools/bench_fit.py --steps 5 --train-steps 2 --filters 4   # smoke test

For each Keras backend, in its own subprocess and on the same MNIST training images (``../shared/data``;
uniform noise images when the file is absent, which the output says):
(p) images/s of the input pipeline alone (``keras_shortrun.training.batches``: shuffle, repeat, batch,
prefetch), iterated as ``fit`` iterates it; (t) images/s of ``fit`` fed by that pipeline, and (n) fed by numpy
arrays already in memory (Keras's own adapter), both timed per batch by a callback after the first batch,
whose time (trace + compile + one step) is reported too. p/t is how many times faster the pipeline delivers
than training consumes; t/n near 1 means the pipeline costs training nothing.
"""

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

from machine import RESULT_PREFIX
from machine import run_worker_process

from keras_shortrun.training import cpu_model


def worker(args):
    """Times (p), (t) and (n) on the configured Keras backend; returns a result dict."""
    import keras
    import numpy as np

    from keras_shortrun import data
    from keras_shortrun.models import ShortRunEBM
    from keras_shortrun.training import batches

    try:
        x, _ = data.load("mnist", "train")
        source = "MNIST train (../shared/data)"
    except data.DataNotFoundError:
        x = np.random.default_rng(0).uniform(-1, 1, (6000, 28, 28, 1)).astype("float32")
        source = "uniform noise images (MNIST not found)"

    pipeline = batches(x, args.batch, seed=0)
    iterator = iter(pipeline)
    next(iterator)
    start = time.perf_counter()
    for _ in range(args.pipeline_batches):
        keras.ops.convert_to_numpy(next(iterator))
    pipeline_rate = args.pipeline_batches * args.batch / (time.perf_counter() - start)

    class BatchTimes(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            self.start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            times.append(time.perf_counter() - self.start)

    def train(fed_by):
        keras.utils.set_random_seed(0)
        model = ShortRunEBM.with_convnet(
            image_size=28, channels=1, filters=args.filters, steps=args.steps, clip=(-1.0, 1.0), seed=0
        )
        model.compile(optimizer=keras.optimizers.Adam(1e-4, beta_1=0.5))
        times.clear()
        count = args.train_steps + 1
        if fed_by == "pipeline":
            model.fit(batches(x, args.batch, seed=0), steps_per_epoch=count, epochs=1, verbose=0,
                      callbacks=[BatchTimes()])
        else:
            model.fit(x[: count * args.batch], batch_size=args.batch, shuffle=False, epochs=1, verbose=0,
                      callbacks=[BatchTimes()])
        return {"first_s": times[0], "rates": [args.batch / t for t in times[1:]]}

    times = []
    results = {"pipeline": pipeline_rate, "source": source, "keras": keras.__version__}
    for fed_by in ("pipeline", "numpy"):
        results[fed_by + "_fit"] = train(fed_by)
    return results


def run_worker(backend, args):
    arguments = ["--worker"]
    for flag in ("filters", "batch", "steps", "train_steps", "pipeline_batches"):
        arguments += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    return run_worker_process(Path(__file__).resolve(), arguments, backend, backend=backend)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--filters", type=int, default=32)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=100, help="K, Langevin steps per training iteration")
    parser.add_argument("--train-steps", type=int, default=5, help="timed training iterations per feed")
    parser.add_argument("--pipeline-batches", type=int, default=200)
    parser.add_argument("--backends", default="tensorflow,jax")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(RESULT_PREFIX + json.dumps(worker(args)), flush=True)
        return
    load = os.getloadavg()[0]
    print(f"\n## fit throughput: ShortRunEBM 28x28x1 nf={args.filters}, batch {args.batch}, K={args.steps}\n")
    print("images/s: median over the timed batches (min). (p) the input pipeline alone; (t) fit fed by it; "
          "(n) fit fed by in-memory numpy arrays.\n")
    print("| backend | (p) pipeline images/s | (t) fit images/s | (n) fit images/s, numpy | p/t | t/n | "
          "first batch s (trace + compile + step) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    sources = set()
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
        r = run_worker(backend, args)
        if isinstance(r, str):
            print(f"| {backend} | {r} |")
            continue
        sources.add(r["source"])
        t, n = (statistics.median(r[f]["rates"]) for f in ("pipeline_fit", "numpy_fit"))
        print(f"| {backend} | {r['pipeline']:.0f} | {t:.2f} ({min(r['pipeline_fit']['rates']):.2f}) | "
              f"{n:.2f} ({min(r['numpy_fit']['rates']):.2f}) | {r['pipeline'] / t:.0f} | {t / n:.2f} | "
              f"{r['pipeline_fit']['first_s']:.1f} |", flush=True)
    print(f"\nData: {', '.join(sorted(sources))}. {args.train_steps} timed iterations per feed after the first.")
    print(f"Machine: {cpu_model()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
          f"python {platform.python_version()}. Load average (1 min) before the run: {load:.2f}.")


if __name__ == "__main__":
    main()
