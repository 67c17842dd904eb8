"""What machine a number was measured on (for benchmark tables and model cards), and benchmark workers."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULT_PREFIX = "BENCH_RESULT "


def run_worker_process(script, arguments, name, backend=None, env=None):
    """Runs ``script arguments`` in a fresh interpreter (``KERAS_BACKEND=backend`` if given, plus ``env``) and
    returns the JSON dict it printed after ``RESULT_PREFIX``, or a one-line error naming ``name``."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **(env or {}))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    if backend:
        env["KERAS_BACKEND"] = backend
    done = subprocess.run([sys.executable, str(script), *arguments], capture_output=True, text=True, env=env,
                          cwd=ROOT)
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
    return f"{name} worker failed (exit {done.returncode}): {tail}"
