"""Sample-quality metrics on features: Fréchet distance and kernel distance (KID).

Both compare two sets of feature vectors ``(N, D)``; which network makes the
features is the caller's (and must be named with the number: a Fréchet distance
on other features than Inception's is not the papers' FID).
"""

import numpy as np

from keras_shortrun.validation import check_positive_int


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
    subsets = check_positive_int(subsets, "subsets")
    size = min(check_positive_int(subset_size, "subset_size"), len(real), len(fake))
    if size < 2:
        raise ValueError(f"KID needs subsets of at least 2 vectors of each set, got {size} (subset_size="
                         f"{subset_size}, {len(real)} real, {len(fake)} fake).")
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


# dataset -> (zoo entry of its feature network, layer whose output is the feature, or None for the model's output).
# The classifiers are the ConvNet baselines (1,000 labels per class); faces use an autoencoder's encoder
# (see zoo/celeba_features/README.md for why). celeba32 images are upsampled 2x to the face network's input.
FEATURE_NETWORKS = {
    "mnist": ("mnist_classifier_convnet", "dense_1"),
    "fashion_mnist": ("fashion_mnist_classifier_convnet", "dense_1"),
    "celeba": ("celeba_features", None),
    "celeba32": ("celeba_features", None),
    "cifar10": ("cifar10_features", None),
}


def feature_network(dataset):
    """The declared feature network of ``dataset``: a Keras model ``(B, S, S, C)`` in ``[-1, 1]`` -> ``(B, D)``."""
    if dataset not in FEATURE_NETWORKS:
        raise ValueError(f"No feature network is declared for dataset {dataset!r}; known: {sorted(FEATURE_NETWORKS)}.")
    import keras

    from keras_shortrun import zoo

    entry, layer = FEATURE_NETWORKS[dataset]
    model = zoo.load(entry)
    network = model if layer is None else keras.Model(model.inputs, model.get_layer(layer).output)
    network.entry_name = entry
    return network


def image_features(network, images, batch_size=500):
    """Features ``(N, D)`` of images ``(N, H, W, C)`` in ``[-1, 1]``; resized (bilinear) to the network's input."""
    import keras

    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4:
        raise ValueError(f"images must be (N, H, W, C), got shape {images.shape}.")
    if not np.all(np.isfinite(images)):
        raise ValueError("images contain NaN or infinite values.")
    if images.min() < -1.001 or images.max() > 1.001:
        raise ValueError(f"images must be in [-1, 1] (got [{images.min():.3g}, {images.max():.3g}]); "
                         "convert uint8 pixels with keras_shortrun.data.to_model_range.")
    size = tuple(network.inputs[0].shape[1:3])
    parts = []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        if batch.shape[1:3] != size:
            batch = keras.ops.image.resize(batch, size, interpolation="bilinear")
        parts.append(keras.ops.convert_to_numpy(network(batch, training=False)))
    return np.concatenate(parts).astype(np.float64)


def reference_scale(real):
    """The root mean square of the reference features ``(N, D)``: KID divides both sets by it.

    KID's kernel ``(x.y / D + 1)^3`` was designed for Inception pool features, whose entries are of order
    one. Our feature networks' entries are not (classifier logits reach tens), and the cube then turns KID
    into a noisy third moment of feature norms with values near 1e5. One scalar from the reference set keeps
    the kernel in its intended regime and makes KID independent of the network's feature scale; FD is left
    on the raw features (a scalar would only scale it by its square).
    """
    return float(np.sqrt(np.mean(np.square(_check_features(real, "real")))))


def sample_quality(network, reference, samples, seed=0):
    """FD and KID between the features of ``reference`` and ``samples`` images (both ``(N, H, W, C)`` in [-1, 1]).

    FD is on the raw features; KID on features divided by ``reference_scale`` of the reference set.
    Returns ``{"fd", "kid", "kid_std", "kid_feature_scale", "n_reference", "n_samples", "feature_network"}``.
    """
    real, fake = image_features(network, reference), image_features(network, samples)
    scale = reference_scale(real)
    kid, kid_std = kernel_distance(real / scale, fake / scale, seed=seed)
    return {"fd": frechet_distance(real, fake), "kid": kid, "kid_std": kid_std, "kid_feature_scale": scale,
            "n_reference": len(real), "n_samples": len(fake),
            "feature_network": getattr(network, "entry_name", network.name)}


def _squared_distance_blocks(queries, pool, batch_size):
    """Yields ``(Q_b, P)`` blocks of squared pixel L2 distances from ``queries`` to every ``pool`` image."""
    queries = np.asarray(queries, np.float32).reshape(len(queries), -1)
    pool = np.asarray(pool, np.float32).reshape(len(pool), -1)
    if queries.shape[1] != pool.shape[1]:
        raise ValueError(f"queries and pool images differ in size: {queries.shape[1]} vs {pool.shape[1]} values.")
    pool_norms = np.sum(pool**2, axis=1)
    for start in range(0, len(queries), batch_size):
        q = queries[start:start + batch_size]
        yield np.sum(q**2, axis=1, keepdims=True) + pool_norms[None, :] - 2.0 * q @ pool.T


def nearest_neighbours(queries, pool, k=5, batch_size=256):
    """Indices ``(Q, k)`` of the ``k`` nearest images of ``pool`` (pixel L2) to each of ``queries``."""
    k = check_positive_int(k, "k")
    if k > len(pool):
        raise ValueError(f"k = {k} nearest neighbours asked of a pool of {len(pool)} images.")
    return np.concatenate([np.argsort(block, axis=1)[:, :k]
                           for block in _squared_distance_blocks(queries, pool, batch_size)])


def nearest_distances(queries, pool, batch_size=256):
    """Root-mean-square pixel distance ``(Q,)`` from each of ``queries`` to its nearest image of ``pool``.

    Compared with the same number for held-out images, it shows whether samples copy training images:
    copies would sit much closer to the training set than unseen real images do.
    """
    pixels = int(np.prod(np.shape(queries)[1:]))
    nearest = np.concatenate([block.min(axis=1) for block in _squared_distance_blocks(queries, pool, batch_size)])
    return np.sqrt(np.clip(nearest, 0, None) / pixels)


def wilson_interval(successes, trials, z=1.96):
    """The Wilson score interval ``(low, high)`` of a proportion ``successes / trials`` (``z``: 1.96 for 95 %);
    unlike ``p +- z * sqrt(p (1 - p) / n)`` it stays inside ``[0, 1]`` and is not empty at 0 or ``n``
    successes (an accuracy of 100 % on 50 images is ``(0.929, 1.0)``, not ``(1, 1)``)."""
    trials = check_positive_int(trials, "trials")
    if not 0 <= successes <= trials:
        raise ValueError(f"successes must lie in [0, trials={trials}], got {successes!r}.")
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * np.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))
