"""Regenerates the golden sample file that tests/test_zoo.py compares mnist_ebm against.

    python tools/make_golden.py    # after re-exporting zoo/mnist_ebm
"""

from pathlib import Path

import numpy as np

from keras_shortrun import zoo

GOLDEN = Path(__file__).resolve().parents[1] / "tests" / "golden" / "mnist_ebm_sample_seed0_k10.npy"

if __name__ == "__main__":
    np.save(GOLDEN, zoo.load("mnist_ebm").sample(2, seed=0, steps=10))
    print(f"wrote {GOLDEN}")
