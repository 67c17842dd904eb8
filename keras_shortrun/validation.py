"""Input checks that name the problem (shape, dtype, range, NaN)."""

import numpy as np


def check_images(x, data_shape, name="x", value_range=(-1.0, 1.0)):
    """Returns ``x`` as float32 ``(B, *data_shape)`` or raises ``ValueError`` naming the problem."""
    array = np.asarray(x)
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
    return array.astype("float32")


def check_positive_int(value, name):
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)
