"""Sample quality of every generative zoo entry, measured the same way, as one markdown table.

    python tools/eval_zoo.py [--samples 5000] [--entries a,b] [--force] [--write-metadata] [--inception]

For each entry: ``--samples`` samples (seed 0; EBM: the K-step chain from noise; latent models: ancestral
samples of the generator) against the held-out split of its dataset (MNIST/Fashion: the 10k test set;
CelebA: the last 1,000 faces; CIFAR-10: the subset's 5,000 test images), FD and KID x 1e3 on the dataset's
declared feature network (``keras_shortrun.metrics.FEATURE_NETWORKS``, never Inception: not comparable with
papers' FIDs; KID on features scaled by the reference RMS). The held-out reconstruction MSE and test accuracy
are read from each entry's metadata (measured at export).

An entry whose ``metadata.json`` already holds a measurement of this protocol (``PROTOCOL``, same sample count;
the EBM exports write one, because 5,000 chains take minutes to half an hour on CPU) is not sampled again
unless ``--force``; other rows are cached in ``runs/eval/<entry>.json`` keyed by the weights' sha256.
``--write-metadata`` copies fresh FD/KID into each entry's ``metadata.json`` so that ``keras-shortrun zoo list``
shows them.

``--inception`` (the ``[eval]`` extra) adds, for the RGB entries, the Inception FID and, on CelebA, the face rate
under ``keras_shortrun.evaluation.SCORE_PROTOCOL`` (``score_samples``: 1,000 samples of seed 123 against the first
5,000 training images, beside the real-versus-real floor), read from the entry's metadata when it was scored
there (an EBM campaign scores at export), else measured and cached like the other rows.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import keras

from keras_shortrun import data
from keras_shortrun import evaluation
from keras_shortrun import metrics
from keras_shortrun import zoo
from keras_shortrun.training import cpu_model
from keras_shortrun.zoo.registry import METADATA_FILE
from keras_shortrun.zoo.registry import resolve

ROOT = Path(__file__).resolve().parents[1]

GENERATIVE_FAMILIES = ("ShortRunEBM", "MultiLayerLVM", "VAE", "GenerativeClassifier")


PROTOCOL = "samples seed 0; FD on raw features; KID (100 subsets of 1,000) on reference-RMS-scaled features"


def draw_samples(model, family, n, seed=0):
    return model.sample(n, seed=seed) if family == "ShortRunEBM" else model.synthesize(n, seed=seed)


def measure(model, family, dataset, n, data_path=None):
    """``(row, samples)``: FD/KID of ``n`` samples of ``model`` against ``dataset``'s held-out split under
    ``PROTOCOL``, with wall time and machine, and the samples ``(n, H, W, C)``."""
    start = time.time()
    samples = draw_samples(model, family, n)
    heldout, _ = data.load(dataset, "test", path=data_path)
    row = metrics.sample_quality(metrics.feature_network(dataset), heldout, samples)
    row.update(protocol=PROTOCOL, wall_time_s=round(time.time() - start, 1),
               machine=f"{cpu_model()}, {keras.backend.backend()}")
    return row, samples


def evaluate(name, n, force=False, data_path=None):
    """The recorded, cached or freshly measured row of one entry (a dict)."""
    meta = zoo.info(name)
    cache = ROOT / "runs" / "eval" / f"{name}.json"
    weights = meta["files"]["model.weights.h5"]["sha256"]
    dataset = meta["dataset"]["name"]
    row = {"entry": name, "family": meta["family"], "dataset": dataset, "weights_sha256": weights,
           "recon_mse": meta.get("metrics", {}).get("recon_mse_test"),
           "accuracy": meta.get("metrics", {}).get("accuracy_test")}
    if meta["family"] not in GENERATIVE_FAMILIES or dataset not in metrics.FEATURE_NETWORKS:
        return row
    recorded = meta.get("sample_quality", {})
    if not force and recorded.get("protocol") == PROTOCOL and recorded.get("n_samples") == n:
        return {**row, **recorded, "source": "metadata.json"}
    if cache.is_file() and not force:
        cached = json.loads(cache.read_text())
        if cached.get("weights_sha256") == weights and cached.get("n_samples") == n and \
                cached.get("protocol") == PROTOCOL:
            return cached
    quality, _ = measure(zoo.load(name), meta["family"], dataset, n, data_path)
    row.update(quality, source="measured")
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(row, indent=1))
    return row


INCEPTION_DATASETS = ("celeba", "celeba32", "cifar10")  # RGB: the Inception network's domain


def inception_score(name, force=False, data_path=None):
    """The entry's Inception FID (and face rate) under ``evaluation.SCORE_PROTOCOL``: recorded in its metadata,
    cached in ``runs/eval/<entry>.inception.json`` (keyed by the weights' sha256), or measured."""
    meta = zoo.info(name)
    protocol = evaluation.SCORE_PROTOCOL
    dataset = meta["dataset"]["name"]
    reference = f"{dataset} train, first {protocol['fid_reference']:,} images"

    def matches(score):
        return score.get("fid", {}).get("n") == protocol["fid_samples"] and score["fid"]["reference"] == reference

    recorded = meta.get("inception", {})
    if not force and matches(recorded):
        return {**recorded, "source": "metadata.json"}
    cache = ROOT / "runs" / "eval" / f"{name}.inception.json"
    weights = meta["files"]["model.weights.h5"]["sha256"]
    if cache.is_file() and not force:
        cached = json.loads(cache.read_text())
        if cached.get("weights_sha256") == weights and matches(cached):
            return cached
    start = time.time()
    samples = draw_samples(zoo.load(name), meta["family"], max(protocol["fid_samples"], protocol["face_samples"]),
                           seed=protocol["seed"])
    score = evaluation.score_samples(samples, dataset, data_path=data_path)
    score.update(weights_sha256=weights, source="measured", wall_time_s=round(time.time() - start, 1),
                 machine=f"{cpu_model()}, {keras.backend.backend()}",
                 command=f"python tools/eval_zoo.py --entries {name} --inception --write-metadata")
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(score, indent=1))
    return score


def write_metadata(row):
    path = resolve(row["entry"]) / METADATA_FILE
    fresh_quality = row.get("source") == "measured"
    fresh_inception = row.get("inception", {}).get("source") == "measured"
    if not (fresh_quality or fresh_inception):
        return
    meta = json.loads(path.read_text())
    if fresh_quality:
        meta.setdefault("metrics", {}).update(fd=row["fd"], kid=row["kid"])
        meta["sample_quality"] = {k: row[k] for k in QUALITY_FIELDS}
        meta["sample_quality"]["command"] = f"python tools/eval_zoo.py --entries {row['entry']} --samples " \
                                            f"{row['n_samples']} --write-metadata"
    if fresh_inception:
        meta["inception"] = {k: v for k, v in row["inception"].items() if k not in ("source", "weights_sha256")}
    tmp = path.with_suffix(".tmp.json")
    tmp.write_text(json.dumps(meta, indent=1, sort_keys=True))
    os.replace(tmp, path)


QUALITY_FIELDS = ("fd", "kid", "kid_std", "kid_feature_scale", "n_samples", "n_reference", "feature_network",
                  "protocol", "wall_time_s", "machine")


def table(rows, inception=False):
    head = "| entry | family | dataset | feature network | FD | KID x 1e3 | held-out recon MSE | test accuracy |"
    if inception:
        head += " Inception FID (floor) | face rate (held-out) |"
    lines = [head, "|" + " --- |" * head.count(" |")]
    for r in rows:
        fd = f"{r['fd']:.2f}" if "fd" in r else "-"
        kid = f"{1e3 * r['kid']:.2f} +- {1e3 * r['kid_std']:.2f}" if "kid" in r else "-"
        mse = f"{r['recon_mse']:.4f}" if r.get("recon_mse") is not None else "-"
        acc = f"{100 * r['accuracy']:.2f} %" if r.get("accuracy") is not None else "-"
        line = f"| {r['entry']} | {r['family']} | {r['dataset']} | {r.get('feature_network', '-')} | {fd} | " \
               f"{kid} | {mse} | {acc} |"
        if inception:
            score = r.get("inception", {})
            fid = f"{score['fid']['fid']:.1f} ({score['fid']['floor']:.1f})" if score else "-"
            faces = score.get("face_rate")
            rate = f"{100 * faces['rate']:.1f} % ({100 * faces['heldout_rate']:.1f} %)" if faces else "-"
            line += f" {fid} | {rate} |"
        lines.append(line)
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=5000)
    parser.add_argument("--entries", default=None, help="comma-separated names (default: every registered entry)")
    parser.add_argument("--force", action="store_true", help="measure again even if a cached row matches")
    parser.add_argument("--write-metadata", action="store_true")
    parser.add_argument("--data-path", default=None)
    parser.add_argument("--inception", action="store_true", help="also the Inception FID and face rate of the RGB "
                        'entries (pip install "keras_shortrun[eval]")')
    args = parser.parse_args()
    names = args.entries.split(",") if args.entries else [r["name"] for r in zoo.list()]
    rows = []
    for name in names:
        rows.append(evaluate(name, args.samples, args.force, args.data_path))
        if args.inception and rows[-1]["family"] in GENERATIVE_FAMILIES and rows[-1]["dataset"] in INCEPTION_DATASETS:
            rows[-1]["inception"] = inception_score(name, args.force, args.data_path)
        if args.write_metadata:
            write_metadata(rows[-1])
        print(f"done {name}", file=sys.stderr, flush=True)
    print(table(rows, args.inception))
