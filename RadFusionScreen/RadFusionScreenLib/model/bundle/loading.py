"""Loading a bundle: read and verify it, then serve it as a :class:`Bundle`.

:func:`load_bundle` refuses, with a message naming the culprit, a bundle of a newer format,
a manifest edited outside the engine (its digest no longer matches ``bundle.lock.json``), a
bundle that claims a shipped name with another digest, a listed file that is missing or whose
SHA-256 differs, an unlisted file, a signature that does not verify, and a manifest that names
arrays the weights lack (:mod:`.trust` has the digest, lock, pins and signatures), and a
probability calibration that is not a valid calibrator (:meth:`.calibration.Calibrator.from_dict`).
A bundle written before calibrated bundles (no ``calibration`` in its primary model) loads
uncalibrated, and says so in :attr:`Bundle.warnings`. It never calls pickle, ``torch.load`` or
``np.load``, and never imports scikit-learn.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Mapping

import numpy as np
import pandas as pd

from RadFusionScreenLib.core.errors import BundleError, InputError
from RadFusionScreenLib.model.bundle.inference import BundleModel
from RadFusionScreenLib.model.bundle.layout import ENGINE_FILES, FORMAT, FORMAT_VERSION, MANIFEST, PICKLE_SUFFIXES, \
    WEIGHTS
from RadFusionScreenLib.model.bundle.trust import Provenance, check_lock, check_pinned, environment_warnings, \
    file_sha256, verify_signature
from RadFusionScreenLib.model.calibration import Calibrator
from RadFusionScreenLib.stats import Nomogram


UNCALIBRATED = ("not calibrated: the bundle stores no probability calibration (it was written before bundles "
                "were calibrated), so its probability is the classifier's raw output")
UNCALIBRATED_WARNING = (f"{UNCALIBRATED}, which may be far from the observed risk: read it as a ranking against "
                        "the decision threshold; re-export the bundle (radfusion train) to calibrate it")


@dataclass
class Bundle:
    """A loaded bundle: the primary model, rad/deep-score models, nomogram and threshold."""

    path: Path
    manifest: dict[str, Any]
    model: BundleModel
    score_models: dict[str, BundleModel]
    nomogram: Nomogram | None
    threshold: float
    clinical_fill: dict[str, Any]
    digest: str = ""  # SHA-256 over the canonical manifest, which lists every file's SHA-256
    provenance: Provenance = Provenance("unsigned")
    warnings: list[str] = field(default_factory=list)  # software differences that can change its inputs
    calibrator: Calibrator | None = None  # None: an older bundle, its probability is the classifier's own
    calibration: dict[str, Any] | None = None  # the manifest's record: calibrator, its choice, test set before/after

    @property
    def required_columns(self) -> list[str]:
        """Every table column the bundle reads (primary, score models, nomogram predictors)."""
        columns = list(self.model.required_columns)
        for model in self.score_models.values():
            columns += [c for c in model.required_columns if c not in columns]
        for name in self.nomogram.predictors if self.nomogram is not None else ():
            if name not in self.score_models and name not in columns:
                columns.append(name)
        return columns

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Probability and decision (probability >= threshold), scores, nomogram points and risk."""
        result = pd.DataFrame(index=frame.index)
        raw = self.model.predict_proba(frame)
        result["probability"] = raw if self.calibrator is None else self.calibrator.apply(raw)
        decision = pd.array(result["probability"] >= self.threshold, dtype="Int64")
        result["decision"] = decision if np.isfinite(self.threshold) else pd.array([pd.NA] * len(frame), dtype="Int64")
        result["uncalibrated_probability"] = raw
        for name, model in self.score_models.items():
            result[name] = model.linear_predictor(frame)
        if self.nomogram is not None:
            points = self.nomogram.points(self._nomogram_input(frame, result))
            for column in points.columns:
                label = column if column in ("total_points", "linear_predictor", "probability") else f"points_{column}"
                result[f"nomogram_{label}"] = points[column].to_numpy()
        return result

    def calibration_summary(self) -> dict[str, Any]:
        """What a screen result says about its probability's calibration: the method, and the
        internal test set's calibration before and after it as the bundle recorded it."""
        if self.calibrator is None:
            return {"method": None, "calibrated": False, "description": UNCALIBRATED, "test_set": None,
                    "raw_threshold": _finite_or_none(self.threshold)}
        record = self.calibration or {}
        return {"method": self.calibrator.method, "calibrated": self.calibrator.method != "none",
                "description": self.calibrator.describe(),
                "fitted_on": (record.get("selection") or {}).get("fitted_on"), "test_set": record.get("test_set"),
                # the decision threshold on the classifier's own scale (where a SHAP waterfall draws it)
                "raw_threshold": _finite_or_none(self.calibrator.raw_threshold(self.threshold))}

    def _nomogram_input(self, frame: pd.DataFrame, scores: pd.DataFrame) -> pd.DataFrame:
        data = pd.DataFrame(index=frame.index)
        for name in self.nomogram.predictors:
            if name in scores.columns:
                data[name] = scores[name]
                continue
            if name not in frame.columns:
                raise InputError(f"the nomogram needs the clinical column {name!r}, which the table lacks")
            values = frame[name]
            if values.isna().any():
                if name not in self.clinical_fill:
                    raise InputError(f"clinical column {name!r} has missing values and the bundle stores no "
                                     "training value to fill them with")
                values = values.astype(object).where(values.notna(), self.clinical_fill[name])
            data[name] = values
        return data


def _finite_or_none(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def load_bundle(path: str | os.PathLike) -> Bundle:
    """Read and verify a bundle (version, SHA-256 of every listed file, no pickle files).

    Raises :class:`BundleError` naming the file or version that stops it.
    """
    folder = Path(path)
    manifest = read_manifest(folder)
    digest = check_lock(folder, manifest)
    check_pinned(folder, manifest, digest)
    contents = verified_files(folder, manifest)
    provenance = verify_signature(folder, digest)
    arrays = _load_weights(contents)
    try:
        models = {key: BundleModel(entry["spec"], arrays, contents) for key, entry in manifest["models"].items()}
        primary = models.pop("primary")
        nomogram_entry = manifest.get("nomogram")
        nomogram = None if nomogram_entry is None else Nomogram.from_dict(nomogram_entry["model"])
        threshold = manifest["decision_threshold"]
        calibration = manifest["models"]["primary"].get("calibration")
        calibrator = None if calibration is None else Calibrator.from_dict(calibration["calibrator"])
    except (KeyError, TypeError, AttributeError) as exc:
        raise BundleError(f"{folder / MANIFEST} is incomplete: {exc!r}") from None
    except BundleError:
        raise
    except InputError as exc:
        raise BundleError(f"{folder / MANIFEST}: {exc}") from None
    warnings = environment_warnings(manifest) + ([UNCALIBRATED_WARNING] if calibrator is None else [])
    return Bundle(folder, manifest, primary, models, nomogram, float("nan") if threshold is None else float(threshold),
                  dict((nomogram_entry or {}).get("clinical_fill") or {}), digest, provenance, warnings,
                  calibrator, calibration)


def read_manifest(folder: Path) -> dict[str, Any]:
    file = folder / MANIFEST
    if not file.is_file():
        raise BundleError(f"{folder} is not a model bundle: it has no {MANIFEST}")
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise BundleError(f"{file} cannot be read as JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{file} is not a {FORMAT} manifest")
    _check_version(manifest.get("format_version"), file)
    return manifest


def _check_version(version: Any, file: Path) -> None:
    try:
        number = int(str(version))
    except ValueError:
        raise BundleError(f"{file} has an unreadable format version {version!r}") from None
    if number > int(FORMAT_VERSION):
        raise BundleError(f"the bundle has format version {number}, newer than version {FORMAT_VERSION} that this "
                          "engine reads: update RadFusionScreen to use it")
    if number != int(FORMAT_VERSION):
        raise BundleError(f"the bundle has format version {number}; this engine reads version {FORMAT_VERSION}")


def verified_files(folder: Path, manifest: Mapping[str, Any]) -> dict[str, bytes]:
    """Bytes of every listed file after checking its SHA-256; unlisted pickle files refused."""
    listed = manifest.get("files")
    if not isinstance(listed, dict) or WEIGHTS not in listed:
        raise BundleError(f"{folder / MANIFEST} lists no files (it must list {WEIGHTS})")
    contents = {}
    for name, digest in listed.items():
        file = _inside(folder, name)
        if not file.is_file():
            raise BundleError(f"the bundle file {name!r} is missing from {folder}")
        data = file.read_bytes()
        if file_sha256(data) != digest:
            raise BundleError(f"the bundle file {name!r} has been modified: its SHA-256 does not match the manifest")
        contents[name] = data
    for file in sorted(folder.rglob("*")):
        relative = file.relative_to(folder).as_posix()
        if relative in contents or relative in ENGINE_FILES:
            continue
        if file.suffix.lower() in PICKLE_SUFFIXES:
            raise BundleError(f"the bundle folder holds {relative!r}, a pickle-like file it does not list: "
                              "bundles never contain pickles; remove it")
        if file.is_file():
            raise BundleError(f"the bundle folder holds {relative!r}, a file its manifest does not list: a bundle is "
                              "exported whole by RadFusionScreen; remove the file (or re-export the bundle)")
    return contents


def _inside(folder: Path, name: str) -> Path:
    relative = PurePosixPath(name)
    if relative.is_absolute() or ".." in relative.parts or relative.suffix.lower() in PICKLE_SUFFIXES:
        raise BundleError(f"the manifest lists a file the bundle may not hold: {name!r}")
    return folder.joinpath(*relative.parts)


def _load_weights(contents: Mapping[str, bytes]) -> dict[str, np.ndarray]:
    from safetensors.numpy import load

    try:
        return load(contents[WEIGHTS])
    except Exception as exc:  # safetensors raises its own error types for a corrupt header
        raise BundleError(f"{WEIGHTS} cannot be read: {exc}") from None


def recorded_predictions(manifest: Mapping[str, Any]) -> tuple[dict[str, float], bool]:
    """The probabilities a bundle recorded for its internal test cases (case_id -> probability),
    so a re-screened case can be compared with the bundle's own number, and whether the shipped
    model has seen those cases: True for a model refitted on every case (``refit_predictions``)."""
    reference = (manifest.get("training") or {}).get("reference") or {}
    if reference.get("refit_predictions"):
        return {str(k): float(v) for k, v in reference["refit_predictions"].items()}, True
    return {str(k): float(v) for k, v in (reference.get("test_predictions") or {}).items()}, False
