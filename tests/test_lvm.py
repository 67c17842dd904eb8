"""MultiLayerLVM and its VAE baseline: the step-size objective against exact answers, training, uses, saving."""

import keras
import numpy as np
import pytest
from builders import tiny_images
from builders import tiny_lvm
from conftest import run_python
from keras import ops

from keras_shortrun.layers import LangevinChain
from keras_shortrun.layers import gaussian_posterior_potential
from keras_shortrun.models import VAE
from keras_shortrun.models import MultiLayerLVM
from keras_shortrun.models import TopDownGenerator
from keras_shortrun.models import posterior_chain


@keras.saving.register_keras_serializable(package="keras_shortrun_tests")
class LinearGenerator(keras.layers.Layer):
    """``g(z) = W z`` with fixed ``W`` ``(P, D)``: the posterior is Gaussian, the chain is linear."""

    def __init__(self, weights, **kwargs):
        super().__init__(**kwargs)
        self.matrix = np.asarray(weights, "float32")
        self.latent_dims = [self.matrix.shape[1]]
        self.image_shape = (self.matrix.shape[0],)

    def call(self, latents):
        return ops.matmul(latents[0], ops.convert_to_tensor(self.matrix.T))

    def get_config(self):
        return dict(super().get_config(), weights=self.matrix.tolist())


def exact_gaussian_kl(weights, x, sigma, steps, step_size):
    """Mean over ``x`` of KL(q_s || p(z | x)) for the linear-Gaussian model, q_s = the K-step chain's output
    law from N(0, I): mean and covariance propagated in closed form (independent of the library)."""
    dim = weights.shape[1]
    precision = weights.T @ weights / sigma**2 + np.eye(dim)
    covariance_post = np.linalg.inv(precision)
    h = step_size**2 / 2
    a = np.eye(dim) - h * precision
    mean, cov = np.zeros((len(x), dim)), np.eye(dim)
    for _ in range(steps):
        mean = mean @ a.T + h * (x @ weights) / sigma**2
        cov = a @ cov @ a.T + step_size**2 * np.eye(dim)
    mu_post = (x @ weights) / sigma**2 @ covariance_post
    diff = mean - mu_post
    mahalanobis = np.einsum("bi,ij,bj->b", diff, precision, diff)
    logdet_ratio = np.linalg.slogdet(covariance_post)[1] - np.linalg.slogdet(cov)[1]
    return float(np.mean(0.5 * (np.trace(precision @ cov) + mahalanobis - dim + logdet_ratio)))


def linear_model(entropy="propagated", steps=10, step_size=0.05, seed=0):
    rng = np.random.default_rng(seed)
    weights = rng.normal(size=(12, 4)) / 2.0
    x = np.clip(rng.normal(size=(256, 12)) * 0.5, -1, 1).astype("float32")
    model = MultiLayerLVM(
        LinearGenerator(weights), sigma=0.5, chain=posterior_chain(1, steps=steps, step_size=step_size, seed=seed),
        step_size_learning_rate=0.02, step_size_batch=64, entropy=entropy, seed=seed,
    )
    return model, weights, x


def test_learned_step_size_is_within_10_percent_of_the_exact_kl_optimum():
    model, weights, x = linear_model()
    grid = np.linspace(0.01, 0.6, 1200)
    kl = [exact_gaussian_kl(weights, x, 0.5, 10, s) for s in grid]
    s_star = grid[int(np.argmin(kl))]
    model.fit_step_size(x, iterations=300, batch_size=64, seed=1)
    learned = float(ops.convert_to_numpy(model.chain.step_size)[0])
    assert abs(learned - s_star) / s_star < 0.10, (learned, s_star)
    # The step starts at 0.05, far from the optimum: learning moved it.
    assert abs(learned - 0.05) > 0.5 * abs(s_star - 0.05)


def test_noise_conditional_objective_prefers_smaller_steps_than_the_kl_optimum():
    """The papers' fixed-noise change of variables ignores the entropy the noise adds: its optimum is too small."""
    conditional, weights, x = linear_model(entropy="noise_conditional")
    candidates = np.linspace(0.05, 0.5, 10)
    best_conditional, _ = conditional.grid_search_step_size(x[:64], candidates)
    propagated, _, _ = linear_model()
    best_propagated, _ = propagated.grid_search_step_size(x[:64], candidates)
    assert best_conditional < 0.8 * best_propagated


def test_objective_is_the_exact_gaussian_kl_minus_log_evidence():
    """On the linear-Gaussian model the objective estimates KL(q_s || p(z|x)) - log p(x) without bias."""
    model, weights, x = linear_model()
    marginal = weights @ weights.T + 0.5**2 * np.eye(len(weights))  # x ~ N(0, W W^T + sigma^2 I)
    log_evidence = np.mean(
        -0.5 * np.einsum("bi,ij,bj->b", x, np.linalg.inv(marginal), x)
        - 0.5 * np.linalg.slogdet(2 * np.pi * marginal)[1]
    )
    many = np.tile(x, (8, 1))  # 2,048 chains: Monte Carlo error about 0.03 nats
    for s in (0.1, 0.3):
        expected = exact_gaussian_kl(weights, x, 0.5, 10, s) - log_evidence
        assert model.step_size_objective(many, s, seed=3, batch_size=512) == pytest.approx(expected, abs=0.15)


STEP_SIZES, SIGMA = (0.3, 0.2), 0.3  # of the small non-linear posterior below


def small_nonlinear_arrays(steps=4, dims=(2, 3), seed=0):
    """The float64 arrays of the small non-linear posterior: generator weights ``w1 (D, 6)``, ``w2 (6, 5)``,
    data ``x (3, 5)``, chain starts and noise per latent group (``D = 5`` latents, 3 examples)."""
    rng = np.random.default_rng(seed)
    w1, w2 = rng.normal(size=(sum(dims), 6)), rng.normal(size=(6, 5))
    x = rng.uniform(-1, 1, size=(3, 5))
    z0 = [rng.normal(size=(3, d)) for d in dims]
    noise = [rng.normal(size=(3, steps, d)) for d in dims]
    return w1, w2, x, z0, noise


def small_nonlinear_setup(dtype="float32"):
    """A 2-layer tanh generator's posterior, its K-step chain (``STEP_SIZES`` per group), start and noise; every
    array in ``dtype``."""
    w1, w2, x, z0, noise = [np.asarray(a, dtype) if isinstance(a, np.ndarray) else [g.astype(dtype) for g in a]
                            for a in small_nonlinear_arrays()]

    def generator(latents):
        z = ops.concatenate(list(latents), axis=1)
        return ops.tanh(ops.matmul(ops.tanh(ops.matmul(z, w1)), w2))

    chain = LangevinChain(steps=noise[0].shape[1], step_size=list(STEP_SIZES))
    return chain, gaussian_posterior_potential(generator, x, SIGMA), z0, noise


def float64_reference(propagate_noise):
    """An independent float64 reference, written out here in JAX (64-bit mode), apart from Keras and its backend:
    the chain ``z - (s^2/2) dU/dz + s eps``, its Jacobians w.r.t. start and noise per example, then
    ``log det`` of ``J_0 J_0^T + J_eps J_eps^T`` (or of ``J_0 J_0^T``); also ``cond`` of that matrix, ``(B,)``."""
    import jax
    import jax.numpy as jnp

    w1, w2, x, z0, noise = small_nonlinear_arrays()
    dims = [z.shape[1] for z in z0]
    with jax.enable_x64(True):
        step = jnp.repeat(jnp.asarray(STEP_SIZES), jnp.asarray(dims), total_repeat_length=sum(dims))  # (D,)

        def chain(start, eps, image):  # (D,), (K, D), (5,) -> (D,)
            def potential(z):
                residual = image - jnp.tanh(jnp.tanh(z @ w1) @ w2)
                return jnp.sum(residual**2) / (2 * SIGMA**2) + 0.5 * jnp.sum(z**2)

            for k in range(eps.shape[0]):
                start = start - 0.5 * step**2 * jax.grad(potential)(start) + step * eps[k]
            return start

        starts, eps = np.concatenate(z0, axis=1), np.concatenate(noise, axis=2)
        j_start = np.asarray(jax.vmap(jax.jacfwd(chain, argnums=0))(starts, eps, x))  # (B, D, D)
        j_noise = np.asarray(jax.vmap(jax.jacfwd(chain, argnums=1))(starts, eps, x)).reshape(len(x), sum(dims), -1)
    covariance = j_start @ j_start.transpose(0, 2, 1)
    if propagate_noise:
        covariance = covariance + j_noise @ j_noise.transpose(0, 2, 1)
    return np.linalg.slogdet(covariance)[1], np.linalg.cond(covariance)


def float32_log_det_bound(condition, steps=4, dim=5):
    """What float32 rounding can move ``log det C_K`` by, per example: ``|d log det C| = |tr(C^-1 dC)| <=
    D cond(C) |dC|/|C|``, and ``C`` is built by ``K`` products of ``D x D`` matrices, each adding a relative
    error of at most ``D`` float32 ulps: ``D^2 K cond(C) eps32``. Measured errors sit 10-1000x below it; the
    float32 chain's rounding differs between CPUs (oneDNN's AVX-512 and AVX2 kernels, Eigen), this bound not."""
    return dim * dim * steps * condition * np.finfo("float32").eps


@pytest.mark.parametrize("propagate_noise", [True, False])
def test_log_det_matches_a_float64_brute_force_jacobian_of_the_unrolled_chain(propagate_noise):
    """log det C_K (float32, Hessian propagation) against the float64 Jacobians of the unrolled chain."""
    chain, potential, z0, noise = small_nonlinear_setup()
    _, log_det = chain.log_det_covariance(z0, potential, noise=noise, propagate_noise=propagate_noise)
    expected, condition = float64_reference(propagate_noise)
    error = np.abs(ops.convert_to_numpy(log_det) - expected)
    assert np.all(error <= float32_log_det_bound(condition)), (error, float32_log_det_bound(condition))


def test_log_det_agrees_on_jax():
    """The JAX backend's float32 log det is within the float32 bound of the float64 reference too."""
    code = """
import numpy as np, sys
from test_lvm import small_nonlinear_setup
from keras import ops
chain, potential, z0, noise = small_nonlinear_setup()
for flag in (True, False):
    print(ops.convert_to_numpy(chain.log_det_covariance(z0, potential, noise=noise, propagate_noise=flag)[1]).tolist())
"""
    lines = run_python(code, backend="jax").strip().splitlines()[-2:]
    for line, flag in zip(lines, (True, False)):
        expected, condition = float64_reference(flag)
        error = np.abs(np.array(eval(line)) - expected)
        assert np.all(error <= float32_log_det_bound(condition)), (flag, error)


def test_generator_shapes_and_resolutions():
    for size, channels in ((28, 1), (32, 3), (64, 3)):
        generator = TopDownGenerator([4, 4, 8], image_size=size, channels=channels, width=16)
        latents = [np.zeros((2, d), "float32") for d in (4, 4, 8)]
        assert tuple(generator(latents).shape) == (2, size, size, channels)
    with pytest.raises(ValueError, match="image_size"):
        TopDownGenerator([4], image_size=30)
    with pytest.raises(ValueError, match="latent layer 1|Latent layer 1"):
        TopDownGenerator([4, 4], image_size=8)([np.zeros((2, 4)), np.zeros((2, 5))])


def test_fit_updates_generator_and_step_sizes_then_round_trips(tmp_path):
    model = tiny_lvm()
    model.compile(optimizer=keras.optimizers.Adam(1e-3, beta_1=0.5))
    before = [w.copy() for w in model.generator.get_weights()]
    history = model.fit(tiny_images(8), batch_size=4, epochs=2, verbose=0)
    assert all(np.isfinite(v[-1]) for v in history.history.values())
    assert any(not np.allclose(a, b) for a, b in zip(before, model.generator.get_weights()))
    assert not np.allclose(ops.convert_to_numpy(model.chain.step_size), 0.05)  # 4 step-size updates ran
    assert float(ops.convert_to_numpy(model.step_size_updates)) == 4
    path = tmp_path / "lvm.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    x = tiny_images(3, seed=1)
    np.testing.assert_allclose(loaded.reconstruct(x, seed=5)[0], model.reconstruct(x, seed=5)[0], atol=1e-5)
    np.testing.assert_allclose(
        ops.convert_to_numpy(loaded.chain.step_size), ops.convert_to_numpy(model.chain.step_size)
    )


def test_uses_have_the_documented_shapes_and_behaviour():
    model = tiny_lvm()
    x = tiny_images(4)
    assert model.synthesize(5, seed=0).shape == (5, 8, 8, 1)
    np.testing.assert_array_equal(model.synthesize(2, seed=1), model.synthesize(2, seed=1))
    x_hat, mse = model.reconstruct(x, seed=0)
    assert x_hat.shape == x.shape and mse.shape == (4,)
    strip = model.interpolate(x[:2], x[2:], n=5, seed=0)
    assert strip.shape == (2, 5, 8, 8, 1)
    varied = model.vary_layer(x[:2], layer=1, n=3, seed=0)
    assert varied.shape == (2, 3, 8, 8, 1) and not np.allclose(varied[:, 0], varied[:, 1])
    # A full mask observes every pixel: inpainting is the reconstruction with the same seed.
    np.testing.assert_allclose(model.inpaint(x, np.ones((8, 8)), seed=0), x_hat, atol=1e-5)
    half = np.ones((8, 8))
    half[4:] = 0
    assert model.inpaint(x, half, seed=0).shape == x.shape


def test_inpainting_ignores_the_missing_pixels():
    model = tiny_lvm()
    x = tiny_images(2)
    mask = np.ones((8, 8))
    mask[4:] = 0
    corrupted = x.copy()
    corrupted[:, 4:] = -x[:, 4:]
    np.testing.assert_allclose(model.inpaint(x, mask, seed=3), model.inpaint(corrupted, mask, seed=3), atol=1e-5)


def test_bad_inputs_name_the_problem():
    model = tiny_lvm()
    x = tiny_images(2)
    with pytest.raises(ValueError, match="layer must be"):
        model.vary_layer(x, layer=2)
    with pytest.raises(ValueError, match="mask must contain only 0"):
        model.inpaint(x, np.full((8, 8), 0.5))
    with pytest.raises(ValueError, match="does not broadcast"):
        model.inpaint(x, np.ones((4, 4)))
    with pytest.raises(ValueError, match="shape"):
        model.reconstruct(np.zeros((2, 9, 9, 1), "float32"))
    with pytest.raises(ValueError, match="NaN"):
        model.reconstruct(np.full((1, 8, 8, 1), np.nan, "float32"))
    with pytest.raises(ValueError, match="step-size group"):
        MultiLayerLVM(TopDownGenerator([2, 3], image_size=8), chain=posterior_chain(3))
    with pytest.raises(ValueError, match="entropy"):
        MultiLayerLVM(TopDownGenerator([2], image_size=8), entropy="exact")
    with pytest.raises(ValueError, match="unclamped"):
        LangevinChain(steps=2, clip=(-1, 1)).log_det_covariance(np.zeros((1, 2), "float32"), lambda z: ops.sum(z, 1))


def test_vae_trains_and_round_trips(tmp_path):
    generator = TopDownGenerator([2, 3], image_size=8, channels=1, width=8, name="generator")
    model = VAE(generator, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    history = model.fit(tiny_images(8), batch_size=4, epochs=2, verbose=0)
    assert set(history.history) == {"loss", "mse", "kl"}
    path = tmp_path / "vae.keras"
    model.save(path)
    x = tiny_images(3, seed=2)
    np.testing.assert_allclose(keras.saving.load_model(path).reconstruct(x)[0], model.reconstruct(x)[0], atol=1e-6)


def test_lvm_and_vae_fit_on_jax():
    code = """
import numpy as np, sys, keras
from builders import tiny_lvm, tiny_images
from keras_shortrun.models import VAE, TopDownGenerator
model = tiny_lvm()
model.compile(optimizer=keras.optimizers.Adam(1e-3))
h = model.fit(tiny_images(8), batch_size=4, epochs=1, verbose=0)
vae = VAE(TopDownGenerator([2, 3], image_size=8, width=8), seed=0)
vae.compile(optimizer=keras.optimizers.Adam(1e-3))
hv = vae.fit(tiny_images(8), batch_size=4, epochs=1, verbose=0)
print(int(np.asarray(model.step_size_updates)), h.history["loss"][-1], hv.history["loss"][-1])
"""
    updates, lvm_loss, vae_loss = run_python(code, backend="jax").split()[-3:]
    assert int(updates) == 2 and np.isfinite(float(lvm_loss)) and np.isfinite(float(vae_loss))
