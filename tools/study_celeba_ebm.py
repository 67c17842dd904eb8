"""celeba_ebm recipe study at equal CPU time: train each candidate for the same CPU-seconds, then score it.

    python tools/study_celeba_ebm.py train a --cpu-minutes 25   # one process, one thread: run two side by side
    python tools/study_celeba_ebm.py score a                    # Inception FID (N=1000) and face rate (200)
                                                                # (evaluation.SCORE_PROTOCOL; the campaign's own scores:
                                                                # python tools/train_ebm.py celeba_ebm score)
    python tools/study_celeba_ebm.py table                      # the markdown table of the scored candidates,
                                                                # then the celeba_ebm campaign's quality curve

Runs live in ``$KERAS_SHORTRUN_HOME/runs/study_celeba_ebm/<candidate>`` (``keras_shortrun.training.runs_home``)
and resume; the budget counts this process's CPU time (``fit_resumable(max_cpu_seconds=...)``), so other load on
the machine does not bias the comparison. Every candidate shares data (CelebA train, 9,000 faces at 64x64),
batch 32, Adam 2e-4 (beta_1 0.9), data noise 0.03, the [-1, 1] clamp and seed 0.
"""

import argparse
import json
import os

from keras_shortrun.evaluation import SCORE_PROTOCOL

CANDIDATES = {
    "a": ("today's recipe: paper-1 net nf=16, LeakyReLU, K=50", "with_convnet", {"steps": 50}),
    "b": ("(a) with the noise annealed to zero over the last 10 steps", "with_convnet",
          {"steps": 50, "anneal_steps": 10}),
    "c": ("(a) with SiLU instead of LeakyReLU", "with_convnet", {"steps": 50, "activation": "silu"}),
    "d": ("coarse-to-fine chain 8-16-32-64, K=30+20+15+10, one nf=16 net per resolution, noise annealed over "
          "the last 5 steps", "with_coarse_to_fine",
          {"resolutions": (8, 16, 32, 64), "steps": (30, 20, 15, 10), "anneal_steps": 5}),
}
SHARED = {"image_size": 64, "channels": 3, "filters": 16, "clip": (-1.0, 1.0), "seed": 0}
TRAINING = {"batch_size": 32, "learning_rate": 2e-4, "beta_1": 0.9, "seed": 0, "iterations_per_epoch": 10}


def build(candidate):
    from keras_shortrun.models import ShortRunEBM

    _, builder, kwargs = CANDIDATES[candidate]
    return getattr(ShortRunEBM, builder)(**SHARED, **kwargs)


def run_dir(candidate):
    from keras_shortrun.training import runs_home

    return runs_home() / "study_celeba_ebm" / candidate


def train(candidate, cpu_minutes, data_path=None):
    from keras_shortrun import data
    from keras_shortrun.training import fit_resumable

    x, _ = data.load("celeba", "train", path=data_path)
    model = build(candidate)
    fit_resumable(model, x, run_dir(candidate), iterations=100_000, grid_size=16, verbose=2,
                  max_cpu_seconds=60.0 * cpu_minutes, **TRAINING)


def last_model(candidate, folder):
    """The candidate's model at the last kept snapshot of its run ``folder``, that snapshot's log row and the
    updates so far."""
    import csv

    with open(folder / "log.csv") as f:
        rows = list(csv.DictReader(f))
    epoch = int(rows[-1]["epoch"]) + 1
    model = build(candidate)
    model.load_weights(folder / "checkpoints" / f"epoch_{epoch:04d}.weights.h5")
    return model, rows[-1], epoch * TRAINING["iterations_per_epoch"]


def score(candidate, fid_samples, reference, data_path=None):
    """``ebm_recipe.score_model`` of the candidate's last snapshot, recorded in its run folder."""
    from ebm_recipe import record_score
    from ebm_recipe import score_model

    from keras_shortrun.images import save_grid

    folder = run_dir(candidate)
    model, row, updates = last_model(candidate, folder)
    result, samples = score_model(model, "celeba", fid_samples, reference, data_path)
    save_grid(folder / "score_samples.png", samples[:64], scale=2)
    result.update(candidate=candidate, updates=updates, cpu_minutes=float(row["cpu_time_s"]) / 60,
                  wall_minutes=float(row["wall_time_s"]) / 60,
                  command=f"python tools/study_celeba_ebm.py score {candidate} --fid-samples {fid_samples} "
                          f"--reference {reference}")
    record_score(folder, result)
    print(json.dumps(result, indent=1))
    return result


def table():
    lines = ["| candidate | CPU-minutes | updates | face rate (200 samples) | Inception FID (N, reference) | floor |",
             "| --- | --- | --- | --- | --- | --- |"]
    for candidate, (text, _, _) in CANDIDATES.items():
        path = run_dir(candidate) / "score.json"
        if not path.is_file():
            continue
        r = json.loads(path.read_text())
        lines.append(f"| ({candidate}) {text} | {r['cpu_minutes']:.0f} | {r['updates']} | "
                     f"{100 * r['face_rate']['rate']:.1f} % | {r['fid']['fid']:.1f} (N={r['fid']['n']:,}, "
                     f"{r['fid']['reference']}) | {r['fid']['floor']:.1f} |")
    print("\n".join(lines))
    from ebm_recipe import curve_table
    from ebm_recipe import scored_runs

    from keras_shortrun.training import runs_home

    print(curve_table({"name": "celeba_ebm", **scored_runs(runs_home() / "celeba_ebm", None)}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("train", "score", "table"))
    parser.add_argument("candidate", nargs="?", choices=sorted(CANDIDATES))
    parser.add_argument("--cpu-minutes", type=float, default=25.0)
    parser.add_argument("--data-path", default=None)
    parser.add_argument("--fid-samples", type=int, default=SCORE_PROTOCOL["fid_samples"])
    parser.add_argument("--reference", type=int, default=SCORE_PROTOCOL["fid_reference"],
                        help="training faces for the FID")
    args = parser.parse_args()
    if args.action != "table" and args.candidate is None:
        parser.error(f"{args.action} needs a candidate")
    if args.action == "train":
        os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
        os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
        train(args.candidate, args.cpu_minutes, args.data_path)
    elif args.action == "score":
        score(args.candidate, args.fid_samples, args.reference, args.data_path)
    else:
        table()
