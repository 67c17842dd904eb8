"""Presets of every model family, registered with the zoo (keras-hub style)."""

from keras_shortrun.zoo.registry import register_presets

SHORT_RUN_EBM_PRESETS = {
    "mnist_ebm": {
        "description": "Short-run EBM (paper-1 ConvNet, nf=16, K=50) on MNIST 28x28, trained on CPU.",
    },
}

register_presets("ShortRunEBM", SHORT_RUN_EBM_PRESETS)
