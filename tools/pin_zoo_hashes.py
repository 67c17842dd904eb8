"""Pins the sha256 of freshly exported zoo entries in ``keras_shortrun/models/presets.py``.

    python tools/pin_zoo_hashes.py mnist_lvm mnist_lvm_vae

Reads each ``zoo/<entry>/metadata.json`` (written by ``tools/train_<entry>.py export``) and rewrites that
entry's ``"sha256"`` block in the presets file; the entry must already be registered there.
"""

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ROOT / "keras_shortrun" / "models" / "presets.py"


def pin(text, entry):
    files = json.loads((ROOT / "zoo" / entry / "metadata.json").read_text())["files"]
    start = text.index(f'    "{entry}": {{')
    end = text.index("\n    },\n", start)
    block = text[start:end]
    for name, spec in files.items():
        block = re.sub(rf'("{re.escape(name)}": )"[^"]*"', rf'\g<1>"{spec["sha256"]}"', block)
    return text[:start] + block + text[end:]


if __name__ == "__main__":
    text = PRESETS.read_text()
    for entry in sys.argv[1:]:
        text = pin(text, entry)
    PRESETS.write_text(text)
    print(f"pinned {', '.join(sys.argv[1:])} in {PRESETS.relative_to(ROOT)}")
