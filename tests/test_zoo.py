"""Zoo mechanism: save/load entries, integrity checks, names, listing, shipped entries' golden outputs, the wheel."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from builders import tiny_ebm
from conftest import ROOT
from conftest import assert_matches_golden
from conftest import rounding_tolerance
from eval_zoo import GENERATIVE_FAMILIES
from eval_zoo import INCEPTION_DATASETS
from make_golden import EBM_ENTRIES  # noqa: E402  (the entries and probes that the golden files were made from)
from make_golden import FEATURE_ENTRIES
from make_golden import FULL_CHAIN_ENTRIES
from make_golden import probe_images

from keras_shortrun import metrics
from keras_shortrun import recipes
from keras_shortrun import zoo
from keras_shortrun.export import TOLERANCE
from keras_shortrun.training import atomic_save_weights
from keras_shortrun.training import checkpoint_path
from keras_shortrun.zoo import registry

INCEPTION_ENTRIES = [r["name"] for r in zoo.list() if zoo.info(r["name"])["family"] in GENERATIVE_FAMILIES
                     and zoo.info(r["name"])["dataset"]["name"] in INCEPTION_DATASETS]


@pytest.fixture
def tiny_entry(tmp_path):
    model = tiny_ebm(seed=1)
    directory = zoo.save_entry(model, tmp_path / "tiny", {"name": "tiny", "chain": {"steps": 3}})
    return model, directory


def test_entry_round_trip(tiny_entry):
    model, directory = tiny_entry
    loaded = zoo.load(directory)
    x = np.random.default_rng(0).uniform(-1, 1, (4, 8, 8, 1)).astype("float32")
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(model(x)))
    np.testing.assert_array_equal(loaded.sample(3, seed=5), model.sample(3, seed=5))
    meta = zoo.info(directory)
    assert meta["family"] == "ShortRunEBM" and meta["params"] == model.count_params()
    assert set(meta["files"]) == {"config.json", "model.weights.h5"}


@pytest.mark.parametrize("filename", ["model.weights.h5", "config.json"])
def test_tampered_file_is_refused(tiny_entry, filename):
    _, directory = tiny_entry
    path = directory / filename
    content = bytearray(path.read_bytes())
    content[len(content) // 2] ^= 0xFF
    path.write_bytes(bytes(content))
    with pytest.raises(zoo.ZooIntegrityError, match=f"{filename}.*modified or corrupted"):
        zoo.load(directory)


def test_missing_hash_is_refused(tiny_entry):
    _, directory = tiny_entry
    meta = json.loads((directory / "metadata.json").read_text())
    del meta["files"]["model.weights.h5"]
    (directory / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(zoo.ZooIntegrityError, match="records no sha256"):
        zoo.load(directory)


def test_resaving_replaces_entry_atomically(tiny_entry):
    model, directory = tiny_entry
    zoo.save_entry(model, directory, {"name": "tiny", "note": "second"})
    assert zoo.info(directory)["note"] == "second"
    assert not any(p.name.startswith(".tiny") or p.name.endswith(".old") for p in directory.parent.iterdir())


def test_unknown_name_suggests_close_matches():
    with pytest.raises(ValueError, match="Did you mean 'mnist_ebm'"):
        zoo.load("mnist_ebn")
    with pytest.raises(ValueError, match="Available: .*mnist_ebm"):
        zoo.load("no_such_model")


def test_list_has_table_fields():
    rows = zoo.list()
    names = [r["name"] for r in rows]
    assert "mnist_ebm" in names
    row = rows[names.index("mnist_ebm")]
    assert row["family"] == "ShortRunEBM" and row["dataset"] == "mnist" and row["resolution"] == 28
    assert row["steps"] >= 50 and "recon_mse_test" in row["metrics"] and row["hardware"]
    assert zoo.list(filter="fashion") == [] or all("fashion" in r["dataset"] for r in zoo.list(filter="fashion"))


@pytest.mark.parametrize("name", EBM_ENTRIES)
def test_ebm_entry_loads_and_matches_golden_samples(name):
    model = zoo.load(name)
    assert model.chain.steps >= 50

    def ten_steps():
        return model.sample(2, seed=0, steps=10)

    assert_matches_golden(ten_steps(), f"{name}_sample_seed0_k10.npy", atol=rounding_tolerance(model, ten_steps))


def block_means(images, block=8):
    """The means of ``block`` x ``block`` pixel blocks: ``(B, H, W, C)`` -> ``(B, H / block, W / block, C)``."""
    b, h, w, c = images.shape
    return images.reshape(b, h // block, block, w // block, block, c).mean(axis=(2, 4))


@pytest.mark.parametrize("name", FULL_CHAIN_ENTRIES)
def test_coarse_to_fine_entry_matches_its_golden_full_chain(name):
    """All stages of the chain (8x8 up to full size), not only the first 10 steps at 8x8, compared in the means of
    8x8-pixel blocks: single pixels of a long chain's samples are chaotic in rounding (a relative 1e-6 change of
    the weights moves some of celeba_ebm's by 0.2, which would leave a pixel tolerance of 2, no check at all);
    block means move by 5e-3 (``rounding_tolerance`` measures it)."""
    model = zoo.load(name)

    def full_chain():
        return block_means(model.sample(2, seed=0))

    assert_matches_golden(full_chain(), f"{name}_sample_seed0_full.npy", atol=rounding_tolerance(model, full_chain),
                          reduce=block_means)


@pytest.mark.parametrize("name", EBM_ENTRIES)
def test_ebm_card_reports_quality_reconstruction_and_budget(name):
    """Each EBM entry records FD/KID of 5,000 samples under eval_zoo's protocol against the held-out split,
    held-out reconstruction MSE and the training budget, and its card shows the same numbers."""
    from ebm_recipe import iterations_text
    from eval_zoo import PROTOCOL

    meta = zoo.info(name)
    quality = meta["sample_quality"]
    assert quality["protocol"] == PROTOCOL and quality["n_samples"] == 5000
    assert quality["feature_network"] == metrics.FEATURE_NETWORKS[meta["dataset"]["name"]][0]
    assert quality["n_reference"] == {"celeba": 1000, "cifar10": 5000}.get(meta["dataset"]["name"], 10000)
    training = meta["training"]
    assert training["iterations"] > 0 and training["wall_time_s"] > 0 and training["hardware"].startswith("CPU")
    card = (registry.resolve(name) / "README.md").read_text()
    for number in (f"{quality['fd']:.2f}", f"{1e3 * quality['kid']:.2f}", f"{meta['metrics']['recon_mse_test']:.4f}",
                   f"| {iterations_text(training)} |", f"K={meta['chain']['steps']}", training["hardware"]):
        assert number in card, (name, number)
    for figure in ("samples", "chain", "interpolation", "nearest", "reconstruction"):
        assert f"({figure}.png)" in card and (registry.resolve(name) / f"{figure}.png").is_file()
    if "inception" in meta and "updates" in meta["inception"]:  # a campaign's score: of this very snapshot
        assert meta["inception"]["updates"] == training["iterations"]


@pytest.mark.parametrize("name", INCEPTION_ENTRIES)
def test_scored_entries_show_the_inception_fid_its_floor_and_face_rate_on_their_card(name):
    score = zoo.info(name).get("inception")
    if not score:
        pytest.skip(f"{name} has no Inception score (tools/eval_zoo.py --inception, the [eval] extra)")
    card = (registry.resolve(name) / "README.md").read_text()
    fid = score["fid"]
    assert fid["n"] >= 250 and fid["floor_n"] == fid["n"] and fid["floor"] < fid["fid"]
    for number in (f"**{fid['fid']:.1f}**", f"{fid['floor']:.1f}", f"{fid['n']:,} samples vs {fid['reference']}"):
        assert number in card, (name, number)
    if "face_rate" in score:
        assert f"**{100 * score['face_rate']['rate']:.1f} %**" in card


def test_scored_runs_take_this_snapshots_largest_score_and_the_protocol_curve(tmp_path, monkeypatch):
    import ebm_recipe

    monkeypatch.setenv("KERAS_SHORTRUN_HOME", str(tmp_path / "home"))
    n = ebm_recipe.SCORE_PROTOCOL["fid_samples"]

    def score(updates, samples, fid):
        return {"updates": updates, "cpu_minutes": updates / 10, "fid": {"n": samples, "fid": fid, "floor": 14.0,
                                                                         "reference": "celeba train"}}

    for row in (score(100, n, 300.0), score(200, 250, 280.0), score(200, n, 250.0), score(300, n, 200.0)):
        ebm_recipe.record_score(tmp_path, row)
    assert json.loads((tmp_path / "score.json").read_text()) == score(300, n, 200.0)  # the latest
    found = ebm_recipe.scored_runs(tmp_path, 200)
    assert found["inception"] == score(200, n, 250.0)  # this snapshot, at the protocol's N
    # Not on the curve: the N=250 row, and the later snapshot (300), which is not the one exported.
    assert [r["updates"] for r in found["quality_curve"]] == [100, 200]
    assert "recipe_study" not in found
    table = ebm_recipe.curve_table({"name": "celeba_ebm", **found})
    assert "| 200 | 0.33 | - | 250.0 | snapshot |" in table and "floor 14.0" in table
    assert ebm_recipe.scored_runs(tmp_path / "elsewhere", 200) == {}

    chain = {"coarse_to_fine.steps": [50, 20, 15, 20]}  # the same snapshot sampled with another chain
    ebm_recipe.record_score(tmp_path, {**score(200, n, 240.0), "chain": chain})
    assert ebm_recipe.scored_runs(tmp_path, 200)["inception"] == score(200, n, 250.0)  # the run's own chain
    other = ebm_recipe.scored_runs(tmp_path, 200, chain)
    assert other["inception"] == {**score(200, n, 240.0), "chain": chain}  # an export with that chain reads it
    assert other["quality_curve"][:2] == found["quality_curve"]  # the snapshots as trained, then what ships:
    assert other["quality_curve"][2] == other["inception"]  # this snapshot with that chain
    assert "| 200 | 0.33 | - | 240.0 | steps [50, 20, 15, 20] |" in ebm_recipe.curve_table(
        {"name": "celeba_ebm", **other})


def test_update_cost_times_the_recipes_training_updates(monkeypatch):
    import ebm_recipe
    from builders import tiny_images

    monkeypatch.setattr(ebm_recipe.data, "load", lambda *args, **kwargs: (tiny_images(16, (28, 28, 1)), None))
    cost = ebm_recipe.update_cost("mnist_ebm", {"filters": 2, "steps": 2, "batch_size": 4}, updates=2)
    assert cost["cpu_s_per_update"] > 0 and cost["updates"] == 2 and "CPU" in cost["hardware"]
    assert cost["command"] == ("python tools/train_ebm.py mnist_ebm cost --set 'filters=2' --set 'steps=2'"
                               " --set 'batch_size=4'")


def test_a_snapshot_is_sampled_with_another_chain_only(tmp_path):
    import ebm_recipe

    recipes.record_recipe("celeba_ebm", tmp_path, {"coarse_to_fine.steps": [50, 20, 15, 10],
                                                   "coarse_to_fine.anneal_steps": 5})  # trained with this chain
    chain = {"coarse_to_fine.steps": [50, 20, 15, 20], "coarse_to_fine.anneal_steps": 10}
    recipe = ebm_recipe.sampling_recipe("celeba_ebm", tmp_path, chain)
    sampled = recipes.sampling_overrides(recipes.load("celeba_ebm"))  # the recipe's sampling_chain: the fine noise
    assert recipe["coarse_to_fine"] == dict(recipes.load("celeba_ebm")["coarse_to_fine"], steps=[50, 20, 15, 20],
                                            anneal_steps=10, noise_scale=sampled["coarse_to_fine.noise_scale"])
    assert recipes.run_recipe("celeba_ebm", tmp_path)["coarse_to_fine"]["steps"] == [50, 20, 15, 10]  # untouched
    with pytest.raises(ValueError, match=r"\['learning_rate'\] are not chain fields"):
        ebm_recipe.sampling_recipe("celeba_ebm", tmp_path, {"learning_rate": 1e-3})
    trained = recipes.run_recipe("celeba_ebm", tmp_path)
    assert ebm_recipe.recipe_changes(trained, recipe) == {**sampled, **chain}  # the --set that turns one into the other
    assert ebm_recipe.recipe_changes(recipe, recipe) == {}
    assert ebm_recipe.set_flags(chain) == (" --set 'coarse_to_fine.steps=[50,20,15,20]'"
                                             " --set 'coarse_to_fine.anneal_steps=10'")


def test_a_run_started_from_an_entry_counts_on_from_it_and_keeps_its_curve(tmp_path, monkeypatch):
    import ebm_recipe

    monkeypatch.setenv("KERAS_SHORTRUN_HOME", str(tmp_path / "home"))
    assert ebm_recipe.run_origin(tmp_path)["updates"] == 0  # no started_from.json: a run from scratch
    n = ebm_recipe.SCORE_PROTOCOL["fid_samples"]

    def score(updates, fid):
        return {"updates": updates, "cpu_minutes": updates / 20, "fid": {"n": n, "fid": fid, "floor": 14.0,
                                                                         "reference": "celeba train"}}

    study = [{"candidate": "a", **score(50, 400.0)}]
    inherited = {"training": {"iterations": 100, "wall_time_s": 400.0}, "quality_curve": [score(100, 300.0)],
                 "recipe_study": study}
    (tmp_path / "started_from.json").write_text(json.dumps(
        {"start": "entry", "weights_sha256": "ab" * 32, "entry_metadata": inherited}))
    origin = ebm_recipe.run_origin(tmp_path)
    # The entry recorded no cpu_time_s: its score of the exported snapshot (100 updates) has it, 5 minutes.
    assert (origin["updates"], origin["cpu_time_s"], origin["wall_time_s"]) == (100, 300.0, 400.0)
    per_epoch = recipes.load("celeba_ebm")["iterations_per_epoch"]
    totals = ebm_recipe.snapshot_totals("celeba_ebm", tmp_path, 3, {"cpu_time_s": "20.0", "wall_time_s": "25.0"})
    assert totals == (100 + 3 * per_epoch, 320.0, 425.0)
    ebm_recipe.record_score(tmp_path, score(130, 250.0))
    ebm_recipe.record_score(tmp_path, {**score(130, 200.0), "seed": 7})  # a selection score: on neither
    ebm_recipe.record_score(tmp_path, score(140, 240.0))  # a later snapshot than the one exported
    found = ebm_recipe.scored_runs(tmp_path, 130)
    assert found["inception"] == score(130, 250.0)
    assert [r["updates"] for r in found["quality_curve"]] == [100, 130]  # the entry's curve, then the run's
    assert found["recipe_study"] == study  # no study folders on this machine: the entry's rows stay


def test_an_entry_is_scored_under_another_chain_with_its_own_weights(monkeypatch):
    import ebm_recipe

    scored = {}

    def score_model(model, dataset, fid_samples, reference, data_path, seed=None):
        scored.update(model=model, dataset=dataset)
        return {"fid": {"fid": 1.0}}, None

    monkeypatch.setattr(ebm_recipe, "score_model", score_model)
    entry_dir = registry.resolve("celeba_ebm")
    result = ebm_recipe.score_entry_chain("celeba_ebm", entry_dir, {"coarse_to_fine.steps": [40, 20, 15, 10]})
    assert scored["dataset"] == "celeba" and scored["model"].chain.stage_steps == (40, 20, 15, 10)
    for mine, theirs in zip(scored["model"].get_weights(), zoo.load("celeba_ebm").get_weights()):
        np.testing.assert_array_equal(mine, theirs)
    assert result["chain"]["steps"] == [40, 20, 15, 10]
    assert result["command"] == ("python tools/train_ebm.py celeba_ebm score-entry "
                                 "--set 'coarse_to_fine.steps=[40,20,15,10]'")


def test_an_entry_is_exported_again_with_another_chain_only_when_it_scores_better(tmp_path, monkeypatch):
    import ebm_recipe

    entry_dir = tmp_path / "celeba_ebm"
    shutil.copytree(registry.resolve("celeba_ebm"), entry_dir)
    committed = zoo.info(entry_dir)
    files = {p.name: p.read_bytes() for p in entry_dir.iterdir()}
    fid = {"value": committed["inception"]["fid"]["fid"]}  # as good as the entry: not better

    def score_model(model, dataset, data_path=None):
        return {"fid": dict(committed["inception"]["fid"], fid=fid["value"]),
                "face_rate": committed["inception"]["face_rate"]}, None

    def measure_entry(model, r, figures, *args):  # the figures and measurements of export, faked
        for png in entry_dir.glob("*.png"):
            shutil.copy(png, figures)
        return {k: json.loads(json.dumps(committed[k])) for k in ("metrics", "sample_quality", "convergence_check",
                                                                  "evaluation")}

    monkeypatch.setattr(ebm_recipe, "score_model", score_model)
    monkeypatch.setattr(ebm_recipe, "measure_entry", measure_entry)
    chain = {"coarse_to_fine.noise_scale": [0.01, 0.01, 0.0, 0.0]}
    with pytest.raises(ValueError, match="not below the committed entry's"):
        ebm_recipe.export_entry_chain("celeba_ebm", entry_dir, chain)
    assert {p.name: p.read_bytes() for p in entry_dir.iterdir()} == files  # nothing written
    fid["value"] -= 1.0
    ebm_recipe.export_entry_chain("celeba_ebm", entry_dir, chain)
    metadata, model = zoo.info(entry_dir), zoo.load(entry_dir)  # verified against its new hashes, safe mode
    assert model.chain.noise_scales == [0.01, 0.01, 0.0, 0.0]
    for mine, theirs in zip(model.get_weights(), zoo.load(registry.resolve("celeba_ebm")).get_weights()):
        np.testing.assert_array_equal(mine, theirs)  # the same weights, another chain
    assert metadata["inception"]["fid"]["fid"] == fid["value"] and metadata["training"] == committed["training"]
    assert metadata["inception"]["chain"] == {**committed["chain"]["overrides"], **chain}
    assert metadata["inception"].get("averaged_epochs") == committed["inception"].get("averaged_epochs")  # same weights
    assert metadata["quality_curve"] == committed["quality_curve"] + [metadata["inception"]]  # ends with what ships
    assert metadata["chain"]["noise_scale"] == [0.01, 0.01, 0.0, 0.0]
    assert metadata["chain"]["trained_with"] == committed["chain"]["trained_with"]
    assert "export-entry-chain" in metadata["evaluation"]["command"]
    assert "tau_r = 0.01, 0.01, 0, 0" in (entry_dir / "README.md").read_text()
    with pytest.raises(ValueError, match="no Inception score to beat"):  # before any sampling
        ebm_recipe.export_entry_chain("mnist_ebm", registry.resolve("mnist_ebm"), {})


def test_the_average_of_kept_snapshots_is_scored_recorded_and_read_by_its_export_only(tmp_path, monkeypatch):
    import ebm_recipe

    monkeypatch.setenv("KERAS_SHORTRUN_HOME", str(tmp_path / "home"))
    recipe = recipes.record_recipe("mnist_ebm", tmp_path, {"filters": 4, "steps": 2})
    model = recipes.build(recipe)
    base = model.get_weights()
    for epoch in (1, 2, 3, 4):
        model.set_weights([w + epoch for w in base])
        atomic_save_weights(model, checkpoint_path(tmp_path, epoch))
    (tmp_path / "log.csv").write_text("epoch,cpu_time_s,wall_time_s\n" + "".join(
        f"{e},{10.0 * (e + 1)},{11.0 * (e + 1)}\n" for e in range(4)))
    checkpoint_path(tmp_path, 3).unlink()  # thinned out: the average is over the snapshots kept
    scored = {}

    def score_model(model, dataset, fid_samples, reference, data_path, seed=None):
        scored.update(weights=model.get_weights(), dataset=dataset)
        return {"fid": {"fid": 1.0, "n": fid_samples}}, np.zeros((1, 28, 28, 1), np.float32)

    monkeypatch.setattr(ebm_recipe, "score_model", score_model)
    result = ebm_recipe.score_snapshot("mnist_ebm", tmp_path, epoch=4, average=3)
    assert result["averaged_epochs"] == [2, 4] and scored["dataset"] == "mnist"
    assert result["sampled_with"]["steps"] == 2 and "chain" not in result  # the whole chain, though none was set
    for mine, original in zip(scored["weights"], base):
        np.testing.assert_allclose(mine, original + 3.0, rtol=1e-6, atol=1e-6)  # (2 + 4) / 2, float32 sums
    assert result["command"].endswith("--average-epochs 3") and result["updates"] == 4 * recipe["iterations_per_epoch"]
    kept = sorted(p.name for p in (tmp_path / "checkpoints").glob("*.keep"))
    assert kept == ["epoch_0002.keep", "epoch_0004.keep"]  # thinning never takes an averaged snapshot away
    single = ebm_recipe.score_snapshot("mnist_ebm", tmp_path, epoch=4)
    for mine, original in zip(scored["weights"], base):
        np.testing.assert_array_equal(mine, original + 4.0)  # the snapshot alone
    assert "averaged_epochs" not in single
    updates = result["updates"]
    assert ebm_recipe.scored_runs(tmp_path, updates)["inception"] == single  # an export of the snapshot alone
    assert ebm_recipe.scored_runs(tmp_path, updates, averaged=[2, 4])["inception"] == result  # of the average
    assert [s["updates"] for s in ebm_recipe.scored_runs(tmp_path, updates)["quality_curve"]] == [updates]
    curve = ebm_recipe.scored_runs(tmp_path, updates, averaged=[2, 4])["quality_curve"]
    assert curve == [single, result] and ebm_recipe.sampled_as(result) == "average of 2 snapshots"
    with pytest.raises(FileNotFoundError, match="No snapshot of epoch 3"):
        ebm_recipe.score_snapshot("mnist_ebm", tmp_path, epoch=3, average=2)  # before any sampling
    with pytest.raises(ValueError, match="positive number of epochs"):
        ebm_recipe.score_snapshot("mnist_ebm", tmp_path, epoch=4, average=0)
    fields = {"iterations": 400, "averaged_updates": [200, 400]}
    assert ebm_recipe.iterations_text(fields) == ("400 (the weights: the uniform average of the 2 snapshots kept "
                                                  "from 200 to 400 updates; metadata.json lists them)")
    assert ebm_recipe.iterations_text({"iterations": 400}) == "400"


@pytest.mark.parametrize("name", FEATURE_ENTRIES)
def test_feature_network_entry_matches_golden_features(name):
    model = zoo.load(name)
    assert zoo.info(name)["family"] == "FeatureNet"
    features = np.asarray(model(probe_images(model.input_shape[1:])))
    # One forward pass, no chain: another CPU's rounding stays within ~1e-6 relative; 1e-4 leaves 100x.
    np.testing.assert_allclose(features, np.load(ROOT / "tests" / "golden" / f"{name}_probe.npy"), rtol=1e-4,
                               atol=1e-4)


def test_wheel_ships_the_zoo(tmp_path):
    """A wheel built from the repo, installed into a fresh directory, loads mnist_ebm offline."""
    shutil.rmtree(ROOT / "build", ignore_errors=True)  # no stale files from an earlier build in the wheel
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(ROOT)],
        check=True, capture_output=True, timeout=300,
    )
    wheel = next(tmp_path.glob("keras_shortrun-*.whl"))
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(target), str(wheel)],
        check=True, capture_output=True, timeout=300,
    )
    code = (
        "import keras_shortrun, pathlib; from keras_shortrun import zoo;"
        "assert 'site' in keras_shortrun.__file__, keras_shortrun.__file__;"
        "print(zoo.resolve('mnist_ebm')); m = zoo.load('mnist_ebm'); print(m.sample(2, seed=0, steps=2).shape)"
    )
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "2", "HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert "site/keras_shortrun/_zoo/mnist_ebm" in result.stdout and "(2, 28, 28, 1)" in result.stdout


def test_registered_entry_with_consistently_edited_metadata_is_refused(tmp_path, monkeypatch):
    """Editing weights *and* metadata.json together is caught by the hashes pinned in code."""
    copy = tmp_path / "mnist_ebm"
    shutil.copytree(zoo.resolve("mnist_ebm"), copy)
    weights = copy / "model.weights.h5"
    content = bytearray(weights.read_bytes())
    content[-100] ^= 0xFF
    weights.write_bytes(bytes(content))
    meta = json.loads((copy / "metadata.json").read_text())
    meta["files"]["model.weights.h5"]["sha256"] = registry.sha256_file(weights)
    (copy / "metadata.json").write_text(json.dumps(meta))
    monkeypatch.setenv(registry.ZOO_ENV, str(tmp_path))
    assert zoo.resolve("mnist_ebm") == copy
    with pytest.raises(zoo.ZooIntegrityError, match="pins"):
        zoo.load("mnist_ebm")
    zoo.load(copy)  # as a plain folder it is only as trustworthy as its own metadata


def test_registered_name_wins_over_a_local_folder(tmp_path, monkeypatch):
    (tmp_path / "mnist_ebm").mkdir()
    (tmp_path / "mnist_ebm" / "metadata.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    assert zoo.resolve("mnist_ebm") != tmp_path / "mnist_ebm"


def test_extra_files_cannot_shadow_entry_files(tmp_path):
    model = tiny_ebm(seed=1)
    fake = tmp_path / "config.json"
    fake.write_text("{}")
    with pytest.raises(ValueError, match="extra_files"):
        zoo.save_entry(model, tmp_path / "entry", {}, extra_files=[fake])


@pytest.mark.parametrize("name", ["mnist_lvm", "celeba_lvm"])
def test_lvm_entries_load_offline_and_fine_tune_with_fit(name):
    """The pretrained LVMs load (hash-checked), carry learned step sizes, reconstruct better than their
    untrained chain start, and ``fit`` on a few new images takes finite steps that move the weights."""
    import keras

    model = zoo.load(name)
    baseline = zoo.load(f"{name}_vae")
    meta = zoo.info(name)
    assert meta["chain"]["learned_step_sizes"] == pytest.approx(
        np.asarray(keras.ops.convert_to_numpy(model.chain.step_size)).tolist(), rel=1e-5
    )
    assert baseline.latent_dims == model.latent_dims
    rng = np.random.default_rng(0)
    new = np.clip(model.synthesize(8, seed=1) + 0.05 * rng.normal(size=(8,) + model.image_shape), -1, 1)
    _, mse = model.reconstruct(new, seed=0)
    assert mse.mean() < 0.1  # its own samples are easy to reconstruct
    before = [w.copy() for w in model.generator.get_weights()]
    model.compile(optimizer=keras.optimizers.Adam(1e-4, beta_1=0.5))
    history = model.fit(new.astype("float32"), batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    assert any(not np.allclose(a, b) for a, b in zip(before, model.generator.get_weights()))


@pytest.mark.parametrize("name", ["mnist_lvm", "celeba_lvm"])
def test_lvm_entries_match_golden_outputs(name):
    """Seeded ancestral samples and their K=25-step reconstructions, as written by tools/make_golden.py."""
    model = zoo.load(name)
    images = model.synthesize(2, seed=0)

    def reconstruct():
        return model.reconstruct(images, seed=0)[0]

    reconstruction, tolerance = reconstruct(), rounding_tolerance(model, reconstruct)
    # One generator pass, no chain: float32 rounding of a few layers stays rounding-sized (export's TOLERANCE).
    assert_matches_golden(images, f"{name}_synthesize_seed0.npy", atol=TOLERANCE)
    assert_matches_golden(reconstruction, f"{name}_reconstruct_seed0.npy", atol=tolerance)


@pytest.mark.parametrize("name", ["mnist_classifier", "fashion_mnist_classifier"])
def test_classifier_entries_predict_offline_and_fine_tune_with_fit(name):
    """The pretrained generative classifiers predict 8-chain averaged probabilities, match their golden
    outputs, and fine-tune (joint stage) with ``fit``; their ConvNet baselines load too."""
    import keras

    model = zoo.load(name)
    images = model.synthesize(4, seed=0)
    probabilities = model.predict(images, verbose=0)
    assert probabilities.shape == (4, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    seeded = model.predict_proba(images, seed=0)
    tolerance = rounding_tolerance(model, lambda: model.predict_proba(images, seed=0))  # before fit changes it
    assert zoo.load(f"{name}_convnet").predict(images, verbose=0).shape == (4, 10)
    before = [w.copy() for w in model.generator.get_weights()]
    model.compile(optimizer=keras.optimizers.Adam(1e-5))
    history = model.fit(images, np.argmax(seeded, axis=1), batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    assert any(not np.allclose(a, b) for a, b in zip(before, model.generator.get_weights()))
    assert_matches_golden(seeded, f"{name}_proba_seed0.npy", atol=tolerance)


@pytest.mark.parametrize("name", ["mnist_classifier", "fashion_mnist_classifier"])
def test_classifier_entries_reach_their_card_accuracy(name, shared_data):
    """On the first 500 test images the entry is within 3 points of its card's full-test-set accuracy."""
    from keras_shortrun import data

    x, y = data.load(name.removesuffix("_classifier"), "test")
    accuracy = np.mean(zoo.load(name).classify(x[:500], seed=0) == y[:500])
    assert accuracy >= zoo.info(name)["metrics"]["accuracy_test"] - 0.03


def test_fine_tune_an_entry_on_new_data_and_load_it_back(tmp_path):
    """zoo.load + fit on tiny new data at a lower learning rate, saved as an entry folder zoo.load reads back."""
    from keras_shortrun.training import fine_tune

    new = np.random.default_rng(0).uniform(-1, 1, size=(8, 28, 28, 1)).astype("float32")
    original = zoo.load("mnist_ebm").get_weights()
    model, directory = fine_tune("mnist_ebm", new, tmp_path / "mnist_ebm_tuned", iterations=2, batch_size=4,
                                 learning_rate=1e-5, dataset="noise")
    reloaded = zoo.load(directory)
    for tuned, back in zip(model.get_weights(), reloaded.get_weights()):
        np.testing.assert_array_equal(tuned, back)
    assert any(not np.allclose(a, b) for a, b in zip(original, reloaded.get_weights()))
    meta = zoo.info(directory)
    assert meta["fine_tuned_from"]["entry"] == "mnist_ebm" and meta["training"]["iterations"] == 2
    assert np.isfinite(meta["training"]["final_loss"]) and meta["chain"]["steps"] == model.chain.steps
    with pytest.raises(ValueError, match="shape"):
        fine_tune("mnist_ebm", new[:, :14], tmp_path / "bad", iterations=1, batch_size=4)
    assert not (tmp_path / "bad").exists()
