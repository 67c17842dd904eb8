"""How the time of one Langevin step grows with batch and resolution: a PNG from ``bench_chain.py --json`` runs.

    python tools/bench_chain.py --grid --batches 1 16 64 --json docs/bench_chain_grid.json
    python tools/plot_scaling.py docs/bench_chain_grid.json [more.json ...] --out docs/scaling.png

Left: ms per step of our chain (the library's default loop form) and of the paper's eager PyTorch loop against
the batch, log-log, one colour per energy net (28x28 to 64x64). Right: the chain's achieved GFLOP/s against the
batch, with the machine's float32 matmul rate of the run as a line. Needs matplotlib (the ``bench`` extra).
"""

import argparse
import json
import statistics
from pathlib import Path

from bench_chain import chain_step_flops

STYLES = {"tensorflow": "-", "jax": "--", "torch": ":"}
MARKERS = {"tensorflow": "o", "jax": "s", "torch": "^"}


def series(documents):
    """``{(net label, runtime): [(batch, ms per step, GFLOP/s), ...]}`` from bench_chain JSON documents."""
    points = {}
    for document in documents:
        for run in document["runs"]:
            widths = "-".join(str(layer["filters"]) for layer in run["layers"][:-1])
            net = f"{run['image_size']}x{run['image_size']}x{run['channels']} ({widths})"
            flops = chain_step_flops(run["layers"], run["image_size"], run["channels"], run["batch"])
            for runtime, result in run["results"].items():
                if not isinstance(result, dict):
                    continue
                ms = statistics.median(result["eager_ms"] if runtime == "torch" else result["chain_ms"])
                points.setdefault((net, runtime), []).append((run["batch"], ms, flops / ms / 1e6))
    return {key: sorted(values) for key, values in points.items()}


def plot(documents, out):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    points = series(documents)
    nets = sorted({net for net, _ in points}, key=lambda label: (int(label.split("x")[0]), label))
    colours = {net: plt.get_cmap("tab10")(i) for i, net in enumerate(nets)}
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    for (net, runtime), values in sorted(points.items()):
        batches, ms, gflops = zip(*values)
        style = dict(color=colours[net], linestyle=STYLES[runtime], marker=MARKERS[runtime], markersize=4)
        left.plot(batches, ms, label=f"{net}, {runtime}", **style)
        if runtime != "torch":
            right.plot(batches, gflops, **style)
    peaks = [document["peak_gflops"] for document in documents if document.get("peak_gflops")]
    if peaks:
        right.axhline(statistics.median(peaks), color="grey", linewidth=1)
        right.annotate("float32 matmul rate (numpy)", (1, statistics.median(peaks)), textcoords="offset points",
                       xytext=(2, -12), color="grey", fontsize=8)
    for axis in (left, right):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("batch")
        axis.grid(True, which="both", alpha=0.3)
    left.set_yscale("log")
    left.set_ylabel("ms per Langevin step")
    left.set_title("Time per step (solid TF, dashed JAX, dotted PyTorch eager)", fontsize=10)
    right.set_ylabel("achieved GFLOP/s of the chain")
    right.set_title("Throughput of our chain", fontsize=10)
    left.legend(fontsize=7, ncol=1, loc="upper left")
    machine = documents[0].get("machine", "unknown machine")
    figure.suptitle(f"Langevin step scaling, K={documents[0]['steps']}, {machine}", fontsize=10)
    figure.tight_layout()
    figure.savefig(out, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="bench_chain.py --json files")
    parser.add_argument("--out", type=Path, default=Path("docs/scaling.png"))
    args = parser.parse_args()
    plot([json.loads(path.read_text()) for path in args.runs], args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
