"""Backend-neutral helpers shared by the per-backend train-step glue."""

import keras


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
