"""Presets of ``GenerativeClassifier`` and its ConvNet baselines (``classifier.py``)."""

GENERATIVE_CLASSIFIER_PRESETS = {
    "mnist_classifier": {
        "description": "Generative classifier on MNIST, 1,000 labels per class, rest unlabelled; K=20, BPTT.",
        "sha256": {
            "config.json": "75914783aac0043d5a93eaf3a787ce94227f4c8b6e6f04c5df58826e80092eb0",
            "model.weights.h5": "76cbd445f060ff444db4c5bf30af0716caf0773751f2b3b367d259dd08dd82eb",
        },
    },
    "mnist_classifier_100labels": {
        "description": "Generative classifier on MNIST, 100 labels per class, rest unlabelled; K=20, BPTT.",
        "sha256": {
            "config.json": "fca357af26fea12696eef3b9498badec4028998eac86fbd3f5eb0d9c1517d9cb",
            "model.weights.h5": "9731e260927bb88795d5a938eda41e3fd2c787a474879b47643fd826378ddeed",
        },
    },
    "fashion_mnist_classifier": {
        "description": "Generative classifier on Fashion-MNIST, 1,000 labels per class, rest unlabelled; K=20, BPTT.",
        "sha256": {
            "config.json": "2cef2c07c7c5841fbb94a7aecae019cdf79d698c18cf83fb9a853a721c66a1bb",
            "model.weights.h5": "1117d8c89b4227f92bcf883893ab7086d3695b26d66384a07ff3a248004d3e3a",
        },
    },
    "fashion_mnist_classifier_100labels": {
        "description": "Generative classifier on Fashion-MNIST, 100 labels per class, rest unlabelled; K=20, BPTT.",
        "sha256": {
            "config.json": "3464dc67c8d14850c67fec87bb72b900a0e6eaee366f76a3f40560cf4dd00dc3",
            "model.weights.h5": "bb8e146ae25d49bafc3a5f4348cd31f620936d43bc9cc541184c180a60f8e146",
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
