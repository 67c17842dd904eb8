"""Zoo recipes as package data: ``<entry>.json`` holds an entry's whole recipe (data, model and chain, optimizer
and schedule, budget), its ``family`` (``"ebm"``, ``"lvm"`` or ``"classifier"``) and ``notes`` (why it differs
from its paper). An EBM recipe may add ``sampling_chain``: overrides of ``CHAIN_FIELDS`` with which its weights are
sampled once trained (``sampling_overrides``), where training runs the recipe's own chain. A training run records
the recipe it started with (``record_recipe``), so a later change of a file never changes what a run's snapshots
are."""

import json
import shutil
from pathlib import Path

import numpy as np

FAMILIES = ("ebm", "lvm", "classifier")
CHAIN_FIELDS = ("steps", "coarse_to_fine.steps", "coarse_to_fine.anneal_steps",  # how an EBM's weights are sampled
                "coarse_to_fine.noise_scale")
RECIPE_FILE = "recipe.json"  # in a run folder: what the run was trained with, written at its start
_FOLDER = Path(__file__).resolve().parent


def names(family=None):
    """The zoo entries that have a recipe, sorted; only ``family``'s when given."""
    if family is not None and family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}.")
    entries = sorted(path.stem for path in _FOLDER.glob("*.json"))
    return [name for name in entries if family is None or load(name)["family"] == family]


def load(entry):
    """The recipe of zoo ``entry``, or a family's defaults (``"ebm"``, ``"lvm"``, ``"classifier"``): a fresh
    dict (JSON types: lists, string keys)."""
    path = _FOLDER / ("defaults" if entry in FAMILIES else "") / f"{entry}.json"
    if not isinstance(entry, str) or not path.is_file():
        raise KeyError(f"No recipe {entry!r}; recipes: {', '.join(FAMILIES + tuple(names()))}.")
    return json.loads(path.read_text())


def parse_overrides(pairs):
    """``{"a.b": value}`` from ``--set a.b=VALUE`` strings; a VALUE is read as JSON where it parses (numbers,
    lists), else kept as a string."""
    overrides = {}
    for pair in pairs or ():
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--set takes KEY=VALUE (e.g. coarse_to_fine.steps=[50,20,15,10]), got {pair!r}.")
        try:
            overrides[key] = json.loads(text)
        except json.JSONDecodeError:
            overrides[key] = text
    return overrides


def apply_overrides(recipe, overrides):
    """A copy of ``recipe`` with dotted ``overrides`` applied; each key must already be in the recipe."""
    recipe = json.loads(json.dumps(recipe))
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = recipe
        for name in parents:
            node = node.get(name) if isinstance(node, dict) else None
        if not isinstance(node, dict) or leaf not in node:
            raise KeyError(f"The recipe has no field {key!r}; fields: {', '.join(sorted(recipe))}.")
        node[leaf] = value
    return recipe


def sampling_overrides(recipe, chain=None):
    """``{"dotted.key": value}``: how ``recipe``'s trained weights are sampled, relative to the chain it trains
    with: its ``sampling_chain``, then ``chain`` (overrides of ``CHAIN_FIELDS``, e.g. a ``--set``) over it."""
    return {**recipe.get("sampling_chain", {}), **(chain or {})}


def run_recipe(entry, run_dir):
    """The recipe a run was trained with, as it recorded it at its start (``RECIPE_FILE``; runs recorded before
    recipes named their family get ``load(entry)``'s); a run from before runs recorded their recipe:
    ``load(entry)`` as it is now."""
    path = Path(run_dir) / RECIPE_FILE
    if not path.is_file():
        return load(entry)
    return {"family": load(entry)["family"], **json.loads(path.read_text())["recipe"]}


def with_image_shape(recipe, image_shape):
    """``recipe`` with the ``image_size``/``channels`` it leaves ``null`` read from ``image_shape`` ``(H, W, C)``
    (``None``: unchanged); raises ``ValueError`` when the shape is not the recipe's."""
    if image_shape is None:
        return recipe
    height, width, channels = image_shape
    recipe = {**recipe, "image_size": recipe.get("image_size") or height,
              "channels": recipe.get("channels") or channels}
    if (recipe["image_size"], recipe["image_size"], recipe["channels"]) != (height, width, channels):
        raise ValueError(f"The data's images are {height}x{width}x{channels}; the recipe is for "
                         f"{recipe['image_size']}x{recipe['image_size']}x{recipe['channels']} (set image_size and "
                         "channels, or another dataset).")
    return recipe


def recorded_overrides(run_dir):
    """The overrides a run started with (``{}`` for a run without a recorded recipe)."""
    path = Path(run_dir) / RECIPE_FILE
    return json.loads(path.read_text())["overrides"] if path.is_file() else {}


def record_recipe(entry, run_dir, overrides, image_shape=None):
    """Checks ``overrides`` against the recipe and what ``run_dir`` recorded: a new run records its whole recipe
    (``load(entry)`` with the overrides; an ``image_size``/``channels`` left ``null``, as in a family's
    defaults, read from ``image_shape`` ``(H, W, C)``, the training data's) and the overrides; a run resumes
    only with the overrides it started with (none given: the recorded ones). Returns the run's recipe."""
    path = Path(run_dir) / RECIPE_FILE
    started = path.is_file() or (Path(run_dir) / "backup").is_dir() or (Path(run_dir) / "log.csv").is_file()
    recorded = recorded_overrides(run_dir)
    if started and overrides and overrides != recorded:
        raise ValueError(f"The run in {run_dir} was started with the overrides {recorded}; it resumes only with "
                         f"those (got {overrides}). Use another --run-dir for another recipe.")
    if started:
        return run_recipe(entry, run_dir)
    recipe = with_image_shape(apply_overrides(load(entry), overrides), image_shape)
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"overrides": overrides, "recipe": recipe}, indent=1, sort_keys=True))
    return recipe


def fork(entry, source, run_dir, overrides, stage=None, labels=None):
    """Starts ``run_dir`` as a branch of the run in ``source`` (``training.fork_run``: its weights, optimizer and
    data position) whose recipe is ``source``'s with ``overrides``, recorded as the branch's; a ``run_dir``
    already forked from ``source`` is left to resume. A classifier run branches before ``stage`` (``"head"``
    or ``"joint"``, with ``labels``) instead: ``_fork_classifier``. Returns the branch's overrides
    (``source``'s and these)."""
    from keras_shortrun import training

    source, run_dir = Path(source), Path(run_dir)
    merged = {**recorded_overrides(source), **overrides}
    fork_record = run_dir / training.FORK_FILE
    if fork_record.is_file() and json.loads(fork_record.read_text())["run"] == str(source.resolve()):
        return merged
    recipe = apply_overrides(run_recipe(entry, source), overrides)
    check(recipe)
    if recipe["family"] == "classifier":
        _fork_classifier(source, run_dir, overrides, stage, labels)
    else:
        training.fork_run(source, run_dir)
    (run_dir / RECIPE_FILE).write_text(json.dumps({"overrides": merged, "recipe": recipe}, indent=1, sort_keys=True))
    return merged


# What a classifier's later stages may not change: the data and the shapes of the trained weights.
CLASSIFIER_FIXED_FIELDS = ("dataset", "image_size", "channels", "num_classes", "latent_dim", "widths", "head_hidden",
                           "train_images", "seed", "iterations_per_epoch", "batch_size")


def _fork_classifier(source, run_dir, overrides, stage, labels):
    """A classifier branch trains ``stage`` anew from ``source``'s finished earlier stages, which it copies
    (``stage_dir``): a ``"joint"`` branch starts from the source's generator and head of ``labels``, a
    ``"head"`` branch from its generator. ``overrides`` may change that stage and those after it, and the
    chain (``sigma``, ``steps``, ``step_size``, ``prediction_chains``), never an earlier stage or
    ``CLASSIFIER_FIXED_FIELDS``. Records ``training.FORK_FILE``."""
    from keras_shortrun import training

    order = VARIANTS["classifier"]
    if stage not in order[1:] or labels is None:
        raise ValueError(f"A classifier run branches before its 'head' or 'joint' stage of a label budget (--stage "
                         f"and --labels), got stage {stage!r}, labels {labels!r}.")
    earlier = order[: order.index(stage)]
    frozen = [k for k in overrides if k.split(".")[0] in CLASSIFIER_FIXED_FIELDS + earlier]
    if frozen:
        raise ValueError(f"A branch before the {stage!r} stage cannot change {frozen}: the stages it copies were "
                         "trained with them. Start a new run instead.")
    for name in earlier:
        folder = stage_dir(source, name, labels)
        if not (folder / "log.csv").is_file():
            raise ValueError(f"{source} has no {name!r} stage{'' if name == 'generator' else f' of {labels} labels'} "
                             f"to branch from ({folder}).")
    if run_dir.exists() and any(run_dir.iterdir()):
        raise ValueError(f"{run_dir} holds something already: branch into a new folder.")
    for name in earlier:
        shutil.copytree(stage_dir(source, name, labels), stage_dir(run_dir, name, labels))
    (run_dir / training.FORK_FILE).write_text(json.dumps({"run": str(source.resolve()), "stage": stage,
                                                          "labels": labels, "copied": list(earlier)}))


def _ebm(r, variant, name):
    from keras_shortrun.models import ShortRunEBM

    shared = {"image_size": r["image_size"], "channels": r["channels"], "filters": r["filters"], "clip": r["clip"],
              "seed": r["seed"], "gradient_penalty": r.get("gradient_penalty", 0.0), "name": name}
    if "coarse_to_fine" in r:
        return ShortRunEBM.with_coarse_to_fine(**shared, **r["coarse_to_fine"])
    return ShortRunEBM.with_convnet(steps=r["steps"], **shared)


def _lvm(r, variant, name):
    from keras_shortrun.models import VAE
    from keras_shortrun.models import MultiLayerLVM
    from keras_shortrun.models import TopDownGenerator
    from keras_shortrun.models import posterior_chain

    generator = TopDownGenerator(r["latent_dims"], r["image_size"], r["channels"], r["width"], name="generator")
    if variant == "vae":
        return VAE(generator, sigma=r["sigma"], seed=r["seed"], name=name)
    chain = posterior_chain(len(r["latent_dims"]), steps=r["steps"], step_size=r["step_size"], seed=r["seed"])
    return MultiLayerLVM(generator, sigma=r["sigma"], chain=chain, step_size_every=r["step_size_every"],
                         step_size_batch=r["step_size_batch"], step_size_learning_rate=r["step_size_learning_rate"],
                         seed=r["seed"], name=name)


def _classifier(r, variant, name):
    from keras_shortrun.models import ConvTransposeGenerator
    from keras_shortrun.models import GenerativeClassifier
    from keras_shortrun.models import mlp_head
    from keras_shortrun.models import thesis_chain

    generator = ConvTransposeGenerator(r["latent_dim"], r["channels"], r["widths"], name="generator")
    return GenerativeClassifier(
        generator, mlp_head(r["latent_dim"], r["num_classes"], r["head_hidden"]), r["num_classes"], sigma=r["sigma"],
        chain=thesis_chain(r["steps"], r["step_size"], seed=r["seed"]), stage=variant or "generator",
        prediction_chains=r["prediction_chains"], generative_weight=r["joint"]["generative_weight"], seed=r["seed"],
        name=name,
    )


_BUILDERS = {"ebm": _ebm, "lvm": _lvm, "classifier": _classifier}
VARIANTS = {"ebm": (None,), "lvm": (None, "vae"), "classifier": ("generator", "head", "joint")}


def build(recipe, variant=None, name=None):
    """The untrained model of ``recipe`` (``load``, ``run_recipe``), by its family: a ``ShortRunEBM``,
    ``MultiLayerLVM`` or ``GenerativeClassifier``. ``variant``: ``"vae"`` for an lvm recipe's VAE baseline (same
    generator), a classifier's training stage (``"generator"``, the default, ``"head"`` or ``"joint"``)."""
    family = recipe.get("family")
    if family not in _BUILDERS:
        raise ValueError(f"A recipe's family must be one of {FAMILIES}, got {family!r}.")
    if variant not in VARIANTS[family] and not (family == "classifier" and variant is None):
        raise ValueError(f"A {family} recipe has the variants {VARIANTS[family]}, got {variant!r}.")
    if recipe.get("image_size") is None or recipe.get("channels") is None:
        raise ValueError("The recipe has no image_size/channels yet: train() reads them from the data.")
    return _BUILDERS[family](recipe, variant, name)


def check(recipe):
    """Raises ``ValueError`` naming the first field of ``recipe`` that cannot train (family, updates, batch,
    optimizer, seed), so that a bad ``--set`` fails before any data is loaded; returns ``recipe``."""
    from keras_shortrun import validation

    if recipe.get("family") not in FAMILIES:
        raise ValueError(f"A recipe's family must be one of {FAMILIES}, got {recipe.get('family')!r}.")
    for key in ("batch_size", "iterations_per_epoch"):
        validation.check_positive_int(recipe[key], key)
    validation.check_seed(recipe["seed"])
    other = sorted(set(recipe.get("sampling_chain", {})) - set(CHAIN_FIELDS))
    if other:
        raise ValueError(f"sampling_chain overrides chain fields {CHAIN_FIELDS} only, not {other}.")
    if recipe.get("train_images") is not None:
        validation.check_positive_int(recipe["train_images"], "train_images")
    stages = VARIANTS["classifier"] if recipe["family"] == "classifier" else (None,)
    for stage in stages:
        spec, prefix = (recipe, "") if stage is None else (recipe[stage], f"{stage}.")
        validation.check_positive_float(spec["learning_rate"], f"{prefix}learning_rate")
        validation.check_beta_1(spec["beta_1"], f"{prefix}beta_1")
        if spec.get("global_clipnorm") is not None:
            validation.check_positive_float(spec["global_clipnorm"], f"{prefix}global_clipnorm")
        if spec.get("average_epochs") is not None:  # the snapshots whose average a classifier hands on
            validation.check_positive_int(spec["average_epochs"], f"{prefix}average_epochs")
        budgets = spec["iterations"] if isinstance(spec["iterations"], dict) else {"": spec["iterations"]}
        for labels, iterations in budgets.items():
            validation.check_positive_int(iterations, f"{prefix}iterations{'.' + labels if labels else ''}")
    return recipe


def training_subset(images, count, seed, labels=None):
    """The indices ``(count,)``, sorted, of the training images a recipe's ``train_images`` keeps out of
    ``images`` (``None``: all of them): a seeded draw of the split; given the ``labels`` ``(images,)`` (a
    classifier's), the first ``count / classes`` of every class in ``data.labelled_subset``'s order, so the
    subsets nest and each holds the split's labelled images of every budget up to that many per class."""
    from keras_shortrun import data
    from keras_shortrun import validation
    from keras_shortrun.seeds import stream

    if count is None:
        return np.arange(images)
    count = validation.check_positive_int(count, "train_images")
    if count > images:
        raise ValueError(f"train_images={count} is more than the {images} training images of the split.")
    if labels is None:
        return np.sort(np.random.default_rng(stream(seed, "train_images")).permutation(images)[:count])
    classes = len(np.unique(labels))
    if count % classes:
        raise ValueError(f"train_images={count} must be a multiple of the {classes} classes (the same number of "
                         f"images is kept from each).")
    return data.labelled_subset(labels, count // classes, seed)


CLASSIFIER_LABEL_BUDGETS = (1000, 100)  # labels per class of the zoo's classifier entries; the first: the main one


def classifier_entry(recipe_name, labels):
    """The zoo entry of a classifier recipe's label budget (labels per class): the recipe's own name at the main
    budget, ``<recipe>_<labels>labels`` at another."""
    return recipe_name if labels == CLASSIFIER_LABEL_BUDGETS[0] else f"{recipe_name}_{labels}labels"


def check_label_budget(recipe, labels):
    """Raises ``ValueError`` when a classifier ``recipe``'s ``train_images`` keep fewer than ``labels`` images per
    class (``training_subset``), so that no stage of the budget can train."""
    count = recipe.get("train_images")
    if count is not None and count // recipe["num_classes"] < labels:
        raise ValueError(f"train_images={count} keeps {count // recipe['num_classes']} images per class, fewer "
                         f"than the {labels} labelled images per class of the label budget.")


def _kept_images(recipe, x, y, labels=None):
    """``(kept, picked, unlabelled)``: the indices of the images ``recipe`` trains on (``training_subset``), and
    for a classifier's label budget ``labels`` (per class) its labelled and unlabelled images as indices into
    the kept ones: the split's ``data.labelled_subset`` (the same images whatever ``train_images`` keeps) and
    the other kept images (``None`` without a budget)."""
    from keras_shortrun import data

    kept = training_subset(len(x), recipe.get("train_images"), recipe["seed"],
                           labels=y if recipe["family"] == "classifier" else None)
    if labels is None:
        return kept, None, None
    check_label_budget(recipe, labels)
    picked = np.searchsorted(kept, data.labelled_subset(y, labels, recipe["seed"]))
    return kept, picked, np.setdiff1d(np.arange(len(kept)), picked)


def stage_dir(run_dir, stage, labels=None):
    """A classifier run's folder of ``stage``: ``run_dir/generator`` (every image, no labels), else
    ``run_dir/<stage>_<labels>`` (per label budget: labels per class)."""
    return Path(run_dir) / (stage if stage == "generator" else f"{stage}_{labels}")


def _widen_into(recipe):
    """``training.start_from_entry``'s ``adapt`` for an EBM: a committed entry with narrower energies."""
    from keras_shortrun.seeds import stream

    return lambda committed, model: model.energy.widen_from(committed.energy, seed=stream(recipe["seed"], "widen"))


def train(entry, run_dir, overrides=None, iterations=None, variant=None, labels=None, data_path=None,
          start_from=None, max_cpu_seconds=None, keep_every=None, fork_from=None, verbose=2):
    """Trains the recipe of zoo ``entry`` (or a family's defaults, ``"ebm"``, ``"lvm"`` or ``"classifier"``) with
    ``overrides`` (``{"dotted.key": value}``) in ``run_dir``, for ``iterations`` updates in all (default: the
    recipe's), and returns the model. Rerunning resumes the run (``training.fit_resumable``); the run records
    its recipe (``record_recipe``) and the machines that trained it (``training.record_hardware``).

    ``variant``: see ``build``. A classifier stage runs in ``stage_dir(run_dir, stage, labels)`` (``labels``:
    labels per class, for ``"head"`` and ``"joint"``) and starts from the previous stage's
    ``training.chosen_epoch``; ``"joint"`` mixes labelled and unlabelled images in every batch.
    ``start_from``: a zoo entry whose weights a new run starts from, with a fresh optimizer (an EBM's may have
    narrower energies, see ``EnergyConvNet.widen_from``); a classifier's head or joint stage then needs no earlier
    stage (e.g. a longer joint stage from the committed entry, ``classifier_entry``). ``fork_from``: a run folder
    that a new run branches from with ``overrides`` (``fork``). ``max_cpu_seconds``, ``keep_every``: see
    ``fit_resumable``."""
    from keras_shortrun import data
    from keras_shortrun import training

    planned = check(apply_overrides(load(entry), overrides or {}))
    x, y = data.load(planned["dataset"], "train", path=data_path)
    _kept_images(planned, x, y, labels if variant in ("head", "joint") else None)  # a bad subset fails before writing
    if fork_from is not None:
        overrides = fork(entry, fork_from, run_dir, overrides or {}, stage=variant, labels=labels)
    r = record_recipe(entry, run_dir, overrides or {}, image_shape=x.shape[1:])
    family = r["family"]
    kept, picked, unlabelled = _kept_images(r, x, y, labels if variant in ("head", "joint") else None)
    if len(kept) < len(x):
        x, y = x[kept], (None if y is None else y[kept])
    model = build(r, variant, name=f"{entry}_vae" if variant == "vae" else entry)
    spec, folder = r, Path(run_dir)
    if family == "classifier":
        stage = variant or "generator"
        spec, folder = r[stage], stage_dir(run_dir, stage, labels)
        if stage != "generator":
            if labels is None:
                raise ValueError(f"The classifier's {stage!r} stage needs labels (labels per class).")
            if start_from is None:  # else the committed entry's weights, or the stage's own backup
                previous = stage_dir(run_dir, "generator" if stage == "head" else "head", labels)
                model.load_weights(training.checkpoint_path(previous, training.chosen_epoch(previous)[0]))
            model.set_stage(stage)
            per_batch = r["batch_size"] if stage == "head" else spec["labelled_per_batch"]
            resumed = training.completed_epochs(folder / "backup")
            x = training.semi_supervised_batches(x[picked], y[picked], x[unlabelled], r["batch_size"], per_batch,
                                                 seed=r["seed"] + resumed, steps=r["iterations_per_epoch"])
    total = spec["iterations"] if iterations is None else iterations
    if isinstance(total, dict):
        total = total[str(labels)]  # a classifier stage's updates per label budget
    if start_from is not None:
        start = training.start_from_entry(model, folder, start_from, adapt=_widen_into(r) if family == "ebm" else None)
        if start == "scratch" and family == "classifier" and folder != stage_dir(run_dir, "generator"):
            raise ValueError(f"The {folder.name} stage was to start from the committed {start_from!r}, which could "
                             f"not be loaded into this recipe's model (see {folder / 'started_from.json'}); train "
                             f"the earlier stages instead (without --from-entry).")
    training.record_hardware(folder)
    guard = training.DivergenceGuard(**r["divergence"]) if "divergence" in r else None
    training.fit_resumable(
        model, x, folder, total, batch_size=r["batch_size"], iterations_per_epoch=r["iterations_per_epoch"],
        learning_rate=spec["learning_rate"], beta_1=spec["beta_1"], global_clipnorm=spec.get("global_clipnorm"),
        seed=r["seed"], grid_size=16 if family == "ebm" else 64, verbose=verbose, guard=guard,
        max_cpu_seconds=max_cpu_seconds, keep_every=keep_every,
    )
    return model
