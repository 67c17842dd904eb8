"""keras_shortrun: short-run MCMC generative models for Keras 3.

Importing the package loads neither Keras nor TensorFlow: the public names below
are imported on first use, so that ``keras_shortrun.serving`` (numpy,
onnxruntime, Pillow) runs where TensorFlow is not installed.
"""

import importlib
import os

__version__ = "0.1.0"

_SUPPORTED_BACKENDS = ("tensorflow", "jax")
if os.environ.get("KERAS_BACKEND", "tensorflow") not in _SUPPORTED_BACKENDS:
    raise ImportError(
        f"keras_shortrun supports the Keras backends {_SUPPORTED_BACKENDS}, but "
        f"KERAS_BACKEND={os.environ['KERAS_BACKEND']!r}. Set KERAS_BACKEND=tensorflow "
        f"(default) or KERAS_BACKEND=jax."
    )

_LAZY = {  # public name -> (module, attribute or None for the module itself)
    "attacks": ("keras_shortrun.attacks", None),
    "backend": ("keras_shortrun.backend", None),  # raises for other configured backends
    "zoo": ("keras_shortrun.zoo", None),
    "LangevinChain": ("keras_shortrun.layers", "LangevinChain"),
    "ShortRunEBM": ("keras_shortrun.models", "ShortRunEBM"),
}


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'keras_shortrun' has no attribute {name!r}")
    module_name, attribute = _LAZY[name]
    module = importlib.import_module(module_name)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = ["LangevinChain", "ShortRunEBM", "__version__", "attacks", "backend", "zoo"]
