"""Seeds of the public sampling calls: checked once, and the streams derived from one seed kept in 32 bits."""

import keras

from keras_shortrun.validation import SEED_LIMIT
from keras_shortrun.validation import check_seed


def seed_generator(seed, default):
    """``default`` (a model's own ``keras.random.SeedGenerator``) when ``seed`` is ``None``, else a fresh
    generator started from the checked ``seed``."""
    seed = check_seed(seed)
    return default if seed is None else keras.random.SeedGenerator(seed)


def offset(seed, k):
    """The ``k``-th stream derived from a checked ``seed`` (``None`` stays ``None``), wrapped into 32 bits."""
    seed = check_seed(seed)
    return None if seed is None else (seed + k) % SEED_LIMIT
