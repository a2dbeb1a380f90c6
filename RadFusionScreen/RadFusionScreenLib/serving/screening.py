"""Screen one case with a model bundle: probability, nomogram breakdown, Grad-CAM, warnings.

:class:`Screener` loads a bundle and its feature extractors once (as the Slicer module and
the batch CLI do); :func:`screen` is the one-call API. Per case:

1. image + mask → geometry-checked binary ROI (paths, SimpleITK images or numpy arrays);
2. the bundle's field of view, when it records one (the region around the ROI its features
   were extracted from, :mod:`RadFusionScreenLib.features.field_of_view`): a whole scan is cut
   to what the training crops showed;
   radiomic features with the bundle's own pyradiomics params, deep features with the
   bundle's network (its weights' SHA-256 is checked against the installed file);
3. the bundle's fused model → probability (calibrated by the bundle's calibrator, see
   :mod:`RadFusionScreenLib.model.calibration`; the classifier's own output is kept as
   ``uncalibrated_probability``), decision at the bundle's threshold (on the calibrated scale),
   risk class; rad-score / deep-score models and the nomogram → per-predictor points (the
   nomogram keeps its own probability);
4. Grad-CAM of the deep-score (the deep features' share of the decision; see
   :mod:`.gradcam`) pasted into the input's geometry;
5. warnings when the case lies outside what the model was trained on.

Clinical values the nomogram needs must be given: a missing one is refused, never imputed
(imputation is for cohort tables, not for one patient's decision).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
import SimpleITK as sitk

from RadFusionScreenLib.core.errors import InputError
from RadFusionScreenLib.core.files import write_atomically
from RadFusionScreenLib.core.locations import resolve_model_path
from RadFusionScreenLib.core.text import MISSING, number
from RadFusionScreenLib.features.field_of_view import FieldOfView, crop_to_field_of_view, paste_into
from RadFusionScreenLib.model.roles import DEEP_SCORE, RAD_SCORE

RISK_CLASSES = ("low", "high")  # below / at or above the bundle's decision threshold
SCORE_NAMES = (RAD_SCORE, DEEP_SCORE)


# ====================================================================== result
@dataclass
class ScreenResult:
    """Everything a radiologist sees for one case (and what a report or a scene needs)."""

    probability: float
    decision: bool | None
    risk_class: str
    threshold: float
    rad_score: float | None
    deep_score: float | None
    nomogram: pd.DataFrame  # predictor, value, points (+ total / linear predictor / probability rows)
    nomogram_total_points: float | None
    nomogram_linear_predictor: float | None
    nomogram_probability: float | None
    features: pd.DataFrame  # name, raw, harmonised, scaled (the model's own features)
    heatmap: sitk.Image | None
    model: dict[str, Any]
    timings: dict[str, float]
    warnings: list[str] = field(default_factory=list)
    # Why this case (SHAP of the fused model, reasons.case_contributions) and how good the model
    # is at its threshold (reasons.operating_point); None when not available.
    explanation: dict[str, Any] | None = None
    operating_point: dict[str, Any] | None = None
    # The classifier's own output before calibration (SHAP explains this one), and the bundle's
    # calibration record (Bundle.calibration_summary: method, test set before / after); None when unknown.
    uncalibrated_probability: float | None = None
    calibration: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able numbers (the heat map itself is left out)."""
        return {
            "probability": self.probability, "decision": self.decision, "risk_class": self.risk_class,
            "threshold": self.threshold, RAD_SCORE: self.rad_score, DEEP_SCORE: self.deep_score,
            "nomogram": {"terms": _records(self.nomogram), "total_points": self.nomogram_total_points,
                         "linear_predictor": self.nomogram_linear_predictor, "probability": self.nomogram_probability},
            "features": _records(self.features), "model": self.model, "timings_s": self.timings,
            "warnings": self.warnings, "explanation": self.explanation, "operating_point": self.operating_point,
            "uncalibrated_probability": self.uncalibrated_probability, "calibration": self.calibration,
        }

    def summary_text(self) -> str:
        """A short, readable summary for a terminal."""
        lines = [
            f"model      {self.model['name']} (bundle format {self.model['format_version']}, "
            f"digest {self.model['digest'][:16]}; {self.model['provenance']})",
            f"probability {self.probability:.3f}  ->  {self.risk_class.upper()} risk "
            f"(threshold {self.threshold:.3f}, decision {'positive' if self.decision else 'negative'})",
            f"calibration {calibration_line(self.calibration, self.uncalibrated_probability)}",
        ]
        if self.nomogram_total_points is not None:
            lines.append("nomogram   (breakdown by the scores; a simpler companion model, not the answer)")
            lines.append("           predictor          value     points")
            for row in self.nomogram.itertuples():
                lines.append(f"           {row.predictor:<18} {format_value(row.value):>8} {row.points:8.1f}")
            lines.append(f"           total points {self.nomogram_total_points:.1f} -> "
                         f"the nomogram's own estimate {self.nomogram_probability:.3f}")
        top = (self.explanation or {}).get("contributions") or []
        if top:
            lines.append("reasons    (SHAP of the fused model's uncalibrated output, log-odds) " + "; ".join(
                f"{c['label']} {c['shap']:+.2f}" for c in top[:3]))
        lines.append("timings    " + ", ".join(f"{k} {v:.2f} s" for k, v in self.timings.items()))
        lines += [f"WARNING    {w}" for w in self.warnings]
        lines.append("Research use only: not for clinical use without local validation.")
        return "\n".join(lines)


def calibration_line(calibration: Mapping[str, Any] | None, uncalibrated: float | None) -> str:
    """One line: how the probability was calibrated and how well, on the bundle's internal test set."""
    if not calibration:
        return "not recorded"
    raw = "" if uncalibrated is None else f"; classifier's own output {uncalibrated:.3f}"
    if not calibration.get("method"):
        return f"none: {str(calibration.get('description')).removeprefix('not calibrated: ')}"
    after = (calibration.get("test_set") or {}).get("after") or {}
    return f"{calibration.get('description')}{raw}; internal test set: {calibration_fit_text(after)}"


def calibration_fit_text(entry: Mapping[str, Any]) -> str:
    """"intercept a (CI), slope b (CI), Hosmer-Lemeshow p = c" of a calibration_metrics record."""
    def estimate(name: str) -> str:
        low, high = (entry.get(f"{name}_ci") or [None, None])[:2]
        ci = "" if MISSING in (number(low, 2), number(high, 2)) else f" (95% CI {number(low, 2)} to {number(high, 2)})"
        return f"{name} {number(entry.get(name), 2)}{ci}"

    p_value = (entry.get("hosmer_lemeshow") or {}).get("p_value")
    p_text = MISSING if p_value is None else "< 0.001" if p_value < 0.001 else f"= {p_value:.3f}"
    return f"{estimate('intercept')}, {estimate('slope')}, Hosmer-Lemeshow p {p_text}"


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
            for row in frame.to_dict(orient="records")]


def format_value(value: Any) -> str:
    """A table cell: numbers to 3 decimals, anything else as text."""
    return f"{value:.3f}" if isinstance(value, (int, float, np.floating)) else str(value)


# ===================================================================== screener
class ModelDescription:
    """A verified model bundle: its manifest, model card and the inputs a case needs.

    What a model panel shows, without loading the CNN or building the extractors (the bundle's
    files are still checked: digest, lock, pins, signature).
    """

    def __init__(self, model: str | os.PathLike | None = None) -> None:
        from RadFusionScreenLib.model.bundle import MODEL_CARD, load_bundle

        self.path = resolve_model_path(model)
        self.bundle = load_bundle(self.path)
        self.extraction = self.bundle.manifest.get("extraction") or {}
        self.modality = str(self.extraction.get("modality", ""))
        card = self.path / MODEL_CARD
        self.card = card.read_text(encoding="utf-8") if card.is_file() else ""

    @property
    def threshold(self) -> float:
        return float(self.bundle.threshold)

    @property
    def clinical_predictors(self) -> list[str]:
        """Clinical values a case needs (the nomogram's predictors other than the scores)."""
        nomogram = self.bundle.nomogram
        return [] if nomogram is None else [p for p in nomogram.predictors if p not in SCORE_NAMES]

    @property
    def categorical_levels(self) -> dict[str, list[str]]:
        """Allowed values of each categorical clinical predictor (the first is the reference)."""
        nomogram = self.bundle.nomogram
        if nomogram is None:
            return {}
        terms = nomogram.to_dict()["terms"]
        return {t["name"]: [str(v) for v in t["ticks"]] for t in terms if t.get("categorical")}

    @property
    def site_column(self) -> str | None:
        return self._combat.get("site_column")

    @property
    def known_sites(self) -> list[str]:
        return list(self._combat.get("known_sites") or [])

    @property
    def _combat(self) -> dict[str, Any]:
        return (self.bundle.manifest.get("input") or {}).get("combat") or {}

    def model_info(self) -> dict[str, Any]:
        """Name, bundle digest (over every value and file), provenance and load warnings of the model."""
        manifest = self.bundle.manifest
        return {"name": manifest.get("name"), "format_version": manifest.get("format_version"),
                "created": manifest.get("created"), "digest": self.bundle.digest,
                "provenance": self.bundle.provenance.describe(), "path": str(self.path),
                "modality": self.modality, "warnings": list(self.bundle.warnings)}


class Screener(ModelDescription):
    """A loaded bundle with its extractors, ready to screen many cases."""

    def __init__(self, model: str | os.PathLike | None = None, device: str | None = None,
                 processes: int | None = None) -> None:
        """``processes``: worker processes for the filtered images' radiomics of 3D cases.
        Default 1: spawned workers re-import the caller's main script, which a script without
        ``if __name__ == "__main__":`` does not survive (nor does the Slicer application).
        The ``radfusion`` command uses one per CPU core."""
        started = time.perf_counter()
        super().__init__(model)
        if "params_yaml" not in self.extraction:
            raise InputError(f"model bundle {self.path} records no feature extraction settings "
                             "(it was trained on a feature table): it cannot screen images")
        self._radiomic = _radiomic_extractor(self.extraction, 1 if processes is None else processes)
        self._deep = _deep_extractor(self.extraction, device)
        self._field_of_view = FieldOfView.from_record(self.extraction.get("field_of_view"))
        self.load_seconds = time.perf_counter() - started

    def screen(self, image: Any, mask: Any, clinical: Mapping[str, Any] | None = None, site: str | None = None,
               label: int | None = None, geometry: Mapping[str, Any] | None = None,
               heatmap: bool = True, segment: str | int | None = None, modality: str | None = None) -> ScreenResult:
        """Screen one case (see the module doc). Raises :class:`InputError` on bad input.

        ``segment``: the segment / ROI (name or number) when ``mask`` is a DICOM SEG or RTSTRUCT file.
        ``modality``: the image's modality (CT / MR / US / PT) when known, e.g. from the DICOM
        header of a Slicer volume; else the file's DICOM tag, else the engine's rule (one-slice
        pictures are ultrasound; volumes with air below -500 are CT; others MR). A modality
        other than the model's is refused.
        """
        timings: dict[str, float] = {}
        clock = time.perf_counter()
        image, mask, file_modality = case_images(image, mask, label, geometry, segment)
        timings["io"] = _lap(clock)
        self._check_modality(image, modality or file_modality)
        row = self._clinical_row(clinical, site)
        seen_image, seen_mask = image, mask  # what the features see: the bundle's field of view, if any
        if self._field_of_view is not None:
            seen_image, seen_mask = crop_to_field_of_view(image, mask, self._field_of_view)
        clock = time.perf_counter()
        radiomic, radiomic_notes = self._radiomic.execute_case(seen_image, seen_mask)
        timings["radiomics"] = _lap(clock)
        clock = time.perf_counter()
        deep_values = self._deep.extract(seen_image, seen_mask)
        deep = dict(zip(self._deep.feature_names(), (float(v) for v in deep_values)))
        timings["deep"] = _lap(clock)
        roi_voxels = int(np.count_nonzero(sitk.GetArrayViewFromImage(mask)))
        frame = pd.DataFrame([{**radiomic, **deep, **row, "roi_voxels": roi_voxels}])
        clock = time.perf_counter()
        predicted = self.bundle.predict(frame).iloc[0]
        used = self._used_features(frame)
        timings["model"] = _lap(clock)
        cam = None
        if heatmap and DEEP_SCORE in self.bundle.score_models:
            clock = time.perf_counter()
            cam = self._grad_cam(seen_image, seen_mask, frame)
            if seen_image is not image:  # the map on the input's grid, as the viewer overlays it
                cam = replace(cam, image=paste_into(image, cam.image))
            timings["gradcam"] = _lap(clock)
        timings["total"] = sum(timings.values())
        warnings = (list(self.bundle.warnings) + self._warnings(frame, roi_voxels)
                    + [f"radiomics: {note}" for note in radiomic_notes]
                    + ([cam.warning] if cam is not None and cam.warning else []))
        result = self._result(predicted, row, used, None if cam is None else cam.image, timings, warnings)
        result.explanation = _explanation(self.bundle.model, frame)
        result.operating_point = operating_point(self.bundle.manifest)
        return result

    # ------------------------------------------------------------------ steps
    def _check_modality(self, image: sitk.Image, declared: str | None) -> None:
        from RadFusionScreenLib.features.case_features import resolve_modality

        found = resolve_modality(declared, image)
        if self.modality and found != self.modality:
            how = f"declared {declared}" if declared else "by its intensities and shape"
            raise InputError(f"the model {self.bundle.manifest.get('name')!r} was trained on {self.modality} "
                             f"images; this image is {found} ({how}). Use a {found} model, or pass the "
                             "modality if it was misjudged")

    def _clinical_row(self, clinical: Mapping[str, Any] | None, site: str | None) -> dict[str, Any]:
        clinical = dict(clinical or {})
        row: dict[str, Any] = {}
        categorical = self.categorical_levels
        for name in self.clinical_predictors:
            value = clinical.get(name)
            if value is None or (isinstance(value, float) and math.isnan(value)) or value == "":
                raise InputError(f"the model needs the clinical value {name!r}; give it "
                                 f"(e.g. --clinical {name}=...). Required: {', '.join(self.clinical_predictors)}")
            row[name] = _clinical_value(name, value, categorical.get(name))
        unknown = sorted(set(clinical) - set(self.clinical_predictors))
        if unknown:
            raise InputError(f"unknown clinical value(s) {unknown}: the model uses {self.clinical_predictors or 'none'}")
        if self.site_column:
            if site is None or str(site) not in self.known_sites:
                raise InputError(f"the model harmonises by site (ComBat): the case's site must be one of "
                                 f"{self.known_sites}, got {site!r}")
            row[self.site_column] = str(site)
        return row

    def _used_features(self, frame: pd.DataFrame) -> pd.DataFrame:
        stages = self.bundle.model.transform(frame)
        raw = stages["raw"]
        names = [c for c in raw.columns if c != self.site_column]
        table = pd.DataFrame({"name": names, "raw": [float(raw[c].iloc[0]) for c in names]})
        for stage in ("harmonised", "scaled"):
            if stage in stages:
                values = stages[stage]
                table[stage] = [float(values[c].iloc[0]) if c in values.columns else np.nan for c in names]
        return table

    def _grad_cam(self, image: sitk.Image, mask: sitk.Image, frame: pd.DataFrame) -> Any:
        from RadFusionScreenLib.explanation.gradcam import grad_cam

        weights, bias = deep_score_head(self.bundle.score_models[DEEP_SCORE], frame, self._deep.feature_names())
        return grad_cam(self._deep, image, mask, weights, bias)

    def _warnings(self, frame: pd.DataFrame, roi_voxels: int) -> list[str]:
        reference = (self.bundle.manifest.get("training") or {}).get("reference") or {}
        warnings = []
        low_high = reference.get("roi_voxels_min_max")
        if low_high and not low_high[0] <= roi_voxels <= low_high[1]:
            warnings.append(f"ROI of {roi_voxels} voxels is outside the training cohort's range "
                            f"{low_high[0]}-{low_high[1]}: the model has not seen lesions of this size")
        ranges = reference.get("feature_ranges_min_p1_p99_max") or {}
        outside = [n for n, (lo, _, _, hi) in ranges.items() if n in frame and not lo <= float(frame[n].iloc[0]) <= hi]
        if outside:
            warnings.append(f"{len(outside)} of {len(ranges)} model features lie outside the training range "
                            f"(e.g. {', '.join(outside[:3])}): out-of-distribution image or ROI")
        nomogram = self.bundle.nomogram
        if nomogram is not None and nomogram.fit_method == "firth":
            warnings.append("the nomogram's points come from Firth's bias-reduced fit: its training scores "
                            "separated the classes perfectly, so its probabilities are less certain than they look")
        return warnings

    def _result(self, predicted: pd.Series, row: dict[str, Any], used: pd.DataFrame, heatmap: sitk.Image | None,
                timings: dict[str, float], warnings: list[str]) -> ScreenResult:
        probability = float(predicted["probability"])
        threshold = float(self.bundle.threshold)
        uncalibrated = float(predicted["uncalibrated_probability"])
        decision = None if not math.isfinite(threshold) else bool(probability >= threshold)
        nomogram, total, lp, p_nomogram = _nomogram_table(predicted, row, self.bundle.nomogram)
        return ScreenResult(
            probability=probability, decision=decision, risk_class=RISK_CLASSES[int(bool(decision))],
            threshold=threshold, rad_score=_optional(predicted, RAD_SCORE), deep_score=_optional(predicted, DEEP_SCORE),
            nomogram=nomogram, nomogram_total_points=total, nomogram_linear_predictor=lp,
            nomogram_probability=p_nomogram, features=used, heatmap=heatmap, model=self.model_info(),
            timings=timings, warnings=warnings, uncalibrated_probability=uncalibrated,
            calibration=self.bundle.calibration_summary(),
        )


def _explanation(model: Any, frame: pd.DataFrame) -> dict[str, Any] | None:
    """Per-case SHAP of the fused model; a failure there never costs the case its answer."""
    from RadFusionScreenLib.explanation.reasons import case_contributions

    try:
        return case_contributions(model, frame)
    except Exception as exc:  # noqa: BLE001 -- the explanation is secondary to the probability
        return {"method": None, "reason": f"SHAP values could not be computed: {type(exc).__name__}: {exc}"}


def operating_point(manifest: Mapping[str, Any]) -> dict[str, Any] | None:
    from RadFusionScreenLib.explanation.reasons import operating_point as _operating_point

    return _operating_point(manifest)


def deep_score_head(model: Any, frame: pd.DataFrame, deep_names: list[str]) -> tuple[np.ndarray, float]:
    """Weights w and bias b with deep_score = b + w · f over the raw deep features f.

    Every step of the deep-score model (imputation, ComBat, scaling, LASSO-logistic) is affine
    per feature, so one unit step per used feature measures its weight exactly (up to
    rounding); this holds for any bundle model of that form without re-deriving its algebra.
    """
    base = frame.iloc[[0]].reset_index(drop=True)
    used = [n for n in model.required_columns if n in set(deep_names)]
    probes = pd.concat([base] * (len(used) + 1), ignore_index=True)
    for i, name in enumerate(used, start=1):
        probes.loc[i, name] = float(probes.loc[i, name]) + 1.0
    scores = model.linear_predictor(probes)
    weights = np.zeros(len(deep_names))
    index = {name: i for i, name in enumerate(deep_names)}
    for i, name in enumerate(used, start=1):
        weights[index[name]] = scores[i] - scores[0]
    features = np.array([float(base[n].iloc[0]) for n in deep_names])
    return weights, float(scores[0] - weights @ features)


# ==================================================================== helpers
def case_images(image: Any, mask: Any, label: int | None, geometry: Mapping[str, Any] | None,
                 segment: str | int | None = None) -> tuple[sitk.Image, sitk.Image, str | None]:
    """Image and binary mask on one grid, from paths, SimpleITK images or numpy arrays.

    A mask path may be a DICOM SEG / RTSTRUCT: it is rasterised onto the image's grid.
    """
    from RadFusionScreenLib.features.case_features import normalise_segment
    from RadFusionScreenLib.inputs.images import binary_mask, check_geometry, read_image_with_metadata, read_mask

    segment = normalise_segment(segment)

    modality = None
    if isinstance(image, (str, os.PathLike)):
        image, info = read_image_with_metadata(image)
        modality = info.get("modality")
    else:
        image = _as_image(image, geometry, "image")
    if isinstance(mask, (str, os.PathLike)):
        return image, read_mask(mask, reference=image, label=label, segment=segment), modality
    if segment is not None:
        raise InputError(f"segment {segment!r} given, but the mask is an image or array, not a DICOM SEG/RTSTRUCT "
                         "file: choose its value with label=")
    from_array = isinstance(mask, np.ndarray)
    mask = _as_image(mask, geometry, "mask")
    if from_array and mask.GetSize() == image.GetSize():
        mask.CopyInformation(image)  # an array has no geometry of its own: it is on the image's grid
    mask = binary_mask(mask, label, source="mask")
    check_geometry(image, mask)
    return image, mask, modality


def _as_image(value: Any, geometry: Mapping[str, Any] | None, what: str) -> sitk.Image:
    if isinstance(value, sitk.Image):
        return value
    if isinstance(value, np.ndarray):
        array = value[None] if value.ndim == 2 else value
        if array.ndim != 3:
            raise InputError(f"{what}: a 2D or 3D array is needed, got {value.ndim}D")
        image = sitk.GetImageFromArray(array)
        geometry = dict(geometry or {})
        image.SetSpacing(tuple(float(s) for s in geometry.get("spacing", (1.0, 1.0, 1.0))))
        image.SetOrigin(tuple(float(s) for s in geometry.get("origin", (0.0, 0.0, 0.0))))
        image.SetDirection(tuple(float(s) for s in geometry.get("direction", np.eye(3).ravel())))
        return image
    raise InputError(f"{what}: expected a file path, a SimpleITK image or a numpy array, got {type(value).__name__}")


def _clinical_value(name: str, value: Any, levels: list[str] | None) -> Any:
    if levels is not None:
        if str(value) not in levels:
            raise InputError(f"clinical value {name}={value!r} is not one of the model's levels {levels}")
        return str(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"clinical value {name}={value!r} must be a number") from None
    if not math.isfinite(number):
        raise InputError(f"clinical value {name}={value!r} must be a finite number")
    return number


def _nomogram_table(predicted: pd.Series, row: dict[str, Any],
                    nomogram: Any) -> tuple[pd.DataFrame, float | None, float | None, float | None]:
    if nomogram is None:
        return pd.DataFrame(columns=["predictor", "value", "points"]), None, None, None
    records = []
    for name in nomogram.predictors:
        value = predicted[name] if name in SCORE_NAMES else row.get(name)
        records.append({"predictor": name, "value": float(value) if name in SCORE_NAMES else value,
                        "points": float(predicted[f"nomogram_points_{name}"])})
    return (pd.DataFrame(records), float(predicted["nomogram_total_points"]),
            float(predicted["nomogram_linear_predictor"]), float(predicted["nomogram_probability"]))


def _optional(predicted: pd.Series, name: str) -> float | None:
    return float(predicted[name]) if name in predicted.index and pd.notna(predicted[name]) else None


def _lap(start: float) -> float:
    return time.perf_counter() - start


def _radiomic_extractor(extraction: Mapping[str, Any], processes: int) -> Any:
    import yaml

    from RadFusionScreenLib.features.radiomic import RadiomicExtractor

    extractor = RadiomicExtractor(yaml.safe_load(extraction["params_yaml"]), processes=processes)
    expected = extraction.get("params_sha256")
    if expected and extractor.params_hash != expected:
        raise InputError("the bundle's radiomics params do not reproduce its recorded params hash "
                         "(different pyradiomics defaults?): refusing to compute other features than it was trained on")
    return extractor


def _deep_extractor(extraction: Mapping[str, Any], device: str | None) -> Any:
    from RadFusionScreenLib.features.deep import get_deep_extractor

    settings = extraction.get("deep")
    if not settings:
        raise InputError("the bundle records no deep-feature network")
    options = dict(settings.get("options") or {})
    options.pop("weights_path", None)  # the installed weights; their SHA-256 must match the bundle's
    options["weights_sha256"] = settings.get("weights_sha256")
    return get_deep_extractor(settings["backbone"], device=None if device in (None, "auto") else device, **options)


_SCREENERS: dict[tuple[str, str | None], Screener] = {}


def screen(image: Any, mask: Any, model: str | os.PathLike | None = None, clinical: Mapping[str, Any] | None = None,
           device: str | None = None, site: str | None = None, label: int | None = None,
           geometry: Mapping[str, Any] | None = None, segment: str | int | None = None) -> ScreenResult:
    """Screen one case with a model bundle (default: the shipped bundle of the image's modality,
    :mod:`.model_choice`; numpy arrays: the ultrasound one); the bundle stays loaded.

    ``image`` / ``mask``: file paths (any supported format, DICOM folders), SimpleITK images,
    or numpy arrays (z, y, x; ``geometry`` gives spacing / origin / direction, default unit).
    ``segment``: name or number of the segment / ROI when the mask is a DICOM SEG or RTSTRUCT.
    """
    if not model and isinstance(image, (str, os.PathLike, sitk.Image)):
        from RadFusionScreenLib.serving.model_choice import model_for_case

        model = model_for_case(image)
    key = (str(resolve_model_path(model).resolve()), device)
    if key not in _SCREENERS:
        _SCREENERS[key] = Screener(model, device)
    return _SCREENERS[key].screen(image, mask, clinical=clinical, site=site, label=label, geometry=geometry,
                                  segment=segment)


PREDICTION_COLUMNS = ("case_id", "probability", "decision", "risk_class", RAD_SCORE, DEEP_SCORE, "error")


def screen_manifest(manifest_path: str | os.PathLike, output_path: str | os.PathLike,
                    screener: Screener, segment: str | int | None = None) -> pd.DataFrame:
    """Screen every case of a manifest with one loaded model; one row per case (atomic CSV).

    Clinical values and the site come from manifest columns of the same names; a ``segment``
    column (DICOM SEG / RTSTRUCT masks) overrides ``segment`` per case. A case that fails
    gets its message in ``error`` and the others go on.
    """
    from RadFusionScreenLib.features.cohort import manifest_tasks, read_manifest, write_csv_atomic
    from RadFusionScreenLib.features.case_features import normalise_segment

    manifest_path = Path(manifest_path)
    tasks = manifest_tasks(read_manifest(manifest_path), manifest_path.parent, default_label=None,
                           default_segment=normalise_segment(segment))
    rows = []
    for task in tasks:
        row: dict[str, Any] = {"case_id": task.case_id, "error": ""}
        extra = task.passthrough
        try:
            clinical = {name: extra.get(name) for name in screener.clinical_predictors}
            site = extra.get(screener.site_column) if screener.site_column else None
            result = screener.screen(task.image, task.mask, clinical=clinical, site=None if site is None else str(site),
                                     label=task.label, heatmap=False, segment=task.segment)
            row.update(probability=result.probability, decision=result.decision, risk_class=result.risk_class,
                       rad_score=result.rad_score, deep_score=result.deep_score)
        except InputError as exc:
            row["error"] = str(exc)
        except Exception as exc:  # noqa: BLE001 -- a library failure on one case must not end the batch
            row["error"] = f"{type(exc).__name__} in {task.case_id}: {exc}"
        rows.append(row)
    table = pd.DataFrame(rows).reindex(columns=list(PREDICTION_COLUMNS))
    table["error"] = table["error"].fillna("")
    write_csv_atomic(table, Path(output_path))
    return table


def write_image_atomic(image: sitk.Image, path: str | os.PathLike) -> Path:
    """Write an image through a temporary file in the same folder, then rename (never half a file);
    the format follows the file name's suffix (NIfTI, compressed, when it has none)."""
    return write_atomically(path, lambda temporary: sitk.WriteImage(image, str(temporary), useCompression=True),
                            suffix="".join(Path(path).suffixes) or ".nii.gz")
