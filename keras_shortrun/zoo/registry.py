"""Zoo entries on disk: a folder with ``config.json``, ``model.weights.h5``, ``metadata.json``.

``metadata.json`` records the sha256 of every file the model is built from, and
``load`` refuses a folder whose files do not match it. For registered entries
the hashes are also pinned in code (the family's presets dict), so editing the
metadata along with a file does not get past ``load`` either.
"""

import difflib
import glob
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import keras
import numpy as np

from keras_shortrun.hashing import sha256_file
from keras_shortrun.saving import UnsafeModelError
from keras_shortrun.saving import check_replaceable
from keras_shortrun.saving import deserialize
from keras_shortrun.saving import parse_json
from keras_shortrun.saving import private_copy
from keras_shortrun.saving import read_inside

ZOO_ENV = "KERAS_SHORTRUN_ZOO"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.weights.h5"
METADATA_FILE = "metadata.json"
VERIFIED_FILES = (CONFIG_FILE, WEIGHTS_FILE)

# family name -> {entry name: {"description": ..., "sha256": {file: digest}}}; filled by register_presets.
PRESETS = {}
# family name -> the class its entries build; filled by register_presets.
FAMILIES = {}


class ZooIntegrityError(ValueError):
    """A zoo entry's files do not match the sha256 recorded in its metadata."""


def register_presets(family, presets, model_class):
    """Registers a family's presets dict (keras-hub style): ``{name: {"description", "sha256"}}``;
    ``model_class``: the class every entry of the family builds (``zoo.load`` refuses any other)."""
    FAMILIES[family] = model_class
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
    if (path / METADATA_FILE).is_file() or (path / METADATA_FILE).is_symlink():
        return path
    if path.is_dir():
        raise ValueError(f"{path} is a folder but not a zoo entry: its {METADATA_FILE} is missing.")
    close = difflib.get_close_matches(str(name_or_dir), list(presets), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    raise ValueError(
        f"Unknown zoo entry {str(name_or_dir)!r} (and no entry folder at that path).{hint} "
        f"Available: {', '.join(sorted(presets)) or 'none'}."
    )


def read_metadata(name_or_dir):
    """The entry's ``metadata.json`` as a dict; ``ValueError`` naming the file when it is not a JSON object."""
    directory = resolve(name_or_dir)
    return parse_json(read_inside(directory, METADATA_FILE), directory / METADATA_FILE)


def _recorded_digest(metadata, directory, filename):
    """The sha256 that ``metadata`` records for ``filename``, checked for type; raises ``ZooIntegrityError``."""
    source = f"{directory}/{METADATA_FILE}"
    files = metadata.get("files")
    if not isinstance(files, dict) or filename not in files:
        raise ZooIntegrityError(f"{source} records no sha256 for {filename}.")
    digest = files[filename].get("sha256") if isinstance(files[filename], dict) else None
    if not isinstance(digest, str):
        raise ZooIntegrityError(f"{source}: files.{filename}.sha256 must be a string, found {digest!r}.")
    return digest


def read_verified(directory, metadata, pinned=None):
    """The bytes of every verified file, each read once and checked against the sha256 in ``metadata`` (and
    ``pinned``, a registered entry's in-code hashes): ``{filename: bytes}``. Only these bytes are used
    afterwards, so a file swapped after the check is never loaded. Raises ``ZooIntegrityError``."""
    verified = {}
    for filename in VERIFIED_FILES:
        recorded = _recorded_digest(metadata, directory, filename)
        try:
            data = read_inside(directory, filename)
        except FileNotFoundError:
            raise ZooIntegrityError(f"Zoo entry {directory} is missing {filename}.") from None
        except UnsafeModelError as error:
            raise ZooIntegrityError(str(error)) from None
        actual = hashlib.sha256(data).hexdigest()
        path = Path(directory) / filename
        if actual != recorded:
            raise ZooIntegrityError(
                f"{path} has sha256 {actual}, but the entry's metadata records {recorded}: the file was "
                f"modified or corrupted. Refusing to load it."
            )
        if pinned is not None and actual != pinned.get(filename):
            raise ZooIntegrityError(
                f"{path} has sha256 {actual}, but keras_shortrun pins {pinned.get(filename)} for this "
                f"registered entry: the entry was modified or corrupted. Refusing to load it."
            )
        verified[filename] = data
    return verified


def load(name_or_dir):
    """Builds the model of a zoo entry (registered name or folder) with its pretrained weights.

    Every file is read once and checked against its sha256; there is no way to skip the check, and only the
    checked bytes are loaded. The config may name registered keras_shortrun classes and Keras built-ins
    only, and is always deserialised in Keras safe mode; the model must be of the family its metadata names.
    """
    from keras_shortrun import __version__

    directory = resolve(name_or_dir)
    metadata = read_metadata(directory)
    spec = _all_presets().get(str(name_or_dir))
    verified = read_verified(directory, metadata, pinned=None if spec is None else spec.get("sha256", {}))
    written_by = metadata.get("keras_shortrun_version")
    if written_by is not None and not isinstance(written_by, str):
        raise ValueError(f"{directory / METADATA_FILE}: keras_shortrun_version must be a string, "
                         f"found {written_by!r}.")
    if written_by and _version_tuple(written_by) > _version_tuple(__version__):
        raise ValueError(
            f"Zoo entry {directory} was written by keras_shortrun {written_by}, newer than this "
            f"keras_shortrun {__version__}: upgrade keras_shortrun to load it."
        )
    family = metadata.get("family")
    if family not in FAMILIES:
        raise ValueError(f"{directory / METADATA_FILE} names the family {family!r}, which is not a keras_shortrun "
                         f"family ({', '.join(sorted(FAMILIES))}): refusing to load it.")
    config = parse_json(verified[CONFIG_FILE], directory / CONFIG_FILE)
    try:
        model = deserialize(config, directory / CONFIG_FILE)
    except UnsafeModelError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError) as error:
        raise ValueError(
            f"{directory / CONFIG_FILE} describes a model this keras_shortrun {__version__} cannot build "
            f"({type(error).__name__}: {error}); it may come from another version of keras_shortrun."
        ) from error
    if not isinstance(model, FAMILIES[family]):
        raise ValueError(f"{directory / CONFIG_FILE} builds a {type(model).__name__}, not the {family} that "
                         f"{METADATA_FILE} names: refusing to load it.")
    with private_copy(verified[WEIGHTS_FILE], WEIGHTS_FILE) as weights:
        try:
            model.load_weights(weights)
        except (ValueError, KeyError, OSError) as error:
            raise ValueError(f"{directory / WEIGHTS_FILE} does not fit the model of {CONFIG_FILE} "
                             f"({type(error).__name__}: {error}); the weights belong to another architecture.") \
                from None
    return model


def _version_tuple(version):
    """``"0.10.2"`` -> ``(0, 10, 2)``; non-numeric parts (``rc1``) count as 0."""
    return tuple(int(part) if part.isdigit() else 0 for part in str(version).split("."))


LEGACY_ENTRY_FILES = ("*.md", "*.png", "*.gif")  # the extra files of entries that predate metadata["extra_files"]


def _is_entry_metadata(metadata):
    return isinstance(metadata.get("files"), dict) and "keras_shortrun_version" in metadata


def _replaceable_names(directory):
    """Glob patterns of the files that re-saving the entry in ``directory`` may delete: its own files and the
    extra files it recorded writing (entries older than that record: cards, figures and animations)."""
    try:
        recorded = read_metadata(directory).get("extra_files")
    except (OSError, ValueError):
        recorded = None
    names = [glob.escape(n) for n in recorded if isinstance(n, str)] if isinstance(recorded, list) else None
    return (*VERIFIED_FILES, METADATA_FILE, *(LEGACY_ENTRY_FILES if names is None else names))


def _family_of(model):
    """The registered family whose class is the model's own class, else ``None``."""
    return next((family for family, cls in FAMILIES.items() if type(model) is cls), None)


def check_entry_folder(directory):
    """Raises ``FileExistsError`` unless ``save_entry`` may write at ``directory``: absent, empty, or a zoo entry
    holding nothing but its own files and the extra files it recorded."""
    check_replaceable(directory, "a zoo entry", METADATA_FILE, _is_entry_metadata, _replaceable_names(directory))


def save_entry(model, directory, metadata, extra_files=()):
    """Writes a complete entry folder atomically (a temporary folder renamed into place).

    ``metadata`` gets ``family`` (when absent: the registered family of the model's class), ``params`` and
    the files' sha256 added; ``extra_files`` are paths copied in (sample grids, the card). Only the model's
    weights are stored (no optimizer state), from a copy rebuilt from the written config, so the entry is
    known to load. An existing folder is replaced only when it is a zoo entry holding nothing but what
    entries write (its metadata records its extra files); anything else is refused with ``FileExistsError``
    before any work, so a file a user put there is never deleted.
    """
    from keras_shortrun import __version__

    directory = Path(directory)
    extra_files = [Path(p) for p in extra_files]
    check_entry_folder(directory)
    family = metadata.get("family") or _family_of(model)
    if family not in FAMILIES or not isinstance(model, FAMILIES[family]):
        raise ValueError(f"family {family!r} is not a keras_shortrun family of a {type(model).__name__} "
                         f"(families: {', '.join(sorted(FAMILIES))}).")
    broken = [v.path for v in model.weights if not np.all(np.isfinite(keras.ops.convert_to_numpy(v)))]
    if broken:
        raise ValueError(f"Refusing to save a zoo entry with NaN or infinite weights: {broken[:3]}"
                         f"{' ...' if len(broken) > 3 else ''}. Roll back to a finite checkpoint first.")
    reserved = set(VERIFIED_FILES) | {METADATA_FILE}
    clashing = [str(p) for p in extra_files if Path(p).name in reserved]
    if clashing:
        raise ValueError(f"extra_files may not be named like the entry's own files {sorted(reserved)}: {clashing}")
    extra_names = [Path(p).name for p in extra_files]
    twice = sorted({n for n in extra_names if extra_names.count(n) > 1})
    if twice:
        raise ValueError(f"extra_files has several files named {twice}: each would overwrite the one before.")
    missing = [str(p) for p in extra_files if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"extra_files not found (or not files): {missing}")
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    os.chmod(staging, 0o755)
    backup = staging.with_name(staging.name + ".old")  # unique, like the staging folder: never a user's folder
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
        metadata["family"] = family
        metadata["keras_shortrun_version"] = __version__
        metadata["params"] = int(model.count_params())
        metadata["extra_files"] = sorted(extra_names)  # what a later save of this entry may replace
        metadata["files"] = {
            name: {"sha256": sha256_file(staging / name), "bytes": (staging / name).stat().st_size}
            for name in VERIFIED_FILES
        }
        with open(staging / METADATA_FILE, "w") as f:
            json.dump(metadata, f, indent=1, sort_keys=True)
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
