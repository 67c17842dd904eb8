"""Clean accuracy of the generative classifiers and their ConvNet baselines on the full test split.

    python tools/eval_classifier.py [--dataset mnist|fashion_mnist|all] [--source zoo|runs] [--chains 8]
                                    [--average-epochs N]

Prints, per dataset and label budget (100 and 1,000 labels per class), the
accuracy of both models side by side (the label-efficiency curve), and records it in the entry's
``results.json`` (``$KERAS_SHORTRUN_HOME/runs/<entry>``) with the digest of the weights measured, for the cards
(``tools/train_<entry>.py export`` after retraining, ``cards`` for the committed entries). With ``--source runs``
a generative classifier's weights are the uniform average of its joint stage's last ``joint.average_epochs``
snapshots (the recipe's), as ``export`` hands them on; ``--average-epochs N`` averages the last N instead (1: the
last snapshot alone), a comparison that is printed and not recorded.
"""

import argparse
import sys
import time

import classifier_recipe as recipe

from keras_shortrun import data
from keras_shortrun.training import hardware


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=("mnist", "fashion_mnist", "all"), default="all")
    parser.add_argument("--source", choices=("zoo", "runs"), default="zoo")
    parser.add_argument("--chains", type=int, default=8, help="chains averaged per image (generative classifier)")
    parser.add_argument("--labels", type=int, nargs="+", default=sorted(recipe.LABEL_BUDGETS),
                        help="label budgets (labels per class) to evaluate")
    parser.add_argument("--data-path", default=None)
    parser.add_argument("--average-epochs", type=int, default=None,
                        help="with --source runs: average the joint stage's last N epochs instead of the recipe's "
                             "joint.average_epochs (1: the last snapshot alone); printed, not recorded")
    args = parser.parse_args()
    if args.average_epochs is not None and (args.source != "runs" or args.average_epochs < 1):
        parser.error(f"--average-epochs needs --source runs and a positive number, got {args.average_epochs} "
                     f"with --source {args.source}")
    datasets = ("mnist", "fashion_mnist") if args.dataset == "all" else (args.dataset,)
    print(f"machine: {hardware()}")
    print("| dataset | labels per class | generative classifier | ConvNet | difference (points) |")
    print("| --- | --- | --- | --- | --- |")
    for dataset in datasets:
        entry = f"{dataset}_classifier"
        x_test, y_test = data.load(dataset, "test", path=args.data_path)
        accuracy, digests = {}, {}
        for labels in args.labels:
            row = {}
            for kind in ("classifier", "convnet"):
                model = recipe.load_model(entry, labels, kind, args.source, args.average_epochs)
                start = time.time()
                row[kind] = recipe.accuracy_on(model, kind, x_test, y_test, args.chains)
                accuracy[recipe.entry_name(entry, labels, kind)] = row[kind]
                digests[recipe.entry_name(entry, labels, kind)] = recipe.weights_digest(model)
                print(f"  ({recipe.entry_name(entry, labels, kind)}: {time.time() - start:.0f} s)", file=sys.stderr)
            gap = 100 * (row["classifier"] - row["convnet"])
            print(f"| {dataset} | {labels} | {100 * row['classifier']:.2f} % | {100 * row['convnet']:.2f} % | "
                  f"{gap:+.2f} |", flush=True)
        if args.average_epochs is None:
            recipe.update_results(entry, {"accuracy": accuracy, "accuracy_weights": digests,
                                          "accuracy_chains": args.chains})


if __name__ == "__main__":
    main()
