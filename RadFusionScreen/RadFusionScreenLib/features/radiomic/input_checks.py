"""What :class:`.extractor.RadiomicExtractor` checks and adjusts before pyradiomics runs (image
and mask types and grids, the ROI and its size, constant images, small integer types), and
pyradiomics' ValueErrors translated into the engine's error types with a next step."""

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


def _translate_error(exc: ValueError, label: int) -> Exception:
    """pyradiomics signals every input problem with ValueError; give it our type and a next step."""
    message = str(exc)
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
