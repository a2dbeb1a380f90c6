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

Finding the DICOM files and series of a folder is :mod:`.dicom_files`; the planes of a series
and the checks of their grid are :mod:`.dicom_geometry`; this module reads the pixels.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset

from RadFusionScreenLib.core.errors import DicomSeriesError
from RadFusionScreenLib.inputs.dicom_files import (SeriesSummary, choose_series, is_image_object, object_kind,
                                                   read_header, scan_folder)
from RadFusionScreenLib.inputs.dicom_geometry import Frame, frames_of, sorted_geometry


def list_series(folder: str | Path) -> list[SeriesSummary]:
    """Every series under ``folder`` (searched recursively), image series first.

    Files that are not DICOM (text files, DICOMDIR, hidden files) are skipped; a file that
    claims to be DICOM but cannot be parsed raises :class:`DicomSeriesError` naming it.
    """
    return [summary for summary, _ in scan_folder(Path(folder))]


def read_dicom_series(folder: str | Path, series_uid: str | None = None) -> tuple[sitk.Image, dict[str, Any]]:
    """Read the image series in ``folder`` as a 3D image (LPS geometry) plus non-identifying metadata.

    ``series_uid`` chooses a series when the folder holds several image series; without
    it such a folder is refused with a list of the series found.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DicomSeriesError(f"DICOM folder not found: {folder}")
    summary, headers = choose_series(folder, scan_folder(folder), series_uid)
    return _build_image(headers, label=f"series {summary.series_uid} in {folder}")


def read_dicom_file(path: str | Path) -> tuple[sitk.Image, dict[str, Any]]:
    """Read one DICOM file (single- or multi-frame) as a 3D image plus non-identifying metadata."""
    path = Path(path)
    if not path.is_file():
        raise DicomSeriesError(f"DICOM file not found: {path}")
    header = read_header(path, must_be_dicom=True)
    if header is None or not is_image_object(header):
        raise DicomSeriesError(f"{path} is not a DICOM image ({object_kind(header)}); an image file is needed")
    return _build_image([header], label=str(path))


def _build_image(headers: list[Dataset], label: str) -> tuple[sitk.Image, dict[str, Any]]:
    frames = [frame for header in headers for frame in frames_of(header)]
    ordered, geometry = sorted_geometry(frames, label)
    first = headers[0]
    image = _read_pixels(ordered, first, label)
    image.SetOrigin(geometry.origin)
    image.SetSpacing(geometry.spacing)
    image.SetDirection(geometry.direction)
    return image, _series_metadata(first, len(ordered))


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


def _read_pixels(frames: list[Frame], first: Dataset, label: str) -> sitk.Image:
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


def _output_pixel_type(frames: list[Frame], first: Dataset) -> int:
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


def _read_single_frame_files(frames: list[Frame], read_type: int | None, label: str) -> sitk.Image:
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


def _read_multiframe_pixels(frames: list[Frame], read_type: int | None, label: str) -> sitk.Image:
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
