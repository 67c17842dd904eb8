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

MULTI_LAYER_LVM_PRESETS = {
    "mnist_lvm": {
        "description": "Multi-layer LVM on MNIST: latents [8, 16, 32], K=25 short-run inference, learned s.",
        "sha256": {
            "config.json": "3c4f272499d8e1571d3634a93eb4f47dccaa25c354219352588afbf52febc22a",
            "model.weights.h5": "853987db9b6761a53d1047245a5f8cc650de147a0eb54b77e05456b34ee2b2cd",
        },
    },
    "celeba_lvm": {
        "description": "Multi-layer LVM on CelebA 32px: latents [16, 32, 64], K=25 short-run inference, learned s.",
        "sha256": {
            "config.json": "292af46c418588e9c63160c1059d19ca90765d697b48257014052cf518cde6e8",
            "model.weights.h5": "5ba442b8246d5505ae92102447c221b1b3aa48bd05c899a2473f018cffdad89b",
        },
    },
}

VAE_PRESETS = {
    "mnist_lvm_vae": {
        "description": "VAE baseline of mnist_lvm: same generator, data, optimiser and updates; amortised encoder.",
        "sha256": {
            "config.json": "06c5beb1f9581566f4b72bc53536e269dcc12f4cebaa912c4f03073a88d0b727",
            "model.weights.h5": "e6206e0e3d17109d03b6b0aa2ac167ab8f7ecbaa360becb254eb79d6607ef576",
        },
    },
    "celeba_lvm_vae": {
        "description": "VAE baseline of celeba_lvm: same generator, data, optimiser and updates; amortised encoder.",
        "sha256": {
            "config.json": "b09ea8a64d34c0e62cc0b8c5f3cd8e7a573734999ac3723712e7e22369f1281e",
            "model.weights.h5": "196a46e63ad4e3b036feff3447a4ce860f35fef610bc7f20326fbcaa78479ec1",
        },
    },
}

register_presets("MultiLayerLVM", MULTI_LAYER_LVM_PRESETS)
register_presets("VAE", VAE_PRESETS)
