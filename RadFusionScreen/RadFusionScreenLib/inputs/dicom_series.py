"""Read one DICOM image series into a SimpleITK image whose geometry has been checked.

The slice order comes from ImagePositionPatient projected on the slice normal (the cross
product of the ImageOrientationPatient row and column cosines), never from file names or
InstanceNumber. Before any pixel is read, the series is checked: one orientation, one
matrix size and one pixel spacing for all slices, no duplicate positions, no gantry tilt,
uniform slice steps (a missing slice is reported with its position). SimpleITK (GDCM)
then decodes the pixels in that order, which handles compressed transfer syntaxes, and
the geometry computed here is written onto the result (LPS, as DICOM and ITK use).

Multi-frame (enhanced / legacy converted) files are read frame by frame from their
functional groups; their pixels are decoded by pydicom.

Metadata returned beside the image is deliberately small and holds no patient name, ID,
birth date or other identifying attribute.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

from RadFusionScreenLib.core.errors import DicomSeriesError

# Objects that carry a SeriesInstanceUID but are not a grid of image slices.
NON_IMAGE_MODALITIES = frozenset(
    {"RTSTRUCT", "SEG", "RTPLAN", "RTDOSE", "RTRECORD", "RTIMAGE", "SR", "PR", "KO", "REG", "RWV", "DOC", "FID", "PLAN"}
)
DICOM_SUFFIXES = frozenset({".dcm", ".dicom", ".dic", ".ima"})
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"  # DICOMDIR

POSITION_TOLERANCE_MM = 0.01  # absolute slack on slice positions and steps
RELATIVE_STEP_TOLERANCE = 0.01  # slack on slice steps, as a fraction of the step
ORIENTATION_TOLERANCE = 1e-4  # on direction cosines
SHEAR_TOLERANCE = 0.05  # in-plane drift between slices, as a fraction of the pixel size

_DEFER_BYTES = 1024  # while scanning, larger values (pixel data) are located but not loaded
_PIXEL_DATA_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # Pixel Data, Float, Double Float
_UNDEFINED_LENGTH = 0xFFFFFFFF
_MAX_LISTED = 12


@dataclass(frozen=True)
class SeriesSummary:
    """One series found in a folder: enough to let a person choose it."""

    series_uid: str
    modality: str
    description: str
    is_image: bool
    files: tuple[Path, ...]

    def describe(self) -> str:
        kind = "" if self.is_image else "  [not an image series]"
        return (
            f"SeriesInstanceUID={self.series_uid}  modality={self.modality or '?'}  "
            f"description={self.description!r}  files={len(self.files)}{kind}"
        )


@dataclass(frozen=True)
class _Frame:
    """One 2D plane of a series: a single-frame file, or one frame of a multi-frame file."""

    path: Path
    frame_index: int | None  # None for single-frame files
    position: np.ndarray | None  # ImagePositionPatient (LPS, mm)
    orientation: np.ndarray | None  # ImageOrientationPatient: row cosine, column cosine
    pixel_spacing: tuple[float, float] | None  # (between rows, between columns), mm
    rows: int
    columns: int
    slope: float
    intercept: float
    thickness: float | None  # SpacingBetweenSlices, else SliceThickness: z spacing of a lone slice


@dataclass(frozen=True)
class _Geometry:
    origin: tuple[float, float, float]
    spacing: tuple[float, float, float]
    direction: tuple[float, ...]  # row-major 3x3, columns = axis directions (ITK convention)


# --------------------------------------------------------------------------- scanning


def is_dicom_file(path: str | Path) -> bool:
    """True when the file has the DICOM preamble ('DICM' at byte 128) or a DICOM file suffix."""
    path = Path(path)
    return path.suffix.lower() in DICOM_SUFFIXES or _has_dicom_preamble(path)


def list_series(folder: str | Path) -> list[SeriesSummary]:
    """Every series under ``folder`` (searched recursively), image series first.

    Files that are not DICOM (text files, DICOMDIR, hidden files) are skipped; a file that
    claims to be DICOM but cannot be parsed raises :class:`DicomSeriesError` naming it.
    """
    return [summary for summary, _ in _scan_folder(Path(folder))]


def read_dicom_series(folder: str | Path, series_uid: str | None = None) -> tuple[sitk.Image, dict[str, Any]]:
    """Read the image series in ``folder`` as a 3D image (LPS geometry) plus non-identifying metadata.

    ``series_uid`` chooses a series when the folder holds several image series; without
    it such a folder is refused with a list of the series found.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DicomSeriesError(f"DICOM folder not found: {folder}")
    summary, headers = _choose_series(folder, _scan_folder(folder), series_uid)
    return _build_image(headers, label=f"series {summary.series_uid} in {folder}")


def read_dicom_file(path: str | Path) -> tuple[sitk.Image, dict[str, Any]]:
    """Read one DICOM file (single- or multi-frame) as a 3D image plus non-identifying metadata."""
    path = Path(path)
    if not path.is_file():
        raise DicomSeriesError(f"DICOM file not found: {path}")
    header = _read_header(path, must_be_dicom=True)
    if header is None or not _is_image_object(header):
        raise DicomSeriesError(f"{path} is not a DICOM image ({_object_kind(header)}); an image file is needed")
    return _build_image([header], label=str(path))


def _scan_folder(folder: Path) -> list[tuple[SeriesSummary, list[Dataset]]]:
    by_series: dict[str, list[Dataset]] = defaultdict(list)
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        header = _read_header(path, must_be_dicom=False)
        if header is not None:
            by_series[str(header.SeriesInstanceUID)].append(header)
    found = [_summarise(uid, headers) for uid, headers in by_series.items()]
    return sorted(found, key=lambda item: (not item[0].is_image, item[0].series_uid))


def _summarise(series_uid: str, headers: list[Dataset]) -> tuple[SeriesSummary, list[Dataset]]:
    images = [h for h in headers if _is_image_object(h)]
    kept = images or headers  # stray non-image objects inside an image series are dropped
    first = kept[0]
    summary = SeriesSummary(
        series_uid=series_uid,
        modality=str(first.get("Modality", "") or ""),
        description=str(first.get("SeriesDescription", "") or ""),
        is_image=bool(images),
        files=tuple(Path(h.filename) for h in kept),
    )
    return summary, kept


def _read_header(path: Path, must_be_dicom: bool) -> Dataset | None:
    """Header of a DICOM file, pixel data located but not loaded; None for files that are not DICOM."""
    has_preamble = _has_dicom_preamble(path)
    if not (has_preamble or must_be_dicom or path.suffix.lower() in DICOM_SUFFIXES):
        return None
    try:
        with warnings.catch_warnings():  # vendors' over-long DS/IS strings etc. are harmless here
            warnings.simplefilter("ignore")
            header = pydicom.dcmread(path, defer_size=_DEFER_BYTES, force=not has_preamble)
            _decode_elements(header)
    except Exception as exc:  # pydicom raises many types for damaged files
        raise DicomSeriesError(f"{path}: corrupt or truncated DICOM file ({type(exc).__name__}: {exc})") from exc
    if _sop_class(header) == MEDIA_STORAGE_DIRECTORY:
        return None
    if "SeriesInstanceUID" not in header:
        raise DicomSeriesError(
            f"{path}: unreadable DICOM file: truncated, damaged or not DICOM at all (no SeriesInstanceUID found); "
            "remove or replace it"
        )
    _check_pixel_data_complete(path, header)
    return header


def _decode_elements(header: Dataset) -> None:
    """Decode every element but pixel data now: pydicom decodes lazily, so a damaged value
    representation (a flipped byte: found by the fuzzer) would otherwise fail later, far
    from the file's name."""
    for tag in list(header.keys()):
        if tag not in _PIXEL_DATA_TAGS:
            header[tag]


def _has_dicom_preamble(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def _check_pixel_data_complete(path: Path, header: Dataset) -> None:
    """Image files whose pixel data is missing or shorter than declared are truncated."""
    element = next((header.get_item(tag, keep_deferred=True) for tag in _PIXEL_DATA_TAGS if tag in header), None)
    if element is None:
        if "Image Storage" in _sop_class_name(header) and _modality(header) not in NON_IMAGE_MODALITIES:
            raise DicomSeriesError(f"{path}: truncated DICOM image file (no pixel data); remove or replace it")
        return
    if not isinstance(element, RawDataElement) or element.length == _UNDEFINED_LENGTH:
        return  # already loaded (small) or encapsulated: GDCM reports damage when decoding
    if element.value is not None:
        declared_end, available = element.length, len(element.value)
    else:
        declared_end, available = element.value_tell + element.length, path.stat().st_size
    if available < declared_end:
        raise DicomSeriesError(
            f"{path}: truncated DICOM file (pixel data incomplete: {available} of {declared_end} bytes present); "
            "remove or replace it"
        )


def _sop_class(header: Dataset) -> str:
    meta = getattr(header, "file_meta", None)
    uid = header.get("SOPClassUID") or (meta.get("MediaStorageSOPClassUID") if meta is not None else None)
    return str(uid or "")


def _sop_class_name(header: Dataset) -> str:
    uid = _sop_class(header)
    return pydicom.uid.UID(uid).name if uid else ""


def _modality(header: Dataset) -> str:
    return str(header.get("Modality", "") or "").upper()


def _is_image_object(header: Dataset) -> bool:
    has_pixels = any(tag in header for tag in _PIXEL_DATA_TAGS)
    return has_pixels and "Rows" in header and "Columns" in header and _modality(header) not in NON_IMAGE_MODALITIES


def _object_kind(header: Dataset | None) -> str:
    if header is None:
        return "not a DICOM object"
    modality = _modality(header)
    name = _sop_class_name(header) or "unknown SOP class"
    pixels = "with pixel data" if any(tag in header for tag in _PIXEL_DATA_TAGS) else "no pixel data"
    return f"{modality or 'no modality'}, {name}, {pixels}"


# --------------------------------------------------------------------------- choosing


def _choose_series(
    folder: Path, found: list[tuple[SeriesSummary, list[Dataset]]], series_uid: str | None
) -> tuple[SeriesSummary, list[Dataset]]:
    if not found:
        raise DicomSeriesError(f"no DICOM files found in {folder}")
    if series_uid is not None:
        for summary, headers in found:
            if summary.series_uid == series_uid.strip():
                if not summary.is_image:
                    raise DicomSeriesError(
                        f"series {series_uid} in {folder} is not an image series ({_kinds_of(headers)})"
                    )
                return summary, headers
        raise DicomSeriesError(f"series {series_uid} not found in {folder}; it holds:\n{_listing(found)}")
    images = [item for item in found if item[0].is_image]
    if not images:
        raise DicomSeriesError(
            f"{folder} holds no image series, only non-image DICOM objects:\n{_listing(found)}\n"
            "(a segmentation such as RTSTRUCT or SEG belongs beside an image series, not instead of one)"
        )
    if len(images) > 1:
        raise DicomSeriesError(
            f"{folder} holds {len(images)} image series; choose one with series_uid (CLI: --series-uid):\n"
            f"{_listing(images)}"
        )
    return images[0]


def _listing(found: Iterable[tuple[SeriesSummary, list[Dataset]]]) -> str:
    lines = [f"  - {summary.describe()}" for summary, _ in found]
    if len(lines) > _MAX_LISTED:
        lines = lines[:_MAX_LISTED] + [f"  ... and {len(lines) - _MAX_LISTED} more"]
    return "\n".join(lines)


def _kinds_of(headers: list[Dataset]) -> str:
    kinds = sorted({_object_kind(h) for h in headers})
    return "; ".join(kinds)


# --------------------------------------------------------------------------- frames


def _build_image(headers: list[Dataset], label: str) -> tuple[sitk.Image, dict[str, Any]]:
    frames = [frame for header in headers for frame in _frames_of(header)]
    ordered, geometry = _sorted_geometry(frames, label)
    first = headers[0]
    image = _read_pixels(ordered, first, label)
    image.SetOrigin(geometry.origin)
    image.SetSpacing(geometry.spacing)
    image.SetDirection(geometry.direction)
    return image, _series_metadata(first, len(ordered))


def _frames_of(header: Dataset) -> list[_Frame]:
    path = Path(header.filename)
    count = int(header.get("NumberOfFrames", 1) or 1)
    per_frame = header.get("PerFrameFunctionalGroupsSequence")
    if per_frame is None:
        if count > 1:
            raise DicomSeriesError(
                f"{path}: multi-frame file without per-frame positions (e.g. a cine loop or NM data); "
                "its slices cannot be placed in space"
            )
        return [_frame(path, None, header, ())]
    shared = header.get("SharedFunctionalGroupsSequence")
    shared_item = shared[0] if shared else Dataset()
    return [_frame(path, i, header, (item, shared_item)) for i, item in enumerate(per_frame)]


def _frame(path: Path, index: int | None, header: Dataset, groups: Sequence[Dataset]) -> _Frame:
    try:
        return _parse_frame(path, index, header, groups)
    except (TypeError, ValueError, AttributeError) as exc:  # a damaged number, e.g. "1:5" as a slope
        raise DicomSeriesError(f"{path}: unreadable frame header ({type(exc).__name__}: {exc}); "
                               "the file is damaged: remove or replace it") from exc


def _parse_frame(path: Path, index: int | None, header: Dataset, groups: Sequence[Dataset]) -> _Frame:
    position = _attribute(header, groups, "PlanePositionSequence", "ImagePositionPatient")
    orientation = _attribute(header, groups, "PlaneOrientationSequence", "ImageOrientationPatient")
    spacing = _attribute(header, groups, "PixelMeasuresSequence", "PixelSpacing")
    if spacing is None:
        spacing = header.get("ImagerPixelSpacing")
    slope = _attribute(header, groups, "PixelValueTransformationSequence", "RescaleSlope")
    intercept = _attribute(header, groups, "PixelValueTransformationSequence", "RescaleIntercept")
    thickness = _attribute(header, groups, "PixelMeasuresSequence", "SpacingBetweenSlices") or _attribute(
        header, groups, "PixelMeasuresSequence", "SliceThickness"
    )
    spacing_values = _floats(spacing, 2, path, "PixelSpacing")
    return _Frame(
        path=path,
        frame_index=index,
        position=_floats(position, 3, path, "ImagePositionPatient"),
        orientation=_floats(orientation, 6, path, "ImageOrientationPatient"),
        pixel_spacing=None if spacing_values is None else (float(spacing_values[0]), float(spacing_values[1])),
        rows=int(header.Rows),
        columns=int(header.Columns),
        slope=float(slope) if slope not in (None, "") else 1.0,
        intercept=float(intercept) if intercept not in (None, "") else 0.0,
        thickness=abs(float(thickness)) if thickness not in (None, "") and float(thickness) != 0 else None,
    )


def _attribute(header: Dataset, groups: Sequence[Dataset], sequence: str, keyword: str) -> Any:
    """A value from a functional group (per-frame first, then shared), else from the top level."""
    for group in groups:
        items = group.get(sequence)
        if items and keyword in items[0]:
            return items[0].get(keyword)
    return header.get(keyword)


def _floats(value: Any, count: int, path: Path, keyword: str) -> np.ndarray | None:
    if value is None or value == "":
        return None
    items = [value] if isinstance(value, (str, bytes)) or not isinstance(value, Iterable) else list(value)
    try:
        values = np.array([float(v) for v in items])
    except (TypeError, ValueError):
        values = np.array([])
    if values.size != count or not np.all(np.isfinite(values)):
        raise DicomSeriesError(f"{path}: {keyword} must hold {count} numbers, found {items!r}")
    return values


# --------------------------------------------------------------------------- geometry


def _sorted_geometry(frames: list[_Frame], label: str) -> tuple[list[_Frame], _Geometry]:
    """Frames in ascending position along the slice normal, and the grid they form."""
    _check_same_matrix(frames, label)
    if len(frames) == 1:
        return frames, _single_slice_geometry(frames[0])
    _check_positions_present(frames, label)
    _check_same_orientation(frames, label)
    row, column, normal = _axes(frames[0])
    distances = np.array([float(f.position @ normal) for f in frames])
    order = np.argsort(distances, kind="stable")
    frames, distances = [frames[i] for i in order], distances[order]
    _check_no_duplicates(frames, distances, label)
    _check_no_shear(frames, normal, label)
    _check_uniform_steps(frames, distances, label)
    row_spacing, column_spacing = frames[0].pixel_spacing
    step = (distances[-1] - distances[0]) / (len(frames) - 1)
    return frames, _Geometry(
        origin=tuple(float(v) for v in frames[0].position),
        spacing=(column_spacing, row_spacing, float(step)),
        direction=_direction(row, column, normal),
    )


def _single_slice_geometry(frame: _Frame) -> _Geometry:
    """A lone slice: its own position and orientation when present, else identity at the origin."""
    row_spacing, column_spacing = frame.pixel_spacing or (1.0, 1.0)
    spacing = (column_spacing, row_spacing, frame.thickness or 1.0)
    if frame.orientation is None:
        return _Geometry((0.0, 0.0, 0.0), spacing, tuple(float(v) for v in np.eye(3).ravel()))
    row, column, normal = _axes(frame)
    origin = tuple(float(v) for v in frame.position) if frame.position is not None else (0.0, 0.0, 0.0)
    return _Geometry(origin, spacing, _direction(row, column, normal))


def _axes(frame: _Frame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    row, column = frame.orientation[:3], frame.orientation[3:]
    if abs(np.linalg.norm(row) - 1) > 1e-3 or abs(np.linalg.norm(column) - 1) > 1e-3 or abs(row @ column) > 1e-3:
        raise DicomSeriesError(
            f"{frame.path}: ImageOrientationPatient {list(frame.orientation)} is not two orthogonal unit vectors"
        )
    row, column = row / np.linalg.norm(row), column / np.linalg.norm(column)
    normal = np.cross(row, column)
    return row, column, normal / np.linalg.norm(normal)


def _direction(row: np.ndarray, column: np.ndarray, normal: np.ndarray) -> tuple[float, ...]:
    # ITK's direction matrix holds the axis directions as columns: x = row cosine, y = column cosine.
    return tuple(float(v) for v in np.column_stack([row, column, normal]).ravel())


def _check_same_matrix(frames: list[_Frame], label: str) -> None:
    first = frames[0]
    for frame in frames[1:]:
        if (frame.rows, frame.columns) != (first.rows, first.columns):
            raise DicomSeriesError(
                f"{label}: slices differ in size: {_where(first)} is {first.rows}x{first.columns}, "
                f"{_where(frame)} is {frame.rows}x{frame.columns} (rows x columns)"
            )
        if (frame.pixel_spacing is None) != (first.pixel_spacing is None) or (
            frame.pixel_spacing is not None
            and not np.allclose(frame.pixel_spacing, first.pixel_spacing, rtol=1e-4, atol=1e-6)
        ):
            raise DicomSeriesError(
                f"{label}: slices differ in PixelSpacing: {_where(first)} has {first.pixel_spacing}, "
                f"{_where(frame)} has {frame.pixel_spacing}"
            )
    if first.pixel_spacing is not None and min(first.pixel_spacing) <= 0:
        raise DicomSeriesError(f"{label}: PixelSpacing {first.pixel_spacing} must be positive ({_where(first)})")


def _check_positions_present(frames: list[_Frame], label: str) -> None:
    for frame in frames:
        if frame.position is None or frame.orientation is None or frame.pixel_spacing is None:
            raise DicomSeriesError(
                f"{label}: {_where(frame)} lacks ImagePositionPatient, ImageOrientationPatient or PixelSpacing; "
                "the slices of a multi-slice series cannot be ordered without them"
            )


def _check_same_orientation(frames: list[_Frame], label: str) -> None:
    first = frames[0]
    for frame in frames[1:]:
        if np.max(np.abs(frame.orientation - first.orientation)) > ORIENTATION_TOLERANCE:
            raise DicomSeriesError(
                f"{label}: slices differ in ImageOrientationPatient: {_where(first)} has "
                f"{list(first.orientation)}, {_where(frame)} has {list(frame.orientation)} "
                "(a localizer or several stacks in one series?)"
            )


def _check_no_duplicates(frames: list[_Frame], distances: np.ndarray, label: str) -> None:
    for i in np.flatnonzero(np.diff(distances) <= POSITION_TOLERANCE_MM):
        raise DicomSeriesError(
            f"{label}: two slices at the same position {distances[i]:.3f} mm along the normal: "
            f"{_where(frames[i])} and {_where(frames[i + 1])} (several phases or echoes in one series?)"
        )


def _check_no_shear(frames: list[_Frame], normal: np.ndarray, label: str) -> None:
    """Slice origins must lie on one line along the normal; gantry tilt makes a sheared grid."""
    offsets = np.array([f.position - frames[0].position for f in frames])
    in_plane = offsets - np.outer(offsets @ normal, normal)
    drift = np.linalg.norm(in_plane, axis=1)
    limit = max(POSITION_TOLERANCE_MM, SHEAR_TOLERANCE * min(frames[0].pixel_spacing))
    worst = int(np.argmax(drift))
    if drift[worst] > limit:
        raise DicomSeriesError(
            f"{label}: slice origins drift {drift[worst]:.3f} mm sideways ({_where(frames[worst])} vs "
            f"{_where(frames[0])}): gantry tilt or a sheared stack, which a regular voxel grid cannot represent"
        )


def _check_uniform_steps(frames: list[_Frame], distances: np.ndarray, label: str) -> None:
    steps = np.diff(distances)
    expected = float(steps.min())  # a gap only ever makes a step longer
    limit = max(POSITION_TOLERANCE_MM, RELATIVE_STEP_TOLERANCE * expected)
    bad = np.flatnonzero(np.abs(steps - expected) > limit)
    if bad.size == 0:
        return
    i = int(bad[0])
    ratio = steps[i] / expected
    if abs(ratio - round(ratio)) * expected <= limit:
        what = f"missing slice(s): about {round(ratio) - 1} slice(s) absent"
    else:
        what = "non-uniform slice spacing"
    raise DicomSeriesError(
        f"{label}: {what} between position {distances[i]:.3f} mm ({_where(frames[i])}) and "
        f"{distances[i + 1]:.3f} mm ({_where(frames[i + 1])}) along the slice normal: step {steps[i]:.3f} mm, "
        f"expected {expected:.3f} mm ({bad.size} irregular step(s) in {len(frames)} slices)"
    )


def _where(frame: _Frame) -> str:
    return frame.path.name if frame.frame_index is None else f"{frame.path.name} frame {frame.frame_index + 1}"


# --------------------------------------------------------------------------- pixels

_INTEGER_TYPES = (
    (sitk.sitkUInt8, 0, 255),
    (sitk.sitkInt16, -(2**15), 2**15 - 1),
    (sitk.sitkUInt16, 0, 2**16 - 1),
    (sitk.sitkInt32, -(2**31), 2**31 - 1),
)
_NUMPY_TYPES = {
    sitk.sitkUInt8: np.uint8,
    sitk.sitkInt16: np.int16,
    sitk.sitkInt32: np.int32,
    sitk.sitkFloat32: np.float32,
    sitk.sitkFloat64: np.float64,
}


def _read_pixels(frames: list[_Frame], first: Dataset, label: str) -> sitk.Image:
    """Rescaled pixel values in the given frame order, as a 3D image (colour becomes grey)."""
    is_colour = int(first.get("SamplesPerPixel", 1) or 1) > 1
    pixel_type = _output_pixel_type(frames, first)
    # Types wider than int16 are read as int32 and narrowed when the actual values allow.
    read_type = sitk.sitkInt32 if pixel_type in (sitk.sitkUInt16, sitk.sitkInt32) else pixel_type
    multi_frame = [f.frame_index is not None for f in frames]
    if all(multi_frame):
        image = _read_multiframe_pixels(frames, None if is_colour else read_type, label)
    elif not any(multi_frame):
        image = _read_single_frame_files(frames, None if is_colour else read_type, label)
    else:
        raise DicomSeriesError(f"{label}: mixes single-frame and multi-frame files; read them separately")
    expected = (frames[0].columns, frames[0].rows, len(frames))
    if image.GetSize() != expected:
        raise DicomSeriesError(f"{label}: decoded pixel grid {image.GetSize()} differs from the headers' {expected}")
    if image.GetPixelID() == sitk.sitkInt32:
        return _narrow_integer(image)
    return image


def _output_pixel_type(frames: list[_Frame], first: Dataset) -> int:
    """float32 when rescaling is fractional or varies by slice; else an integer type that fits every value."""
    slopes = {f.slope for f in frames}
    intercepts = {f.intercept for f in frames}
    if len(slopes) > 1 or len(intercepts) > 1 or any(not float(v).is_integer() for v in slopes | intercepts):
        return sitk.sitkFloat32
    bits = int(first.get("BitsStored", first.get("BitsAllocated", 16)) or 16)
    signed = int(first.get("PixelRepresentation", 0) or 0) == 1
    stored = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    slope, intercept = slopes.pop(), intercepts.pop()
    low, high = sorted(slope * v + intercept for v in stored)
    for pixel_type, type_low, type_high in _INTEGER_TYPES:
        if type_low <= low and high <= type_high:
            return pixel_type
    return sitk.sitkFloat64


def _read_single_frame_files(frames: list[_Frame], read_type: int | None, label: str) -> sitk.Image:
    """Decode with SimpleITK/GDCM (any transfer syntax); ``read_type`` None keeps colour pixels."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f.path) for f in frames])  # our order, never file-name order
    if read_type is not None:
        reader.SetOutputPixelType(read_type)
    try:
        image = reader.Execute()  # GDCM applies each file's own RescaleSlope/Intercept
    except RuntimeError as exc:
        raise DicomSeriesError(f"{label}: pixel data could not be decoded ({_first_line(exc)})") from exc
    if image.GetDimension() == 2:
        image = sitk.JoinSeries(image)
    return rgb_to_luminance(image) if read_type is None else image


def _read_multiframe_pixels(frames: list[_Frame], read_type: int | None, label: str) -> sitk.Image:
    """Decode with pydicom and rescale frame by frame; ``read_type`` None keeps colour pixels."""
    decoded: dict[Path, np.ndarray] = {}
    planes = []
    for frame in frames:
        if frame.path not in decoded:
            decoded[frame.path] = _decode_frames(frame.path, label)
        plane = decoded[frame.path][frame.frame_index]
        planes.append(plane if read_type is None else plane * frame.slope + frame.intercept)
    if read_type is None:
        return rgb_to_luminance(sitk.GetImageFromArray(np.stack(planes), isVector=True))
    return sitk.GetImageFromArray(np.stack(planes).astype(_NUMPY_TYPES[read_type]))


def _decode_frames(path: Path, label: str) -> np.ndarray:
    """Stored (not rescaled) values of every frame of a file: (frames, rows, columns[, samples])."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dataset = pydicom.dcmread(path)
            pixels = dataset.pixel_array
    except Exception as exc:
        raise DicomSeriesError(
            f"{label}: pixel data of multi-frame file {path.name} could not be decoded "
            f"({type(exc).__name__}: {_first_line(exc)})"
        ) from exc
    return pixels if int(dataset.get("NumberOfFrames", 1) or 1) > 1 else pixels[np.newaxis]


def _narrow_integer(image: sitk.Image) -> sitk.Image:
    """int32 becomes int16 when the values allow (CT is often stored unsigned with an intercept)."""
    values = sitk.GetArrayViewFromImage(image)
    if values.size and values.min() >= -(2**15) and values.max() < 2**15:
        return sitk.Cast(image, sitk.sitkInt16)
    return image


def rgb_to_luminance(image: sitk.Image) -> sitk.Image:
    """Grey value of an RGB(A) image (ITU-R BT.601 weights, as most viewers use); integer input stays integer."""
    channels = sitk.GetArrayViewFromImage(image)
    grey = channels[..., 0] * 0.299 + channels[..., 1] * 0.587 + channels[..., 2] * 0.114
    if np.issubdtype(channels.dtype, np.integer):
        grey = np.rint(grey).astype(channels.dtype)
    result = sitk.GetImageFromArray(grey)
    result.CopyInformation(image)
    return result


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


# --------------------------------------------------------------------------- metadata


def _series_metadata(first: Dataset, slice_count: int) -> dict[str, Any]:
    """Descriptive, non-identifying attributes of the series (no patient name, ID or dates)."""

    def text(keyword: str) -> str:
        return str(first.get(keyword, "") or "").strip()

    return {
        "Modality": text("Modality"),
        "SeriesInstanceUID": text("SeriesInstanceUID"),
        "SeriesDescription": text("SeriesDescription"),
        "Manufacturer": text("Manufacturer"),
        "ManufacturerModelName": text("ManufacturerModelName"),
        "NumberOfSlices": slice_count,
    }
