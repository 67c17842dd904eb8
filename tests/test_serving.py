"""keras_shortrun.serving: metadata checks, providers, batched seeded draws, memory and argument checks."""

import json
import re
import tracemalloc
from pathlib import Path

import numpy as np
import onnx
import pytest

from keras_shortrun import serving

ROOT = Path(__file__).resolve().parents[1]
SAMPLER = ROOT / "export" / "mnist_ebm" / "sampler.onnx"  # 28x28x1, inputs z0 (uniform) then noise (normal)


@pytest.fixture(scope="module")
def sampler():
    return serving.OnnxSampler(SAMPLER)


@pytest.fixture(scope="module")
def metadata():
    return json.loads({p.key: p.value for p in onnx.load(SAMPLER).metadata_props}[serving.METADATA_KEY])


class FakeSession:
    """Stands in for the onnxruntime session: the output is a fixed function of the inputs; calls are recorded."""

    def __init__(self):
        self.batches = []

    def run(self, names, feeds):
        self.batches.append(len(feeds["z0"]))
        return [feeds["z0"] + feeds["noise"].mean(1)]


def fake_output(inputs):
    return inputs["z0"] + inputs["noise"].mean(1)


# Metadata ---------------------------------------------------------------------------------------------------------
def with_metadata(tmp_path, text):
    """The committed sampler with its keras_shortrun metadata replaced by ``text``, saved under ``tmp_path``."""
    model = onnx.load(SAMPLER)
    onnx.helper.set_model_props(model, {serving.METADATA_KEY: text})
    path = tmp_path / "edited.onnx"
    onnx.save(model, path)
    return path


def edited(change):
    """A function of the metadata dict that returns it (a copy) changed by ``change(copy)``, as JSON."""
    def make(metadata):
        copy = json.loads(json.dumps(metadata))
        change(copy)
        return json.dumps(copy)
    return make


BAD_METADATA = [
    ("invalid JSON", lambda m: "{not json", "is not valid JSON"),
    ("a JSON list", lambda m: "[1, 2]", "is a JSON list, not an object"),
    *[(f"no {key}", edited(lambda m, key=key: m.pop(key)), f"has no '{key}'")
      for key in ("family", "graph", "noise", "inputs", "outputs")],
    ("family not a string", edited(lambda m: m.update(family=3)), "'family' must be a string, got 3"),
    ("unknown noise mode", edited(lambda m: m.update(noise="sometimes")), "'noise' must be one of"),
    ("inputs an object", edited(lambda m: m.update(inputs={"z0": 1})), "'inputs' must be a non-empty list"),
    ("inputs empty", edited(lambda m: m.update(inputs=[])), "'inputs' must be a non-empty list"),
    ("input not an object", edited(lambda m: m["inputs"].__setitem__(0, "z0")), r"inputs\[0\] must be an object"),
    ("input without a shape", edited(lambda m: m["inputs"][0].pop("shape")), r"inputs\[0\] has no 'shape'"),
    ("input without a distribution", edited(lambda m: m["inputs"][1].pop("distribution")),
     r"inputs\[1\] has no 'distribution'"),
    ("input name not a string", edited(lambda m: m["inputs"][0].update(name=None)),
     r"inputs\[0\] 'name' must be a string"),
    ("shape with a string size", edited(lambda m: m["inputs"][0].update(shape=[None, "28", 28, 1])),
     r"inputs\[0\] 'shape' must be"),
    ("shape without the batch axis", edited(lambda m: m["inputs"][0].update(shape=[28, 28, 1])),
     r"inputs\[0\] 'shape' must be"),
    ("unknown distribution", edited(lambda m: m["inputs"][1].update(distribution="laplace(0,1)")),
     r"inputs\[1\] 'distribution' must be one of"),
    ("output with a zero size", edited(lambda m: m["outputs"][0].update(shape=[None, 0, 28, 1])),
     r"outputs\[0\] 'shape' must be"),
    ("output with a bool size", edited(lambda m: m["outputs"][0].update(shape=[None, True, 28, 1])),
     r"outputs\[0\] 'shape' must be"),
]


@pytest.mark.parametrize("make, problem", [c[1:] for c in BAD_METADATA], ids=[c[0] for c in BAD_METADATA])
def test_malformed_metadata_gets_one_clear_error(tmp_path, metadata, make, problem):
    path = with_metadata(tmp_path, make(metadata))
    with pytest.raises(ValueError) as error:
        serving.OnnxSampler(path)
    message = str(error.value)
    assert message.startswith(f"{path} has malformed 'keras_shortrun' metadata: ")
    assert re.search(problem, message), message


def test_intact_metadata_round_trips(tmp_path, metadata):
    assert serving.OnnxSampler(with_metadata(tmp_path, json.dumps(metadata))).metadata == metadata


# Providers --------------------------------------------------------------------------------------------------------
def test_providers_as_one_name_or_a_list():
    assert serving.select_providers("CPUExecutionProvider") == ["CPUExecutionProvider"]
    assert serving.select_providers(("CPUExecutionProvider",)) == ["CPUExecutionProvider"]
    assert serving.OnnxSampler(SAMPLER, providers="CPUExecutionProvider").provider == "CPUExecutionProvider"
    for bad in ([], 5, ["CPUExecutionProvider", 3], {"CPUExecutionProvider"}):
        with pytest.raises(ValueError, match="providers must be a provider name or a non-empty list"):
            serving.select_providers(bad)
    with pytest.raises(ValueError, match=r"\['NoSuchExecutionProvider'\] are not available"):
        serving.select_providers("NoSuchExecutionProvider")


# Batched, seeded draws --------------------------------------------------------------------------------------------
SPECS = [  # a normal input before a uniform one: its draws take a varying number of random bits
    {"name": "a", "shape": [None, 3], "distribution": serving.NORMAL},
    {"name": "b", "shape": [None, 2, 2], "distribution": serving.UNIFORM},
    {"name": "c", "shape": [None, 5], "distribution": serving.NORMAL},
]


@pytest.mark.parametrize("specs", [SPECS, SPECS[::-1], SPECS[1:2]], ids=["normal-first", "uniform-middle", "one"])
@pytest.mark.parametrize("batch_size", [1, 3, 7, 10, 64])
def test_batches_are_the_draws_of_draw_inputs_whatever_the_batch_size(specs, batch_size):
    whole = serving.draw_inputs(specs, 10, np.random.default_rng(5))
    batches = list(serving.draw_input_batches(specs, 10, batch_size, seed=5))
    sizes = [min(batch_size, 10 - start) for start in range(0, 10, batch_size)]
    assert [len(next(iter(b.values()))) for b in batches] == sizes
    for spec in specs:
        name = spec["name"]
        np.testing.assert_array_equal(np.concatenate([b[name] for b in batches]), whole[name])
        assert whole[name].dtype == np.float32


def test_sample_is_the_same_whatever_the_batch_size(sampler):
    images = sampler.sample(10, seed=0, batch_size=10)
    np.testing.assert_array_equal(sampler.sample(10, seed=0, batch_size=3), images)
    inputs = serving.draw_inputs(sampler.metadata["inputs"], 10, np.random.default_rng(0))
    np.testing.assert_array_equal(sampler.session.run(["x"], inputs)[0], images)  # what sample always drew


def test_sample_holds_one_batch_of_inputs_at_a_time(sampler, monkeypatch):
    fake = FakeSession()
    monkeypatch.setattr(sampler, "session", fake)
    n, batch = 400, 8  # all of the noise at once: 400 * 50 * 784 float32 = 63 MB; one batch: 1.3 MB
    tracemalloc.start()
    try:
        images = sampler.sample(n, seed=1, batch_size=batch)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert fake.batches == [batch] * (n // batch)
    assert peak < 8 * 2**20, f"peak {peak / 2**20:.1f} MB"
    np.testing.assert_array_equal(images, fake_output(serving.draw_inputs(sampler.metadata["inputs"], n,
                                                                         np.random.default_rng(1))))


# Memory -----------------------------------------------------------------------------------------------------------
def test_a_request_too_large_for_memory_is_refused_before_any_work(sampler, monkeypatch, tmp_path):
    fake = FakeSession()
    monkeypatch.setattr(sampler, "session", fake)
    with pytest.raises(MemoryError, match=r"sample\(n=1000000000\) needs about 29\d\d\.\d+ GiB .*MemAvailable"):
        sampler.sample(10**9)
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16000000 kB\nMemAvailable:       1000 kB\n")
    monkeypatch.setattr(serving, "MEMINFO", str(meminfo))
    assert serving.available_memory() == (1000 * 1024, f"MemAvailable in {meminfo}")
    with pytest.raises(MemoryError, match=r"more than the 0\.001 GiB available \(MemAvailable in .*meminfo\)"):
        sampler.sample(1000)  # 3.1 MB of results
    monkeypatch.setattr(serving, "MEMINFO", str(tmp_path / "absent"))
    monkeypatch.setattr(serving, "MEMORY_CAP", 2**20)
    assert serving.available_memory() == (2**20, "serving.MEMORY_CAP, as there is no /proc/meminfo")
    with pytest.raises(MemoryError, match=r"serving\.MEMORY_CAP"):
        sampler.sample(1000)
    assert fake.batches == []  # refused before drawing or running anything
    monkeypatch.setattr(serving, "MEMORY_CAP", 2**27)
    assert sampler.sample(100).shape == (100, 28, 28, 1)  # 0.3 MB of results, 30 MB a batch of 64: fits


# Arguments --------------------------------------------------------------------------------------------------------
BAD_ARGUMENTS = [
    *[({"n": n}, "n must be a positive integer") for n in (0, -1, True, 2.0, float("nan"), float("inf"), None, "5")],
    *[({"batch_size": b}, "batch_size must be a positive integer") for b in (0, False, 2.5, float("nan"), None, "2")],
    *[({"seed": s}, r"seed must be None or an integer in \[0, 2\*\*32\)")
      for s in (-1, True, 1.5, float("nan"), "0", 2**32, 2**63 + 1, np.uint64(2**64 - 1))],
]


@pytest.mark.parametrize("kwargs, message", BAD_ARGUMENTS, ids=[repr(k) for k, _ in BAD_ARGUMENTS])
def test_bad_arguments_are_refused_by_name(sampler, monkeypatch, kwargs, message):
    fake = FakeSession()
    monkeypatch.setattr(sampler, "session", fake)
    with pytest.raises(ValueError, match=message):
        sampler.sample(**{"n": 2, **kwargs})
    assert fake.batches == []


def test_numpy_integers_are_accepted(sampler, monkeypatch):
    monkeypatch.setattr(sampler, "session", FakeSession())
    expected = sampler.sample(3, seed=7, batch_size=2)
    np.testing.assert_array_equal(sampler.sample(np.int64(3), seed=np.uint32(7), batch_size=np.int8(2)), expected)
    assert not np.array_equal(sampler.sample(3), sampler.sample(3))  # seed=None: fresh randomness each call
