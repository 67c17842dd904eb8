"""TensorFlow vs onnxruntime on the same exported graph and batch, side by side.

    python tools/bench_export.py                                   # the default set of entries and graphs
    python tools/bench_export.py --entries mnist_ebm celeba_lvm:inference --batch 16 --repeats 3
    python tools/bench_export.py --entries runs/my_entry:chain --steps 10 --threads 2

Each ``entry[:graph]`` (default graph: the family's first, e.g. the EBM's
sampler) is exported twice with ``keras_shortrun.export.to_onnx`` (noise as an
input): as tf2onnx writes it (``optimize=False``) and with this project's graph
rewrites (``keras_shortrun.export.onnx_passes``). Both are timed on one fixed
batch beside TensorFlow running the very function that was converted
(``tf.function``, while loop): medians of ``--repeats`` rounds after a warm-up
call, each round calling every runtime once in turn. onnxruntime runs at its
``all`` optimisation level (``--optimizations`` adds levels for the rewritten
graph). Ratios are ORT / TF: below 1, onnxruntime is faster. ``--threads`` sets
onnxruntime's intra-op threads (0: its default); TensorFlow's follow
``TF_NUM_INTRAOP_THREADS``. ``--profile N`` also prints, per entry, the N
operator types that take most of onnxruntime's kernel time in the rewritten
graph (one profiled call).
"""

import argparse
import collections
import json
import sys
import tempfile
from pathlib import Path

from export_zoo import print_table

from keras_shortrun.training import cpu_model

LEVELS = ("disable", "basic", "extended", "all")
DEFAULT_ENTRIES = ("mnist_ebm", "celeba_ebm", "mnist_lvm:inference", "celeba_lvm:reconstruction",
                   "mnist_classifier")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", nargs="+", default=list(DEFAULT_ENTRIES),
                        help="zoo names or entry folders, each optionally :graph")
    parser.add_argument("--steps", type=int, default=None, help="K of the exported chain (default: the entry's)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--optimizations", nargs="+", choices=LEVELS, default=["all"],
                        help="onnxruntime levels for the rewritten graph")
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: default)")
    parser.add_argument("--profile", type=int, default=0, help="print the N costliest operator types per entry")
    args = parser.parse_args(argv)

    from keras_shortrun import export
    from keras_shortrun import zoo
    from keras_shortrun.export import check_inputs
    from keras_shortrun.export.artifacts import time_graph

    rows, profiles = [], []
    for item in args.entries:
        entry, _, graph_name = item.partition(":")
        model = zoo.load(entry)
        graph = export.build_graph(model, graph_name or None, steps=args.steps)
        with tempfile.TemporaryDirectory() as tmp:
            paths = {"tf2onnx": Path(tmp) / "tf2onnx.onnx", "ours": Path(tmp) / "ours.onnx"}
            for label, path in paths.items():
                export.to_onnx(model, path, graph=graph.graph, steps=args.steps, optimize=label == "ours")
            timings = time_graph(graph, paths, args.batch, args.repeats, sorted(set(args.optimizations) | {"all"}),
                                 args.threads)
            if args.profile:
                profiles.append((item, operator_times(paths["ours"], check_inputs(graph, batch=args.batch),
                                                      args.threads, tmp)))
        tf_ms = timings["tensorflow_s"] * 1e3
        row = [Path(entry).name, graph.graph, graph.steps or "", args.batch, f"{tf_ms:.1f}"]
        for label, level in [("tf2onnx", "all")] + [("ours", level) for level in args.optimizations]:
            ort_ms = timings[f"onnxruntime_{label}_{level}_s"] * 1e3
            row += [f"{ort_ms:.1f}", f"{ort_ms / tf_ms:.2f}"]
        rows.append(row)
    header = ["entry", "graph", "K", "batch", "TF ms", "ORT, tf2onnx graph ms", "ORT/TF"]
    for level in args.optimizations:
        header += [f"ORT, rewritten ({level}) ms", "ORT/TF"]
    print(f"{cpu_model()}; onnxruntime threads: {args.threads or 'default'}; medians of {args.repeats} rounds")
    print_table(header, rows)
    for item, seconds in profiles:
        total = sum(seconds.values())
        print(f"\n{item}, rewritten graph: onnxruntime kernel time by operator (one call, {total * 1e3:.0f} ms)")
        print_table(["operator", "ms", "share"], [[op, f"{t * 1e3:.1f}", f"{t / total:.1%}"]
                                                 for op, t in seconds.most_common(args.profile)])
    return 0


def operator_times(path, inputs, threads, folder):
    """Seconds of onnxruntime kernel time per operator type over one profiled call (after a warm-up call),
    nodes inside the chain's ``Loop`` counted and the ``Loop`` itself not."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(folder) / "profile")
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    session.run(None, inputs)
    session.run(None, inputs)
    events = json.loads(Path(session.end_profiling()).read_text())
    seconds = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time") and event["args"]["op_name"] != "Loop":
            seconds[event["args"]["op_name"]] += event["dur"] / 2e6  # microseconds over the two calls
    return seconds


if __name__ == "__main__":
    sys.exit(main())
