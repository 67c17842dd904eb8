"""Does a campaign restarted from an EBM entry stay stable? Trains variants of its recipe from the committed
weights with a fresh Adam, each until ``--iterations`` or until a ``DivergenceGuard`` (summed energy gaps above
30) stops it, and prints the summed gaps ``sum_r mean E(data_r) - mean E(sample_r)`` every 10 updates.

    python tools/probe_ebm_stability.py cifar10_ebm [--iterations 400] [--variants plain,lr5e-5,penalty1]

Runs go to $KERAS_SHORTRUN_HOME/runs/probe_<entry>/<variant> (a rerun resumes them). On one core of an AMD
EPYC, cifar10_ebm's 400 updates take about 2.5 minutes a variant.
"""

import argparse
import csv
from pathlib import Path

from keras_shortrun import data
from keras_shortrun import recipes
from keras_shortrun import zoo
from keras_shortrun.errors import TrainingDiverged
from keras_shortrun.models import ShortRunEBM
from keras_shortrun.training import DivergenceGuard
from keras_shortrun.training import fit_resumable
from keras_shortrun.training import runs_home

# variant: (gradient_penalty, learning_rate)
VARIANTS = {"plain": (0.0, 2e-4), "lr5e-5": (0.0, 5e-5), "penalty1": (1.0, 2e-4)}


def summed_gaps(run_dir):
    """(epoch, summed gaps) per logged epoch of a run: the loss less its logged gradient penalty."""
    with open(Path(run_dir) / "log.csv") as f:
        rows = list(csv.DictReader(f))
    return [(int(r["epoch"]), float(r["loss"]) - float(r.get("gradient_penalty") or 0.0)) for r in rows
            if float(r["loss"]) != 0.0]  # a guard's stopped epoch logs zeros


def probe(entry, variant, iterations):
    penalty, learning_rate = VARIANTS[variant]
    recipe = recipes.load(entry)
    x, _ = data.load(recipe["dataset"], "train")
    model = ShortRunEBM.from_config({**recipes.build(recipe).get_config(), "gradient_penalty": penalty})
    model.set_weights(zoo.load(entry).get_weights())
    run_dir = runs_home() / f"probe_{entry}" / variant
    try:
        fit_resumable(model, x, run_dir, iterations, batch_size=recipe["batch_size"],
                      iterations_per_epoch=recipe["iterations_per_epoch"], learning_rate=learning_rate,
                      beta_1=recipe["beta_1"], seed=recipe["seed"], grid_size=16, verbose=0,
                      guard=DivergenceGuard(max_energy_gap=30.0))
        outcome = "ran through"
    except TrainingDiverged:
        outcome = "diverged"
    gaps = summed_gaps(run_dir)
    per_epoch = recipe["iterations_per_epoch"]
    print(f"{variant} (gradient_penalty {penalty:g}, lr {learning_rate:g}): {outcome} after "
          f"{per_epoch * len(gaps)} updates; summed gaps every {per_epoch} updates: "
          + " ".join(f"{g:.1f}" for _, g in gaps), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("entry", choices=[name for name in recipes.names("ebm") if "divergence" in recipes.load(name)])
    parser.add_argument("--iterations", type=int, default=400)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args()
    for variant in args.variants.split(","):
        if variant not in VARIANTS:
            parser.error(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
    for variant in args.variants.split(","):
        probe(args.entry, variant, args.iterations)
