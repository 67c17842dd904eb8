"""Serving exported samplers with onnxruntime: numpy, onnxruntime and Pillow only (no TensorFlow, no Keras).

``keras_shortrun.export.to_onnx`` writes, next to the graph, a JSON description
under the ONNX metadata key ``"keras_shortrun"``: the family, the graph, K, the
noise mode and every input and output with its shape and distribution.
``OnnxSampler`` reads it, checks it against the graph, and draws the inputs
itself:

    from keras_shortrun.serving import OnnxSampler
    sampler = OnnxSampler("export/mnist_ebm/sampler.onnx")   # CUDA if available, else CPU
    images = sampler.sample(16, seed=0)                      # (16, 28, 28, 1) in [-1, 1]
    sampler.provider                                         # "CPUExecutionProvider"

One sampler (one session) may be used from many threads at once. ``sample`` draws and runs batch by
batch, so memory holds the result and one batch; a request whose result would not fit is refused first.

Graphs exported with ``noise="internal"`` draw with onnxruntime's
``RandomNormalLike``, seeded when the session is created from a process-wide
seed that is fixed unless ``onnxruntime.set_seed`` changes it: two plain
sessions repeat the same stream. ``OnnxSampler`` sets a fresh random seed before
creating its session, so every sampler draws its own.
"""

import copy
import json
import math
import os
import secrets
import threading

import numpy as np

from keras_shortrun.validation import check_positive_int
from keras_shortrun.validation import check_seed

METADATA_KEY = "keras_shortrun"
UNIFORM, NORMAL, DATA = "uniform(-1,1)", "normal(0,1)", "data"
DISTRIBUTIONS = (UNIFORM, NORMAL, DATA)
NOISE_MODES = ("input", "internal")
CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"
MEMINFO = "/proc/meminfo"
MEMORY_CAP = 8 * 2**30  # bytes taken as available where there is no /proc/meminfo (macOS, Windows)
_SESSION_LOCK = threading.Lock()


def _draw(spec, count, rng):
    """``count`` draws of the input ``spec`` (as in ``draw_inputs``): float32 ``(count, *shape[1:])``."""
    shape = (count, *spec["shape"][1:])
    if spec["distribution"] == UNIFORM:
        return rng.uniform(-1.0, 1.0, shape).astype("float32")
    if spec["distribution"] == NORMAL:
        return rng.standard_normal(shape, dtype="float32")
    raise ValueError(f"Input {spec['name']!r} takes {spec['distribution']} from the caller: it is not drawn.")


def draw_inputs(inputs, n, rng):
    """Draws every input of a sampler graph: ``inputs`` as in the metadata (``name``, ``shape`` with the
    batch first, ``distribution``) -> ``{name: float32 array (n, *shape[1:])}``, in the listed order."""
    return {spec["name"]: _draw(spec, n, rng) for spec in inputs}


def draw_input_batches(inputs, n, batch_size, seed):
    """Yields ``draw_inputs(inputs, n, np.random.default_rng(seed))`` in batches: ``{name: float32 array
    (b, *shape[1:])}`` with ``b = batch_size`` (the last one: the rest), one batch in memory at a time.

    Every input has its own copy of the generator, started where the inputs before it end their ``n``
    draws (found by drawing those batch by batch and dropping them): numpy draws a stream in pieces as it
    draws it whole, so the values do not depend on ``batch_size``.
    """
    counts = [min(batch_size, n - start) for start in range(0, n, batch_size)]
    streams = [np.random.default_rng(seed)]
    for spec in inputs[:-1]:
        streams.append(copy.deepcopy(streams[-1]))
        for count in counts:
            _draw(spec, count, streams[-1])
    for count in counts:
        yield {spec["name"]: _draw(spec, count, rng) for spec, rng in zip(inputs, streams)}


def available_memory():
    """``(bytes, where)``: the memory available now, ``MemAvailable`` of ``/proc/meminfo`` (Linux), else
    ``MEMORY_CAP``; ``where`` says which, for messages."""
    try:
        with open(MEMINFO) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, f"MemAvailable in {MEMINFO}"
    except OSError:
        pass
    return MEMORY_CAP, "serving.MEMORY_CAP, as there is no /proc/meminfo"


def select_providers(providers=None):
    """onnxruntime execution providers, a list: ``providers`` (one name, or a list or tuple of names), each of
    which must be available; by default CUDA (when onnxruntime-gpu sees a GPU) then CPU."""
    import onnxruntime

    available = onnxruntime.get_available_providers()
    if providers is None:
        return [CUDA, CPU] if CUDA in available else [CPU]
    chosen = [providers] if isinstance(providers, str) else providers
    if not isinstance(chosen, (list, tuple)) or not chosen or not all(isinstance(p, str) for p in chosen):
        raise ValueError(f"providers must be a provider name or a non-empty list of them, got {providers!r}.")
    missing = [p for p in chosen if p not in available]
    if missing:
        raise ValueError(f"onnxruntime providers {missing} are not available here; available: {available}.")
    return list(chosen)


def _is_size(value):
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _tensor_problem(tensor, drawn):
    """What is wrong with one entry of ``inputs`` (``drawn``) or ``outputs`` of the metadata, or ``None``."""
    if not isinstance(tensor, dict):
        return f"must be an object, got {tensor!r}"
    keys = ("name", "shape", "distribution") if drawn else ("name", "shape")
    missing = [key for key in keys if key not in tensor]
    if missing:
        return f"has no {', '.join(map(repr, missing))}"
    if not isinstance(tensor["name"], str):
        return f"'name' must be a string, got {tensor['name']!r}"
    shape = tensor["shape"]
    if not isinstance(shape, list) or not shape or shape[0] is not None or not all(map(_is_size, shape[1:])):
        return f"'shape' must be [null (the batch), positive integers...], got {shape!r}"
    if drawn and tensor["distribution"] not in DISTRIBUTIONS:
        return f"'distribution' must be one of {DISTRIBUTIONS}, got {tensor['distribution']!r}"
    return None


def _metadata_problem(metadata):
    """What is wrong with parsed metadata, or ``None``: every field serving reads, with its type."""
    if not isinstance(metadata, dict):
        return f"it is a JSON {type(metadata).__name__}, not an object"
    missing = [key for key in ("family", "graph", "noise", "inputs", "outputs") if key not in metadata]
    if missing:
        return f"it has no {', '.join(map(repr, missing))}"
    for key in ("family", "graph"):
        if not isinstance(metadata[key], str):
            return f"{key!r} must be a string, got {metadata[key]!r}"
    if metadata["noise"] not in NOISE_MODES:
        return f"'noise' must be one of {NOISE_MODES}, got {metadata['noise']!r}"
    for kind in ("inputs", "outputs"):
        if not isinstance(metadata[kind], list) or not metadata[kind]:
            return f"{kind!r} must be a non-empty list, got {metadata[kind]!r}"
        for i, tensor in enumerate(metadata[kind]):
            problem = _tensor_problem(tensor, drawn=kind == "inputs")
            if problem:
                return f"{kind}[{i}] {problem}"
    return None


def read_metadata(session, path="the graph"):
    """The ``keras_shortrun`` metadata of an onnxruntime session, checked (every field serving reads, with its
    type) and checked against the session's inputs and outputs (names, order, shapes after the batch axis);
    raises one ``ValueError`` naming ``path`` and the problem."""
    custom = session.get_modelmeta().custom_metadata_map
    if METADATA_KEY not in custom:
        raise ValueError(
            f"{path} is not a keras_shortrun graph: it has no {METADATA_KEY!r} metadata. "
            f"Export one with keras_shortrun.export.to_onnx."
        )
    try:
        metadata = json.loads(custom[METADATA_KEY])
        problem = _metadata_problem(metadata)
    except json.JSONDecodeError as error:
        problem = f"it is not valid JSON ({error})"
    if problem:
        raise ValueError(f"{path} has malformed {METADATA_KEY!r} metadata: {problem}. "
                         f"Export it again with keras_shortrun.export.to_onnx.")
    for kind, actual in (("inputs", session.get_inputs()), ("outputs", session.get_outputs())):
        expected = [(t["name"], [None, *t["shape"][1:]]) for t in metadata[kind]]
        found = [(t.name, [None, *(d if isinstance(d, int) else None for d in t.shape[1:])]) for t in actual]
        if expected != found:
            raise ValueError(
                f"{path} does not match its keras_shortrun metadata: {kind} (name, shape) are {found}, "
                f"the metadata says {expected}."
            )
    return metadata


class OnnxSampler:
    """Draws samples from an exported sampler graph (the EBM's ``sampler``, a latent model's ``generator``).

    Args:
        path: the ``.onnx`` file written by ``keras_shortrun.export.to_onnx``.
        providers: an onnxruntime execution provider's name, or a list of them; default CUDA when available,
            else CPU.

    Attributes:
        provider: the execution provider the session runs on (e.g. ``"CPUExecutionProvider"``).
        metadata: the graph's description (family, graph, steps, noise, inputs, outputs).
        deterministic: whether ``sample`` with a seed repeats exactly (``noise="input"`` graphs; with
            ``noise="internal"`` the seed fixes the chain's start and the graph draws fresh noise).
    """

    def __init__(self, path, providers=None):
        import onnxruntime

        self.path = str(path)
        with _SESSION_LOCK:  # the seed is read when the session's random kernels are created
            onnxruntime.set_seed(secrets.randbits(31))
            chosen = select_providers(providers)
            if not os.path.isfile(self.path):
                raise FileNotFoundError(f"No ONNX file at {self.path}.")
            try:
                self.session = onnxruntime.InferenceSession(self.path, providers=chosen)
            except Exception as error:  # onnxruntime's own classes (InvalidProtobuf, ...) derive from Exception
                raise ValueError(f"{self.path} is not a readable ONNX graph ({error}).") from error
        self.provider = self.session.get_providers()[0]
        self.metadata = read_metadata(self.session, self.path)
        given = [t["name"] for t in self.metadata["inputs"] if t["distribution"] == DATA]
        if given:
            raise ValueError(
                f"{self.path} is the {self.metadata['family']} {self.metadata['graph']!r} graph: it takes {given} "
                f"from the caller, so it is not a sampler. Run it with onnxruntime.InferenceSession."
            )
        self.output_name = self.metadata["outputs"][0]["name"]
        self.deterministic = self.metadata["noise"] == "input"

    @property
    def sample_shape(self):
        """Shape of one sample, e.g. ``(28, 28, 1)``."""
        return tuple(self.metadata["outputs"][0]["shape"][1:])

    def sample(self, n, seed=None, batch_size=64):
        """``n`` samples ``(n, *sample_shape)`` as float32 numpy, run in batches of ``batch_size``.

        The inputs are drawn batch by batch, and are those of ``draw_inputs(metadata["inputs"], n,
        np.random.default_rng(seed))`` whatever ``batch_size``: the same seed gives the same samples.

        Args:
            n, batch_size: positive integers (Python or numpy; never bool, float or str).
            seed: ``None`` (fresh randomness) or an integer in ``[0, 2**32)``, the seeds of all of
                keras_shortrun; larger ones are refused, never folded.

        Raises:
            ValueError: an argument is not as above.
            MemoryError: before any work, when the result and one batch (its inputs and outputs) need more
                than ``available_memory()``; onnxruntime's own working memory is not counted.
        """
        n, batch_size = check_positive_int(n, "n"), check_positive_int(batch_size, "batch_size")
        seed = check_seed(seed)
        self._check_memory(n, min(n, batch_size))
        samples = np.empty((n, *self.sample_shape), np.float32)
        for i, inputs in enumerate(draw_input_batches(self.metadata["inputs"], n, batch_size, seed)):
            samples[i * batch_size : (i + 1) * batch_size] = self.session.run([self.output_name], inputs)[0]
        return samples

    def _check_memory(self, n, batch):
        """Raises ``MemoryError`` when ``n`` samples in batches of ``batch`` would not fit in memory."""
        sample_size = math.prod(self.sample_shape)
        input_size = sum(math.prod(spec["shape"][1:]) for spec in self.metadata["inputs"])
        # float32 results; per batch, inputs drawn as float64 then cast to float32 (12 bytes a value) and outputs
        needed = 4 * n * sample_size + batch * (12 * input_size + 4 * sample_size)
        available, where = available_memory()
        if needed > available:
            raise MemoryError(
                f"sample(n={n}) needs about {needed / 2**30:.3f} GiB (the float32 result and one batch of {batch}), "
                f"more than the {available / 2**30:.3f} GiB available ({where}): ask for fewer samples per call."
            )

    __call__ = sample

    def save_grid(self, path, n=16, seed=None, scale=1):
        """Writes a PNG grid of ``n`` samples (pixels in ``[-1, 1]``) and returns the samples."""
        from keras_shortrun.images import save_grid

        samples = self.sample(n, seed=seed)
        save_grid(path, samples, scale=scale)
        return samples
