"""The ``cifar10_features`` zoo entry: the feature network of the CIFAR-10 sample-quality metrics.

    python tools/train_cifar10_features.py [--epochs 20]     # trains, then writes zoo/cifar10_features

No Inception weights are available offline, so the CIFAR-10 metric uses a small supervised classifier trained
on the 10,000 labelled training images of the subset (never the 5,000 held-out test images that the metric
compares against, never a model it scores). Features (352-d): the global average of the first two conv stages
(32 + 64 channels: local texture, so noise and blur move them) and the 256-d penultimate layer (class content).
"""

import argparse
import time
from pathlib import Path

import keras
import numpy as np
from keras import layers

from keras_shortrun import data
from keras_shortrun.training import hardware
from keras_shortrun.zoo import save_entry

ROOT = Path(__file__).resolve().parents[1]

WIDTHS = (32, 64, 128)
EMBEDDING = 256


def build():
    """(features: (B, 32, 32, 3) -> (B, 352), classifier: (B, 32, 32, 3) -> (B, 10) probabilities)."""
    inputs = keras.Input((32, 32, 3))
    h, pooled = inputs, []
    for i, width in enumerate(WIDTHS):
        for j in range(2):
            h = layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"conv_{i}_{j}")(h)
            h = layers.ReLU()(layers.BatchNormalization(name=f"bn_{i}_{j}")(h))
        if i < 2:
            pooled.append(layers.GlobalAveragePooling2D(name=f"texture_{i}")(h))
        h = layers.MaxPooling2D()(h)
    embedding = layers.Dense(EMBEDDING, activation="relu", name="embedding")(layers.GlobalAveragePooling2D()(h))
    features = layers.Concatenate(name="features")(pooled + [embedding])
    encoder = keras.Model(inputs, features, name="cifar10_features")
    augmented = layers.RandomTranslation(0.1, 0.1, fill_mode="reflect")(layers.RandomFlip("horizontal")(inputs))
    logits = layers.Dense(10, name="logits")(layers.Dropout(0.3)(keras.Model(inputs, embedding)(augmented)))
    return encoder, keras.Model(inputs, layers.Softmax()(logits), name="cifar10_classifier")


def main(epochs, data_path=None):
    keras.utils.set_random_seed(0)
    x_train, y_train = data.load("cifar10", "train", path=data_path)
    x_test, y_test = data.load("cifar10", "test", path=data_path)
    encoder, classifier = build()
    steps = epochs * int(np.ceil(len(x_train) / 64))
    schedule = keras.optimizers.schedules.CosineDecay(1e-3, steps)
    classifier.compile(keras.optimizers.Adam(schedule), "sparse_categorical_crossentropy", metrics=["accuracy"])
    start = time.time()
    history = classifier.fit(x_train, y_train, batch_size=64, epochs=epochs, verbose=2)
    wall = time.time() - start
    _, accuracy = classifier.evaluate(x_test, y_test, verbose=0)
    metadata = {
        "name": "cifar10_features", "family": "FeatureNet", "resolution": 32,
        "description": "CIFAR-10 feature network: a supervised ConvNet classifier, 352-d features",
        "dataset": data.provenance("cifar10", "train (10,000 labelled images)"),
        "features": {"dim": 32 + 64 + EMBEDDING,
                     "layers": ["texture_0 (GAP, 32)", "texture_1 (GAP, 64)", f"embedding ({EMBEDDING})"]},
        "training": {"epochs": epochs, "batch_size": 64, "optimizer": "Adam 1e-3, cosine decay",
                     "loss": "cross-entropy", "augmentation": "horizontal flip, 10% translation",
                     "final_train_accuracy": float(history.history["accuracy"][-1]), "hardware": hardware(),
                     "wall_time_s": round(wall, 1),
                     "command": f"python tools/train_cifar10_features.py --epochs {epochs}"},
        "metrics": {"accuracy_test": float(accuracy)},
        "keras_version": keras.__version__,
    }
    card = ROOT / "runs" / "cifar10_features" / "README.md"
    card.parent.mkdir(parents=True, exist_ok=True)
    card.write_text(CARD.format(epochs=epochs, wall=wall / 60, accuracy=100 * accuracy, hardware=hardware()))
    directory = save_entry(encoder, ROOT / "zoo" / "cifar10_features", metadata, [card])
    print(f"held-out accuracy {accuracy:.4f}; wrote {directory}")


CARD = """# cifar10_features

The feature network of the CIFAR-10 sample-quality numbers of this zoo (`keras_shortrun.metrics`).
**Not Inception**: Fréchet distances and KIDs computed on it are "FD/KID (cifar10_features)" and are not
comparable with any paper's FID.

Why this network: no Inception weights can be had offline, so it is a small supervised ConvNet (two 3x3
conv+BN+ReLU layers per stage, widths 32-64-128, max-pooling, a 256-d embedding) trained only on the 10,000
labelled training images of the JPEG-compressed CIFAR-10 subset. It never saw the 5,000 held-out images that the
metrics compare against, and it is independent of every model it scores. The 352-d feature is the global average
of the first two stages (local texture: noise and blur move it) next to the embedding (class content).
`tests/test_metrics.py` checks that train-vs-held-out scores are small and that noise and blur score
monotonically worse.

| | |
| --- | --- |
| training | {epochs} epochs, batch 64, Adam 1e-3 with cosine decay, flip + translation augmentation |
| held-out accuracy (5,000 test images) | {accuracy:.2f} % |
| hardware | {hardware} |
| wall time | {wall:.0f} min |

Reproduce: `python tools/train_cifar10_features.py --epochs {epochs}`
"""

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--data-path", default=None)
    args = parser.parse_args()
    main(args.epochs, args.data_path)
