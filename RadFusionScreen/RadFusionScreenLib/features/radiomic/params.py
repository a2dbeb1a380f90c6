"""pyradiomics params: the shipped YAML of each modality, loading a YAML (path) or dict, the
canonical JSON behind the params hash, and the split into one params dict per filtered image."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from RadFusionScreenLib.core.errors import InputError
from RadFusionScreenLib.core.locations import PACKAGE_DIR

PARAMS_DIR = PACKAGE_DIR / "params"
MODALITY_PARAMS = {"CT": "CT.yaml", "MR": "MR.yaml", "US": "US.yaml"}


def default_params_path(modality: str) -> Path:
    """The shipped params YAML for a modality: ``CT``, ``MR`` or ``US`` (2D ultrasound)."""
    name = MODALITY_PARAMS.get(str(modality).upper())
    if name is None:
        raise InputError(
            f"no default radiomics parameters for modality {modality!r}: "
            f"use one of {', '.join(MODALITY_PARAMS)} or pass your own pyradiomics params YAML"
        )
    return PARAMS_DIR / name


def split_params(params: Mapping[str, Any]) -> list[dict[str, Any]]:
    """pyradiomics params split into one params dict per filtered image, in pyradiomics'
    order: LoG into one part per sigma; shape features only in the first part."""
    parts = []
    setting = params.get("setting") or {}
    for image_type, custom in (params.get("imageType") or {}).items():
        custom = dict(custom or {})
        variants = [custom]
        if image_type == "LoG":
            sigmas = custom.get("sigma", setting.get("sigma", []))
            variants = [dict(custom, sigma=[sigma]) for sigma in sigmas] or [custom]
        for variant in variants:
            classes = dict(params.get("featureClass") or {})
            if parts:
                classes = {k: v for k, v in classes.items() if not k.startswith("shape")}
            parts.append({"imageType": {image_type: variant}, "featureClass": classes, "setting": dict(setting)})
    return parts


def _load_params(params: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(params, Mapping):
        return copy.deepcopy(dict(params))
    path = Path(params)
    if not path.is_file():
        raise InputError(f"params file not found: {path} (give a pyradiomics params YAML, or use default_params_path)")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise InputError(f"params file {path} is not valid YAML: {exc}") from exc
    if not isinstance(loaded, dict):
        raise InputError(f"params file {path} must hold a mapping (imageType / featureClass / setting)")
    return loaded


def _canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
