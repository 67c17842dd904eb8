"""White-box L-infinity attacks (FGSM, PGD) on image classifiers, pixels in ``[-1, 1]``.

Against a ``GenerativeClassifier`` the gradient goes through the unrolled,
stochastic chain and is averaged over several independent chains with fresh
noise at every attack step (expectation over transformation, EOT): an attack
that ignores the chain's randomness overstates its robustness. Its fixed-noise
counterpart (``loss_gradient(..., fixed_noise=True)``) attacks a deterministic
copy of the chain instead: when that is much stronger than EOT, EOT was masked.
"""

import itertools

import numpy as np
from keras import ops

from keras_shortrun import backend
from keras_shortrun.seeds import stream
from keras_shortrun.validation import check_images
from keras_shortrun.validation import check_positive_float
from keras_shortrun.validation import check_positive_int
from keras_shortrun.validation import check_seed


def loss_gradient(model, chains=8, seed=0, batch_size=256, fixed_noise=False):
    """``gradient(x, y) -> d CE(y | x) / dx`` ``(B, *image_shape)`` for white-box attacks.

    ``model``: a ``GenerativeClassifier`` (EOT over ``chains`` chains, fresh noise on every call,
    reproducible from ``seed``; with ``fixed_noise`` every call draws the same starts and noise, so the
    chain is one deterministic network of ``x``) or any Keras classifier mapping images to class
    probabilities.
    """
    if hasattr(model, "input_gradient"):
        calls = itertools.count()

        def call_seed():
            return stream(seed, "fixed_noise") if fixed_noise else stream(seed, f"call_{next(calls)}")

        return lambda x, y: model.input_gradient(x, y, chains=chains, seed=call_seed(), batch_size=batch_size)[0]

    def cross_entropy_gradient(images, labels):
        def cross_entropy(inputs):
            probabilities = model(inputs)
            picked = ops.take_along_axis(probabilities, ops.reshape(labels, (-1, 1)), axis=1)[:, 0]
            return -ops.log(picked + 1e-12)

        return backend.value_and_grad(cross_entropy, images)[1]

    compiled = backend.compile_method(model, cross_entropy_gradient)

    def gradient(x, y):
        parts = [ops.convert_to_numpy(compiled(x[i : i + batch_size], y[i : i + batch_size]))
                 for i in range(0, len(x), batch_size)]
        return np.concatenate(parts)

    return gradient


def _check(x, y, epsilon):
    x = np.asarray(x, "float32")
    x = check_images(x, x.shape[1:])
    y = np.asarray(y)
    if y.shape != (len(x),) or y.dtype.kind not in "iu" or y.min() < 0:
        raise ValueError(f"y must hold one class index >= 0 per image, shape ({len(x)},), got {y.shape} {y.dtype}.")
    if isinstance(epsilon, (bool, np.bool_)) or not isinstance(epsilon, (int, float, np.integer, np.floating)) \
            or not 0 < epsilon <= 2:
        raise ValueError(f"epsilon must be a number in (0, 2] (pixels in [-1, 1]), got {epsilon!r}.")
    return x, y.astype("int32")


def fgsm(gradient, x, y, epsilon):
    """Fast gradient sign method: ``clip(x + epsilon * sign(grad), -1, 1)``; ``x`` ``(B, ...)``, ``y`` ``(B,)``."""
    x, y = _check(x, y, epsilon)
    return np.clip(x + epsilon * np.sign(gradient(x, y)), -1.0, 1.0).astype("float32")


def pgd(gradient, x, y, epsilon, steps=20, step_size=None, seed=0):
    """Projected gradient descent (Madry et al.): a uniform random start in the ``epsilon`` ball, then
    ``steps`` signed-gradient steps of ``step_size`` (default ``2.5 * epsilon / steps``), each projected
    back onto the ball and the pixel range ``[-1, 1]``."""
    return _pgd_iterates(gradient, x, y, epsilon, steps, step_size, seed, (steps,))[steps]


def _pgd_iterates(gradient, x, y, epsilon, steps, step_size, seed, keep):
    """``pgd``'s iterates after each step count in ``keep``: ``{count: (B, ...)}``."""
    x, y = _check(x, y, epsilon)
    steps = check_positive_int(steps, "steps")
    # A step size <= 0 would walk down the loss and overstate robustness.
    step_size = 2.5 * epsilon / steps if step_size is None else check_positive_float(step_size, "step_size")
    rng = np.random.default_rng(check_seed(seed))
    adversarial = np.clip(x + rng.uniform(-epsilon, epsilon, x.shape), -1.0, 1.0).astype("float32")
    kept = {}
    for step in range(1, steps + 1):
        adversarial = adversarial + step_size * np.sign(gradient(adversarial, y))
        adversarial = np.clip(np.clip(adversarial, x - epsilon, x + epsilon), -1.0, 1.0).astype("float32")
        if step in keep:
            kept[step] = adversarial
    return kept


def pgd_curve(gradient, predict, x, y, epsilon, steps=100, restarts=1, checkpoints=None, step_size=None, seed=0):
    """Robust accuracy along PGD, to show that the attack has converged: runs ``restarts`` PGD attacks of
    ``steps`` steps (``pgd``, each from its own random start) and classifies each one's iterate after every
    step count in ``checkpoints`` (default: 10, 20, 50, 100, ... up to ``steps``) with ``predict(x) -> (B,)``
    class indices. An image counts as robust at a count when no restart's iterate at that count is
    misclassified. Returns ``({count: accuracy}, robust (B,) bool at ``steps``)``."""
    restarts = check_positive_int(restarts, "restarts")
    steps = check_positive_int(steps, "steps")
    if checkpoints is None:
        checkpoints = [c * 10**e for e in range(len(str(steps))) for c in (1, 2, 5) if 10 <= c * 10**e < steps]
    checkpoints = sorted({check_positive_int(c, "checkpoints[i]") for c in checkpoints if c <= steps} | {steps})
    robust = {count: np.ones(len(x), bool) for count in checkpoints}
    for restart in range(restarts):
        iterates = _pgd_iterates(gradient, x, y, epsilon, steps, step_size, stream(seed, f"restart_{restart}"),
                                 set(checkpoints))
        for count, adversarial in iterates.items():
            robust[count] &= np.asarray(predict(adversarial)) == np.asarray(y)
    return {count: float(np.mean(ok)) for count, ok in robust.items()}, robust[steps]
