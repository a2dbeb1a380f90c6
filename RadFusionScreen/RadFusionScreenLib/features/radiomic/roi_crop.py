"""How much of the image around the ROI pyradiomics' filters need, so that features of the
cropped image equal those of the whole one (see :mod:`.extractor` for the order of the steps).

Each enabled image type adds its margin (:func:`crop_margin`): LoG a multiple of its largest
sigma, the wavelet its filter support per level (whole axes where it wraps around), resampling
its interpolator's support beyond pyradiomics' padded grid (:func:`_resample_margin`). Image
types that rescale by a whole-image statistic cannot be cropped at all.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import SimpleITK as sitk

# LoG is a recursive (IIR) Gaussian: the crop border's influence decays like exp(-c*d/sigma) but
# never ends. Measured on CT-like data, cropped vs full LoG image inside the ROI: 10 sigma leaves
# ~1e-7 relative, 16 sigma one float32 ulp, 20 sigma nothing (bit-identical).
LOG_MARGIN_SIGMAS = 20.0
# Interpolators with finite support need 1 voxel; B-spline prefiltering is an IIR filter whose
# boundary influence decays like 0.43**d (order 5, worst pole): 48 voxels is < 1e-17.
_FINITE_INTERPOLATORS = {"sitkNearestNeighbor": 1, "sitkLinear": 1}
_IIR_INTERPOLATOR_MARGIN = 48
# Image types that rescale by a whole-image statistic (max |x|): no crop can reproduce them.
_GLOBAL_IMAGE_TYPES = {"Square", "SquareRoot", "Logarithm", "Exponential"}


def crop_margin(
    image_types: Mapping[str, Any], settings: Mapping[str, Any], spacing: tuple[float, ...]
) -> tuple[np.ndarray | None, tuple[int, ...]]:
    """Voxels to keep around the ROI bounding box (x, y, z) so that filters see what they need.

    Returns ``(margin, wrap_axes)``; ``margin`` is None when an enabled image type depends on
    whole-image statistics. ``wrap_axes`` are the axes a wavelet filters with periodic padding:
    where the margin reaches the image border on such an axis the whole axis must be kept,
    because the filter then wraps around to the opposite border.
    """
    spacing_arr = np.asarray(spacing, dtype=float)
    ndim = len(spacing_arr)
    if settings.get("preCrop", False):  # pyradiomics itself then filters only the padded ROI box
        return np.full(ndim, int(settings.get("padDistance", 5))), ()
    # One voxel even for the original image alone: it costs nothing and keeps some background in
    # the cropped mask (pyradiomics 3.0.1 refuses a mask holding a single value).
    margin = np.ones(ndim, dtype=int)
    wrap_axes: set[int] = set()
    for name, custom in image_types.items():
        kwargs = {**settings, **(custom or {})}
        if name in _GLOBAL_IMAGE_TYPES:
            return None, ()
        if name == "Original":
            continue
        if name == "LoG":
            sigmas = [float(s) for s in kwargs.get("sigma", []) if float(s) > 0]
            if sigmas:  # >= 3 also keeps LoG's own minimum-size checks unchanged
                need = np.ceil(LOG_MARGIN_SIGMAS * max(sigmas) / spacing_arr).astype(int)
                margin = np.maximum(margin, np.maximum(need, 3))
        elif name == "Wavelet":
            need, axes = _wavelet_margin(kwargs, ndim)
            for axis in axes:
                margin[axis] = max(margin[axis], need)
            wrap_axes.update(axes)
        elif name == "Gradient":
            margin = np.maximum(margin, 2)
        elif name == "LBP2D":
            margin = np.maximum(margin, math.ceil(float(kwargs.get("lbp2DRadius", 1))) + 2)
        elif name == "LBP3D":  # cubic-spline sampling at the icosphere radius (IIR prefilter)
            margin = np.maximum(margin, math.ceil(float(kwargs.get("lbp3DIcosphereRadius", 1))) + 32)
        else:  # an image type this module does not know: do not guess
            return None, ()
    return margin, tuple(sorted(wrap_axes))


def _wavelet_margin(kwargs: Mapping[str, Any], ndim: int) -> tuple[int, list[int]]:
    """Support of pyradiomics' stationary wavelet: one level-1 ``swtn`` pass per level."""
    import pywt

    wavelet = pywt.Wavelet(kwargs.get("wavelet", "coif1"))
    passes = int(kwargs.get("start_level", 0)) + int(kwargs.get("level", 1))
    axes = list(range(ndim))  # SimpleITK order (x, y, z)
    if kwargs.get("force2D", False):  # force2Ddimension counts numpy axes (z, y, x)
        axes.remove(ndim - 1 - int(kwargs.get("force2Ddimension", 0)))
    return wavelet.dec_len * passes + 1, axes


def _resample_margin(settings: Mapping[str, Any], mask: sitk.Image) -> np.ndarray:
    """Original-grid voxels beyond the ROI that pyradiomics' resampling grid may sample."""
    old = np.asarray(mask.GetSpacing(), dtype=float)
    new = np.asarray(settings["resampledPixelSpacing"], dtype=float)
    new = np.where(new == 0, old, new)
    pad = float(settings.get("padDistance", 5))
    interpolator = settings.get("interpolator")
    name = interpolator if isinstance(interpolator, str) else _interpolator_name(interpolator)
    support = _FINITE_INTERPOLATORS.get(name, _IIR_INTERPOLATOR_MARGIN)
    # grid lower bound: floor((lo - 0.5) * ratio - pad) new voxels, i.e. >= (pad + 1) / ratio old ones
    return np.ceil((pad + 1.0) * new / old).astype(int) + 1 + support


def _interpolator_name(value: Any) -> str:
    for name in _FINITE_INTERPOLATORS:
        if getattr(sitk, name) == value:
            return name
    return str(value)


def _grow(bbox: np.ndarray, margin: np.ndarray, size: tuple[int, ...], wrap_axes: tuple[int, ...]) -> tuple:
    """Bounding box grown by ``margin``, clipped to the image; wrap axes that clip keep the full axis."""
    ndim = len(size)
    lower = bbox[:ndim] - margin
    upper = bbox[ndim:] + margin
    size_arr = np.asarray(size)
    for axis in wrap_axes:
        if lower[axis] < 0 or upper[axis] > size_arr[axis] - 1:
            lower[axis], upper[axis] = 0, size_arr[axis] - 1
    lower = np.maximum(lower, 0)
    upper = np.minimum(upper, size_arr - 1)
    return tuple(int(v) for v in lower), tuple(int(v) for v in upper - lower + 1)


def _crop(image: sitk.Image, region: tuple) -> sitk.Image:
    index, size = region
    if tuple(size) == image.GetSize():
        return image
    return sitk.RegionOfInterest(image, list(size), list(index))

