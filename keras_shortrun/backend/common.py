"""Backend-neutral helpers shared by the per-backend glue."""

import collections
import contextlib
import functools
import threading

import keras

TRACES = collections.Counter()  # qualified name of a compiled function -> times it was traced
_PLAIN_GRAPH = threading.local()


@contextlib.contextmanager
def tracing_plain_graph():
    """Inside, chains are traced for a plain graph that XLA will not compile (graphs traced to be exported:
    one ONNX ``Loop`` for any K, no XLA-only loop bounds), whatever ``compiles_with_xla()`` says."""
    previous = in_plain_graph()
    _PLAIN_GRAPH.active = True
    try:
        yield
    finally:
        _PLAIN_GRAPH.active = previous


def in_plain_graph():
    """Whether the current trace is inside ``tracing_plain_graph()``."""
    return getattr(_PLAIN_GRAPH, "active", False)


def counting_traces(fn):
    """``fn`` that adds one to ``TRACES[fn.__qualname__]`` each time it runs as Python, which inside
    ``tf.function`` or ``jax.jit`` happens only when the compiler traces it (a new trace, not a call)."""
    name = getattr(fn, "__qualname__", repr(fn))

    @functools.wraps(fn)
    def traced(*args, **kwargs):
        TRACES[name] += 1
        return fn(*args, **kwargs)

    return traced


def trace_count():
    """How many times the functions compiled by ``compile_method`` have been traced in this process."""
    return sum(TRACES.values())


def unpack_inputs(data):
    """Returns ``(x, y)`` of a Keras batch ``x``, ``(x,)``, ``(x, y)`` or ``(x, y, w)`` (``y`` may be ``None``)."""
    x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
    return x, y


def check_training_loss(model, logs):
    """Validates the contract of ``compute_training_loss``: its logs name exactly the
    model's ``metrics_trackers`` other than ``loss`` (so both backends report the same)."""
    expected = set(model.metrics_trackers) - {"loss"}
    if set(logs) != expected:
        raise ValueError(
            f"{type(model).__name__}.compute_training_loss must return logs for exactly {sorted(expected)} "
            f"(its metrics_trackers without 'loss'), got {sorted(logs)}."
        )
