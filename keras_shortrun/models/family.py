"""The interface every model family implements, and the tensors of its export graphs.

The CLI, the exporters (``keras_shortrun.export.graphs``) and the zoo use a model through this interface only:
``image_shape``, ``draw``, ``EXPORT_GRAPHS`` and ``export_graph``.
"""

import dataclasses

from keras_shortrun.serving import DATA


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """One input or output of an export graph: ``name``, ``shape`` without the batch axis, and what fills it
    (inputs only: ``serving.UNIFORM`` or ``serving.NORMAL`` for draws, ``serving.DATA`` for images or starts the
    caller provides)."""

    name: str
    shape: tuple
    distribution: str = DATA

    def as_dict(self):
        """JSON-ready ``{"name", "shape", "distribution"}``, the shape led by the dynamic batch axis (``None``)."""
        return {"name": self.name, "shape": [None, *self.shape], "distribution": self.distribution}


def input_or_draw(inputs, name, shape, normal):
    """The graph input ``name`` when the graph has it (``noise="input"``), else ``normal(shape)``, a standard
    normal draw inside the graph (``noise="internal"``)."""
    return inputs[name] if name in inputs else normal(shape)


def random_inputs(noise, *infos):
    """``infos``, the inputs that exist only when a graph takes its randomness as inputs (``noise="input"``)."""
    return infos if noise == "input" else ()


class ShortRunFamily:
    """Mixin of every model family (``ShortRunEBM``, ``MultiLayerLVM``, ``VAE``, ``GenerativeClassifier``).

    A family has an ``image_shape`` ``(H, W, C)`` (the images it draws and reads), draws images with ``draw``,
    and names its export graphs in ``EXPORT_GRAPHS`` (the default first), each built by ``export_graph`` from
    the model's own methods. The graphs and their tensors are tabled in ``keras_shortrun.export.graphs``.
    """

    EXPORT_GRAPHS = ()

    def draw(self, n, seed=None, batch_size=256):
        """``n`` images ``(n, *image_shape)`` in ``[-1, 1]``, the family's way (an EBM's chain from noise, a latent
        model's ancestral samples); reproducible with ``seed``."""
        raise NotImplementedError(f"{type(self).__name__} does not implement ShortRunFamily.draw.")

    def graph_runs_chain(self, graph):
        """Whether export graph ``graph`` runs a Langevin chain (and so takes ``steps`` and noise)."""
        return True

    def export_graph(self, graph, steps, noise, chains=None):
        """``(inputs, outputs, fn)`` of export graph ``graph`` with ``steps`` K (``None`` without a chain),
        ``noise`` ``"input"`` or ``"internal"`` and ``chains`` (a classifier's); ``inputs``/``outputs`` are
        ``TensorInfo`` tuples and ``fn(inputs, normal)`` maps a dict of input tensors to a dict of outputs."""
        raise NotImplementedError(f"{type(self).__name__} does not implement ShortRunFamily.export_graph.")
