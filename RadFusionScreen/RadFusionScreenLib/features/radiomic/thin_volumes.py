"""The thin-volume treatments of :class:`.extractor.RadiomicExtractor` (the module doc there
says why): B-spline resampling of an axis too short for ITK's mirror, extended by that same
mirror first (:func:`_resample`); LoG on an axis of 1-3 voxels, which ITK's recursive filter
refuses, computed on the axis extended by ITK's own boundary rule (:func:`log_images`, used by
our extractor class through :data:`IMAGE_OPERATIONS`); and LoG sigmas pyradiomics' own size
rule skips, whose features become NaN with the reason (:func:`skipped_log_images`,
:func:`_with_empty_images`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import SimpleITK as sitk

from RadFusionScreenLib.features.radiomic.roi_crop import _IIR_INTERPOLATOR_MARGIN


def _bspline_order(interpolator: Any) -> int | None:
    """Spline order of a SimpleITK B-spline interpolator (name or constant); None for others."""
    for name in ("sitkBSpline", *(f"sitkBSpline{k}" for k in range(1, 6)), "sitkBSplineResampler",
                 *(f"sitkBSplineResamplerOrder{k}" for k in range(1, 6))):
        if hasattr(sitk, name) and interpolator in (name, getattr(sitk, name)):
            return int(name[-1]) if name[-1].isdigit() else 3
    return None


def _resample(image: sitk.Image, mask: sitk.Image, bbox: np.ndarray, settings: Mapping[str, Any],
              notes: list[str]) -> tuple[sitk.Image, sitk.Image]:
    """pyradiomics' ``resampleImage``, with axes too short for ITK's B-spline mirror first
    extended by that same mirror (see module doc).

    Only the image grows; pyradiomics builds the grid from the mask, so the grid is unchanged.
    Grid voxels outside the original image then get ITK's default value 0 again, as they do
    on axes long enough for ITK.
    """
    from radiomics import imageoperations

    order = _bspline_order(settings.get("interpolator"))
    size = np.asarray(image.GetSize())
    thin = [axis for axis in range(size.size) if order is not None and 1 < size[axis] < order // 2 + 2]
    if not thin or not _resampling_interpolates(image, mask, bbox, settings):
        return imageoperations.resampleImage(image, mask, **settings)
    resampled, resampled_mask = imageoperations.resampleImage(_mirrored(image, thin), mask, **settings)
    axes = ", ".join(f"{'xyz'[a]} ({int(size[a])} voxels)" for a in thin)
    notes.append(f"resampling: axis {axes} is shorter than the order-{order} B-spline needs ({order // 2 + 2}); "
                 "extended by mirroring (ITK's own boundary rule) so that interpolation is defined")
    return _outside_to_zero(resampled, image, thin), resampled_mask


def _mirrored(image: sitk.Image, axes: list[int]) -> sitk.Image:
    """The image extended on ``axes`` (x, y, z order) by whole-sample mirroring (numpy ``reflect``)."""
    pad = _IIR_INTERPOLATOR_MARGIN
    ndim = image.GetDimension()
    widths = [(pad, pad) if (ndim - 1 - axis) in axes else (0, 0) for axis in range(ndim)]  # numpy order z, y, x
    padded = sitk.GetImageFromArray(np.pad(sitk.GetArrayFromImage(image), widths, mode="reflect"))
    padded.SetSpacing(image.GetSpacing())
    padded.SetDirection(image.GetDirection())
    padded.SetOrigin(image.TransformContinuousIndexToPhysicalPoint([-pad if a in axes else 0 for a in range(ndim)]))
    return padded


def _outside_to_zero(resampled: sitk.Image, original: sitk.Image, axes: list[int]) -> sitk.Image:
    """Zero the grid slabs outside ``original`` on ``axes`` (ITK's inside test: -0.5 <= index < size - 0.5).

    Image and mask share one grid (checked on input), so the grid's axes are the image's.
    """
    array = sitk.GetArrayFromImage(resampled)
    for axis in axes:
        for k in range(resampled.GetSize()[axis]):
            index = [0] * resampled.GetDimension()
            index[axis] = k
            point = resampled.TransformIndexToPhysicalPoint(index)
            position = original.TransformPhysicalPointToContinuousIndex(point)[axis]
            if not -0.5 <= position < original.GetSize()[axis] - 0.5:
                array[(slice(None),) * (array.ndim - 1 - axis) + (k,)] = 0
    result = sitk.GetImageFromArray(array)
    result.CopyInformation(resampled)
    return result


def _resampling_interpolates(image: sitk.Image, mask: sitk.Image, bbox: np.ndarray,
                             settings: Mapping[str, Any]) -> bool:
    """Whether pyradiomics' resampleImage will interpolate the image (its own rule), not just the mask."""
    mask_spacing = np.asarray(mask.GetSpacing(), dtype=float)
    new = np.asarray(settings["resampledPixelSpacing"], dtype=float)
    new = np.where(new == 0, mask_spacing, new)
    roi_size = bbox[len(mask_spacing):] - bbox[:len(mask_spacing)] + 1
    new = np.where(roi_size != 1, new, mask_spacing)  # pyradiomics keeps the spacing of a one-slice ROI axis
    return not np.allclose(np.asarray(image.GetSpacing(), dtype=float), new)


def log_image_name(sigma: Any) -> str:
    """pyradiomics' name of a LoG image (``log-sigma-1-0-mm-3D`` for sigma 1.0)."""
    return "log-sigma-%s-mm-3D" % str(sigma).replace(".", "-")


#: Fewest voxels per axis ITK's recursive Gaussian filters take (their 4th-order recursion is
#: started from the first 4 samples); pyradiomics skips every LoG image below it.
ITK_RECURSIVE_MIN_VOXELS = 4


def _log_sigma_fits(sigma: Any, size: np.ndarray, spacing: np.ndarray) -> bool:
    """pyradiomics' own rule for one LoG sigma: ceil(sigma / spacing) + 1 voxels on every axis."""
    return bool(np.all(size >= np.ceil(float(sigma) / spacing) + 1))


def log_images(inputImage: sitk.Image, inputMask: sitk.Image,  # noqa: N803 (pyradiomics' names)
               **kwargs: Any) -> Iterator[tuple[sitk.Image, str, Any]]:
    """pyradiomics' ``imageoperations.getLoGImage``, also on images with an axis of 1-3 voxels.

    ITK's ``LaplacianRecursiveGaussianImageFilter`` needs 4 voxels per axis, so pyradiomics skips
    every sigma on such an image (a 2-slice CT crop of 1.25 mm slices is 3 voxels thick at 1 mm).
    The filter's boundary rule is a constant signal beyond the border (its recursion is started
    with the edge value "from the border to infinity"), so on an axis of >= 4 voxels repeating the
    edge voxels (numpy ``edge``) by any width gives bit-identical values (tested). Here a short
    axis is extended that way to 4 voxels, pyradiomics' own function filters it and the result is
    cropped back to the input grid: the LoG ITK's rule defines, computed by ITK. pyradiomics' own
    rule for each sigma (ceil(sigma / spacing) + 1 voxels per axis) is kept, on the input's size,
    so a sigma too wide for the image stays skipped (its features NaN, see :func:`skipped_log_images`).
    Images of >= 4 voxels on every axis go to pyradiomics' function unchanged.
    """
    from radiomics import imageoperations

    size = np.asarray(inputImage.GetSize())
    if size.min() >= ITK_RECURSIVE_MIN_VOXELS:
        yield from imageoperations.getLoGImage(inputImage, inputMask, **kwargs)
        return
    spacing = np.asarray(inputImage.GetSpacing(), dtype=float)
    sigmas = [s for s in kwargs.get("sigma", []) or [] if s > 0.0 and _log_sigma_fits(s, size, spacing)]
    if not sigmas:
        return
    before = [(ITK_RECURSIVE_MIN_VOXELS - n) // 2 if n < ITK_RECURSIVE_MIN_VOXELS else 0 for n in size]
    after = [ITK_RECURSIVE_MIN_VOXELS - n - b if n < ITK_RECURSIVE_MIN_VOXELS else 0 for n, b in zip(size, before)]
    extended = _edge_extended(inputImage, before, after)
    for image, name, _ in imageoperations.getLoGImage(extended, inputMask, **{**kwargs, "sigma": sigmas}):
        yield image[tuple(slice(b, b + int(n)) for b, n in zip(before, size))], name, kwargs


def _edge_extended(image: sitk.Image, before: list[int], after: list[int]) -> sitk.Image:
    """``image`` with ``before`` / ``after`` voxels (x, y, z order) of its edge values added per axis."""
    widths = list(zip(before, after))[::-1]  # numpy order z, y, x
    extended = sitk.GetImageFromArray(np.pad(sitk.GetArrayFromImage(image), widths, mode="edge"))
    extended.SetSpacing(image.GetSpacing())
    extended.SetDirection(image.GetDirection())
    extended.SetOrigin(image.TransformContinuousIndexToPhysicalPoint([-float(b) for b in before]))
    return extended


class _ImageOperations:
    """pyradiomics' ``imageoperations`` module as our extractor's ``execute`` sees it:
    ``getLoGImage`` is :func:`log_images`, every other name is the module's own (looked up at
    call time). The ``radiomics`` package itself is not changed."""

    getLoGImage = staticmethod(log_images)  # noqa: N815 (pyradiomics' name)

    def __getattr__(self, name: str) -> Any:
        from radiomics import imageoperations

        return getattr(imageoperations, name)


IMAGE_OPERATIONS = _ImageOperations()


def extended_log_note(image_types: Mapping[str, Any], settings: Mapping[str, Any], image: sitk.Image) -> str | None:
    """The note for a LoG computed by :func:`log_images` on an extended axis (None when none is)."""
    if "LoG" not in image_types:
        return None
    size = np.asarray(image.GetSize())
    spacing = np.asarray(image.GetSpacing(), dtype=float)
    sigmas = {**settings, **(image_types["LoG"] or {})}.get("sigma", []) or []
    computed = [s for s in sigmas if float(s) > 0 and _log_sigma_fits(s, size, spacing)]
    if size.min() >= ITK_RECURSIVE_MIN_VOXELS or not computed:
        return None
    axes = ", ".join(f"{'xyz'[a]} ({int(size[a])} voxels)" for a in range(size.size)
                     if size[a] < ITK_RECURSIVE_MIN_VOXELS)
    return (f"LoG sigma {', '.join(f'{float(s):g}' for s in computed)} mm: axis {axes} of the extraction grid is "
            f"shorter than ITK's recursive filter takes ({ITK_RECURSIVE_MIN_VOXELS}); computed on it extended by "
            "repeating its edge voxels (ITK's own boundary rule), then cropped back")


def skipped_log_images(image_types: Mapping[str, Any], settings: Mapping[str, Any],
                       image: sitk.Image, extend_thin_axes: bool = True) -> dict[str, str]:
    """LoG images that will be skipped on this image, with the reason: pyradiomics' sigma rule
    (ceil(sigma / spacing) + 1 voxels per axis); with ``extend_thin_axes=False`` (plain
    pyradiomics, without :func:`log_images`) also every sigma on an image of < 4 voxels on an axis."""
    if "LoG" not in image_types:
        return {}
    kwargs = {**settings, **(image_types["LoG"] or {})}
    size = np.asarray(image.GetSize())
    spacing = np.asarray(image.GetSpacing(), dtype=float)
    grid = "x".join(str(int(v)) for v in size)
    skipped = {}
    for sigma in kwargs.get("sigma", []) or []:
        if float(sigma) <= 0:
            continue
        if not extend_thin_axes and size.min() < ITK_RECURSIVE_MIN_VOXELS:
            skipped[log_image_name(sigma)] = (f"the image on the extraction grid is {grid} voxels; a 3D LoG "
                                              f"needs at least {ITK_RECURSIVE_MIN_VOXELS} on every axis")
        elif not _log_sigma_fits(sigma, size, spacing):
            needed = "x".join(str(int(v)) for v in np.ceil(float(sigma) / spacing) + 1)
            skipped[log_image_name(sigma)] = (f"the image on the extraction grid ({grid} voxels) is smaller than "
                                              f"this sigma needs (ceil(sigma / spacing) + 1 per axis: {needed}, "
                                              "pyradiomics' rule)")
    return skipped


def _with_empty_images(features: dict[str, float], skipped: list[str], image_types: Mapping[str, Any],
                       settings: Mapping[str, Any], enabled_features: Mapping[str, Any]) -> dict[str, float]:
    """Add NaN features for the LoG images pyradiomics skipped, so every row has the same columns,
    in pyradiomics' own order (the LoG images after the original one, in the params' sigma order)."""
    if not skipped:
        return features
    blank = _texture_feature_names(enabled_features)
    sigmas = {**settings, **(image_types.get("LoG") or {})}.get("sigma", []) or []
    log_blocks: dict[str, float] = {}
    for name in (log_image_name(sigma) for sigma in sigmas if float(sigma) > 0):
        if name in skipped:
            log_blocks.update({f"{name}_{suffix}": float("nan") for suffix in blank})
        else:
            log_blocks.update({key: value for key, value in features.items() if key.startswith(f"{name}_")})
    result: dict[str, float] = {}
    for key, value in features.items():
        if key.split("_", 1)[0] != "original" and log_blocks:
            result.update(log_blocks)  # first key after the original image: the LoG images go here
            log_blocks = {}
        result.setdefault(key, value)
    result.update(log_blocks)
    return result


def _texture_feature_names(enabled_features: Mapping[str, Any]) -> list[str]:
    """``class_Feature`` names a filtered image yields (every enabled class but shape)."""
    from radiomics import getFeatureClasses

    classes = getFeatureClasses()
    names = []
    for class_name, chosen in enabled_features.items():
        if class_name.startswith("shape") or class_name not in classes:
            continue
        available = classes[class_name].getFeatureNames()
        features = chosen if chosen else [f for f, deprecated in available.items() if not deprecated]
        names += [f"{class_name}_{feature}" for feature in features]
    return names
