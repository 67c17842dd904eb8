"""Shared recipe of the generative-classifier zoo entries and their ConvNet baselines (``tools/train_<entry>.py``).

Per dataset, one generator is trained on every training image (stage 1, no
labels). Per label budget (1,000 or 100 labels per class, a nested subset
drawn with a fixed seed), the head is trained on it (stage 2), then everything
jointly with BPTT through the chain (stage 3), with the other training images
as unlabelled data; the ConvNet baseline sees the same labelled images.

Runs live in ``$KERAS_SHORTRUN_HOME/runs/<entry>/{generator,head_<L>,joint_<L>,convnet_<L>}``
(``training.runs_home``); each stage resumes.
"""

import fcntl
import hashlib
import json
from pathlib import Path
from tempfile import TemporaryDirectory

import keras
import numpy as np
from lvm_recipe import sample_and_reconstruction_figures

from keras_shortrun import data
from keras_shortrun import recipes
from keras_shortrun.cli import RESULTS_FILE
from keras_shortrun.cli import RESULTS_LOCK
from keras_shortrun.metrics import wilson_interval
from keras_shortrun.models import conv_net_baseline
from keras_shortrun.models.conv_transpose_generator import THESIS_WIDTHS
from keras_shortrun.training import STAGE_DIVERGENCE_FACTOR
from keras_shortrun.training import atomic_write_text
from keras_shortrun.training import averaged_epochs
from keras_shortrun.training import chosen_epoch
from keras_shortrun.training import last_epoch
from keras_shortrun.training import load_averaged_weights
from keras_shortrun.training import log_row
from keras_shortrun.training import runs_home
from keras_shortrun.training import training_hardware
from keras_shortrun.zoo import info as read_metadata
from keras_shortrun.zoo import save_entry
from keras_shortrun.zoo.registry import METADATA_FILE
from keras_shortrun.zoo.registry import WEIGHTS_FILE

ROOT = Path(__file__).resolve().parents[1]
CARD = Path(__file__).resolve().parent / "cards" / "classifier.md"  # the card template, str.format fields
LABEL_BUDGETS = recipes.CLASSIFIER_LABEL_BUDGETS  # labels per class; the zoo's main entry uses the first

def build(entry, stage="generator"):
    """The untrained ``GenerativeClassifier`` of a recipe, set to ``stage``."""
    return recipes.build(recipes.load(entry), stage, name=entry)


def run_dir(entry, stage, labels=None):
    """A stage's folder of the entry's run, in ``training.runs_home()`` (outside the work tree)."""
    return recipes.stage_dir(runs_home() / entry, stage, labels)


def train_stage(entry, stage, labels=None, data_path=None):
    """Runs (or resumes) one stage (``recipes.train``); stages 2 and 3 start from the previous stage's
    ``training.chosen_epoch``; the ConvNet baseline is trained on the same labelled images."""
    if stage != "convnet":
        return recipes.train(entry, runs_home() / entry, variant=stage, labels=labels, data_path=data_path)
    x, y = data.load(recipes.load(entry)["dataset"], "train", path=data_path)
    return train_convnet(entry, labels, x, y)


def train_convnet(entry, labels, x, y):
    """The ConvNet baseline on the same labelled images (Adam, sparse cross-entropy, batch 64)."""
    r = recipes.load(entry)
    picked = data.labelled_subset(y, labels, r["seed"])
    model = conv_net_baseline((28, 28, 1), 10)
    model.compile(keras.optimizers.Adam(r["convnet"]["learning_rate"]), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    keras.utils.set_random_seed(r["seed"])
    directory = run_dir(entry, "convnet", labels)
    directory.mkdir(parents=True, exist_ok=True)
    history = model.fit(x[picked], y[picked], batch_size=r["batch_size"], epochs=r["convnet"]["epochs"][str(labels)],
                        verbose=2, callbacks=[keras.callbacks.CSVLogger(str(directory / "log.csv"))])
    model.save_weights(directory / "final.weights.h5")
    return model, history


def load_trained(entry, labels, kind="classifier", run=None, average_epochs=None):
    """The final generative classifier (``kind="classifier"``) or ConvNet (``"convnet"``) of a label budget, of
    the entry's run or of another run of its recipe, ``run`` (a folder); ``average_epochs``: see ``joint_epochs``."""
    if kind == "convnet":
        model = conv_net_baseline((28, 28, 1), 10)
        model.load_weights(run_dir(entry, "convnet", labels) / "final.weights.h5")
        return model
    if run is None:
        model, directory = build(entry, "joint"), run_dir(entry, "joint", labels)
    else:
        model = recipes.build(recipes.run_recipe(entry, run), "joint", name=entry)
        directory = recipes.stage_dir(run, "joint", labels)
    return load_averaged_weights(model, directory, joint_epochs(entry, directory, average_epochs))


def joint_epochs(entry, directory, average_epochs=None):
    """The epochs of a joint stage (its folder, ``directory``) whose snapshots' uniform average an entry's weights
    are (``training.averaged_epochs``): the last ``joint.average_epochs`` up to ``training.chosen_epoch``, or the
    chosen snapshot alone where the stage was rolled back or the field is ``null``. The field says how a run's
    weights are handed on, not how it trains, so it is read from the recipe as committed now (``recipes.load``)
    and applies to runs started before it; ``average_epochs`` replaces it (a comparison; 1: the last alone)."""
    epoch, diverged = chosen_epoch(directory)
    span = None if diverged else average_epochs or recipes.load(entry)["joint"].get("average_epochs")
    return averaged_epochs(directory, epoch, span)


def accuracy_on(model, kind, x_test, y_test, chains):
    """Top-1 accuracy on ``x_test`` ``(N, 28, 28, 1)``: a generative classifier averages ``chains`` chains per
    image (seed 0), a ConvNet predicts once."""
    if kind == "classifier":
        p = model.predict_proba(x_test, chains=chains, seed=0)
    else:
        p = model.predict(x_test, batch_size=256, verbose=0)
    return float(np.mean(np.argmax(p, axis=1) == y_test))


def load_model(entry, labels, kind, source="zoo", average_epochs=None):
    """A trained model of a label budget, from its zoo entry (``source="zoo"``) or from its run (``run_dir``; the
    zoo entry where the run has no such model, as ``export`` keeps it, and says so; ``average_epochs``: see
    ``joint_epochs``)."""
    model = _run_model(entry, labels, kind, average_epochs) if source == "runs" else None
    if model is not None:
        return model
    if source == "runs":
        print(f"no {kind} of {labels} labels per class in the run {runs_home() / entry}: the committed "
              f"{entry_name(entry, labels, kind)}")
    from keras_shortrun import zoo

    return zoo.load(entry_name(entry, labels, kind))


def results_path(entry):
    return runs_home() / entry / RESULTS_FILE


def read_results(entry):
    """The evaluation record of an entry's models: the run folder's ``results.json``, or where there is none (a
    new machine) the record the last export left in the committed entries' ``metadata.json``
    (``committed_results``); ``{}`` before any evaluation."""
    path = results_path(entry)
    return json.loads(path.read_text()) if path.exists() else committed_results(entry)


def update_results(entry, results):
    """Merges ``results`` into ``results_path(entry)``, the run folder's ``results.json`` (what ``export`` and
    ``cards`` write into the entries), starting from ``read_results(entry)``."""
    path = results_path(entry)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(RESULTS_LOCK), "w") as lock:  # two evaluations of one entry merge in turn
        fcntl.flock(lock, fcntl.LOCK_EX)
        merged = read_results(entry)
        for key, value in results.items():
            merged[key] = dict(merged.get(key, {}), **value) if isinstance(value, dict) else value
        atomic_write_text(path, json.dumps(merged, indent=1, sort_keys=True))


def weights_digest(model):
    """A short sha256 of a model's weights, the same for a run's checkpoint and its zoo entry: a score is written
    into an entry only beside the weights it was measured on."""
    digest = hashlib.sha256()
    for weight in model.get_weights():
        digest.update(np.ascontiguousarray(weight).tobytes())
    return digest.hexdigest()[:16]


# how the robustness was measured (pgd_step_size: PGD's step in units of epsilon; None: 2.5 / pgd_steps)
PROTOCOL_KEYS = ("robustness_images", "pgd_steps", "pgd_restarts", "pgd_step_size", "eot_chains")
SCORES = (("accuracy", "accuracy_weights"), ("robustness", "robustness_weights"), ("pgd_curves", "robustness_weights"))
CONVERGENCE = "convergence"  # a second robustness record, of more PGD steps on fewer images (same keys)
# The robustness tables' attacks, in their rows' order (the key in results.json, the row's label): the last row
# counts an image as robust only when it survives every attack on its model.
ATTACK_ROWS = (("FGSM", "FGSM"), ("PGD", "PGD"), ("transfer", "transfer from the ConvNet"),
               ("fixed-noise", "PGD on fixed noise"), ("strongest", "**every attack (per image)**"))
ROW_LABELS = {"clean": "none", **dict(ATTACK_ROWS)}  # results.json's attack keys, as the tables name them


def current_results(results, shipped, committed=None, say=print, record="the"):
    """``results`` without the scores measured on other weights than the ``shipped`` ones (``{name: digest}``,
    ``weights_digest``): a retrained entry never shows its predecessor's numbers. Where ``committed`` (the
    committed record, ``committed_results``) has a score of the shipped weights that ``results`` lacks, it is
    kept: a committed entry that stays keeps its numbers. ``say``s what it leaves out of ``results``."""
    kept = dict(results)
    for scores, digests in SCORES:
        measured = results.get(digests, {})
        kept[scores] = {n: v for n, v in results.get(scores, {}).items() if measured.get(n) == shipped.get(n)}
        for name in sorted(set(results.get(scores, {})) - set(kept[scores])):
            say(f"left out {record} {scores} of {name}: measured on other weights than those written (evaluate again)")
        if committed is not None:
            kept[scores] = {**current_results(committed, shipped, say=lambda _: None)[scores], **kept[scores]}
    if CONVERGENCE in results or (committed or {}).get(CONVERGENCE):
        kept[CONVERGENCE] = current_results(results.get(CONVERGENCE, {}), shipped,
                                            None if committed is None else committed.get(CONVERGENCE, {}), say,
                                            record="the convergence study's")
    return kept


def _robustness_record(results, name):
    """An entry's share of a robustness record (the main one or ``CONVERGENCE``); ``{}`` where it has none."""
    if name not in results.get("robustness", {}):
        return {}
    return {"robustness_protocol": {k: results[k] for k in PROTOCOL_KEYS if results.get(k) is not None},
            "pgd_curves": results.get("pgd_curves", {}).get(name, {})}


def _read_robustness_record(results, name, robustness, record, digest):
    """Puts an entry's ``_robustness_record`` (with its ``robustness`` table) back into ``results``."""
    results.setdefault("robustness", {})[name] = robustness
    results.setdefault("pgd_curves", {})[name] = record["pgd_curves"]
    results.setdefault("robustness_weights", {})[name] = digest
    results.update(record["robustness_protocol"])


def evaluation_record(results, name, labels, kind, digest):
    """What an entry's ``metadata.json`` keeps of ``results`` besides ``metrics`` and ``robustness``, so that
    ``committed_results`` can read the record back on a machine without the run folder."""
    record = {"weights_digest": digest, **_robustness_record(results, name)}
    if name in results.get("accuracy", {}):
        record["accuracy_chains"] = results.get("accuracy_chains")
    convergence = results.get(CONVERGENCE, {})
    if name in convergence.get("robustness", {}):
        record[CONVERGENCE] = {"robustness": convergence["robustness"][name],
                               **_robustness_record(convergence, name)}
    if kind == "classifier" and str(labels) in results.get("unlabelled_curve", {}):
        record["unlabelled_curve"] = results["unlabelled_curve"][str(labels)]
        record["train_split_images"] = results["train_split_images"]
    return record


def committed_results(entry):
    """The evaluation record kept in the committed zoo entries of ``entry`` (``evaluation_record``), in the form
    of ``results.json``; entries written before the record had weight digests add nothing."""
    results = {}
    for labels in LABEL_BUDGETS:
        for kind in ("classifier", "convnet"):
            name = entry_name(entry, labels, kind)
            if not (ROOT / "zoo" / name / METADATA_FILE).is_file():
                continue
            metadata = read_metadata(ROOT / "zoo" / name)
            record = metadata.get("evaluation", {})
            if "weights_digest" not in record:
                continue
            if "accuracy_test" in metadata.get("metrics", {}):
                results.setdefault("accuracy", {})[name] = metadata["metrics"]["accuracy_test"]
                results.setdefault("accuracy_weights", {})[name] = record["weights_digest"]
                results["accuracy_chains"] = record["accuracy_chains"]
            if metadata.get("robustness"):
                _read_robustness_record(results, name, metadata["robustness"], record, record["weights_digest"])
            if CONVERGENCE in record:
                _read_robustness_record(results.setdefault(CONVERGENCE, {}), name, record[CONVERGENCE]["robustness"],
                                        record[CONVERGENCE], record["weights_digest"])
            if "unlabelled_curve" in record:
                results.setdefault("unlabelled_curve", {})[str(labels)] = record["unlabelled_curve"]
                results["train_split_images"] = record["train_split_images"]
    return results


def entry_name(entry, labels, kind):
    """The zoo entry of a label budget's generative classifier (``kind="classifier"``) or ConvNet baseline."""
    return recipes.classifier_entry(f"{entry}_convnet" if kind == "convnet" else entry, labels)


def stage_budget(entry, labels):
    """Updates, wall and CPU time of each stage of a label budget's generative classifier. A stage started from the
    committed entry (``keras-shortrun train ... --from-entry``) adds its own to the entry's record of that stage
    (``continued_from``: the entry's updates) and keeps the entry's record of the stages before it."""
    per_epoch = recipes.run_recipe(entry, runs_home() / entry)["iterations_per_epoch"]
    stages = ("generator", "head", "joint")
    budget = {}
    for stage in stages:
        directory = run_dir(entry, stage, labels)
        if not (directory / "log.csv").is_file():
            continue  # a stage before one started from the committed entry
        epoch, diverged = chosen_epoch(directory)
        last = last_epoch(directory)
        row = log_row(directory, last)
        own = {"iterations": epoch * per_epoch, "iterations_run": last * per_epoch,
               "wall_time_s": round(float(row["wall_time_s"]), 1), "cpu_time_s": round(float(row["cpu_time_s"]), 1),
               "rolled_back": diverged}
        averaged = joint_epochs(entry, directory) if stage == "joint" else [epoch]
        if len(averaged) > 1:
            own["averaged"] = {"snapshots": len(averaged), "after_iterations": [e * per_epoch for e in averaged]}
        started = directory / "started_from.json"
        record = json.loads(started.read_text()) if started.is_file() else {}
        if record.get("start") == "entry":
            inherited = record["entry_metadata"]["training"]["stages"]
            budget.update({s: inherited[s] for s in stages[:stages.index(stage)]})
            before = inherited[stage]
            own.update({k: round(before[k] + own[k], 1) for k in ("wall_time_s", "cpu_time_s")},
                       iterations=before["iterations"] + own["iterations"],
                       iterations_run=before["iterations"] + own["iterations_run"],
                       continued_from=before["iterations"])
            if "averaged" in own:
                own["averaged"]["after_iterations"] = [before["iterations"] + i
                                                       for i in own["averaged"]["after_iterations"]]
        budget[stage] = own
    missing = [stage for stage in stages if stage not in budget]
    if missing:
        raise FileNotFoundError(f"No training log of the {', '.join(missing)} stage(s) of {entry} at {labels} labels "
                                f"per class in {run_dir(entry, 'generator')} (nor a later stage started from the "
                                f"committed entry).")
    return {stage: budget[stage] for stage in stages}


def export_entries(entry, results, data_path=None):
    """Writes the zoo entries of both label budgets and both kinds from their runs; ``results`` come from
    ``tools/eval_classifier.py`` and ``tools/eval_robustness.py`` (``read_results(entry)``), and only the scores
    measured on the weights written go in (``current_results``). The committed entry stays (its card and scores
    refreshed) where the run has no such model, where a baseline's run weights are the entry's, and where a
    generative classifier's run scored lower accuracy than the entry: never a worse one."""
    r = recipes.load(entry)
    x_test, _ = data.load(r["dataset"], "test", path=data_path)
    dataset = data.provenance(r["dataset"], path=data_path, test_split="test set (10,000 images)")
    trained = {(labels, kind): _run_model(entry, labels, kind) for labels in LABEL_BUDGETS
               for kind in ("classifier", "convnet")}
    kept = {key for key, model in trained.items() if _keeps_committed(entry, *key, model, results)}
    shipped = {entry_name(entry, *key): _committed_digest(entry_name(entry, *key)) if key in kept
               else weights_digest(model) for key, model in trained.items()}
    results = current_results(results, shipped, committed=committed_results(entry))
    for (labels, kind), model in trained.items():
        name = entry_name(entry, labels, kind)
        if (labels, kind) in kept:
            _refresh_committed_entry(entry, labels, kind, results, shipped[name])
            continue
        staging = TemporaryDirectory(prefix="keras_shortrun_export_")  # never the run folder: train would not resume
        directory = Path(staging.name)
        metadata = {
            "name": name, "dataset": dict(dataset, labels_per_class=labels), "resolution": 28,
            "metrics": {"accuracy_test": results["accuracy"][name]} if name in results["accuracy"] else {},
            "robustness": results["robustness"].get(name, {}), "keras_version": keras.__version__,
            "evaluation": evaluation_record(results, name, labels, kind, shipped[name]),
            "training": {"hardware": training_hardware(_run_folder(entry, labels, kind)), "labels_per_class": labels,
                         "command": f"python tools/train_{entry}.py train --labels {labels}"},
        }
        extra = []
        if kind == "classifier":
            metadata["chain"] = {
                "steps": r["steps"], "initial_step_size": r["step_size"], "init": "N(0, I)",
                "learned_step_size": float(keras.ops.convert_to_numpy(model.chain.step_size)[0]),
                "update": "z = z + (s^2 / 2) d log p(x, z) / dz + s eps",
            }
            metadata["training"]["stages"] = stage_budget(entry, labels)
            for clock in ("wall_time_s", "cpu_time_s"):
                metadata["training"][clock] = sum(s[clock] for s in metadata["training"]["stages"].values())
            metadata["recipe"] = {k: r[k] for k in ("latent_dim", "widths", "sigma", "batch_size", "generator",
                                                    "head", "joint")}
            sample_and_reconstruction_figures(model, x_test, directory)
            extra = sorted(directory.glob("*.png"))
        else:
            metadata["family"] = "ConvNet"
            metadata["training"]["epochs"] = r["convnet"]["epochs"][str(labels)]
        card = directory / "README.md"
        card.write_text(card_text(metadata, kind, results, entry, labels))
        written = save_entry(model, ROOT / "zoo" / name, metadata, extra_files=[card] + extra)
        staging.cleanup()
        pinned = {n: spec["sha256"] for n, spec in read_metadata(written)["files"].items()}
        print(f"wrote {written}; pin: \"{name}\": {json.dumps(pinned)}")


def refresh_cards(entry, results):
    """Rewrites the committed entries' cards and scores from ``results`` with no run folder needed (after an
    evaluation of the zoo entries); their weights, config and pinned hashes stay as they are."""
    names = {(labels, kind): entry_name(entry, labels, kind) for labels in LABEL_BUDGETS
             for kind in ("classifier", "convnet")}
    shipped = {name: _committed_digest(name) for name in names.values()}
    results = current_results(results, shipped, committed=committed_results(entry))
    for (labels, kind), name in names.items():
        _refresh_committed_entry(entry, labels, kind, results, shipped[name])


def _committed_digest(name):
    """``weights_digest`` of the committed zoo entry ``name`` (in ``ROOT / "zoo"``)."""
    from keras_shortrun import zoo

    return weights_digest(zoo.load(ROOT / "zoo" / name))


def _run_folder(entry, labels, kind):
    return run_dir(entry, "joint" if kind == "classifier" else "convnet", labels)


def _run_model(entry, labels, kind, average_epochs=None):
    """The run's final model of a label budget and kind (``load_trained``), ``None`` where the run has none."""
    folder = _run_folder(entry, labels, kind)
    trained = folder / ("log.csv" if kind == "classifier" else "final.weights.h5")
    return load_trained(entry, labels, kind, average_epochs=average_epochs) if trained.is_file() else None


def _keeps_committed(entry, labels, kind, model, results):
    """Whether ``export`` keeps the committed entry instead of the run's ``model`` (see ``export_entries``); a
    generative classifier's run must have its accuracy measured first (``tools/eval_classifier.py --source runs``)."""
    name = entry_name(entry, labels, kind)
    committed = ROOT / "zoo" / name / METADATA_FILE
    if model is None:
        if not committed.is_file():
            raise FileNotFoundError(f"Neither a run of {name} in {_run_folder(entry, labels, kind)} nor a committed "
                                    f"entry: train it first.")
        return True
    if kind == "convnet":
        return _is_committed_baseline(entry, labels)
    if results.get("accuracy_weights", {}).get(name) != weights_digest(model):
        raise ValueError(f"The run's {name} has no accuracy measured on its weights: run "
                         f"`python tools/eval_classifier.py --dataset {recipes.load(entry)['dataset']} --source runs` "
                         f"before exporting.")
    before = read_metadata(committed.parent).get("metrics", {}).get("accuracy_test") if committed.is_file() else None
    if before is not None and results["accuracy"][name] < before:
        print(f"kept the committed {name}: its accuracy {100 * before:.2f} % beats the run's "
              f"{100 * results['accuracy'][name]:.2f} %")
        return True
    return False


def _is_committed_baseline(entry, labels):
    """Whether the run's ConvNet baseline of a label budget is its committed zoo entry, byte for byte. Such a
    baseline keeps its entry (weights, training record): it is also a feature network of the FD/KID metrics."""
    committed = ROOT / "zoo" / entry_name(entry, labels, "convnet") / WEIGHTS_FILE
    trained = run_dir(entry, "convnet", labels) / "final.weights.h5"
    return committed.is_file() and committed.read_bytes() == trained.read_bytes()


def _refresh_committed_entry(entry, labels, kind, results, digest):
    """Rewrites a committed entry's card and the scores in its ``metadata.json`` (accuracy, robustness, the
    evaluation record) from ``results``, already ``current_results`` for its weights (``digest``); its weights
    and config, and so its pinned hashes, stay as they are."""
    name = entry_name(entry, labels, kind)
    directory = ROOT / "zoo" / name
    metadata = read_metadata(directory)
    metadata["metrics"] = {k: v for k, v in metadata.get("metrics", {}).items() if k != "accuracy_test"}
    if name in results["accuracy"]:
        metadata["metrics"]["accuracy_test"] = results["accuracy"][name]
    metadata["robustness"] = results["robustness"].get(name, {})
    metadata["evaluation"] = evaluation_record(results, name, labels, kind, digest)
    atomic_write_text(directory / "README.md", card_text(metadata, kind, results, entry, labels))
    atomic_write_text(directory / METADATA_FILE, json.dumps(metadata, indent=1, sort_keys=True))
    print(f"refreshed the card and scores of {directory} (weights unchanged)")


def _robustness_rows(results, names):
    """The robustness table of the entries ``names`` (columns), then the accuracy of PGD's iterates."""
    table = results.get("robustness", {})
    if not table:
        return "(not measured yet)"
    lines = ["| attack | epsilon | " + " | ".join(f"`{n}`" for n in names) + " |",
             "| --- | --- | " + " | ".join("---" for _ in names) + " |"]
    keys = {k for n in names for k in table.get(n, {})}
    images = results["robustness_images"]
    for key in sorted(keys, key=lambda k: (list(ROW_LABELS).index(k.split("@")[0]), float(k.split("@")[1]))):
        attack, eps = key.split("@")
        cells = [_accuracy_cell(table[n][key], images) if key in table.get(n, {}) else "" for n in names]
        lines.append(f"| {ROW_LABELS[attack]} | {eps} | " + " | ".join(cells) + " |")
    unmeasured = [f"`{n}`" for n in names if n not in table]
    if unmeasured:  # an entry retrained since: its predecessor's scores were left out
        lines += ["", f"Not measured on the current weights of {', '.join(unmeasured)} yet: the command below "
                      "measures them."]
    return "\n".join(lines) + _pgd_curve_rows(results, names)


def _pgd_curve_rows(results, names):
    """Accuracy after each checkpoint of PGD's steps (``attacks.pgd_curve``), per model and attack: a curve
    still falling at the last step means the attack has not converged."""
    curves = {(n, key): curve for n in names for key, curve in results.get("pgd_curves", {}).get(n, {}).items()}
    if not curves:
        return ""
    steps = sorted({int(s) for curve in curves.values() for s in curve})
    lines = ["", "", "Accuracy after each number of PGD steps (same images):", "",
             "| model | attack | epsilon | " + " | ".join(f"{s} steps" for s in steps) + " |",
             "| --- | --- | --- | " + " | ".join("---" for _ in steps) + " |"]
    for (name, key), curve in curves.items():
        attack, eps = key.split("@")
        cells = [f"{100 * curve[str(s)]:.1f} %" if str(s) in curve else "" for s in steps]
        lines.append(f"| `{name}` | {ROW_LABELS[attack]} | {eps} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _convergence_section(results, names, dataset):
    """The card's section on the ``CONVERGENCE`` record: the robustness table under more PGD steps and restarts on
    fewer images, with its iterates and command; empty before such a study."""
    convergence = results.get(CONVERGENCE, {})
    if not any(n in convergence.get("robustness", {}) for n in names):
        return ""
    method, command = _robustness_method(convergence, dataset)
    return (f"## Does the attack converge? ({convergence['robustness_images']} first test images, "
            f"{convergence['pgd_steps']} PGD steps)\n{method}\n\n{_robustness_rows(convergence, names)}\n\n"
            f"```\n{command} --convergence\n```\n\n")


def _accuracy_cell(accuracy, images):
    """``accuracy`` in percent with its 95 % Wilson interval over ``images``."""
    low, high = wilson_interval(round(accuracy * images), images)
    return f"{100 * accuracy:.1f} % ({100 * low:.1f}-{100 * high:.1f})"


def _robustness_method(results, dataset):
    """What the robustness table measured, and the command that measures it again."""
    restarts = results.get("pgd_restarts", 1)
    epsilons = sorted({float(k.split("@")[1]) for v in results.get("robustness", {}).values() for k in v} - {0.0})
    step_size = results.get("pgd_step_size")
    step = "2.5 eps / steps" if step_size is None else f"{step_size:g} eps"
    text = (f"FGSM, and PGD with {results.get('pgd_steps', '?')} steps (step {step}) from {restarts} random "
            f"start{'s' if restarts > 1 else ''} (robust: no start fools the model)")
    attacks = {k.split("@")[0] for v in results.get("robustness", {}).values() for k in v}
    if "transfer" in attacks:
        text += "; transfer from the ConvNet: its PGD adversarials shown to the generative classifier"
    if "fixed-noise" in attacks:
        text += "; PGD on fixed noise: on a copy of the generative classifier whose chain noise is frozen"
    if "strongest" in attacks:
        text += "; every attack (per image): an image counts only when it survives every attack on its model"
    command = (f"python tools/eval_robustness.py --dataset {dataset} --images {results.get('robustness_images')} "
               f"--pgd-steps {results.get('pgd_steps')} --restarts {restarts} "
               f"{'' if step_size is None else f'--step-size {step_size:g} '}--eot-chains "
               f"{results.get('eot_chains')} --epsilons {' '.join(f'{e:g}' for e in epsilons)}")
    return text + ". Cells: accuracy (95 % Wilson interval).", command


def _accuracy_rows(results, entry):
    accuracy = results.get("accuracy", {})
    rows = []
    for budget in LABEL_BUDGETS:
        pair = [accuracy.get(entry_name(entry, budget, k)) for k in ("classifier", "convnet")]
        if None not in pair:
            rows.append(f"| {budget} | {100 * pair[0]:.2f} % | {100 * pair[1]:.2f} % | "
                        f"{100 * (pair[0] - pair[1]):+.2f} |")
    return "\n".join(rows) or "| (not measured yet) | | | |"


def _unlabelled_curve(results, entry):
    """The card's section on accuracy against unlabelled images (``tools/eval_unlabelled.py``); where the curve has
    no point of every training image (one recorded at the curve's budget, before an entry was trained on), the
    entry's own accuracy is that point."""
    if not results.get("unlabelled_curve"):
        return ""
    lines = []
    for labels, curve in sorted(results["unlabelled_curve"].items(), key=lambda item: int(item[0])):
        points = {int(n): accuracy for n, accuracy in curve.items()}
        full = results.get("accuracy", {}).get(entry_name(entry, int(labels), "classifier"))
        if full is not None:
            points.setdefault(results["train_split_images"], full)
        labelled = int(labels) * recipes.load(entry)["num_classes"]
        lines += [f"## Unlabelled images, {labels} labels per class\n"
                  f"The same {labelled} labelled images; the generator and joint stages see only the training images "
                  f"kept (class-balanced nested subsets, `tools/eval_unlabelled.py`). The ConvNet baseline never sees "
                  f"unlabelled images.\n",
                  "| training images | unlabelled images | generative classifier |", "| --- | --- | --- |"]
        lines += [f"| {n} | {n - labelled} | {100 * points[n]:.2f} % |" for n in sorted(points)]
    return "\n".join(lines) + "\n\n"


def card_text(metadata, kind, results, entry, labels):
    """The entry's README, ``CARD`` filled in: what it is, its accuracy and robustness numbers, how to reproduce
    them."""
    return CARD.read_text().format(**flat_card_fields(metadata, kind, results, entry, labels))


def flat_card_fields(metadata, kind, results, entry, labels):
    """``CARD``'s fields; the parts that differ between a generative classifier and its ConvNet baseline come in
    written out."""
    if kind == "classifier":
        usage = ("p = model.predict(x_test)           # (B, 10), 8 chains averaged\n"
                 "x = model.synthesize(16, seed=0)\nx_hat, mse = model.reconstruct(x_test[:16], seed=0)")
        pictures = ("## Samples (from the prior)\n![samples](samples.png)\n\n"
                    "## Reconstructions of test images (pairs: original, reconstruction)\n"
                    "![reconstruction](reconstruction.png)\n")
    else:
        usage = "p = model.predict(x_test)   # (B, 10)"
        pictures = ""
    compared = [entry_name(entry, LABEL_BUDGETS[0], k) for k in ("classifier", "convnet")]  # robustness columns
    robustness_method, robustness_command = _robustness_method(results, metadata["dataset"]["name"])
    return dict(
        name=metadata["name"], what=model_text(metadata, kind, entry, labels), usage=usage, labels=labels,
        accuracy_rows=_accuracy_rows(results, entry), robustness_images=results.get("robustness_images", "?"),
        eot_chains=results.get("eot_chains", "?"),
        robustness=_robustness_rows(results, compared), robustness_method=robustness_method,
        convergence=_convergence_section(results, compared, metadata["dataset"]["name"]),
        robustness_command=robustness_command, pictures=pictures,
        unlabelled_curve=_unlabelled_curve(results, entry) if kind == "classifier" else "",
        train_command=metadata["training"]["command"], dataset=metadata["dataset"]["name"],
        licence=metadata["dataset"]["licence"],
    )


def model_text(metadata, kind, entry, labels):
    """The card's first paragraphs: the generative classifier and its training stages, or the ConvNet baseline."""
    if kind != "classifier":
        return (f"The ConvNet baseline of `{entry_name(entry, labels, 'classifier')}` (the thesis's: four 3x3 "
                f"convolutions with Mish, two max-pools, MLP 140-80-10), trained on the same {labels} labelled images "
                f"per class only, {metadata['training']['epochs']} epochs of Adam.")
    c, t = metadata["chain"], metadata["training"]
    what = (
        f"A generative classifier (Fischer 2020): generator z (200-d) -> 28x28 with transposed convolutions "
        f"{_widths_text(metadata['recipe']['widths'])}, "
        f"sigma={metadata['recipe']['sigma']}; "
        f"a Mish MLP head 200-140-80-10 on latents inferred by K={c['steps']} Langevin steps from N(0, I) "
        f"(learned step size {c['learned_step_size']:.4f}); predictions average 8 chains.\n\n"
        f"Trained on {metadata['dataset']['name']} with {labels} labels per class; the other training images "
        f"were used unlabelled. Stages: generator {t['stages']['generator']['iterations']} updates on all images, "
        f"head {t['stages']['head']['iterations']}, joint BPTT {t['stages']['joint']['iterations']}"
        f"{_continued_text(t['stages']['joint'])} (batches of 32 labelled + 32 unlabelled"
        f"{_clip_text(metadata['recipe']['joint'])}); "
        f"{t['cpu_time_s'] / 60:.0f} CPU-minutes ({t['wall_time_s'] / 60:.0f} min of wall time) on {t['hardware']}."
    )
    joint = t["stages"]["joint"]
    if "averaged" in joint:
        after = joint["averaged"]["after_iterations"]
        what += (
            f" The weights are the uniform average of the joint stage's {joint['averaged']['snapshots']} snapshots "
            f"after its updates {after[0]} to {after[-1]} (one every {after[1] - after[0]}; stochastic weight "
            f"averaging, no retraining; the recipe's `joint.average_epochs`)."
        )
    if joint["rolled_back"]:
        what += (
            f"\n\nThe joint stage ran {joint['iterations_run']} updates, but its training loss rose above "
            f"{STAGE_DIVERGENCE_FACTOR}x its lowest (BPTT through the chain diverged), so this entry is the "
            f"checkpoint with the lowest training loss, after {joint['iterations']} joint updates (chosen "
            f"from training logs only; `chosen_epoch` in `keras_shortrun/training.py`)."
        )
    return what


def _continued_text(stage):
    """How a stage continued from the committed entry split its updates (``stage_budget``); ``""`` if it did not."""
    if "continued_from" not in stage:
        return ""
    return (f" ({stage['continued_from']}, then {stage['iterations'] - stage['continued_from']} more from the "
            f"committed entry with a fresh optimizer)")


def _clip_text(joint):
    clipnorm = joint.get("global_clipnorm")
    return "" if clipnorm is None else f", Adam's update clipped at global gradient norm {clipnorm:g}"


def _widths_text(widths):
    if tuple(widths) == THESIS_WIDTHS:
        return f"{list(widths)} (the thesis's widths)"
    return f"{list(widths)} (the thesis's are {list(THESIS_WIDTHS)}; a CPU budget)"


def _generator_done(entry):
    directory = run_dir(entry, "generator")
    if not (directory / "log.csv").exists():
        return False
    r = recipes.run_recipe(entry, runs_home() / entry)
    return last_epoch(directory) * r["iterations_per_epoch"] >= r["generator"]["iterations"]


def main(entry, doc):
    """Command line of ``tools/train_<entry>.py``."""
    import argparse

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("train", "export", "cards"))
    parser.add_argument("--stage", choices=("generator", "head", "joint", "convnet", "all"), default="all")
    parser.add_argument("--labels", type=int, choices=LABEL_BUDGETS, default=LABEL_BUDGETS[0])
    parser.add_argument("--data-path", default=None)
    args = parser.parse_args()
    if args.action == "export":
        export_entries(entry, read_results(entry), args.data_path)
        return
    if args.action == "cards":
        refresh_cards(entry, read_results(entry))
        return
    stages = ("generator", "head", "joint", "convnet") if args.stage == "all" else (args.stage,)
    for stage in stages:
        if stage == "generator" and _generator_done(entry):
            continue  # shared by both label budgets: trained once
        train_stage(entry, stage, None if stage == "generator" else args.labels, args.data_path)
