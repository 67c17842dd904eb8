"""Datasets as arrays in ``[-1, 1]``: local npz files, image folders, or prepared tfds.

Never downloads: every source is local, and a missing one fails at once with a
message naming the file or directory to provide.
"""

import hashlib
import os
from pathlib import Path

import numpy as np

DATA_ENV = "KERAS_SHORTRUN_DATA"

# name -> (npz file, sha256, image key per split, label key per split, celeba-style slicing)
NPZ_FILES = {
    "mnist": ("mnist.npz", "290bf974740ecfe91d1a02b98c88b22d78409fa36bd249be9ac57511faabd73b"),
    "fashion_mnist": ("fashion_mnist.npz", "87759f80e9548a1ac81192d679e08118961a893b0b216740954cb3b9c57467b4"),
    "celeba": ("celeba_10k_64.npz", "286d94f172e4acf6db252432c2a8bd0808f3830969299525d8347a28691c4c94"),
    "celeba32": ("celeba_10k_64.npz", "286d94f172e4acf6db252432c2a8bd0808f3830969299525d8347a28691c4c94"),
    "cifar10": ("cifar10_jpeg_subset.npz", "8bdeb528e9f6f0da0eb4100adbf19e20a33f19cfe96e6a316fc9fdc6add75a89"),
}
CELEBA_TEST_SIZE = 1000  # the last 1,000 faces are the held-out split
SPLITS = ("train", "test")
TFDS_NAMES = {"mnist": "mnist", "fashion_mnist": "fashion_mnist", "cifar10": "cifar10"}


class DataNotFoundError(FileNotFoundError):
    """A dataset's local file or directory is missing."""


def default_data_dirs():
    """Where npz files are looked for: ``$KERAS_SHORTRUN_DATA``, then ``../shared/data`` beside the checkout."""
    dirs = []
    if os.environ.get(DATA_ENV):
        dirs.append(Path(os.environ[DATA_ENV]))
    dirs.append(Path(__file__).resolve().parents[2] / "shared" / "data")
    return dirs


def to_model_range(pixels):
    """``uint8`` pixels ``0..255`` -> float32 in ``[-1, 1]``."""
    return np.asarray(pixels, dtype=np.float32) / 127.5 - 1.0


def find_npz(name, path=None):
    """The npz file for ``name``: ``path`` if given, else the first default dir that has it."""
    if name not in NPZ_FILES:
        raise ValueError(f"Unknown dataset {name!r}; known: {sorted(NPZ_FILES)}.")
    filename = NPZ_FILES[name][0]
    if path is not None:
        candidates = [Path(path) / filename if Path(path).is_dir() else Path(path)]
    else:
        candidates = [d / filename for d in default_data_dirs()]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise DataNotFoundError(
        f"Dataset {name!r} needs the file {filename} and none was found (looked at: "
        f"{', '.join(str(c) for c in candidates)}). Pass path=... (or --data-path), or set "
        f"{DATA_ENV} to the directory that holds {filename}."
    )


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_npz(name, split="train", path=None, verify=True):
    """Loads ``(images, labels)``; images float32 ``(N, H, W, C)`` in ``[-1, 1]``, labels int64 or ``None``.

    CelebA has no labels and no official split here: ``test`` is the last
    1,000 faces and ``train`` the first 9,000. ``celeba32`` is CelebA pooled
    2x2 to 32x32 (the data README's recipe).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
    file = find_npz(name, path)
    if verify and _sha256(file) != NPZ_FILES[name][1]:
        raise ValueError(
            f"{file} does not have the expected sha256 for {name!r}: the file is corrupt or "
            f"a different version. Pass verify=False to use it anyway."
        )
    with np.load(file) as archive:
        if name.startswith("celeba"):
            pixels = archive["x"]
            pixels = pixels[:-CELEBA_TEST_SIZE] if split == "train" else pixels[-CELEBA_TEST_SIZE:]
            if name == "celeba32":
                pixels = pixels.reshape(-1, 32, 2, 32, 2, 3).mean((2, 4)).round().astype(np.uint8)
            labels = None
        else:
            pixels, labels = archive[f"x_{split}"], archive[f"y_{split}"]
    return to_model_range(pixels), labels
