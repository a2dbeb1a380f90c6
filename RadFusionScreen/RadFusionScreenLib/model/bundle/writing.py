"""Writing a bundle: the manifest of a model comparison, the all-or-nothing folder write, the
model card.

:func:`write_bundle` exports the comparison's shipped model (``comparison.shipped_result``),
the models behind its rad/deep scores (``comparison.score_models``) and its nomogram, lists
every file's SHA-256 in the manifest and writes the lock over it (:mod:`.trust`). Everything is
serialised in memory, written into a sibling folder and swapped in, so a failure never leaves
half a bundle.
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import fields, is_dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from RadFusionScreenLib.core.errors import BundleError, InputError
from RadFusionScreenLib.core.files import replace_folder
from RadFusionScreenLib.core.jsonable import to_jsonable
from RadFusionScreenLib.model.bundle.export import export_pipeline
from RadFusionScreenLib.model.bundle.layout import FORMAT, FORMAT_VERSION, LOCK, MANIFEST, MODEL_CARD, WEIGHTS
from RadFusionScreenLib.model.bundle.loading import read_manifest, verified_files
from RadFusionScreenLib.model.bundle.trust import check_lock, file_sha256, lock_bytes
from RadFusionScreenLib.model.calibration import calibration_metrics
from RadFusionScreenLib.model.roles import NOMOGRAM_RESULT, SCORE_FEATURE_SETS


def write_bundle(
    out_dir: str | os.PathLike,
    comparison: Any,
    *,
    name: str,
    extraction: Mapping[str, Any],
    training_summary: Mapping[str, Any],
    feature_set: str = "fused",
    classifier: str | None = None,
    validation: Mapping[str, Any] | None = None,
) -> Path:
    """Write the comparison's model of ``feature_set`` (best by CV AUC, or ``classifier``),
    its rad/deep-score models and nomogram as a bundle folder; returns the folder.

    ``validation``: for a model refitted on every case (``radfusion train --refit-all``), the
    internal-test record of its configuration (``train_command.validation_record``), kept as the
    primary model's ``validation``: what the card and the operating point report.

    The folder is built beside ``out_dir`` and renamed into place, so a failure never
    leaves a half-written bundle; an existing folder is replaced only if it is a bundle.
    """
    primary = _primary_result(comparison, feature_set, classifier)
    arrays: dict[str, np.ndarray] = {}
    files: dict[str, bytes] = {}
    models = {"primary": _model_entry(primary, "primary", arrays, files) | _calibration_entry(primary, comparison)}
    if validation is not None:
        models["primary"]["validation"] = dict(validation)
    for score, result in _score_results(comparison).items():
        models[score] = _model_entry(result, score, arrays, files)
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "name": str(name),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "task": {"type": "binary screening", "output": "probability that the case is positive (label 1)",
                 "decision": "positive when probability >= decision_threshold"},
        "extraction": dict(extraction),
        "input": _input_summary(models),
        "models": models,
        "nomogram": _nomogram_entry(comparison),
        "decision_threshold": primary.threshold,
        "training": dict(training_summary),
        "settings": _settings_dict(comparison.settings),
        "notes": list(comparison.notes),
        "packages": _package_versions(models),
    }
    return _write_folder(Path(out_dir), manifest, arrays, files)


def _primary_result(comparison: Any, feature_set: str, classifier: str | None) -> Any:
    try:
        return comparison.shipped_result(feature_set, classifier)
    except InputError as exc:
        raise BundleError(str(exc)) from None


def _score_results(comparison: Any) -> dict[str, Any]:
    """The models behind rad_score / deep_score (``ModelComparison.score_models``)."""
    found = {}
    for score in SCORE_FEATURE_SETS:
        if score not in comparison.scores_train.columns:
            continue
        name = comparison.score_models.get(score)
        if name not in comparison.results:
            raise BundleError(f"the comparison has {score} but not the model that made it")
        found[score] = comparison.results[name]
    return found


def _model_entry(result: Any, prefix: str, arrays: dict[str, np.ndarray], files: dict[str, bytes]) -> dict[str, Any]:
    spec, model_arrays, model_files = export_pipeline(result.model, prefix)
    arrays.update(model_arrays)
    files.update(model_files)
    return {"result": result.name, "feature_set": result.feature_set, "classifier": result.classifier,
            "best_params": result.best_params, "threshold": result.threshold, "metrics": result.row(), "spec": spec}


def _calibration_entry(result: Any, comparison: Any) -> dict[str, Any]:
    """The primary model's probability calibration (:mod:`..calibration`): the calibrator as plain
    numbers, how it was chosen, and the test set's calibration before and after it. A model
    without one (the nomogram serves its own probability) gets no entry."""
    selection = getattr(result, "calibration", None)
    if selection is None:
        return {}
    record: dict[str, Any] = {"calibrator": selection.calibrator.to_dict(), "selection": selection.to_dict(),
                              "threshold_rule": "Youden on the calibrated training out-of-fold probabilities",
                              "test_set": calibration_on_test_set(result, comparison.y_test)}
    return {"calibration": record}


def calibration_on_test_set(result: Any, y_test: np.ndarray | None) -> dict[str, Any] | None:
    """A model's test-set calibration before and after its calibrator; None without a test set."""
    raw = getattr(result, "test_probability_uncalibrated", None)
    if raw is None or y_test is None or result.test_probability is None:
        return None
    return {"before": calibration_metrics(y_test, raw), "after": calibration_metrics(y_test, result.test_probability)}


def _nomogram_entry(comparison: Any) -> dict[str, Any] | None:
    nomogram = comparison.nomogram
    if nomogram is None:
        return None
    result = comparison.results.get(NOMOGRAM_RESULT)
    fill = dict(getattr(comparison, "clinical_fill", None) or {})
    for term in nomogram.to_dict()["terms"]:  # the reference (most frequent) level fills a categorical gap
        if term["categorical"] and term["name"] not in fill:
            fill[term["name"]] = term["ticks"][0]
    return {"model": nomogram.to_dict(), "clinical_fill": fill,
            "threshold": None if result is None else result.threshold,
            "metrics": None if result is None else result.row()}


def _input_summary(models: Mapping[str, Any]) -> dict[str, Any]:
    columns: list[str] = []
    sites = None
    for entry in models.values():
        spec = entry["spec"]
        columns += [c for c in spec["input_columns"] if c not in columns]
        for op in spec["steps"]:
            if op["op"] == "combat":
                sites = {"site_column": op["site_column"], "known_sites": op["sites"]}
    return {"required_columns": columns, "combat": sites}


def _settings_dict(settings: Any) -> dict[str, Any]:
    if not is_dataclass(settings):
        return {}
    return {f.name: to_jsonable(getattr(settings, f.name), unknown="repr") for f in fields(settings)}


def _package_versions(models: Mapping[str, Any]) -> dict[str, str]:
    from importlib import metadata

    from RadFusionScreenLib.core.version import __version__

    types = {entry["spec"]["classifier"]["type"] for entry in models.values()}
    names = ["numpy", "pandas", "scipy", "scikit-learn", "safetensors"]
    names += ["xgboost"] if "xgboost" in types else []
    names += ["lightgbm"] if "lightgbm" in types else []
    versions = {"python": platform.python_version(), "radfusionscreen": __version__}
    for package in names:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "unknown"
    return versions


def _not_json(value: Any) -> Any:
    raise BundleError(f"cannot write a {type(value).__name__} into the manifest: {value!r}")


def _write_folder(target: Path, manifest: dict[str, Any], arrays: dict[str, np.ndarray],
                  files: dict[str, bytes]) -> Path:
    """Everything is serialised in memory first, written to a sibling folder, then swapped in."""
    from safetensors.numpy import save

    _check_target(target)
    contents = {WEIGHTS: save(arrays, metadata={"format": FORMAT})} | files
    return replace_folder(target, _sealed(to_jsonable(manifest, unknown=_not_json), contents))


def _sealed(manifest: dict[str, Any], contents: dict[str, bytes]) -> dict[str, bytes]:
    """``contents`` with the manifest listing their SHA-256 and the lock over that manifest."""
    manifest = manifest | {"files": {path: file_sha256(data) for path, data in sorted(contents.items())}}
    return contents | {MANIFEST: (json.dumps(manifest, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode(),
                       LOCK: lock_bytes(manifest)}


def _check_target(target: Path) -> None:
    if target.exists() and not target.is_dir():
        raise BundleError(f"cannot write a bundle to {target}: it is a file")
    if target.is_dir() and any(target.iterdir()) and not _is_bundle(target):
        raise BundleError(f"refusing to overwrite {target}: the folder exists and is not a model bundle")


def _is_bundle(folder: Path) -> bool:
    try:
        return json.loads((folder / MANIFEST).read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def write_model_card(path: str | os.PathLike, text: str) -> Path:
    """Put (or replace) the bundle's model card ``README.md`` and list its SHA-256.

    A model card is written after training, by people: the bundle is verified first (a
    damaged bundle is not re-locked), then rebuilt beside the old one and swapped in, so an
    interrupted write leaves the previous bundle intact. The digest changes, so the new lock
    is written and an old signature is dropped (sign again).
    """
    folder = Path(path)
    manifest = read_manifest(folder)
    check_lock(folder, manifest)
    contents = verified_files(folder, manifest)
    contents[MODEL_CARD] = text.encode("utf-8")
    return replace_folder(folder, _sealed(manifest, contents))
