"""IBSI 1 reference comparisons shared by test_ibsi.py and benchmarks/ibsi_report.py.

Reference values: ../shared/data/ibsi/ibsi_1_reference_values/*.csv (``value;tolerance;tag``).
A value matches when |value - reference| <= tolerance, or when it rounds to the reference at
3 significant digits (the precision the consensus values are published with).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import yaml

from RadFusionScreenLib.features.ibsi import FAMILIES, to_ibsi
from RadFusionScreenLib.features.radiomic import PARAMS_DIR, RadiomicExtractor

IBSI_PARAMS = PARAMS_DIR / "ibsi"
REPORT_FAMILIES = (*FAMILIES, "other", "diagnostics")
PHANTOM_VARIANTS = ("3D", "2_5D", "3D_comb", "2_5D_comb")


@dataclass(frozen=True)
class Config:
    """One IBSI 1 CT-phantom configuration (IBSI 1 reference manual, configurations A-E)."""

    name: str
    spacing: tuple[float, float, float] | None  # IBSI interpolation target; 0 keeps the axis
    interpolator: int | None  # SimpleITK interpolator of the image
    range_hu: tuple[float, float] | None  # re-segmentation range
    outlier_sd: float | None  # intensity outlier filter: mean +- n sd (after the range)


CONFIGS = {
    "A": Config("A", None, None, (-500, 400), None),
    "B": Config("B", (2.0, 2.0, 0.0), sitk.sitkLinear, (-500, 400), None),
    "C": Config("C", (2.0, 2.0, 2.0), sitk.sitkLinear, (-1000, 400), None),
    "D": Config("D", (2.0, 2.0, 2.0), sitk.sitkLinear, None, 3.0),
    "E": Config("E", (2.0, 2.0, 2.0), sitk.sitkBSpline, (-1000, 400), 3.0),
}


def load_reference(path: Path) -> dict[str, tuple[float, float]]:
    """tag → (reference value, tolerance); tags without a reference value are left out."""
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle, delimiter=";"))
    return {row[2]: (float(row[0]), float(row[1])) for row in rows[1:] if row and row[0].strip()}


def matches(value: float, reference: float, tolerance: float) -> bool:
    return abs(value - reference) <= tolerance or float(f"{value:.3g}") == reference


_DIAGNOSTIC_PREFIXES = ("img_", "vox_", "mean_int", "min_int", "max_int", "int_mask", "morph_mask")


def family_of(tag: str) -> str:
    """IBSI family of a tag; ``other`` for feature families pyradiomics lacks (loc, ivh, dzm),
    ``diagnostics`` for the image / mask checks (dimensions, voxel counts) that are no features."""
    if tag.startswith(_DIAGNOSTIC_PREFIXES):
        return "diagnostics"
    prefix = tag.split("_", 1)[0]
    return prefix if prefix in FAMILIES else "other"


@dataclass
class FamilyCount:
    reference: int = 0  # reference tags with a value
    compared: int = 0  # ... that we produce
    matched: int = 0
    mismatched: list[str] = field(default_factory=list)

    @property
    def not_mappable(self) -> int:
        return self.reference - self.compared


def compare(got: dict[str, float], reference: dict[str, tuple[float, float]]) -> dict[str, FamilyCount]:
    """Per family: reference tags, compared, matched and the mismatched tags."""
    unknown = sorted(set(got) - set(reference))
    if unknown:
        raise AssertionError(f"tags without a reference entry (mapping typo?): {unknown}")
    counts = {family: FamilyCount() for family in REPORT_FAMILIES}
    for tag, (ref, tol) in reference.items():
        count = counts[family_of(tag)]
        count.reference += 1
        if tag in got:
            count.compared += 1
            if matches(got[tag], ref, tol):
                count.matched += 1
            else:
                count.mismatched.append(tag)
    return counts


def totals(counts: dict[str, FamilyCount]) -> FamilyCount:
    total = FamilyCount()
    for family, count in counts.items():
        if family == "diagnostics":
            continue
        total.reference += count.reference
        total.compared += count.compared
        total.matched += count.matched
        total.mismatched += count.mismatched
    return total


def ibsi_values(params: Path | dict[str, Any], image: sitk.Image, mask: sitk.Image) -> dict[str, float]:
    extractor = RadiomicExtractor(params)
    return to_ibsi(extractor.execute(image, mask), extractor.settings)


def phantom_values(image: sitk.Image, mask: sitk.Image) -> dict[str, float]:
    """Digital phantom, all shipped variants (3D / 2.5D, averaged / merged directions)."""
    values: dict[str, float] = {}
    for variant in PHANTOM_VARIANTS:
        values.update(ibsi_values(IBSI_PARAMS / f"phantom_{variant}.yaml", image, mask))
    return values


def config_params(name: str, merged_directions: bool = False) -> dict[str, Any]:
    params = yaml.safe_load((IBSI_PARAMS / f"ct_config_{name}.yaml").read_text())
    if merged_directions:  # IBSI "_comb": one matrix from all directions (GLCM / GLRLM only)
        params["featureClass"] = {"glcm": None, "glrlm": None}
        params["setting"]["weightingNorm"] = "no_weighting"
    return params


MODES = {
    "params": "shipped params YAML as is (pyradiomics resamples and re-segments)",
    "ibsi_grid": "IBSI-manual interpolation first, then the shipped params without resampling",
    "ibsi_grid_reseg": "IBSI-manual interpolation and two-step re-segmentation, then the shipped params",
}


def config_values(name: str, image: sitk.Image, mask: sitk.Image, mode: str = "params") -> dict[str, float]:
    """CT phantom features for configuration ``name`` (directions averaged and merged).

    ``mode`` (see :data:`MODES`): ``params`` is what a user of the shipped YAML gets; the two
    ``ibsi_grid`` modes are diagnostics that redo, outside pyradiomics, the pre-processing steps
    pyradiomics cannot express (:func:`ibsi_preprocess`). What still differs after them is not
    due to interpolation (or re-segmentation).
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}")
    values: dict[str, float] = {}
    if mode != "params":
        image, mask, thresholds = ibsi_preprocess(CONFIGS[name], image, mask)
    for merged in (False, True):
        params = config_params(name, merged)
        if mode != "params":
            params["setting"].pop("resampledPixelSpacing", None)
        if mode == "ibsi_grid_reseg":
            params["setting"].pop("resegmentMode", None)
            params["setting"]["resegmentRange"] = thresholds
        values.update(ibsi_values(params, image, mask))
    return values


def ibsi_preprocess(config: Config, image: sitk.Image, mask: sitk.Image):
    """IBSI-manual interpolation and re-segmentation (for the diagnostic only).

    Grid centres aligned, image interpolated and rounded to integers (CT), mask interpolated
    linearly and thresholded at 0.5; re-segmentation range then outlier filter, expressed as one
    absolute pyradiomics range [lower, upper].
    """
    if config.spacing is not None:
        image, mask = _ibsi_resample(image, mask, config.spacing, config.interpolator)
    values = sitk.GetArrayViewFromImage(image)[sitk.GetArrayViewFromImage(mask) > 0]
    lower, upper = config.range_hu if config.range_hu else (-np.inf, np.inf)
    kept = values[(values >= lower) & (values <= upper)]
    if config.outlier_sd is not None:
        mean, sd = float(kept.mean()), float(kept.std())
        lower = max(lower, mean - config.outlier_sd * sd)
        upper = min(upper, mean + config.outlier_sd * sd)
    return image, mask, [float(lower), float(upper)]


def _ibsi_resample(image: sitk.Image, mask: sitk.Image, spacing, interpolator):
    old = np.array(image.GetSpacing())
    new = np.where(np.array(spacing) == 0, old, spacing)
    size_old = np.array(image.GetSize())
    size_new = np.ceil(size_old * old / new).astype(int)
    shift = (old * (size_old - 1) - new * (size_new - 1)) / 2.0  # centre of new grid = centre of old
    direction = np.array(image.GetDirection()).reshape(3, 3)
    origin = np.array(image.GetOrigin()) + direction @ shift

    def resample(img: sitk.Image, method: int) -> sitk.Image:
        return sitk.Resample(img, size_new.tolist(), sitk.Transform(), method, origin.tolist(), new.tolist(),
                             image.GetDirection(), 0.0, sitk.sitkFloat64)

    image_new = sitk.Cast(sitk.Round(resample(image, interpolator)), sitk.sitkFloat32)
    mask_new = sitk.Cast(resample(sitk.Cast(mask, sitk.sitkFloat64), sitk.sitkLinear) >= 0.5, sitk.sitkUInt8)
    return image_new, mask_new
