"""The model zoo: ``load(name_or_dir)``, ``list()``, ``info(name)``.

Entries are registered per family (the presets dicts beside each family, ``keras_shortrun/models/*_presets.py``) and
stored as folders (top-level ``zoo/`` in a checkout, ``keras_shortrun/_zoo``
in a wheel); ``load`` checks every file's sha256 before use, against the
entry's metadata and, for registered entries, against hashes pinned in code.
"""

import keras_shortrun.models  # noqa: F401  (registers the presets)
from keras_shortrun.zoo.registry import PRESETS
from keras_shortrun.zoo.registry import ZooIntegrityError
from keras_shortrun.zoo.registry import list_entries as list  # noqa: A001
from keras_shortrun.zoo.registry import load
from keras_shortrun.zoo.registry import read_metadata as info
from keras_shortrun.zoo.registry import register_presets
from keras_shortrun.zoo.registry import resolve
from keras_shortrun.zoo.registry import save_entry

__all__ = ["PRESETS", "ZooIntegrityError", "info", "list", "load", "register_presets", "resolve", "save_entry"]
