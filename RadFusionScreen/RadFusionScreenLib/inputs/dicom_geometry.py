"""The planes of a DICOM series (single-frame files, or the frames of multi-frame files) and the
voxel grid they form, checked before any pixel is read.

The slice order comes from ImagePositionPatient projected on the slice normal (the cross
product of the ImageOrientationPatient row and column cosines), never from file names or
InstanceNumber. All slices must share one orientation, one matrix size and one pixel spacing,
with no duplicate positions, no gantry tilt and uniform slice steps (a missing slice is
reported with its position). The grid is LPS, as DICOM and ITK use. Multi-frame (enhanced /
legacy converted) files give one plane per frame, from their functional groups.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from RadFusionScreenLib.core.errors import DicomSeriesError

POSITION_TOLERANCE_MM = 0.01  # absolute slack on slice positions and steps
RELATIVE_STEP_TOLERANCE = 0.01  # slack on slice steps, as a fraction of the step
ORIENTATION_TOLERANCE = 1e-4  # on direction cosines
SHEAR_TOLERANCE = 0.05  # in-plane drift between slices, as a fraction of the pixel size


@dataclass(frozen=True)
class Frame:
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


def frames_of(header: Dataset) -> list[Frame]:
    """The planes of one file: the file itself, or each frame of a multi-frame file."""
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


def _frame(path: Path, index: int | None, header: Dataset, groups: Sequence[Dataset]) -> Frame:
    try:
        return _parse_frame(path, index, header, groups)
    except (TypeError, ValueError, AttributeError) as exc:  # a damaged number, e.g. "1:5" as a slope
        raise DicomSeriesError(f"{path}: unreadable frame header ({type(exc).__name__}: {exc}); "
                               "the file is damaged: remove or replace it") from exc


def _parse_frame(path: Path, index: int | None, header: Dataset, groups: Sequence[Dataset]) -> Frame:
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
    return Frame(
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


def sorted_geometry(frames: list[Frame], label: str) -> tuple[list[Frame], _Geometry]:
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


def _single_slice_geometry(frame: Frame) -> _Geometry:
    """A lone slice: its own position and orientation when present, else identity at the origin."""
    row_spacing, column_spacing = frame.pixel_spacing or (1.0, 1.0)
    spacing = (column_spacing, row_spacing, frame.thickness or 1.0)
    if frame.orientation is None:
        return _Geometry((0.0, 0.0, 0.0), spacing, tuple(float(v) for v in np.eye(3).ravel()))
    row, column, normal = _axes(frame)
    origin = tuple(float(v) for v in frame.position) if frame.position is not None else (0.0, 0.0, 0.0)
    return _Geometry(origin, spacing, _direction(row, column, normal))


def _axes(frame: Frame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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


def _check_same_matrix(frames: list[Frame], label: str) -> None:
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


def _check_positions_present(frames: list[Frame], label: str) -> None:
    for frame in frames:
        if frame.position is None or frame.orientation is None or frame.pixel_spacing is None:
            raise DicomSeriesError(
                f"{label}: {_where(frame)} lacks ImagePositionPatient, ImageOrientationPatient or PixelSpacing; "
                "the slices of a multi-slice series cannot be ordered without them"
            )


def _check_same_orientation(frames: list[Frame], label: str) -> None:
    first = frames[0]
    for frame in frames[1:]:
        if np.max(np.abs(frame.orientation - first.orientation)) > ORIENTATION_TOLERANCE:
            raise DicomSeriesError(
                f"{label}: slices differ in ImageOrientationPatient: {_where(first)} has "
                f"{list(first.orientation)}, {_where(frame)} has {list(frame.orientation)} "
                "(a localizer or several stacks in one series?)"
            )


def _check_no_duplicates(frames: list[Frame], distances: np.ndarray, label: str) -> None:
    for i in np.flatnonzero(np.diff(distances) <= POSITION_TOLERANCE_MM):
        raise DicomSeriesError(
            f"{label}: two slices at the same position {distances[i]:.3f} mm along the normal: "
            f"{_where(frames[i])} and {_where(frames[i + 1])} (several phases or echoes in one series?)"
        )


def _check_no_shear(frames: list[Frame], normal: np.ndarray, label: str) -> None:
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


def _check_uniform_steps(frames: list[Frame], distances: np.ndarray, label: str) -> None:
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


def _where(frame: Frame) -> str:
    return frame.path.name if frame.frame_index is None else f"{frame.path.name} frame {frame.frame_index + 1}"
