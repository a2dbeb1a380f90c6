"""Masks from DICOM segmentation objects: SEG (voxel frames) and RTSTRUCT (planar contours).

Both are placed on the voxel grid of the image they segment (the ``reference``, as read by
:func:`.images.read_image`: LPS, slices sorted along the normal), so the result is a uint8 0/1
image with exactly the reference's geometry and nothing is ever resampled:

- **SEG** frames carry their own ImagePositionPatient; each is mapped to a slice of the
  reference. A frame must lie on that grid: same in-plane orientation and pixel spacing,
  an in-plane offset of whole pixels (within :data:`IN_PLANE_TOLERANCE`) and a position
  within :data:`SLICE_TOLERANCE` of a slice plane. 1-bit BINARY pixel data is unpacked
  here, because frames whose Rows*Columns is not a multiple of 8 are packed continuously
  across frame boundaries; FRACTIONAL segments are thresholded at half their
  MaximumFractionalValue (a voxel at least half inside belongs to the mask).
- **RTSTRUCT** closed planar contours (mm, LPS) are turned into continuous voxel indices
  of the reference and filled slice by slice with the even-odd rule, so an inner contour
  cuts a hole and a contour inside that hole is an island again, as in most planning
  systems. A pixel belongs to a contour when its centre lies inside it; a centre exactly
  on the outline counts as inside on the low-index side (left, low row) and outside on
  the high-index side. This half-open rule makes the pixel count an unbiased estimate of
  the contour's area and lets abutting contours share no pixel.

The slice tolerance is a quarter of a slice, not a half: a structure drawn on a finer or
shifted grid would otherwise be snapped silently onto the nearest slices (and two contour
planes falling on one slice would cancel each other under the even-odd rule).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset

from RadFusionScreenLib.core.errors import InputError, MaskError, RadFusionError
from RadFusionScreenLib.inputs.dicom_files import is_dicom_file

MASK_MODALITIES = ("SEG", "RTSTRUCT")
SLICE_TOLERANCE = 0.25  # of the slice step: how far a frame or contour plane may lie from a slice
IN_PLANE_TOLERANCE = 0.1  # of a pixel: how far a SEG frame's corner may lie from a pixel centre
SPACING_TOLERANCE = 1e-3  # relative, on pixel spacing
ORIENTATION_TOLERANCE = 1e-3  # on direction cosines (DS values keep about 7 significant digits)
FRACTIONAL_THRESHOLD = 0.5  # of MaximumFractionalValue
_INDEX_DECIMALS = 6  # continuous indices are rounded so that float noise cannot move a boundary pixel
_MAX_LISTED = 40


# --------------------------------------------------------------------------- finding


def dicom_mask_modality(path: str | Path) -> str | None:
    """'SEG' or 'RTSTRUCT' when ``path`` is such a DICOM file, else None (cheap: reads one tag)."""
    path = Path(path)
    if not path.is_file() or not is_dicom_file(path):
        return None
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Modality"], force=True)
    except Exception:  # not DICOM after all: the image readers will say what it is
        return None
    modality = str(header.get("Modality", "") or "").strip().upper()
    return modality if modality in MASK_MODALITIES else None


def find_dicom_mask(path: str | Path) -> Path | None:
    """The SEG/RTSTRUCT file that ``path`` names: the file itself, or the only one in a folder.

    None when there is none (the path is an ordinary image or label volume); a folder
    holding several such objects is refused with their names, since guessing would pick
    an arbitrary structure set.
    """
    path = Path(path)
    if path.is_file():
        return path if dicom_mask_modality(path) else None
    if not path.is_dir():
        return None
    found = [p for p in sorted(path.rglob("*")) if not p.name.startswith(".") and dicom_mask_modality(p)]
    if len(found) > 1:
        names = ", ".join(f"{p.relative_to(path)} ({dicom_mask_modality(p)})" for p in found[:_MAX_LISTED])
        raise MaskError(f"{path} holds {len(found)} DICOM SEG/RTSTRUCT objects ({names}); pass one file as the mask")
    return found[0] if found else None


# --------------------------------------------------------------------------- public API


def list_segments(path: str | Path) -> list[tuple[int, str]]:
    """(number, name) of every segment of a SEG, or every ROI of an RTSTRUCT, in file order."""
    path = _mask_file(path)
    with _damage_reported(path):
        return _segments(_read_dataset(path))


def read_dicom_mask(path: str | Path, reference: sitk.Image, segment: str | int | None = None) -> sitk.Image:
    """One segment / ROI of a SEG or RTSTRUCT as a uint8 0/1 mask on ``reference``'s voxel grid.

    ``segment`` is a segment number or name (names are matched exactly, then ignoring
    case; a string of digits that names nothing is taken as a number). It may be omitted
    only when the object holds a single segment. Raises :class:`MaskError` with the list
    of available segments when the choice is missing, unknown or ambiguous, and when the
    segment is empty or does not lie on the reference grid.
    """
    path = _mask_file(path)
    with _damage_reported(path):
        dataset = _read_dataset(path)
        number = choose_segment(_segments(dataset), segment, path)
        if _modality(dataset) == "SEG":
            values = _seg_mask(dataset, number, reference, path)
        else:
            values = _rtstruct_mask(dataset, number, reference, path)
    if not values.any():
        raise MaskError(f"{path}: segment {_describe(dataset, number)} is empty on the image grid")
    mask = sitk.GetImageFromArray(values.astype(np.uint8))
    mask.CopyInformation(reference)
    return mask


def choose_segment(segments: list[tuple[int, str]], segment: str | int | None, source: str | Path) -> int:
    """The segment number that ``segment`` designates (see :func:`read_dicom_mask`)."""
    if not segments:
        raise MaskError(f"{source} defines no segments / ROIs")
    if segment is None or (isinstance(segment, str) and not segment.strip()):
        if len(segments) == 1:
            return segments[0][0]
        raise MaskError(f"{source} holds {len(segments)} segments: choose one with {_how_to_choose(segments)}")
    if isinstance(segment, (int, np.integer)) and not isinstance(segment, bool):
        return _by_number(segments, int(segment), source)
    text = str(segment).strip()
    for matches in ([s for s in segments if s[1] == text], [s for s in segments if s[1].lower() == text.lower()]):
        if len(matches) == 1:
            return matches[0][0]
        if len(matches) > 1:
            numbers = ", ".join(str(n) for n, _ in matches)
            raise MaskError(f"{source}: the name {text!r} is shared by segments {numbers}; choose by number "
                            f"with {_how_to_choose(segments)}")
    if text.isdigit():
        return _by_number(segments, int(text), source)
    raise MaskError(f"{source} has no segment {text!r}: choose one with {_how_to_choose(segments)}")


def _by_number(segments: list[tuple[int, str]], number: int, source: str | Path) -> int:
    if number not in {n for n, _ in segments}:
        raise MaskError(f"{source} has no segment number {number}: choose one with {_how_to_choose(segments)}")
    return number


def _how_to_choose(segments: list[tuple[int, str]]) -> str:
    listed = ", ".join(f"{n} {name!r}" for n, name in segments[:_MAX_LISTED])
    more = f" ... ({len(segments)} in all)" if len(segments) > _MAX_LISTED else ""
    return f"segment= / --segment NAME|NUMBER; available: {listed}{more}"


# --------------------------------------------------------------------------- dataset


def _mask_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise InputError(f"file or folder not found: {path}")
    found = find_dicom_mask(path)
    if found is None:
        raise MaskError(f"{path} is not a DICOM SEG or RTSTRUCT (nor a folder holding one)")
    return found


@contextmanager
def _damage_reported(path: Path) -> Iterator[None]:
    """pydicom decodes values lazily: a damaged or missing attribute surfaces as a Python error
    deep inside the reader, which is reported here with the file's name instead."""
    try:
        yield
    except RadFusionError:
        raise
    except (AttributeError, IndexError, KeyError, TypeError, ValueError) as exc:
        raise MaskError(f"{path}: damaged or incomplete DICOM segmentation ({type(exc).__name__}: {exc})") from exc


def _read_dataset(path: Path) -> Dataset:
    try:
        with warnings.catch_warnings():  # vendors' over-long DS/IS strings are harmless here
            warnings.simplefilter("ignore")
            return pydicom.dcmread(path, force=True)
    except Exception as exc:  # pydicom raises many types for damaged files
        raise MaskError(f"{path}: corrupt or truncated DICOM file ({type(exc).__name__}: {exc})") from exc


def _modality(dataset: Dataset) -> str:
    return str(dataset.get("Modality", "") or "").strip().upper()


def _segments(dataset: Dataset) -> list[tuple[int, str]]:
    if _modality(dataset) == "SEG":
        items = dataset.get("SegmentSequence") or []
        return [(int(s.SegmentNumber), str(s.get("SegmentLabel", "") or "").strip()) for s in items]
    items = dataset.get("StructureSetROISequence") or []
    return [(int(r.ROINumber), str(r.get("ROIName", "") or "").strip()) for r in items]


def _describe(dataset: Dataset, number: int) -> str:
    names = dict(_segments(dataset))
    return f"{number} {names.get(number, '')!r}"


# --------------------------------------------------------------------------- grid


def _index_of(reference: sitk.Image, points: np.ndarray) -> np.ndarray:
    """Continuous (x, y, z) voxel indices of LPS points (N, 3), vectorised."""
    direction = np.array(reference.GetDirection()).reshape(3, 3)
    to_physical = direction * np.array(reference.GetSpacing())  # columns: one voxel step per axis
    indices = np.linalg.solve(to_physical, (points - np.array(reference.GetOrigin())).T).T
    return np.round(indices, _INDEX_DECIMALS)


def _slice_of(z: np.ndarray, depth: int, what: str) -> int:
    """The reference slice that the plane at continuous index ``z`` lies on (all values)."""
    k = int(np.rint(np.mean(z)))
    off = float(np.max(np.abs(z - k)))
    if off > SLICE_TOLERANCE:
        raise MaskError(f"{what} lies {off:.2f} slices away from the nearest image slice (at most "
                        f"{SLICE_TOLERANCE} allowed): it was drawn on another grid or is not parallel to the slices; "
                        "use the image series it was drawn on")
    if not 0 <= k < depth:
        raise MaskError(f"{what} lies outside the image (slice index {k}, the image has slices 0..{depth - 1}): "
                        "the image does not cover the structure")
    return k


# --------------------------------------------------------------------------- SEG


def _seg_mask(dataset: Dataset, number: int, reference: sitk.Image, path: Path) -> np.ndarray:
    frames = [i for i, item in enumerate(_per_frame(dataset, path)) if _frame_segment(dataset, item) == number]
    if not frames:
        raise MaskError(f"{path}: segment {_describe(dataset, number)} has no frames")
    _check_plane_geometry(dataset, reference, path)
    pixels = _seg_pixels(dataset, path)
    columns, rows, depth = reference.GetSize()
    volume = np.zeros((depth, rows, columns), dtype=bool)
    filled: dict[int, int] = {}
    for i in frames:
        position = _frame_position(dataset, i, path)
        what = f"{path.name} frame {i + 1} (segment {number}, position {np.round(position, 3).tolist()})"
        x, y, z = _index_of(reference, position[np.newaxis])[0]
        if not pixels[i].any():
            continue  # an empty frame says nothing, wherever it lies
        k = _slice_of(np.array([z]), depth, what)
        if k in filled:
            raise MaskError(f"{what} falls on image slice {k} like frame {filled[k] + 1}: the SEG was made on a finer "
                            "grid than the image")
        filled[k] = i
        _paste(volume[k], pixels[i], _whole_pixels(x, y, what), what)
    return volume


def _per_frame(dataset: Dataset, path: Path) -> Sequence[Dataset]:
    items = dataset.get("PerFrameFunctionalGroupsSequence")
    count = int(dataset.get("NumberOfFrames", 1) or 1)
    if not items or len(items) != count:
        raise MaskError(f"{path}: SEG without one per-frame functional group per frame (NumberOfFrames {count}); "
                        "its frames cannot be placed in space")
    return items


def _group_value(dataset: Dataset, item: Dataset | None, sequence: str, keyword: str) -> Any:
    """A functional-group attribute: per-frame item first, then the shared group."""
    shared = dataset.get("SharedFunctionalGroupsSequence")
    for group in (item, shared[0] if shared else None):
        inner = group.get(sequence) if group is not None else None
        if inner and keyword in inner[0]:
            return inner[0].get(keyword)
    return None


def _frame_segment(dataset: Dataset, item: Dataset) -> int | None:
    value = _group_value(dataset, item, "SegmentIdentificationSequence", "ReferencedSegmentNumber")
    return None if value is None else int(value)


def _frame_position(dataset: Dataset, index: int, path: Path) -> np.ndarray:
    item = dataset.PerFrameFunctionalGroupsSequence[index]
    value = _group_value(dataset, item, "PlanePositionSequence", "ImagePositionPatient")
    return _numbers(value, 3, f"{path.name} frame {index + 1} ImagePositionPatient")


def _numbers(value: Any, count: int, what: str) -> np.ndarray:
    try:
        numbers = np.array([float(v) for v in (value or [])])
    except (TypeError, ValueError):
        numbers = np.array([])
    if numbers.size != count or not np.all(np.isfinite(numbers)):
        raise MaskError(f"{what} must hold {count} numbers, found {value!r}")
    return numbers


def _check_plane_geometry(dataset: Dataset, reference: sitk.Image, path: Path) -> None:
    """SEG frames need the reference's row/column directions and pixel spacing (checked once:
    the SEG module allows them in the shared group only when they hold for every frame)."""
    first = dataset.PerFrameFunctionalGroupsSequence[0]
    orientation = _numbers(_group_value(dataset, first, "PlaneOrientationSequence", "ImageOrientationPatient"), 6,
                           f"{path.name} ImageOrientationPatient")
    spacing = _numbers(_group_value(dataset, first, "PixelMeasuresSequence", "PixelSpacing"), 2,
                       f"{path.name} PixelSpacing")
    direction = np.array(reference.GetDirection()).reshape(3, 3)
    expected = np.concatenate([direction[:, 0], direction[:, 1]])
    if np.max(np.abs(orientation - expected)) > ORIENTATION_TOLERANCE:
        raise MaskError(f"{path}: SEG frame orientation {orientation.round(4).tolist()} differs from the image's "
                        f"{expected.round(4).tolist()}: it segments another series")
    column_step, row_step = reference.GetSpacing()[:2]
    if np.any(np.abs(spacing - (row_step, column_step)) > SPACING_TOLERANCE * np.array((row_step, column_step))):
        raise MaskError(f"{path}: SEG pixel spacing {spacing.tolist()} differs from the image's "
                        f"{[row_step, column_step]} (rows, columns): it segments another series")
    for item in dataset.PerFrameFunctionalGroupsSequence:
        if item.get("PlaneOrientationSequence") or item.get("PixelMeasuresSequence"):
            _check_frame_geometry(dataset, item, orientation, spacing, path)


def _check_frame_geometry(dataset: Dataset, item: Dataset, orientation: np.ndarray, spacing: np.ndarray,
                          path: Path) -> None:
    this_orientation = _group_value(dataset, item, "PlaneOrientationSequence", "ImageOrientationPatient")
    this_spacing = _group_value(dataset, item, "PixelMeasuresSequence", "PixelSpacing")
    if not (np.allclose(_numbers(this_orientation, 6, f"{path.name} ImageOrientationPatient"), orientation,
                        atol=ORIENTATION_TOLERANCE)
            and np.allclose(_numbers(this_spacing, 2, f"{path.name} PixelSpacing"), spacing,
                            rtol=SPACING_TOLERANCE)):
        raise MaskError(f"{path}: SEG frames differ in orientation or pixel spacing; they cannot share one grid")


def _whole_pixels(x: float, y: float, what: str) -> tuple[int, int]:
    column, row = int(np.rint(x)), int(np.rint(y))
    if max(abs(x - column), abs(y - row)) > IN_PLANE_TOLERANCE:
        raise MaskError(f"{what} is shifted by a fraction of a pixel ({x - column:+.2f}, {y - row:+.2f}) "
                        "against the image grid: it segments another series")
    return column, row


def _paste(plane: np.ndarray, frame: np.ndarray, corner: tuple[int, int], what: str) -> None:
    """OR a frame into a slice at (column, row) offset; foreground outside the slice is an error."""
    column, row = corner
    rows, columns = np.nonzero(frame)
    rows, columns = rows + row, columns + column
    outside = (rows < 0) | (rows >= plane.shape[0]) | (columns < 0) | (columns >= plane.shape[1])
    if outside.any():
        raise MaskError(f"{what}: {int(outside.sum())} segmented pixels lie outside the image: "
                        "the image does not cover the segment")
    plane[rows, columns] = True


def _seg_pixels(dataset: Dataset, path: Path) -> np.ndarray:
    """Every frame as booleans (frames, rows, columns), thresholded for FRACTIONAL segments."""
    kind = str(dataset.get("SegmentationType", "BINARY") or "BINARY").strip().upper()
    if kind not in ("BINARY", "FRACTIONAL"):
        raise MaskError(f"{path}: SegmentationType {kind!r} is not supported (BINARY or FRACTIONAL)")
    shape = (int(dataset.get("NumberOfFrames", 1) or 1), int(dataset.Rows), int(dataset.Columns))
    bits = int(dataset.get("BitsAllocated", 1) or 1)
    syntax = dataset.file_meta.get("TransferSyntaxUID") if hasattr(dataset, "file_meta") else None
    plain = syntax is None or (syntax.is_little_endian and not syntax.is_encapsulated)
    if bits == 1 and plain:
        values = _unpack_bits(dataset.PixelData, shape, path)
    else:
        values = _decoded(dataset, shape, path)
    if kind == "FRACTIONAL":
        maximum = float(dataset.get("MaximumFractionalValue", 255) or 255)
        return values >= FRACTIONAL_THRESHOLD * maximum
    return values != 0


def _unpack_bits(data: bytes, shape: tuple[int, int, int], path: Path) -> np.ndarray:
    """1-bit pixels packed continuously over all frames, first pixel in the least significant bit."""
    count = int(np.prod(shape))
    if len(data) * 8 < count:
        raise MaskError(f"{path}: pixel data holds {len(data) * 8} bits, {count} needed: truncated SEG")
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=count, bitorder="little")
    return bits.reshape(shape)


def _decoded(dataset: Dataset, shape: tuple[int, int, int], path: Path) -> np.ndarray:
    """Other bit depths and compressed transfer syntaxes: pydicom's decoders."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            values = dataset.pixel_array
    except Exception as exc:
        raise MaskError(f"{path}: SEG pixel data could not be decoded ({type(exc).__name__}: {exc})") from exc
    return values.reshape(shape)


# --------------------------------------------------------------------------- RTSTRUCT


def _rtstruct_mask(dataset: Dataset, number: int, reference: sitk.Image, path: Path) -> np.ndarray:
    columns, rows, depth = reference.GetSize()
    volume = np.zeros((depth, rows, columns), dtype=bool)
    planes: dict[int, tuple[float, int]] = {}
    for n, points in enumerate(_closed_contours(dataset, number, path), start=1):
        what = f"{path.name} ROI {_describe(dataset, number)} contour {n}"
        indices = _index_of(reference, points)
        k = _slice_of(indices[:, 2], depth, what)
        _check_contour_plane(planes, k, float(np.mean(indices[:, 2])), n, what)
        _check_in_plane(indices, (columns, rows), what)
        volume[k] ^= fill_polygon(indices[:, 0], indices[:, 1], (rows, columns))
    return volume


def _closed_contours(dataset: Dataset, number: int, path: Path) -> list[np.ndarray]:
    """The ROI's CLOSED_PLANAR contours as (N, 3) LPS points; markers and open lines are not areas."""
    for item in dataset.get("ROIContourSequence") or []:
        if int(item.get("ReferencedROINumber", -1)) == number:
            contours = [np.asarray(c.ContourData, dtype=float).reshape(-1, 3)
                        for c in item.get("ContourSequence") or []
                        if str(c.get("ContourGeometricType", "")).strip().upper() == "CLOSED_PLANAR"
                        and len(c.get("ContourData") or []) >= 9]
            if contours:
                return contours
    raise MaskError(f"{path}: ROI {_describe(dataset, number)} has no closed planar contours (no area to fill)")


def _check_contour_plane(planes: dict[int, tuple[float, int]], k: int, z: float, n: int, what: str) -> None:
    """Contours sharing a slice must share a plane, else the even-odd rule would mix two planes."""
    if k in planes and abs(planes[k][0] - z) > SLICE_TOLERANCE / 2:
        raise MaskError(f"{what} and contour {planes[k][1]} lie in different planes but fall on the same image "
                        f"slice {k}: the structure was drawn on a finer grid than the image")
    planes.setdefault(k, (z, n))


def _check_in_plane(indices: np.ndarray, size: tuple[int, int], what: str) -> None:
    for axis, name in ((0, "column"), (1, "row")):
        low, high = float(indices[:, axis].min()), float(indices[:, axis].max())
        if low < -0.5 - IN_PLANE_TOLERANCE or high > size[axis] - 0.5 + IN_PLANE_TOLERANCE:
            raise MaskError(f"{what} reaches {name} index {low if low < 0 else high:.1f}, outside the image's "
                            f"0..{size[axis] - 1}: the image does not cover the structure")


def fill_polygon(x: np.ndarray, y: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Pixels (rows, columns) whose centres lie inside the closed polygon (x = column, y = row).

    Scanline fill: for each pixel row, the outline's crossings are found with edges taken
    half-open in y, and a pixel is inside when an odd number of crossings lie at or left
    of its centre. Centres on the outline therefore count on the low-index side only.
    """
    rows_count, columns_count = shape
    inside = np.zeros(shape, dtype=bool)
    x_next, y_next = np.roll(x, -1), np.roll(y, -1)
    first, last = max(0, int(np.ceil(y.min()))), min(rows_count - 1, int(np.floor(y.max())))
    if last < first:
        return inside
    rows = np.arange(first, last + 1, dtype=float)[:, np.newaxis]
    crosses = ((y <= rows) & (rows < y_next)) | ((y_next <= rows) & (rows < y))
    row_of, edge = np.nonzero(crosses)
    at = x[edge] + (rows[row_of, 0] - y[edge]) * (x_next[edge] - x[edge]) / (y_next[edge] - y[edge])
    first_column = np.clip(np.ceil(np.round(at, _INDEX_DECIMALS)), 0, columns_count).astype(int)
    toggles = np.zeros((rows.shape[0], columns_count + 1), dtype=np.int32)
    np.add.at(toggles, (row_of, first_column), 1)
    inside[first:last + 1] = np.cumsum(toggles[:, :columns_count], axis=1) % 2 == 1
    return inside
