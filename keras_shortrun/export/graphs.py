"""What each exported graph computes: fixed-step functions of a model, written in ``keras.ops``.

A graph has named inputs and outputs (batch first, batch dynamic) and a
function from a dict of input tensors to a dict of output tensors. With
``noise="input"`` every random quantity is an input and the graph is
deterministic; with ``noise="internal"`` the Langevin noise (and the
``N(0, I)`` start of a posterior chain) is drawn inside the graph by the
``normal`` callable the exporter passes in, fresh on every call.

Graphs, their inputs and outputs (``B`` the batch, ``K`` the steps, ``D`` the
total latent size ``sum(latent_dims)``, latent layers top first, ``n`` chains, ``L`` classes;
inputs marked * exist only with ``noise="input"``):

| family | graph | inputs | outputs |
| --- | --- | --- | --- |
| ShortRunEBM | ``sampler`` | ``z0 (B, H, W, C)`` ~ U(-1, 1), ``noise (B, K, H, W, C)``* | ``x (B, H, W, C)`` |
| ShortRunEBM | ``chain`` | ``x0 (B, H, W, C)`` (any start), ``noise``* | ``x`` |
| MultiLayerLVM, VAE, GenerativeClassifier | ``generator`` | ``z (B, D)`` ~ N(0, I) | ``x`` |
| MultiLayerLVM | ``inference`` | ``x``, ``z0 (B, D)``*, ``noise (B, K, D)``* | ``z (B, D)`` |
| MultiLayerLVM | ``reconstruction`` | ``x``, ``z0``*, ``noise``* | ``x_hat (B, H, W, C)`` |
| VAE | ``inference``, ``reconstruction`` | ``x`` (encoder mean, no chain) | ``z``, ``x_hat`` |
| GenerativeClassifier | ``classifier`` | ``x``, ``z0 (B, n, D)``*, ``noise (B, n, K, D)``* | ``probabilities (B, L)`` |

The EBM's ``sampler`` is the model ``M(z)`` (its start is the model's input,
drawn from ``Uniform(-1, 1)`` by whoever calls it, so it stays an input in both
noise modes); its ``chain`` is the same K-step chain from any start ``x0``
(e.g. images). ``noise`` and ``z0`` are standard normal draws.
"""

import dataclasses

import numpy as np
from keras import ops

from keras_shortrun import backend
from keras_shortrun.models.classifier import GenerativeClassifier
from keras_shortrun.models.ebm import ShortRunEBM
from keras_shortrun.models.lvm import MultiLayerLVM
from keras_shortrun.models.vae import VAE
from keras_shortrun.serving import DATA
from keras_shortrun.serving import NOISE_MODES
from keras_shortrun.serving import NORMAL
from keras_shortrun.serving import UNIFORM
from keras_shortrun.validation import check_positive_int

FAMILIES = {  # family -> graphs, the first being the default
    ShortRunEBM: ("sampler", "chain"),
    MultiLayerLVM: ("generator", "inference", "reconstruction"),
    VAE: ("generator", "inference", "reconstruction"),
    GenerativeClassifier: ("classifier", "generator"),
}


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """One input or output: ``name``, ``shape`` without the batch axis, and what fills it (inputs only:
    ``UNIFORM`` or ``NORMAL`` for draws, ``DATA`` for images or starts the caller provides)."""

    name: str
    shape: tuple
    distribution: str = DATA

    def as_dict(self):
        """JSON-ready ``{"name", "shape", "distribution"}``, the shape led by the dynamic batch axis (``None``)."""
        return {"name": self.name, "shape": [None, *self.shape], "distribution": self.distribution}


@dataclasses.dataclass(frozen=True)
class ExportGraph:
    """A fixed-step function of ``model``: ``fn(inputs, normal) -> outputs`` (dicts of tensors by name).

    ``normal(shape)`` draws standard normal noise inside the graph (``noise="internal"``); ``shape`` may
    hold the dynamic batch size as a scalar tensor.
    """

    model: object
    family: str
    graph: str
    steps: int | None
    noise: str
    chains: int | None
    inputs: tuple
    outputs: tuple
    fn: object

    def metadata(self):
        """What serving and manifests need to know, JSON-ready."""
        return {
            "family": self.family,
            "graph": self.graph,
            "steps": self.steps,
            "noise": self.noise,
            "chains": self.chains,
            "inputs": [t.as_dict() for t in self.inputs],
            "outputs": [t.as_dict() for t in self.outputs],
        }

    def run_keras(self, arrays):
        """Runs the graph's function on the Keras model (compiled as the model compiles its own methods):
        numpy ``arrays`` by input name -> numpy outputs by name. Needs ``noise="input"``."""
        if self.noise != "input":
            raise ValueError("run_keras needs every random quantity as an input: build the graph with noise='input'.")
        names = [t.name for t in self.inputs]
        missing = sorted(set(names) - set(arrays))
        if missing:
            raise ValueError(f"Missing inputs {missing} for graph {self.graph!r} (inputs: {names}).")
        run = backend.compile_method(self.model, lambda *xs: self.fn(dict(zip(names, xs)), None))
        outputs = run(*[np.asarray(arrays[name], dtype="float32") for name in names])
        return {name: ops.convert_to_numpy(value) for name, value in outputs.items()}


def _family_of(model):
    for cls, graphs in FAMILIES.items():
        if type(model) is cls:
            return cls.__name__, graphs
    supported = ", ".join(cls.__name__ for cls in FAMILIES)
    raise TypeError(f"Export takes a keras_shortrun model ({supported}); got {type(model).__name__}.")


def _noise_or_draw(inputs, name, shape, normal):
    """The input ``name`` when the graph has it, else a standard normal draw of ``shape``."""
    return inputs[name] if name in inputs else normal(shape)


def _split_last(flat, dims):
    """``(..., sum(dims))`` -> list of ``(..., d)``."""
    if len(dims) == 1:
        return [flat]
    return list(ops.split(flat, [int(c) for c in np.cumsum(dims)[:-1]], axis=-1))


def _random_inputs(noise, *infos):
    """The inputs that exist only when the graph takes its randomness as inputs."""
    return infos if noise == "input" else ()


def _ebm_graph(model, graph, steps, noise):
    start = "z0" if graph == "sampler" else "x0"
    shape = model.image_shape

    def run(inputs, normal):
        x0 = inputs[start]
        eps = _noise_or_draw(inputs, "noise", (ops.shape(x0)[0], steps) + shape, normal)
        return {"x": model.chain(x0, potential=model.energy, noise=eps, steps=steps)}

    inputs = (TensorInfo(start, shape, UNIFORM if graph == "sampler" else DATA),)
    inputs += _random_inputs(noise, TensorInfo("noise", (steps,) + shape, NORMAL))
    return inputs, (TensorInfo("x", shape),), run


def _posterior_latents(model, x, inputs, steps, normal):
    """``z_K`` ``(B', D)`` of the model's posterior chain on images ``x`` ``(B', H, W, C)``. The start and
    noise are the inputs ``z0``/``noise`` (any leading axes that flatten to ``B'``, then ``D`` or ``(K, D)``)
    or, without them, drawn."""
    dim, dims = sum(model.latent_dims), model.latent_dims
    batch = ops.shape(x)[0]
    z0 = ops.reshape(_noise_or_draw(inputs, "z0", (batch, dim), normal), (-1, dim))
    eps = ops.reshape(_noise_or_draw(inputs, "noise", (batch, steps, dim), normal), (-1, steps, dim))
    z = model.chain(
        _split_last(z0, dims), potential=model.posterior_potential(x), noise=_split_last(eps, dims), steps=steps
    )
    return ops.concatenate(z, axis=-1)


def _decode(model, z):
    return model.generator(_split_last(z, model.latent_dims))


def _generator_graph(model):
    def run(inputs, normal):
        return {"x": _decode(model, inputs["z"])}

    return (TensorInfo("z", (sum(model.latent_dims),), NORMAL),), (TensorInfo("x", model.image_shape),), run


def _inference_graph(model, graph, steps, noise):
    """LVM: latents by the posterior chain; VAE: the encoder's mean. Then ``z`` or ``x_hat = g(z)``."""
    dim = sum(model.latent_dims)

    def latents(inputs, normal):
        if isinstance(model, VAE):
            return model.encoder(inputs["x"])[0]
        return _posterior_latents(model, inputs["x"], inputs, steps, normal)

    def run(inputs, normal):
        z = latents(inputs, normal)
        return {"z": z} if graph == "inference" else {"x_hat": _decode(model, z)}

    random = () if isinstance(model, VAE) else _random_inputs(
        noise, TensorInfo("z0", (dim,), NORMAL), TensorInfo("noise", (steps, dim), NORMAL)
    )
    output = TensorInfo("z", (dim,)) if graph == "inference" else TensorInfo("x_hat", model.image_shape)
    return (TensorInfo("x", model.image_shape),) + random, (output,), run


def _classifier_graph(model, steps, noise, chains):
    """Class probabilities averaged over ``chains`` posterior chains per image (``predict_proba``'s layout:
    image ``b``'s chains are rows ``b * chains ... b * chains + chains - 1`` of the repeated batch)."""
    dim = sum(model.latent_dims)

    def run(inputs, normal):
        x = inputs["x"]
        z = _posterior_latents(model, ops.repeat(x, chains, axis=0), inputs, steps, normal)
        probabilities = ops.reshape(ops.softmax(model.head(z), axis=-1), (-1, chains, model.num_classes))
        return {"probabilities": ops.mean(probabilities, axis=1)}

    random = _random_inputs(
        noise, TensorInfo("z0", (chains, dim), NORMAL), TensorInfo("noise", (chains, steps, dim), NORMAL)
    )
    return (TensorInfo("x", model.image_shape),) + random, (TensorInfo("probabilities", (model.num_classes,)),), run


def has_chain(model, graph):
    """Whether ``graph`` of ``model`` runs a Langevin chain (and so has steps and noise)."""
    return graph in ("sampler", "chain", "classifier") or (graph != "generator" and not isinstance(model, VAE))


def build_graph(model, graph=None, steps=None, noise="input", chains=None):
    """The ``ExportGraph`` ``graph`` of ``model`` (default: the family's first, see the module table).

    Args:
        model: a ``ShortRunEBM``, ``MultiLayerLVM``, ``VAE`` or ``GenerativeClassifier``.
        graph: the graph's name (module table).
        steps: K, fixed in the graph (default: the model's chain's); only for graphs with a chain.
        noise: ``"input"`` (deterministic graph) or ``"internal"`` (fresh noise each call).
        chains: chains averaged by the ``classifier`` graph (default: the model's ``prediction_chains``).
    """
    family, graphs = _family_of(model)
    graph = graphs[0] if graph is None else graph
    if graph not in graphs:
        raise ValueError(f"{family} has the graphs {graphs}; got {graph!r}.")
    if noise not in NOISE_MODES:
        raise ValueError(f"noise must be one of {NOISE_MODES}, got {noise!r}.")
    if has_chain(model, graph):
        steps = model.chain.steps if steps is None else check_positive_int(steps, "steps")
    elif steps is not None or noise != "input":
        raise ValueError(f"Graph {graph!r} of {family} runs no chain: it takes neither steps nor noise='internal'.")
    if graph == "classifier":
        chains = model.prediction_chains if chains is None else check_positive_int(chains, "chains")
    elif chains is not None:
        raise ValueError(f"chains applies to the 'classifier' graph only, not {graph!r}.")
    if isinstance(model, ShortRunEBM):
        inputs, outputs, fn = _ebm_graph(model, graph, steps, noise)
    elif graph == "generator":
        inputs, outputs, fn = _generator_graph(model)
    elif graph == "classifier":
        inputs, outputs, fn = _classifier_graph(model, steps, noise, chains)
    else:
        inputs, outputs, fn = _inference_graph(model, graph, steps, noise)
    return ExportGraph(model, family, graph, steps, noise, chains, inputs, outputs, fn)

