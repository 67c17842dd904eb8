"""Cost of the exact step-size update against a training batch, measured side by side in one run.

    python tools/bench_step_size.py [--images 4] [--repeats 3]

For the two zoo recipes (and the paper's five-layer CelebA latents at 32 px),
times one ``fit`` batch of 64 (K=25 inference + generator step) and one
step-size update on ``--images`` images (``D`` exact Hessian-vector products
per chain step), on random images; prints medians and their ratio.
"""

import argparse
import statistics
import time

import keras
import numpy as np

from keras_shortrun.models import MultiLayerLVM
from keras_shortrun.models import TopDownGenerator
from keras_shortrun.training import hardware

CONFIGS = {
    "mnist_lvm": ([8, 16, 32], 28, 1, 32),
    "celeba_lvm": ([16, 32, 64], 32, 3, 64),
    "paper five-layer, 32 px": ([64, 64, 64, 96, 128], 32, 3, 64),
}


def median_seconds(fn, repeats):
    fn()  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(dims, size, channels, width, images, repeats):
    """Median seconds of one training batch of 64 and of one step-size update on ``images`` images."""
    model = MultiLayerLVM(TopDownGenerator(dims, size, channels, width), step_size_every=0, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(2e-4, beta_1=0.5))
    x = np.random.default_rng(0).uniform(-1, 1, (64, size, size, channels)).astype("float32")
    batch = median_seconds(lambda: model.fit(x, batch_size=64, epochs=1, verbose=0), repeats)
    update = median_seconds(lambda: model.fit_step_size(x[:images], iterations=1), repeats)
    return batch, update


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS))
    args = parser.parse_args()
    print(f"{hardware()}; step-size update on {args.images} images, training batch of 64, K=25")
    print("| model | latent D | training batch s | step-size update s | update / batch |")
    print("| --- | --- | --- | --- | --- |")
    for name in args.configs:
        batch, update = measure(*CONFIGS[name], args.images, args.repeats)
        print(f"| {name} | {sum(CONFIGS[name][0])} | {batch:.2f} | {update:.2f} | {update / batch:.1f} |")

if __name__ == "__main__":
    main()
