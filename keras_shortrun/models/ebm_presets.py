"""Presets of ``ShortRunEBM`` (``ebm.py``)."""

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
            "config.json": "14def73d2545a14c193499bd1aedf7c42293c378bee921c4f1fe833a2806f9fb",
            "model.weights.h5": "26c9689875e1082ff7503836319ab66ca233c68017e58cc5f8a05b3cc9774889",
        },
    },
    "celeba_ebm": {
        "description": "Short-run EBM on CelebA 64x64: coarse-to-fine chain 8->16->32->64 (K=130, clamped, noise "
                       "annealed), one paper-1 ConvNet per resolution (nf=32 at 8 and 16 px, 16 at 32 and 64 px); "
                       "CPU campaign.",
        "sha256": {
            "config.json": "9db5e7b7ef247c6b53ef5b56d67f506efd62fc83f0574127f21390712e33666e",
            "model.weights.h5": "a6f9034155e67b4681e76e5adc3893ff7416884dbb79c2cfdcc654e948da1899",
        },
    },
}
