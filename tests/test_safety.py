"""Safety: loading runs no foreign code and uses exactly the verified bytes; writers never delete a user's files;
the CLI answers a user's mistake with one line and exit status 2, before any work."""

import hashlib
import json
import re
import subprocess
import sys
import threading

import h5py
import keras
import numpy as np
import pytest
from builders import tiny_ebm
from conftest import EXPORTS
from conftest import ROOT
from conftest import run_python

from keras_shortrun import cli
from keras_shortrun import export
from keras_shortrun import zoo
from keras_shortrun.saving import UnsafeModelError
from keras_shortrun.saving import load_keras_file


def pin(directory):
    """Rewrites ``metadata.json`` so that it records the current sha256 of config and weights."""
    metadata = json.loads((directory / "metadata.json").read_text())
    for name in ("config.json", "model.weights.h5"):
        metadata["files"][name]["sha256"] = hashlib.sha256((directory / name).read_bytes()).hexdigest()
    (directory / "metadata.json").write_text(json.dumps(metadata))


def tree(directory):
    return {p.relative_to(directory): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture
def unsafe_process():
    """``keras.config.enable_unsafe_deserialization()`` as some other code in the process might call it."""
    from keras.src.backend.common import global_state

    before = global_state.get_global_attribute("safe_mode_saving")
    keras.config.enable_unsafe_deserialization()
    yield
    global_state.set_global_attribute("safe_mode_saving", before)


def code_carrying_model(marker):
    """A Sequential whose Lambda writes ``marker`` whenever it runs (Keras runs it while rebuilding the model)."""
    body = eval(f"lambda x: (__import__('pathlib').Path({str(marker)!r}).write_text('ran'), x)[1]")  # noqa: S307
    return keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Lambda(body), keras.layers.Flatten(),
                             keras.layers.Dense(1)])


# Foreign code ----------------------------------------------------------------------------------------------
def test_a_lambda_in_an_entry_is_refused_by_name_even_when_unsafe_mode_is_on(tmp_path, unsafe_process):
    marker = tmp_path / "marker"
    entry = zoo.save_entry(tiny_ebm(steps=2), tmp_path / "entry", {"name": "entry"})
    (entry / "config.json").write_text(json.dumps(keras.saving.serialize_keras_object(code_carrying_model(marker))))
    marker.unlink()  # building the model above ran the lambda once
    pin(entry)
    with pytest.raises(UnsafeModelError, match="Lambda"):
        zoo.load(entry)
    assert not marker.exists()


@pytest.mark.parametrize("node", [
    {"module": "os", "class_name": "system", "config": {}, "registered_name": None},
    {"module": "keras.utils", "class_name": "function", "config": "get_file", "registered_name": None},
    {"module": "evil", "class_name": "Layer", "config": {}, "registered_name": "keras_shortrun>NotOurs"},
])
def test_a_config_naming_an_unknown_class_is_refused_by_name(tmp_path, node):
    entry = zoo.save_entry(tiny_ebm(steps=2), tmp_path / "entry", {"name": "entry"})
    config = json.loads((entry / "config.json").read_text())
    config["config"]["energy"] = node
    (entry / "config.json").write_text(json.dumps(config))
    pin(entry)
    with pytest.raises(UnsafeModelError, match=f"{node['module']}.{node['class_name']}"):
        zoo.load(entry)


def test_a_keras_file_with_a_lambda_is_refused_by_the_cli_too(tmp_path, unsafe_process, capsys):
    marker = tmp_path / "marker"
    path = tmp_path / "model.keras"
    code_carrying_model(marker).save(path)
    marker.unlink()
    with pytest.raises(UnsafeModelError, match="Lambda"):
        load_keras_file(path)
    assert cli.main(["sample", str(path), "-n", "1", "-o", str(tmp_path / "x.png")]) == 2
    assert "Lambda" in capsys.readouterr().err
    assert not marker.exists()


# Exactly the verified bytes ---------------------------------------------------------------------------------
def test_weights_swapped_after_the_check_are_never_loaded(tmp_path):
    """``model.weights.h5`` is a link that another thread flips between the pinned weights and foreign ones,
    as fast as it can, while the entry is loaded 40 times: every load gets the pinned weights or refuses."""
    entry = zoo.save_entry(tiny_ebm(steps=2, seed=0), tmp_path / "entry", {"name": "entry"})
    good, foreign = entry / "good.h5", entry / "foreign.h5"
    (entry / "model.weights.h5").rename(good)
    other = tiny_ebm(steps=2, seed=1)
    other.set_weights([w + 1.0 for w in other.get_weights()])
    other.save_weights(tmp_path / "foreign.weights.h5")
    (tmp_path / "foreign.weights.h5").rename(foreign)
    link = entry / "model.weights.h5"
    link.symlink_to(good.name)
    expected = [w.copy() for w in zoo.load(entry).get_weights()]
    stop = threading.Event()

    def flip():
        staged = entry / "staged"
        while not stop.is_set():
            for target in (foreign, good):
                staged.unlink(missing_ok=True)
                staged.symlink_to(target.name)
                staged.replace(link)

    flipper = threading.Thread(target=flip)
    flipper.start()
    outcomes = []
    try:
        # 40 loads at least, and on until both sides of the flip were seen (a busy machine may schedule the
        # flipper so that one side wins many loads in a row), 400 at most.
        while len(outcomes) < 40 or ({"pinned", "refused"} - set(outcomes) and len(outcomes) < 400):
            try:
                weights = zoo.load(entry).get_weights()
            except zoo.ZooIntegrityError:
                outcomes.append("refused")
                continue
            same = all(np.array_equal(a, b) for a, b in zip(weights, expected))
            outcomes.append("pinned" if same else "FOREIGN")
    finally:
        stop.set()
        flipper.join()
    assert "FOREIGN" not in outcomes, outcomes
    assert "pinned" in outcomes and "refused" in outcomes  # the race was real: both sides of the flip were seen


def test_a_link_out_of_the_entry_folder_is_refused(tmp_path):
    entry = zoo.save_entry(tiny_ebm(steps=2), tmp_path / "entry", {"name": "entry"})
    outside = tmp_path / "elsewhere.h5"
    (entry / "model.weights.h5").rename(outside)
    (entry / "model.weights.h5").symlink_to(outside)
    with pytest.raises(zoo.ZooIntegrityError, match="outside"):
        zoo.load(entry)


# Never a user's files ---------------------------------------------------------------------------------------
def user_folder(path):
    path.mkdir()
    (path / "thesis.tex").write_text("three years of work")
    return path


def test_save_entry_refuses_a_folder_that_is_not_an_entry(tmp_path):
    folder = user_folder(tmp_path / "mine")
    with pytest.raises(FileExistsError, match="not a zoo entry"):
        zoo.save_entry(tiny_ebm(steps=2), folder, {})
    assert (folder / "thesis.tex").read_text() == "three years of work"


def test_save_entry_replaces_its_own_entry_and_spares_a_neighbour_named_like_its_backup(tmp_path):
    entry = zoo.save_entry(tiny_ebm(steps=2, seed=0), tmp_path / "entry", {"name": "entry"})
    neighbour = user_folder(tmp_path / "entry.old")
    zoo.save_entry(tiny_ebm(steps=2, seed=1), entry, {"name": "entry"})
    assert (neighbour / "thesis.tex").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry", "entry.old"]
    (entry / "notes.txt").write_text("mine")  # an entry that holds a file of the user's is no longer replaced
    with pytest.raises(FileExistsError, match="notes.txt"):
        zoo.save_entry(tiny_ebm(steps=2, seed=2), entry, {"name": "entry"})


def test_save_entry_replaces_the_extra_files_it_wrote_and_no_others(tmp_path):
    card, figure = tmp_path / "README.md", tmp_path / "samples.png"
    card.write_text("# card")
    figure.write_bytes(b"png")
    entry = zoo.save_entry(tiny_ebm(steps=2, seed=0), tmp_path / "entry", {"name": "entry"}, extra_files=[card, figure])
    assert zoo.info(entry)["extra_files"] == ["README.md", "samples.png"]
    zoo.save_entry(tiny_ebm(steps=2, seed=1), entry, {"name": "entry"}, extra_files=[card])  # its own figure may go
    assert sorted(p.name for p in entry.iterdir()) == ["README.md", "config.json", "metadata.json", "model.weights.h5"]
    (entry / "notes.md").write_text("mine")  # named like a card, but not one the entry wrote
    (entry / "plot.png").write_bytes(b"mine")
    with pytest.raises(FileExistsError, match="notes.md, plot.png"):
        zoo.save_entry(tiny_ebm(steps=2, seed=2), entry, {"name": "entry"}, extra_files=[card])
    assert (entry / "notes.md").read_text() == "mine" and (entry / "plot.png").read_bytes() == b"mine"


@EXPORTS
def test_saved_model_export_refuses_a_users_folder_and_overwrites_its_own_only_when_asked(tmp_path):
    folder = user_folder(tmp_path / "mine")
    with pytest.raises(FileExistsError, match="not a keras_shortrun SavedModel"):
        export.to_saved_model(tiny_ebm(steps=2), folder, steps=1)
    assert tree(folder) == {folder.joinpath("thesis.tex").relative_to(folder): b"three years of work"}
    ours = tmp_path / "sampler"
    export.to_saved_model(tiny_ebm(steps=2), ours, steps=1)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export.to_saved_model(tiny_ebm(steps=2), ours, steps=1)
    export.to_saved_model(tiny_ebm(steps=2), ours, steps=2, overwrite=True)
    assert json.loads((ours / "keras_shortrun.json").read_text())["steps"] == 2


def test_onnx_export_refuses_a_file_that_is_not_its_graph(tmp_path):
    precious = tmp_path / "precious.onnx"
    precious.write_text("not a graph")
    with pytest.raises(FileExistsError, match="not an ONNX graph written by keras_shortrun"):
        export.to_onnx(tiny_ebm(steps=2), precious, overwrite=True)
    assert precious.read_text() == "not a graph"


@EXPORTS
def test_cli_export_never_deletes_a_users_folder(tmp_path, capsys):
    entry = zoo.save_entry(tiny_ebm(steps=2), tmp_path / "entry", {"name": "entry"})
    folder = user_folder(tmp_path / "mine")
    for extra in ([], ["--overwrite"]):
        args = ["export", str(entry), "--format", "saved_model", "-o", str(folder), "--steps", "1"]
        assert cli.main(args + extra) == 2
        assert "refusing to replace it" in capsys.readouterr().err
    assert (folder / "thesis.tex").read_text() == "three years of work"


# Wrong answers without a word -------------------------------------------------------------------------------
def test_predict_checks_every_array_type(tmp_path):
    import tensorflow as tf

    model = zoo.load("mnist_classifier")
    pixels = np.full((2, 28, 28, 1), 200.0, "float32")
    for array in (tf.constant(pixels), pixels.tolist(), keras.ops.convert_to_tensor(pixels)):
        with pytest.raises(ValueError, match="to_model_range"):
            model.predict(array, verbose=0)
        with pytest.raises(ValueError, match="to_model_range"):
            model.evaluate(array, np.array([1, 2]), verbose=0)
    with pytest.raises(ValueError, match="to_model_range"):
        tiny_ebm(steps=2).fit(tf.constant(np.full((4, 8, 8, 1), 255.0, "float32")), epochs=1, verbose=0)


@pytest.mark.parametrize("learning_rate", [-0.5, 0.0, float("nan"), float("inf"), "0.1", True])
def test_reconstruct_refuses_a_learning_rate_that_cannot_descend(learning_rate):
    with pytest.raises(ValueError, match="learning_rate must be a finite number above 0"):
        tiny_ebm(steps=2).reconstruct(np.zeros((1, 8, 8, 1), "float32"), iterations=1, learning_rate=learning_rate)


# The CLI: one line, exit 2, before any work -----------------------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["classify", "mnist_classifier", "-n", "-9998"], "-n: must be a positive integer"),
    (["reconstruct", "mnist_ebm", "-n", "-9998"], "-n: must be a positive integer"),
    (["sample", "mnist_ebm", "--seed", "-1"], "--seed: must be an integer >= 0"),
    (["sample", "mnist_ebm", "--seed", str(2**64)], r"--seed: must be an integer in \[0, 2\*\*32\)"),
    (["sample", "mnist_ebm", "--steps", "nan"], "--steps: must be a positive integer"),
    (["train", "ebm", "--out", "x", "--set", "learning_rate=inf"], "learning_rate must be a finite number above 0"),
    (["train", "ebm", "--out", "x", "--set", "filter=3"], "The recipe has no field 'filter'"),
    (["train", "mnist_classifier", "--out", "x", "--set", "joint.iterations.100=0"], "joint.iterations.100 must be"),
    (["train", "mnist_ebm", "--out", "x", "--stage", "head"], "--stage and --labels are for classifier recipes"),
    (["sample", "mnist_ebm", "-o", "{tmp}/no/such/dir/x.png"], "does not exist"),
    (["sample", "mnist_ebm", "-o", "{tmp}/x.txt"], "must end in one of .png"),
    (["sample", "mnist_ebm", "-o", "{tmp}"], "must end in one of|is a directory"),
    (["sample", "mnist_ebm", "-o", "{tmp}/x.png", "--gif", "{tmp}/x.png"], "--gif .* must end in one of .gif"),
    pytest.param(["export", "mnist_ebm", "-o", "{tmp}/x.txt"], "must end in one of .onnx", marks=EXPORTS),
    pytest.param(["export", "mnist_ebm", "-o", "{tmp}/x.onnx", "--opset", "9"], "opset must be one of",
                 marks=EXPORTS),
    (["serve-onnx", "{tmp}/missing.onnx", "-o", "{tmp}/x.png"], "No ONNX file"),
])
def test_cli_user_errors_are_one_line_and_exit_2(tmp_path, args, message, capsys, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(zoo, "load", never)
    monkeypatch.setattr(cli, "_load", never)
    assert cli.main([a.replace("{tmp}", str(tmp_path)) for a in args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert re.search(message, err), err


def test_a_successful_cli_run_prints_nothing_on_stderr(tmp_path):
    result = subprocess.run([sys.executable, "-m", "keras_shortrun.cli", "sample", "mnist_ebm", "-n", "1", "-o",
                             str(tmp_path / "x.png"), "--steps", "1"], capture_output=True, text=True, cwd=ROOT,
                            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": str(tmp_path)},
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert "wrote 1 samples" in result.stdout


def test_weights_of_another_architecture_name_the_file(tmp_path):
    entry = zoo.save_entry(tiny_ebm(steps=2), tmp_path / "entry", {"name": "entry"})
    with h5py.File(entry / "model.weights.h5", "a") as f:  # a kernel of another shape under the same name
        name = next(n for n in _datasets(f) if n.endswith("vars/0"))
        data = f[name][...]
        del f[name]
        f[name] = np.zeros(data.shape[:-1] + (data.shape[-1] + 1,), data.dtype)
    pin(entry)
    with pytest.raises(ValueError, match="model.weights.h5 does not fit the model"):
        zoo.load(entry)


def _datasets(group, prefix=""):
    for key, value in group.items():
        if isinstance(value, h5py.Dataset):
            yield f"{prefix}{key}"
        else:
            yield from _datasets(value, f"{prefix}{key}/")


def test_export_needs_the_tensorflow_backend():
    out = run_python(
        "from keras_shortrun import export\n"
        "from keras_shortrun.models import ShortRunEBM\n"
        "m = ShortRunEBM.with_convnet(image_size=8, channels=1, filters=4, steps=2)\n"
        "try:\n"
        "    export.to_onnx(m, 'never.onnx')\n"
        "except RuntimeError as e:\n"
        "    print(e)\n",
        backend="jax",
    )
    assert "KERAS_BACKEND=tensorflow" in out and not (ROOT / "never.onnx").exists()
