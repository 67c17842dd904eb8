"""Datasets as arrays in ``[-1, 1]``: local npz files, image folders, or prepared tfds.

Never downloads: every source is local, and a missing one fails at once with a
message naming the file or directory to provide. ``load`` is the entry point.
"""

import os
from pathlib import Path

import numpy as np
from PIL import Image

from keras_shortrun.hashing import sha256_file
from keras_shortrun.validation import check_positive_int

DATA_ENV = "KERAS_SHORTRUN_DATA"

# name -> (image size, channels) as the models see them by default
DATASETS = {
    "mnist": (28, 1),
    "fashion_mnist": (28, 1),
    "celeba": (64, 3),
    "celeba32": (32, 3),
    "cifar10": (32, 3),
}
# name -> (npz file, sha256); the files are described in shared/data/README.md
NPZ_FILES = {
    "mnist": ("mnist.npz", "290bf974740ecfe91d1a02b98c88b22d78409fa36bd249be9ac57511faabd73b"),
    "fashion_mnist": ("fashion_mnist.npz", "87759f80e9548a1ac81192d679e08118961a893b0b216740954cb3b9c57467b4"),
    "celeba": ("celeba_10k_64.npz", "286d94f172e4acf6db252432c2a8bd0808f3830969299525d8347a28691c4c94"),
    "celeba32": ("celeba_10k_64.npz", "286d94f172e4acf6db252432c2a8bd0808f3830969299525d8347a28691c4c94"),
    "cifar10": ("cifar10_jpeg_subset.npz", "8bdeb528e9f6f0da0eb4100adbf19e20a33f19cfe96e6a316fc9fdc6add75a89"),
}
# name -> tfds dataset name (CelebA in tfds needs a manual download and another crop: not offered)
TFDS_NAMES = {"mnist": "mnist", "fashion_mnist": "fashion_mnist", "cifar10": "cifar10"}
CELEBA_TEST_SIZE = 1000  # the last 1,000 faces are the held-out split
SPLITS = ("train", "test")
SOURCES = ("npz", "folder", "tfds")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class DataNotFoundError(FileNotFoundError):
    """A dataset's local file or directory is missing."""


def load(name, split="train", source="npz", path=None, data_dir=None, image_size=None, verify=True):
    """Loads ``(images, labels)``: images float32 ``(N, S, S, C)`` in ``[-1, 1]``, labels int64 ``(N,)`` or ``None``.

    Args:
        name: one of ``DATASETS``; fixes the channels (1 for the MNISTs, else 3)
            and the default size ``S`` (28, 28, 64, 32, 32).
        split: ``"train"`` or ``"test"``.
        source: where the images come from:
            - ``"npz"``: the archives of ``NPZ_FILES``; ``path`` is the file or
              its directory (default: ``$KERAS_SHORTRUN_DATA``, then
              ``../shared/data``). CelebA has no labels and no official split:
              ``test`` is the last 1,000 faces, ``train`` the first 9,000;
              ``celeba32`` is it pooled 2x2. ``cifar10`` is a 10k/5k subset.
            - ``"folder"``: image files under ``path`` (or ``path/<split>`` when
              ``path/train`` or ``path/test`` exists, and then the asked split's
              folder must be there); one subfolder per class gives labels (the
              folder name when all names are integers, else its index among the
              sorted class names of all splits, so a class has one label in
              train and test); ``train``/``test`` folders are never classes;
              loose files give ``labels=None``.
            - ``"tfds"``: a TensorFlow Datasets copy already prepared in
              ``data_dir`` (mnist, fashion_mnist, cifar10; never downloaded).
        path: npz file or directory (``"npz"``), image directory (``"folder"``).
        data_dir: tfds data directory (``"tfds"``).
        image_size: ``S``; images of another size are center-cropped to a square
            and resized (bicubic). Default: the dataset's size.
        verify: check the npz file's sha256 (``"npz"`` only).
    """
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}; known: {sorted(DATASETS)}.")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
    default_size, channels = DATASETS[name]
    size = default_size if image_size is None else check_positive_int(image_size, "image_size")
    if source == "npz":
        pixels, labels = _npz_pixels(name, split, path, verify)
    elif source == "folder":
        pixels, labels = _folder_pixels(path, split, channels, size)
    elif source == "tfds":
        pixels, labels = _tfds_pixels(name, split, data_dir)
    else:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}.")
    if pixels.shape[1:3] != (size, size):
        pixels = np.stack([_fit(Image.fromarray(p.squeeze(-1) if channels == 1 else p), size) for p in pixels])
        pixels = pixels.reshape(pixels.shape[:3] + (channels,))
    return to_model_range(pixels), labels


def default_data_dirs():
    """Where npz files are looked for: ``$KERAS_SHORTRUN_DATA``, then ``../shared/data`` beside the checkout."""
    dirs = []
    if os.environ.get(DATA_ENV):
        dirs.append(Path(os.environ[DATA_ENV]))
    dirs.append(Path(__file__).resolve().parents[2] / "shared" / "data")
    return dirs


def to_model_range(pixels):
    """``uint8`` pixels ``0..255`` -> float32 in ``[-1, 1]`` (a new array)."""
    images = np.array(pixels, dtype=np.float32)
    images /= 127.5  # in place: one float copy, not three (celeba train is 440 MB of float32)
    images -= 1.0
    return images


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


def _npz_pixels(name, split, path, verify):
    """``uint8`` pixels ``(N, H, W, C)`` and int64 labels or ``None`` from the npz archive."""
    file = find_npz(name, path)
    if verify and sha256_file(file) != NPZ_FILES[name][1]:
        raise ValueError(
            f"{file} does not have the expected sha256 for {name!r} ({NPZ_FILES[name][1]}): the file is "
            f"corrupt or a different version. Provide the right {NPZ_FILES[name][0]}, or pass verify=False."
        )
    with np.load(file) as archive:
        if name.startswith("celeba"):
            pixels = archive["x"]
            pixels = pixels[:-CELEBA_TEST_SIZE] if split == "train" else pixels[-CELEBA_TEST_SIZE:]
            if name == "celeba32":
                pixels = pixels.reshape(-1, 32, 2, 32, 2, 3).mean((2, 4)).round().astype(np.uint8)
            return pixels, None
        return archive[f"x_{split}"], archive[f"y_{split}"].astype(np.int64)


def _fit(image, size):
    """A PIL image center-cropped to a square and resized to ``size``, as a ``uint8`` array."""
    side = min(image.size)
    if image.width != image.height:
        left, top = (image.width - side) // 2, (image.height - side) // 2
        image = image.crop((left, top, left + side, top + side))
    if side != size:
        image = image.resize((size, size), Image.BICUBIC)
    return np.asarray(image, dtype=np.uint8)


def _image_files(directory):
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _class_dirs(directory):
    """The subfolders of ``directory`` that hold images, sorted; folders named like a split are never classes."""
    return sorted(d for d in directory.iterdir() if d.is_dir() and d.name not in SPLITS and _image_files(d))


def _folder_pixels(path, split, channels, size):
    """``uint8`` pixels ``(N, size, size, channels)`` and labels (or ``None``) from an image directory."""
    if path is None:
        raise ValueError("source='folder' needs path=<directory of images, or of one subfolder per class>.")
    base = Path(path)
    split_dirs = [base / s for s in SPLITS if (base / s).is_dir()]
    if split_dirs:  # split layout: path/train and/or path/test; classes are the union over them
        if not (base / split).is_dir():
            found = ", ".join(d.name for d in split_dirs)
            raise DataNotFoundError(
                f"No {split!r} split in {base}: provide the directory {base / split} (only {found} is there)."
            )
        root = base / split
    elif split != "train":
        raise DataNotFoundError(
            f"No {split!r} split in {base}: provide the directory {base / split} (the top folder is the train split)."
        )
    else:
        root = base
    if not root.is_dir():
        raise DataNotFoundError(f"Image directory {root} not found: provide it, or pass another path=.")
    loose = _image_files(root)
    classes = _class_dirs(root)
    if loose and classes:
        raise ValueError(
            f"{root} mixes image files with class subfolders ({', '.join(d.name for d in classes)}): "
            "move the loose images into a class folder or elsewhere."
        )
    if not loose and not classes:
        raise DataNotFoundError(
            f"No images ({', '.join(IMAGE_EXTENSIONS)}) in {root} nor in its subfolders: provide them there."
        )
    if classes:
        # the same name gets the same label in every split: number the union of all splits' class names
        names = sorted({d.name for r in (split_dirs or [root]) for d in _class_dirs(r)})
        numbered = all(n.isdigit() for n in names)
        label_of = {n: int(n) if numbered else i for i, n in enumerate(names)}
        per_class = [(label_of[d.name], _image_files(d)) for d in classes]
        files = [f for _, fs in per_class for f in fs]
        labels = np.concatenate([np.full(len(fs), label, np.int64) for label, fs in per_class])
    else:
        files, labels = loose, None
    mode = "L" if channels == 1 else "RGB"
    pixels = []
    for file in files:
        with Image.open(file) as image:
            pixels.append(_fit(image.convert(mode), size))
    return np.stack(pixels).reshape(len(files), size, size, channels), labels


def _tfds_pixels(name, split, data_dir):
    """``uint8`` pixels and int64 labels from a tfds copy prepared in ``data_dir`` (never downloads)."""
    if name not in TFDS_NAMES:
        raise ValueError(f"source='tfds' offers {sorted(TFDS_NAMES)}, not {name!r}: use source='npz' or 'folder'.")
    tfds_name = TFDS_NAMES[name]
    how = (
        f"prepare it where there is internet access (`tfds build {tfds_name} --data_dir=DIR`) and copy DIR here, "
        "or use source='npz'/'folder'"
    )
    if data_dir is None:
        raise DataNotFoundError(
            f"source='tfds' needs data_dir=<a directory holding a prepared {tfds_name}/>: it never downloads; {how}."
        )
    if not (Path(data_dir) / tfds_name).is_dir():  # decided before importing tfds, so it fails at once
        raise DataNotFoundError(f"No prepared tfds dataset at {Path(data_dir) / tfds_name}: {how}.")
    import tensorflow_datasets as tfds

    builder = tfds.builder(tfds_name, data_dir=str(data_dir))
    if not builder.is_prepared():
        raise DataNotFoundError(
            f"The tfds dataset at {builder.data_path} is not prepared (version {builder.version}): {how}."
        )
    arrays = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
    return arrays["image"], arrays["label"].astype(np.int64)
