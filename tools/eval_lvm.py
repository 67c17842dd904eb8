"""Held-out evaluation of the LVM zoo entries against their VAE baselines (same generator, data, budget).

    python tools/eval_lvm.py [--entries mnist_lvm celeba_lvm] [--grid-images 16]

Prints, per entry: reconstruction MSE per pixel on the held-out split (images
in [-1, 1]; the last 1,000 images of each dataset) for short-run inference
and for the VAE's encoder mean; the learned step sizes, and the MSE of the
same LVM run with the paper's fixed s=0.05 instead; and, on the first
``--grid-images`` test images, the step-size objective (negative ELBO, nats
per image) at the learned step sizes and over a grid of shared step sizes.
"""

import argparse
import time

import numpy as np
from keras import ops

from keras_shortrun import data
from keras_shortrun import recipes
from keras_shortrun import zoo

PAPER_STEP_SIZE = 0.05
GRID = (0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15)


def evaluate(entry, grid_images, data_path=None):
    x_test, _ = data.load(recipes.load(entry)["dataset"], "test", path=data_path)
    lvm, vae = zoo.load(entry), zoo.load(f"{entry}_vae")
    start = time.time()
    _, mse_lvm = lvm.reconstruct(x_test, seed=0)
    lvm_seconds = time.time() - start
    _, mse_vae = vae.reconstruct(x_test)
    learned = ops.convert_to_numpy(lvm.chain.step_size)
    assert lvm.chain.parametrization == "log"  # the raw weight is log s
    lvm.chain.raw_step_size.assign(np.log(np.full_like(learned, PAPER_STEP_SIZE)))  # same weights, fixed s
    _, mse_paper_s = lvm.reconstruct(x_test, seed=0)
    lvm.chain.raw_step_size.assign(np.log(learned))
    print(f"\n{entry}: {len(x_test)} held-out images, pixels in [-1, 1]")
    print(f"  reconstruction MSE  short-run inference (K={lvm.chain.steps}): {mse_lvm.mean():.4f} "
          f"(std {mse_lvm.std():.4f}, {lvm_seconds:.0f} s)")
    print(f"  reconstruction MSE  VAE encoder mean:                {mse_vae.mean():.4f} (std {mse_vae.std():.4f})")
    print(f"  ratio LVM / VAE: {mse_lvm.mean() / mse_vae.mean():.3f}")
    print(f"  same LVM with the paper's fixed s={PAPER_STEP_SIZE} in every layer: {mse_paper_s.mean():.4f}")
    print(f"  learned step sizes (top to bottom): {', '.join(f'{s:.4f}' for s in learned)}")
    if grid_images:
        x = x_test[:grid_images]
        at_learned = lvm.step_size_objective(x, learned, seed=0)
        best, table = lvm.grid_search_step_size(x, GRID, seed=0)
        print(f"  step-size objective, {grid_images} images (nats/image, {lvm.entropy} log q_s):")
        print(f"    learned: {at_learned:.1f}")
        for s, value in table:
            print(f"    shared s={s:<6} {value:.1f}{'   <- grid best' if s == best else ''}")
    return float(mse_lvm.mean()), float(mse_vae.mean())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", nargs="+", default=recipes.names("lvm"))
    parser.add_argument("--grid-images", type=int, default=16)
    parser.add_argument("--data-path", default=None)
    args = parser.parse_args()
    for name in args.entries:
        evaluate(name, args.grid_images, args.data_path)
