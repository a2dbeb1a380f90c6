"""Record the digests of the shipped bundles (models/*) in RadFusionScreenLib/keys/shipped_bundles.json.

Run after re-exporting a shipped bundle (scripts/train_busi_model.sh does), then sign it:
    .venv/bin/python scripts/pin_shipped_bundles.py
    .venv/bin/radfusion bundle sign models/NAME --key PROJECT_KEY.pem --signer radfusionscreen-project
Only bundles whose manifest matches the lock the engine wrote are pinned (a hand-edited one is refused).
"""

from __future__ import annotations

import json
from pathlib import Path

from RadFusionScreenLib.model.bundle.trust import SHIPPED_PINS, check_lock

MODELS = Path(__file__).resolve().parents[1] / "models"


def main() -> int:
    pins = {}
    for folder in sorted(p for p in MODELS.iterdir() if (p / "manifest.json").is_file()):
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        pins[folder.name] = {"digest": check_lock(folder, manifest)}
        print(f"{folder.name}: {pins[folder.name]['digest']}")
    SHIPPED_PINS.write_text(json.dumps(pins, indent=1, sort_keys=True) + "\n")
    print(f"written: {SHIPPED_PINS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
