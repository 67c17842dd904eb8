"""TensorFlow vs onnxruntime on the same exported graph and batch, side by side.

    python tools/bench_export.py                                   # mnist_ebm sampler, batch 64, K of the entry
    python tools/bench_export.py --entries mnist_ebm celeba_lvm --batch 16 --repeats 3
    python tools/bench_export.py --entries runs/my_entry --graph chain --steps 10 --threads 2

For each entry the graph (default: the family's first, e.g. the EBM's sampler)
is exported once with ``keras_shortrun.export.to_onnx`` (noise as an input) and
timed on one fixed batch: TensorFlow runs the very function that was converted
(``tf.function``, while loop), onnxruntime the ``.onnx`` file at each graph
optimisation level of ``--optimizations``. Medians of ``--repeats`` calls after
a warm-up call; ratios are ORT / TF (below 1: onnxruntime is faster).
``--threads`` sets onnxruntime's intra-op threads (0: its default); TensorFlow's
follow ``TF_NUM_INTRAOP_THREADS``.
"""

import argparse
import sys
import tempfile
from pathlib import Path

from export_zoo import print_table
from machine import cpu_model

LEVELS = ("disable", "basic", "extended", "all")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", nargs="+", default=["mnist_ebm"], help="zoo names or entry folders")
    parser.add_argument("--graph", default=None, help="graph to time (default: the family's first)")
    parser.add_argument("--steps", type=int, default=None, help="K of the exported chain (default: the entry's)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--optimizations", nargs="+", choices=LEVELS, default=["basic", "all"])
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: default)")
    args = parser.parse_args(argv)

    from keras_shortrun import export
    from keras_shortrun import zoo
    from keras_shortrun.export.artifacts import time_graph

    rows = []
    for entry in args.entries:
        model = zoo.load(entry)
        graph = export.build_graph(model, args.graph, steps=args.steps)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{graph.graph}.onnx"
            export.to_onnx(model, path, graph=graph.graph, steps=args.steps)
            timings = time_graph(graph, path, args.batch, args.repeats, args.optimizations, args.threads)
        tf_ms = timings["tensorflow_s"] * 1e3
        row = [Path(entry).name, graph.graph, graph.steps or "", args.batch, f"{tf_ms:.1f}"]
        for level in args.optimizations:
            ort_ms = timings[f"onnxruntime_{level}_s"] * 1e3
            row += [f"{ort_ms:.1f}", f"{ort_ms / tf_ms:.2f}"]
        rows.append(row)
    header = ["entry", "graph", "K", "batch", "TF ms"]
    for level in args.optimizations:
        header += [f"ORT ({level}) ms", f"ORT ({level}) / TF"]
    print(f"{cpu_model()}; onnxruntime threads: {args.threads or 'default'}; medians of {args.repeats}")
    print_table(header, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
