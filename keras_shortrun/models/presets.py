"""Presets of every model family, registered with the zoo (keras-hub style).

``sha256`` pins the digests of each entry's files in code: ``zoo.load`` refuses
an entry whose files differ, even if its ``metadata.json`` was edited to match.
``tools/train_<entry>.py export`` prints the new digests to paste here.
"""

from keras_shortrun.zoo.registry import register_presets

SHORT_RUN_EBM_PRESETS = {
    "mnist_ebm": {
        "description": "Short-run EBM (paper-1 ConvNet, nf=16, K=50) on MNIST 28x28, trained on CPU.",
        "sha256": {
            "config.json": "55a069ae449e03fcb24609939bdb4d99779094862f3539acc14ba068cd424bd8",
            "model.weights.h5": "c5a1072c3b69dd485d9f3b6303b1f0da0e8030e535131053ec136a084955bdc9",
        },
    },
}

register_presets("ShortRunEBM", SHORT_RUN_EBM_PRESETS)
