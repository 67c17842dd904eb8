"""Export artifacts of one model: its ONNX graphs and a ``manifest.json`` with parity and timings.

``export_entry(model, out_dir)`` writes ``out_dir/<graph>.onnx`` for every graph
of the model's family (noise as inputs, so the graphs are deterministic) and
``out_dir/manifest.json``::

    {"entry": ..., "family": ..., "opset": 17, "keras_shortrun": "0.1.0",
     "check": {"batch": 2, "seed": 0, "tolerance": 0.0001},
     "graphs": {"sampler": {"file": "sampler.onnx", "sha256": ..., "bytes": ...,
                            "steps": 50, "noise": "input", "chains": null,
                            "inputs": [{"name": "z0", "shape": [null, 28, 28, 1], "distribution": ...}, ...],
                            "outputs": [...], "rewrites": {...}, "max_abs_error": 1.2e-07,
                            "timing": {"batch": 16, "repeats": 5, "tensorflow_s": ..., "onnxruntime_s": ...,
                                       "onnxruntime_over_tensorflow": ...}}, ...}}

``max_abs_error`` is max |ONNX - Keras| on ``check_inputs`` (every input drawn
with the seed); ``verify_manifest`` recomputes it from the model and the file.
Chains that amplify float32 rounding also record ``keras_rounding_sensitivity`` and
``one_step_max_abs_error`` (``keras_shortrun.export.tensorflow.parity_report``).
"""

import fnmatch
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from keras_shortrun import __version__
from keras_shortrun.export.graphs import FAMILIES
from keras_shortrun.export.graphs import build_graph
from keras_shortrun.export.tensorflow import CHECK_BATCH
from keras_shortrun.export.tensorflow import CHECK_SEED
from keras_shortrun.export.tensorflow import DEFAULT_OPSET
from keras_shortrun.export.tensorflow import TOLERANCE
from keras_shortrun.export.tensorflow import ExportError
from keras_shortrun.export.tensorflow import check_inputs
from keras_shortrun.export.tensorflow import check_replaceable_onnx
from keras_shortrun.export.tensorflow import parity_report
from keras_shortrun.export.tensorflow import tensorflow_runner
from keras_shortrun.export.tensorflow import to_onnx
from keras_shortrun.hashing import sha256_file
from keras_shortrun.saving import parse_json
from keras_shortrun.saving import read_inside
from keras_shortrun.validation import check_positive_int

MANIFEST = "manifest.json"
GRAPH_KEYS = ("steps", "noise", "chains", "inputs", "outputs")  # what verify_manifest rebuilds from the model
PARITY_KEYS = ("max_abs_error", "keras_rounding_sensitivity", "one_step_max_abs_error")  # parity_report's
MANIFEST_KEYS = frozenset({"entry", "family", "opset", "keras_shortrun", "check", "graphs"})  # what export_entry writes


def export_files():
    """Glob patterns of what ``export_entry`` writes into a folder: the manifest, every family's graph files,
    and the staged copies of both (``.<name>.<random>.partial``) that a killed run may leave behind."""
    names = [MANIFEST, *sorted({f"{graph}.onnx" for graphs in FAMILIES.values() for graph in graphs})]
    return tuple(names) + tuple(f".{name}.*.partial" for name in names)


def _is_manifest(manifest):
    return MANIFEST_KEYS <= set(manifest) and isinstance(manifest["graphs"], dict)


def check_export_folder(out_dir):
    """Raises ``FileExistsError`` unless ``export_entry`` may write into ``out_dir`` without replacing a
    user's file: ``out_dir`` is absent or an empty folder, or holds nothing but files named in
    ``export_files()`` (plain files, no links), its ``manifest.json`` (if any) is one that ``export_entry``
    wrote, and every ``.onnx`` file is a graph that ``to_onnx`` wrote. Checked before any work."""
    out_dir = Path(out_dir)
    if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
        raise FileExistsError(f"{out_dir} exists and is not a folder: refusing to replace it with an export.")
    if not out_dir.exists():
        return
    patterns = export_files()
    foreign = sorted(p.name for p in out_dir.iterdir() if p.is_symlink() or not p.is_file()
                     or not any(fnmatch.fnmatchcase(p.name, pattern) for pattern in patterns))
    if foreign:
        raise FileExistsError(f"{out_dir} holds files that are not part of a keras_shortrun export "
                              f"({', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}): refusing to export "
                              "into it. Choose a new folder, or move them yourself.")
    if (out_dir / MANIFEST).exists():
        try:
            ours = _is_manifest(parse_json(read_inside(out_dir, MANIFEST), out_dir / MANIFEST))
        except (OSError, ValueError):
            ours = False
        if not ours:
            raise FileExistsError(f"{out_dir / MANIFEST} is not a manifest written by keras_shortrun: refusing to "
                                  "replace it. Choose a new folder, or remove it yourself.")
    for graph in sorted(out_dir.glob("*.onnx")):
        check_replaceable_onnx(graph, overwrite=True)


def _atomic_write_text(path, text):
    """``text`` written to a staged file beside ``path`` and renamed over it: ``path`` holds the old text or
    the new one, never a part, and a hard link to the old file keeps the old text."""
    handle, staged = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as f:
            f.write(text)
        os.chmod(staged, 0o644)
        os.replace(staged, path)
    finally:
        Path(staged).unlink(missing_ok=True)


def side_by_side_seconds(calls, repeats):
    """Median wall time of each of ``calls`` (``{name: callable}``) over ``repeats`` rounds, after one
    warm-up call each (compilation, caches); every round calls each once, in turn, so that a slow spell of
    the machine falls on all of them alike. Returns ``{name: seconds}``."""
    times = {name: [] for name in calls}
    for call in calls.values():
        call()
    for _ in range(check_positive_int(repeats, "repeats")):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def onnxruntime_session(path, providers=("CPUExecutionProvider",), optimization="all", threads=0):
    """An onnxruntime session with a graph-optimisation level (``"disable"``, ``"basic"``, ``"extended"``,
    ``"all"``) and ``threads`` intra-op threads (0: onnxruntime's default)."""
    import onnxruntime

    levels = {
        "disable": onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": onnxruntime.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    if optimization not in levels:
        raise ValueError(f"optimization must be one of {sorted(levels)}, got {optimization!r}.")
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = levels[optimization]
    options.intra_op_num_threads = int(threads)
    return onnxruntime.InferenceSession(str(path), options, providers=list(providers))


def time_graph(graph, paths, batch, repeats, optimizations=("all",), threads=0):
    """Median seconds of one call on ``batch`` inputs, side by side: TensorFlow (the exported function) and
    onnxruntime on each ONNX file of ``paths`` (``{label: path}``) at each optimisation level. Returns
    ``{"tensorflow_s": ..., "onnxruntime_<label>_<level>_s": ...}``."""
    inputs = check_inputs(graph, batch=batch)
    tensorflow = tensorflow_runner(graph)
    calls = {"tensorflow_s": lambda: tensorflow(inputs)}
    for label, path in paths.items():
        for level in optimizations:
            session = onnxruntime_session(path, optimization=level, threads=threads)
            calls[f"onnxruntime_{label}_{level}_s"] = lambda s=session: s.run(None, inputs)
    return side_by_side_seconds(calls, repeats)


def export_entry(model, out_dir, entry=None, opset=DEFAULT_OPSET, timing_batch=16, repeats=5, extra=None):
    """Writes every graph of ``model`` as ``out_dir/<graph>.onnx`` and ``out_dir/manifest.json`` (see the
    module docstring; ``extra``: more top-level fields, e.g. the machine the timings come from); returns
    the manifest. ``out_dir`` must be new, empty, or an earlier export (``check_export_folder``): a folder
    with other files is refused before any work."""
    out_dir = Path(out_dir)
    if type(model) not in FAMILIES:
        raise ValueError(f"export_entry takes a {', '.join(cls.__name__ for cls in FAMILIES)}; got "
                         f"{type(model).__name__}.")
    check_export_folder(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    family = type(model).__name__
    graphs = {}
    for name in FAMILIES[type(model)]:
        path = out_dir / f"{name}.onnx"
        exported = to_onnx(model, path, graph=name, opset=opset, overwrite=True)
        timing = time_graph(build_graph(model, name), {"file": path}, timing_batch, repeats)
        graphs[name] = {
            "file": path.name,
            "sha256": sha256_file(path),
            "bytes": path.stat().st_size,
            **{key: exported[key] for key in GRAPH_KEYS},
            "rewrites": exported["rewrites"],
            **{key: exported[key] for key in PARITY_KEYS if key in exported},
            "timing": {
                "batch": timing_batch,
                "repeats": repeats,
                "tensorflow_s": timing["tensorflow_s"],
                "onnxruntime_s": timing["onnxruntime_file_all_s"],
                "onnxruntime_over_tensorflow": timing["onnxruntime_file_all_s"] / timing["tensorflow_s"],
            },
        }
    manifest = {
        "entry": entry or out_dir.name,
        "family": family,
        "opset": opset,
        "keras_shortrun": __version__,
        "check": {"batch": CHECK_BATCH, "seed": CHECK_SEED, "tolerance": TOLERANCE},
        **(extra or {}),
        "graphs": graphs,
    }
    _atomic_write_text(out_dir / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    return manifest


def verify_manifest(model, out_dir):
    """Checks ``out_dir``'s artifacts against its manifest and ``model``: every file's sha256, the ONNX
    checker, that onnxruntime loads it, that the graph's inputs, outputs and K are what ``model`` builds
    now, and that the file passes ``parity_report`` again on this CPU (the recorded error is the exporting
    machine's: float32 kernels differ between CPUs, so it is reported, not compared). Returns the
    recomputed errors ``{graph: error}``; raises ``ValueError`` naming the first discrepancy."""
    import onnx

    out_dir = Path(out_dir)
    manifest = json.loads((out_dir / MANIFEST).read_text())
    if manifest["check"] != {"batch": CHECK_BATCH, "seed": CHECK_SEED, "tolerance": TOLERANCE}:
        raise ValueError(f"{out_dir}: the manifest was checked on {manifest['check']}, this version checks on "
                         f"batch {CHECK_BATCH}, seed {CHECK_SEED}, tolerance {TOLERANCE}: export it again.")
    if manifest["family"] != type(model).__name__:
        raise ValueError(f"{out_dir}: the manifest is for a {manifest['family']}, the model is a "
                         f"{type(model).__name__}.")
    if sorted(manifest["graphs"]) != sorted(FAMILIES[type(model)]):
        raise ValueError(f"{out_dir}: the manifest lists graphs {sorted(manifest['graphs'])}, a "
                         f"{manifest['family']} has {sorted(FAMILIES[type(model)])}.")
    errors = {}
    for name, recorded in manifest["graphs"].items():
        path = out_dir / recorded["file"]
        if not path.is_file():
            raise ValueError(f"{path} is missing.")
        if sha256_file(path) != recorded["sha256"]:
            raise ValueError(f"{path} has sha256 {sha256_file(path)}, the manifest records {recorded['sha256']}.")
        onnx.checker.check_model(str(path))
        graph = build_graph(model, name, chains=recorded["chains"])
        rebuilt = {key: graph.metadata()[key] for key in GRAPH_KEYS}
        if rebuilt != {key: recorded[key] for key in GRAPH_KEYS}:
            raise ValueError(f"{path}: the manifest's graph description {[recorded[k] for k in GRAPH_KEYS]} differs "
                             f"from the model's {list(rebuilt.values())}.")
        try:
            report = parity_report(graph, path, opset=manifest["opset"])
        except ExportError as error:
            raise ValueError(str(error)) from None
        errors[name] = report["max_abs_error"]
    return errors
