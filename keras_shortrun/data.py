"""Datasets as arrays in ``[-1, 1]``: local npz files, image folders, or prepared tfds.

Never downloads: every source is local, and a missing one fails at once with a
message naming the file or directory to provide. ``load`` is the entry point.
"""

import os
import re
import struct
from pathlib import Path

import numpy as np
from PIL import Image
from PIL import ImageOps

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
# name -> the licence its data is distributed under (shared/data/README.md), as model cards state it
LICENCES = {
    "mnist": "MNIST (LeCun, Cortes, Burges), usually distributed under CC BY-SA 3.0",
    "fashion_mnist": "MIT, Copyright (c) 2017 Zalando SE",
    "celeba": "CelebA: non-commercial research and educational use only",
    "celeba32": "CelebA: non-commercial research and educational use only",
    "cifar10": "CIFAR-10 (Krizhevsky 2009): no formal licence, cite the tech report",
}
# name -> tfds dataset name (CelebA in tfds needs a manual download and another crop: not offered)
TFDS_NAMES = {"mnist": "mnist", "fashion_mnist": "fashion_mnist", "cifar10": "cifar10"}
CELEBA_TEST_SIZE = 1000  # the last 1,000 faces are the held-out split
SPLITS = ("train", "test")
SOURCES = ("npz", "folder", "tfds")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
# PIL modes read from files: 8-bit ones, and 16-bit grey (mode I: 32-bit integers, refused outside 0..65535)
EIGHT_BIT_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV")
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
ALPHA_MODES = ("LA", "PA", "RGBA", "RGBa")
# what PIL's decoders raise on a file that is not an image, is truncated or is corrupt
_READ_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError)


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
              folder must be there); one subfolder per class gives labels, the
              same in every split; split folder names are matched in any case
              (``Train``, ``TEST``; ``train`` beside ``Train`` is refused), and
              images beside the split folders (loose files, other folders)
              are refused, not ignored. When all class names of all splits are
              numbers (``7``, ``007``) each is its number, and two that are the
              same number (``1``, ``01``) are refused; when none is, each is its
              index among the sorted names; a mix is refused. Loose files give
              ``labels=None``. Images sit directly in the split's folder or in
              its class folders: images deeper down are refused, not ignored.
              ``train``/``test`` folders are never classes; hidden files and
              folders (``._x.png``, ``.ipynb_checkpoints``) are skipped. Pixels:
              16-bit grey ``0..65535`` is scaled to ``0..255``; transparency is
              composited on white (what a viewer shows); EXIF orientation is
              applied; colour becomes grey by ITU-R 601 luma. Refused, with the
              file named: float images (mode ``F``, range unknown), 32-bit
              integers outside ``0..65535``, several frames (animated GIF,
              multi-page TIFF), unreadable or corrupt files, broken links.
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


def provenance(name, split="train", path=None, **details):
    """What a model's metadata records of the data it was trained on: the dataset ``name``, its npz file (found
    as ``load`` finds it) and pinned sha256, the ``split`` in words, its licence, and ``details`` (e.g.
    ``test_split``)."""
    return {"name": name, "file": find_npz(name, path).name, "sha256": NPZ_FILES[name][1], "split": split,
            **details, "licence": LICENCES[name]}


def labelled_subset(y, per_class, seed=0):
    """Indices of ``per_class`` images of every class of labels ``y`` ``(N,)``, from one fixed permutation of
    ``seed`` (so the 100 of a class are among its 1,000), sorted."""
    order = np.random.default_rng(seed).permutation(len(y))
    picked = np.concatenate([order[y[order] == c][:per_class] for c in np.unique(y)])
    return np.sort(picked)


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


def _visible(directory):
    """The entries of ``directory``, sorted, but hidden ones (``._x.png`` of macOS, ``.ipynb_checkpoints``)."""
    return sorted(p for p in directory.iterdir() if not p.name.startswith("."))


def _image_files(directory):
    """The image files directly in ``directory``, sorted; one named like an image that is not a file (a link to
    nowhere, a link loop) is an error."""
    files = [p for p in _visible(directory) if p.suffix.lower() in IMAGE_EXTENSIONS and not p.is_dir()]
    for file in files:
        if not file.is_file():
            raise ValueError(f"{file} is named like an image but is not a file (a broken link, or a link loop): "
                             "fix or remove it.")
    return files


def _subfolders(directory):
    """The visible subfolders of ``directory`` (links followed), sorted; folders named like a split (in any
    case) excluded."""
    return [d for d in _visible(directory) if d.is_dir() and d.name.lower() not in SPLITS]


def _split_dirs(base):
    """``{split: folder}`` for the split folders of ``base``, their names matched in any case (``Train``,
    ``TEST``); two folders for one split (``train`` and ``Train``) are refused."""
    found = {}
    for folder in _visible(base):
        split = folder.name.lower()
        if split in SPLITS and folder.is_dir():
            if split in found:
                raise ValueError(f"{found[split]} and {folder} are both the {split!r} split (split folder names are "
                                 "matched in any case): merge them into one.")
            found[split] = folder
    return found


def _class_dirs(directory):
    """The subfolders of ``directory`` that hold images, sorted; folders named like a split are never classes."""
    return [d for d in _subfolders(directory) if _image_files(d)]


def _folder_with_images_below(directory, seen):
    """The first visible folder at any depth below ``directory`` that holds images, or ``None``; links are
    followed, each real folder once (``seen``: resolved paths), so a link loop ends."""
    for sub in _visible(directory):
        if sub.is_dir() and sub.resolve() not in seen:
            seen.add(sub.resolve())
            found = sub if _image_files(sub) else _folder_with_images_below(sub, seen)
            if found:
                return found
    return None


def _labels(names, where):
    """``{class folder name: label}`` for the class names of all splits of ``where``: every name's number when
    all are numbers, else every name's index among the sorted names; ``ValueError`` when two could clash."""
    numbered = sorted(n for n in names if re.fullmatch("[0-9]+", n))  # ASCII digits: int() takes no others
    if not numbered:
        return {name: i for i, name in enumerate(sorted(names))}
    named = sorted(set(names) - set(numbered))
    if named:
        raise ValueError(
            f"{where} mixes numbered class folders ({', '.join(map(repr, numbered))}) with named ones "
            f"({', '.join(map(repr, named))}): a number is its own label and a name its index, so they could "
            "clash. Rename them all as numbers or all as names."
        )
    owner = {}
    for name in numbered:
        label = int(name)
        if label >= 2**63:
            raise ValueError(f"class folder {name!r} of {where}: its label would be its number, above 2**63 - 1 "
                             "(int64): rename it.")
        if label in owner:
            raise ValueError(f"class folders {owner[label]!r} and {name!r} of {where} would share label {label} "
                             "(a numbered folder's label is its number): rename one.")
        owner[label] = name
    return {name: label for label, name in owner.items()}


def _read_image(file, channels):
    """The image ``file`` as an 8-bit ``L`` (``channels`` 1) or ``RGB`` PIL image, as described in ``load``."""
    try:
        with Image.open(file) as opened:
            frames = getattr(opened, "n_frames", 1)
            image = ImageOps.exif_transpose(opened)  # a loaded copy, turned as a viewer shows it
    except _READ_ERRORS as error:
        raise ValueError(f"{file} is not a readable image ({type(error).__name__}: {error}).") from error
    if frames > 1:
        raise ValueError(f"{file} has {frames} frames (an animation or a multi-page file); a dataset image has "
                         "one: save the frames you want as files of their own.")
    mode = image.mode
    if mode in SIXTEEN_BIT_MODES:
        values = np.asarray(image)
        low, high = int(values.min()), int(values.max())
        if low < 0 or high > 65535:
            raise ValueError(f"{file} is mode {mode} with values in [{low}, {high}], outside 0..65535 (16 bits): "
                             "their range is not known. Save it as an 8- or 16-bit image.")
        pixels = np.round(values / 257).astype(np.uint8)  # 0..65535 -> 0..255
        if "transparency" in image.info:  # a grey value marked fully transparent: composited on white
            pixels[values == image.info["transparency"]] = 255
        image = Image.fromarray(pixels)
    elif mode == "F":
        raise ValueError(f"{file} is mode F (floating point): its range is not known, so it has no place in "
                         "[-1, 1]. Save it as an 8- or 16-bit image.")
    elif mode not in EIGHT_BIT_MODES:
        raise ValueError(f"{file} is mode {mode}, which is not read here (modes read: "
                         f"{', '.join(EIGHT_BIT_MODES + SIXTEEN_BIT_MODES)}).")
    elif mode in ALPHA_MODES or "transparency" in image.info:
        image = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image.convert("RGBA"))
    image = image.convert("RGB")
    return image.convert("L") if channels == 1 else image


def _folder_pixels(path, split, channels, size):
    """``uint8`` pixels ``(N, size, size, channels)`` and labels (or ``None``) from an image directory."""
    if path is None:
        raise ValueError("source='folder' needs path=<directory of images, or of one subfolder per class>.")
    base = Path(path)
    splits = _split_dirs(base) if base.is_dir() else {}
    split_dirs = [splits[s] for s in SPLITS if s in splits]
    if split_dirs:  # split layout: path/train and/or path/test; classes are the union over them
        if split not in splits:
            found = ", ".join(d.name for d in split_dirs)
            raise DataNotFoundError(
                f"No {split!r} split in {base}: provide the directory {base / split} (only {found} is there)."
            )
        beside = _image_files(base) + [d for d in _subfolders(base)
                                       if _image_files(d) or _folder_with_images_below(d, {d.resolve()})]
        if beside:
            raise ValueError(
                f"{', '.join(str(p) for p in beside[:5])}{', ...' if len(beside) > 5 else ''}: images beside the "
                f"split folders of {base} ({', '.join(d.name for d in split_dirs)}) would be ignored. Move them "
                "into a split folder, or hide them (a leading '.') to skip them."
            )
        root = splits[split]
    elif split != "train":
        raise DataNotFoundError(
            f"No {split!r} split in {base}: provide the directory {base / split} (the top folder is the train split)."
        )
    else:
        root = base
    if not root.is_dir():
        raise DataNotFoundError(f"Image directory {root} not found: provide it, or pass another path=.")
    for folder in _subfolders(root):
        deep = _folder_with_images_below(folder, {folder.resolve()})
        if deep:
            raise ValueError(
                f"{deep} holds images that would be ignored: those of {root} sit in it or directly in its class "
                "folders. Move them, or hide the folder (a leading '.') to skip it."
            )
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
        label_of = _labels({d.name for r in (split_dirs or [root]) for d in _class_dirs(r)}, base)
        per_class = [(label_of[d.name], _image_files(d)) for d in classes]
        files = [f for _, fs in per_class for f in fs]
        labels = np.concatenate([np.full(len(fs), label, np.int64) for label, fs in per_class])
    else:
        files, labels = loose, None
    pixels = [_fit(_read_image(file, channels), size) for file in files]
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
