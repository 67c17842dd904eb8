"""White-box robustness of the generative classifiers and their ConvNet baselines (1,000 labels per class).

    python tools/eval_robustness.py [--dataset mnist|fashion_mnist|all] [--source zoo|runs]
                                    [--images 200] [--pgd-steps 20] [--eot-chains 8]

FGSM and PGD (random start, ``--pgd-steps`` steps of 2.5 eps / steps) at each
epsilon (pixels in [-1, 1]) on the first ``--images`` test images. Against the
generative classifier every gradient goes through the unrolled chain and is
averaged over ``--eot-chains`` chains with fresh noise per step (EOT); its
accuracy on the adversarial images averages 8 new chains, as ``predict`` does.
"""

import argparse
import sys
import time

import classifier_recipe as recipe
import numpy as np

from keras_shortrun import attacks
from keras_shortrun import data
from keras_shortrun.training import hardware

EPSILONS = (0.01, 0.03, 0.1, 0.3)


def accuracy(model, x, y, kind):
    if kind == "classifier":
        p = model.predict_proba(x, seed=12345)
    else:
        p = model.predict(x, batch_size=256, verbose=0)
    return float(np.mean(np.argmax(p, axis=1) == y))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=("mnist", "fashion_mnist", "all"), default="all")
    parser.add_argument("--source", choices=("zoo", "runs"), default="zoo")
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--pgd-steps", type=int, default=20)
    parser.add_argument("--eot-chains", type=int, default=8)
    parser.add_argument("--epsilons", type=float, nargs="+", default=list(EPSILONS))
    parser.add_argument("--labels", type=int, default=recipe.LABEL_BUDGETS[0])
    parser.add_argument("--data-path", default=None)
    args = parser.parse_args()
    datasets = ("mnist", "fashion_mnist") if args.dataset == "all" else (args.dataset,)
    print(f"machine: {hardware()}; first {args.images} test images; PGD {args.pgd_steps} steps; "
          f"EOT over {args.eot_chains} chains")
    print("| dataset | attack | epsilon | generative classifier | ConvNet |")
    print("| --- | --- | --- | --- | --- |")
    for dataset in datasets:
        entry = f"{dataset}_classifier"
        x_test, y_test = data.load(dataset, "test", path=args.data_path)
        x, y = x_test[: args.images], y_test[: args.images].astype("int32")
        models = {kind: recipe.load_model(entry, args.labels, kind, args.source) for kind in ("classifier", "convnet")}
        table = {kind: {"clean@0": accuracy(model, x, y, kind)} for kind, model in models.items()}
        print(f"| {dataset} | none | 0 | {100 * table['classifier']['clean@0']:.1f} % | "
              f"{100 * table['convnet']['clean@0']:.1f} % |", flush=True)
        for epsilon in args.epsilons:
            for attack in ("FGSM", "PGD"):
                for kind, model in models.items():
                    start = time.time()
                    gradient = attacks.loss_gradient(model, chains=args.eot_chains, seed=1)
                    if attack == "FGSM":
                        adversarial = attacks.fgsm(gradient, x, y, epsilon)
                    else:
                        adversarial = attacks.pgd(gradient, x, y, epsilon, steps=args.pgd_steps, seed=2)
                    table[kind][f"{attack}@{epsilon}"] = accuracy(model, adversarial, y, kind)
                    print(f"  ({kind} {attack}@{epsilon}: {time.time() - start:.0f} s)", file=sys.stderr, flush=True)
                key = f"{attack}@{epsilon}"
                print(f"| {dataset} | {attack} | {epsilon} | {100 * table['classifier'][key]:.1f} % | "
                      f"{100 * table['convnet'][key]:.1f} % |", flush=True)
        if args.source == "runs":
            names = {kind: recipe.entry_name(entry, args.labels, kind) for kind in models}
            recipe.update_results(entry, {
                "robustness": {names[kind]: values for kind, values in table.items()},
                "robustness_images": args.images, "pgd_steps": args.pgd_steps, "eot_chains": args.eot_chains,
            })


if __name__ == "__main__":
    main()
