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
* without resampling, image and mask are cropped by the filter margin (see
  :func:`.roi_crop.crop_margin`).

Thin volumes get documented, deterministic treatments (``RadiomicExtractor.execute_case``
returns a note for each; ``features`` writes them to the ``radiomics_notes`` column; the table of
docs/radiomics.md "Thin crops, tiny ROIs, flat intensities" lists them with the input errors):

* **B-spline resampling of an axis of 2 voxels** (e.g. a 2-slice CT crop): ITK's
  ``BSplineInterpolateImageFunction`` mirrors an out-of-range support index only once, which
  for a cubic spline needs >= 3 voxels (order k: k // 2 + 2); on 2 slices it read memory
  outside the image, so every run gave other values, sometimes garbage (32767 HU) and
  pyradiomics' "Calculation of GLCM Failed". Such an axis is first extended by ITK's own
  boundary rule (whole-sample mirror, numpy ``reflect``) far enough for the spline's
  prefilter (:data:`.roi_crop._IIR_INTERPOLATOR_MARGIN`); on axes of >= 3 voxels that extension gives
  bit-identical values to ITK's (tested), so it gives the value ITK intends.
* **LoG on an axis of 1-3 voxels** (2 slices of 1.25 mm are 3 voxels at 1 mm): ITK's recursive
  filter needs 4, so pyradiomics skips every sigma. Its boundary rule is a constant signal beyond
  the border, and repeating the edge voxels changes no bit of its LoG where it runs (tested), so
  such an axis is extended that way, filtered by pyradiomics' own function and cropped back
  (:func:`.thin_volumes.log_images`).
* **A LoG sigma pyradiomics' own rule refuses** (fewer than ceil(sigma / spacing) + 1 voxels on
  an axis, e.g. every sigma on a one-slice volume): pyradiomics skips it with a log line and its
  features would be missing from some rows; here they are NaN, with the reason.

Features come back by pyradiomics name (``original_firstorder_Mean``), diagnostics dropped.
pyradiomics' own log lines are silenced only while our calls run (:mod:`.quiet_logs`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from RadFusionScreenLib.core.errors import InputError
from RadFusionScreenLib.features.radiomic.input_checks import (_as_volumes, _check_extraction_roi, _check_finite,
                                                               _check_not_constant, _check_roi_size, _label_bbox,
                                                               _translate_error, _widen_small_integers)
from RadFusionScreenLib.features.radiomic.parallel import _execute_part, _part_cost, _worth_threads
from RadFusionScreenLib.features.radiomic.params import _canonical_json, _load_params, default_params_path, split_params
from RadFusionScreenLib.features.radiomic.quiet_logs import quiet_pyradiomics
from RadFusionScreenLib.features.radiomic.roi_crop import _crop, _grow, _resample_margin, crop_margin
from RadFusionScreenLib.features.radiomic.thin_volumes import (_resample, _with_empty_images, extended_log_note,
                                                               skipped_log_images)


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
        self.processes = max(1, int(processes))
        itk_threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
        self.threads = max(1, int(threads if threads is not None else itk_threads))
        self._pool: Any = None
        self._thread_parts: list[Any] | None = None
        from radiomics import __version__ as radiomics_version
        from radiomics.featureextractor import RadiomicsFeatureExtractor

        from RadFusionScreenLib.features.radiomic.scoped_classes import ScopedFeatureExtractor

        self.source = str(params) if isinstance(params, (str, Path)) else "<dict>"
        raw = _load_params(params)
        raw.setdefault("setting", {})
        raw["setting"] = dict(raw["setting"] or {}, additionalInfo=False)  # diagnostics are dropped anyway
        try:
            # The reference extractor reproduces plain pyradiomics (crop=False).
            with quiet_pyradiomics():
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
        # Our own calls use pyradiomics' classes with lower fixed costs (same values, see scoped_classes).
        with quiet_pyradiomics():
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
        with quiet_pyradiomics():
            image, mask = _as_volumes(image, mask)
            image = _widen_small_integers(image)
            label = int(self._reference.settings.get("label", 1))
            bbox = _label_bbox(mask, label)  # raises MaskError when empty / one voxel
            _check_roi_size(bbox, image.GetSpacing(), self._reference.settings)
            _check_finite(image, mask, label)
            if self._reference.settings.get("normalize", False):
                _check_not_constant(image)
            notes: list[str] = []
            # correctMask resamples a mask on another grid onto the image: that needs the whole mask.
            if crop and not self._reference.settings.get("correctMask", False):
                original_mask = mask
                image, mask, extractor = self._preprocess(image, mask, bbox, notes)
                _check_extraction_roi(mask, original_mask, label, self._reference.settings)
                extended = extended_log_note(self._reference.enabledImagetypes, self._reference.settings, image)
                notes += [extended] if extended else []
            else:
                extractor = self._reference
            skipped = skipped_log_images(self._reference.enabledImagetypes, self._reference.settings, image,
                                         extend_thin_axes=extractor is self._inner)
            notes += [f"{name}: {why}; its features are empty (NaN)" for name, why in skipped.items()]
            try:
                # one-slice pictures take ~0.2 s: shipping them to workers or threads costs more than it saves
                if extractor is self._inner and self.processes > 1 and image.GetSize()[2] > 1:
                    result = self._execute_in_parts(image, mask)
                elif extractor is self._inner and self.threads > 1 and _worth_threads(image):
                    result = self._execute_in_threads(image, mask)
                else:
                    result = extractor.execute(image, mask)
            except (ValueError, IndexError) as exc:
                raise _translate_error(exc, label, "x".join(map(str, image.GetSize()))) from exc
            # .real: glcm MCC comes back as a complex number with zero imaginary part (numbers and
            # numpy values all have .real; np.real would cost a function call per feature).
            features = {name: float(value.real) for name, value in result.items()
                        if not name.startswith("diagnostics_")}
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
        from RadFusionScreenLib.features.radiomic.scoped_classes import ScopedFeatureExtractor, execute_in_threads

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

