"""Input checks at the API boundary: each names the argument and the problem before any work or tracing."""

import math

import numpy as np

SEED_LIMIT = 2**32  # JAX keeps a seed in 32 bits; larger seeds would wrap there, so they are refused everywhere


def is_array(x):
    """Whether ``x`` is an in-memory array of any library (numpy, TensorFlow, JAX, torch, nested lists), as
    opposed to a stream (``tf.data.Dataset``, ``keras.utils.PyDataset``, a generator) that ``fit`` and
    ``predict`` also take."""
    return isinstance(x, (list, tuple, np.ndarray)) or (hasattr(x, "shape") and hasattr(x, "dtype"))


def check_images(x, data_shape, name="x", value_range=(-1.0, 1.0)):
    """Returns ``x`` (any array type) as float32 numpy ``(B, *data_shape)`` or raises ``ValueError`` naming
    the problem."""
    try:
        array = np.asarray(x)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be an array of shape (B, *{tuple(data_shape)}), got {type(x).__name__} "
                         f"({error}).") from None
    if array.dtype.kind not in "fiu":
        raise ValueError(f"{name} must be numeric, got dtype {array.dtype}.")
    if array.ndim == len(data_shape):
        raise ValueError(f"{name} must be batched, shape (B, *{tuple(data_shape)}); got {array.shape}. Use x[None].")
    if tuple(array.shape[1:]) != tuple(data_shape) or array.shape[0] == 0:
        raise ValueError(f"{name} must have shape (B, *{tuple(data_shape)}) with B >= 1, got {array.shape}.")
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinite values.")
    if value_range is not None:
        low, high = value_range
        if array.min() < low - 1e-3 or array.max() > high + 1e-3:
            hint = " It looks like 0..255 pixels: use keras_shortrun.data.to_model_range." if array.max() > 2 else ""
            raise ValueError(
                f"{name} must lie in [{low}, {high}], got values in [{array.min():.3g}, {array.max():.3g}].{hint}"
            )
    return array.astype("float32", copy=False)


def _is_integer(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_positive_int(value, name):
    """``value`` as an ``int`` if it is a positive integer (Python or numpy; never bool, float or str)."""
    if not _is_integer(value) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


def check_optional_positive_int(value, name):
    """``None``, or ``value`` checked by ``check_positive_int``."""
    return None if value is None else check_positive_int(value, name)


def check_seed(seed, name="seed"):
    """``None`` (fresh randomness) or ``seed`` as an ``int`` in ``[0, 2**32)``."""
    if seed is None:
        return None
    if not _is_integer(seed) or not 0 <= seed < SEED_LIMIT:
        raise ValueError(f"{name} must be None or an integer in [0, 2**32), got {seed!r}.")
    return int(seed)


def check_positive_float(value, name):
    """``value`` as a ``float`` if it is a finite number above zero (never bool or str)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number above 0, got {value!r}.")
    return float(value)


def check_beta_1(value, name="beta_1"):
    """``value`` as a ``float`` if it is a number in ``[0, 1)`` (Adam's first-moment decay)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not 0 <= value < 1:
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}.")
    return float(value)


def check_model_images(model, x, name="x"):
    """``check_images`` of ``x`` against ``model.image_shape`` and ``model.input_range`` (see
    ``CheckedInputsMixin``)."""
    return check_images(x, model.image_shape, name=name, value_range=model.input_range)


class CheckedInputsMixin:
    """``fit``, ``evaluate`` and ``predict`` of a Keras model with in-memory images of any array type
    checked first (``check_images`` against ``self.image_shape`` and ``self.input_range``); streams
    (``tf.data.Dataset``, ``keras.utils.PyDataset``, generators) pass as they are."""

    input_range = (-1.0, 1.0)  # images in the model's pixel range; ``None`` for data without one

    def _checked_images(self, x):
        return check_model_images(self, x) if is_array(x) else x

    def fit(self, x=None, *args, **kwargs):
        return super().fit(self._checked_images(x), *args, **kwargs)

    def evaluate(self, x=None, *args, **kwargs):
        return super().evaluate(self._checked_images(x), *args, **kwargs)

    def predict(self, x, *args, **kwargs):
        return super().predict(self._checked_images(x), *args, **kwargs)
