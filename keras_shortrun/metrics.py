"""Sample-quality metrics on features: Fréchet distance and kernel distance (KID).

Both compare two sets of feature vectors ``(N, D)``; which network makes the
features is the caller's (and must be named with the number: a Fréchet distance
on other features than Inception's is not the papers' FID).
"""

import numpy as np


def _check_features(features, name):
    array = np.asarray(features, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"{name} must be feature vectors (N, D), got shape {array.shape}.")
    if array.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 feature vectors, got {array.shape[0]}.")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinite values.")
    return array


def _check_pair(real, fake):
    real, fake = _check_features(real, "real"), _check_features(fake, "fake")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"real and fake features differ in dimension: {real.shape[1]} vs {fake.shape[1]}.")
    return real, fake


def frechet_distance_from_stats(mean1, cov1, mean2, cov2):
    """``||m1 - m2||^2 + Tr(C1 + C2 - 2 (C1 C2)^(1/2))`` between two Gaussians, means ``(D,)``, covariances ``(D, D)``.

    The trace of the matrix square root is taken as the sum of the square roots of the eigenvalues of the
    symmetric ``C1^(1/2) C2 C1^(1/2)`` (same spectrum as ``C1 C2``), which stays real and stable.
    """
    mean1, mean2 = np.asarray(mean1, np.float64), np.asarray(mean2, np.float64)
    cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
    values, vectors = np.linalg.eigh((cov1 + cov1.T) / 2)
    root1 = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    middle = root1 @ cov2 @ root1
    trace_root = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)))
    return float(np.sum((mean1 - mean2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2.0 * trace_root)


def frechet_distance(real, fake):
    """Fréchet distance between Gaussians fitted to two feature sets ``(N, D)`` and ``(M, D)``."""
    real, fake = _check_pair(real, fake)
    return frechet_distance_from_stats(
        real.mean(0), np.cov(real, rowvar=False), fake.mean(0), np.cov(fake, rowvar=False)
    )


def kernel_distance(real, fake, subsets=100, subset_size=1000, seed=0):
    """KID (Bińkowski et al. 2018): the unbiased MMD^2 with the kernel ``(x.y / D + 1)^3``, averaged over
    ``subsets`` random subsets of ``min(subset_size, N, M)`` vectors of each set. Returns ``(mean, std)``."""
    real, fake = _check_pair(real, fake)
    size = min(subset_size, len(real), len(fake))
    dim = real.shape[1]
    rng = np.random.default_rng(seed)
    estimates = []
    for _ in range(subsets):
        x = real[rng.choice(len(real), size, replace=False)]
        y = fake[rng.choice(len(fake), size, replace=False)]
        k_xx, k_yy, k_xy = ((a @ b.T / dim + 1.0) ** 3 for a, b in ((x, x), (y, y), (x, y)))
        off_diagonal = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (size * (size - 1))
        estimates.append(off_diagonal - 2.0 * k_xy.mean())
    return float(np.mean(estimates)), float(np.std(estimates))
