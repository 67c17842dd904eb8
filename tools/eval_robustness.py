"""White-box and transfer robustness of the generative classifiers and their ConvNet baselines (1,000 labels per
class), with 95 % confidence intervals.

    python tools/eval_robustness.py [--dataset mnist|fashion_mnist|all] [--source zoo|runs] [--images 1000]
                                    [--pgd-steps 100] [--restarts 2] [--eot-chains 8] [--epsilons ...]

On the first ``--images`` test images, at each epsilon (pixels in [-1, 1]), both models face:

- FGSM, and PGD (``--restarts`` random starts of ``--pgd-steps`` steps of 2.5 eps / steps; an image is robust
  when no restart fools the model), with the accuracy of the iterates after 10, 20, 50, ... steps to show
  whether PGD has converged. Against the generative classifier every gradient goes through the unrolled chain
  and is averaged over ``--eot-chains`` chains with fresh noise per step (EOT).
- transfer: PGD adversarials crafted on the ConvNet, shown to the generative classifier;
- fixed noise: PGD on a deterministic copy of the generative classifier (its chains' starts and noise frozen),
  shown to the real one. Much stronger than EOT would mean that the EOT numbers are masked.

The generative classifier's accuracy averages 8 fresh chains per image, as ``predict`` does. The last rows give
each model's accuracy under the strongest of its attacks: the claim is what survives that.
"""

import argparse
import sys
import time

import classifier_recipe as recipe
import numpy as np

from keras_shortrun import attacks
from keras_shortrun import data
from keras_shortrun.metrics import wilson_interval
from keras_shortrun.training import hardware

EPSILONS = (0.1, 0.2, 0.3)
EVALUATION_SEED = 12345  # the chains that classify the adversarial images: fresh, never the attacks' own


def predictor(model, kind):
    """``predict(x) -> (B,)`` class indices."""
    if kind == "classifier":
        return lambda x: np.argmax(model.predict_proba(x, seed=EVALUATION_SEED), axis=1)
    return lambda x: np.argmax(model.predict(x, batch_size=256, verbose=0), axis=1)


def cell(accuracy, n):
    """``accuracy`` in percent with its 95 % Wilson interval over ``n`` images."""
    low, high = wilson_interval(round(accuracy * n), n)
    return f"{100 * accuracy:.1f} % ({100 * low:.1f}-{100 * high:.1f})"


def attack_dataset(dataset, models, x, y, args):
    """``({kind: {"attack@eps": accuracy}}, {kind: {"attack@eps": {steps: accuracy}}})`` (the second: PGD's
    iterates) for one dataset, printing the table's rows as they come."""
    predict = {kind: predictor(model, kind) for kind, model in models.items()}
    table = {kind: {"clean@0": float(np.mean(predict[kind](x) == y))} for kind in models}
    curves = {kind: {} for kind in models}
    n = len(x)

    def row(attack, epsilon, generative, convnet):
        print(f"| {dataset} | {attack} | {epsilon} | {generative} | {convnet} |", flush=True)

    def timed(label, attack, *args, **kwargs):
        start = time.time()
        result = attack(*args, **kwargs)
        print(f"  ({label}: {time.time() - start:.0f} s)", file=sys.stderr, flush=True)
        return result

    pgd = dict(steps=args.pgd_steps, restarts=args.restarts)
    row("none", 0, cell(table["classifier"]["clean@0"], n), cell(table["convnet"]["clean@0"], n))
    for epsilon in args.epsilons:
        gradients = {kind: attacks.loss_gradient(m, chains=args.eot_chains, seed=1) for kind, m in models.items()}
        for kind in models:
            adversarial = timed(f"{kind} FGSM@{epsilon}", attacks.fgsm, gradients[kind], x, y, epsilon)
            table[kind][f"FGSM@{epsilon}"] = float(np.mean(predict[kind](adversarial) == y))
            curve, _ = timed(f"{kind} PGD@{epsilon}", attacks.pgd_curve, gradients[kind], predict[kind], x, y,
                             epsilon, seed=2, **pgd)
            table[kind][f"PGD@{epsilon}"] = curve[args.pgd_steps]
            curves[kind][f"PGD@{epsilon}"] = {str(steps): accuracy for steps, accuracy in curve.items()}
        for attack in ("FGSM", "PGD"):
            key = f"{attack}@{epsilon}"
            row(attack, epsilon, cell(table["classifier"][key], n), cell(table["convnet"][key], n))
        transferred = timed(f"transfer@{epsilon}", attacks.pgd, gradients["convnet"], x, y, epsilon,
                            steps=args.pgd_steps, seed=3)
        table["classifier"][f"transfer@{epsilon}"] = float(np.mean(predict["classifier"](transferred) == y))
        row("transfer from the ConvNet", epsilon, cell(table["classifier"][f"transfer@{epsilon}"], n), "")
        fixed = attacks.loss_gradient(models["classifier"], chains=args.eot_chains, seed=4, fixed_noise=True)
        curve, _ = timed(f"fixed-noise@{epsilon}", attacks.pgd_curve, fixed, predict["classifier"], x, y, epsilon,
                         seed=5, **pgd)
        table["classifier"][f"fixed-noise@{epsilon}"] = curve[args.pgd_steps]
        curves["classifier"][f"fixed-noise@{epsilon}"] = {str(steps): accuracy for steps, accuracy in curve.items()}
        row("PGD on fixed noise", epsilon, cell(curve[args.pgd_steps], n), "")
        strongest = {kind: min(v for k, v in table[kind].items() if k.endswith(f"@{epsilon}")) for kind in models}
        row("**strongest**", epsilon, cell(strongest["classifier"], n), cell(strongest["convnet"], n))
    return table, curves


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=("mnist", "fashion_mnist", "all"), default="all")
    parser.add_argument("--source", choices=("zoo", "runs"), default="zoo")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--pgd-steps", type=int, default=100)
    parser.add_argument("--restarts", type=int, default=2)
    parser.add_argument("--eot-chains", type=int, default=8)
    parser.add_argument("--epsilons", type=float, nargs="+", default=list(EPSILONS))
    parser.add_argument("--labels", type=int, default=recipe.LABEL_BUDGETS[0])
    parser.add_argument("--data-path", default=None)
    args = parser.parse_args()
    datasets = ("mnist", "fashion_mnist") if args.dataset == "all" else (args.dataset,)
    print(f"machine: {hardware()}; first {args.images} test images; PGD {args.pgd_steps} steps, {args.restarts} "
          f"restarts; EOT over {args.eot_chains} chains; accuracy with its 95 % Wilson interval")
    for dataset in datasets:
        print("| dataset | attack | epsilon | generative classifier | ConvNet |")
        print("| --- | --- | --- | --- | --- |")
        entry = f"{dataset}_classifier"
        x_test, y_test = data.load(dataset, "test", path=args.data_path)
        x, y = x_test[: args.images], y_test[: args.images].astype("int32")
        models = {kind: recipe.load_model(entry, args.labels, kind, args.source) for kind in ("classifier", "convnet")}
        table, curves = attack_dataset(dataset, models, x, y, args)
        print(f"PGD iterates (accuracy after N of the {args.pgd_steps} steps): "
              + "; ".join(f"{kind} {key}: " + ", ".join(f"{s}: {100 * a:.1f} %" for s, a in curve.items())
                          for kind in curves for key, curve in curves[kind].items()))
        if args.source == "runs":
            names = {kind: recipe.entry_name(entry, args.labels, kind) for kind in models}
            recipe.update_results(entry, {
                "robustness": {names[kind]: values for kind, values in table.items()},
                "pgd_curves": {names[kind]: values for kind, values in curves.items()},
                "robustness_images": args.images, "pgd_steps": args.pgd_steps, "pgd_restarts": args.restarts,
                "eot_chains": args.eot_chains,
            })


if __name__ == "__main__":
    main()
