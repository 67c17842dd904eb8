"""Zoo entries on disk: a folder with ``config.json``, ``model.weights.h5``, ``metadata.json``.

``metadata.json`` records the sha256 of every file the model is built from, and
``load`` refuses a folder whose files do not match it. For registered entries
the hashes are also pinned in code (the family's presets dict), so editing the
metadata along with a file does not get past ``load`` either.
"""

import difflib
import json
import os
import shutil
import tempfile
from pathlib import Path

import keras
import numpy as np

from keras_shortrun.hashing import sha256_file

ZOO_ENV = "KERAS_SHORTRUN_ZOO"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.weights.h5"
METADATA_FILE = "metadata.json"
VERIFIED_FILES = (CONFIG_FILE, WEIGHTS_FILE)

# family name -> {entry name: {"description": ..., "sha256": {file: digest}}}; filled by register_presets.
PRESETS = {}


class ZooIntegrityError(ValueError):
    """A zoo entry's files do not match the sha256 recorded in its metadata."""


def register_presets(family, presets):
    """Registers a family's presets dict (keras-hub style): ``{name: {"description", "sha256"}}``."""
    PRESETS.setdefault(family, {}).update(presets)


def _all_presets():
    return {name: dict(spec, family=family) for family, p in PRESETS.items() for name, spec in p.items()}


def zoo_dirs():
    """Folders searched for entries: ``$KERAS_SHORTRUN_ZOO``, then the wheel's copy or else the checkout's ``zoo/``."""
    here = Path(__file__).resolve()
    dirs = [Path(os.environ[ZOO_ENV])] if os.environ.get(ZOO_ENV) else []
    packaged = here.parents[1] / "_zoo"
    return dirs + [packaged if packaged.is_dir() else here.parents[2] / "zoo"]


def resolve(name_or_dir):
    """Folder of a registered entry name (looked up first), or ``name_or_dir`` if it is an entry folder."""
    presets = _all_presets()
    if str(name_or_dir) in presets:
        for base in zoo_dirs():
            if (base / str(name_or_dir) / METADATA_FILE).is_file():
                return base / str(name_or_dir)
        raise FileNotFoundError(
            f"Zoo entry {name_or_dir!r} is registered but its files were not found in "
            f"{[str(d) for d in zoo_dirs()]}; reinstall keras_shortrun or set {ZOO_ENV}."
        )
    path = Path(name_or_dir)
    if (path / METADATA_FILE).is_file():
        return path
    close = difflib.get_close_matches(str(name_or_dir), list(presets), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    raise ValueError(
        f"Unknown zoo entry {str(name_or_dir)!r} (and no entry folder at that path).{hint} "
        f"Available: {', '.join(sorted(presets)) or 'none'}."
    )


def read_metadata(name_or_dir):
    with open(resolve(name_or_dir) / METADATA_FILE) as f:
        return json.load(f)


def verify(directory, metadata, pinned=None):
    """Checks every verified file against the sha256 in ``metadata`` (and ``pinned``, a registered
    entry's in-code hashes); raises ``ZooIntegrityError``."""
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
        if pinned is not None and actual != pinned.get(filename):
            raise ZooIntegrityError(
                f"{path} has sha256 {actual}, but keras_shortrun pins {pinned.get(filename)} for this "
                f"registered entry: the entry was modified or corrupted. Refusing to load it."
            )


def load(name_or_dir):
    """Builds the model of a zoo entry (registered name or folder) with its pretrained weights.

    Every file is checked against its sha256 first; there is no way to skip the check.
    """
    from keras_shortrun import __version__

    directory = resolve(name_or_dir)
    metadata = read_metadata(directory)
    spec = _all_presets().get(str(name_or_dir))
    verify(directory, metadata, pinned=None if spec is None else spec.get("sha256", {}))
    written_by = metadata.get("keras_shortrun_version")
    if written_by and _version_tuple(written_by) > _version_tuple(__version__):
        raise ValueError(
            f"Zoo entry {directory} was written by keras_shortrun {written_by}, newer than this "
            f"keras_shortrun {__version__}: upgrade keras_shortrun to load it."
        )
    with open(directory / CONFIG_FILE) as f:
        config = json.load(f)
    try:
        model = keras.saving.deserialize_keras_object(config)
    except (TypeError, ValueError, KeyError) as error:
        raise ValueError(
            f"{directory / CONFIG_FILE} describes a model this keras_shortrun {__version__} cannot build "
            f"({type(error).__name__}: {error}); it may come from another version of keras_shortrun."
        ) from error
    model.load_weights(directory / WEIGHTS_FILE)
    return model


def _version_tuple(version):
    """``"0.10.2"`` -> ``(0, 10, 2)``; non-numeric parts (``rc1``) count as 0."""
    return tuple(int(part) if part.isdigit() else 0 for part in str(version).split("."))


def save_entry(model, directory, metadata, extra_files=()):
    """Writes a complete entry folder atomically (a temporary folder renamed into place).

    ``metadata`` gets ``family``, ``params`` and the files' sha256 added;
    ``extra_files`` are paths copied in (sample grids, the card). Only the
    model's weights are stored (no optimizer state), from a copy rebuilt from
    the written config, so the entry is known to load.
    """
    from keras_shortrun import __version__

    directory = Path(directory)
    broken = [v.path for v in model.weights if not np.all(np.isfinite(keras.ops.convert_to_numpy(v)))]
    if broken:
        raise ValueError(f"Refusing to save a zoo entry with NaN or infinite weights: {broken[:3]}"
                         f"{' ...' if len(broken) > 3 else ''}. Roll back to a finite checkpoint first.")
    reserved = set(VERIFIED_FILES) | {METADATA_FILE}
    clashing = [str(p) for p in extra_files if Path(p).name in reserved]
    if clashing:
        raise ValueError(f"extra_files may not be named like the entry's own files {sorted(reserved)}: {clashing}")
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    os.chmod(staging, 0o755)
    backup = directory.with_name(directory.name + ".old")
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
        metadata["keras_shortrun_version"] = __version__
        metadata["params"] = int(model.count_params())
        metadata["files"] = {
            name: {"sha256": sha256_file(staging / name), "bytes": (staging / name).stat().st_size}
            for name in VERIFIED_FILES
        }
        with open(staging / METADATA_FILE, "w") as f:
            json.dump(metadata, f, indent=1, sort_keys=True)
        shutil.rmtree(backup, ignore_errors=True)
        if directory.exists():
            directory.rename(backup)
        staging.rename(directory)
        shutil.rmtree(backup, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if backup.exists() and not directory.exists():
            backup.rename(directory)  # put the previous entry back
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
