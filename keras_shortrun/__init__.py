"""keras_shortrun: short-run MCMC generative models for Keras 3."""

import os

__version__ = "0.1.0"

_SUPPORTED_BACKENDS = ("tensorflow", "jax")
if os.environ.get("KERAS_BACKEND", "tensorflow") not in _SUPPORTED_BACKENDS:
    raise ImportError(
        f"keras_shortrun supports the Keras backends {_SUPPORTED_BACKENDS}, but "
        f"KERAS_BACKEND={os.environ['KERAS_BACKEND']!r}. Set KERAS_BACKEND=tensorflow "
        f"(default) or KERAS_BACKEND=jax."
    )

from keras_shortrun import attacks  # noqa: E402
from keras_shortrun import backend  # noqa: E402  (raises for other configured backends)
from keras_shortrun import zoo  # noqa: E402
from keras_shortrun.layers import LangevinChain  # noqa: E402
from keras_shortrun.models import ShortRunEBM  # noqa: E402

__all__ = ["LangevinChain", "ShortRunEBM", "__version__", "attacks", "backend", "zoo"]
