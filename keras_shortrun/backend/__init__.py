"""The only backend-specific code of keras_shortrun.

Everything here has one implementation per supported Keras backend
(``tensorflow.py``, ``jax.py``); the rest of the library is written in
``keras.ops`` and calls these few functions:

- ``value_and_grad(fn, x)``: per-sample scalar ``fn(x)`` of shape ``(B,)`` and
  the gradient of its sum w.r.t. ``x`` (an input, not a weight).
- ``value_and_gradients(fn, variables, inputs)``: a scalar ``fn(*inputs)`` and its gradients w.r.t. Keras
  variables (weights) and input arrays.
- ``batch_hessian(fn, x)``: per-sample Hessians ``(B, D, D)`` of ``fn`` w.r.t. ``x (B, D)``
  (the exact log-determinant of the chain's Jacobian needs them).
- ``fori_loop(steps, body, state, unroll=False)``: a K-step loop that stays differentiable;
  ``unroll`` traces the K bodies one after another instead of a loop op.
- ``stateless_normal(shape, seed, dtype)``: Gaussian noise from a ``(2,)`` seed
  tensor, usable inside compiled loops; ``fold_in(seed, k)`` derives the
  independent seed of step ``k``.
- ``compiles_with_xla()``: whether compiled methods go through XLA (always on JAX; on TensorFlow
  with an accelerator, or ``KERAS_SHORTRUN_TF_XLA=1``); ``auto_unroll(steps)`` follows from it, except
  inside ``tracing_plain_graph()`` (graphs traced for export).
- ``compile_method(owner, fn)``: a compiled version of ``fn`` that reads the
  owner's variables (``tf.function`` on TensorFlow, ``jax.jit`` with the
  variables as arguments on JAX).
- ``sync_training_state(model)``: inside ``fit``, make the model's variables current and
  writable by a callback (JAX's trainer carries them outside the variables between steps).
- ``trace_count()``: how many times compiled functions were traced in this
  process (a call with shapes seen before must not add to it).
- ``TrainStepMixin``: ``train_step``/``test_step`` glue for models that define
  ``prepare_batch`` (the gradient-free part, e.g. MCMC) and
  ``compute_training_loss``.
"""

import keras

from keras_shortrun.backend.common import in_plain_graph
from keras_shortrun.backend.common import trace_count
from keras_shortrun.backend.common import tracing_plain_graph

BACKEND = keras.backend.backend()
# Chains of at most this many steps are unrolled by default where XLA compiles them: on CPU, XLA runs a Langevin
# step inside its loop op 1.1-2.8x slower than the same step unrolled (tools/bench_chain.py --compare-loop), at
# the price of a longer compile.
AUTO_UNROLL_MAX_STEPS = 128

if BACKEND == "tensorflow":
    from keras_shortrun.backend.tensorflow import TrainStepMixin
    from keras_shortrun.backend.tensorflow import batch_hessian
    from keras_shortrun.backend.tensorflow import compile_method
    from keras_shortrun.backend.tensorflow import compiles_with_xla
    from keras_shortrun.backend.tensorflow import fold_in
    from keras_shortrun.backend.tensorflow import fori_loop
    from keras_shortrun.backend.tensorflow import stateless_normal
    from keras_shortrun.backend.tensorflow import sync_training_state
    from keras_shortrun.backend.tensorflow import value_and_grad
    from keras_shortrun.backend.tensorflow import value_and_gradients
elif BACKEND == "jax":
    from keras_shortrun.backend.jax import TrainStepMixin
    from keras_shortrun.backend.jax import batch_hessian
    from keras_shortrun.backend.jax import compile_method
    from keras_shortrun.backend.jax import compiles_with_xla
    from keras_shortrun.backend.jax import fold_in
    from keras_shortrun.backend.jax import fori_loop
    from keras_shortrun.backend.jax import stateless_normal
    from keras_shortrun.backend.jax import sync_training_state
    from keras_shortrun.backend.jax import value_and_grad
    from keras_shortrun.backend.jax import value_and_gradients
else:
    raise ImportError(
        f"keras_shortrun supports the 'tensorflow' and 'jax' Keras backends, "
        f"but Keras is configured with backend '{BACKEND}'. Set "
        f"KERAS_BACKEND=tensorflow (default) or KERAS_BACKEND=jax before "
        f"importing keras."
    )



def auto_unroll(steps):
    """Whether ``LangevinChain(unroll="auto")`` unrolls a chain of ``steps`` updates."""
    return compiles_with_xla() and steps <= AUTO_UNROLL_MAX_STEPS and not in_plain_graph()


__all__ = [
    "AUTO_UNROLL_MAX_STEPS",
    "BACKEND",
    "TrainStepMixin",
    "auto_unroll",
    "batch_hessian",
    "compile_method",
    "compiles_with_xla",
    "fold_in",
    "fori_loop",
    "stateless_normal",
    "sync_training_state",
    "trace_count",
    "tracing_plain_graph",
    "value_and_grad",
    "value_and_gradients",
]
