"""Backend-neutral helpers shared by the per-backend train-step glue."""

import keras


def unpack_inputs(data):
    """Returns the ``x`` of a Keras batch ``x``, ``(x,)``, ``(x, y)`` or ``(x, y, w)``."""
    x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
    return x


def check_training_loss(model, loss, logs):
    """Validates the contract of ``compute_training_loss``."""
    if "loss" in logs:
        raise ValueError(
            f"{type(model).__name__}.compute_training_loss must not put 'loss' "
            "in its logs: the training loss is reported under that name."
        )
    return loss
