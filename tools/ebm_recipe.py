"""Shared recipe code for the EBM zoo entries (``tools/train_<entry>.py``)."""

import json
import platform
from pathlib import Path

import keras

from keras_shortrun import data
from keras_shortrun.models import ShortRunEBM
from keras_shortrun.training import fit_resumable

RECIPES = {
    "mnist_ebm": {
        "dataset": "mnist",
        "image_size": 28,
        "channels": 1,
        "filters": 16,
        "steps": 50,
        "batch_size": 64,
        "learning_rate": 2e-4,
        "beta_1": 0.9,
        "iterations": 3000,
        "iterations_per_epoch": 100,
        "seed": 0,
    },
}


def build(entry):
    r = RECIPES[entry]
    return ShortRunEBM.with_convnet(
        image_size=r["image_size"], channels=r["channels"], filters=r["filters"], steps=r["steps"], seed=r["seed"]
    )


def train(entry, run_dir, iterations, data_path=None):
    r = RECIPES[entry]
    x, _ = data.load_npz(r["dataset"], "train", path=data_path)
    model = build(entry)
    fit_resumable(
        model, x, run_dir, iterations, batch_size=r["batch_size"],
        iterations_per_epoch=r["iterations_per_epoch"], learning_rate=r["learning_rate"],
        beta_1=r["beta_1"], seed=r["seed"], verbose=2,
    )
    model.save_weights(Path(run_dir) / "final.weights.h5")
    return model


def export_entry(entry, run_dir, entry_dir, data_path=None):
    raise NotImplementedError  # filled in below
