"""Where the engine's folders are, resolved when asked (so a later ``RADFUSION_MODELS`` counts)."""

from __future__ import annotations

import os
from pathlib import Path

from RadFusionScreenLib.core.errors import InputError

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # RadFusionScreenLib: params/, keys/
MODULE_DIR = PACKAGE_DIR.parent  # the scripted module's folder (RadFusionScreen.py, Resources/)
DEFAULT_MODEL = "busi-ultrasound"


def models_directory() -> Path:
    """Where bundles are looked up by name: $RADFUSION_MODELS when set, else the installed
    extension's Resources/models, else the source tree's models/ folder."""
    if os.environ.get("RADFUSION_MODELS"):
        return Path(os.environ["RADFUSION_MODELS"])
    installed = MODULE_DIR / "Resources" / "models"
    return installed if installed.is_dir() else MODULE_DIR.parent / "models"


def available_models() -> list[Path]:
    """The bundle folders (those holding a manifest.json) in :func:`models_directory`, by name."""
    folder = models_directory()
    if not folder.is_dir():
        return []
    return sorted(p.resolve() for p in folder.iterdir() if (p / "manifest.json").is_file())


def resolve_model_path(model: str | os.PathLike | None) -> Path:
    """A bundle folder: a path, or the name of a bundle in :func:`models_directory` (None or "":
    the default one)."""
    if not model:
        model = DEFAULT_MODEL
    folder = models_directory()
    path = Path(model)
    if not path.exists() and (folder / str(model)).exists():
        path = folder / str(model)
    if not path.is_dir():
        known = [p.name for p in available_models()]
        raise InputError(f"model bundle {model!s} not found (bundles in {folder}: {', '.join(known) or 'none'})")
    return path


def shared_data_directory() -> Path:
    """The public datasets (``../shared/data`` beside the repository, or $RADFUSION_SHARED_DATA)."""
    return Path(os.environ.get("RADFUSION_SHARED_DATA", MODULE_DIR.parents[1] / "shared" / "data"))
