"""GenerativeClassifier: BPTT gradients against finite differences, unlabelled data, stages, prediction, saving."""

import shutil
import sys

import keras
import numpy as np
import pytest
from builders import tiny_classifier
from conftest import run_python
from keras import ops

from keras_shortrun import attacks
from keras_shortrun import backend
from keras_shortrun.models import conv_net_baseline
from keras_shortrun.seeds import stream
from keras_shortrun.training import SemiSupervisedBatches


def classifier(stage="generator", **kwargs):
    """This file's toy classifier: K=3 chains of step size 0.3, 4 chains per prediction."""
    return tiny_classifier(stage, steps=3, step_size=0.3, prediction_chains=4, **kwargs)


def images(n, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n, 28, 28, 1)).astype("float32")


# Keras computes ops.tanh (the generator's output) in float32 on JAX even for float64 inputs, which leaves
# float64 finite differences without their precision there; JAX's BPTT gradients are checked in test_chain.
FLOAT64_GENERATOR = pytest.mark.skipif(backend.BACKEND == "jax", reason="ops.tanh is float32 on JAX")


def joint_loss(model, x, y, seed):
    return model.compute_training_loss(x, y, ops.convert_to_tensor(seed, "int32"), training=True)[0]


@FLOAT64_GENERATOR
def test_bptt_gradients_reach_generator_and_step_size_and_match_finite_differences(float64):
    model = classifier("joint", generative_weight=0.0)
    x, y = ops.convert_to_tensor(images(4), "float64"), ops.convert_to_tensor([0, 1, 2, 1])
    seed = [3, 4]
    kernel = model.generator.deconvs[1].kernel
    raw_step = model.chain.raw_step_size
    _, grads, _ = backend.value_and_gradients(lambda: joint_loss(model, x, y, seed), [kernel, raw_step])
    grad_kernel, grad_step = [ops.convert_to_numpy(g) for g in grads]
    assert np.abs(grad_kernel).max() > 1e-6 and abs(grad_step[0]) > 1e-6  # the cross-entropy reaches both

    def central_difference(variable, index, h=1e-5):
        original = ops.convert_to_numpy(variable).copy()
        values = []
        for sign in (1, -1):
            changed = original.copy()
            changed[index] += sign * h
            variable.assign(changed)
            values.append(float(joint_loss(model, x, y, seed)))
        variable.assign(original)
        return (values[0] - values[1]) / (2 * h)

    flat = np.argsort(-np.abs(grad_kernel).ravel())[:3]  # the most sensitive weights
    for index in [np.unravel_index(i, grad_kernel.shape) for i in flat]:
        np.testing.assert_allclose(central_difference(kernel, index), grad_kernel[index], rtol=1e-4)
    np.testing.assert_allclose(central_difference(raw_step, (0,)), grad_step[0], rtol=1e-4)


def test_generator_stage_ignores_labels_and_only_the_generator_learns():
    model = classifier("generator")
    frozen = model.head.weights + [model.chain.raw_step_size]
    before = {v.path: keras.ops.convert_to_numpy(v).copy() for v in model.generator.weights + frozen}
    model.compile(keras.optimizers.Adam(1e-2))
    model.fit(images(8), np.full(8, -1), batch_size=8, epochs=1, verbose=0)
    for variable in model.generator.weights:
        assert not np.allclose(keras.ops.convert_to_numpy(variable), before[variable.path]), variable.path
    for variable in frozen:
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(variable), before[variable.path])


def test_unlabelled_examples_change_the_generator_but_not_the_heads_loss():
    model = classifier("joint")
    x, y = images(6), np.array([0, 2, -1, -1, -1, -1])
    latents = [ops.convert_to_tensor(np.random.default_rng(1).normal(size=(6, 6)), "float32")]
    head = model.head.trainable_weights
    model.set_stage("head")  # fixed latents: compare with and without the unlabelled rows
    mixed, grad_mixed, _ = backend.value_and_gradients(
        lambda: model.compute_training_loss(x, ops.convert_to_tensor(y), latents, training=True)[0], head)
    labelled, grad_labelled, _ = backend.value_and_gradients(
        lambda: model.compute_training_loss(x[:2], ops.convert_to_tensor(y[:2]), [latents[0][:2]], True)[0], head)
    np.testing.assert_allclose(float(mixed), float(labelled), rtol=1e-6)
    for a, b in zip(grad_mixed, grad_labelled):
        np.testing.assert_allclose(ops.convert_to_numpy(a), ops.convert_to_numpy(b), rtol=1e-5, atol=1e-7)

    model.set_stage("joint")  # only unlabelled images: the generator moves, the head sees no loss
    generator = model.generator.trainable_weights

    def unlabelled_loss():
        return model.compute_training_loss(x[2:], ops.convert_to_tensor([-1, -1, -1, -1]),
                                           ops.convert_to_tensor([1, 2], "int32"), True)

    _, grads, _ = backend.value_and_gradients(lambda: unlabelled_loss()[0], generator + head)
    largest = [float(np.abs(ops.convert_to_numpy(g)).max()) for g in grads]
    assert float(unlabelled_loss()[1]["cross_entropy"]) == 0.0
    assert max(largest[: len(generator)]) > 0
    assert max(largest[len(generator):]) == 0.0


@FLOAT64_GENERATOR
def test_input_gradient_is_the_eot_gradient_through_the_chain(float64):
    model = classifier("joint")
    x, y = images(3, seed=2).astype("float64"), np.array([0, 1, 2])
    grads, probability = model.input_gradient(x, y, chains=4, seed=5)
    assert grads.shape == x.shape and probability.shape == (3,) and np.all((probability > 0) & (probability < 1))
    seed_tensor = keras.random.SeedGenerator(5).next()  # input_gradient's first draw for seed=5

    # Compiled as input_gradient is, so both draw from the same random stream (TensorFlow's XLA kernels draw
    # other numbers than its CPU kernels for a seed).
    probabilities = backend.compile_method(model, lambda images_: model.chain_probabilities(images_, seed_tensor, 4))

    def expected_cross_entropy(images_):
        p = ops.convert_to_numpy(probabilities(ops.convert_to_tensor(images_)))
        return -np.log(p[np.arange(3), :, y]).mean(axis=1).sum()

    h, index = 1e-5, np.unravel_index(np.argmax(np.abs(grads)), grads.shape)
    plus, minus = x.copy(), x.copy()
    plus[index] += h
    minus[index] -= h
    numeric = (expected_cross_entropy(plus) - expected_cross_entropy(minus)) / (2 * h)
    np.testing.assert_allclose(numeric, grads[index], rtol=1e-4)


def test_prediction_averages_independent_chains():
    model = classifier("joint")
    x = images(5)
    p = model.predict_proba(x, chains=6, seed=1)
    assert p.shape == (5, 3)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(p, model.predict_proba(x, chains=6, seed=1))
    assert not np.allclose(p, model.predict_proba(x, chains=6, seed=2))
    single = model.predict_proba(x, chains=1, seed=1)
    assert np.abs(single - p).max() > 0  # one chain is noisier than six
    assert model.predict(x, verbose=0).shape == (5, 3)
    assert model.classify(x, seed=1).shape == (5,)


def test_stages_train_with_fit_and_round_trip(tmp_path):
    model = classifier()
    x, y = images(16), np.array([0, 1, 2, -1] * 4)
    for stage in ("generator", "head", "joint"):
        model.set_stage(stage)
        with pytest.raises(ValueError, match="compile"):
            model.fit(x, y, batch_size=8, verbose=0)
        model.compile(keras.optimizers.Adam(1e-3))
        step = float(keras.ops.convert_to_numpy(model.chain.step_size)[0])
        history = model.fit(x, y, batch_size=8, epochs=1, verbose=0)
        assert np.isfinite(history.history["loss"][-1])
        moved = float(keras.ops.convert_to_numpy(model.chain.step_size)[0]) != step
        assert moved == (stage == "joint")  # the step size learns only by BPTT
    path = tmp_path / "gc.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.stage == "joint"
    np.testing.assert_allclose(loaded.predict_proba(x, seed=3), model.predict_proba(x, seed=3), rtol=1e-5)


def test_semi_supervised_batches_carry_a_fixed_number_of_labels():
    x_labelled, y_labelled, x_unlabelled = images(10), np.arange(10) % 3, images(30)
    stream = SemiSupervisedBatches(x_labelled, y_labelled, x_unlabelled, 8, 3, seed=0, steps=5)
    for i in range(len(stream)):
        xb, yb = stream[i]
        assert xb.shape == (8, 28, 28, 1) and np.sum(yb >= 0) == 3 and np.sum(yb == -1) == 5
    with pytest.raises(ValueError, match="unlabelled"):
        SemiSupervisedBatches(x_labelled, y_labelled, None, 8, 3)


def test_bad_inputs_name_the_problem():
    model = classifier()
    model.compile(keras.optimizers.Adam(1e-3))
    x = images(4)
    with pytest.raises(ValueError, match=r"\[0, 3\) or be -1"):
        model.fit(x, np.array([0, 1, 3, -1]), verbose=0)
    with pytest.raises(ValueError, match="one-hot"):
        model.fit(x, np.eye(3)[[0, 1, 2, 0]], verbose=0)
    with pytest.raises(ValueError, match="4 images but y has 3"):
        model.fit(x, np.array([0, 1, 2]), verbose=0)
    with pytest.raises(ValueError, match="0..255"):
        model.predict_proba(x * 127 + 128)
    with pytest.raises(ValueError, match="shape"):
        model.predict(np.zeros((2, 32, 32, 3), "float32"))
    with pytest.raises(ValueError, match="stage must be one of"):
        model.set_stage("pretrain")
    model.set_stage("head")
    model.compile(keras.optimizers.Adam(1e-3))
    with pytest.raises(ValueError, match="learns from labels"):
        model.fit(x, np.full(4, -1), verbose=0)
    with pytest.raises(ValueError, match="no -1"):
        model.input_gradient(x, np.array([0, 1, -1, 2]))


def test_conv_net_baseline_has_the_thesis_layout():
    model = conv_net_baseline((28, 28, 1), 10)
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds.count("Conv2D") == 4 and kinds.count("MaxPooling2D") == 2 and kinds.count("Dense") == 3
    p = model.predict(images(2), verbose=0)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-5)


def test_joint_stage_fits_on_jax():
    code = """
import keras, numpy as np
from builders import tiny_classifier
model = tiny_classifier("joint", steps=3, step_size=0.3)
model.compile(keras.optimizers.Adam(1e-2))
x = np.random.default_rng(0).uniform(-1, 1, (16, 28, 28, 1)).astype("float32")
step = float(model.chain.step_size[0])
history = model.fit(x, np.array([0, 1, 2, -1] * 4), batch_size=8, epochs=2, verbose=0)
grads, p = model.input_gradient(x[:2], np.array([0, 1]), chains=2, seed=0)
print(history.history["loss"][-1], float(model.chain.step_size[0]) != step, np.abs(grads).max() > 0)
"""
    loss, step_moved, has_gradient = run_python(code, backend="jax").split()[-3:]
    assert np.isfinite(float(loss)) and step_moved == "True" and has_gradient == "True"


def linear_softmax(seed=0):
    inputs = keras.Input((28, 28, 1))
    logits = keras.layers.Dense(3, kernel_initializer=keras.initializers.RandomNormal(0, 0.1, seed=seed))(
        keras.layers.Flatten()(inputs)
    )
    return keras.Model(inputs, keras.layers.Softmax()(logits))


def test_fgsm_steps_along_the_sign_of_the_analytic_gradient():
    model = linear_softmax()
    x, y = images(4) * 0.5, np.array([0, 1, 2, 0])
    weights, bias = model.layers[2].get_weights()
    logits = x.reshape(4, -1) @ weights + bias
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    analytic = ((p - np.eye(3)[y]) @ weights.T).reshape(x.shape)  # d CE / dx for softmax regression
    adversarial = attacks.fgsm(attacks.loss_gradient(model), x, y, 0.1)
    np.testing.assert_allclose(adversarial, np.clip(x + 0.1 * np.sign(analytic), -1, 1), atol=1e-6)


def test_pgd_stays_in_the_ball_and_the_range_and_raises_the_loss():
    model = linear_softmax()
    x, y = images(8), np.arange(8) % 3
    adversarial = attacks.pgd(attacks.loss_gradient(model), x, y, 0.05, steps=10, seed=0)
    assert np.abs(adversarial - x).max() <= 0.05 + 1e-6 and adversarial.min() >= -1 and adversarial.max() <= 1

    def loss(images_):
        return -np.log(model.predict(images_, verbose=0)[np.arange(8), y]).mean()

    assert loss(adversarial) > loss(x)
    with pytest.raises(ValueError, match="epsilon"):
        attacks.pgd(attacks.loss_gradient(model), x, y, 0.0)


def test_eot_gradient_redraws_the_chain_noise_at_every_attack_step():
    model = classifier("joint")
    gradient = attacks.loss_gradient(model, chains=2, seed=0)
    x, y = images(2), np.array([0, 1])
    first, second = gradient(x, y), gradient(x, y)
    assert first.shape == x.shape and not np.allclose(first, second)
    np.testing.assert_array_equal(first, attacks.loss_gradient(model, chains=2, seed=0)(x, y))


def test_fixed_noise_gradient_is_one_deterministic_network():
    """``fixed_noise``: every call draws the same chain starts and noise (the gradient of one deterministic
    network of x), which EOT's fresh draws are not."""
    model = classifier("joint")
    x, y = images(2), np.array([0, 1])
    fixed = attacks.loss_gradient(model, chains=2, seed=0, fixed_noise=True)
    first = fixed(x, y)
    np.testing.assert_array_equal(first, fixed(x, y))
    np.testing.assert_array_equal(first, model.input_gradient(x, y, chains=2, seed=stream(0, "fixed_noise"))[0])
    assert not np.allclose(first, attacks.loss_gradient(model, chains=2, seed=0)(x, y))


def test_pgd_curve_is_the_worst_case_over_restarts_at_each_step_count():
    model = linear_softmax()
    x, y = images(8), np.arange(8) % 3
    gradient = attacks.loss_gradient(model)

    def predict(images_):
        return np.argmax(model.predict(images_, verbose=0), axis=1)

    curve, robust = attacks.pgd_curve(gradient, predict, x, y, 0.3, steps=20, restarts=2, seed=5)
    assert sorted(curve) == [10, 20]
    runs = [attacks.pgd(gradient, x, y, 0.3, steps=20, step_size=2.5 * 0.3 / 20, seed=stream(5, f"restart_{r}"))
            for r in range(2)]
    expected = np.logical_and.reduce([predict(a) == y for a in runs])
    np.testing.assert_array_equal(robust, expected)
    assert curve[20] == np.mean(expected)
    one, robust_one = attacks.pgd_curve(gradient, predict, x, y, 0.3, steps=20, restarts=1, seed=5)
    assert np.all(robust <= robust_one)  # a second restart can only break more images
    default, _ = attacks.pgd_curve(gradient, predict, x[:1], y[:1], 0.1, steps=100)
    assert sorted(default) == [10, 20, 50, 100]


def test_robustness_table_runs_every_attack_on_both_models(tmp_path, monkeypatch):
    from argparse import Namespace

    import eval_robustness
    from eval_robustness import attack_dataset

    monkeypatch.setattr(eval_robustness, "CHUNK_IMAGES", 3)  # 4 images: two chunks, the second of one image

    models = {"classifier": classifier("joint"), "convnet": linear_softmax()}
    x, y = images(4), np.array([0, 1, 2, 0])
    args = Namespace(epsilons=[0.2], eot_chains=2, pgd_steps=2, restarts=2, step_size=None)
    table, curves = attack_dataset("toy", models, x, y, args, cache=tmp_path)
    assert sorted(table["classifier"]) == ["FGSM@0.2", "PGD@0.2", "clean@0", "fixed-noise@0.2", "strongest@0.2",
                                           "transfer@0.2"]
    assert sorted(table["convnet"]) == ["FGSM@0.2", "PGD@0.2", "clean@0", "strongest@0.2"]
    assert sorted(curves["classifier"]) == ["PGD@0.2", "fixed-noise@0.2"]
    assert list(curves["convnet"]["PGD@0.2"]) == ["2"]  # the iterates' step counts: the last only, at 2 steps
    assert all(0 <= v <= 1 for kind in table for v in table[kind].values())
    for kind in models:  # the per-image worst case is at most every attack's accuracy
        assert table[kind]["strongest@0.2"] <= min(v for k, v in table[kind].items() if k.endswith("@0.2"))
    assert len(list(tmp_path.glob("toy_eps0.2_images*.json"))) == 2

    def refuse(*args):
        raise AssertionError("a cached chunk was attacked again")

    monkeypatch.setattr(eval_robustness, "attack_chunk", refuse)
    assert attack_dataset("toy", models, x, y, args, cache=tmp_path) == (table, curves)  # resumed from the cache
    with pytest.raises(AssertionError, match="attacked again"):  # nor another step size's
        attack_dataset("toy", models, x, y, Namespace(**{**vars(args), "step_size": 0.125}), cache=tmp_path)
    models["convnet"].layers[2].kernel.assign(models["convnet"].layers[2].kernel + 1.0)
    with pytest.raises(AssertionError, match="attacked again"):  # another model's chunks are not reused
        attack_dataset("toy", models, x, y, args, cache=tmp_path)


@pytest.mark.parametrize("holder_finishes", [True, False])
def test_robustness_processes_running_at_once_share_the_chunks(tmp_path, holder_finishes):
    import fcntl
    import json
    import threading
    import time

    from eval_robustness import shared_chunks

    computed = []
    jobs = [(f"chunk{i}", lambda i=i: computed.append(i) or {"chunk": i}) for i in range(3)]
    holder = open(tmp_path / ".chunk1.lock", "w")  # another process is attacking chunk 1 (flock: per open file)
    fcntl.flock(holder, fcntl.LOCK_EX)
    pieces = []
    worker = threading.Thread(target=lambda: pieces.extend(shared_chunks(tmp_path, jobs)))
    worker.start()
    deadline = time.time() + 60
    while not (tmp_path / "chunk2.json").is_file() and time.time() < deadline:
        time.sleep(0.01)
    assert computed == [0, 2] and worker.is_alive()  # chunk 1 skipped, then waited for
    if holder_finishes:
        (tmp_path / "chunk1.json").write_text(json.dumps({"chunk": 1, "by": "the other process"}))
    holder.close()  # the holder ends (its lock with it), with or without a result
    worker.join(timeout=60)
    expected = {"chunk": 1, "by": "the other process"} if holder_finishes else {"chunk": 1}
    assert pieces == [{"chunk": 0}, expected, {"chunk": 2}]
    assert computed == ([0, 2] if holder_finishes else [0, 2, 1])  # a stopped holder's chunk is done, once


def test_robustness_refuses_more_images_than_the_test_split_before_loading_a_model(monkeypatch, capsys):
    import eval_robustness

    monkeypatch.setattr(eval_robustness.data, "load", lambda *args, **kwargs: (images(5), np.zeros(5, "int32")))
    monkeypatch.setattr(eval_robustness.recipe, "load_model", pytest.fail)
    monkeypatch.setattr(sys, "argv", ["eval_robustness.py", "--dataset", "mnist", "--images", "6"])
    with pytest.raises(SystemExit):
        eval_robustness.main()
    assert "--images 6 is more than the 5 images of mnist's test split" in capsys.readouterr().err


def test_card_shows_the_unlabelled_curve_with_the_entrys_own_point():
    from classifier_recipe import _unlabelled_curve

    results = {"unlabelled_curve": {"100": {"20000": 0.79, "10000": 0.775}}, "train_split_images": 60000,
               "accuracy": {"fashion_mnist_classifier_100labels": 0.81}}
    text = _unlabelled_curve(results, "fashion_mnist_classifier")
    rows = [line for line in text.splitlines() if line[:3].strip("| ").isdigit()]
    assert rows == ["| 10000 | 9000 | 77.50 % |", "| 20000 | 19000 | 79.00 % |", "| 60000 | 59000 | 81.00 % |"]
    assert _unlabelled_curve({}, "fashion_mnist_classifier") == ""
    results["unlabelled_curve"]["100"]["60000"] = 0.8  # measured at the curve's budget: the entry trained on since
    assert "| 60000 | 59000 | 80.00 % |" in _unlabelled_curve(results, "fashion_mnist_classifier")


def test_export_keeps_a_committed_baseline_byte_for_byte(tmp_path, monkeypatch):
    import classifier_recipe

    entry = tmp_path / "zoo" / "mnist_classifier_convnet"
    shutil.copytree(classifier_recipe.ROOT / "zoo" / "mnist_classifier_convnet", entry)
    monkeypatch.setattr(classifier_recipe, "ROOT", tmp_path)
    monkeypatch.setenv("KERAS_SHORTRUN_HOME", str(tmp_path / "home"))
    run = tmp_path / "home" / "runs" / "mnist_classifier" / "convnet_1000"
    run.mkdir(parents=True)
    weights = (entry / "model.weights.h5").read_bytes()
    (run / "final.weights.h5").write_bytes(weights)
    assert classifier_recipe._is_committed_baseline("mnist_classifier", 1000)
    (run / "final.weights.h5").write_bytes(weights[:-1] + bytes([weights[-1] ^ 1]))
    assert not classifier_recipe._is_committed_baseline("mnist_classifier", 1000)  # retrained: exported anew


def test_cards_keep_only_scores_of_the_committed_weights_and_the_record_reads_back(tmp_path, monkeypatch):
    import classifier_recipe as recipe

    from keras_shortrun import zoo

    names = [recipe.entry_name("mnist_classifier", labels, kind) for labels in recipe.LABEL_BUDGETS
             for kind in ("classifier", "convnet")]
    for name in names:
        shutil.copytree(recipe.ROOT / "zoo" / name, tmp_path / "zoo" / name)
    monkeypatch.setattr(recipe, "ROOT", tmp_path)
    monkeypatch.setenv("KERAS_SHORTRUN_HOME", str(tmp_path / "home"))  # no run folder: a new machine
    weights = {n: (tmp_path / "zoo" / n / "model.weights.h5").read_bytes() for n in names}
    digests = {n: recipe.weights_digest(zoo.load(tmp_path / "zoo" / n)) for n in names}
    main, baseline, stale = names[0], names[1], names[3]
    committed_accuracy = zoo.info(tmp_path / "zoo" / stale)["metrics"]["accuracy_test"]
    results = {
        "accuracy": {n: 0.5 + i / 10 for i, n in enumerate(names)}, "accuracy_chains": 8,
        "accuracy_weights": dict(digests, **{stale: "0" * 16}),  # measured on other weights than the committed
        "robustness": {main: {"clean@0": 0.9, "PGD@0.3": 0.6}, baseline: {"clean@0": 0.95, "PGD@0.3": 0.1}},
        "pgd_curves": {main: {"PGD@0.3": {"10": 0.7, "20": 0.6}}, baseline: {"PGD@0.3": {"10": 0.2, "20": 0.1}}},
        "robustness_weights": {main: digests[main], baseline: digests[baseline]},
        "robustness_images": 10, "pgd_steps": 20, "pgd_restarts": 1, "eot_chains": 8,
        "unlabelled_curve": {"100": {"2000": 0.7}}, "train_split_images": 60000,
        "convergence": {"robustness": {main: {"PGD@0.3": 0.55}}, "pgd_curves": {main: {"PGD@0.3": {"100": 0.55}}},
                        "robustness_weights": {main: digests[main]}, "robustness_images": 5, "pgd_steps": 100,
                        "pgd_restarts": 2, "pgd_step_size": 0.125, "eot_chains": 8},  # a fixed step
    }
    recipe.refresh_cards("mnist_classifier", results)
    for name in names:
        assert (tmp_path / "zoo" / name / "model.weights.h5").read_bytes() == weights[name]
        zoo.load(tmp_path / "zoo" / name)  # the rewritten metadata still verifies
    card = (tmp_path / "zoo" / main / "README.md").read_text()
    assert "| 1000 | 50.00 % | 60.00 % | -10.00 |" in card
    assert f"| 100 | 70.00 % | {100 * committed_accuracy:.2f} % |" in card  # the stale score: the committed one
    assert "| `mnist_classifier` | PGD | 0.3 | 70.0 % | 60.0 % |\n" in card  # PGD's iterates after 10 and 20 steps
    assert "## Does the attack converge? (5 first test images, 100 PGD steps)" in card
    assert "--pgd-steps 100 --restarts 2 --step-size 0.125 --eot-chains 8 --epsilons 0.3 --convergence" in card
    assert "PGD with 100 steps (step 0.125 eps)" in card and "PGD with 20 steps (step 2.5 eps / steps)" in card
    assert zoo.info(tmp_path / "zoo" / stale)["metrics"]["accuracy_test"] == committed_accuracy
    record = recipe.read_results("mnist_classifier")  # no results.json: the committed record
    assert record["accuracy"] == dict(results["accuracy"], **{stale: committed_accuracy})
    for key in ("robustness", "pgd_curves", "robustness_images", "pgd_steps", "pgd_restarts", "eot_chains",
                "unlabelled_curve", "train_split_images", "accuracy_chains"):
        assert record[key] == results[key], key
    for key in ("robustness", "pgd_curves"):  # the baseline's committed convergence record, if any, stays too
        assert record["convergence"][key][main] == results["convergence"][key][main], key
    assert record["convergence"]["pgd_step_size"] == 0.125 and "pgd_step_size" not in record
    assert recipe.current_results(record, digests)["robustness"] == results["robustness"]
    assert recipe.current_results(record, dict(digests, **{main: "0" * 16}))["robustness"] == {
        baseline: results["robustness"][baseline]}


def test_evaluations_of_one_entry_writing_at_once_lose_no_score(tmp_path, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    import classifier_recipe as recipe

    monkeypatch.setenv("KERAS_SHORTRUN_HOME", str(tmp_path))
    monkeypatch.setattr(recipe, "committed_results", lambda entry: {})

    def evaluation(worker):  # flock locks belong to open files, so threads contend as processes do
        for i in range(25):
            recipe.update_results("toy", {"accuracy": {f"{worker}_{i}": i}})

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(evaluation, range(4)))
    assert recipe.read_results("toy")["accuracy"] == {f"{w}_{i}": i for w in range(4) for i in range(25)}


def test_export_never_replaces_an_entry_with_a_worse_or_unmeasured_run(tmp_path, monkeypatch):
    import classifier_recipe as recipe

    from keras_shortrun import zoo

    shutil.copytree(recipe.ROOT / "zoo" / "mnist_classifier", tmp_path / "zoo" / "mnist_classifier")
    monkeypatch.setattr(recipe, "ROOT", tmp_path)
    monkeypatch.setattr(recipe, "weights_digest", lambda model: "run weights")
    before = zoo.info(tmp_path / "zoo" / "mnist_classifier")["metrics"]["accuracy_test"]
    run = object()  # the run's model: only its digest matters here
    with pytest.raises(ValueError, match="no accuracy measured on its weights"):
        recipe._keeps_committed("mnist_classifier", 1000, "classifier", run, {"accuracy_weights": {}})
    measured = {"accuracy_weights": {"mnist_classifier": "run weights"}}
    worse, better = ({**measured, "accuracy": {"mnist_classifier": before + delta}} for delta in (-0.001, 0.001))
    assert recipe._keeps_committed("mnist_classifier", 1000, "classifier", run, worse)
    assert not recipe._keeps_committed("mnist_classifier", 1000, "classifier", run, better)
    assert recipe._keeps_committed("mnist_classifier", 1000, "classifier", None, {})  # no run: the entry stays
    with pytest.raises(FileNotFoundError, match="train it first"):
        recipe._keeps_committed("mnist_classifier", 100, "classifier", None, {})
