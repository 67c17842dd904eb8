"""Recipe of the EBM zoo entries (``keras_shortrun/recipes/<entry>.json``): train (resumable), then export with a card.

    python tools/train_ebm.py mnist_ebm train [--iterations N]   # resumes $KERAS_SHORTRUN_HOME/runs/<entry>
    python tools/train_ebm.py celeba_ebm train --run-dir DIR --set 'coarse_to_fine.steps=[50,20,15,10]'
                                                                 # a variant: the run records its overrides,
                                                                 # which score and export then use
    python tools/train_ebm.py mnist_ebm export [--epoch E]       # writes zoo/<entry>
    python tools/train_ebm.py mnist_ebm quality [--samples N]    # re-measures FD/KID of zoo/<entry> in place
    python tools/train_ebm.py celeba_ebm score [--epoch E]       # Inception FID (and face rate) of a snapshot,
                                                                 # appended to the run's scores.jsonl ([eval])
    python tools/train_ebm.py celeba_ebm score --seed 7          # a selection score: recorded with its seed,
                                                                 # kept off the card's quality curve
    python tools/train_ebm.py celeba_ebm score --epoch E --average-epochs 30  # the same of the average of
                                                                 # the weights kept in the 30 epochs up to E
                                                                 # (recorded with them; so is export)
    python tools/train_ebm.py celeba_ebm score-entry [--set K=V] # the same of zoo/<entry>'s weights under the
                                                                 # recipe's chain, or another (no training)
    python tools/train_ebm.py celeba_ebm score --epoch E --set 'coarse_to_fine.steps=[50,20,15,20]'
                                                                 # a snapshot sampled with other step counts
                                                                 # than it was trained with (so is export --set)
    python tools/train_ebm.py celeba_ebm export-entry-chain --set K=V  # zoo/<entry>'s weights exported again
                                                                 # with another chain (no run folder needed),
                                                                 # only if its Inception FID is lower
    python tools/train_ebm.py celeba_ebm cost [--set K=V]        # CPU-seconds per training update of the recipe
                                                                 # (run it as training runs: one thread, pinned)
    python tools/train_ebm.py mnist_ebm card                     # renders zoo/<entry>/README.md again (with
                                                                 # the run's Inception scores, if scored)

Entries: mnist_ebm, fashion_mnist_ebm, cifar10_ebm, celeba_ebm. Each entry's card
states what was run and measured (iterations, hardware, wall time).
"""

import argparse
import json
from pathlib import Path

from ebm_recipe import export_entry
from ebm_recipe import export_entry_chain
from ebm_recipe import refresh_quality
from ebm_recipe import rewrite_card
from ebm_recipe import score_entry_chain
from ebm_recipe import score_snapshot
from ebm_recipe import train
from ebm_recipe import update_cost

from keras_shortrun import recipes
from keras_shortrun.evaluation import SCORE_PROTOCOL
from keras_shortrun.recipes import parse_overrides
from keras_shortrun.training import runs_home

ROOT = Path(__file__).resolve().parents[1]

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("entry", choices=recipes.names("ebm"))
    parser.add_argument("action",
                        choices=("train", "export", "export-entry-chain", "quality", "score", "score-entry", "card",
                                 "cost"))
    parser.add_argument("--iterations", type=int, default=None, help="total updates (default: the recipe's)")
    parser.add_argument("--run-dir", default=None, help="default: $KERAS_SHORTRUN_HOME/runs/<entry>")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="train, score-entry, cost: override a recipe field (dotted keys, JSON values); score, "
                             "export: sample the snapshot with another chain (its step counts)")
    parser.add_argument("--fork-from", default=None, metavar="RUN_DIR",
                        help="train: start --run-dir as a branch of this run (its optimizer too), with --set")
    parser.add_argument("--cpu-minutes", type=float, default=None, help="stop once the run used this much CPU")
    parser.add_argument("--entry-dir", default=None, help="default: zoo/<entry>")
    parser.add_argument("--data-path", default=None)
    parser.add_argument("--epoch", type=int, default=None, help="snapshot to export (default: the last)")
    parser.add_argument("--seed", type=int, default=SCORE_PROTOCOL["seed"],
                        help="score, score-entry: another sampling seed than the protocol's, to choose a snapshot or "
                             "chain by (such scores stay off the card's quality curve)")
    parser.add_argument("--average-epochs", type=int, default=None,
                        help="score, export: the uniform average of the weights of the snapshots kept in this "
                             "many epochs up to --epoch")
    parser.add_argument("--recon-images", type=int, default=1000)
    parser.add_argument("--recon-iterations", type=int, default=200)
    parser.add_argument("--convergence-images", type=int, default=16,
                        help="held-out images also reconstructed with 200 iterations")
    parser.add_argument("--samples", type=int, default=5000, help="samples for FD/KID")
    parser.add_argument("--fid-samples", type=int, default=SCORE_PROTOCOL["fid_samples"],
                        help="samples for Inception FID")
    parser.add_argument("--reference", type=int, default=SCORE_PROTOCOL["fid_reference"],
                        help="training images for Inception FID")
    args = parser.parse_args()
    run_dir = args.run_dir or str(runs_home() / args.entry)
    if args.action == "train":
        max_cpu = None if args.cpu_minutes is None else 60.0 * args.cpu_minutes
        train(args.entry, run_dir, args.iterations, args.data_path, max_cpu, parse_overrides(args.set),
              fork_from=args.fork_from)
    elif args.action == "score":
        print(score_snapshot(args.entry, run_dir, args.epoch, args.fid_samples, args.reference, args.data_path,
                             args.seed, parse_overrides(args.set), args.average_epochs))
    elif args.action == "score-entry":
        print(json.dumps(score_entry_chain(args.entry, args.entry_dir or str(ROOT / "zoo" / args.entry),
                                           parse_overrides(args.set), args.fid_samples, args.reference,
                                           args.data_path, args.seed)))
    elif args.action == "export-entry-chain":
        print(json.dumps(export_entry_chain(args.entry, args.entry_dir or str(ROOT / "zoo" / args.entry),
                                            parse_overrides(args.set), args.data_path, args.recon_images,
                                            args.recon_iterations, args.convergence_images, args.samples)))
    elif args.action == "cost":
        print(json.dumps(update_cost(args.entry, parse_overrides(args.set), data_path=args.data_path)))
    elif args.action == "card":
        rewrite_card(args.entry_dir or str(ROOT / "zoo" / args.entry), run_dir)
    elif args.action == "quality":
        print(refresh_quality(args.entry, args.entry_dir or str(ROOT / "zoo" / args.entry), args.samples,
                              args.data_path))
    else:
        export_entry(args.entry, run_dir, args.entry_dir or str(ROOT / "zoo" / args.entry), args.data_path,
                     recon_images=args.recon_images, recon_iterations=args.recon_iterations, epoch=args.epoch,
                     convergence_images=args.convergence_images, quality_samples=args.samples,
                     chain=parse_overrides(args.set), average=args.average_epochs)
