"""The keras-shortrun command: sampling to PNG/GIF, interpolation, zoo listing, errors, resumable training."""

import csv

import numpy as np
import pytest
from builders import tiny_ebm
from PIL import Image

from keras_shortrun import cli
from keras_shortrun import zoo
from keras_shortrun.models import ShortRunEBM


@pytest.fixture(scope="module")
def entry(tmp_path_factory):
    model = tiny_ebm(steps=6, seed=2)
    return zoo.save_entry(model, tmp_path_factory.mktemp("zoo") / "tiny", {"name": "tiny"})


def test_sample_writes_grid_and_gif(entry, tmp_path):
    png, gif = tmp_path / "grid.png", tmp_path / "chain.gif"
    assert cli.main(["sample", str(entry), "-n", "9", "-o", str(png), "--gif", str(gif), "--scale", "1"]) == 0
    grid = np.asarray(Image.open(png))
    assert grid.shape == (3 * 10 + 2, 3 * 10 + 2)  # 3x3 tiles of 8 px with 2 px padding, grayscale
    frames = Image.open(gif)
    assert frames.n_frames == 7  # x0 plus one frame per step (K=6, every max(1, 6 // 25) = 1)


def test_sample_is_reproducible_with_seed(entry, tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    for path in (a, b):
        cli.main(["sample", str(entry), "-n", "4", "-o", str(path), "--seed", "7"])
    assert a.read_bytes() == b.read_bytes()


def test_interpolate_writes_strips(entry, tmp_path):
    out = tmp_path / "interp.png"
    assert cli.main(["interpolate", str(entry), "-n", "5", "--rows", "2", "-o", str(out), "--scale", "1"]) == 0
    assert np.asarray(Image.open(out)).shape == (2 * 10 + 2, 5 * 10 + 2)


def test_zoo_list_and_info(capsys):
    assert cli.main(["zoo", "list"]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split() == ["entry", "family", "dataset", "resolution", "params", "K", "metrics",
                                             "training", "hardware"]
    assert "mnist_ebm" in table
    assert cli.main(["zoo", "info", "mnist_ebm"]) == 0
    assert '"sha256"' in capsys.readouterr().out


def test_unknown_model_is_a_clear_error(capsys):
    assert cli.main(["sample", "mnist_ebmm", "-o", "never.png"]) == 2
    assert "Did you mean 'mnist_ebm'" in capsys.readouterr().err


def test_train_resumes_after_interruption(shared_data, tmp_path):
    out = tmp_path / "run"
    common = ["train", "ebm", "--set", "dataset=mnist", "--data-path", str(shared_data), "--out", str(out),
              "--set", "filters=4", "--set", "steps=2", "--set", "iterations_per_epoch=1", "--set", "batch_size=16"]
    assert cli.main(common + ["--iterations", "2"]) == 0
    assert cli.main(common + ["--iterations", "3"]) == 0  # picks up after epoch 2
    with open(out / "log.csv") as f:
        epochs = [int(row["epoch"]) for row in csv.DictReader(f)]
    assert epochs == [0, 1, 2]
    assert sorted(p.name for p in (out / "samples").iterdir()) == [f"samples_000{i}.png" for i in (1, 2, 3)]
    assert (out / "model.keras").is_file() and (out / "backup").is_dir()


def test_reconstruct_reports_mse_and_writes_pairs(shared_data, tmp_path, capsys):
    model = ShortRunEBM.with_convnet(image_size=28, channels=1, filters=4, steps=3, seed=0)
    entry = zoo.save_entry(model, tmp_path / "tiny28", {"name": "tiny28"})
    out = tmp_path / "recon.png"
    args = ["reconstruct", str(entry), "--data", "mnist", "--data-path", str(shared_data), "-n", "4",
            "--iterations", "3", "-o", str(out), "--scale", "1"]
    assert cli.main(args) == 0
    report = capsys.readouterr().out
    assert "reconstruction MSE over 4 mnist/test images" in report
    mse = float(report.split("images: ")[1].split()[0])
    assert 0.0 < mse < 4.0  # pixels in [-1, 1]: squared error is at most 4
    assert np.asarray(Image.open(out)).shape == (30 + 2, 8 * 30 + 2)  # 8 tiles (4 pairs) in one row of 16


def test_train_lvm_then_sample_and_reconstruct(shared_data, tmp_path, capsys):
    out = tmp_path / "lvm"
    args = ["train", "lvm", "--data-path", str(shared_data), "--out", str(out), "--set", "latent_dims=[2,3]",
            "--set", "width=8", "--set", "steps=2", "--set", "iterations_per_epoch=1", "--set", "batch_size=8",
            "--iterations", "2", "--set", "step_size_every=1"]
    assert cli.main(args) == 0
    model_file = str(out / "model.keras")
    png = tmp_path / "lvm.png"
    assert cli.main(["sample", model_file, "-n", "4", "-o", str(png), "--scale", "1"]) == 0
    assert np.asarray(Image.open(png)).shape == (2 * 30 + 2, 2 * 30 + 2)
    assert cli.main(["sample", model_file, "--gif", str(tmp_path / "x.gif")]) == 2
    assert "ancestrally" in capsys.readouterr().err
    assert cli.main(["reconstruct", model_file, "--data", "mnist", "--data-path", str(shared_data), "-n", "4"]) == 0
    assert "reconstruction MSE over 4 mnist/test images" in capsys.readouterr().out


def test_classify_scores_a_generative_classifier_and_a_convnet(shared_data, tmp_path, capsys):
    from keras_shortrun.models import ConvTransposeGenerator
    from keras_shortrun.models import GenerativeClassifier
    from keras_shortrun.models import conv_net_baseline
    from keras_shortrun.models import mlp_head
    from keras_shortrun.models import thesis_chain

    generative = GenerativeClassifier(ConvTransposeGenerator(8, 1, (4, 4, 2)), mlp_head(8, 10, (6,)), 10,
                                      chain=thesis_chain(2), seed=0)
    for name, model in (("gc", generative), ("cnn", conv_net_baseline())):
        path = tmp_path / f"{name}.keras"
        model.save(path)
        assert cli.main(["classify", str(path), "--data", "mnist", "-n", "20", "--chains", "2"]) == 0
        out = capsys.readouterr().out
        assert "accuracy on 20 mnist/test images" in out
        assert ("2 chains per image" in out) == (name == "gc")
