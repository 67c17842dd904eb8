"""Presets of the feature networks of FD/KID (``keras_shortrun.metrics``)."""

FEATURE_NET_PRESETS = {
    "celeba_features": {
        "description": "Feature network of the CelebA FD/KID: an autoencoder's encoder, 224-d (not Inception).",
        "sha256": {
            "config.json": "6b59f4b9f50cb36b09f4ab887e1cda7191d654b563bf2ab0004b9d7060cd7fd8",
            "model.weights.h5": "d31dd73b84b45c936e9f465b731ed68c7f8318bd919048ad4c78c84e4c39389a",
        },
    },
    "cifar10_features": {
        "description": "Feature network of the CIFAR-10 FD/KID: a supervised ConvNet, 352-d (not Inception).",
        "sha256": {
            "config.json": "a6506dd4c4adfee94a5f0fb57f61809912dd5da59554d137131ff03cad152dcd",
            "model.weights.h5": "f11e26fc4dbb6e608557e3bb08c10ee9647b56ea0f26517f0c8b33210a9c22a7",
        },
    },
}
