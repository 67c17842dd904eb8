import contextlib
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from keras_shortrun import backend
from keras_shortrun.export.tensorflow import SENSITIVITY_FACTOR
from keras_shortrun.export.tensorflow import TOLERANCE

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
# The golden outputs were recorded on the default TensorFlow path. JAX draws other numbers for a seed, and so
# do TensorFlow's random kernels inside XLA (KERAS_SHORTRUN_TF_XLA=1), even with the algorithm pinned: a seeded
# chain follows another (equally valid) noise path there.
OTHER_RANDOM_STREAM = backend.BACKEND != "tensorflow" or backend.compiles_with_xla()
# Export traces the model with TensorFlow: on another Keras backend it refuses, which
# test_safety.py's test_export_needs_the_tensorflow_backend checks; the tests that export run on TensorFlow only.
EXPORTS = pytest.mark.skipif(backend.BACKEND != "tensorflow", reason="export traces the model with TensorFlow")


def assert_matches_golden(actual, name, atol, reduce=None):
    """``actual`` against ``tests/golden/<name>`` (passed through ``reduce`` when ``actual`` is a reduction of what
    the file holds) within ``atol``; under TensorFlow's XLA (see above), the shape only, then the test is reported
    as skipped. Call it last, after the test's other checks."""
    golden = np.load(ROOT / "tests" / "golden" / name)
    golden = golden if reduce is None else reduce(golden)
    assert np.shape(actual) == golden.shape
    if OTHER_RANDOM_STREAM:
        pytest.skip("golden outputs hold for TensorFlow's CPU random stream, not JAX's or XLA's")
    print(f"{name}: max |actual - golden| = {np.max(np.abs(actual - golden)):.2g}, tolerance {atol:.2g}")  # pytest -s
    np.testing.assert_allclose(actual, golden, atol=atol)


def rounding_tolerance(model, run, relative=1e-6, draws=4, seed=0):
    """The tolerance of a golden ``run()`` (numpy out) of ``model`` on any CPU: ``TOLERANCE`` (1e-4, rounding
    that stays rounding-sized) or ``SENSITIVITY_FACTOR`` times the largest move of ``run()`` when every weight
    moves by a relative ``U(-1e-6, 1e-6)``, whichever is larger. Another CPU's kernels round every layer's
    output differently by a few float32 ulps relative to that output, which is what such a weight change does
    to a layer; a chain that amplifies rounding amplifies both alike (the rule of ``parity_report``). The
    weights are restored after."""
    base = run()
    weights = model.get_weights()
    rng = np.random.default_rng(seed)
    moves = []
    try:
        for _ in range(draws):
            model.set_weights([(w * (1 + relative * rng.uniform(-1, 1, w.shape))).astype(w.dtype) for w in weights])
            moves.append(float(np.max(np.abs(run() - base))))
    finally:
        model.set_weights(weights)
    return max(TOLERANCE, SENSITIVITY_FACTOR * max(moves))


def float64_context():
    """A context for float64 arrays on either backend: JAX keeps float64 only in its 64-bit mode (off by default,
    when it silently computes in float32)."""
    if backend.BACKEND == "jax":
        import jax

        return jax.enable_x64(True)
    return contextlib.nullcontext()


@pytest.fixture
def float64():
    """Float64 layers and arrays for finite differences (the default policy is cached on first use: reset both)."""
    policy, floatx = keras.config.dtype_policy(), keras.config.floatx()
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    with float64_context():
        yield
    keras.config.set_floatx(floatx)
    keras.config.set_dtype_policy(policy)


def run_python(code, backend="tensorflow", timeout=600, env=None):
    """Runs ``code`` in a fresh interpreter with ``KERAS_BACKEND=backend`` (it imports ``keras_shortrun`` and the
    tests' and tools' modules); returns stdout (raises on failure)."""
    path = os.pathsep.join([str(ROOT), str(ROOT / "tests"), str(ROOT / "tools")])
    environment = dict(os.environ, KERAS_BACKEND=backend, PYTHONPATH=path, TF_CPP_MIN_LOG_LEVEL="2")
    environment.update(env or {})
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=environment, cwd=ROOT
    )
    if result.returncode != 0:
        raise AssertionError(f"subprocess failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result.stdout


@pytest.fixture
def shared_data():
    if not (SHARED_DATA / "mnist.npz").is_file():
        pytest.skip(f"real datasets not available at {SHARED_DATA}")
    return SHARED_DATA


def _half_written(root):
    """Staging files and folders that an interrupted atomic write would leave in the checkout."""
    skip = {".git", ".venv", "runs", "__pycache__", ".pytest_cache", ".ruff_cache"}
    found = []
    for path in root.iterdir():
        if path.name in skip:
            continue
        if ".partial" in path.name or path.name.endswith(".old"):
            found.append(path)
        if path.is_dir():
            found += _half_written(path)
    return found


@pytest.fixture(scope="session", autouse=True)
def no_half_written_files_left_behind():
    """Fails the session if any test left a staging file or folder (``*.partial*``, ``*.old``) in the
    checkout: every writer in the library writes to a temporary name and renames it into place."""
    before = set(_half_written(ROOT))
    yield
    left = sorted(set(_half_written(ROOT)) - before)
    assert not left, f"half-written files left behind: {left}"
