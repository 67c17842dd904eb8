"""keras_shortrun.data: npz / folder / tfds sources, errors that name what to provide."""

import functools
import hashlib
import re
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from keras_shortrun import data


@pytest.mark.parametrize(
    "name, split, count, shape",
    [
        ("mnist", "train", 60000, (28, 28, 1)),
        ("mnist", "test", 10000, (28, 28, 1)),
        ("fashion_mnist", "test", 10000, (28, 28, 1)),
        ("cifar10", "train", 10000, (32, 32, 3)),
        ("cifar10", "test", 5000, (32, 32, 3)),
    ],
)
def test_npz_shapes_ranges_labels(shared_data, name, split, count, shape):
    x, y = data.load(name, split, path=shared_data)
    assert x.shape == (count,) + shape and x.dtype == np.float32
    assert x.min() == -1.0 and x.max() == 1.0
    assert y.shape == (count,) and y.dtype == np.int64
    assert set(np.unique(y)) == set(range(10))


def test_npz_mnist_test_labels_match_readme(shared_data):
    _, y = data.load("mnist", "test", path=shared_data)
    assert np.bincount(y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@functools.cache
def _celeba_pixels(directory):
    """The raw ``uint8`` faces, read once for the CelebA tests."""
    with np.load(directory / "celeba_10k_64.npz") as archive:
        return archive["x"]


def test_celeba_test_split_is_last_1000(shared_data):
    celeba_pixels = _celeba_pixels(shared_data)
    test, no_labels = data.load("celeba", "test", path=shared_data)
    train, _ = data.load("celeba", "train", path=shared_data, verify=False)
    assert no_labels is None
    assert train.shape == (9000, 64, 64, 3) and test.shape == (1000, 64, 64, 3)
    np.testing.assert_array_equal(test, data.to_model_range(celeba_pixels[-1000:]))
    np.testing.assert_array_equal(train[-1], data.to_model_range(celeba_pixels[8999]))


def test_celeba32_is_celeba_pooled_2x2(shared_data):
    celeba_pixels = _celeba_pixels(shared_data)
    small, labels = data.load("celeba32", "test", path=shared_data, verify=False)
    assert small.shape == (1000, 32, 32, 3) and labels is None
    pooled = data.to_model_range(celeba_pixels[-1000:]).reshape(-1, 32, 2, 32, 2, 3).mean((2, 4))
    assert np.abs(small - pooled).max() <= 0.5 / 127.5 + 1e-6  # rounding to uint8 only


def test_image_size_resizes(shared_data):
    x, y = data.load("mnist", "test", path=shared_data, image_size=32)
    assert x.shape == (10000, 32, 32, 1) and y.shape == (10000,)
    assert x.min() >= -1.0 and x.max() <= 1.0


def _write_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_folder_with_class_subfolders_and_splits(tmp_path):
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (28, 28), dtype=np.uint8)
    _write_png(tmp_path / "train" / "3" / "a.png", gray)
    _write_png(tmp_path / "train" / "3" / "b.png", rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))  # RGB, resized
    _write_png(tmp_path / "train" / "7" / "c.png", gray)
    _write_png(tmp_path / "test" / "7" / "d.png", gray)
    x, y = data.load("mnist", "train", source="folder", path=tmp_path)
    assert x.shape == (3, 28, 28, 1) and x.dtype == np.float32
    assert y.tolist() == [3, 3, 7] and y.dtype == np.int64  # integer folder names are the labels
    np.testing.assert_array_equal(x[0, ..., 0], data.to_model_range(gray))
    assert x.min() >= -1.0 and x.max() <= 1.0
    x_test, y_test = data.load("mnist", "test", source="folder", path=tmp_path)
    assert x_test.shape == (1, 28, 28, 1) and y_test.tolist() == [7]


def test_folder_loose_images_rgb_crop_and_named_classes(tmp_path):
    wide = np.zeros((32, 64), np.uint8)
    wide[:, 16:48] = 255  # the central square is white, the sides black
    _write_png(tmp_path / "loose" / "wide.png", wide)
    x, y = data.load("cifar10", source="folder", path=tmp_path / "loose", image_size=16)
    assert y is None and x.shape == (1, 16, 16, 3)
    np.testing.assert_allclose(x, 1.0)  # center-cropped to the square, gray -> RGB, no black borders
    for name in ("dog", "cat"):
        _write_png(tmp_path / "named" / name / "0.png", np.zeros((8, 8, 3), np.uint8))
    _, y = data.load("cifar10", source="folder", path=tmp_path / "named")
    assert y.tolist() == [0, 1]  # sorted names: cat=0, dog=1


def test_folder_errors_name_the_directory(tmp_path):
    with pytest.raises(ValueError, match="needs path="):
        data.load("mnist", source="folder")
    with pytest.raises(data.DataNotFoundError, match=re.escape(str(tmp_path / "missing"))):
        data.load("mnist", source="folder", path=tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(data.DataNotFoundError, match=r"No images .* in .*empty"):
        data.load("mnist", source="folder", path=tmp_path / "empty")
    _write_png(tmp_path / "flat" / "a.png", np.zeros((28, 28), np.uint8))
    with pytest.raises(data.DataNotFoundError, match=re.escape(str(tmp_path / "flat" / "test"))):
        data.load("mnist", "test", source="folder", path=tmp_path / "flat")
    _write_png(tmp_path / "flat" / "1" / "b.png", np.zeros((28, 28), np.uint8))
    with pytest.raises(ValueError, match="mixes image files with class subfolders"):
        data.load("mnist", source="folder", path=tmp_path / "flat")


def test_folder_named_classes_share_labels_across_splits(tmp_path):
    pixel = np.zeros((8, 8, 3), np.uint8)
    for name in ("cat", "dog", "fox"):
        _write_png(tmp_path / "train" / name / "0.png", pixel)
    for name in ("cat", "fox"):
        _write_png(tmp_path / "test" / name / "0.png", pixel)
    _write_png(tmp_path / "test" / "owl" / "0.png", pixel)  # a class only the test split has
    _, y_train = data.load("cifar10", "train", source="folder", path=tmp_path)
    _, y_test = data.load("cifar10", "test", source="folder", path=tmp_path)
    assert y_train.tolist() == [0, 1, 2]  # cat, dog, fox of the union cat, dog, fox, owl
    assert y_test.tolist() == [0, 2, 3]  # fox is 2 in both splits; owl is 3


def test_folder_split_folders_are_never_classes(tmp_path):
    pixel = np.zeros((28, 28), np.uint8)
    _write_png(tmp_path / "test" / "1" / "a.png", pixel)  # only the test split: train is missing
    with pytest.raises(data.DataNotFoundError, match=re.escape(str(tmp_path / "train"))):
        data.load("mnist", "train", source="folder", path=tmp_path)
    x, y = data.load("mnist", "test", source="folder", path=tmp_path)
    assert x.shape == (1, 28, 28, 1) and y.tolist() == [1]
    _write_png(tmp_path / "only_train" / "train" / "a.png", pixel)  # only the train split: test is missing
    with pytest.raises(data.DataNotFoundError, match=re.escape(str(tmp_path / "only_train" / "test"))):
        data.load("mnist", "test", source="folder", path=tmp_path / "only_train")
    x, y = data.load("mnist", "train", source="folder", path=tmp_path / "only_train")
    assert x.shape == (1, 28, 28, 1) and y is None
    _write_png(tmp_path / "nested" / "train" / "3" / "a.png", pixel)
    _write_png(tmp_path / "nested" / "train" / "test" / "b.png", pixel)  # not a class inside a split either
    _, y = data.load("mnist", "train", source="folder", path=tmp_path / "nested")
    assert y.tolist() == [3]


def test_missing_npz_fails_fast_naming_the_file(tmp_path):
    start = time.perf_counter()
    with pytest.raises(data.DataNotFoundError) as error:
        data.load("fashion_mnist", path=tmp_path)
    assert time.perf_counter() - start < 5.0
    assert "fashion_mnist.npz" in str(error.value) and str(tmp_path) in str(error.value)
    assert data.DATA_ENV in str(error.value)


def test_tfds_without_prepared_data_dir_fails_fast(tmp_path):
    pytest.importorskip("tensorflow_datasets")  # import time is not the failure's time
    (tmp_path / "half" / "mnist").mkdir(parents=True)  # a dataset folder with nothing prepared in it
    cases = [
        (None, "needs data_dir="),
        (tmp_path, re.escape(str(tmp_path / "mnist"))),
        (tmp_path / "half", "not prepared"),
    ]
    for data_dir, message in cases:
        start = time.perf_counter()
        with pytest.raises(data.DataNotFoundError, match=message) as error:
            data.load("mnist", source="tfds", data_dir=data_dir)
        assert time.perf_counter() - start < 5.0
        assert "tfds build mnist --data_dir=" in str(error.value)
    with pytest.raises(ValueError, match="source='tfds' offers"):
        data.load("celeba", source="tfds", data_dir=tmp_path)


def test_tfds_prepared_data_dir_loads(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 28, 28, 1), dtype=np.uint8)
    features = tfds.features.FeaturesDict(
        {"image": tfds.features.Image(shape=(28, 28, 1)), "label": tfds.features.ClassLabel(num_classes=10)}
    )
    examples = [(i, {"image": image, "label": i + 2}) for i, image in enumerate(images)]
    tfds.dataset_builders.store_as_tfds_dataset(  # a local stand-in for a real prepared mnist
        name="mnist", version="3.0.1", features=features, split_datasets={"train": examples[:1], "test": examples},
        data_dir=tmp_path, disable_shuffling=True,
    )
    x, y = data.load("mnist", "test", source="tfds", data_dir=tmp_path)
    assert x.shape == (5, 28, 28, 1) and x.dtype == np.float32
    assert y.tolist() == [2, 3, 4, 5, 6] and y.dtype == np.int64
    np.testing.assert_array_equal(x, data.to_model_range(images))


def test_unknown_name_split_source():
    with pytest.raises(ValueError, match="Unknown dataset 'svhn'"):
        data.load("svhn")
    with pytest.raises(ValueError, match="split must be one of"):
        data.load("mnist", "validation")
    with pytest.raises(ValueError, match="source must be one of"):
        data.load("mnist", source="hub")
    with pytest.raises(ValueError, match="image_size must be a positive integer"):
        data.load("mnist", image_size=0)


def test_sha256_mismatch_names_the_file(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    fake = tmp_path / "tiny.npz"
    np.savez_compressed(
        fake, x_train=rng.integers(0, 256, (4, 28, 28, 1), dtype=np.uint8), y_train=np.arange(4),
        x_test=np.zeros((2, 28, 28, 1), np.uint8), y_test=np.arange(2),
    )
    good = hashlib.sha256(fake.read_bytes()).hexdigest()
    monkeypatch.setitem(data.NPZ_FILES, "mnist", ("tiny.npz", good))
    x, y = data.load("mnist", path=tmp_path)
    assert x.shape == (4, 28, 28, 1) and y.tolist() == [0, 1, 2, 3]
    corrupted = bytearray(fake.read_bytes())
    corrupted[-100] ^= 0xFF
    fake.write_bytes(bytes(corrupted))
    with pytest.raises(ValueError, match=r"tiny\.npz does not have the expected sha256"):
        data.load("mnist", path=tmp_path)
    monkeypatch.setitem(data.NPZ_FILES, "mnist", ("tiny.npz", "0" * 64))  # a readable file, another version
    np.savez_compressed(fake, x_train=np.zeros((1, 28, 28, 1), np.uint8), y_train=np.arange(1))
    x, _ = data.load("mnist", path=fake, verify=False)
    assert x.shape == (1, 28, 28, 1)


# Folder images: modes, labels, hidden and broken files --------------------------------------------------------
def _mode_image(mode, value):
    """An 8x8 image of ``mode`` filled with ``value``; palette modes have index 0 black, 1 red."""
    image = Image.new(mode, (8, 8), value)
    if mode in ("P", "PA"):
        image.putpalette([0, 0, 0, 255, 0, 0])
    return image


# (case, mode, saved as, fill value, save options, expected grey 0..255, expected RGB 0..255)
PIXEL_MODES = [
    ("1 white", "1", "png", 1, {}, 255, (255, 255, 255)),
    ("L grey", "L", "png", 128, {}, 128, (128, 128, 128)),
    ("LA transparent black", "LA", "png", (0, 0), {}, 255, (255, 255, 255)),  # on white
    ("LA half-transparent black", "LA", "png", (0, 128), {}, 127, (127, 127, 127)),
    ("LA opaque", "LA", "png", (40, 255), {}, 40, (40, 40, 40)),
    ("L with a transparent value", "L", "png", 77, {"transparency": 77}, 255, (255, 255, 255)),
    ("P red", "P", "png", 1, {}, 76, (255, 0, 0)),
    ("P transparent index", "P", "png", 1, {"transparency": 1}, 255, (255, 255, 255)),
    ("PA half-transparent red", "PA", "tif", (1, 128), {}, 165, (255, 127, 127)),
    ("RGB red", "RGB", "png", (255, 0, 0), {}, 76, (255, 0, 0)),
    ("RGBA transparent red", "RGBA", "png", (255, 0, 0, 0), {}, 255, (255, 255, 255)),
    ("RGBA half-transparent black", "RGBA", "png", (0, 0, 0, 128), {}, 127, (127, 127, 127)),
    ("CMYK half black", "CMYK", "tif", (0, 0, 0, 128), {}, 127, (127, 127, 127)),
    ("YCbCr grey", "YCbCr", "tif", (128, 128, 128), {}, 128, (128, 128, 128)),
    ("LAB mid grey", "LAB", "tif", (128, 128, 128), {}, 119, (119, 119, 119)),
    ("I;16 mid grey", "I;16", "png", 32768, {}, 128, (128, 128, 128)),
    ("I;16B mid grey", "I;16B", "tif", 32768, {}, 128, (128, 128, 128)),
    ("I;16L quarter grey", "I;16L", "tif", 16384, {}, 64, (64, 64, 64)),
    ("I (32-bit) holding 16-bit grey", "I", "tif", 32768, {}, 128, (128, 128, 128)),
    ("I;16 with a transparent value", "I;16", "png", 200, {"transparency": 200}, 255, (255, 255, 255)),
]


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("mode, fmt, value, options, grey, rgb", [c[1:] for c in PIXEL_MODES],
                         ids=[c[0] for c in PIXEL_MODES])
def test_folder_scales_every_mode_by_its_range_and_composites_alpha_on_white(
        tmp_path, channels, mode, fmt, value, options, grey, rgb):
    path = tmp_path / f"image.{fmt}"
    _mode_image(mode, value).save(path, **options)
    with Image.open(path) as saved:
        assert saved.mode == mode.replace("I;16L", "I;16")  # the mode a reader of the file gets
    x, _ = data.load("mnist" if channels == 1 else "cifar10", source="folder", path=tmp_path, image_size=8)
    expected = np.broadcast_to(np.array([grey] if channels == 1 else rgb, np.uint8), (1, 8, 8, channels))
    np.testing.assert_allclose(x, data.to_model_range(expected), atol=1.01 / 127.5)


def test_folder_16_bit_range_maps_onto_minus_one_one(tmp_path):
    ramp = np.repeat(np.array([0, 16384, 32768, 65535], np.uint16), 16).reshape(8, 8)
    Image.fromarray(ramp).save(tmp_path / "ramp.png")  # mode I;16
    x, _ = data.load("mnist", source="folder", path=tmp_path, image_size=8)
    np.testing.assert_allclose(x[0, ::2, 0, 0], [-1.0, -0.5, 0.0, 1.0], atol=0.005)  # mid-grey 32768 is ~0.0


@pytest.mark.parametrize("mode, value, message", [
    ("F", 0.5, r"mode F \(floating point\).*range is not known"),
    ("I", 70000, r"mode I with values in \[70000, 70000\], outside 0\.\.65535"),
    ("I", -1, r"mode I with values in \[-1, -1\], outside 0\.\.65535"),
])
def test_folder_refuses_modes_whose_range_is_not_known(tmp_path, mode, value, message):
    _mode_image(mode, value).save(tmp_path / "odd.tif")
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "odd.tif")) + ".*" + message):
        data.load("mnist", source="folder", path=tmp_path)


def test_folder_numeric_class_names_never_share_a_label(tmp_path):
    pixel = np.zeros((8, 8), np.uint8)
    for name in ("00", "01", "02"):  # zero-padded numbers are the labels too
        _write_png(tmp_path / "padded" / name / "a.png", pixel)
    _, y = data.load("mnist", source="folder", path=tmp_path / "padded")
    assert y.tolist() == [0, 1, 2]
    for name in ("1", "01"):
        _write_png(tmp_path / "clash" / name / "a.png", pixel)
    with pytest.raises(ValueError, match=r"class folders '01' and '1' .* would share label 1"):
        data.load("mnist", source="folder", path=tmp_path / "clash")
    _write_png(tmp_path / "splits" / "train" / "7" / "a.png", pixel)
    _write_png(tmp_path / "splits" / "test" / "007" / "a.png", pixel)  # the clash is across the splits
    with pytest.raises(ValueError, match=r"class folders '007' and '7' .* would share label 7"):
        data.load("mnist", "train", source="folder", path=tmp_path / "splits")
    for name in ("1", "2", "cat"):
        _write_png(tmp_path / "mixed" / name / "a.png", pixel)
    with pytest.raises(ValueError, match=r"mixes numbered class folders \('1', '2'\) with named ones \('cat'\)"):
        data.load("mnist", source="folder", path=tmp_path / "mixed")
    _write_png(tmp_path / "huge" / ("9" * 20) / "a.png", pixel)
    with pytest.raises(ValueError, match=r"class folder '9{20}' .* above 2\*\*63 - 1"):
        data.load("mnist", source="folder", path=tmp_path / "huge")
    _write_png(tmp_path / "superscript" / "\u00b2" / "a.png", pixel)  # a digit to str.isdigit, not to int()
    _, y = data.load("mnist", source="folder", path=tmp_path / "superscript")
    assert y.tolist() == [0]  # a name, numbered by its index


def test_folder_skips_hidden_files_and_folders(tmp_path):
    pixel = np.zeros((8, 8), np.uint8)
    for root in ("classes/cat", "classes/dog", "loose"):
        _write_png(tmp_path / root / "a.png", pixel)
        (tmp_path / root / "._a.png").write_bytes(b"\x00\x05\x16\x07 resource fork")  # macOS AppleDouble
        _write_png(tmp_path / root / ".ipynb_checkpoints" / "a-checkpoint.png", pixel)
    _write_png(tmp_path / "classes" / ".ipynb_checkpoints" / "a-checkpoint.png", pixel)
    _write_png(tmp_path / "classes" / ".hidden_class" / "a.png", pixel)
    _, y = data.load("mnist", source="folder", path=tmp_path / "classes")
    assert y.tolist() == [0, 1]  # cat, dog: no hidden class, no hidden file
    x, y = data.load("mnist", source="folder", path=tmp_path / "loose")
    assert x.shape == (1, 28, 28, 1) and y is None


@pytest.mark.parametrize("content", [b"", b"not an image at all", "truncated"])
def test_folder_corrupt_image_error_names_the_file(tmp_path, content):
    _write_png(tmp_path / "good.png", np.zeros((8, 8), np.uint8))
    if content == "truncated":
        _write_png(tmp_path / "bad.png", np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8))
        content = (tmp_path / "bad.png").read_bytes()[:300]
    (tmp_path / "bad.png").write_bytes(content)
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "bad.png")) + " is not a readable image"):
        data.load("mnist", source="folder", path=tmp_path)


def test_folder_applies_exif_orientation(tmp_path):
    top_white = np.zeros((8, 8), np.uint8)
    top_white[:4] = 255
    exif = Image.Exif()
    exif[0x0112] = 3  # Orientation: rotate 180 degrees to display
    Image.fromarray(top_white).save(tmp_path / "upside_down.png", exif=exif)
    x, _ = data.load("mnist", source="folder", path=tmp_path, image_size=8)
    np.testing.assert_array_equal(x[0, ..., 0], data.to_model_range(top_white[::-1]))  # as a viewer shows it


def test_folder_refuses_images_of_several_frames(tmp_path):
    frames = [Image.fromarray(np.full((8, 8), v, np.uint8)) for v in (0, 255)]
    frames[0].save(tmp_path / "animated.gif", save_all=True, append_images=frames[1:])
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "animated.gif")) + " has 2 frames"):
        data.load("mnist", source="folder", path=tmp_path)


def test_folder_refuses_images_below_the_class_folders(tmp_path):
    pixel = np.zeros((8, 8), np.uint8)
    _write_png(tmp_path / "a" / "dog" / "a.png", pixel)
    _write_png(tmp_path / "a" / "cat" / "2019" / "a.png", pixel)  # cat holds no image directly: not silently dropped
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "a" / "cat" / "2019")) + " holds images"):
        data.load("mnist", source="folder", path=tmp_path / "a")
    _write_png(tmp_path / "b" / "dog" / "a.png", pixel)
    _write_png(tmp_path / "b" / "dog" / "more" / "deeper" / "b.png", pixel)
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "b" / "dog" / "more" / "deeper"))):
        data.load("mnist", source="folder", path=tmp_path / "b")
    _write_png(tmp_path / "c" / "a.png", pixel)  # loose images, and more two levels down
    _write_png(tmp_path / "c" / "sub" / "sub" / "b.png", pixel)
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "c" / "sub" / "sub"))):
        data.load("mnist", source="folder", path=tmp_path / "c")


def test_folder_symlinks_loops_and_broken_links(tmp_path):
    pixel = np.zeros((8, 8), np.uint8)
    _write_png(tmp_path / "cat" / "a.png", pixel)
    (tmp_path / "cat" / "loop").symlink_to(tmp_path / "cat")  # a folder loop: ends, adds nothing
    (tmp_path / "cat" / "self.png").symlink_to(tmp_path / "cat" / "self.png")  # a link loop of its own
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "cat" / "self.png")) + " is named like an image but"):
        data.load("mnist", source="folder", path=tmp_path)
    (tmp_path / "cat" / "self.png").unlink()
    (tmp_path / "cat" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "cat" / "gone.png")) + " is named like an image but"):
        data.load("mnist", source="folder", path=tmp_path)
    (tmp_path / "cat" / "gone.png").unlink()
    (tmp_path / "cat" / "b.png").symlink_to(tmp_path / "cat" / "a.png")  # a link to an image is an image
    _, y = data.load("mnist", source="folder", path=tmp_path)
    assert y.tolist() == [0, 0]


def test_provenance_states_file_hash_split_and_licence_of_every_npz_dataset(monkeypatch):
    assert set(data.LICENCES) == set(data.NPZ_FILES)  # a dataset's facts in one place
    monkeypatch.setattr(data, "find_npz", lambda name, path=None: Path("/data") / data.NPZ_FILES[name][0])
    assert data.provenance("celeba32", test_split="the last 1,000 faces") == {
        "name": "celeba32", "file": "celeba_10k_64.npz", "sha256": data.NPZ_FILES["celeba"][1], "split": "train",
        "test_split": "the last 1,000 faces", "licence": data.LICENCES["celeba"],
    }
