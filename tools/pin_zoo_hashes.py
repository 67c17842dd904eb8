"""Pins the sha256 of freshly exported zoo entries in their family's ``keras_shortrun/models/*_presets.py``.

    python tools/pin_zoo_hashes.py mnist_lvm mnist_lvm_vae

Reads each ``zoo/<entry>/metadata.json`` (written by ``tools/train_<entry>.py export``) and rewrites that
entry's ``"sha256"`` block in the presets file that registers it; the entry must already be registered.
"""

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ROOT / "keras_shortrun" / "models"  # its *_presets.py files


def pin(text, entry):
    files = json.loads((ROOT / "zoo" / entry / "metadata.json").read_text())["files"]
    start = text.index(f'    "{entry}": {{')
    end = text.index("\n    },\n", start)
    block = text[start:end]
    for name, spec in files.items():
        block = re.sub(rf'("{re.escape(name)}": )"[^"]*"', rf'\g<1>"{spec["sha256"]}"', block)
    return text[:start] + block + text[end:]


def presets_file(entry):
    """The presets file that registers ``entry``."""
    for path in sorted(PRESETS.glob("*_presets.py")):
        if f'    "{entry}": {{' in path.read_text():
            return path
    raise SystemExit(f"{entry!r} is registered in no {PRESETS.relative_to(ROOT)}/*_presets.py: register it first.")


if __name__ == "__main__":
    for entry in sys.argv[1:]:
        path = presets_file(entry)
        path.write_text(pin(path.read_text(), entry))
        print(f"pinned {entry} in {path.relative_to(ROOT)}")
