"""Recipe of the ``mnist_ebm`` zoo entry: train (resumable), then export the entry with its card.

    python tools/train_mnist_ebm.py train  [--iterations 3000]   # resumes from runs/mnist_ebm
    python tools/train_mnist_ebm.py export                       # writes zoo/mnist_ebm

Budget (CPU): the paper-1 ConvNet at nf=16 and K=50 Langevin steps (clamped to
[-1, 1]), batch 64, Adam 1e-4; see the entry's card for what was run and measured.
"""

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from ebm_recipe import RECIPES  # noqa: E402
from ebm_recipe import export_entry  # noqa: E402
from ebm_recipe import train  # noqa: E402

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("train", "export"))
    parser.add_argument("--iterations", type=int, default=RECIPES["mnist_ebm"]["iterations"])
    parser.add_argument("--run-dir", default=str(ROOT / "runs" / "mnist_ebm"))
    parser.add_argument("--entry-dir", default=str(ROOT / "zoo" / "mnist_ebm"))
    parser.add_argument("--data-path", default=None)
    parser.add_argument("--epoch", type=int, default=None, help="snapshot to export (default: the last)")
    parser.add_argument("--recon-images", type=int, default=1000)
    parser.add_argument("--recon-iterations", type=int, default=200)
    args = parser.parse_args()
    if args.action == "train":
        train("mnist_ebm", args.run_dir, args.iterations, args.data_path)
    else:
        export_entry("mnist_ebm", args.run_dir, args.entry_dir, args.data_path,
                     recon_images=args.recon_images, recon_iterations=args.recon_iterations,
                     epoch=args.epoch)
