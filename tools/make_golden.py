"""Regenerates the golden files that tests/test_zoo.py compares the zoo entries against.

    python tools/make_golden.py [ENTRY ...]    # after (re-)exporting entries; default: every golden file
"""

import sys
from pathlib import Path

import numpy as np

from keras_shortrun import zoo

GOLDEN = Path(__file__).resolve().parents[1] / "tests" / "golden"


EBM_ENTRIES = ("mnist_ebm", "fashion_mnist_ebm", "cifar10_ebm", "celeba_ebm")
FEATURE_ENTRIES = ("celeba_features", "cifar10_features")
# Coarse-to-fine chains: their first 10 steps stay at the coarsest resolution, so the whole chain is pinned too.
FULL_CHAIN_ENTRIES = tuple(name for name in EBM_ENTRIES if zoo.info(name)["chain"].get("form") == "coarse_to_fine")
LVM_ENTRIES = ("mnist_lvm", "celeba_lvm")
CLASSIFIER_ENTRIES = ("mnist_classifier", "fashion_mnist_classifier")
GOLDEN_ENTRIES = EBM_ENTRIES + FEATURE_ENTRIES + LVM_ENTRIES + CLASSIFIER_ENTRIES


def probe_images(shape, n=2):
    """``n`` fixed images ``(n, *shape)`` in ``[-1, 1]`` (smooth ramps, no randomness)."""
    ramp = np.linspace(-1.0, 1.0, int(np.prod(shape)), dtype=np.float32).reshape(shape)
    return np.stack([ramp * (1 - 2 * (i % 2)) * (0.5 + 0.5 / (i + 1)) for i in range(n)])


def golden_outputs(entries=GOLDEN_ENTRIES):
    """{file name: array}: seeded outputs of each of ``entries`` (EBMs: 10 chain steps, and the whole coarse-to-fine
    chain; LVMs: an inferred image; classifiers: 8-chain probabilities of their own samples; feature networks:
    features of fixed images)."""
    def picked(names):
        return [name for name in names if name in entries]

    outputs = {f"{name}_sample_seed0_k10.npy": zoo.load(name).sample(2, seed=0, steps=10)
               for name in picked(EBM_ENTRIES)}
    outputs.update({f"{name}_sample_seed0_full.npy": zoo.load(name).sample(2, seed=0)
                    for name in picked(FULL_CHAIN_ENTRIES)})
    for name in picked(FEATURE_ENTRIES):
        model = zoo.load(name)
        outputs[f"{name}_probe.npy"] = np.asarray(model(probe_images(model.input_shape[1:])))
    for name in picked(LVM_ENTRIES):
        model = zoo.load(name)
        images = model.synthesize(2, seed=0)
        outputs[f"{name}_synthesize_seed0.npy"] = images
        outputs[f"{name}_reconstruct_seed0.npy"] = model.reconstruct(images, seed=0)[0]
    for name in picked(CLASSIFIER_ENTRIES):
        model = zoo.load(name)
        outputs[f"{name}_proba_seed0.npy"] = model.predict_proba(model.synthesize(4, seed=0), seed=0)
    return outputs


if __name__ == "__main__":
    # python tools/make_golden.py [ENTRY ...]: rewrites the golden files of the named entries (default: all).
    unknown = [name for name in sys.argv[1:] if name not in GOLDEN_ENTRIES]
    if unknown:
        sys.exit(f"make_golden.py: no golden files for {unknown}; the entries with golden files are "
                 f"{', '.join(GOLDEN_ENTRIES)}.")
    for filename, array in golden_outputs(sys.argv[1:] or GOLDEN_ENTRIES).items():
        np.save(GOLDEN / filename, array)
        print(f"wrote {GOLDEN / filename}")
