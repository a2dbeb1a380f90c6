"""Where the engine's folders are, resolved when asked (so a later ``RADFUSION_MODELS`` counts)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from RadFusionScreenLib.core.errors import InputError

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # RadFusionScreenLib: params/, keys/
MODULE_DIR = PACKAGE_DIR.parent  # the scripted module's folder (RadFusionScreen.py, Resources/)
#: The shipped bundle of each modality: what a case gets when the user names no model.
SHIPPED_MODELS = {"US": "busi-ultrasound", "CT": "lidc-ct-nodule"}
DEFAULT_MODEL = SHIPPED_MODELS["US"]  # when the case's modality is not known (e.g. ``Screener()``)


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


def bundle_modality(folder: str | os.PathLike) -> str | None:
    """The modality a bundle was trained on, read from its manifest (not verified: for choosing
    and listing only; the chosen bundle is verified when it is loaded)."""
    try:
        manifest = json.loads((Path(folder) / "manifest.json").read_text(encoding="utf-8"))
        return str(manifest["extraction"]["modality"]).upper() or None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def default_model(modality: str | None = None) -> Path:
    """The bundle for a case of ``modality`` when the user names none: the shipped bundle of that
    modality, else the only bundle of it in :func:`models_directory`. No modality: the default."""
    folder = models_directory()
    if not modality:
        return resolve_model_path(DEFAULT_MODEL)
    modality = modality.upper()
    shipped = folder / SHIPPED_MODELS.get(modality, "")
    if modality in SHIPPED_MODELS and bundle_modality(shipped) == modality:
        return shipped
    matching = [p for p in available_models() if bundle_modality(p) == modality]
    if len(matching) == 1:
        return matching[0]
    others = ", ".join(f"{p.name} ({bundle_modality(p) or '?'})" for p in available_models()) or "none"
    reason = "several" if matching else "no"
    raise InputError(f"{reason} model bundles for {modality} images in {folder} (bundles: {others}): "
                     "choose one with --model (Slicer: the Model list)")


def resolve_model_path(model: str | os.PathLike | None, modality: str | None = None) -> Path:
    """A bundle folder: a path, or the name of a bundle in :func:`models_directory`; None or "":
    the default bundle for a case of ``modality`` (:func:`default_model`)."""
    if not model:
        return default_model(modality)
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
