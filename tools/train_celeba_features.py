"""The ``celeba_features`` zoo entry: the feature network of the CelebA sample-quality metrics.

    python tools/train_celeba_features.py [--epochs 6]     # trains, then writes zoo/celeba_features

No labelled face data or Inception weights are available offline, so the face metric uses the encoder of a
convolutional autoencoder trained on the 9,000 CelebA training faces only (never the held-out 1,000, never a
model it scores). Features (224-d): the global average of the first two encoder stages (32 + 64 channels:
local texture, so noise and blur move them) and the 128-d code (global layout: pose, hair, colour, light).
"""

import argparse
import time
from pathlib import Path

import keras
from keras import layers

from keras_shortrun import data
from keras_shortrun.training import hardware
from keras_shortrun.zoo import save_entry

ROOT = Path(__file__).resolve().parents[1]

WIDTHS = (32, 64, 128, 128)
CODE = 128


def build():
    """(encoder: (B, 64, 64, 3) -> (B, 224) features, autoencoder: (B, 64, 64, 3) -> (B, 64, 64, 3))."""
    inputs = keras.Input((64, 64, 3))
    h, pooled = inputs, []
    for i, width in enumerate(WIDTHS):
        h = layers.Conv2D(width, 4, strides=2, padding="same", activation="leaky_relu", name=f"enc_{i}")(h)
        if i < 2:
            pooled.append(layers.GlobalAveragePooling2D(name=f"texture_{i}")(h))
    code = layers.Dense(CODE, name="code")(layers.Flatten()(h))
    features = layers.Concatenate(name="features")(pooled + [code])
    encoder = keras.Model(inputs, features, name="celeba_features")
    d = layers.Reshape((4, 4, WIDTHS[-1]))(layers.Dense(4 * 4 * WIDTHS[-1], activation="leaky_relu")(code))
    for width in reversed(WIDTHS[:-1]):
        d = layers.Conv2DTranspose(width, 4, strides=2, padding="same", activation="leaky_relu")(d)
    outputs = layers.Conv2DTranspose(3, 4, strides=2, padding="same", activation="tanh")(d)
    return encoder, keras.Model(inputs, outputs, name="celeba_autoencoder")


def main(epochs, data_path=None):
    keras.utils.set_random_seed(0)
    x_train, _ = data.load("celeba", "train", path=data_path)
    x_test, _ = data.load("celeba", "test", path=data_path)
    encoder, autoencoder = build()
    autoencoder.compile(keras.optimizers.Adam(1e-3), "mse")
    start = time.time()
    history = autoencoder.fit(x_train, x_train, batch_size=64, epochs=epochs, verbose=2)
    wall = time.time() - start
    test_mse = float(autoencoder.evaluate(x_test, x_test, verbose=0))
    metadata = {
        "name": "celeba_features", "family": "FeatureNet", "resolution": 64,
        "description": "CelebA feature network: encoder of an autoencoder, 224-d features",
        "dataset": data.provenance("celeba", "train (first 9,000 faces)"),
        "features": {"dim": 32 + 64 + CODE, "layers": ["texture_0 (GAP, 32)", "texture_1 (GAP, 64)",
                                                           "code (128)"]},
        "training": {"epochs": epochs, "batch_size": 64, "optimizer": "Adam 1e-3", "loss": "pixel MSE",
                     "final_train_mse": float(history.history["loss"][-1]), "hardware": hardware(),
                     "wall_time_s": round(wall, 1),
                     "command": f"python tools/train_celeba_features.py --epochs {epochs}"},
        "metrics": {"autoencoder_mse_heldout": test_mse},
        "keras_version": keras.__version__,
    }
    card = ROOT / "runs" / "celeba_features" / "README.md"
    card.parent.mkdir(parents=True, exist_ok=True)
    card.write_text(CARD.format(epochs=epochs, wall=wall / 60, mse=test_mse, hardware=hardware()))
    directory = save_entry(encoder, ROOT / "zoo" / "celeba_features", metadata, [card])
    print(f"held-out autoencoder MSE {test_mse:.4f}; wrote {directory}")


CARD = """# celeba_features

The feature network of the CelebA sample-quality numbers of this zoo (`keras_shortrun.metrics`).
**Not Inception**: Fréchet distances and KIDs computed on it are "FD/KID (celeba_features)" and are not
comparable with any paper's FID.

Why this network: no face labels and no Inception weights can be had offline, so it is the encoder of a
convolutional autoencoder (4x4 stride-2 convolutions 32-64-128-128, a 128-d code, mirrored decoder) trained
only on the first 9,000 faces, the zoo's CelebA training split. It never saw the 1,000 held-out faces that the
metrics compare against, and it is independent of every model it scores. The 224-d feature is the global
average of the first two encoder stages (local texture: noise and blur move it) next to the code (global
layout: pose, hair, colour, light). `tests/test_metrics.py` checks that train-vs-held-out scores are small and
that noise and blur score monotonically worse.

| | |
| --- | --- |
| training | {epochs} epochs, batch 64, Adam 1e-3, pixel MSE |
| held-out autoencoder MSE (pixels in [-1, 1]) | {mse:.4f} |
| hardware | {hardware} |
| wall time | {wall:.0f} min |

Reproduce: `python tools/train_celeba_features.py --epochs {epochs}`
"""

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--data-path", default=None)
    args = parser.parse_args()
    main(args.epochs, args.data_path)
