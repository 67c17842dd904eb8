"""Seeds of the public sampling calls: checked once, and independent streams derived from one seed by name.

A public call that draws several things (a sampler's chain start and its noise, an interpolation's two
endpoints) draws each from its own named stream of the caller's seed: ``stream(seed, "start")``,
``stream(seed, "noise")``. The stream's seed is a hash of the seed and the name, so ``sample(seed=1)`` and
``sample(seed=2)`` share no draw, as ``seed + 1`` offsets did. Inside compiled functions, where the seed is a
tensor, ``backend.fold_in(seed, stream_id(name))`` does the same.
"""

import hashlib

import keras

from keras_shortrun.validation import check_seed


def seed_generator(seed, default):
    """``default`` (a model's own ``keras.random.SeedGenerator``) when ``seed`` is ``None``, else a fresh
    generator started from the checked ``seed``."""
    seed = check_seed(seed)
    return default if seed is None else keras.random.SeedGenerator(seed)


def _hash32(text):
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=4, person=b"shortrun").digest(), "little")


def stream(seed, name):
    """The seed of stream ``name`` (a non-empty string) of a checked ``seed``, in ``[0, 2**32)``; ``None`` stays
    ``None`` (the model's own generator draws). Two different ``(seed, name)`` pairs give the same seed only by
    a hash collision (probability ``2**-32`` per pair)."""
    seed = check_seed(seed)
    if not isinstance(name, str) or not name:
        raise ValueError(f"A seed stream needs a non-empty name, got {name!r}.")
    return None if seed is None else _hash32(f"{name}:{seed}")


def stream_id(name):
    """A fixed integer in ``[0, 2**31)`` for ``name``: ``backend.fold_in(seed, stream_id(name))`` derives a
    named stream from a seed tensor inside a compiled function. Far from the small step and stage indices that
    the chains fold in."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"A seed stream needs a non-empty name, got {name!r}.")
    return _hash32(name) % 2**31
