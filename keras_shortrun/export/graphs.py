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
from keras_shortrun.models import FAMILY_CLASSES
from keras_shortrun.models.family import ShortRunFamily
from keras_shortrun.serving import NOISE_MODES
from keras_shortrun.validation import check_positive_int

FAMILIES = {cls: cls.EXPORT_GRAPHS for cls in FAMILY_CLASSES}  # family -> graphs, the first being the default


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


def build_graph(model, graph=None, steps=None, noise="input", chains=None):
    """The ``ExportGraph`` ``graph`` of ``model`` (default: the family's first, see the module table), built by
    the family's ``export_graph`` (``keras_shortrun.models.family.ShortRunFamily``).

    Args:
        model: a ``ShortRunEBM``, ``MultiLayerLVM``, ``VAE`` or ``GenerativeClassifier``.
        graph: the graph's name (module table).
        steps: K, fixed in the graph (default: the model's chain's); only for graphs with a chain.
        noise: ``"input"`` (deterministic graph) or ``"internal"`` (fresh noise each call).
        chains: chains averaged by the ``classifier`` graph (default: the model's ``prediction_chains``).
    """
    if not isinstance(model, ShortRunFamily):
        supported = ", ".join(cls.__name__ for cls in FAMILY_CLASSES)
        raise TypeError(f"Export takes a keras_shortrun model ({supported}); got {type(model).__name__}.")
    family, graphs = type(model).__name__, model.EXPORT_GRAPHS
    graph = graphs[0] if graph is None else graph
    if graph not in graphs:
        raise ValueError(f"{family} has the graphs {graphs}; got {graph!r}.")
    if noise not in NOISE_MODES:
        raise ValueError(f"noise must be one of {NOISE_MODES}, got {noise!r}.")
    if model.graph_runs_chain(graph):
        steps = model.chain.steps if steps is None else check_positive_int(steps, "steps")
    elif steps is not None or noise != "input":
        raise ValueError(f"Graph {graph!r} of {family} runs no chain: it takes neither steps nor noise='internal'.")
    if graph == "classifier":
        chains = model.prediction_chains if chains is None else check_positive_int(chains, "chains")
    elif chains is not None:
        raise ValueError(f"chains applies to the 'classifier' graph only, not {graph!r}.")
    inputs, outputs, fn = model.export_graph(graph, steps, noise, chains)
    return ExportGraph(model, family, graph, steps, noise, chains, inputs, outputs, fn)
