"""JAX implementations of the backend functions (see ``__init__``)."""

import jax
import jax.numpy as jnp
import keras

from keras_shortrun.backend.common import check_training_loss
from keras_shortrun.backend.common import counting_traces
from keras_shortrun.backend.common import unpack_inputs


def compiles_with_xla():
    """Always: ``jax.jit`` is XLA."""
    return True


def value_and_grad(fn, x):
    """Returns ``fn(x)`` (shape ``(B,)``) and ``d sum(fn(x)) / dx``; composable with ``jax.grad``."""

    def summed(inputs):
        values = fn(inputs)
        return jnp.sum(values), values

    (_, values), grads = jax.value_and_grad(summed, has_aux=True)(x)
    return values, grads


def value_and_gradients(fn, variables, inputs=()):
    """Returns the scalar ``fn(*inputs)`` and its gradients w.r.t. ``variables`` (Keras variables) and ``inputs``
    (arrays), as two lists; the variables' values are traced as arguments, so ``fn`` reads them as weights."""
    variables, inputs = list(variables), [jnp.asarray(x) for x in inputs]

    def pure(values, arguments):
        return _run_stateless(variables, values, lambda: fn(*arguments))[0]

    value, (variable_grads, input_grads) = jax.value_and_grad(pure, argnums=(0, 1))(
        [v.value for v in variables], inputs)
    return value, list(variable_grads), list(input_grads)


def batch_hessian(fn, x):
    """Per-sample Hessians ``d^2 fn(x)_b / dx_b^2``, shape ``(B, D, D)``, of a per-sample ``fn`` on ``x (B, D)``.

    Forward-over-reverse: one Jacobian-vector product of the gradient per
    coordinate, vectorised; samples are independent, so one basis vector
    serves the whole batch.
    """

    def grad_fn(inputs):
        return jax.grad(lambda z: jnp.sum(fn(z)))(inputs)

    dim = x.shape[1]
    basis = jnp.broadcast_to(jnp.eye(dim, dtype=x.dtype)[:, None, :], (dim,) + tuple(x.shape))
    columns = jax.vmap(lambda v: jax.jvp(grad_fn, (x,), (v,))[1])(basis)  # (D, B, D)
    return jnp.transpose(columns, (1, 2, 0))


def fori_loop(steps, body, state, unroll=False):
    """Runs ``state = body(k, state)`` for ``k = 0 .. steps-1`` (``steps`` a Python int).

    A ``lax.scan`` rather than ``lax.fori_loop`` so that reverse-mode
    differentiation (BPTT) works; ``unroll`` unrolls it fully.
    """

    def scan_body(carry, k):
        return body(k, carry), None

    return jax.lax.scan(scan_body, state, jnp.arange(steps), unroll=bool(unroll))[0]


def fold_in(seed, data):
    """A new ``(2,)`` seed from ``seed`` and an integer (independent streams for different ``data``)."""
    return jax.random.fold_in(jnp.asarray(seed).astype("uint32"), data)


def stateless_normal(shape, seed, dtype):
    """Standard normal noise from a ``(2,)`` integer seed tensor."""
    return jax.random.normal(jnp.asarray(seed).astype("uint32"), shape, dtype)


def _run_stateless(variables, values, fn):
    """Runs ``fn()`` with ``variables`` bound to ``values``; returns (output, new values)."""
    with keras.StatelessScope(state_mapping=list(zip(variables, values))) as scope:
        out = fn()
    return out, [scope.get_current_value(v) for v in variables]


def compile_method(owner, fn):
    """``jax.jit`` of ``fn`` with the owner's variables passed as arguments.

    Passing the weights as arguments (not closing over them) keeps them out of
    the compiled program as constants, so one compilation serves updated
    weights. Non-trainable state that ``fn`` changes (seed generators) is
    written back after each call.
    """
    variables = list(owner.variables)
    counted = counting_traces(fn)

    def pure(values, *args):
        return _run_stateless(variables, values, lambda: counted(*args))

    jitted = jax.jit(pure)

    def call(*args):
        out, new_values = jitted([v.value for v in variables], *args)
        for variable, value in zip(variables, new_values):
            if not variable.trainable:
                variable.assign(value)
        return out

    return call


def sync_training_state(model):
    """Writes the state that ``fit`` carries between steps back into ``model``'s variables, and makes the
    next step read them again (so that a callback can assign weights mid-epoch)."""
    model.jax_state_sync()


class TrainStepMixin:
    """Stateless ``train_step``/``test_step`` (see the TensorFlow twin for the contract)."""

    def _stateless(self, trainable, non_trainable, fn):
        variables = self.trainable_variables + self.non_trainable_variables
        out, values = _run_stateless(variables, list(trainable) + list(non_trainable), fn)
        return out, values[len(trainable):]

    def train_step(self, state, data):
        trainable, non_trainable, optimizer_vars, metrics_vars = state
        x, y = unpack_inputs(data)
        aux, non_trainable = self._stateless(
            trainable, non_trainable, lambda: self.prepare_batch(x)
        )
        aux = jax.lax.stop_gradient(aux)

        def loss_fn(trainable_values, non_trainable_values):
            (loss, logs), new_non_trainable = self._stateless(
                trainable_values,
                non_trainable_values,
                lambda: self.compute_training_loss(x, y, aux, training=True),
            )
            check_training_loss(self, logs)
            return loss, (logs, new_non_trainable)

        (loss, (logs, non_trainable)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            trainable, non_trainable
        )
        trainable, optimizer_vars = self.optimizer.stateless_apply(
            optimizer_vars, grads, trainable
        )
        results, metrics_vars = self._stateless_update_trackers(
            metrics_vars, dict(logs, loss=loss)
        )
        return results, (trainable, non_trainable, optimizer_vars, metrics_vars)

    def test_step(self, state, data):
        trainable, non_trainable, metrics_vars = state
        x, y = unpack_inputs(data)

        def evaluate():
            aux = self.prepare_batch(x)
            return self.compute_training_loss(x, y, aux, training=False)

        (loss, logs), non_trainable = self._stateless(trainable, non_trainable, evaluate)
        results, metrics_vars = self._stateless_update_trackers(
            metrics_vars, dict(logs, loss=loss)
        )
        return results, (trainable, non_trainable, metrics_vars)

    def _stateless_update_trackers(self, metrics_vars, logs):
        results, new_vars, start = {}, [], 0
        for name, tracker in self.metrics_trackers.items():
            own = list(metrics_vars[start : start + len(tracker.variables)])
            start += len(tracker.variables)
            own = tracker.stateless_update_state(own, logs[name])
            results[name] = tracker.stateless_result(own)
            new_vars.extend(own)
        return results, new_vars
