"""Presets of every model family, registered with the zoo (keras-hub style).

``sha256`` pins the digests of each entry's files in code: ``zoo.load`` refuses
an entry whose files differ, even if its ``metadata.json`` was edited to match.
``python tools/pin_zoo_hashes.py <entry>`` writes them here after an export.
"""

import keras

from keras_shortrun.models.classifier import GenerativeClassifier
from keras_shortrun.models.ebm import ShortRunEBM
from keras_shortrun.models.lvm import MultiLayerLVM
from keras_shortrun.models.vae import VAE
from keras_shortrun.zoo.registry import register_presets

SHORT_RUN_EBM_PRESETS = {
    "mnist_ebm": {
        "description": "Short-run EBM (paper-1 ConvNet, nf=16, K=50, clamped) on MNIST 28x28, 1,800 CPU updates.",
        "sha256": {
            "config.json": "c7f325c5171ed181342cc957a247cf1016495937ef2610f7e60464e01b00bd49",
            "model.weights.h5": "67fa10c1ad6d9741e69b44ace695a811e5c22694a117a941be87a329a3871500",
        },
    },
    "fashion_mnist_ebm": {
        "description": "Short-run EBM (paper-1 ConvNet, nf=16, K=50, clamped) on Fashion-MNIST 28x28, CPU budget.",
        "sha256": {
            "config.json": "c7f325c5171ed181342cc957a247cf1016495937ef2610f7e60464e01b00bd49",
            "model.weights.h5": "178cea882722000388f4b13ae2a153c2a2a25cc6139ae3fdc34d9c9ffbff198c",
        },
    },
    "cifar10_ebm": {
        "description": "Short-run EBM, coarse-to-fine chain 8->16->32 (K=85, nf=16 per resolution) on the JPEG "
                       "CIFAR-10 subset 32x32, CPU budget.",
        "sha256": {
            "config.json": "d9258dccd7b1a2ba90546c18f058be423494a34d7a565b03a0f088df7218c420",
            "model.weights.h5": "26c9689875e1082ff7503836319ab66ca233c68017e58cc5f8a05b3cc9774889",
        },
    },
    "celeba_ebm": {
        "description": "Short-run EBM on CelebA 64x64: coarse-to-fine chain 8->16->32->64 (K=95, clamped, noise "
                       "annealed), one nf=16 paper-1 ConvNet per resolution; CPU campaign.",
        "sha256": {
            "config.json": "e5c8920e8bc5eaab1483a456536d8769893f35b869a4cd550d4a6b5626318de6",
            "model.weights.h5": "273daa30f01f8e31dfc076b074a0546290fbe65545b0ca36bb615c4c18f7d3a8",
        },
    },
}

register_presets("ShortRunEBM", SHORT_RUN_EBM_PRESETS, ShortRunEBM)

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

register_presets("MultiLayerLVM", MULTI_LAYER_LVM_PRESETS, MultiLayerLVM)
register_presets("VAE", VAE_PRESETS, VAE)

GENERATIVE_CLASSIFIER_PRESETS = {
    "mnist_classifier": {
        "description": "Generative classifier on MNIST, 1,000 labels per class, rest unlabelled; K=20, BPTT.",
        "sha256": {
            "config.json": "2d2efc627037a732434ff0052c3babb844053f5a7ae9e7fd864e677317bd2030",
            "model.weights.h5": "2aa69fdb7562ed75466008bc1b1f2e1a3030bfc5396c7081bfadbe888997c915",
        },
    },
    "mnist_classifier_100labels": {
        "description": "Generative classifier on MNIST, 100 labels per class, rest unlabelled; K=20, BPTT.",
        "sha256": {
            "config.json": "f375f20d18afbf7ad8fd887f2cfbcbbf8e90006cd71f567166bb116a296016eb",
            "model.weights.h5": "7aa8982808fa45c26854607f30d34f4db48cb086a71a6cebac27caa88e29c2b9",
        },
    },
    "fashion_mnist_classifier": {
        "description": "Generative classifier on Fashion-MNIST, 1,000 labels per class, rest unlabelled; K=20, BPTT.",
        "sha256": {
            "config.json": "7608a7b1b800bc026fcc9848f177cb5199e7f2d3c499a83d671c89bf0fd6b9fa",
            "model.weights.h5": "24320b0bfc9da9aa6b11ed7583ba894d379883bd48706aee236ae6afdf605fe5",
        },
    },
    "fashion_mnist_classifier_100labels": {
        "description": "Generative classifier on Fashion-MNIST, 100 labels per class, rest unlabelled; K=20, BPTT.",
        "sha256": {
            "config.json": "a9ef42d42d7f93a30e2eddcb411be98ea10ae750319d790d49772dd6dd37f9d2",
            "model.weights.h5": "bb9ccf69571f191ddc23af579d6d49263f880d9eec3ee12a7b6ebe25b7829731",
        },
    },
}

CONVNET_PRESETS = {
    "mnist_classifier_convnet": {
        "description": "ConvNet baseline of mnist_classifier: same 1,000 labels per class.",
        "sha256": {
            "config.json": "284dbaa6adaa95ba566b7e2e444db4ec32998ea76c71e9ce3690f27ae77ed771",
            "model.weights.h5": "5c44555841caf89fa530581109557bcd6e3f3082f939aa24d3b056b4a483e928",
        },
    },
    "mnist_classifier_convnet_100labels": {
        "description": "ConvNet baseline of mnist_classifier_100labels: same 100 labels per class.",
        "sha256": {
            "config.json": "757848bda0611348abb44e5e7f4fb2d837abd83d90eec4ba4470ea078d13099a",
            "model.weights.h5": "2f1088706c3d81930d187924887bcf38e40de30be34a86880eb53f5a2d185438",
        },
    },
    "fashion_mnist_classifier_convnet": {
        "description": "ConvNet baseline of fashion_mnist_classifier: same 1,000 labels per class.",
        "sha256": {
            "config.json": "284dbaa6adaa95ba566b7e2e444db4ec32998ea76c71e9ce3690f27ae77ed771",
            "model.weights.h5": "4ba52465aa4388979e604ed5159456f3af09c3c1b974fc4a64f7ece16f2bfa19",
        },
    },
    "fashion_mnist_classifier_convnet_100labels": {
        "description": "ConvNet baseline of fashion_mnist_classifier_100labels: same 100 labels per class.",
        "sha256": {
            "config.json": "757848bda0611348abb44e5e7f4fb2d837abd83d90eec4ba4470ea078d13099a",
            "model.weights.h5": "2a28e6e179dfa3b9a8f2d3a57439c093adcfe81692321b696b29ad547750fb4d",
        },
    },
}

register_presets("GenerativeClassifier", GENERATIVE_CLASSIFIER_PRESETS, GenerativeClassifier)
register_presets("ConvNet", CONVNET_PRESETS, keras.Model)

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
register_presets("FeatureNet", FEATURE_NET_PRESETS, keras.Model)
