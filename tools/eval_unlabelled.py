"""The thesis's unlabelled-data curve: a label budget's generative classifier trained with fewer unlabelled images.

    keras-shortrun train fashion_mnist_classifier --labels 100 --set train_images=10000 \
        --out $KERAS_SHORTRUN_HOME/runs/fashion_mnist_classifier_train10000        # one run per point
    python tools/eval_unlabelled.py --dataset fashion_mnist --labels 100 --train-images 10000 20000

Each point is a run of the entry's recipe that keeps ``train_images`` training images (class-balanced nested
subsets that hold the split's labelled images, ``recipes.training_subset``), so every point learns from the same
labelled images and only the unlabelled ones change; the generator stage also sees only the kept images. The
point of every training image is the entry's own run (``tools/eval_classifier.py --source runs``). Prints the
curve and records it in the entry's run folder's ``results.json`` (``unlabelled_curve``) for the cards.
"""

import argparse
import sys
import time

import classifier_recipe as recipe

from keras_shortrun import data
from keras_shortrun import recipes
from keras_shortrun.training import hardware
from keras_shortrun.training import runs_home


def curve_run(entry, train_images):
    """The run folder of one point of the curve."""
    return runs_home() / f"{entry}_train{train_images}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=("mnist", "fashion_mnist"), required=True)
    parser.add_argument("--labels", type=int, default=min(recipe.LABEL_BUDGETS), help="labels per class")
    parser.add_argument("--train-images", type=int, nargs="+", required=True,
                        help="the points: training images kept (labelled ones included)")
    parser.add_argument("--chains", type=int, default=8, help="chains averaged per image")
    parser.add_argument("--data-path", default=None)
    args = parser.parse_args()
    entry = f"{args.dataset}_classifier"
    missing = [str(curve_run(entry, n)) for n in args.train_images
               if not (curve_run(entry, n) / f"joint_{args.labels}" / "log.csv").is_file()]
    if missing:
        sys.exit(f"No trained joint stage for {args.labels} labels per class in: {', '.join(missing)} (train them "
                 f"first, see this tool's help).")
    x_test, y_test = data.load(args.dataset, "test", path=args.data_path)
    split_images = len(data.load(args.dataset, "train", path=args.data_path)[1])
    labelled = args.labels * recipes.load(entry)["num_classes"]
    print(f"machine: {hardware()}")
    print(f"| training images | unlabelled images | generative classifier, {args.labels} labels per class |")
    print("| --- | --- | --- |")
    curve = {}
    for train_images in sorted(args.train_images):
        start = time.time()
        model = recipe.load_trained(entry, args.labels, run=curve_run(entry, train_images))
        curve[str(train_images)] = recipe.accuracy_on(model, "classifier", x_test, y_test, args.chains)
        print(f"| {train_images} | {train_images - labelled} | {100 * curve[str(train_images)]:.2f} % |", flush=True)
        print(f"  ({time.time() - start:.0f} s)", file=sys.stderr)
    recorded = recipe.read_results(entry).get("unlabelled_curve", {})
    curve = {**recorded.get(str(args.labels), {}), **curve}  # points measured before (by another process) stay
    recipe.update_results(entry, {"unlabelled_curve": {**recorded, str(args.labels): curve},
                                  "train_split_images": split_images})


if __name__ == "__main__":
    main()
