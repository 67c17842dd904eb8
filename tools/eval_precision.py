"""What low-precision energy evaluation does to a short-run EBM's samples.

    python tools/eval_precision.py mnist_ebm [--samples 500] [--dtypes float32,bfloat16,float16]

``ShortRunEBM.with_compute_dtype`` computes ``E(x)`` and ``dE/dx`` in bfloat16 or float16 (float32 weights,
state and update). For every dtype this draws ``--samples`` chains from the same starts and the same noise
(seed 0) and reports: pixel mean and standard deviation, the mean and largest per-pixel distance to the
float32 samples (the chains are chaotic, so a rounding difference grows along the K steps), FD and KID x 1e3
against the held-out split on the dataset's feature network (as ``tools/eval_zoo.py``), the FD between the
low-precision and the float32 samples, and the wall time on this machine.
"""

import argparse
import os
import time
from pathlib import Path

import keras
import numpy as np

from keras_shortrun import data
from keras_shortrun import metrics
from keras_shortrun import zoo
from keras_shortrun.models.ebm import COMPUTE_DTYPES
from keras_shortrun.training import cpu_model
from keras_shortrun.zoo.registry import read_metadata

ROOT = Path(__file__).resolve().parents[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("entry", help="a ShortRunEBM zoo entry or directory")
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--dtypes", default=",".join(COMPUTE_DTYPES))
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--data", help="the dataset's npz (default: ../shared/data)")
    args = parser.parse_args()
    dtypes = [d.strip() for d in args.dtypes.split(",")]
    model = zoo.load(args.entry)
    dataset = read_metadata(args.entry)["dataset"]["name"]
    heldout, _ = data.load(dataset, "test", path=args.data)
    network = metrics.feature_network(dataset)
    real = metrics.image_features(network, heldout)
    scale = metrics.reference_scale(real)
    z = model.initial_state(args.samples, seed=0)
    noise = model.draw_noise(args.samples, seed=1)

    print(f"\n## {args.entry}: energy computed in low precision, {args.samples} chains (K={model.chain.steps}), "
          f"same starts and noise\n")
    print("| dtype | pixel mean | pixel std | mean / max abs diff to float32 | FD | KID x 1e3 | FD to float32 "
          "samples | wall s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    reference_features = reference_samples = None
    for dtype in ["float32"] + [d for d in dtypes if d != "float32"]:
        variant = model.with_compute_dtype(dtype)
        start = time.perf_counter()
        samples = variant.generate(z, noise=noise, batch_size=args.batch_size)
        wall = time.perf_counter() - start
        fake = metrics.image_features(network, np.clip(samples, -1, 1))
        kid, _ = metrics.kernel_distance(real / scale, fake / scale)
        if reference_features is None:  # the float32 run comes first
            reference_features, reference_samples = fake, samples
        diff = np.abs(samples - reference_samples)
        print(f"| {dtype} | {samples.mean():.4f} | {samples.std():.4f} | {diff.mean():.4f} / {diff.max():.3f} | "
              f"{metrics.frechet_distance(real, fake):.2f} | {1e3 * kid:.2f} | "
              f"{metrics.frechet_distance(reference_features, fake):.2f} | {wall:.1f} |", flush=True)
    print(f"\nFeature network: {network.entry_name}; held-out: {len(heldout)} {dataset} test images. "
          f"Machine: {cpu_model()}, {os.cpu_count()} cores, Keras {keras.__version__} on "
          f"{keras.backend.backend()}. Wall time includes compilation.")


if __name__ == "__main__":
    main()
