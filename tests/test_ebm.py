"""Behaviour of ShortRunEBM: seeds, trajectories, saving, training, backends, input checks, reconstruction."""

import itertools
import json
import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from builders import tiny_ebm
from conftest import ROOT
from conftest import run_python

from keras_shortrun import LangevinChain
from keras_shortrun import ShortRunEBM
from keras_shortrun.models import EnergyConvNet
from keras_shortrun.models import EnergyMLP
from keras_shortrun.models import paper_chain
from keras_shortrun.seeds import stream
from keras_shortrun.seeds import stream_id


def smooth_images(n, seed=0):
    """Low-frequency patterns in [-1, 1], shape (n, 8, 8, 1)."""
    rng = np.random.RandomState(seed)
    yy, xx = np.meshgrid(np.linspace(-1, 1, 8), np.linspace(-1, 1, 8), indexing="ij")
    images = [np.sin(2 * xx + p) * np.cos(q * yy) for p, q in rng.uniform(0, 3, (n, 2))]
    return np.stack(images)[..., None].astype("float32")


# 6. Seeds and trajectories -------------------------------------------------------------------------------
def test_sample_seed_is_reproducible_and_seeds_differ():
    model = tiny_ebm(steps=5)
    first = model.sample(6, seed=1)
    assert first.shape == (6, 8, 8, 1) and np.all(np.isfinite(first))
    np.testing.assert_array_equal(first, model.sample(6, seed=1))  # bit-identical
    # Different seeds (and unseeded calls) give different samples everywhere: with continuous noise the
    # chance of any coordinate coinciding is nil, so require all of them to differ.
    assert np.all(first != model.sample(6, seed=2))
    assert np.all(model.sample(6) != model.sample(6))
    # Fresh instance with the same weights: the seed alone fixes the result (no hidden state).
    clone = tiny_ebm(steps=5, seed=123)
    clone.set_weights(model.get_weights())
    np.testing.assert_array_equal(first, clone.sample(6, seed=1))


def test_public_calls_with_different_seeds_share_no_draw(monkeypatch):
    """Every draw of a seeded call comes from a named stream of its seed (``seeds.stream``): with ``seed + k``
    offsets, ``interpolate(seed=5)``'s second endpoint was ``interpolate(seed=6)``'s first."""
    model = tiny_ebm(steps=2)
    drawn = []
    for method in ("initial_state", "draw_noise", "generate"):
        original = getattr(ShortRunEBM, method)
        monkeypatch.setattr(ShortRunEBM, method, lambda self, *a, _f=original, **k: drawn.append(k.get("seed"))
                            or _f(self, *a, **k))
    calls = {}
    for seed in (5, 6):
        for name, call in [("sample", lambda s: model.sample(2, seed=s)),
                           ("interpolate", lambda s: model.interpolate(n=2, seed=s)),
                           ("reconstruct", lambda s: model.reconstruct(smooth_images(2), iterations=1, seed=s))]:
            drawn.clear()
            call(seed)
            calls[name, seed] = set(drawn) - {None}
    assert all(len(seeds) >= 2 for seeds in calls.values())  # start and noise (interpolate: both endpoints too)
    for (a, seed_a), (b, seed_b) in itertools.combinations(calls, 2):
        if seed_a != seed_b:
            assert not calls[a, seed_a] & calls[b, seed_b], (a, seed_a, b, seed_b)


def test_named_streams_are_distinct_and_checked():
    names = ["start", "noise", "endpoint_a", "endpoint_b", "posterior", "prior", "unlabelled", "row_0", "row_1"]
    derived = [stream(seed, name) for seed in range(2000) for name in names]
    assert len(set(derived)) == len(derived) and all(0 <= s < 2**32 for s in derived)
    assert stream(None, "start") is None
    ids = [stream_id(name) for name in ["chain", "step_size", "prior_0", "prior_1", "prior_2"]]
    assert len(set(ids)) == len(ids) and all(2**16 <= i < 2**31 for i in ids)  # far from step indices
    with pytest.raises(ValueError, match="non-empty name"):
        stream(1, "")
    with pytest.raises(ValueError, match="seed must be None or an integer"):
        stream(-1, "start")


def test_trajectory_shapes_first_and_last_states():
    model = tiny_ebm(steps=5)
    z = model.initial_state(3, seed=4)
    assert z.min() >= -1 and z.max() <= 1
    noise = model.draw_noise(3, seed=5)
    assert noise.shape == (3, 5, 8, 8, 1)
    out, path = model.generate(z, noise=noise, trajectory_every=2)
    # Segments (0,2), (2,4), (4,5): T = 1 + ceil(K / every) = 4 states.
    assert path.shape == (3, 4, 8, 8, 1)
    np.testing.assert_array_equal(path[:, 0], z)  # x0 first
    np.testing.assert_array_equal(path[:, -1], out)  # x_K last
    # The intermediate state after 2 steps equals a 2-step chain with the same first 2 noise draws
    # (float32, same ops in another compiled graph: 1e-6).
    np.testing.assert_allclose(path[:, 1], model.generate(z, noise=noise[:, :2], steps=2), rtol=0, atol=1e-6)
    np.testing.assert_allclose(out, model.generate(z, noise=noise), rtol=0, atol=1e-6)

    # sample: the trajectory does not change the noise, so its final state is the plain sample.
    final, path = model.sample(3, seed=7, trajectory_every=1)
    assert path.shape == (3, 6, 8, 8, 1)
    np.testing.assert_array_equal(path[:, -1], final)
    np.testing.assert_allclose(final, model.sample(3, seed=7), rtol=0, atol=1e-6)
    assert path[:, 0].min() >= -1 and path[:, 0].max() <= 1  # starts from Uniform(-1, 1)
    assert np.abs(path[:, 0] - final).max() > 0.01  # and the chain moved


# 7. Saving ---------------------------------------------------------------------------------------------------
def test_keras_file_round_trip_keeps_energy_samples_and_learned_step_size(tmp_path):
    model = tiny_ebm(steps=4, chain={"step_size": 0.5, "noise_scale": 0.01, "learn_step_size": True})
    model.chain.raw_step_size.assign([math.log(0.8)])  # a "learned", non-default step size
    x = smooth_images(4)
    path = tmp_path / "ebm.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)

    assert isinstance(loaded, ShortRunEBM) and isinstance(loaded.chain, LangevinChain)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded.chain.step_size), [0.8], rtol=1e-6)
    assert loaded.chain.raw_step_size.trainable and loaded.chain.steps == 4 and loaded.chain.noise_scale == 0.01
    assert loaded.data_shape == (8, 8, 1)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded(x)), keras.ops.convert_to_numpy(model(x)))
    np.testing.assert_array_equal(loaded.sample(5, seed=3), model.sample(5, seed=3))
    # The step size matters for that output, so the equality above does test it was restored.
    model.chain.raw_step_size.assign([math.log(0.5)])
    assert np.abs(loaded.sample(5, seed=3) - model.sample(5, seed=3)).max() > 1e-3


# 8. Training on a toy mixture ---------------------------------------------------------------------------------
def test_toy_mixture_samples_land_on_the_modes():
    keras.utils.set_random_seed(0)
    num_modes, radius, std = 8, 0.6, 0.04
    angles = 2 * np.pi * np.arange(num_modes) / num_modes
    modes = np.stack([radius * np.cos(angles), radius * np.sin(angles)], 1).astype("float32")
    rng = np.random.RandomState(0)
    n = 256 * 600
    data = modes[rng.randint(num_modes, size=n)] + std * rng.randn(n, 2).astype("float32")
    # The paper-1 chain (x += -dE/dx + 0.01 eps), K=20, from Uniform(-1, 1)^2.
    chain = LangevinChain(steps=20, step_size=2.0**0.5, noise_scale=0.01, seed=0)
    model = ShortRunEBM(EnergyMLP(dim=2, hidden=(64, 64)), data_shape=(2,), chain=chain, data_noise=0.0, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-3, beta_1=0.5))
    before = [w.copy() for w in model.get_weights()]
    history = model.fit(data, batch_size=256, epochs=1, verbose=0).history
    changed = [np.abs(a - b).max() for a, b in zip(model.get_weights(), before)]
    # Every energy weight moved except the output bias, whose gradient is exactly 0: it cancels in the loss
    # E(data) - E(samples). (The chain's step size is not trainable here and stays put.)
    names = [w.path for w in model.weights]
    assert [c for c, name in zip(changed, names) if name.endswith("dense_2/bias")] == [0]
    assert min(c for c, name in zip(changed, names) if "/dense_" in name and not name.endswith("dense_2/bias")) > 0
    # loss = E(data) - E(samples) batch by batch, so the epoch means satisfy it too (float32 averaging: 1e-4).
    assert abs(history["loss"][0] - (history["energy_data"][0] - history["energy_sample"][0])) < 1e-4

    samples = model.sample(2000, seed=1)
    distance = np.linalg.norm(samples[:, None] - modes[None], axis=-1)
    nearest, which = distance.min(1), distance.argmin(1)
    share = np.array([np.mean((which == m) & (nearest < 3 * std)) for m in range(num_modes)])
    # Reference points: data itself has mean nearest-mode distance std*sqrt(pi/2) = 0.05 and 99% within
    # 3 std; Uniform(-1,1)^2 (the chain's start) has 0.32 and 9%. Trained, measured over 9 combinations of
    # data/model/sampling seeds: 0.045-0.070 and 90-96%, each mode holding 3.7-16% of the samples (fair
    # share 12.5%). Bounds: distance < 0.1 and > 70% near a mode (far from the start's 0.32 and 9%), and
    # every one of the 8 modes covered by > 2% of the samples (a missed mode holds ~0).
    assert nearest.mean() < 0.1, nearest.mean()
    assert np.mean(nearest < 3 * std) > 0.7
    assert share.min() > 0.02, share


# 9. Training on JAX ---------------------------------------------------------------------------------------------
def test_fit_on_jax_backend_updates_weights():
    code = """
import json
import numpy as np
import keras
from keras_shortrun import ShortRunEBM
model = ShortRunEBM.with_convnet(image_size=8, channels=1, filters=4, steps=5, seed=0)
model.compile(optimizer=keras.optimizers.Adam(1e-3))
x = np.random.RandomState(0).uniform(-1, 1, (32, 8, 8, 1)).astype("float32")
before = [w.copy() for w in model.get_weights()]
history = model.fit(x, batch_size=8, epochs=2, verbose=0).history
after = model.get_weights()
print(json.dumps({
    "backend": keras.backend.backend(),
    "history": {k: [float(v) for v in vs] for k, vs in history.items()},
    "changed": [float(np.abs(a - b).max()) for a, b in zip(after, before)],
    "names": [w.path for w in model.weights],
    "same_seed": bool(np.array_equal(model.sample(2, seed=1), model.sample(2, seed=1))),
}))
"""
    result = json.loads(run_python(code, backend="jax").strip().splitlines()[-1])
    assert result["backend"] == "jax"
    history = result["history"]
    assert set(history) == {"loss", "energy_data", "energy_sample"}
    assert all(len(v) == 2 and all(math.isfinite(x) for x in v) for v in history.values())
    for epoch in range(2):  # loss = E(data) - E(sample) holds for the epoch means (float32 averaging: 1e-4)
        assert abs(history["loss"][epoch] - (history["energy_data"][epoch] - history["energy_sample"][epoch])) < 1e-4
    # Every energy weight moved (8 Adam steps of 1e-3 move a weight by ~1e-3) except the output bias, whose
    # gradient is exactly 0 (it cancels in E(data) - E(sample)); the chain's fixed step size stays put too.
    changed = dict(zip(result["names"], result["changed"]))
    assert changed.pop("short_run_ebm/energy/energy_head/bias") == 0 and changed.pop("chain/raw_step_size") == 0
    moved = [c for name, c in changed.items() if name.startswith("short_run_ebm/energy/")]
    assert len(moved) == 5 and min(moved) > 1e-4, changed
    assert result["same_seed"]


# 10. Unsupported backend -------------------------------------------------------------------------------------------
def test_torch_backend_raises_a_clear_import_error():
    code = """
try:
    import keras_shortrun
except ImportError as error:
    print("ImportError:", error)
else:
    print("imported")
"""
    out = run_python(code, backend="torch")
    assert out.startswith("ImportError:"), out
    assert "tensorflow" in out and "jax" in out and "torch" in out


def test_backend_chosen_in_keras_json_is_checked_too(tmp_path):
    # Keras configured through $KERAS_HOME/keras.json (no KERAS_BACKEND): the backend package's check.
    (tmp_path / "keras.json").write_text(json.dumps({"backend": "numpy"}))
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    env.update(KERAS_HOME=str(tmp_path), PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run([sys.executable, "-c", "import keras_shortrun"], capture_output=True, text=True,
                            env=env, cwd=ROOT, timeout=300)
    assert result.returncode != 0
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("ImportError") and "'numpy'" in message
    assert "tensorflow" in message and "jax" in message


# 11. Bad inputs -------------------------------------------------------------------------------------------------------
def test_bad_inputs_raise_value_errors_naming_the_problem():
    model = tiny_ebm(steps=2)
    good = smooth_images(2)
    with pytest.raises(ValueError, match=r"\[-1.0, 1.0\].*0\.\.255"):
        model.reconstruct(np.full((2, 8, 8, 1), 200, np.uint8), iterations=1)
    nan = good.copy()
    nan[0, 3, 3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        model.reconstruct(nan, iterations=1)
    with pytest.raises(ValueError, match=r"shape \(B, \*\(8, 8, 1\)\).*\(2, 9, 9, 1\)"):
        model.reconstruct(np.zeros((2, 9, 9, 1), "float32"), iterations=1)
    with pytest.raises(ValueError, match="batched"):
        model.reconstruct(good[0], iterations=1)
    with pytest.raises(ValueError, match="numeric"):
        model.reconstruct(np.full((1, 8, 8, 1), "a"), iterations=1)
    with pytest.raises(ValueError, match="iterations must be a positive integer"):
        model.reconstruct(good, iterations=0)
    with pytest.raises(ValueError, match=r"noise must have shape \(2, 2, 8, 8, 1\), got \(2, 3, 8, 8, 1\)"):
        model.generate(good, noise=np.zeros((2, 3, 8, 8, 1), "float32"))
    with pytest.raises(ValueError, match="n must be a positive integer"):
        model.sample(0)
    with pytest.raises(ValueError, match="EnergyConvNet expects images of shape"):
        ShortRunEBM(EnergyConvNet(image_size=8, channels=1, filters=4), (8, 8, 3))
    with pytest.raises(ValueError, match="one state group"):
        ShortRunEBM(EnergyMLP(dim=2, hidden=(4,)), (2,), chain=LangevinChain(step_size=[0.1, 0.2]))


# 12. Reconstruction ---------------------------------------------------------------------------------------------------
def test_reconstruct_reduces_the_error_of_the_initial_chain_output():
    model = tiny_ebm(steps=5)
    x = smooth_images(4, seed=1)
    # reconstruct(seed=s) starts from initial_state(seed=s) with noise draw_noise(seed=s+1): the same start.
    start = model.generate(model.initial_state(4, seed=3), noise=model.draw_noise(4, seed=4))
    mse_start = np.mean((start - x).reshape(4, -1) ** 2, axis=1)
    x_hat, mse = model.reconstruct(x, iterations=20, learning_rate=0.1, seed=3)
    assert x_hat.shape == x.shape
    np.testing.assert_allclose(mse, np.mean((x_hat - x).reshape(4, -1) ** 2, axis=1), rtol=1e-6)
    # Measured: 0.45-0.56 at the start, ~0.01-0.03 after 20 Adam steps; require a 5x reduction per image.
    assert np.all(mse < 0.2 * mse_start), (mse, mse_start)


def test_reconstruct_and_interpolate_run_on_jax():
    out = run_python(
        """
import numpy as np
from keras_shortrun.models import ShortRunEBM
model = ShortRunEBM.with_convnet(image_size=8, channels=1, filters=4, steps=4, seed=0)
x = np.random.default_rng(0).uniform(-1, 1, (3, 8, 8, 1)).astype("float32")
_, before = model.reconstruct(x, iterations=1, seed=0)
_, after = model.reconstruct(x, iterations=15, seed=0)
strip = model.interpolate(n=4, seed=0)
print(before.mean(), after.mean(), strip.shape)
""",
        backend="jax",
    )
    before, after, *shape = out.split()
    assert float(after) < 0.5 * float(before)  # 15 Adam steps through the chain at least halve the error
    assert "".join(shape) == "(1,4,8,8,1)"


TRAIN_STEP_PARITY = """
import sys
import keras
import numpy as np
from keras import ops
from keras_shortrun.models import EnergyMLP, ShortRunEBM, paper_chain


class FixedSampleEBM(ShortRunEBM):
    # The contrast set is a deterministic function of the batch, so both backends see the same loss.
    def prepare_batch(self, x):
        return x, ops.flip(x, axis=0) * 0.5


data = np.load(sys.argv[1])
model = FixedSampleEBM(EnergyMLP(dim=2, hidden=(8,)), (2,), chain=paper_chain(2, seed=0))
model.set_weights([data[f"w{i}"] for i in range(len(model.get_weights()))])
model.compile(optimizer=keras.optimizers.SGD(0.1))
history = model.fit(data["x"], batch_size=4, epochs=1, shuffle=False, verbose=0)
np.savez(sys.argv[2], loss=history.history["loss"][-1],
         **{f"w{i}": w for i, w in enumerate(model.get_weights())})
"""


def test_train_step_is_the_same_on_tensorflow_and_jax(tmp_path):
    """The per-backend train_step glue gives the same update (fixed contrast set, SGD, 2 batches)."""
    rng = np.random.default_rng(0)
    model = ShortRunEBM(EnergyMLP(dim=2, hidden=(8,)), (2,), chain=paper_chain(2, seed=0))
    arrays = {f"w{i}": w for i, w in enumerate(model.get_weights())}
    np.savez(tmp_path / "in.npz", x=rng.normal(size=(8, 2)).astype("float32"), **arrays)
    script = tmp_path / "step.py"
    script.write_text(TRAIN_STEP_PARITY)
    results = {}
    for name in ("tensorflow", "jax"):
        out = tmp_path / f"{name}.npz"
        run_python(f"import sys; sys.argv = ['x', {str(tmp_path / 'in.npz')!r}, {str(out)!r}]; "
                   f"exec(open({str(script)!r}).read())", backend=name)
        results[name] = np.load(out)
    tf_result, jax_result = results["tensorflow"], results["jax"]
    np.testing.assert_allclose(tf_result["loss"], jax_result["loss"], atol=1e-6)
    moved = 0.0
    for key in arrays:
        np.testing.assert_allclose(tf_result[key], jax_result[key], atol=1e-5)
        moved = max(moved, np.abs(tf_result[key] - arrays[key]).max())
    assert moved > 1e-3  # the step really changed the weights
