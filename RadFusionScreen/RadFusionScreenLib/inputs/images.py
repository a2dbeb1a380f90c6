"""Image and mask input and voxel-grid checks.

Every reader returns a 3D scalar SimpleITK image in LPS physical coordinates (SimpleITK
converts NIfTI's RAS on reading). A 2D picture (PNG, JPEG, BMP, TIFF) becomes a one-slice
volume with spacing 1 mm, origin 0 and identity direction, since such files carry no
reliable physical geometry. Nothing here resamples: an image and a mask on different
grids are refused with both geometries in the message.
"""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import SimpleITK as sitk

from RadFusionScreenLib.inputs.dicom_files import is_dicom_file
from RadFusionScreenLib.inputs.dicom_series import read_dicom_file, read_dicom_series, rgb_to_luminance
from RadFusionScreenLib.inputs.dicom_seg import dicom_mask_modality, find_dicom_mask, read_dicom_mask
from RadFusionScreenLib.core.errors import DicomSeriesError, GeometryMismatchError, InputError, MaskError

VOLUME_FORMATS = {
    ".nii": "nifti",
    ".nii.gz": "nifti",
    ".nrrd": "nrrd",
    ".nhdr": "nrrd",
    ".mha": "metaimage",
    ".mhd": "metaimage",
}
PICTURE_FORMATS = {
    ".png": "png",
    ".jpg": "jpeg",
    ".jpeg": "jpeg",
    ".bmp": "bmp",
    ".tif": "tiff",
    ".tiff": "tiff",
}
DEFAULT_GEOMETRY_TOLERANCE = 1e-4
_MAX_LABELS_LISTED = 20

# ----------------------------------------------------------------------------- images


def read_image(path: str | Path, series_uid: str | None = None) -> sitk.Image:
    """Read an image file or DICOM series folder as a 3D scalar image (see module doc)."""
    return read_image_with_metadata(path, series_uid=series_uid)[0]


def read_image_with_metadata(path: str | Path, series_uid: str | None = None) -> tuple[sitk.Image, dict[str, Any]]:
    """Read an image plus a description of its source.

    The metadata holds ``path``, ``source_format`` ("dicom", "nifti", "nrrd", "metaimage",
    "png", "jpeg", "bmp", "tiff" or SimpleITK's name for anything else), ``modality``
    (the DICOM Modality, else None), ``is_2d`` (True when the image has a single slice:
    a picture, a 2D file or a one-slice volume) and, for DICOM, ``dicom``: series
    attributes without patient identifiers. Non-finite voxels raise :class:`InputError`.
    """
    path = _existing(path)
    image, metadata = _read_scalar_volume(path, series_uid)
    _check_finite(image, path, metadata["source_format"])
    metadata["is_2d"] = image.GetSize()[2] == 1
    return image, metadata


def _read_scalar_volume(path: Path, series_uid: str | None) -> tuple[sitk.Image, dict[str, Any]]:
    metadata: dict[str, Any] = {"path": str(path), "modality": None}
    if path.is_dir() or (is_dicom_file(path) and _format_of(path) is None):
        image, series = _read_dicom_image(path, series_uid)
        metadata.update(source_format="dicom", modality=series.get("Modality") or None, dicom=series)
        return image, metadata
    source_format = _format_of(path)
    image = _read_file(path)
    metadata["source_format"] = source_format or _imageio_name(path)
    if source_format in PICTURE_FORMATS.values():
        return _picture_to_volume(image, path), metadata
    return _to_3d(_scalar(image, path), path), metadata


def _read_dicom_image(path: Path, series_uid: str | None) -> tuple[sitk.Image, dict[str, Any]]:
    """A DICOM series folder or file; a segmentation given in the image's place is named as such."""
    if path.is_file() and dicom_mask_modality(path):
        raise InputError(_mask_as_image(path, dicom_mask_modality(path)))
    try:
        return read_dicom_series(path, series_uid) if path.is_dir() else read_dicom_file(path)
    except DicomSeriesError as error:
        if path.is_dir() and "no image series" in str(error):
            found = _dicom_mask_in(path)
            if found is not None:
                raise InputError(_mask_as_image(path, dicom_mask_modality(found))) from error
        raise


def _dicom_mask_in(folder: Path) -> Path | None:
    try:
        return find_dicom_mask(folder)
    except MaskError:  # several structure sets: still not an image
        return next(p for p in folder.rglob("*") if dicom_mask_modality(p))


def _mask_as_image(path: Path, modality: str | None) -> str:
    return f"{path} is a DICOM {modality} (a mask), not an image: pass it as the mask (and the image series as the image)"


def _existing(path: str | Path) -> Path:
    if path is None or str(path) == "":
        raise InputError("no image path given")
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(f"file or folder not found: {path}")
    return path


def _format_of(path: Path) -> str | None:
    name = path.name.lower()
    for suffix, name_of_format in {**VOLUME_FORMATS, **PICTURE_FORMATS}.items():
        if name.endswith(suffix):
            return name_of_format
    return None


def _read_file(path: Path) -> sitk.Image:
    try:
        with _nifti_alone(path) as readable:
            return sitk.ReadImage(str(readable))
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unreadable"
        raise InputError(
            f"cannot read {path}: {reason} (supported: NIfTI, NRRD, MHA/MHD, PNG/JPEG/BMP/TIFF, DICOM)"
        ) from exc


@contextmanager
def _nifti_alone(path: Path) -> Iterator[Path]:
    """``path``, or the same file alone in a temporary folder when a NIfTI twin sits beside it.

    Given ``scan.nii.gz``, ITK's NIfTI reader (niftilib's header search) opens ``scan.nii``
    whenever one exists in the same folder, silently: another image than the one asked for.
    Read from a folder where it has no twin (a symbolic link, or a copy where links are not
    allowed, e.g. Windows without developer mode), the requested file is the one read.
    """
    name = path.name.lower()
    twin = (path.with_name(path.name[:-3]) if name.endswith(".nii.gz") else
            path.with_name(path.name + ".gz") if name.endswith(".nii") else None)
    if twin is None or not twin.exists():
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="radfusion-nifti-") as folder:
        alone = Path(folder) / path.name
        try:
            os.symlink(path.resolve(), alone)
        except OSError:
            shutil.copyfile(path, alone)
        yield alone


def _imageio_name(path: Path) -> str:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
        return reader.GetImageIO().replace("ImageIO", "").lower() or "unknown"
    except RuntimeError:
        return "unknown"


def _picture_to_volume(image: sitk.Image, path: Path) -> sitk.Image:
    """A grey one-slice volume with unit spacing: pictures carry no trustworthy physical geometry."""
    if image.GetNumberOfComponentsPerPixel() > 1:
        image = _luminance(image, path)
    if image.GetDimension() == 2:
        image = sitk.JoinSeries(image)
    if image.GetDimension() != 3:
        raise InputError(f"{path}: a {image.GetDimension()}D picture cannot be used as an image")
    image.SetSpacing((1.0, 1.0, 1.0))
    image.SetOrigin((0.0, 0.0, 0.0))
    image.SetDirection(tuple(np.eye(3).ravel()))
    return image


def _luminance(image: sitk.Image, path: Path) -> sitk.Image:
    components = image.GetNumberOfComponentsPerPixel()
    if components not in (3, 4):
        raise InputError(f"{path}: {components} values per pixel; a grey, RGB or RGBA picture is needed")
    return rgb_to_luminance(image)


def _scalar(image: sitk.Image, path: Path) -> sitk.Image:
    if image.GetNumberOfComponentsPerPixel() > 1:
        raise InputError(
            f"{path}: {image.GetNumberOfComponentsPerPixel()} values per voxel (vector or colour volume); "
            "a scalar image is needed"
        )
    return image


def _to_3d(image: sitk.Image, path: Path) -> sitk.Image:
    """2D images gain a unit slice axis; 4D images with a single time point lose it."""
    dimension = image.GetDimension()
    if dimension == 2:
        return sitk.JoinSeries(image)
    if dimension == 4 and image.GetSize()[3] == 1:
        return sitk.Extract(image, (*image.GetSize()[:3], 0), (0, 0, 0, 0))
    if dimension != 3:
        raise InputError(f"{path}: a {dimension}D image of size {image.GetSize()}; a 2D or 3D image is needed")
    return image


def _check_finite(image: sitk.Image, path: Path, source_format: str) -> None:
    values = sitk.GetArrayViewFromImage(image)
    if not np.issubdtype(values.dtype, np.floating):
        return
    bad = int(values.size - np.count_nonzero(np.isfinite(values)))
    if source_format == "nifti" and path.is_file():
        bad = max(bad, _nifti_non_finite_count(path))
    if bad:
        raise InputError(f"{path}: {bad} of {values.size} voxels are NaN or infinite; fix or mask them first")


def _nifti_non_finite_count(path: Path) -> int:
    """NaN/Inf voxels stored in a single-file NIfTI.

    The NIfTI library inside ITK silently replaces them with 0 while reading, which would
    turn missing data into plausible intensities; so the stored floats are counted here.
    """
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 348:
        return 0
    for endian in "<>":
        header_size = struct.unpack_from(f"{endian}i", data, 0)[0]
        if header_size == 348:  # NIfTI-1: datatype at byte 70, voxel offset (float32) at 108
            datatype, offset = _unpack(data, endian, ("h", 70), ("f", 108))
            break
        if header_size == 540 and len(data) >= 540:  # NIfTI-2: datatype at 12, voxel offset (int64) at 168
            datatype, offset = _unpack(data, endian, ("h", 12), ("q", 168))
            break
    else:
        return 0
    float_types = {16: "f4", 64: "f8"}  # NIfTI DT_FLOAT32, DT_FLOAT64
    if datatype not in float_types or int(offset) >= len(data):
        return 0
    dtype = np.dtype(endian + float_types[datatype])
    usable = (len(data) - int(offset)) // dtype.itemsize * dtype.itemsize
    stored = np.frombuffer(data, dtype=dtype, count=usable // dtype.itemsize, offset=int(offset))
    return int(stored.size - np.count_nonzero(np.isfinite(stored)))


def _unpack(data: bytes, endian: str, *fields: tuple[str, int]) -> tuple[Any, ...]:
    return tuple(struct.unpack_from(endian + code, data, at)[0] for code, at in fields)


# ------------------------------------------------------------------------------ masks


def read_mask(
    path: str | Path, reference: sitk.Image | None = None, label: int | None = None, segment: str | int | None = None
) -> sitk.Image:
    """Read a label image as a binary mask (uint8, 0/1) on the mask file's own geometry.

    ``label`` selects the voxels equal to it; without it the mask must hold exactly one
    non-zero value (0/255 PNG masks qualify). An empty selection raises
    :class:`MaskError`. With ``reference``, the mask must lie on the reference's voxel
    grid (:func:`check_geometry`).

    A DICOM SEG or RTSTRUCT (a file, or a folder holding exactly one) is rasterised onto
    ``reference``, which it then needs; ``segment`` picks its segment / ROI by name or
    number (see :func:`.dicom_seg.read_dicom_mask`). ``label`` and ``segment`` each apply
    to one kind of mask only, and are refused for the other rather than ignored.
    """
    path = _existing(path)
    dicom_mask = find_dicom_mask(path)
    if dicom_mask is not None:
        return _read_dicom_mask(dicom_mask, reference, label, segment)
    if segment is not None:
        raise MaskError(
            f"segment {segment!r} given, but {path} is a label image, not a DICOM SEG/RTSTRUCT: "
            "choose its value with label= (CLI: --label)"
        )
    labels, _ = _read_scalar_volume(path, None)
    mask = binary_mask(labels, label=label, source=str(path))
    if reference is not None:
        check_geometry(reference, mask)
    return mask


def _read_dicom_mask(
    path: Path, reference: sitk.Image | None, label: int | None, segment: str | int | None
) -> sitk.Image:
    if reference is None:
        raise InputError(f"{path} is a DICOM {dicom_mask_modality(path)}: it needs the image it segments to be placed on")
    if label is not None:
        raise MaskError(
            f"label {label} given, but {path} is a DICOM {dicom_mask_modality(path)}: "
            "choose its segment with segment= (CLI: --segment NAME|NUMBER)"
        )
    return read_dicom_mask(path, reference, segment)


def binary_mask(labels: sitk.Image, label: int | None = None, source: str = "mask") -> sitk.Image:
    """Binary uint8 mask (0/1) of ``labels == label``, or of its single non-zero value when label is None."""
    values = sitk.GetArrayViewFromImage(labels)
    present = _labels_present(values, source)
    if label is None:
        if len(present) > 1:
            raise MaskError(
                f"{source} holds several labels {_list_labels(present)}; choose one with label= (CLI: --label)"
            )
        label = present[0]
    elif label not in present:
        raise MaskError(f"label {label} is not in {source}; labels present: {_list_labels(present)}")
    mask = sitk.GetImageFromArray((values == label).astype(np.uint8))
    mask.CopyInformation(labels)
    return mask


def _labels_present(values: np.ndarray, source: str) -> list[int]:
    if np.issubdtype(values.dtype, np.floating):
        if not np.all(np.isfinite(values)):
            raise MaskError(f"{source} holds NaN or infinite values; a label image is needed")
        if not np.array_equal(values, np.rint(values)):
            raise MaskError(f"{source} holds non-integer values (a probability map?); threshold it into labels first")
    present = [int(v) for v in np.unique(values) if v != 0]
    if not present:
        raise MaskError(f"{source} is empty (no non-zero voxel): draw or choose a region of interest")
    return present


def _list_labels(labels: list[int]) -> str:
    shown = ", ".join(str(v) for v in labels[:_MAX_LABELS_LISTED])
    return f"[{shown}{', ...' if len(labels) > _MAX_LABELS_LISTED else ''}]"


# --------------------------------------------------------------------------- geometry


def check_geometry(image: sitk.Image, mask: sitk.Image, tolerance: float = DEFAULT_GEOMETRY_TOLERANCE) -> None:
    """Refuse an image and a mask that do not share one voxel grid; never resamples.

    Tolerances (``tolerance`` = t): size and dimension exact; spacing relative,
    |Δ| ≤ t·|spacing|; origin |Δ| ≤ t·max(1 mm, |coordinate|), which absorbs the float32
    rounding of NIfTI headers yet stays far below a voxel; direction cosines |Δ| ≤ t.
    Raises :class:`GeometryMismatchError` naming what differs and both geometries.
    """
    differences = _geometry_differences(image, mask, tolerance)
    if differences:
        raise GeometryMismatchError(
            f"image and mask are not on the same voxel grid ({', '.join(differences)} differ); "
            "it will not be resampled silently: resample the mask onto the image grid "
            "(nearest neighbour) or export it from the image's segmentation.\n"
            f"  image: {describe_geometry(image)}\n"
            f"  mask:  {describe_geometry(mask)}"
        )


def _geometry_differences(image: sitk.Image, mask: sitk.Image, tolerance: float) -> list[str]:
    if image.GetDimension() != mask.GetDimension():
        return [f"dimension ({image.GetDimension()}D vs {mask.GetDimension()}D)"]
    differences = []
    if image.GetSize() != mask.GetSize():
        slices = (image.GetSize()[-1], mask.GetSize()[-1])
        one_slice_against_volume = image.GetDimension() == 3 and min(slices) == 1 < max(slices)
        differences.append("size (2D slice vs 3D volume)" if one_slice_against_volume else "size")
    spacing_a, spacing_b = np.array(image.GetSpacing()), np.array(mask.GetSpacing())
    if np.any(np.abs(spacing_a - spacing_b) > tolerance * np.abs(spacing_a)):
        differences.append("spacing")
    origin_a, origin_b = np.array(image.GetOrigin()), np.array(mask.GetOrigin())
    if np.any(np.abs(origin_a - origin_b) > tolerance * np.maximum(1.0, np.abs(origin_a))):
        differences.append("origin")
    if np.any(np.abs(np.array(image.GetDirection()) - np.array(mask.GetDirection())) > tolerance):
        differences.append("direction")
    return differences


def describe_geometry(image: sitk.Image) -> str:
    """One line: dimension, size, spacing, origin and direction of an image."""

    def numbers(values: tuple[float, ...]) -> str:
        return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"

    return (
        f"{image.GetDimension()}D size={tuple(image.GetSize())} spacing={numbers(image.GetSpacing())} "
        f"origin={numbers(image.GetOrigin())} direction={numbers(image.GetDirection())}"
    )
