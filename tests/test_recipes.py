"""The zoo recipes as package data (``keras_shortrun.recipes``): every entry has one, overrides are checked,
and a run records the recipe it started with."""

import json

import keras
import numpy as np
import pytest
from builders import tiny_images

from keras_shortrun import cli
from keras_shortrun import data
from keras_shortrun import recipes
from keras_shortrun import training
from keras_shortrun import zoo
from keras_shortrun.training import checkpoint_path
from keras_shortrun.training import last_epoch


def test_every_zoo_entry_has_a_recipe_of_a_known_family():
    families = {entry["name"]: entry["family"] for entry in zoo.list()}
    model_class = {"ebm": "ShortRunEBM", "lvm": "MultiLayerLVM", "classifier": "GenerativeClassifier"}
    for name in recipes.names():
        recipe = recipes.load(name)
        assert families[name] == model_class[recipe["family"]] and recipe["notes"], name
    for name in families:  # every entry but the feature networks comes from a recipe, or is a variant of one
        assert name.endswith("_features") or any(name.startswith(recipe) for recipe in recipes.names()), name
    assert recipes.names("ebm") == ["celeba_ebm", "cifar10_ebm", "fashion_mnist_ebm", "mnist_ebm"]
    assert recipes.load("mnist_ebm") is not recipes.load("mnist_ebm")  # a fresh dict: callers may change it
    with pytest.raises(KeyError, match="No recipe 'nope'; recipes: ebm, lvm, classifier, celeba_ebm"):
        recipes.load("nope")
    with pytest.raises(ValueError, match="family must be one of"):
        recipes.names("gan")


def test_a_run_records_its_recipe_and_resumes_only_with_its_overrides(tmp_path, monkeypatch):
    before = recipes.load("celeba_ebm")
    overrides = recipes.parse_overrides(["coarse_to_fine.steps=[40,20,15,10]", "learning_rate=1e-4"])
    assert overrides == {"coarse_to_fine.steps": [40, 20, 15, 10], "learning_rate": 1e-4}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        recipes.parse_overrides(["steps"])
    with pytest.raises(KeyError, match="no field 'coarse_to_fine.stages'"):
        recipes.apply_overrides(before, {"coarse_to_fine.stages": 3})
    with pytest.raises(KeyError, match="no field 'steps'"):  # a coarse-to-fine recipe has no single K
        recipes.apply_overrides(before, {"steps": 3})

    recipe = recipes.record_recipe("celeba_ebm", tmp_path / "variant", overrides)
    assert recipe["coarse_to_fine"]["steps"] == [40, 20, 15, 10] and recipe["learning_rate"] == 1e-4
    assert recipes.load("celeba_ebm") == before  # the recipe itself is untouched
    assert recipes.run_recipe("celeba_ebm", tmp_path / "variant") == recipe  # score and export read it back
    changed = {**before, "batch_size": 64}
    monkeypatch.setattr(recipes, "load", lambda entry: json.loads(json.dumps(changed)))  # a later edit of the file
    assert recipes.run_recipe("celeba_ebm", tmp_path / "variant") == recipe  # ... leaves the run's alone
    assert recipes.record_recipe("celeba_ebm", tmp_path / "variant", {}) == recipe  # a rerun resumes it
    with pytest.raises(ValueError, match="resumes only with those"):
        recipes.record_recipe("celeba_ebm", tmp_path / "variant", {"learning_rate": 5e-5})
    (tmp_path / "plain" / "backup").mkdir(parents=True)  # a run started without overrides keeps none
    with pytest.raises(ValueError, match="resumes only with those"):
        recipes.record_recipe("celeba_ebm", tmp_path / "plain", overrides)
    assert recipes.run_recipe("celeba_ebm", tmp_path / "plain")["batch_size"] == 64  # none recorded: the file's


def test_an_ebm_recipe_builds_its_chain():
    recipe = recipes.apply_overrides(recipes.load("celeba_ebm"), {"coarse_to_fine.steps": [40, 20, 15, 10]})
    model = recipes.build(recipe)
    assert model.chain.stage_steps == (40, 20, 15, 10) and model.chain.steps == 85


def test_an_entrys_weights_sample_with_another_noise_scale_and_say_so():
    import ebm_recipe

    recipe = ebm_recipe.sampling_recipe("celeba_ebm", None, {"coarse_to_fine.noise_scale": 0.0})
    model = recipes.build(recipe)
    assert model.chain.noise_scales == [0.0] * 4  # a chain field: the weights stay those of the committed entry
    chain = ebm_recipe.chain_metadata(recipe)
    assert chain["noise_scale"] == 0.0 and "+ 0 eps" in chain["update"]
    per_stage = ebm_recipe.sampling_recipe("celeba_ebm", None, {"coarse_to_fine.noise_scale": [0.01, 0.01, 0, 0]})
    assert ebm_recipe.chain_metadata(per_stage)["noise_scale"] == [0.01, 0.01, 0, 0]
    with pytest.raises(ValueError, match="not chain fields"):  # what the weights are cannot change so
        ebm_recipe.sampling_recipe("celeba_ebm", None, {"learning_rate": 1e-4})


def test_an_ebm_recipe_trains_with_its_chain_and_samples_with_its_sampling_chain():
    import ebm_recipe

    recipe = recipes.load("celeba_ebm")
    assert recipes.build(recipe).chain.noise_scales == [0.01] * 4  # what training runs
    sampled = recipes.build(ebm_recipe.sampling_recipe("celeba_ebm", None))
    assert sampled.chain.noise_scales == recipe["sampling_chain"]["coarse_to_fine.noise_scale"]
    assert sampled.chain.stage_steps == tuple(recipe["sampling_chain"]["coarse_to_fine.steps"])  # sampled longer
    assert recipes.build(recipe).chain.stage_steps == tuple(recipe["coarse_to_fine"]["steps"])  # than it trains
    assert sampled.chain.anneal_steps == recipe["coarse_to_fine"]["anneal_steps"]  # a field not overridden stays
    chosen = ebm_recipe.sampling_recipe("celeba_ebm", None, {"coarse_to_fine.noise_scale": 0.0})  # a --set wins
    assert recipes.build(chosen).chain.noise_scales == [0.0] * 4
    assert recipes.sampling_overrides(recipes.load("mnist_ebm")) == {}  # no sampling_chain: the training chain
    with pytest.raises(ValueError, match=r"sampling_chain overrides chain fields .* not \['learning_rate'\]"):
        recipes.check({**recipe, "sampling_chain": {"learning_rate": 1e-4}})  # what the weights are: not a chain


def _labelled_digits(*args, **kwargs):
    """``data.load``'s stand-in: 40 random 28x28 images, 4 of each of 10 classes."""
    return tiny_images(40, (28, 28, 1)), np.repeat(np.arange(10), 4)


TINY = {  # one entry of each family, at a size that trains in seconds
    "mnist_ebm": ["filters=2", "steps=2"],
    "mnist_lvm": ["latent_dims=[2,3]", "width=4", "steps=2", "step_size_every=1", "step_size_batch=2"],
    "mnist_classifier": ["latent_dim=4", "widths=[4,4,2]", "head_hidden=[6]", "steps=2", "prediction_chains=2",
                         "joint.labelled_per_batch=2"],
}


@pytest.mark.parametrize("entry", sorted(TINY))
def test_cli_trains_every_familys_recipe_through_one_path_and_resumes(entry, tmp_path, monkeypatch):
    monkeypatch.setattr(data, "load", _labelled_digits)
    out = tmp_path / "run"
    settings = TINY[entry] + ["batch_size=4", "iterations_per_epoch=1"]
    labels = ["--labels", "2"] if entry == "mnist_classifier" else []
    args = ["train", entry, "--out", str(out), *labels, *[a for s in settings for a in ("--set", s)]]
    assert cli.main(args + ["--iterations", "2"]) == 0
    recorded = json.loads((out / recipes.RECIPE_FILE).read_text())
    assert recorded["overrides"] == recipes.parse_overrides(settings)
    assert recorded["recipe"] == recipes.apply_overrides(recipes.load(entry), recorded["overrides"])
    stages = ["generator", "head_2", "joint_2"] if entry == "mnist_classifier" else [""]
    for stage in stages:
        assert last_epoch(out / stage) == 2, stage
        model = keras.saving.load_model(out / stage / "model.keras")  # safe mode
        assert model.name == entry and json.loads((out / stage / "hardware.json").read_text())
    assert cli.main(args + ["--iterations", "3"]) == 0  # every stage resumes after its epoch 2
    assert [last_epoch(out / stage) for stage in stages] == [3] * len(stages)
    assert cli.main(args[:4] + labels + ["--iterations", "4"]) == 0  # no --set: the run's recorded overrides
    with pytest.raises(ValueError, match="resumes only with those"):
        recipes.record_recipe(entry, out, {"seed": 1})


def test_cli_forks_a_run_with_another_learning_rate(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(data, "load", _labelled_digits)
    source, branch = tmp_path / "source", tmp_path / "branch"
    settings = [a for s in TINY["mnist_ebm"] + ["batch_size=4", "iterations_per_epoch=1"] for a in ("--set", s)]
    assert cli.main(["train", "mnist_ebm", "--out", str(source), *settings, "--iterations", "2"]) == 0
    fork = ["train", "mnist_ebm", "--out", str(branch), "--fork-from", str(source), "--set", "learning_rate=5e-05"]
    assert cli.main(fork + ["--iterations", "3"]) == 0
    recorded = json.loads((branch / recipes.RECIPE_FILE).read_text())
    assert recorded["overrides"] == {**recipes.recorded_overrides(source), "learning_rate": 5e-05}
    source_recipe = recipes.run_recipe("mnist_ebm", source)
    assert recorded["recipe"] == recipes.apply_overrides(source_recipe, {"learning_rate": 5e-05})
    assert json.loads((branch / "backup" / "settings.json").read_text())["learning_rate"] == 5e-05
    assert last_epoch(branch) == 3 and last_epoch(source) == 2  # epochs 1-2 are the source's, 3 the branch's
    model = keras.saving.load_model(branch / "model.keras")
    assert float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)) == np.float32(5e-05)
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 3  # Adam's count ran on
    assert cli.main(fork + ["--iterations", "4"]) == 0  # the same command resumes the branch
    assert cli.main(["train", "mnist_ebm", "--out", str(branch), "--iterations", "5"]) == 0  # so does a plain rerun
    assert last_epoch(branch) == 5
    assert cli.main(["train", "mnist_ebm", "--out", str(source), "--fork-from", str(branch)]) == 2
    assert "holds a run already" in capsys.readouterr().err


def test_cli_branches_a_classifier_before_its_joint_stage(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(data, "load", _labelled_digits)
    source, branch = tmp_path / "source", tmp_path / "branch"
    settings = TINY["mnist_classifier"] + ["batch_size=4", "iterations_per_epoch=1"]
    common = ["train", "mnist_classifier", "--labels", "2", "--iterations", "2"]
    assert cli.main(common + ["--out", str(source), *[a for s in settings for a in ("--set", s)]]) == 0
    fork = common + ["--out", str(branch), "--fork-from", str(source), "--stage", "joint", "--set",
                     "joint.global_clipnorm=0.5", "--set", "sigma=0.5"]
    assert cli.main(fork) == 0
    recorded = json.loads((branch / recipes.RECIPE_FILE).read_text())
    assert recorded["overrides"] == {**recipes.recorded_overrides(source), "joint.global_clipnorm": 0.5, "sigma": 0.5}
    assert recorded["recipe"]["joint"]["global_clipnorm"] == 0.5 and recorded["recipe"]["sigma"] == 0.5
    for stage in ("generator", "head_2"):  # copied as they were
        assert (branch / stage / "log.csv").read_bytes() == (source / stage / "log.csv").read_bytes()
    assert last_epoch(branch / "joint_2") == 2
    model = keras.saving.load_model(branch / "joint_2" / "model.keras")
    assert model.sigma == 0.5
    assert cli.main(fork[:5] + ["3"] + fork[6:]) == 0  # the same command, more updates: resumes the branch
    assert cli.main(["train", "mnist_classifier", "--labels", "2", "--out", str(branch), "--stage", "joint",
                     "--iterations", "4"]) == 0  # so does a plain rerun
    assert last_epoch(branch / "joint_2") == 4 and last_epoch(source / "joint_2") == 2
    refused = [(["--set", "widths=[2,2,2]"], "cannot change"), (["--set", "head.learning_rate=0.1"], "cannot change"),
               (["--stage", "generator"], "branches before its 'head' or 'joint'")]
    for extra, message in refused:
        fresh = common + ["--out", str(tmp_path / "other"), "--fork-from", str(source), "--stage", "joint"] + extra
        assert cli.main(fresh) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "other").exists()  # refused before anything was written


def test_train_images_is_a_seeded_subset_and_bad_fields_fail_first():
    kept = recipes.training_subset(40, 10, seed=0)
    assert len(set(kept)) == 10 and list(kept) == sorted(kept)
    np.testing.assert_array_equal(recipes.training_subset(40, 10, seed=0), kept)
    assert not np.array_equal(recipes.training_subset(40, 10, seed=1), kept)
    np.testing.assert_array_equal(recipes.training_subset(40, None, seed=0), np.arange(40))
    with pytest.raises(ValueError, match="more than the 40 training images"):
        recipes.training_subset(40, 41, seed=0)
    recipe = recipes.load("mnist_classifier")
    for key, value, message in [("train_images", 0, "train_images"), ("joint.global_clipnorm", -1.0, "clipnorm"),
                                 ("joint.average_epochs", 0, "average_epochs")]:
        with pytest.raises(ValueError, match=message):
            recipes.check(recipes.apply_overrides(recipe, {key: value}))


def test_a_classifiers_train_images_keep_the_splits_labelled_images(tmp_path, monkeypatch, capsys):
    x, y = _labelled_digits()
    small, large = (recipes.training_subset(40, n, seed=0, labels=y) for n in (20, 30))
    assert set(small) < set(large) and np.bincount(y[small]).tolist() == [2] * 10  # nested, class-balanced
    with pytest.raises(ValueError, match="multiple of the 10 classes"):
        recipes.training_subset(40, 25, seed=0, labels=y)
    monkeypatch.setattr(data, "load", _labelled_digits)
    seen = {}
    batches = training.semi_supervised_batches

    def spy(x_labelled, y_labelled, x_unlabelled, *args, **kwargs):
        seen.update(labelled=x_labelled, unlabelled=x_unlabelled)
        return batches(x_labelled, y_labelled, x_unlabelled, *args, **kwargs)

    monkeypatch.setattr(training, "semi_supervised_batches", spy)
    settings = TINY["mnist_classifier"] + ["batch_size=4", "iterations_per_epoch=1", "train_images=20"]
    common = ["train", "mnist_classifier", "--iterations", "1", *[a for s in settings for a in ("--set", s)]]
    assert cli.main(common + ["--out", str(tmp_path / "run"), "--labels", "1"]) == 0
    picked = data.labelled_subset(y, 1, seed=0)  # the split's, as in a run on every image
    np.testing.assert_array_equal(seen["labelled"], x[picked])
    np.testing.assert_array_equal(seen["unlabelled"], x[np.setdiff1d(small, picked)])
    assert cli.main(common + ["--out", str(tmp_path / "other"), "--labels", "3"]) == 2
    assert "keeps 2 images per class, fewer than the 3 labelled" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()  # refused before anything was written


def test_global_clipnorm_bounds_the_update(tmp_path):
    """Adam's step is about ``lr * g / (|g| + 1e-7)`` per weight, so gradients clipped to a global norm of 1e-12
    keep each of the 4 updates under ``lr * 1e-5`` (4e-7 in all at lr 1e-2), while unclipped ones move the weights
    by about ``lr``."""
    from builders import tiny_ebm

    from keras_shortrun.training import fit_resumable

    def moved(out, **kwargs):
        model = tiny_ebm()
        before = [np.array(w) for w in model.trainable_weights]
        fit_resumable(model, tiny_images(), tmp_path / out, 4, batch_size=4, iterations_per_epoch=2,
                      learning_rate=1e-2, grid_size=4, verbose=0, **kwargs)
        return max(float(np.max(np.abs(np.array(w) - b))) for w, b in zip(model.trainable_weights, before))

    assert moved("clipped", global_clipnorm=1e-12) < 4e-7 < 1e-3 < moved("free")
    with pytest.raises(ValueError, match="global_clipnorm"):
        moved("bad", global_clipnorm=0.0)


def test_a_classifiers_joint_stage_continues_from_the_committed_entry(tmp_path, monkeypatch, capsys):
    import classifier_recipe

    labels = np.repeat(np.arange(10), 1001)  # the main entry's budget, 1,000 labelled per class, and unlabelled ones
    images = np.random.default_rng(0).uniform(-1, 1, (len(labels), 28, 28, 1)).astype("float32")
    monkeypatch.setattr(data, "load", lambda *args, **kwargs: (images, labels))
    monkeypatch.setenv("KERAS_SHORTRUN_HOME", str(tmp_path))
    out = tmp_path / "runs" / "mnist_classifier"  # runs_home()/entry: where the export looks
    settings = ["batch_size=4", "iterations_per_epoch=1", "joint.labelled_per_batch=2"]
    args = ["train", "mnist_classifier", "--stage", "joint", "--from-entry", "--iterations", "1",
            *[a for s in settings for a in ("--set", s)]]
    recipes.build(recipes.load("mnist_classifier"), "joint")  # numbers the next model's nested layers otherwise
    assert cli.main(args) == 0
    started = json.loads((out / "joint_1000" / "started_from.json").read_text())
    assert started["start"] == "entry" and started["entry"] == "mnist_classifier"
    assert not (out / "generator").exists() and not (out / "head_1000").exists()  # no earlier stage needed
    entry, continued = zoo.load("mnist_classifier"), classifier_recipe.load_trained("mnist_classifier", 1000)
    moved = [np.max(np.abs(a - b)) for a, b in zip(entry.get_weights(), continued.get_weights())]
    assert 0 < max(moved) < 1e-2  # one Adam update of the entry's weights (step <= learning rate per weight)
    committed = zoo.info("mnist_classifier")["training"]["stages"]
    budget = classifier_recipe.stage_budget("mnist_classifier", 1000)
    assert budget["generator"] == committed["generator"] and budget["head"] == committed["head"]
    assert budget["joint"]["iterations"] == committed["joint"]["iterations"] + 1
    assert budget["joint"]["continued_from"] == committed["joint"]["iterations"]
    assert "then 1 more from the committed entry" in classifier_recipe.model_text(
        dict(zoo.info("mnist_classifier"), training=dict(zoo.info("mnist_classifier")["training"], stages=budget)),
        "classifier", "mnist_classifier", 1000)

    assert cli.main(args[:6] + ["3"] + args[7:]) == 0  # two more updates: the entry averages the stage's snapshots
    directory = classifier_recipe.run_dir("mnist_classifier", "joint", 1000)
    # Losses of batches of 4 random images may trip the rollback rule on some CPUs: pin the hand-on epoch.
    monkeypatch.setattr(classifier_recipe, "chosen_epoch", lambda run: (2, True))
    assert classifier_recipe.joint_epochs("mnist_classifier", directory) == [2]  # rolled back: that snapshot alone
    monkeypatch.setattr(classifier_recipe, "chosen_epoch", lambda run: (3, False))
    assert classifier_recipe.joint_epochs("mnist_classifier", directory) == [1, 2, 3]  # up to joint.average_epochs
    snapshots = []
    for epoch in (1, 2, 3):
        snapshot = classifier_recipe.build("mnist_classifier", "joint")
        snapshot.load_weights(checkpoint_path(directory, epoch))
        snapshots.append(snapshot.get_weights())
    averaged = classifier_recipe.load_trained("mnist_classifier", 1000).get_weights()
    for i, weights in enumerate(averaged):  # a float64 sum of three float32 snapshots, rounded to float32 once
        np.testing.assert_allclose(weights, np.mean([s[i] for s in snapshots], axis=0, dtype=np.float64),
                                   rtol=2**-23, atol=0)
    alone = classifier_recipe.load_trained("mnist_classifier", 1000, average_epochs=1).get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(alone, snapshots[2]))  # a comparison: the last one alone
    budget = classifier_recipe.stage_budget("mnist_classifier", 1000)
    after = [committed["joint"]["iterations"] + i for i in (1, 2, 3)]
    assert budget["joint"]["averaged"] == {"snapshots": 3, "after_iterations": after}
    assert f"uniform average of the joint stage's 3 snapshots after its updates {after[0]} to {after[2]}" in \
        classifier_recipe.model_text(dict(zoo.info("mnist_classifier"), training=dict(
            zoo.info("mnist_classifier")["training"], stages=budget)), "classifier", "mnist_classifier", 1000)
    assert cli.main(["train", "mnist_classifier", "--stage", "joint", "--from-entry", "--labels", "200",
                     "--out", str(tmp_path / "other"), *args[5:]]) == 2  # no committed entry of that budget
    assert "could not be loaded" in capsys.readouterr().err
