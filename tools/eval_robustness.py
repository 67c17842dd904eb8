"""White-box and transfer robustness of the generative classifiers and their ConvNet baselines (1,000 labels per
class), with 95 % confidence intervals.

    python tools/eval_robustness.py [--dataset mnist|fashion_mnist|all] [--source zoo|runs] [--images 1000]
                                    [--pgd-steps 100] [--restarts 2] [--step-size 0.125] [--eot-chains 8]
                                    [--epsilons ...] [--convergence] [--no-record]

On the first ``--images`` test images, at each epsilon (pixels in [-1, 1]), both models face:

- FGSM, and PGD (``--restarts`` random starts of ``--pgd-steps`` steps of 2.5 eps / steps, or of
  ``--step-size`` eps; an image is robust when no restart fools the model), with the accuracy of the iterates
  after 10, 20, 50, ... steps to show whether PGD has converged. With a fixed ``--step-size`` (0.125: the
  20-step attack's) the iterates after 20 steps are the 20-step attack's, and the later ones show what more
  steps of the same attack add. Against the generative classifier every gradient goes through the unrolled chain
  and is averaged over ``--eot-chains`` chains with fresh noise per step (EOT).
- transfer: PGD adversarials crafted on the ConvNet, shown to the generative classifier;
- fixed noise: PGD on a deterministic copy of the generative classifier (its chains' starts and noise frozen),
  shown to the real one. Much stronger than EOT would mean that the EOT numbers are masked.

The generative classifier's accuracy averages 8 fresh chains per image, as ``predict`` does. The last row of
each epsilon counts an image as robust only when it survives every attack on its model (the per-image worst
case): the claim is what survives that. Finished chunks of 100 images are kept in the run folder, so a stopped
evaluation (hours on a CPU) resumes where it stopped, and the same command started on several cores shares the
chunks: each process attacks the chunks no other is attacking, then waits for the others' and prints the same
tables (e.g. ``taskset -c 0 python tools/eval_robustness.py ... & taskset -c 1 python tools/eval_robustness.py
...``). The tables go into the entry's ``results.json``
(``$KERAS_SHORTRUN_HOME/runs/<entry>``) with the digest of the weights attacked, for the cards
(``tools/train_<entry>.py export`` after retraining, ``cards`` for the committed entries).
"""

import argparse
import fcntl
import json
import sys
import time
from pathlib import Path

import classifier_recipe as recipe
import numpy as np

from keras_shortrun import attacks
from keras_shortrun import data
from keras_shortrun.metrics import wilson_interval
from keras_shortrun.seeds import stream
from keras_shortrun.training import atomic_write_text
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


CHUNK_IMAGES = 100  # images per cached piece: a stopped evaluation resumes from the pieces it finished


def attack_chunk(models, predict, x, y, epsilon, args, start):
    """Every attack at ``epsilon`` on one chunk of images (the first at index ``start``): per-image outcomes
    ``{kind: {attack: [0/1] * B}}`` (1: still classified right) and PGD's iterates as counts of robust images,
    ``{kind: {attack: {steps: count}}}``. The attacks' seeds are named streams of the chunk's ``start``."""
    def seed(name):
        return stream(start, name)

    def timed(label, attack, *attack_args, **kwargs):
        began = time.time()
        result = attack(*attack_args, **kwargs)
        print(f"  ({label}, images {start}-{start + len(x)}: {time.time() - began:.0f} s)", file=sys.stderr,
              flush=True)
        return result

    outcomes = {kind: {} for kind in models}
    curves = {kind: {} for kind in models}
    step_size = None if args.step_size is None else args.step_size * epsilon
    pgd = dict(steps=args.pgd_steps, restarts=args.restarts, step_size=step_size)
    gradients = {kind: attacks.loss_gradient(m, chains=args.eot_chains, seed=seed("eot")) for kind, m in
                 models.items()}
    fixed = attacks.loss_gradient(models["classifier"], chains=args.eot_chains, seed=seed("fixed"), fixed_noise=True)
    for kind in models:
        adversarial = timed(f"{kind} FGSM@{epsilon}", attacks.fgsm, gradients[kind], x, y, epsilon)
        outcomes[kind]["FGSM"] = predict[kind](adversarial) == y
        curve, outcomes[kind]["PGD"] = timed(f"{kind} PGD@{epsilon}", attacks.pgd_curve, gradients[kind],
                                             predict[kind], x, y, epsilon, seed=seed("pgd"), **pgd)
        curves[kind]["PGD"] = curve
    transferred = timed(f"transfer@{epsilon}", attacks.pgd, gradients["convnet"], x, y, epsilon,
                        steps=args.pgd_steps, step_size=step_size, seed=seed("transfer"))
    outcomes["classifier"]["transfer"] = predict["classifier"](transferred) == y
    curve, outcomes["classifier"]["fixed-noise"] = timed(f"fixed-noise@{epsilon}", attacks.pgd_curve, fixed,
                                                         predict["classifier"], x, y, epsilon,
                                                         seed=seed("fixed_pgd"), **pgd)
    curves["classifier"]["fixed-noise"] = curve
    return (
        {kind: {a: [int(v) for v in ok] for a, ok in attacks_.items()} for kind, attacks_ in outcomes.items()},
        {kind: {a: {str(steps): round(accuracy * len(x)) for steps, accuracy in c.items()} for a, c in
                curves_.items()} for kind, curves_ in curves.items()},
    )


def cached_chunk(cache, key, compute, wait=True):
    """``compute()``'s JSON-able result, kept in ``cache / key`` (``None``: no cache). While computing it a
    process holds the chunk's lock (``.<key>.lock``, an ``flock`` that ends with the process): another process
    then waits for the result (``wait``) or gets ``None`` at once, and computes it itself only if the holder
    stopped without a result."""
    if cache is None:
        return compute()
    path = Path(cache) / f"{key}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{key}.lock"), "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            return None
        if path.is_file():
            return json.loads(path.read_text())
        result = compute()
        atomic_write_text(path, json.dumps(result))  # a stopped process leaves no half-written piece
    return result


def shared_chunks(cache, jobs):
    """``[compute() for key, compute in jobs]`` through ``cached_chunk``: first every chunk that no other
    process is computing, then, waiting, those that one was."""
    results = [cached_chunk(cache, key, compute, wait=False) for key, compute in jobs]
    return [cached_chunk(cache, *job) if result is None else result for job, result in zip(jobs, results)]


def attack_dataset(dataset, models, x, y, args, cache=None):
    """``({kind: {"attack@eps": accuracy}}, {kind: {"attack@eps": {steps: accuracy}}})`` (the second: PGD's
    iterates) for one dataset, printing the table's rows as they come. The images are attacked in chunks of
    ``CHUNK_IMAGES``, each kept in ``cache`` (a folder; ``None``: no cache) under a name made of the models'
    weights and the settings, so that a rerun skips the chunks already done and processes running at once share
    them (``shared_chunks``). The ``strongest`` row counts an image as robust only when it survives every attack
    (the per-image worst case)."""
    predict = {kind: predictor(model, kind) for kind, model in models.items()}
    table = {kind: {"clean@0": float(np.mean(predict[kind](x) == y))} for kind in models}
    curves = {kind: {} for kind in models}
    n = len(x)
    settings = "_".join([recipe.weights_digest(models["classifier"]), recipe.weights_digest(models["convnet"]),
                         f"pgd{args.pgd_steps}x{args.restarts}", f"eot{args.eot_chains}"]
                        + ([] if args.step_size is None else [f"step{args.step_size:g}"]))

    def row(attack, epsilon, generative, convnet):
        print(f"| {dataset} | {attack} | {epsilon} | {generative} | {convnet} |", flush=True)

    row("none", 0, cell(table["classifier"]["clean@0"], n), cell(table["convnet"]["clean@0"], n))
    for epsilon in args.epsilons:
        pieces = shared_chunks(cache, [
            (f"{dataset}_eps{epsilon:g}_images{i}-{min(i + CHUNK_IMAGES, n)}_{settings}",
             lambda i=i, e=epsilon: attack_chunk(models, predict, x[i:i + CHUNK_IMAGES], y[i:i + CHUNK_IMAGES], e,
                                                 args, i))
            for i in range(0, n, CHUNK_IMAGES)
        ])
        for kind in models:
            outcomes = {a: np.concatenate([p[0][kind][a] for p in pieces]).astype(bool) for a in pieces[0][0][kind]}
            for attack, ok in outcomes.items():
                table[kind][f"{attack}@{epsilon}"] = float(np.mean(ok))
            table[kind][f"strongest@{epsilon}"] = float(np.mean(np.logical_and.reduce(list(outcomes.values()))))
            for attack in pieces[0][1][kind]:
                curves[kind][f"{attack}@{epsilon}"] = {
                    steps: sum(p[1][kind][attack][steps] for p in pieces) / n for steps in pieces[0][1][kind][attack]
                }
        for attack, label in recipe.ATTACK_ROWS:
            cells = [cell(table[kind][f"{attack}@{epsilon}"], n) if f"{attack}@{epsilon}" in table[kind] else ""
                     for kind in ("classifier", "convnet")]
            row(label, epsilon, *cells)
    return table, curves


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=("mnist", "fashion_mnist", "all"), default="all")
    parser.add_argument("--source", choices=("zoo", "runs"), default="zoo")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--pgd-steps", type=int, default=100)
    parser.add_argument("--restarts", type=int, default=2)
    parser.add_argument("--step-size", type=float, default=None,
                        help="PGD's step in units of epsilon (default: 2.5 / --pgd-steps)")
    parser.add_argument("--eot-chains", type=int, default=8)
    parser.add_argument("--epsilons", type=float, nargs="+", default=list(EPSILONS))
    parser.add_argument("--labels", type=int, default=recipe.LABEL_BUDGETS[0])
    parser.add_argument("--data-path", default=None)
    parser.add_argument("--convergence", action="store_true",
                        help="a convergence study (more steps and restarts on fewer images): recorded apart from the "
                             "main table, in the cards' section on whether the attack converges")
    parser.add_argument("--no-record", action="store_true",
                        help="print the tables only (a comparison, say), leaving results.json as it is")
    parser.add_argument("--no-cache", action="store_true",
                        help="do not keep or reuse finished chunks of images (by default they are kept in "
                             "$KERAS_SHORTRUN_HOME/runs/<entry>/robustness_cache, so that a rerun resumes)")
    args = parser.parse_args()
    for option in ("images", "pgd_steps", "restarts", "eot_chains"):
        if getattr(args, option) < 1:
            parser.error(f"--{option.replace('_', '-')} must be at least 1, got {getattr(args, option)}")
    if args.step_size is not None and not 0 < args.step_size <= 2:
        parser.error(f"--step-size is in units of epsilon and must be in (0, 2], got {args.step_size}")
    if min(args.epsilons) <= 0:
        parser.error(f"--epsilons must be positive (pixel units of [-1, 1]), got {args.epsilons}")
    datasets = ("mnist", "fashion_mnist") if args.dataset == "all" else (args.dataset,)
    step = "2.5 eps / steps" if args.step_size is None else f"{args.step_size:g} eps"
    print(f"machine: {hardware()}; first {args.images} test images; PGD {args.pgd_steps} steps of {step}, "
          f"{args.restarts} restarts; EOT over {args.eot_chains} chains; accuracy with its 95 % Wilson interval")
    for dataset in datasets:
        print("| dataset | attack | epsilon | generative classifier | ConvNet |")
        print("| --- | --- | --- | --- | --- |")
        entry = f"{dataset}_classifier"
        x_test, y_test = data.load(dataset, "test", path=args.data_path)
        if args.images > len(x_test):
            parser.error(f"--images {args.images} is more than the {len(x_test)} images of {dataset}'s test split")
        x, y = x_test[: args.images], y_test[: args.images].astype("int32")
        models = {kind: recipe.load_model(entry, args.labels, kind, args.source) for kind in ("classifier", "convnet")}
        cache = None if args.no_cache else recipe.results_path(entry).parent / "robustness_cache"
        table, curves = attack_dataset(dataset, models, x, y, args, cache)
        print(f"PGD iterates (accuracy after N of the {args.pgd_steps} steps): "
              + "; ".join(f"{kind} {key}: " + ", ".join(f"{s}: {100 * a:.1f} %" for s, a in curve.items())
                          for kind in curves for key, curve in curves[kind].items()))
        names = {kind: recipe.entry_name(entry, args.labels, kind) for kind in models}
        record = {
            "robustness": {names[kind]: values for kind, values in table.items()},
            "pgd_curves": {names[kind]: values for kind, values in curves.items()},
            "robustness_weights": {names[kind]: recipe.weights_digest(models[kind]) for kind in models},
            "robustness_images": args.images, "pgd_steps": args.pgd_steps, "pgd_restarts": args.restarts,
            "pgd_step_size": args.step_size, "eot_chains": args.eot_chains,
        }
        if not args.no_record:
            recipe.update_results(entry, {recipe.CONVERGENCE: record} if args.convergence else record)


if __name__ == "__main__":
    main()
