"""Zoo entries on disk: a folder with ``config.json``, ``model.weights.h5``, ``metadata.json``.

``metadata.json`` records the sha256 of every file the model is built from;
``load`` refuses a folder whose files do not match it.
"""

import difflib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import keras

ZOO_ENV = "KERAS_SHORTRUN_ZOO"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.weights.h5"
METADATA_FILE = "metadata.json"
VERIFIED_FILES = (CONFIG_FILE, WEIGHTS_FILE)

# family name -> {entry name: {"description": ...}}; filled by register_presets.
PRESETS = {}


class ZooIntegrityError(ValueError):
    """A zoo entry's files do not match the sha256 recorded in its metadata."""


def register_presets(family, presets):
    """Registers a family's presets dict (keras-hub style): ``{name: {"description": ...}}``."""
    PRESETS.setdefault(family, {}).update(presets)


def _all_presets():
    return {name: dict(spec, family=family) for family, p in PRESETS.items() for name, spec in p.items()}


def zoo_dirs():
    """Folders searched for entries: ``$KERAS_SHORTRUN_ZOO``, the wheel's copy, the checkout's ``zoo/``."""
    here = Path(__file__).resolve()
    dirs = [Path(os.environ[ZOO_ENV])] if os.environ.get(ZOO_ENV) else []
    return dirs + [here.parents[1] / "_zoo", here.parents[2] / "zoo"]


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve(name_or_dir):
    """Folder of a registered entry name, or ``name_or_dir`` itself if it is an entry folder."""
    path = Path(name_or_dir)
    if (path / METADATA_FILE).is_file():
        return path
    presets = _all_presets()
    if str(name_or_dir) in presets:
        for base in zoo_dirs():
            if (base / str(name_or_dir) / METADATA_FILE).is_file():
                return base / str(name_or_dir)
        raise FileNotFoundError(
            f"Zoo entry {name_or_dir!r} is registered but its files were not found in "
            f"{[str(d) for d in zoo_dirs()]}; reinstall keras_shortrun or set {ZOO_ENV}."
        )
    close = difflib.get_close_matches(str(name_or_dir), list(presets), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    raise ValueError(
        f"Unknown zoo entry {str(name_or_dir)!r} (and no entry folder at that path).{hint} "
        f"Available: {', '.join(sorted(presets)) or 'none'}."
    )


def read_metadata(name_or_dir):
    with open(resolve(name_or_dir) / METADATA_FILE) as f:
        return json.load(f)


def verify(directory, metadata):
    """Checks every verified file against the sha256 in ``metadata``; raises ``ZooIntegrityError``."""
    recorded = metadata.get("files", {})
    for filename in VERIFIED_FILES:
        path = Path(directory) / filename
        if filename not in recorded:
            raise ZooIntegrityError(f"{directory}/{METADATA_FILE} records no sha256 for {filename}.")
        if not path.is_file():
            raise ZooIntegrityError(f"Zoo entry {directory} is missing {filename}.")
        actual = sha256_file(path)
        if actual != recorded[filename]["sha256"]:
            raise ZooIntegrityError(
                f"{path} has sha256 {actual}, but the entry's metadata records "
                f"{recorded[filename]['sha256']}: the file was modified or corrupted. "
                f"Refusing to load it."
            )


def load(name_or_dir, verify_files=True):
    """Builds the model of a zoo entry (registered name or folder) with its pretrained weights."""
    directory = resolve(name_or_dir)
    metadata = read_metadata(directory)
    if verify_files:
        verify(directory, metadata)
    with open(directory / CONFIG_FILE) as f:
        model = keras.saving.deserialize_keras_object(json.load(f))
    model.load_weights(directory / WEIGHTS_FILE)
    return model


def save_entry(model, directory, metadata, extra_files=()):
    """Writes a complete entry folder atomically (a temporary folder renamed into place).

    ``metadata`` gets ``family``, ``params`` and the files' sha256 added;
    ``extra_files`` are paths copied in (sample grids, the card). Only the
    model's weights are stored (no optimizer state), from a copy rebuilt from
    the written config, so the entry is known to load.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        config = keras.saving.serialize_keras_object(model)
        config.pop("compile_config", None)  # an entry is a model, not a training state
        with open(staging / CONFIG_FILE, "w") as f:
            json.dump(config, f, indent=1, sort_keys=True)
        rebuilt = keras.saving.deserialize_keras_object(config)
        rebuilt.set_weights(model.get_weights())
        rebuilt.save_weights(staging / WEIGHTS_FILE)
        for extra in extra_files:
            shutil.copy(extra, staging / Path(extra).name)
        metadata = dict(metadata)
        metadata.setdefault("family", type(model).__name__)
        metadata["params"] = int(model.count_params())
        metadata["files"] = {
            name: {"sha256": sha256_file(staging / name), "bytes": (staging / name).stat().st_size}
            for name in VERIFIED_FILES
        }
        with open(staging / METADATA_FILE, "w") as f:
            json.dump(metadata, f, indent=1, sort_keys=True)
        if directory.exists():
            backup = directory.with_name(directory.name + ".old")
            shutil.rmtree(backup, ignore_errors=True)
            directory.rename(backup)
            staging.rename(directory)
            shutil.rmtree(backup)
        else:
            staging.rename(directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def list_entries(filter=None):
    """Rows (dicts) describing every registered entry whose name, family or dataset contains ``filter``."""
    rows = []
    for name, spec in sorted(_all_presets().items()):
        try:
            meta = read_metadata(name)
        except FileNotFoundError:
            meta = {}
        row = {
            "name": name,
            "family": spec["family"],
            "description": spec.get("description", ""),
            "dataset": meta.get("dataset", {}).get("name", ""),
            "resolution": meta.get("resolution", ""),
            "params": meta.get("params", ""),
            "steps": meta.get("chain", {}).get("steps", ""),
            "metrics": meta.get("metrics", {}),
            "hardware": meta.get("training", {}).get("hardware", ""),
            "available": bool(meta),
        }
        text = " ".join(str(row[k]) for k in ("name", "family", "dataset")).lower()
        if filter is None or str(filter).lower() in text:
            rows.append(row)
    return rows
