"""The ``keras-shortrun`` command: zoo listing, sampling, interpolation, reconstruction, classification, training
(every family, from the recipes), export and ONNX serving."""

import argparse
import fnmatch
import importlib.util
import json
import math
import os
import re
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter out of the CLI

import numpy as np

from keras_shortrun.errors import TrainingDiverged

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")  # what Pillow writes
# What importing TensorFlow prints on stderr however TF_CPP_MIN_LOG_LEVEL is set (absl logs before it reads it).
TENSORFLOW_STARTUP = re.compile(r"WARNING: All log messages before absl::InitializeLog\(\)|I0000 .*\] (oneDNN custom "
                                r"operations are on|This TensorFlow binary is optimized)|To enable the following "
                                r"instructions")


def _positive_int(text):
    value = int(text) if re.fullmatch(r"[+]?\d+", text.strip()) else None
    if value is None or value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _non_negative_int(text):
    if not re.fullmatch(r"[+]?\d+", text.strip()):
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return int(text)


def _seed(text):
    value = _non_negative_int(text)
    if value >= 2**32:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, 2**32), got {text!r}")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit 2) that point to ``--help``."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def check_output_file(path, extensions, what="output"):
    """Raises ``ValueError`` unless ``path`` can be written as a new or replaced file with one of
    ``extensions``: checked before any model is loaded or sampled."""
    path = Path(path)
    if path.suffix.lower() not in extensions:
        raise ValueError(f"{what} {path} must end in one of {', '.join(extensions)}.")
    if path.is_dir():
        raise ValueError(f"{what} {path} is a directory; give a file name such as {path / ('out' + extensions[0])}.")
    parent = path.parent
    if not parent.is_dir():
        raise ValueError(f"{what} {path}: the directory {parent} does not exist.")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ValueError(f"{what} {path} is not writable.")


def check_distinct_outputs(*named_paths):
    """Raises ``ValueError`` when two of ``named_paths`` (``(option, path)`` pairs, ``None`` paths skipped) are
    the same file: the second write would replace the first."""
    given = [(option, Path(path)) for option, path in named_paths if path is not None]
    for i, (option, path) in enumerate(given):
        for other_option, other in given[:i]:
            same = path.resolve() == other.resolve() or (path.exists() and other.exists() and path.samefile(other))
            if same:
                raise ValueError(f"{other_option} and {option} name the same file ({path}): the second would replace "
                                 "the first; give two different paths.")


# What ``keras-shortrun train`` (``fit_resumable`` and ``model.save``) writes into a run folder, by name:
# top-level files, and folders with the glob patterns of their files (``.*partial*``: a write cut short).
RUN_FILES = ("log.csv", "wall_time.json", "model.keras", "recipe.json", "hardware.json", "started_from.json",
             "forked_from.json")
RUN_FOLDERS = {
    "backup": ("state-*.weights.h5", "state-*.json", ".state-*.partial.weights.h5", ".state-*.json.partial",
               "settings.json", ".settings.json.partial"),
    "checkpoints": ("epoch_*.weights.h5", ".epoch_*.partial.weights.h5", "epoch_*.keep"),
    "samples": ("samples_*.png",),
}
STAGE_FOLDER = re.compile(r"generator|(head|joint)_\d+")  # recipes.stage_dir
# What the classifier evaluation tools keep in an entry's run folder (tools/eval_classifier.py, eval_robustness.py):
# ``train`` never writes these names, so they stay beside a run and make a folder neither ours nor foreign.
RESULTS_FILE = "results.json"
RESULTS_LOCK = f".{RESULTS_FILE}.lock"  # held while an evaluation merges its scores into RESULTS_FILE
EVALUATION_RECORDS = {RESULTS_FILE: Path.is_file, RESULTS_LOCK: Path.is_file, "robustness_cache": Path.is_dir}
RECIPE_RECORD_KEYS = frozenset({"overrides", "recipe"})  # recipes.record_recipe's record
STATE_RECORD_KEYS = frozenset({"index", "epoch", "weights", "sha256", "seed_states"})  # ResumableBackup's records
SETTINGS_KEYS = frozenset({"data", "iterations_per_epoch"})  # in backup/settings.json, written as a run starts


def _holds_keys(path, keys):
    """Whether ``path`` is a JSON object with every one of ``keys``."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and keys <= set(record)


def check_run_folder(out):
    """Raises ``ValueError`` unless ``train`` may write into ``out``: absent, an empty folder, or a run folder
    that ``train`` wrote, to resume. That is decided by name, before any data is loaded (``fit_resumable``
    writes no marker): every entry is one of ``RUN_FILES`` or ``RUN_FOLDERS`` (plain files of the folder's
    patterns, no links, or a classifier's stage folders), and ``backup/`` holds a state record of
    ``ResumableBackup`` or the run's ``settings.json``, or ``recipe.json`` is ``recipes.record_recipe``'s record,
    unless the folder holds nothing but empty files and cut-short writes (a run stopped in
    its first epoch: nothing to lose). Anything else is a user's folder, whose ``model.keras`` would be
    replaced and ``log.csv`` appended to. A ``wall_time.json`` must be the record ``WallClock`` reads."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder: give a new or empty folder, or a run folder of "
                         "keras-shortrun train to resume.")
    if not out.exists() or not any(out.iterdir()):
        return
    foreign, files = [], []
    for entry in sorted(out.iterdir()):
        if entry.is_symlink():
            foreign.append(entry.name)
        elif entry.name in RUN_FILES and entry.is_file():
            files.append(entry)
        elif entry.is_dir() and STAGE_FOLDER.fullmatch(entry.name) and not entry.is_symlink():
            continue  # a classifier run's stage: a run folder of its own, checked on its own
        elif entry.name in EVALUATION_RECORDS and EVALUATION_RECORDS[entry.name](entry):
            continue
        elif entry.name in RUN_FOLDERS and entry.is_dir():
            for inner in sorted(entry.iterdir()):
                if inner.is_symlink() or not inner.is_file() or \
                        not any(fnmatch.fnmatchcase(inner.name, p) for p in RUN_FOLDERS[entry.name]):
                    foreign.append(f"{entry.name}/{inner.name}")
                else:
                    files.append(inner)
        else:
            foreign.append(entry.name)
    backup = out / "backup"
    ours = backup.is_dir() and (any(_holds_keys(p, STATE_RECORD_KEYS) for p in backup.glob("state-*.json"))
                                or _holds_keys(backup / "settings.json", SETTINGS_KEYS)) \
        or _holds_keys(out / "recipe.json", RECIPE_RECORD_KEYS)
    nothing_to_lose = all(p.stat().st_size == 0 or ".partial" in p.name for p in files)
    if foreign or not (ours or nothing_to_lose):
        held = ", ".join(foreign[:5] if foreign else sorted(p.name for p in out.iterdir())[:5])
        raise ValueError(
            f"--out {out} exists and is not a run folder of keras-shortrun train (it holds {held}"
            f"{', ...' if len(foreign) > 5 else ''}): refusing to write into it (its model.keras would be replaced "
            "and its log.csv appended to). Give a new or empty folder, or remove it yourself."
        )
    wall_time = out / "wall_time.json"
    if wall_time.is_file():
        try:
            seconds = json.loads(wall_time.read_text()).get("wall_time_s")
        except (OSError, ValueError, AttributeError):
            seconds = None
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
            raise ValueError(f"--out {out}: {wall_time} is not the wall-clock record train writes (a JSON object "
                             "with a finite wall_time_s): restore it, or remove it to count the wall time afresh.")


def _import_tensorflow_quietly():
    """Imports TensorFlow (when it is the backend) with its start-up lines kept off stderr; every other line
    it prints there is passed on."""
    if os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow" or importlib.util.find_spec("tensorflow") is None:
        return
    with tempfile.TemporaryFile() as captured:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode(errors="replace").splitlines()
                    if not TENSORFLOW_STARTUP.match(line)]
            if kept:
                print("\n".join(kept), file=sys.stderr)


def _print_table(rows, columns):
    """Prints ``rows`` (dicts) as aligned text; ``columns`` maps row keys to headers."""
    widths = [max(len(h), *(len(str(r.get(c, ""))) for r in rows)) for c, h in columns.items()]
    print("  ".join(h.ljust(w) for h, w in zip(columns.values(), widths)).rstrip())
    for row in rows:
        print("  ".join(str(row.get(c, "")).ljust(w) for c, w in zip(columns, widths)).rstrip())


def cmd_zoo(args):
    from keras_shortrun import zoo

    if args.zoo_command == "list":
        rows = zoo.list(args.filter)
        for row in rows:
            row["metrics"] = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                       for k, v in row["metrics"].items())
        _print_table(rows, {"name": "entry", "family": "family", "dataset": "dataset", "resolution": "resolution",
                            "params": "params", "steps": "K", "metrics": "metrics", "hardware": "training hardware"})
    else:
        print(json.dumps(zoo.info(args.name), indent=1, sort_keys=True))


def _load(name_or_path):
    """A zoo entry (name or folder) or a ``.keras`` file (e.g. written by ``train``)."""
    if str(name_or_path).endswith(".keras"):
        from keras_shortrun.saving import load_keras_file

        return load_keras_file(name_or_path)
    from keras_shortrun import zoo

    return zoo.load(name_or_path)


PLAIN_KERAS = "plain Keras model"  # the family of a .keras file whose model is not a keras_shortrun class
GENERATIVE_FAMILIES = ("ShortRunEBM", "MultiLayerLVM", "VAE", "GenerativeClassifier")
LATENT_FAMILIES = ("MultiLayerLVM", "VAE", "GenerativeClassifier")  # sample ancestrally; no chain from noise
# command -> the families it takes (zoo families; a .keras file's keras_shortrun class is its family)
COMMAND_FAMILIES = {
    "sample": GENERATIVE_FAMILIES,
    "interpolate": ("ShortRunEBM",),
    "reconstruct": GENERATIVE_FAMILIES,
    "classify": ("GenerativeClassifier", "ConvNet", PLAIN_KERAS),
}


def model_family(name_or_path):
    """The family of a zoo entry (from its metadata) or of a ``.keras`` file (from its config, checked by
    ``saving.check_config``: the keras_shortrun class, else ``PLAIN_KERAS``), read without building the model."""
    if str(name_or_path).endswith(".keras"):
        from keras_shortrun.saving import PACKAGE
        from keras_shortrun.saving import read_keras_config

        _, config = read_keras_config(name_or_path)  # a class that carries code is named first, whatever the command
        registered = config.get("registered_name")
        if isinstance(registered, str) and registered.startswith(f"{PACKAGE}>"):
            return str(config.get("class_name"))
        return PLAIN_KERAS
    from keras_shortrun import zoo

    return str(zoo.info(name_or_path).get("family"))


TAKES = {"classify": "a classifier: a GenerativeClassifier or ConvNet entry, or a .keras file of a Keras classifier"}


def check_family(command, name_or_path, families, family=None):
    """Raises ``ValueError`` unless the model ``name_or_path`` (of ``family``, by default read by
    ``model_family``: the model is not loaded) is of one of ``families``: one line saying what it is and what
    ``command`` takes. Returns its family."""
    family = model_family(name_or_path) if family is None else family
    if family not in families:
        what = f"a {PLAIN_KERAS} (not a keras_shortrun family)" if family == PLAIN_KERAS else f"a {family}"
        takes = TAKES.get(command, f"{', '.join(families)} models")
        raise ValueError(f"{name_or_path} is {what}; {command} takes {takes}.")
    return family


def _load_family(command, name_or_path, families):
    """``_load``, then the model's class checked against ``families`` (the config named it already; this
    keeps a model of another class from reaching a method it lacks)."""
    model = _load(name_or_path)
    check_family(command, name_or_path, families, type(model).__name__)
    return model


def cmd_sample(args):
    from keras_shortrun.images import save_gif
    from keras_shortrun.images import save_grid

    check_output_file(args.output, IMAGE_EXTENSIONS)
    if args.gif:
        check_output_file(args.gif, (".gif",), "--gif")
        check_distinct_outputs(("-o", args.output), ("--gif", args.gif))
    family = check_family("sample", args.model, COMMAND_FAMILIES["sample"])
    if args.gif and family in LATENT_FAMILIES:  # latent models sample ancestrally: no chain to animate
        raise ValueError(f"{args.model} samples ancestrally (no Langevin chain from noise); drop --gif.")
    model = _load_family("sample", args.model, COMMAND_FAMILIES["sample"])
    if family in LATENT_FAMILIES:
        save_grid(args.output, model.synthesize(args.n, seed=args.seed), scale=args.scale)
        print(f"wrote {args.n} samples to {args.output}")
        return
    every = None if args.gif is None else max(1, (args.steps or model.chain.steps) // 25)
    out = model.sample(args.n, steps=args.steps, seed=args.seed, trajectory_every=every)
    samples = out if every is None else out[0]
    save_grid(args.output, samples, scale=args.scale)
    print(f"wrote {args.n} samples to {args.output}")
    if args.gif:
        save_gif(args.gif, out[1], scale=args.scale)
        print(f"wrote the chain ({out[1].shape[1]} frames) to {args.gif}")


def cmd_interpolate(args):
    from keras_shortrun.images import save_grid
    from keras_shortrun.seeds import stream

    check_output_file(args.output, IMAGE_EXTENSIONS)
    family = model_family(args.model)
    if family in LATENT_FAMILIES:
        raise ValueError(f"{args.model} is a {family}, which interpolates between images: use "
                         "model.interpolate(x1, x2) in Python.")
    check_family("interpolate", args.model, COMMAND_FAMILIES["interpolate"], family)
    model = _load_family("interpolate", args.model, COMMAND_FAMILIES["interpolate"])
    rows = [model.interpolate(n=args.n, seed=stream(args.seed, f"row_{i}"), steps=args.steps)[0]
            for i in range(args.rows)]
    save_grid(args.output, np.concatenate(rows), columns=args.n, scale=args.scale)
    print(f"wrote {args.rows} interpolation strips of {args.n} to {args.output}")


def cmd_reconstruct(args):
    from keras_shortrun import data
    from keras_shortrun.images import save_grid

    if args.output:
        check_output_file(args.output, IMAGE_EXTENSIONS)
    family = check_family("reconstruct", args.model, COMMAND_FAMILIES["reconstruct"])
    model = _load_family("reconstruct", args.model, COMMAND_FAMILIES["reconstruct"])
    x, _ = data.load(args.data, args.split, path=args.data_path)
    x = x[: args.n]
    if family in LATENT_FAMILIES:  # latent models: one pass of their inference
        x_hat, mse = model.reconstruct(x, seed=args.seed)
    else:
        x_hat, mse = model.reconstruct(x, iterations=args.iterations, seed=args.seed)
    print(f"reconstruction MSE over {len(x)} {args.data}/{args.split} images: {mse.mean():.5f} "
          f"(std {mse.std():.5f}; pixels in [-1, 1])")
    if args.output:
        pairs = np.stack([x[:32], x_hat[:32]], axis=1).reshape((-1,) + x.shape[1:])
        save_grid(args.output, pairs, columns=min(16, len(pairs)), scale=args.scale)
        print(f"wrote originals and reconstructions (alternating) to {args.output}")


def _class_count(model, name):
    """K of a Keras classifier with one ``(None, K)`` output, ``K >= 2``; ``ValueError`` otherwise."""
    try:
        shape = model.output_shape
    except (AttributeError, ValueError, RuntimeError):
        shape = None
    if not (isinstance(shape, tuple) and len(shape) == 2 and isinstance(shape[1], int) and shape[1] >= 2):
        raise ValueError(f"{name} is not a classifier: its output has shape {shape}; classify needs one score per "
                         "class, shape (None, K) with K >= 2.")
    return shape[1]


def cmd_classify(args):
    from keras_shortrun import data

    family = check_family("classify", args.model, COMMAND_FAMILIES["classify"])
    x, y = data.load(args.data, args.split, path=args.data_path)
    if y is None:
        raise ValueError(f"{args.data}/{args.split} has no labels to score against: classify needs a labelled "
                         "dataset (--data mnist, fashion_mnist or cifar10).")
    x, y = x[: args.n], y[: args.n]
    model = _load(args.model)
    if family == "GenerativeClassifier":  # generative classifier: average over independent chains
        check_family("classify", args.model, COMMAND_FAMILIES["classify"], type(model).__name__)
        probabilities = model.predict_proba(x, chains=args.chains, seed=args.seed)
        how = f"{args.chains} chains per image"
    else:
        classes = _class_count(model, args.model)
        if int(y.max()) >= classes:
            raise ValueError(f"{args.data}/{args.split} has labels up to {int(y.max())}, but {args.model} scores "
                             f"{classes} classes: it was trained for another dataset.")
        probabilities = model.predict(x, batch_size=256, verbose=0)
        how = "deterministic"
    accuracy = float(np.mean(np.argmax(probabilities, axis=1) == y))
    print(f"accuracy on {len(x)} {args.data}/{args.split} images: {100 * accuracy:.2f} % ({how})")


def cmd_train(args):
    from keras_shortrun import recipes
    from keras_shortrun.training import runs_home

    overrides = recipes.parse_overrides(args.set)
    try:
        recipe = recipes.check(recipes.apply_overrides(recipes.load(args.recipe), overrides))
    except KeyError as error:
        raise ValueError(error.args[0]) from None
    classifier = recipe["family"] == "classifier"
    if not classifier and (args.stage or args.labels):
        raise ValueError(f"--stage and --labels are for classifier recipes; {args.recipe!r} is a {recipe['family']}.")
    labels = args.labels or recipes.CLASSIFIER_LABEL_BUDGETS[0]
    if classifier:
        recipes.check_label_budget(recipe, labels)
    out = Path(args.out) if args.out else runs_home() / args.recipe
    stages = (("generator", "head", "joint") if args.stage in (None, "all") else (args.stage,)) if classifier \
        else (None,)
    folders = [recipes.stage_dir(out, stage, labels) if classifier else out for stage in stages]
    for folder in [out] + folders:
        check_run_folder(folder)
    start_from = recipes.classifier_entry(args.recipe, labels) if classifier else args.recipe
    for stage, folder in zip(stages, folders):
        model = recipes.train(args.recipe, out, overrides, args.iterations, variant=stage,
                              labels=None if stage in (None, "generator") else labels, data_path=args.data_path,
                              start_from=start_from if args.from_entry else None, fork_from=args.fork_from)
        model.save(folder / "model.keras")
        print(f"saved {folder / 'model.keras'}; checkpoints and sample grids are in {folder}")


def cmd_serve_onnx(args):
    from keras_shortrun.serving import OnnxSampler

    check_output_file(args.output, IMAGE_EXTENSIONS)
    sampler = OnnxSampler(args.path, providers=None if args.provider is None else [args.provider])
    sampler.save_grid(args.output, n=args.n, seed=args.seed, scale=args.scale)
    print(f"wrote {args.n} samples from {args.path} to {args.output} ({sampler.provider})")


def cmd_export(args):
    import keras

    if keras.backend.backend() != "tensorflow":
        raise ValueError(f"export needs the TensorFlow backend (it traces the model with TensorFlow), but the Keras "
                         f"backend is {keras.backend.backend()!r}: run it with KERAS_BACKEND=tensorflow.")
    from keras_shortrun import export
    from keras_shortrun.export.graphs import FAMILIES

    opset = export.check_opset(export.DEFAULT_OPSET if args.opset is None else args.opset)
    if args.format == "onnx":
        check_output_file(args.output, (".onnx",))
    export.check_export_path(args.output, args.format, args.overwrite)
    families = tuple(cls.__name__ for cls in FAMILIES)
    check_family("export", args.model, families)
    model = _load_family("export", args.model, families)
    options = {"graph": args.graph, "steps": args.steps, "noise": args.noise, "chains": args.chains,
               "overwrite": args.overwrite}
    if args.format == "onnx":
        info = export.to_onnx(model, args.output, opset=opset, **options)
    else:
        info = export.to_saved_model(model, args.output, **options)
    names = ", ".join(t["name"] for t in info["inputs"]) + " -> " + ", ".join(t["name"] for t in info["outputs"])
    error = f", max |ONNX - Keras| {info['max_abs_error']:.2g}" if "max_abs_error" in info else ""
    print(f"wrote the {info['graph']} graph ({names}, K={info['steps']}) to {args.output}{error}")


def build_parser():
    from keras_shortrun import recipes

    parser = _Parser(prog="keras-shortrun", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    zoo_parser = sub.add_parser("zoo", help="list or describe pretrained entries")
    zoo_sub = zoo_parser.add_subparsers(dest="zoo_command", required=True, parser_class=_Parser)
    zoo_list = zoo_sub.add_parser("list", help="table of entries")
    zoo_list.add_argument("--filter", default=None, help="substring of name, family or dataset")
    zoo_info = zoo_sub.add_parser("info", help="metadata of one entry (JSON)")
    zoo_info.add_argument("name")
    zoo_parser.set_defaults(func=cmd_zoo)

    def add_model_args(p, n_default):
        p.add_argument("model", help="zoo entry name, entry folder or .keras file")
        p.add_argument("-n", type=_positive_int, default=n_default)
        p.add_argument("-o", "--output", default=None)
        p.add_argument("--steps", type=_positive_int, default=None, help="Langevin steps K (default: the model's)")
        p.add_argument("--seed", type=_seed, default=0)
        p.add_argument("--scale", type=_positive_int, default=2, help="pixel upscaling of the PNG")

    sample = sub.add_parser("sample", help="sample a grid into a PNG")
    add_model_args(sample, 64)
    sample.add_argument("--gif", default=None, help="also write the chain evolving from noise as a GIF")
    sample.set_defaults(func=cmd_sample, output="samples.png")

    interpolate = sub.add_parser("interpolate", help="interpolation strips between chain inputs")
    add_model_args(interpolate, 10)
    interpolate.add_argument("--rows", type=_positive_int, default=4)
    interpolate.set_defaults(func=cmd_interpolate, output="interpolation.png")

    reconstruct = sub.add_parser("reconstruct", help="reconstruct held-out images through the chain")
    add_model_args(reconstruct, 64)
    reconstruct.add_argument("--data", default="mnist")
    reconstruct.add_argument("--split", default="test")
    reconstruct.add_argument("--data-path", default=None)
    reconstruct.add_argument("--iterations", type=_positive_int, default=200)
    reconstruct.set_defaults(func=cmd_reconstruct)

    classify = sub.add_parser("classify", help="accuracy of a classifier entry on a labelled split")
    classify.add_argument("model", help="zoo entry name, entry folder, or .keras file")
    classify.add_argument("--data", default="mnist")
    classify.add_argument("--split", default="test")
    classify.add_argument("--data-path", default=None)
    classify.add_argument("-n", type=_positive_int, default=10000, help="first n images of the split")
    classify.add_argument("--chains", type=_positive_int, default=8,
                          help="chains averaged per image (generative classifier)")
    classify.add_argument("--seed", type=_seed, default=0)
    classify.set_defaults(func=cmd_classify)

    serve = sub.add_parser("serve-onnx", help="sample a PNG grid from an exported ONNX sampler (onnxruntime only)")
    serve.add_argument("path", help="an .onnx sampler written by `keras-shortrun export` / export.to_onnx")
    serve.add_argument("-n", type=_positive_int, default=16)
    serve.add_argument("-o", "--output", default="grid.png")
    serve.add_argument("--seed", type=_seed, default=None)
    serve.add_argument("--scale", type=_positive_int, default=2, help="pixel upscaling of the PNG")
    serve.add_argument("--provider", default=None, help="onnxruntime execution provider (default: CUDA, else CPU)")
    serve.set_defaults(func=cmd_serve_onnx)

    export = sub.add_parser("export", help="write a fixed-step graph as ONNX or a TensorFlow SavedModel")
    export.add_argument("model", help="zoo entry name, entry folder or .keras file")
    export.add_argument("-o", "--output", required=True, help=".onnx file or SavedModel folder")
    export.add_argument("--format", choices=("onnx", "saved_model"), default="onnx")
    export.add_argument("--graph", default=None, help="sampler, chain, generator, inference, reconstruction, "
                                                      "classifier (default: the family's first)")
    export.add_argument("--steps", type=_positive_int, default=None, help="Langevin steps K (default: the model's)")
    export.add_argument("--noise", choices=("input", "internal"), default="input")
    export.add_argument("--chains", type=_positive_int, default=None, help="chains averaged by the classifier graph")
    export.add_argument("--opset", type=int, default=None, help="ONNX opset (default: keras_shortrun's, 17)")
    export.add_argument("--overwrite", action="store_true",
                        help="replace an earlier export of keras_shortrun at the output path (never other files)")
    export.set_defaults(func=cmd_export)

    train = sub.add_parser("train", help="train a zoo entry's recipe, or a family's defaults (resumable)")
    train.add_argument("recipe", metavar="ENTRY_OR_FAMILY", choices=recipes.FAMILIES + tuple(recipes.names()),
                       help=f"a zoo entry ({', '.join(recipes.names())}), or a family's defaults "
                            f"({', '.join(recipes.FAMILIES)}); the recipes are keras_shortrun/recipes/*.json")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a recipe field: dotted keys, JSON values (e.g. --set dataset=fashion_mnist "
                            "--set coarse_to_fine.steps=[50,20,15,10] --set clip=null); a run resumes only with the "
                            "overrides it started with")
    train.add_argument("--out", default=None, help="run folder: checkpoints, grids, log, the recorded recipe; rerun "
                                                  "to resume (default: $KERAS_SHORTRUN_HOME/runs/<ENTRY_OR_FAMILY>)")
    train.add_argument("--iterations", type=_positive_int, default=None,
                       help="total updates of the run, of each stage for a classifier (default: the recipe's)")
    train.add_argument("--stage", choices=("generator", "head", "joint", "all"), default=None,
                       help="classifier: one training stage (default: all three, in order)")
    train.add_argument("--labels", type=_positive_int, default=None,
                       help="classifier: labels per class of the head and joint stages (default: 1000; the zoo's "
                            "entries: 1000 and 100)")
    train.add_argument("--from-entry", action="store_true",
                       help="a new run starts from the committed entry's weights with a fresh optimizer "
                            "(fine-tuning; a classifier: the entry of --labels, and --stage joint needs no earlier "
                            "stage); default: from random weights, as the entry was")
    train.add_argument("--fork-from", default=None, metavar="RUN_DIR",
                       help="a new run (--out) branches from this run's last epoch, optimizer and data position "
                            "included, with the --set changes (e.g. a lower learning_rate); a classifier run "
                            "branches before --stage head or joint, copying its earlier stages")
    train.add_argument("--data-path", default=None, help="the dataset's npz file or folder")
    train.set_defaults(func=cmd_train)
    return parser


KERAS_FREE_COMMANDS = (cmd_serve_onnx,)  # onnxruntime, numpy and Pillow only: TensorFlow is never imported


def _user_error(error):
    print(f"keras-shortrun: error: {' '.join(str(error).split())}", file=sys.stderr)
    return 2


def main(argv=None):
    """Runs one command; a user's mistake (a bad argument, a missing or refused file, a model of the wrong family,
    a request too large for memory, a graph that does not export, a diverged run) is one line on stderr and exit
    status 2, never a traceback."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # argparse has printed the one-line error (or --help)
        return stop.code
    try:
        if args.func not in KERAS_FREE_COMMANDS:
            _import_tensorflow_quietly()
        args.func(args)
    except (ValueError, OSError, MemoryError, TrainingDiverged) as error:
        return _user_error(error)
    except RuntimeError as error:  # ExportError: a graph that does not convert or match (import-free check)
        export_error = getattr(sys.modules.get("keras_shortrun.export.tensorflow"), "ExportError", None)
        if export_error is None or not isinstance(error, export_error):
            raise
        return _user_error(error)
    except KeyboardInterrupt:
        print("keras-shortrun: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
