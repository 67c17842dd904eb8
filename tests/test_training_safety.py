"""Training safety: divergence rollback on resumed runs, resume settings, input checks and backup records."""

import json
import math
import shutil
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from builders import tiny_classifier
from builders import tiny_ebm
from builders import tiny_images

from keras_shortrun import zoo
from keras_shortrun.errors import TrainingDiverged
from keras_shortrun.training import DivergenceGuard
from keras_shortrun.training import batches
from keras_shortrun.training import fine_tune
from keras_shortrun.training import fit_resumable
from keras_shortrun.training import fork_run
from keras_shortrun.training import pin_checkpoint


def run(model, out, iterations, **kwargs):
    """``fit_resumable`` with the tiny settings of these tests (batches of 4, epochs of 2 updates)."""
    options = dict(batch_size=4, iterations_per_epoch=2, grid_size=4, verbose=0)
    options.update(kwargs)
    x = options.pop("x", None)
    return fit_resumable(model, tiny_images() if x is None else x, out, iterations, **options)


def weights_of(model):
    return [np.array(w) for w in model.get_weights()]


def iterations_of(model):
    return int(keras.ops.convert_to_numpy(model.optimizer.iterations))


def tree(directory):
    return {p.relative_to(directory): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


class DivergeAt(DivergenceGuard):
    """Reports divergence at the first batch of epoch ``epoch`` (1-based), once."""

    def __init__(self, epoch, **kwargs):
        super().__init__(verbose=False, **kwargs)
        self.at = epoch

    def problem(self, logs):
        return "forced" if self.epoch + 1 == self.at and not self.events else None


# 1. Rollback of a resumed run -------------------------------------------------------------------------
def test_a_resumed_diverging_run_is_rolled_back_to_the_restored_state(tmp_path):
    out = tmp_path / "run"
    first = tiny_ebm()
    run(first, out, 4)
    trained = weights_of(first)
    resumed = tiny_ebm()
    with pytest.raises(TrainingDiverged, match="last good state"):
        run(resumed, out, 8, guard=DivergenceGuard(max_energy_gap=1e-12, verbose=False))
    for expected, actual in zip(trained, weights_of(resumed)):
        np.testing.assert_array_equal(actual, expected)
    assert iterations_of(resumed) == 4
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["epoch_0001.weights.h5",
                                                                         "epoch_0002.weights.h5"]
    records = [json.loads(p.read_text()) for p in (out / "backup").glob("state-*.json")]
    assert sorted(r["epoch"] for r in records) == [1, 2]
    assert json.loads((out / "wall_time.json").read_text())["epochs"] == 2


def test_a_rolled_back_epoch_is_never_recorded_as_progress(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match="no checkpoint was written"):
        run(tiny_ebm(), out, 6, guard=DivergenceGuard(max_energy_gap=1e-12, verbose=False))
    assert not list((out / "backup").glob("state-*")) and not list((out / "checkpoints").glob("*"))
    rerun = tiny_ebm()
    run(rerun, out, 6)
    assert iterations_of(rerun) == 6


def test_an_epoch_rolled_back_and_continued_is_not_checkpointed(tmp_path):
    out = tmp_path / "run"
    model = tiny_ebm()
    guard = DivergeAt(2, learning_rate_factor=0.5)
    run(model, out, 6, guard=guard)
    assert guard.stopped is None and len(guard.events) == 1
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["epoch_0001.weights.h5",
                                                                         "epoch_0003.weights.h5"]


def test_snapshots_past_the_window_are_thinned_except_every_nth_and_pinned(tmp_path):
    out = tmp_path / "run"
    run(tiny_ebm(), out, 22, iterations_per_epoch=1, keep_every=4)  # 20 kept: epochs 1, 2 left the window
    pin_checkpoint(out, 3)
    run(tiny_ebm(), out, 25, iterations_per_epoch=1, keep_every=4)  # 3 (pinned), 4 (a 4th), 5 leave the window
    kept = sorted(int(p.name[6:10]) for p in (out / "checkpoints").glob("epoch_*.weights.h5"))
    assert kept == [3, 4, *range(6, 26)]
    with pytest.raises(FileNotFoundError, match="No snapshot of epoch 5"):
        pin_checkpoint(out, 5)


def test_the_guard_snapshots_after_other_callbacks_restore(tmp_path):
    """Whatever the order of the callbacks, the guard rolls back to the state the run started from."""
    from keras_shortrun.training import ResumableBackup

    model = tiny_ebm()
    run(model, tmp_path / "run", 2)
    trained = weights_of(model)
    fresh = tiny_ebm()
    fresh.compile(optimizer=keras.optimizers.Adam(1e-4))
    guard = DivergeAt(2)
    fresh.fit(batches(tiny_images(), 4, start=2), epochs=3, steps_per_epoch=2, verbose=0,
              callbacks=[guard, ResumableBackup(tmp_path / "run" / "backup")])
    assert guard.stopped
    for expected, actual in zip(trained, weights_of(fresh)):
        np.testing.assert_array_equal(actual, expected)


# 2. Resuming with other settings ----------------------------------------------------------------------
@pytest.mark.parametrize("setting, value", [("batch_size", 8), ("iterations_per_epoch", 4), ("seed", 3)])
def test_resuming_with_other_settings_is_refused_before_training(tmp_path, setting, value):
    out = tmp_path / "run"
    run(tiny_ebm(), out, 4)
    before = tree(out)
    with pytest.raises(ValueError, match=rf"{setting}.*{value}") as caught:
        run(tiny_ebm(), out, 8, **{setting: value})
    message = str(caught.value)
    assert str(out) in message and repr({"batch_size": 4, "iterations_per_epoch": 2, "seed": 0}[setting]) in message
    assert tree(out) == before


def test_resuming_with_other_images_is_refused(tmp_path):
    out = tmp_path / "run"
    run(tiny_ebm(), out, 2)
    with pytest.raises(ValueError, match=r"examples.*16.*24"):
        run(tiny_ebm(), out, 4, x=tiny_images(24))


def test_resuming_with_a_new_learning_rate_applies_it(tmp_path, capsys):
    out = tmp_path / "run"
    run(tiny_ebm(), out, 2, learning_rate=1e-4)
    capsys.readouterr()
    model = tiny_ebm()
    run(model, out, 4, learning_rate=1e-3, verbose=2)
    assert math.isclose(float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)), 1e-3, rel_tol=1e-6)
    assert iterations_of(model) == 4
    lines = [line for line in capsys.readouterr().out.splitlines() if "learning_rate" in line]
    assert len(lines) == 1 and "0.001" in lines[0] and "0.0001" in lines[0]
    same = tiny_ebm()
    run(same, out, 6, learning_rate=1e-3)  # unchanged from the last run: the restored rate stays
    assert math.isclose(float(keras.ops.convert_to_numpy(same.optimizer.learning_rate)), 1e-3, rel_tol=1e-6)


# 3. Inputs checked up front ---------------------------------------------------------------------------
@pytest.mark.parametrize("labels, pattern", [
    ([-3, 0, 1, 2] * 2, r"y must lie in \[0, 3\)"),
    ([1.7, 0, 1, 2] * 2, "integer class labels"),
    ([5, 0, 1, 2] * 2, r"y must lie in \[0, 3\)"),
    ([0, 1, 2], "8 images but y has 3 labels"),
])
def test_fit_resumable_checks_a_classifiers_labels(tmp_path, labels, pattern):
    with pytest.raises(ValueError, match=pattern):
        run(tiny_classifier(), tmp_path / "run", 2, x=(tiny_images(8, (28, 28, 1)), np.asarray(labels)))
    assert not (tmp_path / "run").exists()


def test_a_labelled_stage_needs_labels(tmp_path):
    with pytest.raises(ValueError, match="learns from labels"):
        run(tiny_classifier("head"), tmp_path / "run", 2, x=(tiny_images(8, (28, 28, 1)), np.full(8, -1)))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("convert", [tf.constant, lambda a: list(a), "jax"], ids=["tf", "list", "jax"])
def test_any_array_type_is_batched_with_batch_size_and_resumed(tmp_path, convert):
    if convert == "jax":
        jnp = pytest.importorskip("jax.numpy")
        convert = jnp.asarray
    out = tmp_path / "run"
    x = tiny_images()
    run(tiny_ebm(), out, 2, x=x)
    model = tiny_ebm()
    first = []  # the first batch that fit would train on (the stream is read once only: tf.data reshuffles)
    model.fit = lambda stream, **kwargs: first.append(
        next(iter(stream)) if hasattr(stream, "element_spec") else stream[0])
    run(model, out, 4, x=convert(x))
    expected = next(iter(batches(x, 4, seed=0, steps=2, start=2)))  # batch 3 of the uninterrupted run
    np.testing.assert_array_equal(np.asarray(first[0]), np.asarray(expected))


def test_a_forked_run_continues_its_source_exactly(tmp_path):
    """A fork is its source at the source's last epoch, Adam's moments, step count, seed states and data
    position included: trained on alike, it ends with the source's weights (to float rounding: the same ops on
    the same machine; 1e-6 as in the SIGKILL test). Forking reads the source and writes nothing there."""
    x, source, fork = tiny_images(), tmp_path / "source", tmp_path / "fork"
    run(tiny_ebm(), source, 4, x=x)
    before = tree(source)
    assert fork_run(source, fork) == 2
    assert tree(source) == before
    assert (fork / "log.csv").read_bytes() == before[Path("log.csv")]
    assert json.loads((fork / "forked_from.json").read_text())["epoch"] == 2
    straight, forked = tiny_ebm(), tiny_ebm()
    run(straight, source, 8, x=x)
    run(forked, fork, 8, x=x)
    assert iterations_of(forked) == iterations_of(straight) == 8
    for a, b in zip(weights_of(forked), weights_of(straight)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert json.loads((fork / "wall_time.json").read_text())["epochs"] == 4
    with pytest.raises(ValueError, match="holds a run already"):
        fork_run(source, fork)
    with pytest.raises(ValueError, match="no readable log.csv"):
        fork_run(tmp_path / "nothing", tmp_path / "fork2")
    assert not (tmp_path / "fork2").exists()


def test_images_of_any_type_are_range_checked_before_any_folder(tmp_path):
    with pytest.raises(ValueError, match="must lie in"):
        run(tiny_ebm(), tmp_path / "run", 2, x=tf.constant(tiny_images() * 255))
    with pytest.raises(ValueError, match="batch_size=8"):
        run(tiny_ebm(), tmp_path / "run", 2, x=tiny_images(4), batch_size=8)
    assert not (tmp_path / "run").exists()


# 4. fine_tune checks its arguments and its folder first -----------------------------------------------
@pytest.fixture
def entry(tmp_path):
    return zoo.save_entry(tiny_ebm(), tmp_path / "entry", {"name": "entry"})


@pytest.fixture
def no_loading(monkeypatch):
    """Fails a test that gets as far as loading the entry (the work that a bad argument must never reach)."""
    def refuse(*args, **kwargs):
        raise AssertionError("fine_tune loaded the entry before checking its arguments")

    monkeypatch.setattr(zoo, "load", refuse)


@pytest.mark.parametrize("argument, value, pattern", [
    ("learning_rate", -0.01, "learning_rate must be a finite number above 0"),
    ("learning_rate", float("nan"), "learning_rate must be a finite number above 0"),
    ("beta_1", 7.0, r"beta_1 must be a number in \[0, 1\)"),
    ("beta_1", -0.1, r"beta_1 must be a number in \[0, 1\)"),
    ("seed", -5, "seed must be None or an integer"),
    ("batch_size", 0, "batch_size must be a positive integer"),
])
def test_fine_tune_refuses_bad_arguments_before_loading(tmp_path, entry, no_loading, argument, value, pattern):
    with pytest.raises(ValueError, match=pattern):
        fine_tune(entry, tiny_images(8), tmp_path / "tuned",
                  **dict({"iterations": 2, "batch_size": 4}, **{argument: value}))
    assert not (tmp_path / "tuned").exists()


def test_fine_tune_refuses_a_users_folder_before_training(tmp_path, entry, no_loading):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("the user's work")
    with pytest.raises(FileExistsError, match="refusing to replace it"):
        fine_tune(entry, tiny_images(8), folder, iterations=2, batch_size=4)
    assert (folder / "notes.txt").read_text() == "the user's work"


# 5. fit_resumable checks every argument first ---------------------------------------------------------
@pytest.mark.parametrize("argument, value, pattern", [
    ("grid_size", 0, "grid_size must be a positive integer"),
    ("beta_1", 7.0, r"beta_1 must be a number in \[0, 1\)"),
    ("beta_1", float("nan"), r"beta_1 must be a number in \[0, 1\)"),
    ("guard", "strict", "guard must be a DivergenceGuard"),
    ("keep_every", 0, "keep_every must be a positive integer"),
])
def test_fit_resumable_refuses_bad_arguments_before_any_work(tmp_path, argument, value, pattern):
    with pytest.raises((ValueError, TypeError), match=pattern):
        run(tiny_ebm(), tmp_path / "run", 2, **{argument: value})
    assert not (tmp_path / "run").exists()


# 6. Backup records ------------------------------------------------------------------------------------
def test_a_copied_backup_record_is_ignored(tmp_path):
    out = tmp_path / "run"
    run(tiny_ebm(), out, 2, iterations_per_epoch=1)
    backup = out / "backup"
    shutil.copy(backup / "state-0.json", backup / "state-0 (copy).json")
    model = tiny_ebm()
    run(model, out, 4, iterations_per_epoch=1)
    assert iterations_of(model) == 4
    assert sorted(p.name for p in backup.iterdir()) == ["settings.json", "state-0 (copy).json", "state-2.json",
                                                        "state-2.weights.h5", "state-3.json", "state-3.weights.h5"]


def _escape_absolute(backup, outside):
    record = json.loads((backup / "state-1.json").read_text())
    (backup / "state-1.json").write_text(json.dumps(dict(record, weights=str(outside))))


def _escape_relative(backup, outside):
    record = json.loads((backup / "state-1.json").read_text())
    (backup / "state-1.json").write_text(json.dumps(dict(record, weights=f"../{outside.name}")))


def _escape_link(backup, outside):
    (backup / "state-1.weights.h5").unlink()
    (backup / "state-1.weights.h5").symlink_to(outside)


@pytest.mark.parametrize("escape", [_escape_absolute, _escape_relative, _escape_link],
                         ids=["absolute", "relative", "link"])
def test_a_record_whose_weights_leave_the_backup_folder_is_refused(tmp_path, escape):
    out = tmp_path / "run"
    run(tiny_ebm(), out, 2, iterations_per_epoch=1)
    backup = out / "backup"
    outside = out / "outside.weights.h5"  # the user's file, with the right bytes for the record's sha256
    shutil.copy(backup / "state-1.weights.h5", outside)
    escape(backup, outside)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="outside"):
            run(tiny_ebm(), out, 6, iterations_per_epoch=1)
    assert outside.is_file()
