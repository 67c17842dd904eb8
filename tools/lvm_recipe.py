"""Shared recipe code for the multi-layer LVM zoo entries and their VAE baselines (``tools/train_<entry>.py``).

Each entry is trained twice with the same generator, data, batch size,
optimiser and number of updates: by short-run inference (``MultiLayerLVM``)
and as a VAE (``VAE``, an amortised encoder), the paper's comparison.
"""

import json
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import keras
import numpy as np
from ebm_recipe import inception_rows

from keras_shortrun import data
from keras_shortrun import recipes
from keras_shortrun.images import save_grid
from keras_shortrun.models import MultiLayerLVM
from keras_shortrun.seeds import stream
from keras_shortrun.training import hardware
from keras_shortrun.training import last_epoch
from keras_shortrun.training import log_row
from keras_shortrun.training import runs_home
from keras_shortrun.zoo import info as read_metadata
from keras_shortrun.zoo import load as load_entry
from keras_shortrun.zoo import save_entry

ROOT = Path(__file__).resolve().parents[1]
CARD = Path(__file__).resolve().parent / "cards" / "lvm.md"  # the card template, str.format fields

def build(entry, kind="lvm"):
    """The untrained ``MultiLayerLVM`` (``kind="lvm"``) or ``VAE`` (``kind="vae"``) of a recipe."""
    return recipes.build(recipes.load(entry), None if kind == "lvm" else "vae",
                         name=entry if kind == "lvm" else f"{entry}_vae")


def run_dir(entry, kind):
    return runs_home() / (entry if kind == "lvm" else f"{entry}_vae")


def train(entry, kind, iterations, data_path=None):
    """Trains (resuming ``run_dir(entry, kind)``, in ``$KERAS_SHORTRUN_HOME/runs``) for ``iterations`` updates in
    all."""
    return recipes.train(entry, run_dir(entry, kind), iterations=iterations, variant=None if kind == "lvm" else "vae",
                         data_path=data_path)


def load_checkpoint(entry, kind, epoch):
    """The model of ``run_dir(entry, kind)`` after ``epoch`` (1-based) and that epoch's log row."""
    model = build(entry, kind)
    model.load_weights(run_dir(entry, kind) / "checkpoints" / f"epoch_{epoch:04d}.weights.h5")
    return model, log_row(run_dir(entry, kind), epoch)


def sample_and_reconstruction_figures(model, x_test, directory, seed=0):
    """``samples.png`` (64 ancestral samples) and ``reconstruction.png`` (16 held-out images and their
    reconstructions, in pairs) of a latent model; returns the 16 images."""
    directory.mkdir(parents=True, exist_ok=True)
    save_grid(directory / "samples.png", model.synthesize(64, seed=seed), scale=2)
    x = x_test[:16]
    x_hat, _ = model.reconstruct(x, seed=seed)
    save_grid(directory / "reconstruction.png", np.stack([x, x_hat], 1).reshape((-1,) + x.shape[1:]), columns=16,
              scale=2)
    return x


def figures(model, x_test, directory, seed=0):
    """The card's figures: samples, reconstructions, per-layer variation, inpainting, interpolation."""
    x = sample_and_reconstruction_figures(model, x_test, directory, seed)
    rows = [np.concatenate([x[i : i + 1], model.vary_layer(x[i : i + 1], layer, n=9,
                                                           seed=stream(seed, f"layer_{layer}"))[0]])
            for i in range(3) for layer in range(len(model.latent_dims))]
    save_grid(directory / "layers.png", np.concatenate(rows), columns=10, scale=2)
    if hasattr(model, "inpaint"):  # an amortised encoder cannot condition on a mask
        mask = np.ones(x.shape[1:], "float32")
        mask[x.shape[1] // 2 :] = 0.0  # the lower half is missing
        filled = model.inpaint(x[:8], mask, seed=seed)
        blended = mask * x[:8] + (1.0 - mask) * filled
        masked = mask * x[:8] + (1.0 - mask) * -1.0
        save_grid(directory / "inpainting.png", np.concatenate([x[:8], masked, blended]), columns=8, scale=2)
    save_grid(directory / "interpolation.png", model.interpolate(x[:4], x[4:8], n=10, seed=seed).reshape(
        (-1,) + x.shape[1:]), columns=10, scale=2)


def test_mse(model, entry, data_path=None, seed=0):
    """Per-image reconstruction MSE on the held-out split (pixels in [-1, 1]) and the seconds it took."""
    x_test, _ = data.load(recipes.load(entry)["dataset"], "test", path=data_path)
    start = time.time()
    _, mse = model.reconstruct(x_test, seed=seed)
    return mse, time.time() - start


def export_entry(entry, epoch=None, data_path=None):
    """Writes ``zoo/<entry>`` (the LVM) and ``zoo/<entry>_vae`` (its baseline at the same update count)."""
    r = recipes.load(entry)
    epoch = last_epoch(run_dir(entry, "lvm")) if epoch is None else epoch
    x_test, _ = data.load(r["dataset"], "test", path=data_path)
    iterations = epoch * r["iterations_per_epoch"]
    dataset = data.provenance(r["dataset"], path=data_path, test_split=r["test_split"])
    evaluated = {}
    for kind in ("lvm", "vae"):  # both first: each card compares the two
        model, row = load_checkpoint(entry, kind, epoch)
        evaluated[kind] = (model, row) + test_mse(model, entry, data_path)
    results = {kind: float(value[2].mean()) for kind, value in evaluated.items()}
    for kind, (model, row, mse, seconds) in evaluated.items():
        name = entry if kind == "lvm" else f"{entry}_vae"
        staging = TemporaryDirectory(prefix="keras_shortrun_export_")  # never the run folder: train would not resume
        figures(model, x_test, Path(staging.name))
        metadata = {
            "name": name,
            "description": f"{type(model).__name__} on {r['dataset']} {r['image_size']}x{r['image_size']}",
            "dataset": dataset,
            "resolution": r["image_size"],
            "latent_dims": r["latent_dims"],
            "sigma": r["sigma"],
            "training": {
                "iterations": iterations, "batch_size": r["batch_size"], "optimizer": "Adam",
                "learning_rate": r["learning_rate"], "beta_1": r["beta_1"], "hardware": hardware(),
                "wall_time_s": round(float(row["wall_time_s"]), 1),
                "command": f"python tools/train_{entry}.py train --kind {kind} --iterations {iterations}",
                "final_loss": float(row["loss"]), "final_train_mse": float(row["mse"]),
            },
            "metrics": {"recon_mse_test": float(mse.mean()), "recon_mse_test_std": float(mse.std())},
            "evaluation": {
                "images": int(len(x_test)), "seconds": round(seconds, 1), "pixels": "[-1, 1]",
                "command": f"python tools/train_{entry}.py export --epoch {epoch}",
                "inference": "g(z_K), one K-step chain from N(0, I), seed 0" if kind == "lvm"
                else "g(encoder mean)",
            },
            "keras_version": keras.__version__,
        }
        if kind == "lvm":
            metadata["chain"] = {
                "steps": r["steps"], "initial_step_size": r["step_size"],
                "learned_step_sizes": [float(s) for s in keras.ops.convert_to_numpy(model.chain.step_size)],
                "step_size_objective": model.entropy, "init": "N(0, I)",
                "update": "z = z + (s_l^2 / 2) d log p(x, z) / dz + s_l eps",
            }
        card = Path(staging.name) / "README.md"
        card.write_text(card_text(metadata, model, results))
        extra = [card] + sorted(Path(staging.name).glob("*.png"))
        directory = save_entry(model, ROOT / "zoo" / name, metadata, extra_files=extra)
        staging.cleanup()
        pinned = {n: spec["sha256"] for n, spec in read_metadata(directory)["files"].items()}
        print(f"wrote {directory}; pin with tools/pin_zoo_hashes.py: \"sha256\": {json.dumps(pinned)}")
    return results


def card_text(metadata, model, results):
    """The entry's README, ``CARD`` filled in: what it is, how to use it, its figures, its numbers and how to
    reproduce them."""
    return CARD.read_text().format(**flat_card_fields(metadata, model, results))


def flat_card_fields(metadata, model, results):
    """``CARD``'s fields; the parts that differ between an LVM and its VAE baseline come in written out."""
    t, m, e = metadata["training"], metadata["metrics"], metadata["evaluation"]
    is_lvm = isinstance(model, MultiLayerLVM)
    entry = metadata["name"].removesuffix("_vae")
    comparison = (
        f"| reconstruction MSE, short-run inference (`{entry}`) | {results['lvm']:.4f} |\n"
        f"| reconstruction MSE, VAE baseline (`{entry}_vae`) | {results['vae']:.4f} |"
        if "vae" in results else ""
    )
    inpainting = (
        "## Inpainting (lower half missing): originals, inputs, completions\n![inpainting](inpainting.png)\n"
        if is_lvm else ""
    )
    return dict(
        name=metadata["name"], what=model_text(metadata, entry, is_lvm), dataset=metadata["dataset"]["name"],
        resolution=metadata["resolution"], test_split=metadata["dataset"]["test_split"], inpainting=inpainting,
        images=e["images"], recon_mse=m["recon_mse_test"], recon_std=m["recon_mse_test_std"],
        inference=e["inference"], inception=inception_rows(metadata), comparison=comparison,
        iterations=t["iterations"], batch_size=t["batch_size"], lr=t["learning_rate"], beta_1=t["beta_1"],
        hardware=t["hardware"], wall_time_min=t["wall_time_s"] / 60, train_command=t["command"],
        eval_command=e["command"], licence=metadata["dataset"]["licence"],
    )


def model_text(metadata, entry, is_lvm):
    """The card's first paragraph: the LVM and its learned chain, or what the VAE baseline shares with it."""
    if not is_lvm:
        return (
            f"The VAE baseline of `{entry}`: the same generator ({metadata['latent_dims']}, sigma="
            f"{metadata['sigma']}), data, batch size, optimiser and number of updates, with an amortised "
            f"convolutional encoder in place of short-run inference."
        )
    c = metadata["chain"]
    return (
        f"A multi-layer latent variable model (Nijkamp et al., ECCV 2020): a top-down generator with latent "
        f"layers {metadata['latent_dims']} (top first), posterior inferred by K={c['steps']} steps of "
        f"Langevin dynamics from N(0, I), sigma={metadata['sigma']}. Step sizes learned by minimising "
        f"KL(q_s || p(z|x)) ({c['step_size_objective']} log q_s): started at {c['initial_step_size']}, ended at "
        f"{', '.join(f'{s:.4f}' for s in c['learned_step_sizes'])} (top to bottom)."
    )


def rewrite_cards(entry):
    """Renders the cards of ``zoo/<entry>`` and ``zoo/<entry>_vae`` again from their metadata (e.g. after
    ``tools/eval_zoo.py --inception --write-metadata`` added the Inception FID and face rate)."""
    names = {"lvm": entry, "vae": f"{entry}_vae"}
    metadata = {kind: read_metadata(ROOT / "zoo" / name) for kind, name in names.items()}
    results = {kind: meta["metrics"]["recon_mse_test"] for kind, meta in metadata.items()}
    for kind, name in names.items():
        card = ROOT / "zoo" / name / "README.md"
        card.with_suffix(".tmp.md").write_text(card_text(metadata[kind], load_entry(ROOT / "zoo" / name), results))
        card.with_suffix(".tmp.md").replace(card)


def main(entry, doc):
    """Command line of ``tools/train_<entry>.py``."""
    import argparse

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("train", "export", "card"))
    parser.add_argument("--kind", choices=("lvm", "vae"), default="lvm")
    parser.add_argument("--iterations", type=int, default=recipes.load(entry)["iterations"])
    parser.add_argument("--data-path", default=None)
    parser.add_argument("--epoch", type=int, default=None, help="snapshot to export (default: the last)")
    args = parser.parse_args()
    if args.action == "train":
        train(entry, args.kind, args.iterations, args.data_path)
    elif args.action == "card":
        rewrite_cards(entry)
    else:
        export_entry(entry, args.epoch, args.data_path)
