"""Regenerates the golden files that tests/test_zoo.py compares the zoo entries against.

    python tools/make_golden.py    # after re-exporting an entry
"""

from pathlib import Path

import numpy as np

from keras_shortrun import zoo

GOLDEN = Path(__file__).resolve().parents[1] / "tests" / "golden"


def golden_outputs():
    """{file name: array}: seeded outputs of each entry (mnist_ebm: 10 chain steps; LVMs: an inferred image;
    classifiers: 8-chain probabilities of their own samples)."""
    outputs = {"mnist_ebm_sample_seed0_k10.npy": zoo.load("mnist_ebm").sample(2, seed=0, steps=10)}
    for name in ("mnist_lvm", "celeba_lvm"):
        model = zoo.load(name)
        images = model.synthesize(2, seed=0)
        outputs[f"{name}_synthesize_seed0.npy"] = images
        outputs[f"{name}_reconstruct_seed0.npy"] = model.reconstruct(images, seed=0)[0]
    for name in ("mnist_classifier", "fashion_mnist_classifier"):
        model = zoo.load(name)
        outputs[f"{name}_proba_seed0.npy"] = model.predict_proba(model.synthesize(4, seed=0), seed=0)
    return outputs


if __name__ == "__main__":
    for filename, array in golden_outputs().items():
        np.save(GOLDEN / filename, array)
        print(f"wrote {GOLDEN / filename}")
