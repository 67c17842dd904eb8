"""Resumable training: data pipelines, sample-grid, wall-clock and divergence callbacks, ``fit_resumable``."""

import csv
import json
import math
import os
import platform
import re
import shutil
import time
import warnings
import weakref
from pathlib import Path

import keras
import numpy as np

from keras_shortrun.errors import TrainingDiverged
from keras_shortrun.hashing import sha256_file
from keras_shortrun.images import save_grid
from keras_shortrun.seeds import stream
from keras_shortrun.validation import check_beta_1
from keras_shortrun.validation import check_model_images
from keras_shortrun.validation import check_positive_float
from keras_shortrun.validation import check_positive_int
from keras_shortrun.validation import check_seed
from keras_shortrun.validation import is_array

# model -> the epochs (0-based) of the current ``fit`` in which a ``DivergenceGuard`` rolled it back
_ROLLED_BACK = weakref.WeakKeyDictionary()


def runs_home():
    """Where long runs live, outside any work tree: ``$KERAS_SHORTRUN_HOME/runs``, else
    ``$XDG_CACHE_HOME/keras_shortrun/runs`` (``~/.cache/keras_shortrun/runs``)."""
    home = os.environ.get("KERAS_SHORTRUN_HOME")
    if not home:
        cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        home = os.path.join(cache, "keras_shortrun")
    return Path(home) / "runs"


def cpu_model():
    """The CPU's model name from /proc/cpuinfo, else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware():
    """A one-line description of the CPU cores this process may run on."""
    usable, total = len(os.sched_getaffinity(0)), os.cpu_count()
    cores = f"{total} cores" if usable == total else f"{usable} of its {total} cores"
    return f"CPU: {cpu_model()}, {cores}, {keras.backend.backend()} backend"


def record_hardware(run_dir):
    """Adds this process's ``hardware()`` to ``run_dir/hardware.json`` (one line per distinct machine that
    trained the run; a resumed run on other hardware adds a line)."""
    path = Path(run_dir) / "hardware.json"
    seen = json.loads(path.read_text()) if path.is_file() else []
    if hardware() not in seen:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(seen + [hardware()]))


def training_hardware(run_dir):
    """The hardware that trained a run, as recorded by ``record_hardware`` (else this machine's)."""
    path = Path(run_dir) / "hardware.json"
    return "; ".join(json.loads(path.read_text())) if path.is_file() else hardware()


def last_epoch(run_dir):
    """The last epoch (1-based) of a run that has both a weights snapshot and a log row."""
    with open(Path(run_dir) / "log.csv") as f:
        logged = {int(row["epoch"]) + 1 for row in csv.DictReader(f)}
    saved = {int(p.name[len("epoch_"):-len(".weights.h5")])
             for p in (Path(run_dir) / "checkpoints").glob("epoch_*.weights.h5")}
    return max(logged & saved)


STAGE_DIVERGENCE_FACTOR = 1.2  # a classifier stage whose last loss exceeds 1.2x its lowest is rolled back


def chosen_epoch(run_dir, divergence_factor=STAGE_DIVERGENCE_FACTOR):
    """``(epoch, diverged)``: the snapshot (1-based epoch) a classifier stage hands on: its last, unless training
    diverged (the last logged loss above ``divergence_factor`` times the lowest), then the epoch of the lowest
    training loss. Reads the training log only, never test data."""
    last = last_epoch(run_dir)
    with open(Path(run_dir) / "log.csv") as f:
        losses = {int(row["epoch"]) + 1: float(row["loss"]) for row in csv.DictReader(f) if int(row["epoch"]) < last}
    best = min(losses, key=losses.get)
    diverged = losses[last] > divergence_factor * losses[best]
    return (best if diverged else last), diverged


def log_row(run_dir, epoch):
    """The ``log.csv`` row of ``epoch`` (1-based) of a run: wall time and the model's metrics."""
    with open(Path(run_dir) / "log.csv") as f:
        return [row for row in csv.DictReader(f) if int(row["epoch"]) == epoch - 1][-1]


# Config keys that shape training, not the model: a run with another value still starts from an entry's weights.
TRAINING_ONLY_CONFIG = ("gradient_penalty",)
# The chain (its schedule, step size and noise) is how a model's weights are sampled, not what they are: a run
# with another chain also starts from an entry's weights (and says so); the chain's own weights must still fit.
CHAIN_CONFIG = "chain"
# What a run started from a committed entry keeps of the entry's metadata (``started_from.json``): its training
# (updates, time) and scores, so that a campaign's counts and quality curve run on across machines.
INHERITED_METADATA = ("training", "quality_curve", "recipe_study")


def start_from_entry(model, run_dir, entry, verbose=True, adapt=None):
    """Before a run's first epoch: loads the zoo ``entry``'s weights into ``model`` (a fresh optimizer follows),
    when the run folder has no backup yet and the entry has the same architecture, or another one that
    ``adapt(committed, model)`` loads it into (e.g. ``MultiscaleEnergy.widen_from``; raises ``ValueError``
    where it cannot); records the start in ``run_dir/started_from.json`` (with the entry's
    ``INHERITED_METADATA``). A run with a backup resumes from it instead (``fit_resumable``). Returns what the
    run starts from: ``"backup"``, ``"entry"`` or ``"scratch"`` (no such entry, or another architecture), and
    says so when ``verbose``."""
    from keras_shortrun import zoo

    run_dir = Path(run_dir)
    if completed_epochs(run_dir / "backup"):
        start, why = "backup", f"resuming the run in {run_dir}"
    else:
        try:
            committed = zoo.load(entry)
        except (KeyError, ValueError, FileNotFoundError) as error:
            committed, why = None, f"no committed entry {entry!r} to start from ({error})"
        loaded = committed is not None and _same_architecture(committed, model)
        if loaded:
            model.set_weights(committed.get_weights())
            how = "weights"
        elif committed is not None and adapt is not None:
            try:
                adapt(committed, model)
                loaded, how = True, "weights, adapted to this architecture"
            except ValueError as error:
                why = f"the committed {entry!r} could not be adapted ({error}): starting from random weights"
        if loaded:
            start, why = "entry", f"no run in {run_dir}: starting from the committed {entry!r} {how}, fresh optimizer"
            if _as_json(committed.get_config().get(CHAIN_CONFIG)) != _as_json(model.get_config().get(CHAIN_CONFIG)):
                why += ", with another chain than the entry's"
        else:
            start = "scratch"
            if committed is not None and adapt is None:
                why = f"the committed {entry!r} has another architecture: starting from random weights"
        run_dir.mkdir(parents=True, exist_ok=True)
        record = {"start": start, "entry": str(entry), "reason": why}
        if start == "entry":
            metadata = zoo.info(entry)
            record["weights_sha256"] = metadata["files"]["model.weights.h5"]["sha256"]
            record["entry_metadata"] = {k: metadata[k] for k in INHERITED_METADATA if k in metadata}
        atomic_write_text(run_dir / "started_from.json", json.dumps(record))
    if verbose:
        print(why)
    return start


def _as_json(config):
    """A config as comparable JSON: a loaded config has lists where a built one has tuples."""
    return json.dumps(config, sort_keys=True, default=str)


AUTO_NUMBER = re.compile(r"_\d+$")  # Keras numbers a layer's default name by how many were built before it


def _without_auto_numbers(config):
    """``config`` with every string's ``_<n>`` suffix dropped: nested layers (a functional head's input layer,
    say) are named by build order, which differs between a loaded entry and a model built in a busy process."""
    if isinstance(config, dict):
        return {k: _without_auto_numbers(v) for k, v in config.items()}
    if isinstance(config, (list, tuple)):
        return [_without_auto_numbers(v) for v in config]
    return AUTO_NUMBER.sub("", config) if isinstance(config, str) else config


def _same_architecture(a, b):
    """Same weight shapes and the same config, but for the models' names and their layers' auto-numbers,
    ``TRAINING_ONLY_CONFIG`` and the chain (``CHAIN_CONFIG``)."""
    ignored = {"name", CHAIN_CONFIG, *TRAINING_ONLY_CONFIG}

    def config(model):
        return _as_json(_without_auto_numbers({k: v for k, v in model.get_config().items() if k not in ignored}))

    return [tuple(v.shape) for v in a.weights] == [tuple(v.shape) for v in b.weights] and config(a) == config(b)


def rolled_back(model, epoch):
    """Whether a ``DivergenceGuard`` rolled ``model`` back during ``epoch`` (0-based) of the running ``fit``:
    that epoch is no progress, and callbacks that record progress skip it."""
    return epoch in _ROLLED_BACK.get(model, ())


def batches(data, batch_size, seed=0, steps=None, start=0):
    """An endless shuffled stream of ``(batch_size, ...)`` batches of ``data`` that keeps the chain fed.

    ``data``: images ``x`` or a tuple ``(x, y)``. A ``tf.data`` pipeline (shuffle,
    repeat, fixed-size batches, prefetch) when TensorFlow is installed; otherwise
    (JAX-only machines) a ``keras.utils.PyDataset`` of random batches with
    ``steps`` per epoch. The stream is a function of ``seed`` alone; ``start``
    skips its first ``start`` batches, so that a resumed run sees the batches an
    uninterrupted one would have seen.
    """
    arrays = data if isinstance(data, tuple) else (data,)
    if len(arrays[0]) < batch_size:
        raise ValueError(f"Need at least batch_size={batch_size} examples, got {len(arrays[0])}.")
    try:
        import tensorflow as tf
    except ImportError:
        return _RandomBatches(arrays, batch_size, seed, steps or len(arrays[0]) // batch_size, start)
    return (
        tf.data.Dataset.from_tensor_slices(data)
        .shuffle(min(len(arrays[0]), 60000), seed=seed, reshuffle_each_iteration=True)
        .repeat()
        .batch(batch_size, drop_remainder=True)
        .skip(start)
        .prefetch(tf.data.AUTOTUNE)
    )


class _RandomBatches(keras.utils.PyDataset):
    """Random batches (with replacement across batches) of one or more aligned arrays; batch ``i`` of the
    stream (counted across epochs from ``start``) depends on ``(seed, i)`` only."""

    def __init__(self, arrays, batch_size, seed, steps, start=0):
        super().__init__()
        self.arrays, self.batch_size, self.steps, self.seed = arrays, batch_size, steps, seed
        self.first = start

    def __len__(self):
        return self.steps

    def __getitem__(self, index):
        rng = np.random.default_rng([self.seed, self.first + index])
        rows = rng.integers(0, len(self.arrays[0]), self.batch_size)
        picked = tuple(a[rows] for a in self.arrays)
        return picked if len(picked) > 1 else picked[0]

    def on_epoch_end(self):
        self.first += self.steps


def semi_supervised_batches(x_labelled, y_labelled, x_unlabelled, batch_size, labelled_per_batch, seed=0,
                            steps=100):
    """An endless stream of ``(x, y)`` batches with exactly ``labelled_per_batch`` labelled images and the
    rest unlabelled (``y = -1``), so that every batch carries labels however few there are.

    A ``tf.data`` pipeline when TensorFlow is installed (measured 4x faster than a
    ``PyDataset`` feeding a single-core chain), else ``SemiSupervisedBatches`` with
    ``steps`` batches per epoch.
    """
    batches_ = SemiSupervisedBatches(x_labelled, y_labelled, x_unlabelled, batch_size, labelled_per_batch, seed, steps)
    try:
        import tensorflow as tf
    except ImportError:
        return batches_
    labelled = batches((x_labelled, np.asarray(y_labelled, "int32")), labelled_per_batch, seed=seed)
    unlabelled_count = batch_size - labelled_per_batch
    if not unlabelled_count:
        return labelled
    unlabelled = batches(x_unlabelled, unlabelled_count, seed=stream(seed, "unlabelled")).map(
        lambda x: (x, -tf.ones((unlabelled_count,), "int32"))
    )
    return tf.data.Dataset.zip(labelled, unlabelled).map(
        lambda a, b: (tf.concat([a[0], b[0]], 0), tf.concat([a[1], b[1]], 0))
    ).prefetch(tf.data.AUTOTUNE)


class SemiSupervisedBatches(keras.utils.PyDataset):
    """Batches ``(x, y)`` with exactly ``labelled_per_batch`` labelled images (random, from ``x_labelled``,
    ``y_labelled``) and the rest unlabelled (from ``x_unlabelled``, ``y = -1``), so that every batch
    carries labels however few there are. ``steps`` batches per epoch."""

    def __init__(self, x_labelled, y_labelled, x_unlabelled, batch_size, labelled_per_batch, seed=0, steps=100):
        super().__init__()
        if not 1 <= labelled_per_batch <= batch_size:
            raise ValueError(f"labelled_per_batch must be in [1, batch_size={batch_size}], got {labelled_per_batch}.")
        if labelled_per_batch < batch_size and (x_unlabelled is None or len(x_unlabelled) == 0):
            raise ValueError("labelled_per_batch < batch_size needs unlabelled images.")
        if len(x_labelled) != len(y_labelled) or len(x_labelled) == 0:
            raise ValueError(f"Need as many labels as labelled images (>= 1): {len(x_labelled)} vs {len(y_labelled)}.")
        self.x_labelled, self.y_labelled, self.x_unlabelled = x_labelled, np.asarray(y_labelled), x_unlabelled
        self.batch_size, self.labelled_per_batch, self.steps = batch_size, labelled_per_batch, steps
        self.rng = np.random.default_rng(seed)

    def __len__(self):
        return self.steps

    def __getitem__(self, index):
        rows = self.rng.integers(0, len(self.x_labelled), self.labelled_per_batch)
        x, y = [self.x_labelled[rows]], [self.y_labelled[rows].astype("int32")]
        unlabelled = self.batch_size - self.labelled_per_batch
        if unlabelled:
            x.append(self.x_unlabelled[self.rng.integers(0, len(self.x_unlabelled), unlabelled)])
            y.append(np.full(unlabelled, -1, "int32"))
        return np.concatenate(x), np.concatenate(y)


class SampleGrid(keras.callbacks.Callback):
    """Writes ``samples_<epoch>.png`` (a fixed-seed grid of ``model.sample``) after every epoch."""

    def __init__(self, directory, n=64, seed=0):
        super().__init__()
        self.directory, self.n, self.seed = Path(directory), n, seed

    def on_epoch_end(self, epoch, logs=None):
        if rolled_back(self.model, epoch):
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        draw = getattr(self.model, "synthesize", None) or self.model.sample  # latent models synthesise
        save_grid(self.directory / f"samples_{epoch + 1:04d}.png", draw(self.n, seed=self.seed))


class WallClock(keras.callbacks.Callback):
    """Accumulates training wall time and this process's CPU time (all its threads) across interrupted runs in
    ``wall_time.json`` (with the epochs completed; a rolled-back epoch is not one); adds ``wall_time_s`` and
    ``cpu_time_s`` to logs. With ``max_cpu_seconds`` it stops training after the first epoch that reaches it."""

    def __init__(self, path, max_cpu_seconds=None):
        super().__init__()
        self.path = Path(path)
        self.max_cpu_seconds = max_cpu_seconds

    def on_train_begin(self, logs=None):
        previous = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.previous, self.epochs = previous.get("wall_time_s", 0.0), previous.get("epochs", 0)
        self.previous_cpu = previous.get("cpu_time_s", 0.0)
        self.start, self.start_cpu = time.time(), time.process_time()

    def on_epoch_end(self, epoch, logs=None):
        total = self.previous + time.time() - self.start
        cpu = self.previous_cpu + time.process_time() - self.start_cpu
        if not rolled_back(self.model, epoch):
            self.epochs = epoch + 1
        self.path.write_text(json.dumps({"wall_time_s": total, "cpu_time_s": cpu, "epochs": self.epochs}))
        if logs is not None:
            logs["wall_time_s"], logs["cpu_time_s"] = total, cpu
        if self.max_cpu_seconds is not None and cpu >= self.max_cpu_seconds:
            self.model.stop_training = True


class DivergenceGuard(keras.callbacks.Callback):
    """Rolls a diverging run back to its last good state instead of letting it train on, or save, NaN weights.

    After every batch the guard reads the logs: a non-finite value, or (EBM) an energy gap
    ``|energy_data - energy_sample|`` or loss (the gaps summed over a multiscale EBM's resolutions) above
    ``max_energy_gap``, is divergence (the logs are the epoch's
    running means, so a NaN step shows at once and an exploding gap within a few steps). It then restores
    the weights and optimizer state of the last good snapshot (taken at the first batch, so after any
    callback such as ``ResumableBackup`` restored a state, and after every epoch without incident) and
    either stops training (``learning_rate_factor=None``) or multiplies the learning rate by
    ``learning_rate_factor`` and goes on, at most ``max_rollbacks`` times before stopping. An epoch with a
    rollback is no progress: ``ResumableBackup``, ``EpochWeights``, ``SampleGrid`` and ``WallClock`` skip it
    (see ``rolled_back``). ``events`` lists what happened; ``stopped`` is the reason training was stopped, or
    ``None``.
    """

    def __init__(self, max_energy_gap=1e4, learning_rate_factor=None, max_rollbacks=3, verbose=True):
        super().__init__()
        if not max_energy_gap > 0:
            raise ValueError(f"max_energy_gap must be positive, got {max_energy_gap!r}.")
        if learning_rate_factor is not None and not 0 < learning_rate_factor < 1:
            raise ValueError(f"learning_rate_factor must be None or in (0, 1), got {learning_rate_factor!r}.")
        self.max_energy_gap = float(max_energy_gap)
        self.learning_rate_factor = learning_rate_factor
        self.max_rollbacks = int(max_rollbacks)
        self.verbose = verbose
        self.events, self.stopped, self.snapshot, self.incident_this_epoch = [], None, None, False
        self.snapshot_due = False

    def _variables(self):
        return list(self.model.variables) + list(self.model.optimizer.variables)

    def _take_snapshot(self):
        from keras_shortrun import backend

        backend.sync_training_state(self.model)
        values = [keras.ops.convert_to_numpy(v) for v in self._variables()]
        if all(np.all(np.isfinite(v)) for v in values if v.dtype.kind == "f"):
            self.snapshot = values

    def problem(self, logs):
        """Why ``logs`` show divergence (a sentence), or ``None``."""
        bad = sorted(k for k, v in (logs or {}).items() if isinstance(v, (int, float)) and not math.isfinite(v))
        if bad:
            return f"non-finite {', '.join(bad)}"
        if "energy_data" in logs and "energy_sample" in logs:
            gap = abs(float(logs["energy_data"]) - float(logs["energy_sample"]))
            if gap > self.max_energy_gap:
                return f"energy gap |energy_data - energy_sample| = {gap:.3g} > max_energy_gap {self.max_energy_gap:g}"
            # A multiscale EBM logs the full-resolution energies; its loss sums the gaps of every resolution
            # (plus the logged gradient penalty, if trained with one), so an exploding coarse energy shows only there.
            loss = abs(float(logs.get("loss", 0.0)) - float(logs.get("gradient_penalty", 0.0)))
            if loss > self.max_energy_gap:
                return (f"EBM loss |sum of the energy gaps over resolutions| = {loss:.3g} > max_energy_gap "
                        f"{self.max_energy_gap:g}")
        return None

    def on_train_begin(self, logs=None):
        # The snapshot waits for the first batch: callbacks after this one may still restore a state.
        self.snapshot, self.snapshot_due, self.stopped = None, True, None
        _ROLLED_BACK[self.model] = set()

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch, self.incident_this_epoch = epoch, False

    def on_train_batch_begin(self, batch, logs=None):
        if self.snapshot_due:
            self.snapshot_due = False
            self._take_snapshot()

    def on_train_batch_end(self, batch, logs=None):
        reason = self.problem({k: float(v) for k, v in (logs or {}).items()})
        if reason is None:
            return
        from keras_shortrun import backend

        backend.sync_training_state(self.model)
        self.incident_this_epoch = True
        _ROLLED_BACK.setdefault(self.model, set()).add(self.epoch)
        event = {"epoch": self.epoch + 1, "batch": batch + 1, "reason": reason}
        if self.snapshot is None:
            raise TrainingDiverged(f"Training diverged ({reason}) before any finite state was recorded.")
        for variable, value in zip(self._variables(), self.snapshot):
            variable.assign(value)
        self.model.reset_metrics()
        lowered = sum("learning rate lowered" in e["action"] for e in self.events)
        learning_rate = self.model.optimizer.learning_rate
        if self.learning_rate_factor is not None and lowered < self.max_rollbacks and hasattr(learning_rate, "assign"):
            new_rate = float(keras.ops.convert_to_numpy(learning_rate)) * self.learning_rate_factor
            learning_rate.assign(new_rate)
            event["action"] = f"rolled back to the last good state; learning rate lowered to {new_rate:.3g}"
        else:
            event["action"] = "rolled back to the last good state and stopped"
            self.stopped = (f"Training diverged at epoch {event['epoch']}, batch {event['batch']}: {reason}. "
                            "The model holds the weights of the last good state; lower the learning rate, or "
                            "pass DivergenceGuard(learning_rate_factor=0.1) to retry with a lower one.")
            self.model.stop_training = True
        self.events.append(event)
        if self.verbose:
            warnings.warn(f"DivergenceGuard: epoch {event['epoch']}, batch {event['batch']}: {reason}; "
                          f"{event['action']}.", stacklevel=2)

    def on_epoch_end(self, epoch, logs=None):
        if not self.incident_this_epoch:
            self._take_snapshot()

    def on_train_end(self, logs=None):
        _ROLLED_BACK.pop(self.model, None)


def atomic_save_weights(model, path):
    """``model.save_weights(path)`` through a temporary file renamed into place: a run killed while writing
    leaves the previous file (or none), never a truncated one. Returns the sha256 of the written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name[: -len('.weights.h5')]}.partial.weights.h5")
    model.save_weights(partial, overwrite=True)
    digest = sha256_file(partial)
    os.replace(partial, path)
    return digest


def atomic_write_text(path, text):
    """``text`` written to ``.<name>.partial`` beside ``path`` and renamed over it: a process stopped while
    writing leaves the old file (or none), never a part of the new one."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    os.replace(partial, path)


class ResumableBackup(keras.callbacks.Callback):
    """Saves the whole training state after every epoch and restores it when ``fit`` starts again.

    A state is the weights with the optimizer's variables (``state-N.weights.h5``) and a record
    (``state-N.json``: epoch, the weights' sha256 and every ``SeedGenerator`` state, which Keras's weights
    files leave out), each written to a temporary file and renamed into place, the record last. On restart
    the newest state whose record and weights agree is loaded and ``fit`` continues after its epoch; a state
    cut short by a kill is skipped for the one before. The two newest states are kept. Only files named as
    this class writes them are read (a copied record is ignored) and pruned; a record that names any other
    weights file, or weights reached through a link out of the folder, is refused with ``ValueError``.
    An epoch that a ``DivergenceGuard`` rolled back is not saved.
    With the same data stream (``batches(..., start=...)``) the resumed run is the uninterrupted one.
    """

    KEEP = 2
    RECORD = re.compile(r"state-(0|[1-9][0-9]*)\.json")

    def __init__(self, directory):
        super().__init__()
        self.directory = Path(directory)

    def _weights_of(self, record_path, index, record):
        """The weights file of a record: ``state-<index>.weights.h5`` in the folder, or ``ValueError``."""
        expected = f"state-{index}.weights.h5"
        if record.get("index") != index or record.get("weights") != expected:
            raise ValueError(
                f"{record_path} names index {record.get('index')!r} and weights {record.get('weights')!r}, not "
                f"{index} and {expected!r} as ResumableBackup writes them: refusing to resume from it. Remove "
                f"the record, or choose a new run folder."
            )
        weights = self.directory / expected
        resolved = weights.resolve()
        if not resolved.is_relative_to(self.directory.resolve()):
            raise ValueError(f"{weights} is a link to {resolved}, outside the backup folder {self.directory}: "
                             f"refusing to resume from it. Remove it, or choose a new run folder.")
        return weights

    def states(self):
        """Complete states, newest first: ``[(record dict, weights path)]``."""
        found = []
        paths = self.directory.iterdir() if self.directory.is_dir() else ()
        for record_path in paths:
            match = self.RECORD.fullmatch(record_path.name)
            if not match:
                continue
            index = int(match.group(1))
            try:
                record = json.loads(record_path.read_text())
            except (ValueError, OSError):
                continue  # cut short: the state before is used
            if not isinstance(record, dict):
                continue
            weights = self._weights_of(record_path, index, record)
            try:
                if weights.is_file() and sha256_file(weights) == record["sha256"]:
                    found.append((record, weights))
            except (KeyError, OSError):
                continue
        return sorted(found, key=lambda state: state[0]["index"], reverse=True)

    def on_train_begin(self, logs=None):
        for stale in self.directory.glob(".*.partial*"):
            stale.unlink()
        states = self.states()
        if not states:
            return
        record, weights = states[0]
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        self.model.load_weights(weights)
        seeds = {v.path: v for v in self.model.non_trainable_variables if v.path.endswith("seed_generator_state")}
        for path, value in record["seed_states"].items():
            if path in seeds:
                seeds[path].assign(np.asarray(value, dtype=seeds[path].dtype))
        self.model._initial_epoch = record["epoch"]

    def on_epoch_end(self, epoch, logs=None):
        from keras_shortrun import backend

        if rolled_back(self.model, epoch):
            return
        backend.sync_training_state(self.model)
        states = self.states()
        index = states[0][0]["index"] + 1 if states else 0
        weights = self.directory / f"state-{index}.weights.h5"
        digest = atomic_save_weights(self.model, weights)
        seeds = {v.path: keras.ops.convert_to_numpy(v).tolist()
                 for v in self.model.non_trainable_variables if v.path.endswith("seed_generator_state")}
        record = {"index": index, "epoch": epoch + 1, "weights": weights.name, "sha256": digest,
                  "seed_states": seeds}
        atomic_write_text(self.directory / f"state-{index}.json", json.dumps(record))
        for old, _ in self.states()[self.KEEP:]:  # exactly the two files written for that state
            (self.directory / f"state-{old['index']}.json").unlink(missing_ok=True)
            (self.directory / f"state-{old['index']}.weights.h5").unlink(missing_ok=True)


def checkpoint_path(run_dir, epoch):
    """The kept weights snapshot after ``epoch`` (1-based) of a ``fit_resumable`` run in ``run_dir``."""
    return Path(run_dir) / "checkpoints" / f"epoch_{epoch:04d}.weights.h5"


def _pin_marker(snapshot):
    """The file beside a snapshot that keeps ``EpochWeights`` from thinning it out."""
    return snapshot.with_name(snapshot.name.replace(".weights.h5", ".keep"))


def pin_checkpoint(run_dir, epoch):
    """Marks the snapshot after ``epoch`` as one that ``EpochWeights`` never thins out (``epoch_NNNN.keep``
    beside it): a scored or exported snapshot stays, whatever the thinning."""
    path = checkpoint_path(run_dir, epoch)
    if not path.is_file():
        raise FileNotFoundError(f"No snapshot of epoch {epoch} in {path.parent}.")
    _pin_marker(path).touch()


def averaged_epochs(run_dir, epoch, span=None):
    """The epochs whose kept snapshots are averaged into a run's weights after ``epoch``: those of the last
    ``span`` epochs up to it that thinning kept (``span`` ``None``: ``[epoch]``, the snapshot alone)."""
    if not checkpoint_path(run_dir, epoch).is_file():
        raise FileNotFoundError(f"No snapshot of epoch {epoch} in {Path(run_dir) / 'checkpoints'}.")
    if span is None:
        return [epoch]
    span = check_positive_int(span, "the span of averaged epochs (a positive number of epochs)")
    return [e for e in range(max(1, epoch - span + 1), epoch + 1) if checkpoint_path(run_dir, e).is_file()]


def load_averaged_weights(model, run_dir, epochs):
    """Sets ``model``'s weights to the uniform average of a run's snapshots after ``epochs`` (``averaged_epochs``;
    one epoch: that snapshot as it is): stochastic weight averaging, with no retraining. The sum is taken in
    float64, so the average does not depend on the order of the snapshots beyond float32 rounding."""
    if len(epochs) == 1:
        model.load_weights(checkpoint_path(run_dir, epochs[0]))
        return model
    total = None
    for epoch in epochs:
        model.load_weights(checkpoint_path(run_dir, epoch))
        weights = [np.asarray(w, np.float64) for w in model.get_weights()]
        total = weights if total is None else [a + b for a, b in zip(total, weights)]
    model.set_weights([(w / len(epochs)).astype(np.float32) for w in total])
    return model


class EpochWeights(keras.callbacks.Callback):
    """Keeps ``epoch_NNNN.weights.h5`` in ``directory`` (a run's ``checkpoints/``, see ``checkpoint_path``) after every
    epoch (written atomically): the weights to
    go back to, or to export, from any epoch of a run. An epoch that a ``DivergenceGuard`` rolled back is skipped.

    ``keep_every`` (default ``None``: keep all) thins the history: once a snapshot is ``keep_last`` epochs old it
    is deleted unless its epoch is a multiple of ``keep_every`` or it is pinned (``pin_checkpoint``). Only the
    snapshot that just left the window is looked at, so files from before the thinning are never touched."""

    def __init__(self, directory, keep_every=None, keep_last=20):
        super().__init__()
        self.directory = Path(directory)
        self.keep_every = None if keep_every is None else check_positive_int(keep_every, "keep_every")
        self.keep_last = check_positive_int(keep_last, "keep_last")

    def on_epoch_end(self, epoch, logs=None):
        from keras_shortrun import backend

        if rolled_back(self.model, epoch):
            return
        backend.sync_training_state(self.model)
        atomic_save_weights(self.model, checkpoint_path(self.directory.parent, epoch + 1))
        old = epoch + 1 - self.keep_last
        if self.keep_every is None or old < 1 or old % self.keep_every == 0:
            return
        snapshot = checkpoint_path(self.directory.parent, old)
        if not _pin_marker(snapshot).exists():
            snapshot.unlink(missing_ok=True)


def completed_epochs(backup_dir):
    """Epochs finished by an earlier run, from ``ResumableBackup``'s newest state (0 for a new run)."""
    states = ResumableBackup(backup_dir).states()
    return states[0][0]["epoch"] if states else 0


FORK_FILE = "forked_from.json"  # in a run folder started by ``fork_run``: the run and epoch it branched from
FORKED_RECORDS = ("hardware.json", "started_from.json")  # copied as they are: who trained it, what it started from


def fork_run(source, run_dir):
    """Starts ``run_dir`` as a branch of the ``fit_resumable`` run in ``source`` after the newest epoch that both
    a complete ``ResumableBackup`` state and a ``log.csv`` row record: that state (weights, optimizer, seed
    states), its settings, the log and clocks up to it, ``FORKED_RECORDS`` and its snapshot. A variant (another
    learning rate, say) then continues the same training, optimizer and data position included, where a new
    run would start over with a fresh optimizer. ``source`` may be training meanwhile (its files are read, never
    written). Records ``FORK_FILE`` and returns the epoch (1-based); raises ``ValueError`` when ``run_dir``
    holds a run or nothing in ``source`` can be forked."""
    source, run_dir = Path(source), Path(run_dir)
    if (run_dir / "backup").exists() or (run_dir / "log.csv").exists():
        raise ValueError(f"{run_dir} holds a run already: fork into a new folder.")
    try:
        with open(source / "log.csv") as f:
            reader = csv.DictReader(f)
            header, rows = reader.fieldnames, {int(row["epoch"]) + 1: row for row in reader}
    except (OSError, KeyError, ValueError) as error:
        raise ValueError(f"{source} has no readable log.csv to fork from ({error}).") from None
    states = [(record, weights) for record, weights in ResumableBackup(source / "backup").states()
              if record["epoch"] in rows]
    if not states:
        raise ValueError(f"{source} has no finished epoch (a backup state with its log row) to fork from.")
    record, weights = states[0]
    epoch, backup = record["epoch"], run_dir / "backup"
    backup.mkdir(parents=True)
    copied = backup / weights.name
    shutil.copyfile(weights, copied)
    if sha256_file(copied) != record["sha256"]:  # the source run replaced it while it was copied
        shutil.rmtree(backup)
        raise ValueError(f"{weights} changed while it was copied: fork again.")
    shutil.copyfile(source / "backup" / SETTINGS_FILE, backup / SETTINGS_FILE)
    atomic_write_text(backup / f"state-{record['index']}.json", json.dumps(record))
    with open(run_dir / "log.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, header)
        writer.writeheader()
        writer.writerows(rows[e] for e in sorted(rows) if e <= epoch)
    clock = {key: float(rows[epoch][key]) for key in ("wall_time_s", "cpu_time_s")}
    atomic_write_text(run_dir / "wall_time.json", json.dumps({**clock, "epochs": epoch}))
    for name in FORKED_RECORDS:
        if (source / name).is_file():
            shutil.copyfile(source / name, run_dir / name)
    if checkpoint_path(source, epoch).is_file():
        checkpoint_path(run_dir, epoch).parent.mkdir()
        shutil.copyfile(checkpoint_path(source, epoch), checkpoint_path(run_dir, epoch))
    atomic_write_text(run_dir / FORK_FILE, json.dumps({"run": str(source.resolve()), "epoch": epoch,
                                                        "weights_sha256": record["sha256"]}))
    return epoch


SETTINGS_FILE = "settings.json"  # in the backup folder: the settings a resumed run must share
RESUME_SETTINGS = ("data", "examples", "labelled", "batch_size", "iterations_per_epoch", "seed")  # data position


def checked_data(model, x, batch_size):
    """In-memory ``x`` (images, or a tuple ``(images, labels)``, of any array type) as numpy, checked against
    ``model`` (``image_shape``, ``input_range``; a classifier's labels by its ``check_labels``) and
    ``batch_size``; a stream (``PyDataset``, ``tf.data.Dataset``) as it is."""
    if not is_array(x):
        return x
    labels = None
    if isinstance(x, tuple):
        if len(x) not in (1, 2):
            raise ValueError(f"x as a tuple must be (images,) or (images, labels), got {len(x)} items.")
        x, labels = x[0], x[1] if len(x) == 2 else None
    images = check_model_images(model, x)
    num_classes = getattr(model, "num_classes", None)
    if labels is not None:
        if num_classes is not None:
            from keras_shortrun.models.classifier import check_labels

            labels = check_labels(labels, num_classes)
        else:
            labels = np.asarray(labels)
            if labels.ndim == 0:
                raise ValueError(f"y must hold one label per image, got a scalar {labels!r}.")
        if len(labels) != len(images):
            raise ValueError(f"x has {len(images)} images but y has {len(labels)} labels.")
    stage = getattr(model, "stage", "generator")
    if num_classes is not None and stage != "generator" and (labels is None or not np.any(labels >= 0)):
        raise ValueError(f"Stage {stage!r} learns from labels: pass x=(images, y) with class indices "
                         f"(-1 for unlabelled).")
    if len(images) < batch_size:
        raise ValueError(f"batch_size={batch_size} is larger than the {len(images)} images of x.")
    return images if labels is None else (images, labels)


def _check_resume(backup_dir, settings, resumed_after):
    """The settings recorded in ``backup_dir`` by the run that this one resumes (``{}`` for a new run or one
    written before settings were recorded); raises ``ValueError`` if a setting of the data position differs."""
    path = Path(backup_dir) / SETTINGS_FILE
    if not resumed_after or not path.is_file():
        return {}
    try:
        recorded = json.loads(path.read_text())
    except (ValueError, OSError) as error:
        raise ValueError(f"{path} is not readable JSON ({error}): cannot check that this run continues the one "
                         f"saved in {Path(backup_dir).parent}. Choose a new out_dir.") from None
    for key in RESUME_SETTINGS:
        if key in recorded and recorded[key] != settings.get(key):
            raise ValueError(
                f"{Path(backup_dir).parent} holds a run trained with {key}={recorded[key]!r} ({resumed_after} "
                f"epochs done); this call has {key}={settings.get(key)!r}. Resuming with another {key} would "
                f"not continue that run: pass {key}={recorded[key]!r}, or choose a new out_dir."
            )
    return recorded


class _ResumedLearningRate(keras.callbacks.Callback):
    """Sets the learning rate after ``ResumableBackup`` restored the optimizer (with its old rate)."""

    def __init__(self, learning_rate, out_dir, verbose):
        super().__init__()
        self.learning_rate, self.out_dir, self.verbose = learning_rate, out_dir, verbose

    def on_train_begin(self, logs=None):
        restored = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        if restored == float(np.float32(self.learning_rate)):
            return
        self.model.optimizer.learning_rate = self.learning_rate
        if self.verbose:
            print(f"Resuming {self.out_dir} with learning_rate {self.learning_rate:g} (the saved optimizer had "
                  f"{restored:g}).")


def fit_resumable(model, x, out_dir, iterations, batch_size=64, iterations_per_epoch=100,
                  learning_rate=1e-4, beta_1=0.9, seed=0, grid_size=64, verbose=1, guard=None,
                  max_cpu_seconds=None, keep_every=None, global_clipnorm=None):
    """``model.fit`` for ``iterations`` updates with a progress bar, a sample grid, a
    resumable backup (weights + optimizer + epoch) and a kept weights snapshot
    (``checkpoints/epoch_NNNN.weights.h5``, to go back to if a run diverges)
    every ``iterations_per_epoch`` (thinned to every ``keep_every``-th as ``EpochWeights`` says), under a
    ``DivergenceGuard`` (``guard``; default: roll back and stop), which raises ``TrainingDiverged`` after
    ``fit`` when it stopped the run.

    ``x``: images or a tuple ``(x, y)`` of any array type (checked and converted once, see
    ``checked_data``), or a ready stream of batches (a ``PyDataset`` such as
    ``SemiSupervisedBatches``, or a ``tf.data.Dataset``) used as is.
    Rerunning with the same ``out_dir`` resumes after the last finished epoch, with the
    optimizer state, seed-generator states and data position of that moment (killed
    mid-epoch, the run repeats that epoch's batches exactly as it first saw them). The
    settings of the data position (``RESUME_SETTINGS``) must be those of the first run; a
    new ``learning_rate`` or ``beta_1`` is applied. ``global_clipnorm``: Adam scales the gradients down to this
    global norm (BPTT through a chain can produce rare huge gradients). ``max_cpu_seconds`` ends the run early,
    after the first epoch at which the run's CPU time (all runs of ``out_dir`` together, see ``WallClock``)
    reaches it: budgets of equal CPU time compare recipes fairly on a shared machine. Every argument is checked
    before any file is written.
    Returns the ``History``.
    """
    iterations = check_positive_int(iterations, "iterations")
    iterations_per_epoch = check_positive_int(iterations_per_epoch, "iterations_per_epoch")
    batch_size = check_positive_int(batch_size, "batch_size")
    learning_rate = check_positive_float(learning_rate, "learning_rate")
    beta_1 = check_beta_1(beta_1)
    seed = check_seed(seed)
    grid_size = check_positive_int(grid_size, "grid_size")
    if max_cpu_seconds is not None:
        max_cpu_seconds = check_positive_float(max_cpu_seconds, "max_cpu_seconds")
    if keep_every is not None:
        keep_every = check_positive_int(keep_every, "keep_every")
    if global_clipnorm is not None:
        global_clipnorm = check_positive_float(global_clipnorm, "global_clipnorm")
    if guard is not None and not isinstance(guard, DivergenceGuard):
        raise TypeError(f"guard must be a DivergenceGuard or None, got {type(guard).__name__}.")
    if iterations % iterations_per_epoch:
        raise ValueError(
            f"iterations ({iterations}) must be a multiple of iterations_per_epoch ({iterations_per_epoch})."
        )
    x = checked_data(model, x, batch_size)
    in_memory = isinstance(x, (np.ndarray, tuple))
    out_dir = Path(out_dir)
    backup_dir = out_dir / "backup"
    resumed_after = completed_epochs(backup_dir)
    settings = {"data": "arrays" if in_memory else "stream", "iterations_per_epoch": iterations_per_epoch,
                "learning_rate": learning_rate, "beta_1": beta_1}
    if in_memory:
        images = x[0] if isinstance(x, tuple) else x
        settings.update(examples=len(images), labelled=isinstance(x, tuple), batch_size=batch_size, seed=seed)
    recorded = _check_resume(backup_dir, settings, resumed_after)
    backup_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(backup_dir / SETTINGS_FILE, json.dumps(settings))
    model.compile(optimizer=keras.optimizers.Adam(learning_rate, beta_1=beta_1, global_clipnorm=global_clipnorm))
    guard = DivergenceGuard() if guard is None else guard
    callbacks = [ResumableBackup(backup_dir)]
    if resumed_after and recorded.get("learning_rate") != learning_rate:
        callbacks.append(_ResumedLearningRate(learning_rate, out_dir, verbose))
    callbacks += [
        guard,  # snapshots at the first batch, after the restore
        EpochWeights(out_dir / "checkpoints", keep_every),
        WallClock(out_dir / "wall_time.json", max_cpu_seconds),
        SampleGrid(out_dir / "samples", n=grid_size, seed=seed),
        keras.callbacks.CSVLogger(str(out_dir / "log.csv"), append=True),
    ]
    start = resumed_after * iterations_per_epoch  # the uninterrupted run's data position
    history = model.fit(
        batches(x, batch_size, seed=seed, steps=iterations_per_epoch, start=start) if in_memory else x,
        epochs=iterations // iterations_per_epoch,
        steps_per_epoch=iterations_per_epoch,
        callbacks=callbacks,
        verbose=verbose,
    )
    if guard.stopped:
        checkpoints = out_dir / "checkpoints"
        kept = checkpoints.is_dir() and any(checkpoints.glob("epoch_*.weights.h5"))
        raise TrainingDiverged(f"{guard.stopped} " + (f"Checkpoints of the good epochs are in {checkpoints}." if kept
                               else "No epoch finished before the divergence, so no checkpoint was written."))
    return history


def fine_tune(entry, x, out_dir, iterations=100, batch_size=64, learning_rate=1e-5, beta_1=0.9, seed=0,
              dataset=None, verbose=0):
    """Loads a zoo entry, continues training on images ``x`` ``(N, H, W, C)`` in ``[-1, 1]`` with ``model.fit``
    (a lower learning rate than from scratch), and writes the result as a new entry folder ``out_dir``
    that ``zoo.load(out_dir)`` reads back. Returns ``(model, out_dir)``.

    ``dataset`` names the new data in the metadata; the parent entry and its weights' sha256 are recorded.
    The arguments and ``out_dir`` (refused as ``zoo.save_entry`` would refuse it) are checked before loading.
    """
    from keras_shortrun import zoo
    from keras_shortrun.zoo import registry

    iterations = check_positive_int(iterations, "iterations")
    batch_size = check_positive_int(batch_size, "batch_size")
    learning_rate = check_positive_float(learning_rate, "learning_rate")
    beta_1 = check_beta_1(beta_1)
    seed = check_seed(seed)
    registry.check_entry_folder(out_dir)  # save_entry's own check, before the training
    parent = zoo.info(entry)
    model = zoo.load(entry)
    x = check_model_images(model, x)
    if len(x) < batch_size:
        raise ValueError(f"batch_size={batch_size} is larger than the {len(x)} images of x.")
    model.compile(optimizer=keras.optimizers.Adam(learning_rate, beta_1=beta_1))
    history = model.fit(batches(x, batch_size, seed=seed, steps=iterations), epochs=1, steps_per_epoch=iterations,
                        verbose=verbose)
    metadata = {
        "name": Path(out_dir).name,
        "description": f"{entry} fine-tuned on {dataset or 'new data'} ({iterations} updates)",
        "fine_tuned_from": {"entry": str(entry), "weights_sha256": parent["files"]["model.weights.h5"]["sha256"]},
        "dataset": {"name": dataset or "custom", "images": int(len(x))},
        "resolution": parent.get("resolution"),
        "training": {"iterations": iterations, "batch_size": batch_size, "optimizer": "Adam",
                     "learning_rate": learning_rate, "final_loss": float(history.history["loss"][-1])},
        "keras_version": keras.__version__,
    }
    if "chain" in parent:
        metadata["chain"] = parent["chain"]
    return model, zoo.save_entry(model, out_dir, metadata)
