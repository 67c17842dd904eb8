"""Compiled chains are traced once per set of shapes: a second call with the same shapes reuses the trace,
on TensorFlow and on JAX (``backend.trace_count`` counts traces of everything ``compile_method`` compiled)."""


import keras
import numpy as np
import pytest
from builders import tiny_ebm
from conftest import run_python

SCRIPT = """
import numpy as np
from keras_shortrun import backend
from keras_shortrun.models import (GenerativeClassifier, ConvTransposeGenerator, MultiLayerLVM, ShortRunEBM,
                                   TopDownGenerator, mlp_head, posterior_chain, thesis_chain)

ebm = ShortRunEBM.with_convnet(image_size=8, channels=1, filters=4, steps=3, seed=0)
lvm = MultiLayerLVM(TopDownGenerator([2, 3], image_size=8, channels=1, width=4), chain=posterior_chain(2, 3), seed=0)
classifier = GenerativeClassifier(ConvTransposeGenerator(latent_dim=4, channels=1, widths=(4, 4, 4)),
                                  mlp_head(4, 3, hidden=(5,)), 3, chain=thesis_chain(steps=2), prediction_chains=2,
                                  seed=0)
x8 = np.random.default_rng(0).uniform(-1, 1, (4, 8, 8, 1)).astype("float32")
x28 = np.random.default_rng(1).uniform(-1, 1, (4, 28, 28, 1)).astype("float32")
uses = {
    "ebm.sample": lambda seed: ebm.sample(4, seed=seed),
    "ebm.sample unseeded": lambda seed: ebm.sample(4),
    "ebm.generate with noise": lambda seed: ebm.generate(x8, noise=ebm.draw_noise(4, seed=seed)),
    "ebm.sample trajectory": lambda seed: ebm.sample(4, seed=seed, trajectory_every=1),
    "lvm.reconstruct": lambda seed: lvm.reconstruct(x8, seed=seed),
    "lvm.synthesize": lambda seed: lvm.synthesize(4, seed=seed),
    "classifier.predict_proba": lambda seed: classifier.predict_proba(x28, seed=seed),
}
for name, use in uses.items():
    use(0)
    before = backend.trace_count()
    use(1)
    use(2)
    print(name, before > 0, backend.trace_count() - before)
before = backend.trace_count()
ebm.sample(5, seed=0)
print("ebm.sample new batch size", True, backend.trace_count() - before)
"""


def _retraces(backend):
    lines = run_python(SCRIPT, backend=backend).strip().splitlines()
    return {line.rsplit(" ", 2)[0]: (line.rsplit(" ", 2)[1], int(line.rsplit(" ", 2)[2])) for line in lines}


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_same_shapes_never_trace_twice(backend):
    result = _retraces(backend)
    assert result.pop("ebm.sample new batch size")[1] >= 1  # the counter sees a trace where there must be one
    assert len(result) == 7 and all(traced == "True" for traced, _ in result.values()), result
    assert {name: again for name, (_, again) in result.items() if again} == {}


def test_chain_step_flops_counts_forward_and_input_gradient():
    import bench_chain

    layers = [{"kernel": 3, "stride": 1, "pad": (1, 1), "filters": 8}, {"kernel": 4, "stride": 2, "pad": (1, 1),
                                                                        "filters": 16}]
    macs = 8 * 8 * 9 * 3 * 8 + 4 * 4 * 16 * 8 * 16  # 8x8 maps of 8 channels from 3, then 4x4 maps of 16 from 8
    assert bench_chain.chain_step_flops(layers, image_size=8, channels=3, batch=5) == 4 * macs * 5


def test_bench_chain_prints_a_row_per_backend():
    out = run_python(
        "import sys\n"
        "sys.argv = ['bench_chain.py', '--image-size', '8', '--filters', '4', '--batch', '2', '--steps', '2',\n"
        "            '--repeats', '1', '--backends', 'tensorflow,jax', '--no-torch', '--compare-loop']\n"
        "import bench_chain\n"
        "bench_chain.main()\n",
        env={"KERAS_SHORTRUN_TF_XLA": "0"},  # the default loop forms, whatever the test run's environment
    )
    rows = [line for line in out.splitlines() if line.startswith("| 8x8x1")]
    # The default loop form of each backend (2 steps: JAX unrolls), then (a') the other form.
    assert [row.split("|")[3].strip() for row in rows] == ["tensorflow (loop op)", "jax (unrolled)"]
    for row, other in zip(rows, ("unrolled", "loop op")):
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert float(cells[7]) > 0 and cells[8] == "n/a" and float(cells[10].split()[0]) > 0 and "%" in cells[10]
        assert cells[11].endswith(other) and float(cells[12]) > 0
    assert "float32 matmul rate of this machine" in out


def test_bench_fit_prints_pipeline_and_fit_rates():
    out = run_python(
        "import sys\n"
        "sys.argv = ['bench_fit.py', '--steps', '2', '--train-steps', '2', '--filters', '4',\n"
        "            '--pipeline-batches', '5', '--backends', 'tensorflow']\n"
        "import bench_fit\n"
        "bench_fit.main()\n"
    )
    row = next(line for line in out.splitlines() if line.startswith("| tensorflow"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    pipeline, fit, numpy_fit = float(cells[1]), float(cells[2].split()[0]), float(cells[3].split()[0])
    assert pipeline > 0 and fit > 0 and numpy_fit > 0
    assert float(cells[4]) == pytest.approx(pipeline / fit, rel=0.05, abs=1)  # p/t, printed rounded
    assert float(cells[6]) > 0  # the first batch's time


def test_tensorflow_xla_on_cpu_unrolls_and_matches_the_default(tmp_path):
    """``KERAS_SHORTRUN_TF_XLA=1``: compiled methods go through XLA, "auto" unrolls, and the chain gives the
    default path's numbers (same weights and noise; differences are convolution rounding). Both paths run in
    fresh processes, so the test means the same whatever the environment of the test run."""

    keras.utils.set_random_seed(0)
    model = tiny_ebm(steps=5)
    np.savez(tmp_path / "in.npz", z=model.initial_state(3, seed=1), noise=model.draw_noise(3, seed=2),
             **{f"w{i}": w for i, w in enumerate(model.get_weights())})
    for flag, unrolled in (("1", True), ("0", False)):  # "0": the default TF path, a while loop without XLA
        run_python(f"""
import numpy as np
from keras_shortrun import backend
from keras_shortrun.models import ShortRunEBM
data = np.load({str(tmp_path / "in.npz")!r})
model = ShortRunEBM.with_convnet(image_size=8, channels=1, filters=4, steps=5, seed=0)
model.set_weights([data[f"w{{i}}"] for i in range(len(model.weights))])
assert backend.compiles_with_xla() == model.chain._unrolled(5) == {unrolled}
np.save({str(tmp_path / f"xla{flag}.npy")!r}, model.generate(data["z"], noise=data["noise"]))
""", env={"KERAS_SHORTRUN_TF_XLA": flag})
    np.testing.assert_allclose(np.load(tmp_path / "xla1.npy"), np.load(tmp_path / "xla0.npy"), rtol=0, atol=1e-5)
