"""Handcrafted radiomic features: pyradiomics driven by a params YAML, cropped to the ROI first.

pyradiomics checks the mask and applies its filters (LoG, wavelet, ...) to the *whole* image
before it crops to the ROI; on a 512x512x120 CT that fixed cost dominates. :class:`RadiomicExtractor`
crops image and mask to the ROI bounding box plus the margin each enabled filter (or the
resampling interpolator) needs, so that the features equal those of an uncropped extraction:

* normalisation uses whole-image statistics, so the full image is normalised first, with
  pyradiomics' own ``imageoperations.normalizeImage``, and only then cropped;
* resampling builds its grid from the full mask's bounding box, ``padDistance`` and the image
  border, so the full mask is kept and only the image is cropped (by ``padDistance`` plus the
  interpolator's support), then pyradiomics' own ``imageoperations.resampleImage`` runs; its
  output is already the padded ROI region the filters see in an uncropped run;
* without resampling, image and mask are cropped by the filter margin (see :func:`crop_margin`).

Thin volumes get two documented, deterministic treatments (``RadiomicExtractor.execute_case``
returns a note for each; ``features`` writes them to the ``radiomics_notes`` column):

* **B-spline resampling of an axis of 2 voxels** (e.g. a 2-slice CT crop): ITK's
  ``BSplineInterpolateImageFunction`` mirrors an out-of-range support index only once, which
  for a cubic spline needs >= 3 voxels (order k: k // 2 + 2); on 2 slices it read memory
  outside the image, so every run gave other values, sometimes garbage (32767 HU) and
  pyradiomics' "Calculation of GLCM Failed". Such an axis is first extended by ITK's own
  boundary rule (whole-sample mirror, numpy ``reflect``) far enough for the spline's
  prefilter (:data:`_IIR_INTERPOLATOR_MARGIN`); on axes of >= 3 voxels that extension gives
  bit-identical values to ITK's (tested), so it gives the value ITK intends.
* **A LoG sigma the image on the extraction grid is too small for** (fewer than 4 voxels on an
  axis, e.g. a one-slice volume, or fewer than ceil(sigma / spacing) + 1): pyradiomics skips it
  with a log line and its features would be missing from some rows; here they are NaN, with
  the reason.

Features come back by pyradiomics name (``original_firstorder_Mean``), diagnostics dropped.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import logging
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import yaml

from RadFusionScreenLib.core.errors import GeometryMismatchError, InputError, MaskError

PARAMS_DIR = Path(__file__).resolve().parents[1] / "params"
MODALITY_PARAMS = {"CT": "CT.yaml", "MR": "MR.yaml", "US": "US.yaml"}

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

_PYRADIOMICS_PREPARED = False


def default_params_path(modality: str) -> Path:
    """The shipped params YAML for a modality: ``CT``, ``MR`` or ``US`` (2D ultrasound)."""
    name = MODALITY_PARAMS.get(str(modality).upper())
    if name is None:
        raise InputError(
            f"no default radiomics parameters for modality {modality!r}: "
            f"use one of {', '.join(MODALITY_PARAMS)} or pass your own pyradiomics params YAML"
        )
    return PARAMS_DIR / name


class RadiomicExtractor:
    """pyradiomics feature extraction from a params YAML (path) or an equivalent dict.

    Attributes:
        params: canonical params (``imageType``, ``featureClass``, ``setting`` with pyradiomics'
            defaults filled in) — what a manifest should record.
        settings: the settings the ``original`` image's features are computed with (global
            settings updated by ``imageType: Original: {...}``); pass these to
            :func:`RadFusionScreenLib.features.ibsi.to_ibsi`.
        params_hash: sha256 of the canonical params JSON (cache key part).
    """

    def __init__(self, params: str | Path | Mapping[str, Any], processes: int = 1, threads: int | None = None) -> None:
        """``processes`` > 1 computes the filtered images' features in that many worker
        processes (see :meth:`execute`); 1 (default) runs everything in this process, the
        filtered images of a 3D case in ``threads`` threads (default: ITK's thread count, i.e.
        the cores, or ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS, which cohort workers set to their share)."""
        _prepare_pyradiomics()
        self.processes = max(1, int(processes))
        itk_threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
        self.threads = max(1, int(threads if threads is not None else itk_threads))
        self._pool: Any = None
        self._thread_parts: list[Any] | None = None
        from radiomics import __version__ as radiomics_version
        from radiomics.featureextractor import RadiomicsFeatureExtractor

        from RadFusionScreenLib.features.radiomic_fast import ScopedFeatureExtractor

        self.source = str(params) if isinstance(params, (str, Path)) else "<dict>"
        raw = _load_params(params)
        raw.setdefault("setting", {})
        raw["setting"] = dict(raw["setting"] or {}, additionalInfo=False)  # diagnostics are dropped anyway
        try:
            # The reference extractor reproduces plain pyradiomics (crop=False).
            self._reference = RadiomicsFeatureExtractor(copy.deepcopy(raw))
        except Exception as exc:  # pykwalify raises its own SchemaError types
            raise InputError(f"invalid pyradiomics params ({self.source}): {exc}") from exc
        self.pyradiomics_version = str(radiomics_version)
        self.params: dict[str, Any] = {
            "imageType": copy.deepcopy(self._reference.enabledImagetypes),
            "featureClass": copy.deepcopy(self._reference.enabledFeatures),
            "setting": copy.deepcopy(self._reference.settings),
        }
        self.settings: dict[str, Any] = {**self.params["setting"], **(self.params["imageType"].get("Original") or {})}
        self.params_hash = hashlib.sha256(_canonical_json(self.params).encode()).hexdigest()
        # The inner extractor runs after our own normalisation/resampling/cropping.
        inner = copy.deepcopy(raw)
        # preCrop is reproduced by our own crop (see crop_margin), and must not re-crop a resampled image.
        inner["setting"].update(normalize=False, resampledPixelSpacing=None, preCrop=False)
        # Our own calls use pyradiomics' classes with lower fixed costs (same values, see radiomic_fast).
        self._inner = ScopedFeatureExtractor(inner)
        self._inner_params = inner

    def __repr__(self) -> str:
        return f"RadiomicExtractor({self.source!r}, params_hash={self.params_hash[:12]})"

    @classmethod
    def for_modality(cls, modality: str) -> RadiomicExtractor:
        """Extractor with the shipped default params of ``CT``, ``MR`` or ``US``."""
        return cls(default_params_path(modality))

    def execute(self, image: sitk.Image, mask: sitk.Image, crop: bool = True) -> dict[str, float]:
        """Features of the ROI (mask voxels equal to the ``label`` setting, default 1).

        ``image``: 3D (or 2D, taken as one slice) scalar image; ``mask``: same grid, binary.
        ``crop=False`` runs plain pyradiomics on the full image (the reference behaviour,
        without the thin-volume treatments of the module doc).
        Raises :class:`MaskError` for an empty, one-voxel or too-thin ROI.
        """
        return self.execute_case(image, mask, crop)[0]

    def execute_case(self, image: sitk.Image, mask: sitk.Image, crop: bool = True) -> tuple[dict[str, float], list[str]]:
        """:meth:`execute`, plus one note per thin-volume treatment applied to this case."""
        image, mask = _as_volumes(image, mask)
        image = _widen_small_integers(image)
        label = int(self._reference.settings.get("label", 1))
        bbox = _label_bbox(mask, label)  # raises MaskError when empty / one voxel
        _check_roi_size(bbox, image.GetSpacing(), self._reference.settings)
        if self._reference.settings.get("normalize", False):
            _check_not_constant(image)
        notes: list[str] = []
        # correctMask resamples a mask on another grid onto the image: that needs the whole mask.
        if crop and not self._reference.settings.get("correctMask", False):
            image, mask, extractor = self._preprocess(image, mask, bbox, notes)
        else:
            extractor = self._reference
        skipped = skipped_log_images(self._reference.enabledImagetypes, self._reference.settings, image)
        notes += [f"{name}: {why}; its features are empty (NaN)" for name, why in skipped.items()]
        try:
            # one-slice pictures take ~0.2 s: shipping them to workers or threads costs more than it saves
            if extractor is self._inner and self.processes > 1 and image.GetSize()[2] > 1:
                result = self._execute_in_parts(image, mask)
            elif extractor is self._inner and self.threads > 1 and _worth_threads(image):
                result = self._execute_in_threads(image, mask)
            else:
                result = extractor.execute(image, mask)
        except ValueError as exc:
            raise _translate_error(exc, label) from exc
        # .real: glcm MCC comes back as a complex number with zero imaginary part (numbers and
        # numpy values all have .real; np.real would cost a function call per feature).
        features = {name: float(value.real) for name, value in result.items() if not name.startswith("diagnostics_")}
        return _with_empty_images(features, list(skipped), self._reference.enabledImagetypes,
                                  self._reference.settings, self._reference.enabledFeatures), notes

    def _execute_in_parts(self, image: sitk.Image, mask: sitk.Image) -> dict[str, Any]:
        """The inner extraction split by filtered image (one LoG sigma, the wavelet bank, ...),
        run in worker processes and merged in pyradiomics' own order.

        Each filtered image's features depend only on that image, so the values are those of
        one sequential run (a test checks bit equality); shape features come from the first
        part only. On 2 cores a CT with LoG + wavelet gets ~1.5x: the wavelet bank is one part.
        """
        from concurrent.futures.process import BrokenProcessPool

        parts = split_params(self._inner_params)
        order = sorted(range(len(parts)), key=lambda i: -_part_cost(parts[i]))  # biggest first
        try:
            pool = self._worker_pool(len(parts))
            futures = {i: pool.submit(_execute_part, json.dumps(parts[i], sort_keys=True), image, mask) for i in order}
            result: dict[str, Any] = {}
            for i in range(len(parts)):
                result.update(futures[i].result())
            return result
        except (BrokenProcessPool, RuntimeError, OSError) as exc:
            # e.g. a script without `if __name__ == "__main__":` (spawned workers re-run it)
            logging.getLogger(__name__).warning("parallel radiomics unavailable (%s); running in this process", exc)
            self.close()
            self.processes = 1
            return self._inner.execute(image, mask)

    def _execute_in_threads(self, image: sitk.Image, mask: sitk.Image) -> dict[str, Any]:
        """The inner extraction split by filtered image as in :meth:`_execute_in_parts`, in
        threads of this process (no process a user or Slicer sees); same values, tested."""
        from RadFusionScreenLib.features.radiomic_fast import ScopedFeatureExtractor, execute_in_threads

        if self._thread_parts is None:
            self._thread_parts = [ScopedFeatureExtractor(part) for part in split_params(self._inner_params)]
        return execute_in_threads(self._thread_parts, image, mask, self.threads)

    def _worker_pool(self, n_parts: int) -> Any:
        if self._pool is None:
            from concurrent.futures import ProcessPoolExecutor
            from multiprocessing import get_context

            # spawn: the parent may hold torch / OpenMP thread pools that do not survive a fork
            self._pool = ProcessPoolExecutor(max_workers=min(self.processes, n_parts), mp_context=get_context("spawn"))
        return self._pool

    def close(self) -> None:
        """Stop the worker processes (if any)."""
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def _preprocess(self, image: sitk.Image, mask: sitk.Image, bbox: np.ndarray,
                    notes: list[str] | None = None) -> tuple[sitk.Image, sitk.Image, Any]:
        """Normalise / resample / crop as pyradiomics would, but only around the ROI
        (thin-volume treatments are appended to ``notes``)."""
        notes = [] if notes is None else notes
        from radiomics import imageoperations

        settings = self._reference.settings
        if settings.get("normalize", False):
            image = imageoperations.normalizeImage(image, **settings)
        if settings.get("interpolator") is not None and settings.get("resampledPixelSpacing") is not None:
            # Only the image is cropped: pyradiomics aligns the new grid with the mask's corner voxel,
            # so the mask keeps its grid. It stays uint8 (nearest-neighbour resampling of 0/1 gives
            # the same voxels as pyradiomics' UInt32 copy, without a 4-bytes-per-voxel full volume).
            image = _crop(image, _grow(bbox, _resample_margin(settings, mask), image.GetSize(), ()))
            try:
                image, mask = _resample(image, mask, bbox, settings, notes)
            except ValueError as exc:
                raise _translate_error(exc, int(settings.get("label", 1))) from exc
            return image, mask, self._inner
        margin, wrap_axes = crop_margin(self._reference.enabledImagetypes, settings, image.GetSpacing())
        if margin is None:  # a whole-image filter is enabled: cropping would change its values
            return image, sitk.Cast(mask, sitk.sitkUInt32), self._inner
        region = _grow(bbox, margin, image.GetSize(), wrap_axes)
        return _crop(image, region), sitk.Cast(_crop(mask, region), sitk.sitkUInt32), self._inner


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


# Below this many voxels on the extraction grid (a 30 x 30 x 15 nodule crop has ~13k) the work is
# mostly pyradiomics' per-call Python, which holds the GIL: threads would only add their set-up.
_THREADED_MIN_VOXELS = 100_000


def _worth_threads(image: sitk.Image) -> bool:
    return image.GetSize()[2] > 1 and image.GetNumberOfPixels() >= _THREADED_MIN_VOXELS


def split_params(params: Mapping[str, Any]) -> list[dict[str, Any]]:
    """pyradiomics params split into one params dict per filtered image, in pyradiomics'
    order: LoG into one part per sigma; shape features only in the first part."""
    parts = []
    setting = params.get("setting") or {}
    for image_type, custom in (params.get("imageType") or {}).items():
        custom = dict(custom or {})
        variants = [custom]
        if image_type == "LoG":
            sigmas = custom.get("sigma", setting.get("sigma", []))
            variants = [dict(custom, sigma=[sigma]) for sigma in sigmas] or [custom]
        for variant in variants:
            classes = dict(params.get("featureClass") or {})
            if parts:
                classes = {k: v for k, v in classes.items() if not k.startswith("shape")}
            parts.append({"imageType": {image_type: variant}, "featureClass": classes, "setting": dict(setting)})
    return parts


def _part_cost(part: Mapping[str, Any]) -> int:
    """Rough relative cost: the wavelet bank computes 8 (3D) sub-band images."""
    return 8 if "Wavelet" in part["imageType"] else 1


_PART_EXTRACTORS: dict[str, Any] = {}


def _execute_part(params_json: str, image: sitk.Image, mask: sitk.Image) -> dict[str, Any]:
    """Worker side: one part's extractor (built once per process), then its features."""
    if params_json not in _PART_EXTRACTORS:
        _prepare_pyradiomics()
        from RadFusionScreenLib.features.radiomic_fast import ScopedFeatureExtractor

        _PART_EXTRACTORS[params_json] = ScopedFeatureExtractor(json.loads(params_json))
    return dict(_PART_EXTRACTORS[params_json].execute(image, mask))


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


def skipped_log_images(image_types: Mapping[str, Any], settings: Mapping[str, Any],
                       image: sitk.Image) -> dict[str, str]:
    """LoG images pyradiomics will skip on this image (its own size rules), with the reason."""
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
        if size.min() < 4:
            skipped[log_image_name(sigma)] = (f"the image on the extraction grid is {grid} voxels; a 3D LoG "
                                              "needs at least 4 on every axis")
        elif not np.all(size >= np.ceil(float(sigma) / spacing) + 1):
            skipped[log_image_name(sigma)] = (f"the image on the extraction grid ({grid} voxels) is smaller than "
                                              "this sigma needs (ceil(sigma / spacing) + 1 per axis)")
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


def _load_params(params: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(params, Mapping):
        return copy.deepcopy(dict(params))
    path = Path(params)
    if not path.is_file():
        raise InputError(f"params file not found: {path} (give a pyradiomics params YAML, or use default_params_path)")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise InputError(f"params file {path} is not valid YAML: {exc}") from exc
    if not isinstance(loaded, dict):
        raise InputError(f"params file {path} must hold a mapping (imageType / featureClass / setting)")
    return loaded


def _canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _prepare_pyradiomics() -> None:
    """Once per process: pyradiomics' per-case INFO/WARNING chatter off (errors stay), and its
    fixed-bin-width edges computed without a Python loop over the ROI (see _fast_bin_edges)."""
    global _PYRADIOMICS_PREPARED
    if _PYRADIOMICS_PREPARED:
        return
    import radiomics
    from radiomics import imageoperations

    radiomics.setVerbosity(logging.ERROR)
    logging.getLogger("radiomics").setLevel(logging.ERROR)
    logging.getLogger("pykwalify").setLevel(logging.CRITICAL)
    if not hasattr(imageoperations.getBinEdges, "__wrapped__"):
        imageoperations.getBinEdges = _fast_bin_edges(imageoperations.getBinEdges)
    _PYRADIOMICS_PREPARED = True


def _fast_bin_edges(get_bin_edges: Callable[..., Any]) -> Callable[..., Any]:
    """pyradiomics' ``getBinEdges``, fed only the ROI's minimum and maximum when binning by width.

    With ``binWidth`` the edges depend on nothing else, but pyradiomics takes them with Python's
    built-in ``min``/``max``, one array element at a time: ~15 ms per call on a 400k-voxel ROI,
    called once per feature class and filtered image (72 calls, 2.2 s of the CT params' 14 s on
    STS_001). The original runs on a 2-value array of the same dtype, so the edges are its own
    (tested against it). Bin counts, tiny or NaN inputs go to it unchanged.
    """

    @functools.wraps(get_bin_edges)
    def bin_edges(parameterValues: Any, **kwargs: Any) -> Any:  # noqa: N803 (pyradiomics' name)
        values = np.asarray(parameterValues)
        if kwargs.get("binCount") is None and values.ndim == 1 and values.size > 2:
            low, high = values.min(), values.max()
            if values.dtype.kind in "iu" or not (np.isnan(low) or np.isnan(high)):
                values = np.array([low, high], dtype=values.dtype)
        return get_bin_edges(values, **kwargs)

    return bin_edges
