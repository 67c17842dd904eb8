"""Presets of every model family, registered with the zoo (keras-hub style).

``sha256`` pins the digests of each entry's files in code: ``zoo.load`` refuses
an entry whose files differ, even if its ``metadata.json`` was edited to match.
``tools/train_<entry>.py export`` prints the new digests to paste here.
"""

from keras_shortrun.zoo.registry import register_presets

SHORT_RUN_EBM_PRESETS = {
    "mnist_ebm": {
        "description": "Short-run EBM (paper-1 ConvNet, nf=16, K=50, clamped) on MNIST 28x28, 1,800 CPU updates.",
        "sha256": {
            "config.json": "c7f325c5171ed181342cc957a247cf1016495937ef2610f7e60464e01b00bd49",
            "model.weights.h5": "67fa10c1ad6d9741e69b44ace695a811e5c22694a117a941be87a329a3871500",
        },
    },
}

register_presets("ShortRunEBM", SHORT_RUN_EBM_PRESETS)
