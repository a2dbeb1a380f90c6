"""What :class:`.extractor.RadiomicExtractor` checks and adjusts before pyradiomics runs (image
and mask types and grids, NaN / infinite voxels, the ROI, its size and the dimensions it spans
on the image grid and on the extraction grid, constant images, small integer types, the grey
levels texture matrices would need), and pyradiomics' ValueErrors and IndexErrors translated
into the engine's error types with a next step."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import SimpleITK as sitk

from RadFusionScreenLib.core.errors import GeometryMismatchError, InputError, MaskError


def max_roi_voxels() -> int:
    """Memory guard: the largest ROI box (after resampling) extracted, ~64 M voxels by default.

    pyradiomics keeps several float64 copies of the ROI box per filtered image (8 bytes per
    voxel each), so 64 M voxels already means several GB; RADFUSION_MAX_ROI_VOXELS changes it.
    """
    return int(os.environ.get("RADFUSION_MAX_ROI_VOXELS", 64_000_000))


def _check_roi_size(bbox: np.ndarray, spacing: tuple[float, ...], settings: Mapping[str, Any]) -> None:
    extent = (bbox[3:] - bbox[:3] + 1) * np.asarray(spacing, dtype=float)
    new = settings.get("resampledPixelSpacing")
    grid = np.where(np.asarray(new, dtype=float) > 0, np.asarray(new, dtype=float), spacing) if new else np.asarray(spacing)
    voxels = int(np.prod(np.ceil(extent / grid)))
    if voxels > max_roi_voxels():
        raise InputError(f"the ROI's bounding box holds {voxels:,} voxels on the extraction grid, above the memory "
                         f"guard of {max_roi_voxels():,}: check the segment (is it the lesion, not the body?), use "
                         "a coarser resampledPixelSpacing, or raise RADFUSION_MAX_ROI_VOXELS")


def max_gray_levels() -> int:
    """Memory guard: the most grey levels (bins) a texture matrix is built with, 2000 by default.

    A GLCM holds Ng x Ng x 13 float64 values per distance (Ng = 2000: 0.4 GB, and pyradiomics
    keeps a few arrays of that size); a ROI reaching 3e5 on a 25-HU bin width (12,000 levels)
    took 12.7 GB and 21 s for the GLCM alone, and more can end the process in the C code.
    The LIDC nodules need at most 140 on the original image and 379 on a wavelet sub-band (LLL);
    RADFUSION_MAX_GRAY_LEVELS changes it.
    """
    return int(os.environ.get("RADFUSION_MAX_GRAY_LEVELS", 2000))


def check_gray_levels(levels: int, roi_values: np.ndarray, image_name: str, settings: Mapping[str, Any]) -> None:
    """Refuse a discretised ROI of more than :func:`max_gray_levels` grey levels, before any texture matrix."""
    if levels <= max_gray_levels():
        return
    name = f"the {image_name} image" if image_name else "the image"
    binning = (f"binWidth {settings['binWidth']:g}" if settings.get("binCount") is None
               else f"binCount {settings['binCount']}")
    raise InputError(
        f"the ROI's intensities in {name} span {float(np.min(roi_values)):g} to {float(np.max(roi_values)):g}: "
        f"with {binning} that is {levels:,} grey levels, above the guard of {max_gray_levels():,} (texture "
        f"matrices grow with its square, ~{levels ** 2 * 13 * 8 / 1e9:.1f} GB for one GLCM). Check the image's "
        "units and the mask (CT in HU spans about -1024 to 3071: far larger values point to a wrong rescale, "
        "or padding or metal inside the ROI), or use a wider binWidth or a binCount in the params; "
        "RADFUSION_MAX_GRAY_LEVELS raises the guard")


def _check_finite(image: sitk.Image, mask: sitk.Image, label: int) -> None:
    """NaN or infinite voxels spread through resampling and filters and end in pyradiomics'
    binning ("arange: cannot compute length"): name them instead. Integer images are always finite."""
    if image.GetPixelID() not in (sitk.sitkFloat32, sitk.sitkFloat64):
        return
    values = sitk.GetArrayViewFromImage(image)
    finite = np.isfinite(values)
    if finite.all():
        return
    bad = int(finite.size - np.count_nonzero(finite))
    in_roi = int(np.count_nonzero(~finite & (sitk.GetArrayViewFromImage(mask) == label)))
    raise InputError(
        f"the image holds {bad:,} NaN or infinite voxel(s), {in_roi:,} of them inside the ROI: radiomic features "
        "(and the resampling and filters before them) are undefined on them. Replace them before extraction "
        "(e.g. with the background value, -1024 HU for CT) or check the conversion that produced the image")


def _roi_description(roi: np.ndarray, spacing: tuple[float, ...]) -> str:
    """'N voxels, a x b x c voxels (x, y, z), ... mm' of a boolean ROI array in numpy (z, y, x) order."""
    extent = [int(np.ptp(np.flatnonzero(roi.any(axis=tuple(a for a in range(roi.ndim) if a != axis))))) + 1
              if roi.any() else 0 for axis in range(roi.ndim)][::-1]
    millimetres = " x ".join(f"{n * s:.3g}" for n, s in zip(extent, spacing))
    return f"{int(np.count_nonzero(roi)):,} voxel(s), {' x '.join(map(str, extent))} voxels (x, y, z), {millimetres} mm"


def _spanned_dimensions(roi: np.ndarray) -> int:
    """pyradiomics' count of ROI dimensions: axes on which the ROI's bounding box is longer than one voxel."""
    return sum(int(np.unique(np.nonzero(roi)[axis]).size > 1) for axis in range(roi.ndim))


def _check_extraction_roi(mask: sitk.Image, original: sitk.Image, label: int, settings: Mapping[str, Any]) -> None:
    """pyradiomics' ROI rules (checkMask: 2+ voxels, ``minimumROIDimensions`` axes longer than one
    voxel, more than ``minimumROISize`` voxels) on the grid features are computed on, with the
    ROI described. A tiny lesion can shrink to one voxel or a line when resampled to a coarser
    grid, which pyradiomics reports as "mask only contains 1 segmented voxel" without saying why."""
    needed_dims = int(settings.get("minimumROIDimensions") or 1)
    minimum_size = settings.get("minimumROISize")
    fewest = 2 if minimum_size is None else max(2, int(minimum_size) + 1)

    def usable(roi: np.ndarray) -> bool:
        return _spanned_dimensions(roi) >= max(1, needed_dims) and int(np.count_nonzero(roi)) >= fewest

    roi = sitk.GetArrayViewFromImage(mask) == label
    if usable(roi):
        return
    need = (f"at least {fewest} voxels spanning {max(1, needed_dims)} dimension(s) (minimumROIDimensions {needed_dims}"
            + (f", minimumROISize {minimum_size})" if minimum_size is not None else ")"))
    original_roi = sitk.GetArrayViewFromImage(original) == label
    if not usable(original_roi):  # the segment itself, whatever the grid
        described = _roi_description(original_roi, original.GetSpacing())
        raise MaskError(
            f"the ROI (label {label}) spans too few dimensions: it has {described}, spanning "
            f"{_spanned_dimensions(original_roi)} dimension(s); radiomic features need {need}; a point or a line "
            "has no area or volume. Segment the lesion's whole extent (in-plane or across slices), or relax "
            "minimumROIDimensions / minimumROISize in your params if such an ROI is intended")
    asked = settings.get("resampledPixelSpacing") or ()
    raise MaskError(
        f"the ROI (label {label}) is too small for the extraction grid: it has "
        f"{_roi_description(original_roi, original.GetSpacing())} on the image grid, but "
        f"resampled as the params ask (resampledPixelSpacing {'x'.join(f'{v:g}' for v in asked)} mm) it keeps "
        f"{_roi_description(roi, mask.GetSpacing())}, spanning {_spanned_dimensions(roi)} dimension(s); radiomic "
        f"features need {need}. The lesion is at or below that grid's resolution: check the segment, or extract "
        "with params that resample less coarsely (resampledPixelSpacing near the image's own spacing, or none)")


def _check_not_constant(image: sitk.Image) -> None:
    """Normalisation divides by the image's SD: a constant image would turn into NaNs deep
    inside pyradiomics (its error then reads "arange: cannot compute length")."""
    stats = sitk.StatisticsImageFilter()
    stats.Execute(image)
    if stats.GetVariance() == 0:
        raise InputError(f"the image is constant (every voxel is {stats.GetMean():g}): the params normalise "
                         "intensities (normalize: true), which is undefined for it; check that the right series "
                         "was loaded")


# 8- and 16-bit integer pixel types that pyradiomics' fixed-bin-width discretisation can overflow.
_SMALL_INTEGER_TYPES = (sitk.sitkUInt8, sitk.sitkInt8, sitk.sitkUInt16)
_INT16_SAFE_MAXIMUM = 30000  # int16 CT (HU) stays int16, a full-size copy saved; near the limit it is widened


def _widen_small_integers(image: sitk.Image) -> sitk.Image:
    """Cast 8/16-bit integer images to 32-bit integers (same values, same resampling rounding).

    Why: pyradiomics computes the upper bin edge as ``max + 2 * binWidth`` in the image's own
    numpy type; with numpy 2 that wraps around for a uint8 picture whose ROI reaches 246+
    (255 + 10 -> 9, with overflow warnings). The bin edges still come out right, but only
    because ``numpy.arange`` computes its length in the same wrapped arithmetic; we do not
    want feature values to rest on that.
    """
    if image.GetPixelID() in _SMALL_INTEGER_TYPES:
        return sitk.Cast(image, sitk.sitkInt32)
    if image.GetPixelID() == sitk.sitkInt16:
        extremes = sitk.MinimumMaximumImageFilter()
        extremes.Execute(image)
        if extremes.GetMaximum() > _INT16_SAFE_MAXIMUM:
            return sitk.Cast(image, sitk.sitkInt32)
    return image


def _as_volumes(image: sitk.Image, mask: sitk.Image) -> tuple[sitk.Image, sitk.Image]:
    """Check the inputs and make 2D images one-slice 3D volumes (what pyradiomics' filters expect)."""
    if not isinstance(image, sitk.Image) or not isinstance(mask, sitk.Image):
        raise InputError("image and mask must be SimpleITK images (read them with RadFusionScreenLib.inputs.images)")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"image has {image.GetNumberOfComponentsPerPixel()} components per pixel: convert it to grey levels first"
        )
    if mask.GetNumberOfComponentsPerPixel() != 1:
        raise InputError("mask must be one label image (one component per voxel), not a multi-segment vector image")
    if image.GetDimension() != mask.GetDimension() or image.GetSize() != mask.GetSize():
        raise GeometryMismatchError(
            f"image size {image.GetSize()} and mask size {mask.GetSize()} differ: resample the mask onto the image grid"
        )
    if image.GetDimension() == 2:
        image, mask = sitk.JoinSeries(image), sitk.JoinSeries(mask)
    elif image.GetDimension() != 3:
        raise InputError(f"image must be 2D or 3D, got {image.GetDimension()}D")
    return image, mask


def _label_bbox(mask: sitk.Image, label: int) -> np.ndarray:
    """ROI bounding box as (lower x, y, z, upper x, y, z) voxel indices, upper inclusive."""
    roi = sitk.GetArrayViewFromImage(mask) == label  # numpy order (z, y, x)
    count = int(np.count_nonzero(roi))
    if count == 0:
        present = np.unique(sitk.GetArrayViewFromImage(mask))
        others = [int(v) for v in present if v != 0]
        detail = f"it holds labels {others}" if others else "it is empty (all zero)"
        raise MaskError(
            f"the mask has no voxel with label {label}: {detail}. Draw or select the lesion segment, "
            "or set the 'label' setting to the value that marks the ROI"
        )
    if count == 1:
        raise MaskError(
            "the mask has a single voxel: radiomic features need an ROI of at least a few voxels. "
            "Check that the right segment was exported, or redraw the ROI"
        )
    lower, upper = [], []
    for axis in range(roi.ndim):
        other = tuple(a for a in range(roi.ndim) if a != axis)
        hits = np.flatnonzero(roi.any(axis=other))
        lower.append(int(hits[0]))
        upper.append(int(hits[-1]))
    return np.array(lower[::-1] + upper[::-1])  # SimpleITK order (x, y, z)


def _translate_error(exc: ValueError | IndexError, label: int, grid: str = "") -> Exception:
    """pyradiomics signals every input problem with ValueError, and a texture matrix it could not
    build with IndexError ("Calculation of GLCM Failed": a grey level outside the matrix); give
    them our type and a next step."""
    if isinstance(exc, InputError):  # the engine's own checks (e.g. the grey-level guard) say it already
        return exc
    message = str(exc).rstrip(". ")
    if isinstance(exc, IndexError):
        where = f" on the extraction grid of {grid} voxels" if grid else ""
        return InputError(
            f"pyradiomics could not build a texture matrix for this ROI{where} ({type(exc).__name__}: {message}). "
            "The engine's checks (finite values, ROI size, thin axes) passed, so this is a case they do not "
            "cover: check the image and mask in a viewer, and report the case with this message")
    lowered = message.lower()
    if "geometry mismatch" in lowered or "size mismatch" in lowered or "larger than image space" in lowered:
        return GeometryMismatchError(
            f"image and mask do not share one voxel grid ({message}); resample the mask onto the image"
        )
    mask_hints = ("label", "segmented voxel", "dimensions", "resegmentation", "roi", "mask")
    if any(hint in lowered for hint in mask_hints):
        return MaskError(
            f"the ROI (label {label}) cannot be used for feature extraction: {message}. "
            "Check the segmentation (it must span at least two dimensions and, after any "
            "resegmentRange, keep more than one voxel) or relax minimumROIDimensions / resegmentRange"
        )
    return InputError(f"pyradiomics could not process this image and mask: {message}")
