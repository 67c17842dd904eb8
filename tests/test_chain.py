"""Checks of the Langevin chain and the backend glue against hand computations.

Tolerances are stated next to every assertion. The float32 hand computations
are compared with ``rtol=atol=1e-5`` (a few float32 ulps of O(1) values after
a handful of operations); float64 finite differences with the tolerances
derived where they are used.
"""

import math

import keras
import numpy as np
import pytest
from conftest import run_python
from keras import ops

from keras_shortrun import ShortRunEBM
from keras_shortrun import backend
from keras_shortrun.layers import LangevinChain
from keras_shortrun.layers import gaussian_posterior_potential
from keras_shortrun.models import EnergyConvNet
from keras_shortrun.models import EnergyMLP

F32 = {"rtol": 1e-5, "atol": 1e-5}  # float32 hand computation vs chain: O(1) values, a few ulps


def _np(x):
    return ops.convert_to_numpy(x)


def _mlp_energy_grad(weights, x, slope):
    """Hand-derived dE/dx of EnergyMLP(hidden=(H,)): E = leaky(x W0 + b0) W1 + b1."""
    w0, b0, w1, _ = [w.astype("float64") for w in weights]
    h = x @ w0 + b0
    return (w1[:, 0] * np.where(h > 0, 1.0, slope)) @ w0.T


# 1. One update vs numpy --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "step_size, noise_scale, tau",
    [
        (0.3, None, 0.3),  # exact Langevin: tau = s
        (math.sqrt(2.0), 0.01, 0.01),  # paper-1: x += -dE/dx + 0.01 eps (gradient coefficient s^2/2 = 1)
    ],
)
def test_one_step_mlp_energy_matches_hand_computation(step_size, noise_scale, tau):
    energy = EnergyMLP(dim=3, hidden=(5,), negative_slope=0.2)
    energy.build((None, 3))
    rng = np.random.RandomState(0)
    x0 = rng.uniform(-1, 1, (4, 3)).astype("float32")
    noise = rng.randn(4, 1, 3).astype("float32")  # (B, K, ...)
    chain = LangevinChain(steps=1, step_size=step_size, noise_scale=noise_scale)
    out = _np(chain(x0, potential=energy, noise=noise))

    grad = _mlp_energy_grad(energy.get_weights(), x0.astype("float64"), 0.2)
    expected = x0 - 0.5 * step_size**2 * grad + tau * noise[:, 0]
    if noise_scale == 0.01:
        np.testing.assert_allclose(expected, x0 - grad + 0.01 * noise[:, 0], rtol=1e-12)  # the paper's form
    np.testing.assert_allclose(out, expected, **F32)
    # The update really moved x (a check that could not pass with a no-op chain): |grad| is O(0.1..1).
    assert np.abs(out - x0).max() > 1e-2


@pytest.mark.parametrize("noise_scale", [None, 0.05])
@pytest.mark.parametrize("parametrization", ["log", "softplus"])
def test_quadratic_energy_three_steps_use_noise_in_step_order(noise_scale, parametrization):
    rng = np.random.RandomState(1)
    m = rng.randn(3, 3)
    a = (m @ m.T / 3 + np.eye(3)).astype("float32")  # SPD, E = x^T A x / 2, dE/dx = A x
    x0 = rng.randn(5, 3).astype("float32")
    noise = rng.randn(5, 3, 3).astype("float32")  # a different eps at every step
    s = 0.4
    chain = LangevinChain(steps=3, step_size=s, noise_scale=noise_scale, parametrization=parametrization)
    np.testing.assert_allclose(_np(chain.step_size), [s], rtol=1e-6)  # both parametrisations give s
    potential = lambda x: 0.5 * ops.sum(ops.matmul(x, a) * x, axis=1)  # noqa: E731
    out = _np(chain(x0, potential=potential, noise=noise))

    tau = s if noise_scale is None else noise_scale
    x = x0.astype("float64")
    for k in range(3):
        x = x - 0.5 * s**2 * x @ a + tau * noise[:, k]
    np.testing.assert_allclose(out, x, **F32)


def test_clip_clamps_after_every_update():
    rng = np.random.RandomState(2)
    x0 = rng.uniform(-1, 1, (6, 4)).astype("float32")
    noise = rng.randn(6, 4, 4).astype("float32")
    chain = LangevinChain(steps=4, step_size=1.5, noise_scale=0.5, clip=(-1.0, 1.0))
    potential = lambda x: -2.0 * ops.sum(x, axis=1)  # noqa: E731  (gradient -2 pushes every x upwards)
    out = _np(chain(x0, potential=potential, noise=noise))
    x = x0.astype("float64")
    for k in range(4):
        x = np.clip(x + 0.5 * 1.5**2 * 2.0 + 0.5 * noise[:, k], -1.0, 1.0)
    np.testing.assert_allclose(out, x, **F32)
    assert out.max() == 1.0 and out.min() >= -1.0
    assert LangevinChain.from_config(chain.get_config()).clip == (-1.0, 1.0)


def test_multi_group_state_with_per_group_step_sizes():
    rng = np.random.RandomState(2)
    x0 = rng.randn(4, 3).astype("float32")
    y0 = rng.randn(4, 2, 2).astype("float32")
    noise = [rng.randn(4, 2, 3).astype("float32"), rng.randn(4, 2, 2, 2).astype("float32")]
    sizes = [0.2, 0.5]

    # U = |x|^2/2 + sum(x) sum(y) + sum(y^4)/4: dU/dx = x + sum(y), dU/dy = sum(x) + y^3 (groups couple).
    def potential(state):
        x, y = state
        sy = ops.sum(ops.reshape(y, (-1, 4)), axis=1)
        quartic = 0.25 * ops.sum(ops.reshape(y**4, (-1, 4)), axis=1)
        return 0.5 * ops.sum(x * x, axis=1) + ops.sum(x, axis=1) * sy + quartic

    chain = LangevinChain(steps=2, step_size=sizes)
    assert chain.num_groups == 2
    out_x, out_y = [_np(t) for t in chain([x0, y0], potential=potential, noise=noise)]

    x, y = x0.astype("float64"), y0.astype("float64")
    for k in range(2):
        gx = x + y.sum(axis=(1, 2))[:, None]
        gy = x.sum(axis=1)[:, None, None] + y**3
        x, y = (x - 0.5 * sizes[0] ** 2 * gx + sizes[0] * noise[0][:, k],
                y - 0.5 * sizes[1] ** 2 * gy + sizes[1] * noise[1][:, k])
    np.testing.assert_allclose(out_x, x, **F32)
    np.testing.assert_allclose(out_y, y, **F32)

    with pytest.raises(ValueError, match="2 step-size group"):
        chain(x0, potential=lambda v: ops.sum(v, axis=1))


def test_gaussian_posterior_potential_linear_generator():
    rng = np.random.RandomState(3)
    w1 = rng.randn(3, 6).astype("float32") / 3
    w2 = rng.randn(2, 6).astype("float32") / 3
    x = rng.randn(4, 6).astype("float32")
    z1, z2 = rng.randn(4, 3).astype("float32"), rng.randn(4, 2).astype("float32")
    noise = [rng.randn(4, 1, 3).astype("float32"), rng.randn(4, 1, 2).astype("float32")]
    sigma, sizes = 0.5, [0.1, 0.2]

    def generator(z):
        return ops.matmul(z[0], w1) + ops.matmul(z[1], w2)

    potential = gaussian_posterior_potential(generator, x, sigma)
    residual = x - z1 @ w1 - z2 @ w2
    expected_u = (residual**2).sum(1) / (2 * sigma**2) + 0.5 * (z1**2).sum(1) + 0.5 * (z2**2).sum(1)
    np.testing.assert_allclose(_np(potential([z1, z2])), expected_u, rtol=1e-5)

    # dU/dz_l = -(x - g(z)) W_l^T / sigma^2 + z_l  (Gaussian likelihood + N(0, I) prior)
    g1 = -residual @ w1.T / sigma**2 + z1
    g2 = -residual @ w2.T / sigma**2 + z2
    _, (b1, b2) = backend.value_and_grad(potential, [ops.convert_to_tensor(z1), ops.convert_to_tensor(z2)])
    np.testing.assert_allclose(_np(b1), g1, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_np(b2), g2, rtol=1e-5, atol=1e-5)

    chain = LangevinChain(steps=1, step_size=sizes)
    o1, o2 = chain([z1, z2], potential=potential, noise=noise)
    np.testing.assert_allclose(_np(o1), z1 - 0.5 * sizes[0] ** 2 * g1 + sizes[0] * noise[0][:, 0], **F32)
    np.testing.assert_allclose(_np(o2), z2 - 0.5 * sizes[1] ** 2 * g2 + sizes[1] * noise[1][:, 0], **F32)

    # A single-tensor latent (one group) goes through the same helper.
    single = gaussian_posterior_potential(lambda z: ops.matmul(z, w1), x, sigma)
    r1 = x - z1 @ w1
    np.testing.assert_allclose(
        _np(single(z1)), (r1**2).sum(1) / (2 * sigma**2) + 0.5 * (z1**2).sum(1), rtol=1e-5
    )


# 2. Gaussian energy: moments after K steps ----------------------------------------------------------
@pytest.mark.parametrize("step_size, noise_scale", [(0.2, None), (0.5, 0.05)])
def test_gaussian_energy_moments_match_closed_form(step_size, noise_scale):
    """E = |x|^2/(2v): x_k = a^k x0 + tau sum_j a^j eps_j with a = 1 - s^2/(2v), eps drawn by the chain."""
    v, steps, every = 0.5, 24, 6
    n, d, m0, v0 = 20000, 2, 1.0, 0.25
    x0 = (m0 + math.sqrt(v0) * np.random.RandomState(4).randn(n, d)).astype("float32")
    chain = LangevinChain(steps=steps, step_size=step_size, noise_scale=noise_scale, seed=11)
    out, path = chain(x0, potential=lambda x: ops.sum(x * x, axis=1) / (2 * v), trajectory_every=every)
    path = _np(path)
    assert path.shape == (n, steps // every + 1, d)
    np.testing.assert_array_equal(path[:, -1], _np(out))

    a = 1 - step_size**2 / (2 * v)
    tau = step_size if noise_scale is None else noise_scale
    samples = n * d  # coordinates are independent, identically distributed
    for t in range(path.shape[1]):
        k = t * every
        mean = a**k * m0
        var = a ** (2 * k) * v0 + tau**2 * sum(a ** (2 * j) for j in range(k))
        values = path[:, t].ravel().astype("float64")
        # x_k is exactly Gaussian: SE(mean) = sqrt(var/N), SE(var) = var sqrt(2/(N-1)); allow 4 SE
        # (two-sided false-alarm rate 6e-5 per check; the seed is fixed so the test is deterministic).
        assert abs(values.mean() - mean) < 4 * math.sqrt(var / samples), (k, values.mean(), mean)
        assert abs(values.var(ddof=1) - var) < 4 * var * math.sqrt(2 / (samples - 1)), (k, values.var(), var)
    # Independent noise per step matters: with the same eps at every step the stationary variance would be
    # tau^2 (sum a^j)^2, here larger than tau^2 sum a^2j by a factor > 2, far outside the 4-SE band above.
    assert (sum(a**j for j in range(steps)) ** 2) / sum(a ** (2 * j) for j in range(steps)) > 2


def test_seeded_chain_is_reproducible_and_seeds_differ():
    x0 = np.zeros((3, 4), "float32")
    potential = lambda x: ops.sum(x * x, axis=1)  # noqa: E731
    chain = LangevinChain(steps=3, step_size=0.1)
    seed = np.array([5, 0], "int32")
    first = _np(chain(x0, potential=potential, seed=seed))
    np.testing.assert_array_equal(first, _np(chain(x0, potential=potential, seed=seed)))
    assert np.abs(first - _np(chain(x0, potential=potential, seed=np.array([6, 0], "int32")))).min() > 0
    # Without a seed, the layer's generator advances: two calls differ.
    assert np.abs(_np(chain(x0, potential=potential)) - _np(chain(x0, potential=potential))).min() > 0


# 3. value_and_grad vs finite differences ----------------------------------------------------------------
def test_value_and_grad_matches_central_differences_float64(float64):
    energy = EnergyConvNet(image_size=8, channels=1, filters=4, dtype="float64")
    energy.build((None, 8, 8, 1))
    assert all(w.dtype == "float64" for w in energy.weights)  # the dtype reaches the inner convolutions
    x = np.random.RandomState(5).uniform(-1, 1, (2, 8, 8, 1))
    values, grad = backend.value_and_grad(energy, ops.convert_to_tensor(x))
    values, grad = _np(values), _np(grad)
    assert values.shape == (2,) and grad.shape == x.shape and grad.dtype == np.float64
    np.testing.assert_allclose(values, _np(energy(x)), rtol=1e-12)

    h = 1e-6
    eye = np.eye(64).reshape(64, 8, 8, 1)
    fd = np.empty_like(x)
    for b in range(2):  # every coordinate of both samples, batched: (64, 8, 8, 1) per side
        plus = _np(energy(x[b] + h * eye))
        minus = _np(energy(x[b] - h * eye))
        fd[b] = ((plus - minus) / (2 * h)).reshape(8, 8, 1)
    # Central differences in float64: rounding error ~ 1e-16 |E| / h ~ 1e-10, truncation 0 for a piecewise-
    # linear net away from kinks (no kink lies within 1e-6 of these points for this seed). 1e-7 is ample
    # next to gradient entries of order 1e-2.
    assert np.abs(grad).max() > 1e-3
    np.testing.assert_allclose(grad, fd, rtol=0, atol=1e-7)


# 4. Backpropagation through the chain ---------------------------------------------------------------------
class SmoothEnergy(keras.layers.Layer):
    """E(x) = sum(tanh(x W) v) + c |x|^2 / 2: a non-zero Hessian, so BPTT terms are not trivial."""

    def __init__(self, dim, hidden, **kwargs):
        super().__init__(**kwargs)
        rng = np.random.RandomState(6)
        self.w = self.add_weight(shape=(dim, hidden), initializer=keras.initializers.Constant(rng.randn(dim, hidden)))
        self.v = self.add_weight(shape=(hidden,), initializer=keras.initializers.Constant(rng.randn(hidden)))

    def call(self, x):
        # tanh(a) = 2 sigmoid(2a) - 1: Keras computes ops.tanh in float32 on JAX even for float64 inputs.
        tanh = 2.0 * ops.sigmoid(2.0 * ops.matmul(x, self.w)) - 1.0
        return ops.sum(tanh * self.v, axis=1) + 0.25 * ops.sum(x * x, axis=1)


def _bptt_setup():
    energy = SmoothEnergy(4, 6, dtype="float64")
    chain = LangevinChain(steps=4, step_size=0.3, learn_step_size=True, bptt=True, dtype="float64")
    rng = np.random.RandomState(7)
    x0 = rng.randn(3, 4)
    noise = rng.randn(3, 4, 4)
    weights = rng.randn(3, 4)  # L = sum(weights * x_K)
    return energy, chain, x0, noise, weights


def test_bptt_gradients_match_finite_differences(float64):
    energy, chain, x0, noise, r = _bptt_setup()
    assert chain.raw_step_size.trainable

    def loss(start):
        return ops.sum(r * chain(start, potential=energy, noise=noise))

    _, (g_raw, g_w), (g_x0,) = backend.value_and_gradients(loss, [chain.raw_step_size, energy.w], [x0])
    g_raw, g_x0, g_w = _np(g_raw), _np(g_x0), _np(g_w)

    h = 1e-6

    def central_difference(variable, direction):
        start = _np(variable).copy()
        variable.assign(start + direction)
        up = float(loss(x0))
        variable.assign(start - direction)
        down = float(loss(x0))
        variable.assign(start)
        return (up - down) / (2 * h)

    fd_raw = central_difference(chain.raw_step_size, h)

    fd_x0 = np.zeros_like(x0)
    for i in np.ndindex(x0.shape):
        e = np.zeros_like(x0)
        e[i] = h
        fd_x0[i] = (float(loss(x0 + e)) - float(loss(x0 - e))) / (2 * h)

    e = np.zeros(energy.w.shape)
    e[1, 2] = h
    fd_w = central_difference(energy.w, e)

    # float64, smooth energy: central-difference truncation ~ h^2 |L'''| ~ 1e-12, rounding ~ 1e-16/h ~ 1e-10;
    # 1e-7 relative (with a 1e-8 floor) is a wide margin that any missing BPTT term would still violate.
    np.testing.assert_allclose(g_raw, [fd_raw], rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(g_x0, fd_x0, rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(g_w[1, 2], fd_w, rtol=1e-7, atol=1e-8)
    # Not a trivial identity map: the Jacobian dx_K/dx0 differs from I, so d/dx0 differs from r.
    assert np.abs(g_x0 - r).max() > 1e-2


def test_without_bptt_the_chain_output_is_a_constant(float64):
    energy, chain, x0, noise, r = _bptt_setup()
    _, weight_grads, start_grads = backend.value_and_gradients(
        lambda start: ops.sum(r * chain(start, potential=energy, noise=noise, bptt=False)),
        [chain.raw_step_size, energy.w], [x0])
    # No path from the output to the start, the step size or the energy's weights.
    assert all(np.all(_np(g) == 0) for g in weight_grads + start_grads)
    # Same forward values either way.
    np.testing.assert_allclose(_np(chain(x0, potential=energy, noise=noise, bptt=True)),
                               _np(chain(x0, potential=energy, noise=noise, bptt=False)), rtol=1e-12)


def test_noise_of_wrong_shape_is_rejected():
    chain = LangevinChain(steps=3, step_size=0.1)
    x0 = np.zeros((2, 4), "float32")
    potential = lambda x: ops.sum(x * x, axis=1)  # noqa: E731
    with pytest.raises(ValueError, match=r"noise must have shape \(batch, steps, \.\.\.\)"):
        chain(x0, potential=potential, noise=np.zeros((2, 4, 3), "float32"))  # K and D swapped
    with pytest.raises(ValueError, match="noise must have shape"):
        chain(x0, potential=potential, noise=np.zeros((2, 3, 4), "float32"), steps=5)  # steps overridden
    two = LangevinChain(steps=3, step_size=[0.1, 0.2])
    with pytest.raises(ValueError, match="noise for 2 group"):
        two([x0, x0], potential=lambda s: potential(s[0]), noise=[np.zeros((2, 3, 4), "float32")])


def test_invalid_chain_settings_are_rejected():
    with pytest.raises(ValueError, match="steps"):
        LangevinChain(steps=0)
    with pytest.raises(ValueError, match="step_size"):
        LangevinChain(step_size=[0.1, -1.0])
    with pytest.raises(ValueError, match="noise_scale"):
        LangevinChain(noise_scale=float("nan"))
    with pytest.raises(ValueError, match="parametrization"):
        LangevinChain(parametrization="exp")
    with pytest.raises(ValueError, match="unroll"):
        LangevinChain(unroll="yes")
    with pytest.raises(ValueError, match="trajectory_every"):
        LangevinChain(steps=2)(np.zeros((1, 2), "float32"), potential=lambda x: ops.sum(x, axis=1),
                               trajectory_every=0)


# 5. TensorFlow vs JAX ------------------------------------------------------------------------------------
_CROSS_BACKEND_SETUP = """
import numpy as np
import keras
from keras import ops
from keras_shortrun import LangevinChain, ShortRunEBM
from keras_shortrun.models import EnergyConvNet

def build(data):
    energy = EnergyConvNet(image_size=8, channels=1, filters=4, name="energy")
    energy.build((None, 8, 8, 1))
    energy.set_weights([data[f"w{i}"] for i in range(len(energy.weights))])
    return energy
"""


@pytest.mark.skipif(backend.BACKEND != "tensorflow", reason="compares this process's TensorFlow with a JAX subprocess")
def test_tensorflow_and_jax_chains_agree(tmp_path):
    energy = EnergyConvNet(image_size=8, channels=1, filters=4, name="energy")
    energy.build((None, 8, 8, 1))
    rng = np.random.RandomState(8)
    z = rng.uniform(-1, 1, (3, 8, 8, 1)).astype("float32")
    noise = rng.randn(3, 10, 8, 8, 1).astype("float32")
    r = rng.randn(3, 8, 8, 1).astype("float32")
    arrays = {f"w{i}": w for i, w in enumerate(energy.get_weights())}
    np.savez(tmp_path / "in.npz", z=z, noise=noise, r=r, **arrays)

    jax_code = _CROSS_BACKEND_SETUP + f"""
import jax
import jax.numpy as jnp
data = np.load({str(tmp_path / "in.npz")!r})
energy = build(data)
z, noise, r = (jnp.asarray(data[k]) for k in ("z", "noise", "r"))
exact = LangevinChain(steps=10, step_size=0.5, learn_step_size=True, bptt=True)
paper = LangevinChain(steps=10, step_size=2.0**0.5, noise_scale=0.01, name="chain")
smooth = lambda x: energy(ops.tanh(x))
out = {{}}
out["exact"] = np.asarray(exact(z, potential=smooth, noise=noise))
out["paper"] = np.asarray(paper(z, potential=energy, noise=noise))
assert paper._unrolled(10)  # "auto" unrolls short chains on JAX; check the scan gives the same numbers
scan = LangevinChain(steps=10, step_size=2.0**0.5, noise_scale=0.01, unroll=False)
out["paper_scan"] = np.asarray(scan(z, potential=energy, noise=noise))
def loss(raw, start):
    with keras.StatelessScope(state_mapping=[(exact.raw_step_size, raw)]):
        return jnp.sum(r * exact(start, potential=smooth, noise=noise))
g_raw, g_z = jax.grad(loss, argnums=(0, 1))(exact.raw_step_size.value, z)
out["g_raw"], out["g_z"] = np.asarray(g_raw), np.asarray(g_z)
model = ShortRunEBM(energy, (8, 8, 1), chain=paper)
out["generate"] = model.generate(z, noise=noise)
np.savez({str(tmp_path / "jax.npz")!r}, **out)
print(keras.backend.backend())
"""
    assert run_python(jax_code, backend="jax").strip().endswith("jax")
    theirs = np.load(tmp_path / "jax.npz")

    exact = LangevinChain(steps=10, step_size=0.5, learn_step_size=True, bptt=True)
    paper = LangevinChain(steps=10, step_size=2.0**0.5, noise_scale=0.01, name="chain")
    # E(tanh(x)): a curved potential, so dx_K/dz is not the identity of a piecewise-linear net's chain.
    out_exact = exact(z, potential=lambda x: energy(ops.tanh(x)), noise=noise)
    _, (g_raw,), (g_z,) = backend.value_and_gradients(
        lambda start: ops.sum(r * exact(start, potential=lambda x: energy(ops.tanh(x)), noise=noise)),
        [exact.raw_step_size], [z])
    model = ShortRunEBM(energy, (8, 8, 1), chain=paper)
    ours = {
        "exact": _np(out_exact),
        "paper": _np(paper(z, potential=energy, noise=noise)),
        "generate": model.generate(z, noise=noise),  # the compiled path: tf.function vs jax.jit
        "g_raw": _np(g_raw),
        "g_z": _np(g_z),
    }
    # The paper chain moves the samples far from z (gradient coefficient 1), so agreement is not trivial.
    assert np.abs(ours["paper"] - z).max() > 0.1
    # BPTT w.r.t. z is not the trivial r (measured: 5e-3 of max|r|, ~50x the gradient tolerance below).
    assert np.abs(ours["g_z"] - r).max() > 2e-3 * np.abs(r).max()
    ours["paper_scan"] = ours["paper"]
    for key in ("exact", "paper", "paper_scan", "generate"):
        # Same weights and noise, float32 on both sides: differences are convolution rounding only, 1e-5.
        np.testing.assert_allclose(theirs[key], ours[key], rtol=0, atol=1e-5, err_msg=key)
    # BPTT gradients: sums over 192 outputs of O(1) terms in float32; 1e-4 relative to the largest entry
    # (measured differences: ~2e-7 relative).
    for key in ("g_raw", "g_z"):
        scale = np.abs(ours[key]).max()
        np.testing.assert_allclose(theirs[key], ours[key], rtol=0, atol=1e-4 * scale, err_msg=key)


@pytest.mark.parametrize("steps, trajectory_every", [(6, None), (7, 3)])
def test_unrolled_chain_matches_the_loop_with_bptt(steps, trajectory_every):
    """``unroll=True`` traces the same updates in sequence: same states, trajectory and BPTT gradients."""
    energy = EnergyMLP(dim=3, hidden=(16,))
    energy.build((None, 3))
    z = np.random.RandomState(2).randn(4, 3).astype("float32")
    seed = np.array([3, 4], "int32")
    outputs = {}
    for unroll in (False, True):
        chain = LangevinChain(steps=steps, step_size=0.4, learn_step_size=True, bptt=True, unroll=unroll)

        def run(start, chain=chain):
            return chain(start, potential=lambda x: energy(ops.tanh(x)), seed=seed, trajectory_every=trajectory_every)

        result = run(z)
        final = result[0] if trajectory_every else result
        _, (g_raw,), (g_z,) = backend.value_and_gradients(
            lambda start: ops.sum((run(start)[0] if trajectory_every else run(start)) ** 2), [chain.raw_step_size], [z])
        outputs[unroll] = [_np(g_z), _np(g_raw), _np(final)] + ([_np(result[1])] if trajectory_every else [])
    assert np.abs(outputs[False][2] - _np(z)).max() > 0.1  # the chain moved
    for looped, unrolled in zip(outputs[False], outputs[True]):
        np.testing.assert_allclose(unrolled, looped, rtol=1e-5, atol=1e-6)


def test_noise_streams_of_neighbouring_seeds_do_not_overlap():
    """Per-step seeds are folded in, not added: seed (5, 0) at step 1 must not replay seed (6, 0) at step 0."""
    chain = LangevinChain(steps=3, step_size=1.0)
    flat = lambda x: 0.0 * ops.sum(x, axis=1)  # noqa: E731  (no drift: each increment is tau * eps_k)
    x0 = np.zeros((4, 16), "float32")

    def increments(seed):
        _, path = chain(x0, potential=flat, seed=np.array(seed, "int64"), trajectory_every=1)
        return np.diff(_np(path), axis=1)

    a, b = increments([5, 0]), increments([6, 0])
    for i in range(3):
        for j in range(3):
            assert np.abs(a[:, i] - b[:, j]).max() > 0.1
    assert np.abs(a[:, 0] - a[:, 1]).max() > 0.1  # and steps within one chain differ
