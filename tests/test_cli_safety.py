"""The CLI and the writers it drives never write into a user's folder or file, and answer a user's mistake
(a model of the wrong family, a dataset without labels, one path given twice, a backend that cannot export,
a request too large for memory) with one line and exit status 2, before any work. The folder loader never
drops images without a word. Tiny models and fakes throughout."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from builders import tiny_ebm
from builders import tiny_images
from conftest import EXPORTS
from conftest import ROOT
from PIL import Image

import keras_shortrun.export.artifacts as artifacts
from keras_shortrun import cli
from keras_shortrun import data
from keras_shortrun import export
from keras_shortrun import zoo


def never(*args, **kwargs):
    raise AssertionError("work was done before the arguments were checked")


def tree(directory):
    return {p.relative_to(directory): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def one_line_error(capsys, message):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert re.search(message, err), err
    return err


@pytest.fixture
def plain_keras_file(tmp_path):
    """A plain Keras model saved with ``model.save``: not a keras_shortrun family."""
    path = tmp_path / "plain.keras"
    keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(10)]).save(path)
    return path


# 1. train --out: absent, empty or a run folder of ours ------------------------------------------------------
TRAIN = ["train", "ebm", "--set", "filters=2", "--set", "steps=1", "--iterations", "1",
         "--set", "iterations_per_epoch=1", "--set", "batch_size=2"]


def tiny_dataset(*args, **kwargs):
    """``data.load``'s stand-in: 4 images, no labels."""
    return tiny_images(4), None


@pytest.mark.parametrize("files", [
    {"model.keras": b"my model", "log.csv": b"epoch,loss\n0,1.0\n", "wall_time.json": b'{"hours": 3}'},
    {"wall_time.json": b'{"epochs": 2}'},  # no wall_time_s: was a KeyError traceback after the data load
    {"notes.txt": b"mine"},
])
def test_train_refuses_a_users_folder_before_loading_data(tmp_path, files, capsys, monkeypatch):
    out = tmp_path / "mine"
    out.mkdir()
    for name, content in files.items():
        (out / name).write_bytes(content)
    before = tree(out)
    monkeypatch.setattr(data, "load", never)
    assert cli.main(TRAIN + ["--out", str(out)]) == 2
    one_line_error(capsys, f"--out {re.escape(str(out))} .*not a run folder of keras-shortrun train")
    assert tree(out) == before


def test_train_refuses_a_file_as_out(tmp_path, capsys, monkeypatch):
    (tmp_path / "run").write_text("mine")
    monkeypatch.setattr(data, "load", never)
    assert cli.main(TRAIN + ["--out", str(tmp_path / "run")]) == 2
    one_line_error(capsys, "is not a folder")
    assert (tmp_path / "run").read_text() == "mine"


def test_train_resumes_its_own_run_folder_only(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()  # an empty folder is fine
    monkeypatch.setattr(data, "load", tiny_dataset)
    assert cli.main(TRAIN + ["--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {"backup", "checkpoints", "samples", "log.csv", "wall_time.json",
                                               "model.keras", "recipe.json", "hardware.json"}
    assert cli.main(TRAIN + ["--out", str(out), "--iterations", "2"]) == 0  # resumes after epoch 1
    capsys.readouterr()
    (out / "notes.txt").write_text("mine")  # a run folder with a user's file in it
    assert cli.main(TRAIN + ["--out", str(out), "--iterations", "3"]) == 2
    one_line_error(capsys, r"not a run folder of keras-shortrun train .*notes\.txt")
    (out / "notes.txt").unlink()
    wall_time = (out / "wall_time.json").read_text()
    (out / "wall_time.json").write_text('{"epochs": 2}')  # ours by name, but not what WallClock reads
    assert cli.main(TRAIN + ["--out", str(out), "--iterations", "3"]) == 2
    one_line_error(capsys, r"wall_time\.json .*wall_time_s")
    (out / "wall_time.json").write_text(wall_time)
    (out / "samples" / "holiday.jpg").write_bytes(b"mine")  # a user's file inside one of our folders
    assert cli.main(TRAIN + ["--out", str(out), "--iterations", "3"]) == 2
    one_line_error(capsys, r"holiday\.jpg")


@pytest.mark.parametrize("files, ours", [
    ({"log.csv": b""}, True),  # a run stopped in its first epoch: CSVLogger opened the log, nothing else
    ({"log.csv": b"", "backup/settings.json": b'{"data": "arrays", "iterations_per_epoch": 1}'}, True),
    ({"log.csv": b"", "backup/.state-0.partial.weights.h5": b"cut short"}, True),
    ({"log.csv": b"epoch,loss\n0,1.0\n"}, False),  # a user's log: it would be appended to
    ({"backup/settings.json": b'{"mine": 1}'}, False),
    ({"log.csv": b"", "checkpoints/epoch_0001.weights.h5": b"", "checkpoints/mine.h5": b""}, False),
    ({"results.json": b"{}", ".results.json.lock": b"", "robustness_cache/chunk.json": b"[]"},
     True),  # the evaluation tools' records
    ({"results.json/mine.txt": b""}, False),  # a folder of that name is not their record
])
def test_check_run_folder_decides_ours_by_name_and_record(tmp_path, files, ours):
    for name, content in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(content)
    if ours:
        cli.check_run_folder(tmp_path)
    else:
        with pytest.raises(ValueError, match="not a run folder of keras-shortrun train"):
            cli.check_run_folder(tmp_path)


# 2. export_entry: never into a user's folder; the manifest written atomically -------------------------------------
@pytest.fixture
def fake_exporter(monkeypatch):
    """export_entry with to_onnx, timings and graphs faked: only its own file handling runs."""
    written = []

    def to_onnx(model, path, graph=None, **kwargs):
        path.write_bytes(b"onnx " + graph.encode())
        written.append(path.name)
        return {"steps": 1, "noise": "input", "chains": None, "inputs": [], "outputs": [], "rewrites": {},
                "max_abs_error": 0.0}

    monkeypatch.setattr(artifacts, "to_onnx", to_onnx)
    monkeypatch.setattr(artifacts, "build_graph", lambda model, name: name)
    monkeypatch.setattr(artifacts, "time_graph", lambda *a, **k: {"tensorflow_s": 1.0, "onnxruntime_file_all_s": 0.5})
    return written


@pytest.mark.parametrize("files", [
    {"manifest.json": b'{"my": "notes"}'},
    {"manifest.json": b"not json at all"},
    {"thesis.tex": b"three years of work"},
    {"sampler.onnx": b"my own graph"},  # named like a graph, but not one keras_shortrun wrote
])
def test_export_entry_refuses_a_folder_that_is_not_an_export(tmp_path, files, fake_exporter):
    out = tmp_path / "e"
    out.mkdir()
    for name, content in files.items():
        (out / name).write_bytes(content)
    with pytest.raises(FileExistsError, match="refusing"):
        export.export_entry(tiny_ebm(steps=1, filters=2), out)
    assert tree(out) == {Path(name): content for name, content in files.items()}
    assert fake_exporter == []  # refused before any graph was written


def test_export_entry_replaces_its_manifest_atomically(tmp_path, fake_exporter):
    out = tmp_path / "e"
    first = export.export_entry(tiny_ebm(steps=1, filters=2), out)
    assert fake_exporter == ["sampler.onnx", "chain.onnx"] and first["family"] == "ShortRunEBM"
    for name in ("sampler.onnx", "chain.onnx"):  # what to_onnx wrote, as keras_shortrun ONNX graphs
        real_onnx_graph(out / name)
    inode = (out / export.MANIFEST).stat().st_ino
    os.link(out / export.MANIFEST, tmp_path / "hard_link.json")  # another name for the same bytes
    export.export_entry(tiny_ebm(steps=1, filters=2), out, extra={"machine": "second run"})
    assert json.loads((out / export.MANIFEST).read_text())["machine"] == "second run"
    assert (out / export.MANIFEST).stat().st_ino != inode  # a new file renamed into place, not rewritten
    assert "machine" not in json.loads((tmp_path / "hard_link.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == ["chain.onnx", "manifest.json", "sampler.onnx"]


def real_onnx_graph(path):
    """Writes a one-node ONNX graph carrying keras_shortrun's metadata at ``path``."""
    import onnx
    from onnx import TensorProto
    from onnx import helper

    from keras_shortrun.serving import METADATA_KEY

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    proto = helper.make_model(graph)
    helper.set_model_props(proto, {METADATA_KEY: "{}"})
    onnx.save(proto, str(path))


# 3. One line, exit 2, before any work ---------------------------------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["sample", "{plain}", "-o", "{tmp}/x.png"],
     r"plain\.keras is a plain Keras model .*sample takes .*ShortRunEBM"),
    (["sample", "mnist_classifier_convnet", "-o", "{tmp}/x.png"],
     "mnist_classifier_convnet is a ConvNet.*sample takes .*ShortRunEBM, MultiLayerLVM, VAE"),
    (["interpolate", "mnist_classifier_convnet", "-o", "{tmp}/x.png"],
     "mnist_classifier_convnet is a ConvNet.*interpolate takes .*ShortRunEBM"),
    (["reconstruct", "mnist_classifier_convnet"], "mnist_classifier_convnet is a ConvNet.*reconstruct takes"),
    (["sample", "celeba_features", "-o", "{tmp}/x.png"], "celeba_features is a FeatureNet.*sample takes"),
    (["interpolate", "mnist_lvm", "-o", "{tmp}/x.png"], r"mnist_lvm is a MultiLayerLVM.*model\.interpolate"),
    pytest.param(["export", "{plain}", "-o", "{tmp}/x.onnx"], r"plain\.keras is a plain Keras model .*export takes "
                 ".*ShortRunEBM, MultiLayerLVM, VAE, GenerativeClassifier", marks=EXPORTS),
    pytest.param(["export", "mnist_classifier_convnet", "-o", "{tmp}/x.onnx"],
                 "mnist_classifier_convnet is a ConvNet.*export", marks=EXPORTS),
    (["classify", "mnist_ebm"], "mnist_ebm is a ShortRunEBM.*classify takes .*GenerativeClassifier"),
    (["classify", "celeba_features"], "celeba_features is a FeatureNet.*classify takes"),
    (["sample", "mnist_ebm", "-o", "{tmp}/x.gif", "--gif", "{tmp}/x.gif"], "-o and --gif .*same file"),
    (["sample", "mnist_lvm", "-o", "{tmp}/x.png", "--gif", "{tmp}/x.gif"], "ancestrally"),
])
def test_cli_refuses_the_wrong_model_in_one_line_before_loading_it(tmp_path, plain_keras_file, args, message,
                                                                    capsys, monkeypatch):
    monkeypatch.setattr(zoo, "load", never)
    monkeypatch.setattr(cli, "_load", never)
    args = [a.replace("{tmp}", str(tmp_path)).replace("{plain}", str(plain_keras_file)) for a in args]
    assert cli.main(args) == 2
    one_line_error(capsys, message)
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "x.gif").exists()


def test_classify_refuses_a_dataset_without_labels_before_loading_the_model(capsys, monkeypatch):
    monkeypatch.setattr(data, "load", lambda *a, **k: (np.zeros((3, 64, 64, 3), "float32"), None))
    monkeypatch.setattr(zoo, "load", never)
    monkeypatch.setattr(cli, "_load", never)
    assert cli.main(["classify", "mnist_classifier_convnet", "--data", "celeba"]) == 2
    one_line_error(capsys, "celeba/test has no labels")


def test_classify_refuses_a_keras_model_that_is_not_a_classifier(tmp_path, capsys, monkeypatch):
    path = tmp_path / "autoencoder.keras"
    keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Conv2D(1, 3, padding="same")]).save(path)
    monkeypatch.setattr(data, "load", lambda *a, **k: (np.zeros((3, 28, 28, 1), "float32"), np.arange(3)))
    assert cli.main(["classify", str(path)]) == 2
    one_line_error(capsys, r"autoencoder\.keras is not a classifier: its output has shape \(None, 28, 28, 1\)")


def test_serve_onnx_too_large_a_request_is_one_line(tmp_path, capsys):
    args = ["serve-onnx", str(ROOT / "export" / "mnist_ebm" / "sampler.onnx"), "-n", "2000000000",
            "-o", str(tmp_path / "x.png")]
    assert cli.main(args) == 2
    one_line_error(capsys, r"keras-shortrun: error: sample\(n=2000000000\) needs about .* GiB")


@EXPORTS
def test_an_export_error_is_one_line(tmp_path, capsys, monkeypatch):
    entry = zoo.save_entry(tiny_ebm(steps=1, filters=2), tmp_path / "tiny", {"name": "tiny"})

    def fails(*args, **kwargs):
        raise export.ExportError("tf2onnx left TensorFlow ops ['Foo'] in the 'sampler' graph")

    monkeypatch.setattr(export, "to_onnx", fails)
    assert cli.main(["export", str(entry), "-o", str(tmp_path / "x.onnx")]) == 2
    one_line_error(capsys, "keras-shortrun: error: tf2onnx left TensorFlow ops")


def test_export_on_another_backend_is_one_line_before_loading(tmp_path):
    code = ("import sys; from keras_shortrun import cli, zoo\n"
            "def never(*a, **k): raise AssertionError('loaded')\n"
            "zoo.load = cli._load = never\n"
            f"sys.exit(cli.main(['export', 'mnist_ebm', '-o', {str(tmp_path / 'x.onnx')!r}]))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300,
                            env=dict(os.environ, KERAS_BACKEND="jax", PYTHONPATH=str(ROOT)))
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("keras-shortrun")]
    assert "Traceback" not in result.stderr and len(lines) == 1, result.stderr
    assert re.search("export .*TensorFlow backend.*'jax'.*KERAS_BACKEND=tensorflow", lines[0]), lines[0]


# 4. The folder loader never drops images without a word -----------------------------------------------------
def write_png(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(path)


@pytest.mark.parametrize("beside", ["a.png", "2/b.png", "extra/deeper/c.png"])
def test_folder_refuses_images_beside_the_split_folders(tmp_path, beside):
    for name in ("train/1/a.png", "train/1/b.png", "test/1/a.png", beside):
        write_png(tmp_path / name)
    ignored = beside.split("/")[0]
    with pytest.raises(ValueError, match=f"{re.escape(str(tmp_path / ignored))}.* beside the split folders"):
        data.load("mnist", "train", source="folder", path=tmp_path)


def test_folder_split_names_are_case_insensitive(tmp_path):
    for name in ("Train/3/a.png", "Train/3/b.png", "Train/5/c.png", "TEST/5/d.png"):
        write_png(tmp_path / name)
    x, y = data.load("mnist", "train", source="folder", path=tmp_path)
    assert len(x) == 3 and y.tolist() == [3, 3, 5]  # the test split is not a class of the train split
    x, y = data.load("mnist", "test", source="folder", path=tmp_path)
    assert len(x) == 1 and y.tolist() == [5]
    if (tmp_path / "train").exists():  # a case-insensitive file system: Train is train
        return
    write_png(tmp_path / "train" / "3" / "e.png")
    with pytest.raises(ValueError, match="Train.* and .*train.* are both the 'train' split"):
        data.load("mnist", "train", source="folder", path=tmp_path)
