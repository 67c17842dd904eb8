"""The chain forms beyond paper 1: annealed noise and the coarse-to-fine chain, against closed forms on
Gaussian targets and a numpy hand computation, on both backends; the multiscale EBM built on them; the
CPU-time budget and the campaign start of a run.

Moment checks: every state is exactly Gaussian (Gaussian start, linear updates), so the sample mean and
variance have standard errors ``sqrt(var / N)`` and ``var sqrt(2 / (N - 1))``, and a covariance
``sqrt((var^2 + cov^2) / N)``; each check allows 4 of them (two-sided false-alarm rate 6e-5; the seeds are
fixed, so the tests are deterministic).
"""

import json
import math

import keras
import numpy as np
import pytest
from builders import tiny_ebm
from conftest import ROOT
from conftest import run_python
from keras import ops

from keras_shortrun import backend
from keras_shortrun import zoo
from keras_shortrun.layers import CoarseToFineChain
from keras_shortrun.layers import LangevinChain
from keras_shortrun.models import EnergyConvNet
from keras_shortrun.models import MultiscaleEnergy
from keras_shortrun.models import ShortRunEBM
from keras_shortrun.training import fit_resumable
from keras_shortrun.training import start_from_entry

F32 = {"rtol": 1e-5, "atol": 1e-5}  # float32 hand computation vs chain: O(1) values, a few ulps


def _within(values, mean, var):
    n = values.size
    assert abs(values.mean() - mean) < 4 * math.sqrt(var / n), (values.mean(), mean)
    assert abs(values.var(ddof=1) - var) < 4 * var * math.sqrt(2 / (n - 1)), (values.var(ddof=1), var)


def check_annealed_moments():
    """E = |x|^2/(2v), tau_k = tau min(1, (K-1-k)/A): x_K ~ N(a^K m0, a^2K v0 + sum_k a^2(K-1-k) tau_k^2)."""
    v, steps, anneal, s, tau = 0.5, 12, 4, 0.5, 0.3
    n, m0, v0 = 40000, 1.0, 0.25
    x0 = (m0 + math.sqrt(v0) * np.random.RandomState(1).randn(n, 1)).astype("float32")
    chain = LangevinChain(steps=steps, step_size=s, noise_scale=tau, anneal_steps=anneal, seed=3)
    out, path = chain(x0, potential=lambda x: ops.sum(x * x, axis=1) / (2 * v), trajectory_every=1)
    out, path = ops.convert_to_numpy(out), ops.convert_to_numpy(path)
    a = 1 - s * s / (2 * v)
    factors = [min(1.0, (steps - 1 - k) / anneal) for k in range(steps)]
    var = a ** (2 * steps) * v0 + sum(a ** (2 * (steps - 1 - k)) * (tau * f) ** 2 for k, f in enumerate(factors))
    _within(out.ravel().astype("float64"), a**steps * m0, var)
    # The last update is noise-free: x_K = a x_{K-1} to float32 rounding.
    np.testing.assert_allclose(path[:, -1], a * path[:, -2], **F32)
    # Without annealing the same chain is wider by the noise of the last A steps (far outside the band).
    plain = a ** (2 * steps) * v0 + tau**2 * sum(a ** (2 * j) for j in range(steps))
    assert plain - var > 20 * var * math.sqrt(2 / (n - 1))


def check_coarse_to_fine_moments():
    """Two stages (2x2 -> 4x4), E_r = |x|^2 / (2 v_r). Stage 1 on the strided subgrid of a Gaussian start,
    nearest upsampling, stage 2: per-pixel mean a1^k1 a2^k2 m0, variance v2 = a2^2k2 v1 + tau^2 sum a2^2j with
    v1 = a1^2k1 v0 + tau^2 sum a1^2j, covariance a2^2k2 v1 inside a 2x2 block and 0 across blocks."""
    variances, s, tau, (k1, k2) = {2: 0.5, 4: 0.8}, 0.5, 0.2, (6, 4)
    n, m0, v0 = 20000, 0.5, 0.3
    x0 = (m0 + math.sqrt(v0) * np.random.RandomState(2).randn(n, 4, 4, 1)).astype("float32")
    chain = CoarseToFineChain(resolutions=(2, 4), steps=(k1, k2), step_size=s, noise_scale=tau, seed=5)

    def potential(x):
        return ops.sum(ops.reshape(x * x, (ops.shape(x)[0], -1)), axis=1) / (2 * variances[x.shape[1]])

    out = ops.convert_to_numpy(chain(x0, potential=potential)).astype("float64")
    a1, a2 = (1 - s * s / (2 * variances[r]) for r in (2, 4))
    v1 = a1 ** (2 * k1) * v0 + tau**2 * sum(a1 ** (2 * j) for j in range(k1))
    v2 = a2 ** (2 * k2) * v1 + tau**2 * sum(a2 ** (2 * j) for j in range(k2))
    _within(out.ravel(), a1**k1 * a2**k2 * m0, v2)
    centred = out - out.mean(axis=0)
    same_block = (centred[:, 0, 0, 0] * centred[:, 1, 1, 0]).mean()
    other_block = (centred[:, 0, 0, 0] * centred[:, 2, 2, 0]).mean()
    cov = a2 ** (2 * k2) * v1
    assert abs(same_block - cov) < 4 * math.sqrt((v2**2 + cov**2) / n), (same_block, cov)
    assert abs(other_block) < 4 * math.sqrt(v2**2 / n), other_block


@pytest.mark.parametrize("check", [check_annealed_moments, check_coarse_to_fine_moments])
def test_moments_match_closed_forms(check):
    check()


@pytest.mark.parametrize("check", ["check_annealed_moments", "check_coarse_to_fine_moments",
                                   "check_gradient_penalty"])
def test_closed_forms_hold_on_jax(check):
    code = f"import keras\nimport test_chain_forms as t\nt.{check}()\nprint(keras.backend.backend())"
    out = run_python(code, backend="jax", env={"PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}"})
    assert out.strip().endswith("jax")


def test_coarse_to_fine_matches_a_numpy_hand_computation():
    """Given noise (B, K, 4, 4, 1), stage r reads it on its strided subgrid; quadratic energies make the whole
    chain a few numpy lines (the last update annealed: A = 1 gives it no noise)."""
    variances, s, tau = {2: 0.5, 4: 0.8}, 0.7, 0.3
    rng = np.random.RandomState(0)
    x0 = rng.uniform(-1, 1, (3, 4, 4, 1)).astype("float32")
    noise = rng.randn(3, 3, 4, 4, 1).astype("float32")
    chain = CoarseToFineChain(resolutions=(2, 4), steps=(2, 1), step_size=s, noise_scale=tau, anneal_steps=1)

    def potential(x):
        return ops.sum(ops.reshape(x * x, (ops.shape(x)[0], -1)), axis=1) / (2 * variances[x.shape[1]])

    out, path = chain(x0, potential=potential, noise=noise, trajectory_every=1)
    x = x0[:, ::2, ::2].astype("float64")
    expected_path = [x.repeat(2, 1).repeat(2, 2)]
    for k in range(2):
        x = x - 0.5 * s * s * x / variances[2] + tau * noise[:, k, ::2, ::2]
        expected_path.append(x.repeat(2, 1).repeat(2, 2))
    x = x.repeat(2, 1).repeat(2, 2)
    x = x - 0.5 * s * s * x / variances[4]  # annealed: the last update has no noise
    expected_path.append(x)
    np.testing.assert_allclose(ops.convert_to_numpy(out), x, **F32)
    np.testing.assert_allclose(ops.convert_to_numpy(path), np.stack(expected_path, axis=1), **F32)
    # The first 2 updates only: stage 1, upsampled to full resolution.
    first = chain(x0, potential=potential, noise=noise[:, :2], steps=2)
    np.testing.assert_allclose(ops.convert_to_numpy(first), expected_path[2], **F32)
    pyramid = chain.pyramid(x0)
    np.testing.assert_allclose(ops.convert_to_numpy(pyramid[0]), x0.reshape(3, 2, 2, 2, 2, 1).mean((2, 4)), **F32)
    assert chain.steps == 3


def test_coarse_to_fine_settings_and_inputs_are_checked():
    with pytest.raises(ValueError, match="multiple of the previous"):
        CoarseToFineChain(resolutions=(8, 12))
    with pytest.raises(ValueError, match="one positive integer per resolution"):
        CoarseToFineChain(resolutions=(8, 16), steps=(3,))
    with pytest.raises(ValueError, match="anneal_steps"):
        LangevinChain(anneal_steps=-1)
    chain = CoarseToFineChain(resolutions=(2, 4), steps=(1, 1))
    potential = lambda x: ops.sum(ops.reshape(x, (ops.shape(x)[0], -1)), axis=1)  # noqa: E731
    with pytest.raises(ValueError, match=r"needs inputs \(B, 4, 4, C\)"):
        chain(np.zeros((1, 8, 8, 1), "float32"), potential=potential)
    with pytest.raises(ValueError, match="runs at most its stages' 2 updates"):
        chain(np.zeros((1, 4, 4, 1), "float32"), potential=potential, steps=5)
    with pytest.raises(ValueError, match="noise must have shape"):
        chain(np.zeros((1, 4, 4, 1), "float32"), potential=potential, noise=np.zeros((1, 3, 4, 4, 1), "float32"))
    with pytest.raises(ValueError, match="No energy for images of size 8"):
        MultiscaleEnergy.with_convnets((4, 16), channels=1, filters=2)(np.zeros((1, 8, 8, 1), "float32"))
    with pytest.raises(ValueError, match="activation"):
        EnergyConvNet(image_size=8, activation="tanh")


def _tiny_cf_model(seed=0):
    return ShortRunEBM.with_coarse_to_fine(image_size=8, channels=1, filters=2, resolutions=(4, 8), steps=(2, 2),
                                           anneal_steps=1, seed=seed)


def test_multiscale_ebm_loss_sums_every_resolution_and_round_trips(tmp_path):
    model = _tiny_cf_model()
    rng = np.random.RandomState(0)
    x = rng.uniform(-1, 1, (4, 8, 8, 1)).astype("float32")
    data, samples = model.prepare_batch(x)
    assert [tuple(d.shape) for d in data] == [(4, 4, 4, 1), (4, 8, 8, 1)]
    loss, logs = model.compute_training_loss(x, None, (data, samples))
    by_hand = sum(float(ops.mean(model.energy(d)) - ops.mean(model.energy(s))) for d, s in zip(data, samples))
    assert abs(float(loss) - by_hand) < 1e-5 * max(1.0, abs(by_hand))  # float32 sums of O(1) energies
    np.testing.assert_allclose(float(logs["energy_data"]), float(ops.mean(model.energy(data[-1]))), **F32)
    path = tmp_path / "cf.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    z, noise = model.initial_state(2, seed=1), model.draw_noise(2, seed=2)
    assert noise.shape == (2, 4, 8, 8, 1)
    np.testing.assert_array_equal(loaded.generate(z, noise=noise), model.generate(z, noise=noise))
    assert type(loaded.chain) is CoarseToFineChain and loaded.chain.anneal_steps == 1


@keras.saving.register_keras_serializable(package="tests")
class QuadraticEnergy(keras.layers.Layer):
    """E(x) = a |x|^2 / 2 with a trainable ``a``: dE/dx = a x, so |dE/dx|^2 = a^2 |x|^2."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.a = self.add_weight(shape=(), initializer=keras.initializers.Constant(1.5))

    def call(self, x):
        return 0.5 * self.a * ops.sum(ops.reshape(x, (ops.shape(x)[0], -1)) ** 2, axis=1)


def check_gradient_penalty():
    """The penalised loss on ``QuadraticEnergy``, its logged penalty and its gradient in the weight ``a``
    against their closed forms; backend-agnostic (the weight gradient goes through ``backend.value_and_grad``
    with ``a`` fed by a ``StatelessScope``)."""
    model = ShortRunEBM(QuadraticEnergy(), (3,), chain=LangevinChain(steps=2, step_size=0.1), gradient_penalty=0.2)
    rng = np.random.RandomState(3)
    x_data, x_sample = (ops.convert_to_tensor(rng.randn(5, 3).astype("float32")) for _ in range(2))
    loss, logs = model.compute_training_loss(None, None, (x_data, x_sample))

    def loss_of(a):
        with keras.StatelessScope(state_mapping=[(model.energy.a, ops.reshape(a, ()))]):
            return ops.reshape(model.compute_training_loss(None, None, (x_data, x_sample))[0], (1,))

    _, d_loss_d_a = backend.value_and_grad(loss_of, ops.convert_to_tensor(np.array([1.5], "float32")))
    squares_data, squares_sample = (float(np.mean(np.sum(ops.convert_to_numpy(v) ** 2, axis=1)))
                                    for v in (x_data, x_sample))
    a = 1.5
    penalty = 0.2 * a**2 * (squares_data + squares_sample)
    # loss = a/2 (S_data - S_sample) + 0.2 a^2 (S_data + S_sample); float32 sums of O(1) terms: a few ulps.
    np.testing.assert_allclose(float(ops.convert_to_numpy(logs["gradient_penalty"])), penalty, **F32)
    np.testing.assert_allclose(float(ops.convert_to_numpy(loss)),
                               0.5 * a * (squares_data - squares_sample) + penalty, **F32)
    expected = 0.5 * (squares_data - squares_sample) + 0.4 * a * (squares_data + squares_sample)
    np.testing.assert_allclose(float(ops.convert_to_numpy(d_loss_d_a)[0]), expected, **F32)
    return model


def test_gradient_penalty_matches_its_closed_form_and_its_weight_gradient():
    model = check_gradient_penalty()
    assert ShortRunEBM.from_config(model.get_config()).gradient_penalty == 0.2
    assert "gradient_penalty" not in ShortRunEBM(QuadraticEnergy(), (3,)).metrics_trackers  # logs keep their columns
    with pytest.raises(ValueError, match="gradient_penalty must be a float >= 0"):
        ShortRunEBM(QuadraticEnergy(), (3,), gradient_penalty=-1.0)


def test_a_penalised_multiscale_ebm_trains_and_its_guard_reads_the_gaps(tmp_path):
    from keras_shortrun.training import DivergenceGuard

    model = ShortRunEBM.from_config({**_tiny_cf_model().get_config(), "gradient_penalty": 0.5})
    x = np.random.RandomState(0).uniform(-1, 1, (16, 8, 8, 1)).astype("float32")
    fit_resumable(model, x, tmp_path / "run", iterations=2, batch_size=4, iterations_per_epoch=2, verbose=0,
                  grid_size=4)
    header = (tmp_path / "run" / "log.csv").read_text().splitlines()[0]
    assert "gradient_penalty" in header.split(",")
    guard = DivergenceGuard(max_energy_gap=30.0)
    logs = {"energy_data": 0.0, "energy_sample": 0.0, "gradient_penalty": 40.0}
    assert guard.problem(dict(logs, loss=41.0)) is None  # summed gaps 1: a large penalty is no divergence
    assert "sum of the energy gaps" in guard.problem(dict(logs, loss=80.0))


def test_fit_stops_at_the_cpu_budget_and_records_it(tmp_path):
    model = _tiny_cf_model()
    x = np.random.RandomState(0).uniform(-1, 1, (16, 8, 8, 1)).astype("float32")
    fit_resumable(model, x, tmp_path / "run", iterations=6, batch_size=4, iterations_per_epoch=2, verbose=0,
                  max_cpu_seconds=1e-6, grid_size=4)
    clock = json.loads((tmp_path / "run" / "wall_time.json").read_text())
    assert clock["epochs"] == 1 and clock["cpu_time_s"] > 0  # stopped after the first of 3 epochs


def test_campaign_starts_from_the_entry_then_resumes_its_folder(tmp_path, capsys):
    entry = _tiny_cf_model(seed=7)
    training = {"iterations": 4, "wall_time_s": 1.5}
    entry_dir = zoo.save_entry(entry, tmp_path / "tiny_entry", {"name": "tiny_entry", "training": training})
    x = np.random.RandomState(0).uniform(-1, 1, (16, 8, 8, 1)).astype("float32")
    run_dir = tmp_path / "runs" / "tiny_entry"

    model = _tiny_cf_model(seed=7)
    keras.utils.set_random_seed(1)
    model = ShortRunEBM.from_config(model.get_config())  # same architecture, other random weights
    assert start_from_entry(model, run_dir, entry_dir) == "entry"
    assert "starting from the committed" in capsys.readouterr().out
    for mine, theirs in zip(model.get_weights(), entry.get_weights()):
        np.testing.assert_array_equal(mine, theirs)
    record = json.loads((run_dir / "started_from.json").read_text())
    assert record["start"] == "entry" and record["weights_sha256"] == zoo.info(entry_dir)["files"][
        "model.weights.h5"]["sha256"]
    assert record["entry_metadata"] == {"training": training}  # the run's counts go on from the entry's
    fit_resumable(model, x, run_dir, iterations=2, batch_size=4, iterations_per_epoch=2, verbose=0, grid_size=4)
    trained = model.get_weights()

    again = _tiny_cf_model(seed=7)
    assert start_from_entry(again, run_dir, entry_dir) == "backup"  # the folder wins over the entry
    assert "resuming" in capsys.readouterr().out
    fit_resumable(again, x, run_dir, iterations=2, batch_size=4, iterations_per_epoch=2, verbose=0, grid_size=4)
    for mine, theirs in zip(again.get_weights(), trained):
        np.testing.assert_array_equal(mine, theirs)

    penalised = ShortRunEBM.from_config({**_tiny_cf_model(seed=7).get_config(), "gradient_penalty": 0.1})
    assert start_from_entry(penalised, tmp_path / "runs" / "penalised", entry_dir) == "entry"  # a training setting
    assert "another chain" not in capsys.readouterr().out
    longer = ShortRunEBM.with_coarse_to_fine(image_size=8, channels=1, filters=2, resolutions=(4, 8), steps=(5, 2),
                                             anneal_steps=1, seed=7)
    assert start_from_entry(longer, tmp_path / "runs" / "longer", entry_dir) == "entry"  # the chain is a setting
    assert "with another chain than the entry's" in capsys.readouterr().out
    for mine, theirs in zip(longer.get_weights(), entry.get_weights()):
        np.testing.assert_array_equal(mine, theirs)
    other = tiny_ebm(steps=2, filters=2, seed=7)
    assert start_from_entry(other, tmp_path / "runs" / "other", entry_dir) == "scratch"
    assert "another architecture" in capsys.readouterr().out

    def widen(committed, model):
        model.energy.widen_from(committed.energy, seed=0)

    wider = ShortRunEBM.with_coarse_to_fine(image_size=8, channels=1, filters=(4, 2), resolutions=(4, 8), steps=(2, 2),
                                            anneal_steps=1, seed=7)
    assert start_from_entry(wider, tmp_path / "runs" / "wider", entry_dir, adapt=widen) == "entry"
    assert "adapted to this architecture" in capsys.readouterr().out
    np.testing.assert_allclose(wider.energy(x), entry.energy(x), **F32)
    assert start_from_entry(other, tmp_path / "runs" / "unadaptable", entry_dir, adapt=widen) == "scratch"
    assert "could not be adapted (Cannot widen" in capsys.readouterr().out


def test_widened_energy_computes_the_same_energy_and_its_copies_can_part():
    """Net2WiderNet: every unit copied, the next layer's weight split over the copies plus a zero-sum
    perturbation. Equal in exact arithmetic; float32 sums in another order, a few ulps of O(10) energies."""
    narrow = EnergyConvNet(image_size=16, channels=3, filters=2, name="narrow")
    wide = EnergyConvNet(image_size=16, channels=3, filters=6, name="wide")
    x = np.random.RandomState(0).uniform(-1, 1, (5, 16, 16, 3)).astype("float32")
    narrow(x), wide(x)
    wide.widen_from(narrow, seed=0)
    np.testing.assert_allclose(wide(x), narrow(x), **F32)
    for index, (w, n) in enumerate(zip(wide.convs, narrow.convs)):
        kernel, source = w.get_weights()[0], n.get_weights()[0]
        if index < len(wide.convs) - 1:  # the copies' incoming weights and biases: identical
            for weights in w.get_weights():
                np.testing.assert_array_equal(*np.split(weights, 3, axis=-1)[:2])
            kernel = kernel[..., : source.shape[-1]]
        if 0 < index:  # the copies' outgoing weights: split three ways, perturbed, summing to the source's
            parts = np.split(kernel, 3, axis=2)
            np.testing.assert_allclose(sum(parts), source, **F32)
            assert not np.allclose(parts[0], parts[1])  # so the copies' gradients differ

    multiscale = MultiscaleEnergy.with_convnets((8, 16), channels=3, filters=(4, 6))
    source = MultiscaleEnergy.with_convnets((8, 16), channels=3, filters=2)
    multiscale(x), source(x), multiscale(x[:, ::2, ::2]), source(x[:, ::2, ::2])
    multiscale.widen_from(source, seed=1)
    for images in (x, x[:, ::2, ::2]):
        np.testing.assert_allclose(multiscale(images), source(images), **F32)
    with pytest.raises(ValueError, match="filters must be a multiple"):
        EnergyConvNet(image_size=16, channels=3, filters=5).widen_from(narrow)
    with pytest.raises(ValueError, match="Cannot widen"):
        multiscale.widen_from(MultiscaleEnergy.with_convnets((16,), channels=3, filters=2))
    with pytest.raises(ValueError, match="one per resolution"):
        MultiscaleEnergy.with_convnets((8, 16), filters=(4, 6, 8))
