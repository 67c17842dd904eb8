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

One sampler (one session) may be used from many threads at once.

Graphs exported with ``noise="internal"`` draw with onnxruntime's
``RandomNormalLike``, seeded when the session is created from a process-wide
seed that is fixed unless ``onnxruntime.set_seed`` changes it: two plain
sessions repeat the same stream. ``OnnxSampler`` sets a fresh random seed before
creating its session, so every sampler draws its own.
"""

import json
import os
import secrets
import threading

import numpy as np

METADATA_KEY = "keras_shortrun"
UNIFORM, NORMAL, DATA = "uniform(-1,1)", "normal(0,1)", "data"
CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"
_SESSION_LOCK = threading.Lock()


def draw_inputs(inputs, n, rng):
    """Draws every input of a sampler graph: ``inputs`` as in the metadata (``name``, ``shape`` with the
    batch first, ``distribution``) -> ``{name: float32 array (n, *shape[1:])}``, in the listed order."""
    arrays = {}
    for spec in inputs:
        shape = (n, *spec["shape"][1:])
        if spec["distribution"] == UNIFORM:
            arrays[spec["name"]] = rng.uniform(-1.0, 1.0, shape).astype("float32")
        elif spec["distribution"] == NORMAL:
            arrays[spec["name"]] = rng.standard_normal(shape, dtype="float32")
        else:
            raise ValueError(f"Input {spec['name']!r} takes {spec['distribution']} from the caller: it is not drawn.")
    return arrays


def select_providers(providers=None):
    """onnxruntime execution providers: ``providers`` if all are available, else CUDA (when onnxruntime-gpu
    sees a GPU) then CPU."""
    import onnxruntime

    available = onnxruntime.get_available_providers()
    if providers is None:
        return [CUDA, CPU] if CUDA in available else [CPU]
    missing = [p for p in providers if p not in available]
    if missing:
        raise ValueError(f"onnxruntime providers {missing} are not available here; available: {available}.")
    return list(providers)


def read_metadata(session, path="the graph"):
    """The ``keras_shortrun`` metadata of an onnxruntime session, checked against the session's inputs and
    outputs (names, order, shapes after the batch axis); raises ``ValueError`` naming the mismatch."""
    custom = session.get_modelmeta().custom_metadata_map
    if METADATA_KEY not in custom:
        raise ValueError(
            f"{path} is not a keras_shortrun graph: it has no {METADATA_KEY!r} metadata. "
            f"Export one with keras_shortrun.export.to_onnx."
        )
    metadata = json.loads(custom[METADATA_KEY])
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
        providers: onnxruntime execution providers; default CUDA when available, else CPU.

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
        """``n`` samples ``(n, *sample_shape)`` as float32 numpy, run in batches of ``batch_size``."""
        for value, name in ((n, "n"), (batch_size, "batch_size")):
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        inputs = draw_inputs(self.metadata["inputs"], int(n), np.random.default_rng(seed))
        parts = [
            self.session.run([self.output_name], {k: v[start : start + batch_size] for k, v in inputs.items()})[0]
            for start in range(0, int(n), int(batch_size))
        ]
        return np.concatenate(parts)

    __call__ = sample

    def save_grid(self, path, n=16, seed=None, scale=1):
        """Writes a PNG grid of ``n`` samples (pixels in ``[-1, 1]``) and returns the samples."""
        from keras_shortrun.images import save_grid

        samples = self.sample(n, seed=seed)
        save_grid(path, samples, scale=scale)
        return samples
