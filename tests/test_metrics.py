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
