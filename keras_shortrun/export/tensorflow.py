"""SavedModel and ONNX writers (TensorFlow backend; ONNX through tf2onnx): the only backend-specific export code.

The graph is traced as a ``tf.function`` with batch-dynamic, named inputs; the
chain stays a while loop (an ONNX ``Loop``: one body for any K). Internal noise
is ``tf.random.normal`` of a shape that holds the dynamic batch size, so neither
TensorFlow nor tf2onnx can fold it into a constant; it becomes ONNX
``RandomNormalLike``.
"""

import contextlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import keras
import numpy as np

from keras_shortrun import __version__
from keras_shortrun import backend
from keras_shortrun.export import onnx_passes
from keras_shortrun.export.graphs import build_graph
from keras_shortrun.saving import check_replaceable
from keras_shortrun.serving import DATA
from keras_shortrun.serving import METADATA_KEY
from keras_shortrun.serving import UNIFORM
from keras_shortrun.serving import draw_inputs

SUPPORTED_OPSETS = tuple(range(13, 19))  # tf2onnx 1.17 writes opsets up to 18; the handlers need 13
DEFAULT_OPSET = 17
TOLERANCE = 1e-4  # max |ONNX - Keras| that to_onnx accepts on its check input
SENSITIVITY_FACTOR = 4.0  # a chaotic chain may differ by this times Keras's own sensitivity to rounding
CHECK_BATCH, CHECK_SEED = 2, 0
METADATA_FILE = "keras_shortrun.json"  # the SavedModel's copy of the graph's description


class ExportError(RuntimeError):
    """An exported graph does not convert, load or match the Keras model."""


def _tensorflow():
    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(
            f"Export traces the model with TensorFlow, but the Keras backend is {keras.backend.backend()!r}. "
            f"Run with KERAS_BACKEND=tensorflow (TensorFlow installed); .keras and .weights.h5 files and zoo "
            f"entries load on either backend."
        )
    import tensorflow as tf

    return tf


def traced_function(graph):
    """``(fn, input_signature)``: the graph as a TensorFlow function of its inputs (in order) returning a
    dict of outputs, and ``tf.TensorSpec``s ``(None, *shape)`` named like the inputs."""
    tf = _tensorflow()
    names = [t.name for t in graph.inputs]
    signature = [tf.TensorSpec((None,) + tuple(t.shape), tf.float32, name=t.name) for t in graph.inputs]

    def fn(*tensors):
        with backend.tracing_plain_graph():
            return graph.fn(dict(zip(names, tensors)), tf.random.normal)

    return fn, signature


def tensorflow_runner(graph):
    """A TensorFlow function of the graph (the one ``to_saved_model`` writes and ``to_onnx`` converts):
    numpy inputs by name -> numpy outputs by name."""
    tf = _tensorflow()
    fn, signature = traced_function(graph)
    function = tf.function(fn, input_signature=signature)

    def run(arrays):
        outputs = function(*[tf.constant(arrays[spec.name]) for spec in signature])
        return {name: value.numpy() for name, value in outputs.items()}

    return run


SAVED_MODEL_FILES = ("saved_model.pb", "fingerprint.pb", METADATA_FILE, "variables/", "assets/")


def _is_saved_model_metadata(metadata):
    return metadata.get("format") == "saved_model" and "graph" in metadata


def to_saved_model(model, path, graph=None, steps=None, noise="input", chains=None, overwrite=False):
    """Writes graph ``graph`` of ``model`` (see ``keras_shortrun.export.graphs``) as a TensorFlow SavedModel.

    ``tf.saved_model.load(path).signatures["serving_default"](**inputs)`` returns the outputs by name
    (``.serve(*inputs)`` takes them in order); ``path/keras_shortrun.json`` describes them. An existing
    ``path`` is replaced only when it is such a SavedModel and ``overwrite`` is true; any other folder or
    file is refused (``FileExistsError``) before any work. Returns the description (a dict).
    """
    path = Path(path)
    check_export_path(path, "saved_model", overwrite)
    graph = build_graph(model, graph, steps=steps, noise=noise, chains=chains)
    fn, signature = traced_function(graph)
    archive = keras.export.ExportArchive()
    archive.add_endpoint("serve", fn, input_signature=signature)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a complete folder replaces ``path``, or nothing does; unique names never clash with a user's folder
    staged = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    previous = staged.with_name(staged.name + ".old")
    try:
        archive.write_out(str(staged), verbose=False)
        metadata = dict(graph.metadata(), format="saved_model", keras_shortrun=__version__)
        (staged / METADATA_FILE).write_text(json.dumps(metadata, indent=1))
        os.chmod(staged, 0o755)
        if path.exists():
            path.rename(previous)  # folders cannot be replaced in one step: move the old one aside first
        os.replace(staged, path)
        shutil.rmtree(previous, ignore_errors=True)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
        if previous.exists() and not path.exists():
            previous.rename(path)  # put the previous export back
    return metadata


@contextlib.contextmanager
def _quiet(name, level=logging.CRITICAL):
    """Silences a logger (tf2onnx reports unsupported ops as errors; ``to_onnx`` raises on them itself)."""
    logger = logging.getLogger(name)
    previous = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(previous)


def _all_nodes(graph):
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.g.node:
                yield from _all_nodes(attribute.g)


def _convert(graph, opset, optimize=True):
    """The graph as an ONNX ``ModelProto`` with its inputs and outputs named and the batch axis ``"batch"``,
    rewritten by ``onnx_passes.optimize`` unless ``optimize`` is false."""
    import onnx
    import tf2onnx

    from keras_shortrun.export import tf2onnx_handlers  # noqa: F401  (registers the gradient-op handlers)

    fn, signature = traced_function(graph)
    function = _tensorflow().function(fn, input_signature=signature)
    with _quiet("tf2onnx"):
        proto, _ = tf2onnx.convert.from_function(function, input_signature=signature, opset=opset)
    unsupported = sorted({n.op_type for n in _all_nodes(proto.graph) if not onnx.defs.has(n.op_type, n.domain)})
    if unsupported:
        raise ExportError(f"tf2onnx left TensorFlow ops {unsupported} in the {graph.graph!r} graph: no ONNX "
                          f"runtime can run it. Add handlers for them in keras_shortrun/export/tf2onnx_handlers.py.")
    for kind, values, expected in (("inputs", proto.graph.input, graph.inputs),
                                   ("outputs", proto.graph.output, graph.outputs)):
        if [v.name for v in values] != [t.name for t in expected]:
            raise ExportError(f"tf2onnx named the {kind} {[v.name for v in values]}, expected "
                              f"{[t.name for t in expected]}.")
        for value in values:
            batch = value.type.tensor_type.shape.dim[0]
            batch.Clear()
            batch.dim_param = "batch"
    for node in _all_nodes(proto.graph):
        if node.op_type == "RandomNormalLike":  # no fixed seed: every session draws its own stream
            kept = [a for a in node.attribute if a.name != "seed"]
            del node.attribute[:]
            node.attribute.extend(kept)
    rewrites = onnx_passes.optimize(proto) if optimize else {}
    metadata = dict(graph.metadata(), opset=opset, keras_shortrun=__version__, rewrites=rewrites)
    onnx.helper.set_model_props(proto, {METADATA_KEY: json.dumps(metadata)})
    onnx.checker.check_model(proto)
    return proto, metadata


def check_inputs(graph, batch=CHECK_BATCH, seed=CHECK_SEED):
    """The fixed inputs that parity is measured on: every input drawn from its distribution with ``seed``
    (images, ``"data"`` inputs, from ``Uniform(-1, 1)`` too)."""
    specs = [dict(t.as_dict(), distribution=UNIFORM if t.distribution == DATA else t.distribution)
             for t in graph.inputs]
    return draw_inputs(specs, batch, np.random.default_rng(seed))


def onnx_parity(graph, path, inputs, providers=("CPUExecutionProvider",), expected=None):
    """Max |ONNX - Keras| over every output of ``graph`` (``noise="input"``) on ``inputs``; ``path`` may also
    be a serialized model (bytes); ``expected``: the Keras outputs on ``inputs`` when already computed."""
    import onnxruntime

    session = onnxruntime.InferenceSession(path if isinstance(path, bytes) else str(path), providers=list(providers))
    found = [(t.name, [d if isinstance(d, int) else None for d in t.shape[1:]])
             for t in session.get_inputs() + session.get_outputs()]
    wanted = [(t.name, list(t.shape)) for t in graph.inputs + graph.outputs]
    if found != wanted:
        name = "the serialized graph" if isinstance(path, bytes) else str(path)
        raise ExportError(f"{name} is not the {graph.family} {graph.graph!r} graph of this model: its inputs and "
                          f"outputs (name, shape after the batch axis) are {found}, this model's are {wanted}.")
    expected = graph.run_keras(inputs) if expected is None else expected
    actual = dict(zip([o.name for o in session.get_outputs()], session.run(None, inputs)))
    return max(float(np.max(np.abs(actual[name] - value))) for name, value in expected.items())


def _max_difference(a, b):
    return max(float(np.max(np.abs(a[name] - b[name]))) for name in b)


def keras_sensitivity(graph, inputs, relative=1e-6, draws=4, seed=0, base=None):
    """How much ``graph``'s Keras function amplifies float32 rounding: the largest change of its outputs
    over ``draws`` perturbations of every input by a relative ``U(-relative, relative)`` (1e-6: about eight
    ulps). A K-step chain through LeakyReLU kinks and clipping can turn such rounding-sized changes into
    visible differences; no float32 runtime with other kernels can then match it more closely. ``base``:
    the Keras outputs on ``inputs`` when already computed."""
    base = graph.run_keras(inputs) if base is None else base
    rng = np.random.default_rng(seed)
    changes = []
    for _ in range(draws):
        nudged = {k: (v * (1 + relative * rng.uniform(-1, 1, v.shape))).astype("float32") for k, v in inputs.items()}
        changes.append(_max_difference(graph.run_keras(nudged), base))
    return max(changes)


def parity_report(graph, path, opset=DEFAULT_OPSET, optimize=True):
    """Checks the ONNX file ``path`` of ``graph`` (``noise="input"``) against Keras on ``check_inputs``.

    Passes when max |ONNX - Keras| is within ``TOLERANCE``. A chain that amplifies rounding (see
    ``keras_sensitivity``) passes instead when the same graph with one step, converted alike, matches
    within ``TOLERANCE`` (the step is exact) and the K-step error is within ``SENSITIVITY_FACTOR`` times
    the Keras model's own sensitivity to rounding. Returns ``{"max_abs_error", and for such chains
    "keras_rounding_sensitivity", "one_step_max_abs_error"}``; raises ``ExportError`` otherwise.
    """
    inputs = check_inputs(graph)
    expected = graph.run_keras(inputs)
    error = onnx_parity(graph, path, inputs, expected=expected)
    report = {"max_abs_error": error}
    if error <= TOLERANCE:
        return report
    if graph.steps in (None, 1):
        raise ExportError(f"{path}: max |ONNX - Keras| = {error:.3g} > {TOLERANCE} on the check input.")
    one_step = build_graph(graph.model, graph.graph, steps=1, chains=graph.chains)
    proto, _ = _convert(one_step, opset, optimize)
    report["keras_rounding_sensitivity"] = keras_sensitivity(graph, inputs, base=expected)
    report["one_step_max_abs_error"] = onnx_parity(one_step, proto.SerializeToString(), check_inputs(one_step))
    bound = SENSITIVITY_FACTOR * report["keras_rounding_sensitivity"]
    if report["one_step_max_abs_error"] > TOLERANCE or error > bound:
        raise ExportError(
            f"{path}: max |ONNX - Keras| = {error:.3g} > {TOLERANCE} on the check input, and the graph does not "
            f"pass the chaotic-chain check: one step differs by {report['one_step_max_abs_error']:.3g} (limit "
            f"{TOLERANCE}), Keras itself moves by {report['keras_rounding_sensitivity']:.3g} under rounding-sized "
            f"changes of its inputs (limit {SENSITIVITY_FACTOR} times that)."
        )
    return report


def _check(graph, staged, path, opset, optimize):
    """Runs the staged file in onnxruntime on ``check_inputs``: with input noise, ``parity_report``; with
    internal noise, finite outputs."""
    if graph.noise == "input":
        try:
            return parity_report(graph, staged, opset, optimize)
        except ExportError as error:
            raise ExportError(str(error).replace(str(staged), str(path))) from None
    import onnxruntime

    session = onnxruntime.InferenceSession(str(staged), providers=["CPUExecutionProvider"])
    if not all(np.all(np.isfinite(out)) for out in session.run(None, check_inputs(graph))):
        raise ExportError(f"{path} gives non-finite outputs on the check input.")
    return {}


def check_opset(opset):
    """``opset`` if it is one of ``SUPPORTED_OPSETS``, else ``ValueError``."""
    if isinstance(opset, bool) or opset not in SUPPORTED_OPSETS:
        raise ValueError(f"opset must be one of {SUPPORTED_OPSETS} (tf2onnx 1.17, handlers need 13+), got {opset!r}.")
    return opset


def check_export_path(path, format, overwrite):
    """Raises ``FileExistsError`` unless writing an export of ``format`` (``"onnx"`` or ``"saved_model"``) at
    ``path`` deletes nothing but an earlier keras_shortrun export, and that only with ``overwrite``."""
    if format == "onnx":
        check_replaceable_onnx(path, overwrite)
    elif format == "saved_model":
        check_replaceable(path, "a keras_shortrun SavedModel", METADATA_FILE, _is_saved_model_metadata,
                          SAVED_MODEL_FILES, overwrite)
    else:
        raise ValueError(f"format must be 'onnx' or 'saved_model', got {format!r}.")


def check_replaceable_onnx(path, overwrite):
    """Raises ``FileExistsError`` unless ``path`` is absent or, with ``overwrite``, an ONNX graph that
    ``to_onnx`` wrote (it carries the ``keras_shortrun`` metadata)."""
    import onnx

    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    ours = False
    if path.is_file() and not path.is_symlink():
        try:
            ours = any(p.key == METADATA_KEY for p in onnx.load(str(path), load_external_data=False).metadata_props)
        except Exception:  # protobuf's DecodeError and friends: not an ONNX file at all
            ours = False
    if not ours:
        raise FileExistsError(f"{path} exists and is not an ONNX graph written by keras_shortrun: refusing to "
                              f"replace it. Choose a new path, or remove it yourself.")
    if not overwrite:
        raise FileExistsError(f"{path} already holds a keras_shortrun ONNX graph: pass overwrite=True "
                              f"(--overwrite) to replace it.")


def to_onnx(model, path, graph=None, steps=None, opset=DEFAULT_OPSET, noise="input", chains=None, check=True,
            optimize=True, overwrite=False):
    """Writes graph ``graph`` of ``model`` (see ``keras_shortrun.export.graphs``) as an ONNX file.

    Args:
        model: a ``ShortRunEBM``, ``MultiLayerLVM``, ``VAE`` or ``GenerativeClassifier``.
        path: the ``.onnx`` file to write.
        graph: the graph (default: the family's first: ``sampler``, ``generator``, ``classifier``).
        steps: K, fixed in the graph (default: the model's).
        opset: ONNX opset, one of ``SUPPORTED_OPSETS``.
        noise: ``"input"`` (deterministic) or ``"internal"`` (``RandomNormalLike``: fresh noise each call).
        chains: chains averaged by the ``classifier`` graph (default: the model's ``prediction_chains``).
        check: run the file in onnxruntime on ``check_inputs`` and, with ``noise="input"``, compare it with
            the Keras model there (raises ``ExportError`` beyond ``TOLERANCE``).
        optimize: apply ``keras_shortrun.export.onnx_passes`` (loop invariants hoisted, stride-1
            ConvTranspose as Conv); ``False`` writes tf2onnx's graph as it is (for comparison).
        overwrite: replace an existing graph written by ``to_onnx``; any other existing file is refused
            (``FileExistsError``) before any work.

    Returns:
        The graph's description (as stored in the file's ``keras_shortrun`` metadata), with ``path`` and,
        when checked with input noise, ``max_abs_error``.
    """
    check_opset(opset)
    import onnx

    path = Path(path)
    check_replaceable_onnx(path, overwrite)
    graph = build_graph(model, graph, steps=steps, noise=noise, chains=chains)
    proto, metadata = _convert(graph, opset, optimize)
    path.parent.mkdir(parents=True, exist_ok=True)
    # renamed over ``path`` only once it has passed the check; a unique name never clashes with a user's file
    handle, staged = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(handle)
    staged = Path(staged)
    onnx.save(proto, str(staged))
    os.chmod(staged, 0o644)
    try:
        if check:
            metadata.update(_check(graph, staged, path, opset, optimize))
        os.replace(staged, path)
    finally:
        staged.unlink(missing_ok=True)
    metadata["path"] = str(path)
    return metadata
