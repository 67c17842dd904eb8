"""Presets of ``MultiLayerLVM`` (``lvm.py``) and its ``VAE`` baselines (``vae.py``)."""

MULTI_LAYER_LVM_PRESETS = {
    "mnist_lvm": {
        "description": "Multi-layer LVM on MNIST: latents [8, 16, 32], K=25 short-run inference, learned s.",
        "sha256": {
            "config.json": "3c4f272499d8e1571d3634a93eb4f47dccaa25c354219352588afbf52febc22a",
            "model.weights.h5": "e1815bfcf43487d67fe44ab8a7ddcefcd7e9379c9c4ac3e89b1cd9014329d6f4",
        },
    },
    "celeba_lvm": {
        "description": "Multi-layer LVM on CelebA 32px: latents [16, 32, 64], K=25 short-run inference, learned s.",
        "sha256": {
            "config.json": "292af46c418588e9c63160c1059d19ca90765d697b48257014052cf518cde6e8",
            "model.weights.h5": "c564247b282b126bbdccf363970703717ea70875886d2a7cb34d8a4ac978c263",
        },
    },
}

VAE_PRESETS = {
    "mnist_lvm_vae": {
        "description": "VAE baseline of mnist_lvm: same generator, data, optimiser and updates; amortised encoder.",
        "sha256": {
            "config.json": "06c5beb1f9581566f4b72bc53536e269dcc12f4cebaa912c4f03073a88d0b727",
            "model.weights.h5": "867e40afa94e5ef7c5d83e692c1549ed1044827503cfb594b5d267d186abf481",
        },
    },
    "celeba_lvm_vae": {
        "description": "VAE baseline of celeba_lvm: same generator, data, optimiser and updates; amortised encoder.",
        "sha256": {
            "config.json": "b09ea8a64d34c0e62cc0b8c5f3cd8e7a573734999ac3723712e7e22369f1281e",
            "model.weights.h5": "7902f327399a5930f7cb78a4876f99f8173d413af018707904fcb6507dca9493",
        },
    },
}
