import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def run_python(code, backend="tensorflow", timeout=600, env=None):
    """Runs ``code`` in a fresh interpreter with ``KERAS_BACKEND=backend``; returns stdout (raises on failure)."""
    environment = dict(os.environ, KERAS_BACKEND=backend, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
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
