"""The header of a DICOM SEG or RTSTRUCT file: what kind it is, the series and instances it
references (to find its volume) and the display colour of each segment / ROI."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.uid import RTStructureSetStorage, SegmentationStorage

from RadFusionScreenLib.core.errors import MaskError


@dataclass(frozen=True)
class MaskObject:
    """A SEG or RTSTRUCT file and what it references."""

    path: Path
    kind: str
    sop_instance_uid: str
    series_uid: str
    description: str
    referenced_series_uids: tuple[str, ...]
    referenced_instance_uids: frozenset[str]
    colors: dict[int, tuple[float, float, float]]  # segment / ROI number -> RGB 0..1


def read_mask_object(path: str | Path) -> MaskObject | None:
    """The header of a SEG / RTSTRUCT file (None for any other DICOM object); MaskError when it
    cannot be read."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            header = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        kind = mask_kind(str(header.get("Modality", "") or "").strip().upper(), str(header.get("SOPClassUID", "")))
        if kind is None:
            return None
        series, instances = (_seg_references if kind == "SEG" else _rtstruct_references)(header)
        return MaskObject(
            path=path, kind=kind, sop_instance_uid=str(header.get("SOPInstanceUID", "") or ""),
            series_uid=str(header.get("SeriesInstanceUID", "") or ""),
            description=str(header.get("SeriesDescription", "") or "").strip(),
            referenced_series_uids=tuple(dict.fromkeys(series)), referenced_instance_uids=frozenset(instances),
            colors=_seg_colors(header) if kind == "SEG" else _rtstruct_colors(header),
        )
    except Exception as exc:  # pydicom decodes lazily: damage surfaces as many exception types
        raise MaskError(f"{path}: not readable as a DICOM SEG/RTSTRUCT header ({type(exc).__name__}: {exc})") from exc


def mask_kind(modality: str, sop_class_uid: str) -> str | None:
    """"SEG" or "RTSTRUCT" by modality or SOP class; None for any other object."""
    if modality == "SEG" or sop_class_uid == SegmentationStorage:
        return "SEG"
    if modality == "RTSTRUCT" or sop_class_uid == RTStructureSetStorage:
        return "RTSTRUCT"
    return None


def _items(dataset: Any, keyword: str) -> list[Any]:
    return list(dataset.get(keyword) or []) if dataset is not None else []


def _uid(item: Any, keyword: str) -> list[str]:
    value = str(item.get(keyword, "") or "").strip()
    return [value] if value else []


def _seg_references(header: Any) -> tuple[list[str], list[str]]:
    series, instances = [], []
    for item in _items(header, "ReferencedSeriesSequence"):
        series += _uid(item, "SeriesInstanceUID")
        for instance in _items(item, "ReferencedInstanceSequence"):
            instances += _uid(instance, "ReferencedSOPInstanceUID")
    groups = _items(header, "SharedFunctionalGroupsSequence") + _items(header, "PerFrameFunctionalGroupsSequence")
    for group in groups:
        for derivation in _items(group, "DerivationImageSequence"):
            for source in _items(derivation, "SourceImageSequence"):
                instances += _uid(source, "ReferencedSOPInstanceUID")
    return series, instances


def _rtstruct_references(header: Any) -> tuple[list[str], list[str]]:
    series, instances = [], []
    for frame in _items(header, "ReferencedFrameOfReferenceSequence"):
        for study in _items(frame, "RTReferencedStudySequence"):
            for item in _items(study, "RTReferencedSeriesSequence"):
                series += _uid(item, "SeriesInstanceUID")
                for image in _items(item, "ContourImageSequence"):
                    instances += _uid(image, "ReferencedSOPInstanceUID")
    for roi in _items(header, "ROIContourSequence"):
        for contour in _items(roi, "ContourSequence"):
            for image in _items(contour, "ContourImageSequence"):
                instances += _uid(image, "ReferencedSOPInstanceUID")
    return series, instances


def _seg_colors(header: Any) -> dict[int, tuple[float, float, float]]:
    colors = {}
    for segment in _items(header, "SegmentSequence"):
        value = segment.get("RecommendedDisplayCIELabValue")
        try:
            colors[int(segment.SegmentNumber)] = dicom_lab_to_rgb([float(v) for v in value])
        except (AttributeError, TypeError, ValueError):
            continue  # no or malformed colour: Slicer picks one
    return colors


def _rtstruct_colors(header: Any) -> dict[int, tuple[float, float, float]]:
    colors = {}
    for roi in _items(header, "ROIContourSequence"):
        try:
            red, green, blue = (min(max(float(v) / 255.0, 0.0), 1.0) for v in roi.ROIDisplayColor)
            colors[int(roi.ReferencedROINumber)] = (red, green, blue)
        except (AttributeError, TypeError, ValueError):
            continue
    return colors


_D65_WHITE = np.array([0.950456, 1.0, 1.088754])  # reference white of DICOM CIELab (as DCMTK's cielabutil)
_XYZ_TO_LINEAR_SRGB = np.array([[3.2404542, -1.5371385, -0.4985314],
                                [-0.9692660, 1.8760108, 0.0415560],
                                [0.0556434, -0.2040259, 1.0572252]])


def dicom_lab_to_rgb(value: Sequence[float]) -> tuple[float, float, float]:
    """DICOM-encoded CIELab (PS3.3 C.10.7.1.1: three 0..65535 integers) to sRGB in 0..1."""
    if len(value) != 3:
        raise ValueError(f"CIELab needs 3 values, got {len(value)}")
    lightness = value[0] * 100.0 / 65535.0
    a, b = (v * 255.0 / 65535.0 - 128.0 for v in value[1:])
    fy = (lightness + 16.0) / 116.0
    f = np.array([fy + a / 500.0, fy, fy - b / 200.0])
    xyz = _D65_WHITE * np.where(f ** 3 > 216.0 / 24389.0, f ** 3, (116.0 * f - 16.0) * 27.0 / 24389.0)
    linear = np.clip(_XYZ_TO_LINEAR_SRGB @ xyz, 0.0, 1.0)
    rgb = np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055)
    red, green, blue = (float(v) for v in np.clip(rgb, 0.0, 1.0))
    return red, green, blue
