"""Exports zoo entries as ONNX: ``export/<entry>/<graph>.onnx`` and ``manifest.json`` for each.

    python tools/export_zoo.py                                  # every entry of an exportable family
    python tools/export_zoo.py --entries mnist_ebm celeba_lvm   # some (names or entry folders)
    python tools/export_zoo.py --verify                         # check existing exports against their manifests
    python tools/export_zoo.py --table                          # the docs/export.md table, from the manifests

The manifest (``keras_shortrun.export.artifacts``) records per graph K, the
opset, the inputs and outputs with shapes, the file's sha256, max |ONNX - Keras|
on a fixed input, and TensorFlow and onnxruntime timings on one batch.
``--verify`` recomputes the parity from the entry and the file and compares it
with the manifest (sha256, graph description, error within 1e-4 and as recorded).
SavedModels are not written here: ``keras_shortrun.export.to_saved_model`` makes
them on demand.
"""

import argparse
import json
import sys
from pathlib import Path

from keras_shortrun.training import cpu_model

ROOT = Path(__file__).resolve().parents[1]


def exportable_entries():
    """Registered zoo entries whose family ``keras_shortrun.export`` knows, sorted."""
    from keras_shortrun import zoo
    from keras_shortrun.export import FAMILIES

    families = {cls.__name__ for cls in FAMILIES}
    return sorted(name for family, presets in zoo.PRESETS.items() if family in families for name in presets)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", nargs="+", default=None, help="zoo names or entry folders (default: all)")
    parser.add_argument("--out", default=str(ROOT / "export"), help="folder that receives <entry>/")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: keras_shortrun's)")
    parser.add_argument("--timing-batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per runtime (median)")
    parser.add_argument("--verify", action="store_true", help="verify existing exports instead of writing")
    parser.add_argument("--table", action="store_true", help="print the table of existing manifests")
    args = parser.parse_args(argv)
    rows = []
    if args.table:
        for entry in args.entries or exportable_entries():
            manifest = json.loads((Path(args.out) / Path(entry).name / "manifest.json").read_text())
            rows.extend(manifest_rows(manifest))
        print_table(HEADER, rows)
        return 0

    from keras_shortrun import export
    from keras_shortrun import zoo

    for entry in args.entries or exportable_entries():
        name, model = Path(entry).name, zoo.load(entry)
        out_dir = Path(args.out) / name
        if args.verify:
            for graph, error in export.verify_manifest(model, out_dir).items():
                rows.append([name, graph, f"{error:.2g}", "verified"])
            continue
        manifest = export.export_entry(
            model, out_dir, entry=name, opset=args.opset or export.DEFAULT_OPSET, timing_batch=args.timing_batch,
            repeats=args.repeats, extra={"machine": cpu_model()},
        )
        rows.extend(manifest_rows(manifest))
    print_table(["entry", "graph", "max |ONNX - Keras|", "status"] if args.verify else HEADER, rows)
    return 0


HEADER = ["entry", "graph", "K", "MB", "max |ONNX - Keras|", "one step", "Keras under rounding", "TF ms", "ORT ms",
          "ORT / TF"]


def manifest_rows(manifest):
    """One table row per graph of a manifest (columns ``HEADER``; the chaotic-chain numbers where recorded)."""
    rows = []
    for graph, info in manifest["graphs"].items():
        timing = info["timing"]
        chaos = [f"{info[key]:.2g}" if key in info else "" for key in ("one_step_max_abs_error",
                                                                         "keras_rounding_sensitivity")]
        rows.append([manifest["entry"], graph, info["steps"] or "", f"{info['bytes'] / 1e6:.2f}",
                     f"{info['max_abs_error']:.2g}", *chaos, f"{timing['tensorflow_s'] * 1e3:.1f}",
                     f"{timing['onnxruntime_s'] * 1e3:.1f}", f"{timing['onnxruntime_over_tensorflow']:.2f}"])
    return rows


def print_table(header, rows):
    """A Markdown table (pastes into docs/export.md)."""
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for row in rows:
        print("| " + " | ".join(str(cell) for cell in row) + " |")


if __name__ == "__main__":
    sys.exit(main())
