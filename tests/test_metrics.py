"""Fréchet distance and KID against closed forms and their defining properties."""

import numpy as np
import pytest

from keras_shortrun import metrics


def test_frechet_distance_of_gaussians_matches_the_closed_form():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(5, 5))
    b = rng.normal(size=(5, 5))
    cov1, cov2 = a @ a.T + np.eye(5), b @ b.T + np.eye(5)
    mean1, mean2 = rng.normal(size=5), rng.normal(size=5)
    values, vectors = np.linalg.eig(cov1 @ cov2)  # independent route: eigenvalues of the (non-symmetric) product
    expected = np.sum((mean1 - mean2) ** 2) + np.trace(cov1 + cov2) - 2 * np.sum(np.sqrt(values.real))
    assert metrics.frechet_distance_from_stats(mean1, cov1, mean2, cov2) == pytest.approx(expected, rel=1e-8)
    diagonal = metrics.frechet_distance_from_stats(mean1, np.diag([1.0, 4, 9, 1, 1]), mean1, np.diag([4.0, 1, 1, 1, 9]))
    assert diagonal == pytest.approx((1 - 2) ** 2 + (2 - 1) ** 2 + (3 - 1) ** 2 + (1 - 3) ** 2, rel=1e-10)


def test_frechet_distance_of_samples_is_zero_for_identical_sets_and_grows_with_a_shift():
    x = np.random.default_rng(1).normal(size=(2000, 8))
    assert abs(metrics.frechet_distance(x, x)) < 1e-8
    distances = [metrics.frechet_distance(x, x + shift) for shift in (0.1, 0.5, 1.0)]
    assert distances == pytest.approx([8 * 0.01, 8 * 0.25, 8 * 1.0], rel=1e-6)  # a shift moves only the mean


def test_kid_is_unbiased_near_zero_for_one_distribution_and_grows_with_a_shift():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(600, 8)), rng.normal(size=(600, 8))
    same, spread = metrics.kernel_distance(x, y, subsets=20, subset_size=300)
    assert abs(same) < 3 * spread + 1e-3
    shifted = [metrics.kernel_distance(x, y + s, subsets=20, subset_size=300)[0] for s in (0.25, 0.5, 1.0)]
    assert shifted[0] > same and shifted[0] < shifted[1] < shifted[2]


def test_bad_features_name_the_problem():
    x = np.zeros((10, 4))
    with pytest.raises(ValueError, match="dimension"):
        metrics.frechet_distance(x, np.zeros((10, 3)))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        metrics.kernel_distance(np.zeros((10, 2, 2)), x)
    with pytest.raises(ValueError, match="NaN"):
        metrics.frechet_distance(np.full((10, 4), np.nan), x)
    with pytest.raises(ValueError, match="at least 2"):
        metrics.frechet_distance(x[:1], x)


def test_nearest_neighbours_finds_exact_copies_first():
    rng = np.random.default_rng(0)
    pool = rng.uniform(-1, 1, size=(50, 6, 6, 1)).astype("float32")
    queries = pool[[7, 3]] + 1e-3
    indices = metrics.nearest_neighbours(queries, pool, k=3)
    assert indices.shape == (2, 3) and indices[0, 0] == 7 and indices[1, 0] == 3
    brute = np.argsort(((queries.reshape(2, 1, -1) - pool.reshape(1, 50, -1)) ** 2).sum(-1), axis=1)[:, :3]
    np.testing.assert_array_equal(indices, brute)
    with pytest.raises(ValueError, match="differ in size"):
        metrics.nearest_neighbours(queries, pool[:, :5])
    distances = metrics.nearest_distances(pool[[7, 3]] + 0.05, pool)
    np.testing.assert_allclose(distances, 0.05, rtol=1e-3)  # every pixel of a near-copy is off by 0.05
    far = metrics.nearest_distances(-pool[:4] - 3, pool)
    brute_rms = np.sqrt(((-pool[:4, None] - 3 - pool[None]) ** 2).mean(axis=(2, 3, 4)).min(axis=1))
    np.testing.assert_allclose(far, brute_rms, rtol=1e-4)


def test_image_features_refuses_bad_images():
    import keras

    network = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten()])
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        metrics.image_features(network, np.full((2, 8, 8, 1), 255.0))
    with pytest.raises(ValueError, match="NaN"):
        metrics.image_features(network, np.full((2, 8, 8, 1), np.nan))
    with pytest.raises(ValueError, match="no feature network|No feature network"):
        metrics.feature_network("svhn")
    # images of another size are resized to the network's input
    assert metrics.image_features(network, np.zeros((3, 16, 16, 1))).shape == (3, 64)


def _gaussian_blur(images, sigma):
    """Separable Gaussian blur of ``(N, H, W, C)`` images (reflect padding), numpy only."""
    radius = int(np.ceil(3 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    out = images
    for axis in (1, 2):
        padded = np.pad(out, [(radius, radius) if a == axis else (0, 0) for a in range(4)], mode="reflect")
        out = sum(t * np.take(padded, np.arange(i, i + images.shape[axis]), axis=axis) for i, t in enumerate(taps))
    return out


@pytest.mark.parametrize("dataset", ["mnist", "fashion_mnist", "celeba", "cifar10"])
def test_metric_sanity_on_real_data(dataset, shared_data):
    """On real images with the declared feature network, scored against held-out images: a training subset
    scores best, and the same subset with Gaussian noise or blur scores monotonically worse in FD and KID."""
    from keras_shortrun import data

    n = 1000
    heldout, _ = data.load(dataset, "test", path=shared_data)
    train, _ = data.load(dataset, "train", path=shared_data)
    heldout, train = heldout[:n], train[np.random.default_rng(0).choice(len(train), n, replace=False)]
    network = metrics.feature_network(dataset)
    reference = metrics.image_features(network, heldout)

    def scores(images):
        features = metrics.image_features(network, images)
        return metrics.frechet_distance(reference, features), metrics.kernel_distance(reference, features,
                                                                                       subsets=20)[0]

    rng = np.random.default_rng(1)
    clean = scores(train)
    noisy = [scores(np.clip(train + s * rng.normal(size=train.shape), -1, 1)) for s in (0.4, 0.6, 0.9)]
    blurred = [scores(_gaussian_blur(train, s)) for s in (1.0, 2.0, 3.0)]
    for degraded in (noisy, blurred):
        fds, kids = zip(*degraded)
        assert clean[0] < fds[0] < fds[1] < fds[2], (dataset, clean, degraded)
        assert clean[1] < kids[0] < kids[1] < kids[2], (dataset, clean, degraded)


def test_sample_quality_kid_ignores_the_feature_scale():
    """KID is computed on features divided by the reference RMS, so scaling the network's output by 100
    leaves it unchanged while FD grows by 100^2."""
    import keras

    rng = np.random.default_rng(3)
    reference = rng.uniform(-1, 1, size=(200, 4, 4, 1)).astype("float32")
    samples = np.clip(reference[::-1] * 0.7 + 0.1, -1, 1)
    flat = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten()])
    scaled = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Rescaling(100.0)])
    small, large = (metrics.sample_quality(n, reference, samples) for n in (flat, scaled))
    assert large["kid"] == pytest.approx(small["kid"], rel=1e-6)
    assert large["fd"] == pytest.approx(1e4 * small["fd"], rel=1e-6)
    assert large["kid_feature_scale"] == pytest.approx(100 * small["kid_feature_scale"], rel=1e-6)
    assert small["kid"] > 0


def test_wilson_interval_matches_its_closed_forms():
    z = 1.96
    assert metrics.wilson_interval(50, 50) == pytest.approx((50 / (50 + z * z), 1.0))  # all correct: n / (n + z^2)
    assert metrics.wilson_interval(0, 50) == pytest.approx((0.0, z * z / (50 + z * z)))
    low, high = metrics.wilson_interval(500, 1000)  # symmetric about 1/2; off the normal approximation by O(z^2/n)
    assert (low + high) / 2 == pytest.approx(0.5) and high - 0.5 == pytest.approx(z * np.sqrt(0.25 / 1000), rel=5e-3)
    with pytest.raises(ValueError, match="successes"):
        metrics.wilson_interval(11, 10)
