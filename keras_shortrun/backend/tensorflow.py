"""TensorFlow implementations of the backend functions (see ``__init__``)."""

import contextlib
import functools
import os

import tensorflow as tf

from keras_shortrun.backend.common import check_training_loss
from keras_shortrun.backend.common import counting_traces
from keras_shortrun.backend.common import in_plain_graph
from keras_shortrun.backend.common import unpack_inputs


def value_and_grad(fn, x):
    """Returns ``fn(x)`` (shape ``(B,)``) and ``d sum(fn(x)) / dx``.

    Nested inside an outer ``GradientTape`` the gradient is itself
    differentiable, which is what backpropagation through the chain needs.
    """
    with tf.GradientTape() as tape:
        tape.watch(x)
        values = fn(x)
        total = tf.reduce_sum(values)
    return values, tape.gradient(total, x, unconnected_gradients=tf.UnconnectedGradients.ZERO)


def value_and_gradients(fn, variables, inputs=()):
    """Returns the scalar ``fn(*inputs)`` and its gradients w.r.t. ``variables`` (Keras variables) and ``inputs``
    (arrays), as two lists; a gradient that does not depend on them is zero."""
    variables, inputs = list(variables), [tf.convert_to_tensor(x) for x in inputs]
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        value = fn(*inputs)
    grads = tape.gradient(value, [v.value for v in variables] + inputs,
                          unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return value, grads[: len(variables)], grads[len(variables):]


def batch_hessian(fn, x):
    """Per-sample Hessians ``d^2 fn(x)_b / dx_b^2``, shape ``(B, D, D)``, of a per-sample ``fn`` on ``x (B, D)``."""
    with tf.GradientTape() as outer:
        outer.watch(x)
        with tf.GradientTape() as inner:
            inner.watch(x)
            total = tf.reduce_sum(fn(x))
        grad = inner.gradient(total, x, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return outer.batch_jacobian(grad, x, unconnected_gradients=tf.UnconnectedGradients.ZERO)


def fori_loop(steps, body, state, unroll=False):
    """Runs ``state = body(k, state)`` for ``k = 0 .. steps-1`` as a while loop, or ``unroll``-ed in Python."""
    if unroll:
        for k in range(steps):
            state = body(tf.constant(k), state)
        return state
    return tf.while_loop(
        lambda k, _: k < steps,
        lambda k, s: (k + 1, body(k, s)),
        (tf.constant(0), state),
        parallel_iterations=1,
        # XLA needs the bound to differentiate through the loop; plain graphs (and ONNX exports) go without it.
        maximum_iterations=steps if compiles_with_xla() and not in_plain_graph() else None,
    )[1]


def _as_seed(seed):
    return tf.cast(tf.math.floormod(tf.cast(seed, "int64"), tf.int32.max - 1), "int32")


def fold_in(seed, data):
    """A new ``(2,)`` seed from ``seed`` and an integer (independent streams for different ``data``)."""
    return tf.random.experimental.stateless_fold_in(_as_seed(seed), tf.cast(data, "int32"))


def stateless_normal(shape, seed, dtype):
    """Standard normal noise from a ``(2,)`` integer seed tensor."""
    return tf.random.stateless_normal(shape, seed=_as_seed(seed), dtype=dtype)


XLA_ON_CPU_ENV = "KERAS_SHORTRUN_TF_XLA"


@functools.cache
def compiles_with_xla():
    """Whether ``compile_method`` uses XLA: where an accelerator is present (as Keras's ``jit_compile="auto"``),
    and on the CPU when ``KERAS_SHORTRUN_TF_XLA=1``.

    On CPU, XLA's while loop runs a chain step slower than TensorFlow's, but XLA on the unrolled
    chain (which ``LangevinChain(unroll="auto")`` then chooses) measured 1.6x faster than the default, at a longer
    compile (docs/performance.md, "XLA on the CPU"). Opt-in until the whole suite has run under it.
    """
    return os.environ.get(XLA_ON_CPU_ENV) == "1" or any(
        d.device_type != "CPU" for d in tf.config.list_physical_devices()
    )


def compile_method(owner, fn):
    """``tf.function`` of ``fn``, XLA-compiled where ``compiles_with_xla()``."""
    del owner  # tf.function reads the owner's variables by reference.
    return tf.function(counting_traces(fn), jit_compile=compiles_with_xla(), reduce_retracing=True)


def sync_training_state(model):
    """Nothing to do: TensorFlow's ``fit`` updates the variables in place (see the JAX twin)."""
    del model


def _replicas_in_sync():
    context = tf.distribute.get_replica_context()
    return 1 if context is None else context.num_replicas_in_sync


@contextlib.contextmanager
def _distinct_replica_seeds(model, replicas):
    """With several ``tf.distribute`` replicas, every ``SeedGenerator`` of ``model`` hands out seeds with the
    replica's index folded in while the step is traced, so that the replicas draw different chain starts and
    noise (Keras gives every replica the same seeds). Nothing changes with one replica."""
    if replicas == 1:
        yield
        return
    replica = tf.distribute.get_replica_context().replica_id_in_sync_group
    generators = [g for layer in model._flatten_layers() for g in layer._seed_generators]

    def folded(generator):
        def next_seed(ordered=True):
            seed = type(generator).next(generator, ordered)
            return tf.cast(fold_in(seed, replica), seed.dtype)

        return next_seed

    for generator in generators:
        generator.next = folded(generator)
    try:
        yield
    finally:
        for generator in generators:
            del generator.next


class TrainStepMixin:
    """``train_step``/``test_step`` for models with a two-phase objective.

    The model defines ``prepare_batch(x) -> aux`` (no gradient: MCMC samples,
    inferred latents) and ``compute_training_loss(x, y, aux, training) ->
    (loss, logs)`` (``y``: the batch's targets, ``None`` for unsupervised
    data); only the second phase is recorded on the tape, so the chain's while loop
    keeps no accumulators for a backward pass it never has.
    Logs are averaged over the epoch by the model's ``metrics_trackers``.
    """

    def train_step(self, data):
        x, y = unpack_inputs(data)
        replicas = _replicas_in_sync()
        with _distinct_replica_seeds(self, replicas):
            aux = self.prepare_batch(x)
        with tf.GradientTape() as tape:
            loss, logs = self.compute_training_loss(x, y, aux, training=True)
            check_training_loss(self, logs)
            # The optimizer sums the replicas' gradients: scale each replica's so that the sum is the gradient of
            # the global batch's mean loss (as Keras's own train_step does).
            scaled_loss = loss / replicas
        variables = self.trainable_variables
        grads = tape.gradient(scaled_loss, variables)
        self.optimizer.apply_gradients(zip(grads, variables))
        return self._update_trackers(dict(logs, loss=loss))

    def test_step(self, data):
        x, y = unpack_inputs(data)
        aux = self.prepare_batch(x)
        loss, logs = self.compute_training_loss(x, y, aux, training=False)
        return self._update_trackers(dict(logs, loss=loss))

    def _update_trackers(self, logs):
        for name, value in logs.items():
            self.metrics_trackers[name].update_state(value)
        return _reducible_across_workers({name: m.result() for name, m in self.metrics_trackers.items()})


def _reducible_across_workers(logs):
    """``logs`` as Keras's ``fit`` can average them over the workers of a ``MultiWorkerMirroredStrategy``.

    There Keras reduces every log with ``strategy.reduce("MEAN", log, axis=0)``, which refuses a scalar
    ("Invalid reduction dimension 0 for input with 0 dimensions", tensorflow/tensorflow#72388): so each log
    goes out as a vector of one, which that reduction turns back into the scalar. Elsewhere nothing changes.
    """
    strategy = tf.distribute.get_strategy()
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and strategy.extended._in_multi_worker_mode():
        return {name: tf.reshape(value, (1,)) for name, value in logs.items()}
    return logs

