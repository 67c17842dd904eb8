"""keras_shortrun: short-run MCMC generative models for Keras 3.

Importing the package loads neither Keras nor TensorFlow: the public names below
are imported on first use, so that ``keras_shortrun.serving`` (numpy,
onnxruntime, Pillow) runs where TensorFlow is not installed.
"""

import importlib
import json
import os

__version__ = "0.1.0"

_SUPPORTED_BACKENDS = ("tensorflow", "jax")


def _configured_backend():
    """The Keras backend as Keras will choose it (``$KERAS_BACKEND``, else ``backend`` in
    ``$KERAS_HOME/keras.json`` or ``~/.keras/keras.json``, else TensorFlow), read without importing Keras."""
    if "KERAS_BACKEND" in os.environ:
        return os.environ["KERAS_BACKEND"], "KERAS_BACKEND"
    config = os.path.join(os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras"), "keras.json")
    try:
        with open(config) as f:
            return json.load(f).get("backend", "tensorflow"), config
    except (OSError, ValueError, AttributeError):
        return "tensorflow", "the default"


_backend, _source = _configured_backend()
if _backend not in _SUPPORTED_BACKENDS:
    raise ImportError(
        f"keras_shortrun supports the Keras backends {_SUPPORTED_BACKENDS}, but Keras is configured with "
        f"{_backend!r} (from {_source}). Set KERAS_BACKEND=tensorflow (default) or KERAS_BACKEND=jax."
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
