"""Loading model files safely: exactly the verified bytes, only known classes, always in Keras safe mode.

Keras's ``safe_mode=True`` gives way to a process-wide
``keras.config.enable_unsafe_deserialization()``, and a path that is hashed and
then opened again can be swapped in between. So every loader here

- reads each file once (``read_inside``: a regular file, no link out of its folder)
  and works on those bytes only;
- refuses a config that names a class or function that is neither a registered
  ``keras_shortrun`` one nor a Keras built-in without code (``check_config``), by name;
- deserialises inside a safe-mode scope that no global setting can lift;
- hands Keras the weights as a private copy of the verified bytes (``private_copy``).
"""

import contextlib
import fnmatch
import io
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import keras

PACKAGE = "keras_shortrun"
# Keras built-ins that carry or run code of the file's author: a Lambda's bytecode, a SavedModel's graph, a
# pickled torch module, wrapped JAX/Flax functions.
CODE_CARRYING = frozenset({"Lambda", "__lambda__", "TFSMLayer", "TorchModuleWrapper", "JaxLayer", "FlaxLayer"})
# Where Keras looks up built-in functions named in a config (activations and the like), and nothing else.
FUNCTION_MODULES = frozenset({"builtins", "keras.activations", "keras.initializers", "keras.losses",
                              "keras.metrics", "keras.regularizers", "keras.constraints"})
# Keras's own encodings of plain values (tensors, arrays, bytes, slices) and symbolic inputs.
VALUE_ENCODINGS = frozenset({"__keras_tensor__", "__tensor__", "__numpy__", "__bytes__", "__ellipsis__", "__slice__"})


class UnsafeModelError(ValueError):
    """A model file names a class or function that keras_shortrun does not load."""


def read_inside(directory, filename):
    """The bytes of ``directory/filename``: a regular file, reached without leaving ``directory`` through a
    link. Raises ``FileNotFoundError`` or ``UnsafeModelError`` naming the file."""
    directory = Path(directory)
    path = directory / filename
    if not path.exists() and not path.is_symlink():
        raise FileNotFoundError(f"{path} is missing.")
    resolved = path.resolve()
    if not resolved.is_relative_to(directory.resolve()):
        raise UnsafeModelError(f"{path} is a link to {resolved}, outside {directory}: refusing to read it.")
    if not resolved.is_file():
        raise UnsafeModelError(f"{path} is not a regular file.")
    return resolved.read_bytes()


def parse_json(data, source, expected=dict):
    """``data`` (bytes) parsed as JSON of type ``expected``; ``ValueError`` naming ``source`` otherwise."""
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{source} is not valid JSON ({error}).") from None
    if not isinstance(value, expected):
        raise ValueError(f"{source} must hold a JSON {expected.__name__}, found {type(value).__name__}.")
    return value


def _describe(node):
    return f"{node.get('module')}.{node.get('class_name')} (registered as {node.get('registered_name')!r})"


def check_config(config, source):
    """Walks a Keras config and raises ``UnsafeModelError`` at the first class or function that is not a
    registered keras_shortrun object or a Keras built-in without code of its own."""
    if isinstance(config, list):
        for item in config:
            check_config(item, source)
        return
    if not isinstance(config, dict):
        return
    if "class_name" in config:
        class_name, module = config["class_name"], config.get("module")
        registered = config.get("registered_name")
        if class_name in CODE_CARRYING:
            raise UnsafeModelError(f"{source} holds a {class_name} ({_describe(config)}), which carries code: "
                                   f"keras_shortrun refuses to load it.")
        ours = isinstance(registered, str) and registered.startswith(f"{PACKAGE}>") and \
            keras.saving.get_registered_object(registered) is not None
        if class_name == "function":
            builtin = module in FUNCTION_MODULES
        else:
            builtin = isinstance(module, str) and (module == "keras" or module.startswith("keras.")) and \
                registered in (None, class_name)
        if not (ours or builtin or class_name in VALUE_ENCODINGS):
            raise UnsafeModelError(f"{source} names {_describe(config)}, which is neither a registered "
                                   f"keras_shortrun class nor a Keras built-in: refusing to load it.")
    for value in config.values():
        check_config(value, source)


@contextlib.contextmanager
def forced_safe_mode():
    """Keras safe mode for the block, whatever ``keras.config.enable_unsafe_deserialization()`` set."""
    from keras.src.saving.serialization_lib import SafeModeScope

    with SafeModeScope(True):
        yield


def deserialize(config, source):
    """The Keras object of ``config`` (a dict from ``source``), after ``check_config``, in forced safe mode."""
    import keras_shortrun.layers  # noqa: F401  (registers the classes)
    import keras_shortrun.models  # noqa: F401

    check_config(config, source)
    with forced_safe_mode():
        return keras.saving.deserialize_keras_object(config, safe_mode=True)


@contextlib.contextmanager
def private_copy(data, filename):
    """A path to a copy of ``data`` (bytes) named ``filename`` in a fresh folder only this user can open;
    removed afterwards. Keras reads weights from paths only: this path holds exactly the verified bytes."""
    folder = tempfile.mkdtemp(prefix="keras_shortrun-")  # mode 0700
    try:
        path = Path(folder) / filename
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
            f.write(data)
        yield path
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def read_keras_config(path):
    """``(bytes, config)`` of the ``.keras`` file ``path``, read once; the config checked by ``check_config``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No model file at {path}.")
    data = path.read_bytes()
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            config = parse_json(archive.read("config.json"), f"{path}:config.json")
    except (zipfile.BadZipFile, KeyError) as error:
        raise ValueError(f"{path} is not a Keras model file ({error}).") from None
    check_config(config, path)
    return data, config


def load_keras_file(path):
    """A ``.keras`` model file, read once, its config checked by ``check_config``, loaded in forced safe mode
    from a private copy of the same bytes."""
    data, config = read_keras_config(path)
    import keras_shortrun.layers  # noqa: F401  (registers the classes)
    import keras_shortrun.models  # noqa: F401

    with private_copy(data, "model.keras") as copy, forced_safe_mode():
        return keras.saving.load_model(copy, safe_mode=True)


def check_replaceable(path, what, marker, recognised, allowed, overwrite=True):
    """Raises unless writing ``what`` at ``path`` deletes nothing of the user's: ``path`` is absent or an
    empty folder, or, with ``overwrite``, a folder of ours: its ``marker`` JSON file holds a dict that
    ``recognised(dict)`` accepts, and every name in it matches one of the glob patterns ``allowed`` (a
    pattern ending in ``/`` admits a folder of plain files)."""
    path = Path(path)
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise FileExistsError(f"{path} exists and is not a folder: refusing to replace it with {what}.")
    if not path.exists() or not any(path.iterdir()):
        return
    try:
        ours = recognised(parse_json(read_inside(path, marker), path / marker))
    except (OSError, ValueError):
        ours = False
    foreign = sorted(p.name for p in path.iterdir() if not _allowed(p, allowed))
    if not ours or foreign:
        why = f"holds files that are not part of {what} ({', '.join(foreign[:5])})" if ours else \
            f"is not {what} written by keras_shortrun"
        raise FileExistsError(f"{path} exists and {why}: refusing to replace it (its files would be deleted). "
                              f"Choose a new path, or remove it yourself.")
    if not overwrite:
        raise FileExistsError(f"{path} already holds {what}: pass overwrite=True (--overwrite) to replace it.")


def _allowed(path, patterns):
    """Whether ``path`` (a file or folder inside a folder of ours) matches ``patterns`` (see ``check_replaceable``)."""
    if path.is_symlink():
        return False
    if path.is_dir():
        return f"{path.name}/" in patterns and all(p.is_file() and not p.is_symlink() for p in path.iterdir())
    return path.is_file() and any(fnmatch.fnmatchcase(path.name, pattern) for pattern in patterns)
