"""pyradiomics' feature classes with pyradiomics' values, at a lower fixed cost; used only by our own calls.

On a small lesion (a 30 x 30 x 15 voxel LIDC crop after resampling, 12 filtered images) most
of pyradiomics' time is per-call set-up and a few dense Ng x Ng x Ng array expressions, not
voxels. :class:`ScopedFeatureExtractor` is a ``RadiomicsFeatureExtractor`` whose texture
classes are the subclasses below; nothing in the ``radiomics`` package is changed, so plain
pyradiomics in the same process (our reference extractor, other Slicer extensions) is not affected.

Every change but one keeps each floating-point operation and its order, so the values are
pyradiomics' own, bit for bit (``test_radiomic_fast.py`` compares every feature against the
stock classes on real LIDC crops, the STS_001 CT and random images). The one: GLCM MCC comes
from a singular value decomposition instead of pyradiomics' general eigen-solver, the same
number mathematically, more accurate (pyradiomics' solver loses up to ~1e-7 per angle where
eigenvalues are close) and three times faster (:func:`_mcc_by_angle`; tested against a
50-digit reference).

* per image, the six texture classes share the discretised ROI (pyradiomics bins and
  ``numpy.unique``-s the same voxels once per class) and the class' feature-name table
  (``inspect.getmembers`` per instance);
* the bin edges of that discretisation come from :func:`fast_bin_edges`: pyradiomics' own
  ``getBinEdges`` fed only the ROI's minimum and maximum when binning by width (the
  ``radiomics.imageoperations`` module itself is left as it is);
* first order: the percentiles, moment and standard deviation that several features repeat
  are computed once;
* the classes' pyradiomics methods see a numpy whose ``sum``, ``nanmean``, ``nanpercentile`` and
  ``nanmedian`` skip their Python wrappers (:mod:`.direct_reductions`);
* GLCM: the sum / difference marginals gather their cells by precomputed indices instead of
  comparing the whole Ng x Ng grid once per value; cluster shade / prominence / tendency raise
  ``i + j - ux - uy`` to a power once per distinct ``i + j`` (2 Ng - 1 values, not Ng^2).
  Voxel-based extraction and GLCMs holding NaN take pyradiomics' own code;
* the texture matrices and the 3D shape mesh come from pyradiomics' own C code, called with
  the GIL released (:mod:`.native_calls`).

:func:`execute_in_threads` runs one extractor per filtered image (see
``radiomic.params.split_params``) in threads of this process: SimpleITK filters, PyWavelets,
numpy and those C calls release the GIL, so a large ROI's images are computed side by side.
"""

from __future__ import annotations

import collections
import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy
import SimpleITK as sitk
from radiomics import (featureextractor, firstorder, getFeatureClasses, glcm, gldm, glrlm, glszm, imageoperations,
                       ngtdm, shape)

from RadFusionScreenLib.features.radiomic.direct_reductions import with_direct_reductions
from RadFusionScreenLib.features.radiomic.input_checks import check_gray_levels
from RadFusionScreenLib.features.radiomic.native_calls import CMATRICES, CSHAPE, reading
from RadFusionScreenLib.features.radiomic.thin_volumes import IMAGE_OPERATIONS

_FEATURE_NAMES: dict[type, dict[str, bool]] = {}


class ImageInputs:
    """What each texture class derives first from one (filtered) image and its mask.

    pyradiomics recomputes these in every class (GetArrayFromImage, ``mask == label``,
    binning, ``numpy.unique``); here they are computed once per image and handed out
    read-only, so no class can change another's input.
    """

    def __init__(self, image: sitk.Image, mask: sitk.Image, settings: Mapping[str, Any], name: str = "") -> None:
        self.settings = dict(settings)
        self.mask_array = _read_only(sitk.GetArrayFromImage(mask) == self.settings.get("label", 1))
        self._image = image
        self._name = name
        self._binned: tuple[numpy.ndarray, numpy.ndarray, int] | None = None

    def binned(self) -> tuple[numpy.ndarray, numpy.ndarray, int]:
        """pyradiomics' ``_applyBinning``: (discretised image, gray levels in the ROI, their maximum).

        Raises InputError when the texture matrices would need more grey levels than
        :func:`.input_checks.max_gray_levels` (their size grows with its square)."""
        if self._binned is None:
            image = sitk.GetArrayFromImage(self._image)
            matrix, _ = bin_image(image, self.mask_array, **self.settings)
            check_gray_levels(int(matrix.max(initial=0)), image[self.mask_array], self._name, self.settings)
            gray_levels = numpy.unique(matrix[self.mask_array])
            self._binned = (_read_only(matrix), gray_levels, int(numpy.max(gray_levels)))
        return self._binned


def _read_only(array: numpy.ndarray) -> numpy.ndarray:
    array.flags.writeable = False
    return array


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
        values = numpy.asarray(parameterValues)
        if kwargs.get("binCount") is None and values.ndim == 1 and values.size > 2:
            low, high = values.min(), values.max()
            if values.dtype.kind in "iu" or not (numpy.isnan(low) or numpy.isnan(high)):
                values = numpy.array([low, high], dtype=values.dtype)
        return get_bin_edges(values, **kwargs)

    return bin_edges


#: The bin edges our classes discretise with: pyradiomics' own ``getBinEdges`` (kept as
#: ``fast_bin_edges.__wrapped__``; ``radiomics.imageoperations.getBinEdges`` is not replaced,
#: so other pyradiomics users in the process, such as other Slicer extensions, are unaffected).
fast_bin_edges = _fast_bin_edges(imageoperations.getBinEdges)


def bin_image(matrix: numpy.ndarray, mask: numpy.ndarray, **settings: Any) -> tuple[numpy.ndarray, Any]:
    """pyradiomics' ``imageoperations.binImage(matrix, mask, **settings)`` with :func:`fast_bin_edges`:
    the ROI voxels get their bin (``numpy.digitize`` on pyradiomics' edges, as binImage does), the
    others 0, in an int array; returns (discretised matrix, bin edges)."""
    roi = matrix[mask]
    edges = fast_bin_edges(roi, **settings)
    discretised = numpy.zeros(matrix.shape, dtype="int")
    discretised[mask] = numpy.digitize(roi, edges)
    return discretised, edges


class _PyradiomicsClass:
    """Mixin: pyradiomics' feature table (walked once per class) and logger for our subclasses."""

    def __init__(self, inputImage: sitk.Image, inputMask: sitk.Image, **kwargs: Any) -> None:  # noqa: N803
        super().__init__(inputImage, inputMask, **kwargs)
        # log as the pyradiomics class does (its "FAILED: ..." errors), not under our module's name
        self.logger = logging.getLogger(_pyradiomics_class(type(self)).__module__)

    @classmethod
    def getFeatureNames(cls) -> dict[str, bool]:  # noqa: N802 (pyradiomics' name)
        """pyradiomics' own table (names, deprecated flags) of the class this one speeds up:
        pyradiomics walks the class with ``inspect.getmembers`` for every instance, here once per class."""
        if cls not in _FEATURE_NAMES:
            _FEATURE_NAMES[cls] = _pyradiomics_class(cls).getFeatureNames()
        return dict(_FEATURE_NAMES[cls])


class _SharedInputs(_PyradiomicsClass):
    """Mixin for the texture classes: the image's :class:`ImageInputs`, shared with the other classes."""

    def __init__(self, inputImage: sitk.Image, inputMask: sitk.Image, inputs: ImageInputs | None = None,  # noqa: N803
                 **kwargs: Any) -> None:
        self._inputs = inputs if not kwargs.get("voxelBased", False) else None
        super().__init__(inputImage, inputMask, **kwargs)

    def _initSegmentBasedCalculation(self) -> None:  # noqa: N802
        if self._inputs is None:
            super()._initSegmentBasedCalculation()
        else:
            self.maskArray = self._inputs.mask_array

    def _applyBinning(self, matrix: numpy.ndarray) -> numpy.ndarray:  # noqa: N802
        if self._inputs is None:
            return super()._applyBinning(matrix)
        binned, gray_levels, ng = self._inputs.binned()
        self.coefficients["grayLevels"] = gray_levels.copy()
        self.coefficients["Ng"] = ng
        return binned


def _pyradiomics_class(cls: type) -> type:
    return next(base for base in cls.__mro__ if base.__module__.startswith("radiomics."))


class FirstOrder(_SharedInputs, firstorder.RadiomicsFirstOrder):
    """First order with the repeated statistics (10th / 90th percentile, 2nd moment, standard
    deviation) computed once per image; callers get copies (kurtosis edits its moments in place)."""

    def _initCalculation(self, voxelCoordinates: Any = None) -> None:  # noqa: N802, N803
        self._memo: dict[Any, Any] = {}
        super()._initCalculation(voxelCoordinates)

    def _once(self, key: Any, compute: Callable[[], Any]) -> Any:
        if key not in self._memo:
            self._memo[key] = compute()
        return numpy.copy(self._memo[key])

    def _moment(self, a: numpy.ndarray, moment: int = 1) -> Any:
        compute = lambda: firstorder.RadiomicsFirstOrder._moment(a, moment)  # noqa: E731
        return self._once(("moment", moment), compute) if a is self.targetVoxelArray else compute()

    def get10PercentileFeatureValue(self) -> Any:  # noqa: N802
        return self._once("p10", super().get10PercentileFeatureValue)

    def get90PercentileFeatureValue(self) -> Any:  # noqa: N802
        return self._once("p90", super().get90PercentileFeatureValue)

    def getStandardDeviationFeatureValue(self) -> Any:  # noqa: N802
        return self._once("std", super().getStandardDeviationFeatureValue)

    def getVarianceFeatureValue(self) -> Any:  # noqa: N802
        return self.getStandardDeviationFeatureValue() ** 2  # pyradiomics: nanstd(X, 1) ** 2


class GLCM(_SharedInputs, glcm.RadiomicsGLCM):
    """GLCM without pyradiomics' dense Ng^2-per-value and Ng^3 expressions (see the module doc)."""

    _calculateMatrix = reading(glcm.RadiomicsGLCM._calculateMatrix, cMatrices=CMATRICES)

    def _dense_path(self) -> bool:
        """pyradiomics' own code for voxel-based GLCMs and for NaN cells (an empty angle)."""
        return self.P_glcm.shape[0] != 1 or not numpy.isfinite(self.P_glcm).all()

    def _calculateCoefficients(self) -> None:  # noqa: N802
        """pyradiomics' coefficients, same expressions; only pxAddy / pxSuby gather their cells
        through :func:`_sums_by_value` instead of one boolean Ng x Ng mask per value."""
        if self._dense_path():
            return super()._calculateCoefficients()
        Ng = self.coefficients["Ng"]  # noqa: N806
        eps = numpy.spacing(1)
        NgVector = self.coefficients["grayLevels"].astype("float")  # noqa: N806
        i, j = numpy.meshgrid(NgVector, NgVector, indexing="ij", sparse=True)
        kValuesSum = numpy.arange(2, (Ng * 2) + 1, dtype="float")  # noqa: N806
        kValuesDiff = numpy.arange(0, Ng, dtype="float")  # noqa: N806
        px = self.P_glcm.sum(2, keepdims=True)
        py = self.P_glcm.sum(1, keepdims=True)
        ux = numpy.sum(i[None, :, :, None] * self.P_glcm, (1, 2), keepdims=True)
        uy = numpy.sum(j[None, :, :, None] * self.P_glcm, (1, 2), keepdims=True)
        pxAddy = _sums_by_value(self.P_glcm, i + j, kValuesSum)  # noqa: N806
        pxSuby = _sums_by_value(self.P_glcm, numpy.abs(i - j), kValuesDiff)  # noqa: N806
        HXY = (-1) * numpy.sum((self.P_glcm * numpy.log2(self.P_glcm + eps)), (1, 2))  # noqa: N806
        self.coefficients.update(eps=eps, i=i, j=j, kValuesSum=kValuesSum, kValuesDiff=kValuesDiff, px=px, py=py,
                                 ux=ux, uy=uy, pxAddy=pxAddy, pxSuby=pxSuby, HXY=HXY)
        self._cluster_base = None

    def _cluster_term(self, power: int) -> numpy.ndarray:
        """``((i + j)[None, :, :, None] - ux - uy) ** power`` (pyradiomics' cluster term), the
        subtraction and power evaluated once per distinct ``i + j`` and then spread over the grid."""
        if self._cluster_base is None:
            sums = self.coefficients["i"] + self.coefficients["j"]
            values, where = numpy.unique(sums, return_inverse=True)
            base = values[None, :, None] - self.coefficients["ux"][:, 0] - self.coefficients["uy"][:, 0]
            self._cluster_base = (base, where.reshape(sums.shape))
        base, where = self._cluster_base
        return numpy.take(base ** power, where, axis=1)  # C-ordered (Nv, Ng, Ng, angles), as pyradiomics' own

    def _cluster_feature(self, power: int, dense: Callable[[], Any]) -> Any:
        if self._dense_path():
            return dense()
        return numpy.nanmean(numpy.sum(self.P_glcm * self._cluster_term(power), (1, 2)), 1)

    def getClusterProminenceFeatureValue(self) -> Any:  # noqa: N802
        return self._cluster_feature(4, super().getClusterProminenceFeatureValue)

    def getClusterShadeFeatureValue(self) -> Any:  # noqa: N802
        return self._cluster_feature(3, super().getClusterShadeFeatureValue)

    def getClusterTendencyFeatureValue(self) -> Any:  # noqa: N802
        return self._cluster_feature(2, super().getClusterTendencyFeatureValue)

    def getMCCFeatureValue(self) -> Any:  # noqa: N802
        """pyradiomics' MCC (the mean over angles of the square root of the second largest
        eigenvalue of Q), each angle's value as a singular value: see :func:`_mcc_by_angle`."""
        if self._dense_path():
            return super().getMCCFeatureValue()
        if self.P_glcm.shape[1] < 2:
            return 1  # flat region, as pyradiomics
        coefficients = self.coefficients
        MCC = _mcc_by_angle(self.P_glcm[0], coefficients["px"][0, :, 0], coefficients["py"][0, 0])  # noqa: N806
        return numpy.nanmean(MCC[None, :], 1)


def _sums_by_value(P: numpy.ndarray, key: numpy.ndarray, values: numpy.ndarray) -> numpy.ndarray:  # noqa: N803
    """``numpy.array([numpy.sum(P[:, key == k, :], 1) for k in values]).transpose((1, 0, 2))``.

    A boolean index is numpy's ``key.nonzero()``, i.e. the cells in C order; a stable sort of
    ``key`` lists each value's cells in that same order, so every ``numpy.sum`` gets the same
    array as in pyradiomics.
    """
    order = numpy.argsort(key, axis=None, kind="stable")
    ordered = key.ravel()[order]
    starts = numpy.searchsorted(ordered, values, side="left")
    stops = numpy.searchsorted(ordered, values, side="right")
    rows, cols = numpy.divmod(order, key.shape[1])
    # numpy.add.reduce is what numpy.sum runs for an ndarray, without its Python-level wrapper
    sums = [numpy.add.reduce(P[:, rows[a:b], cols[a:b], :], 1) for a, b in zip(starts, stops)]
    return numpy.array(sums).transpose((1, 0, 2))


def _mcc_by_angle(P: numpy.ndarray, px: numpy.ndarray, py: numpy.ndarray) -> numpy.ndarray:  # noqa: N803
    """MCC of each angle of one GLCM ``P`` (Ng x Ng x angles; marginals ``px``, ``py``: Ng x angles).

    pyradiomics defines it as the square root of the second largest eigenvalue of
    ``Q = Px^-1 P Py^-1 P^T`` (Px, Py: the marginals as diagonal matrices) and takes the
    eigenvalues of Q with a general eigen-solver (LAPACK geev). Q is similar to the symmetric
    ``A A^T`` with ``A = Px^-1/2 P Py^-1/2`` (``Q = Px^-1/2 A A^T Px^1/2``), so its eigenvalues are
    the squared singular values of A and MCC is A's second largest singular value. A gray level
    absent in one direction gives a zero row in Q and in A alike. SVD is accurate to ~1e-16 of
    the largest singular value (1), where geev loses up to ~1e-7 on close eigenvalues (two
    disconnected parts of a GLCM: eigenvalue 1 twice), and takes a third of geev's time.
    Left out: pyradiomics' ``+ eps`` (2.2e-16) in Q's denominators, a guard against 0 / 0 that
    also moves each term by eps / (px py) of itself (MCC by ~1e-11 where probabilities are 1e-3).
    """
    scale = numpy.sqrt(px)[:, None, :] * numpy.sqrt(py)[None, :, :]
    A = numpy.divide(P, scale, out=numpy.zeros_like(P), where=P > 0)  # noqa: N806 (P > 0: px, py > 0 there)
    return numpy.linalg.svd(A.transpose(2, 0, 1), compute_uv=False)[:, 1]  # descending per angle


# The other classes are pyradiomics' own, sharing the image inputs, their C matrix released from the GIL.
class GLRLM(_SharedInputs, glrlm.RadiomicsGLRLM):
    _calculateMatrix = reading(glrlm.RadiomicsGLRLM._calculateMatrix, cMatrices=CMATRICES)


class GLSZM(_SharedInputs, glszm.RadiomicsGLSZM):
    _calculateMatrix = reading(glszm.RadiomicsGLSZM._calculateMatrix, cMatrices=CMATRICES)


class GLDM(_SharedInputs, gldm.RadiomicsGLDM):
    _calculateMatrix = reading(gldm.RadiomicsGLDM._calculateMatrix, cMatrices=CMATRICES)


class NGTDM(_SharedInputs, ngtdm.RadiomicsNGTDM):
    _calculateMatrix = reading(ngtdm.RadiomicsNGTDM._calculateMatrix, cMatrices=CMATRICES)


class Shape(_PyradiomicsClass, shape.RadiomicsShape):
    """3D shape with the mesh (surface, volume, diameters: 1.1 s on a 117k-voxel ROI) computed
    by pyradiomics' C code with the GIL released."""

    _initSegmentBasedCalculation = reading(shape.RadiomicsShape._initSegmentBasedCalculation, cShape=CSHAPE)


FEATURE_CLASSES: dict[str, type] = {name: with_direct_reductions(cls) for name, cls in (
    ("firstorder", FirstOrder), ("glcm", GLCM), ("glrlm", GLRLM), ("glszm", GLSZM), ("gldm", GLDM), ("ngtdm", NGTDM))}


def _with_fast_shape() -> dict[str, type]:
    return {**getFeatureClasses(), "shape": Shape}


class ScopedFeatureExtractor(featureextractor.RadiomicsFeatureExtractor):
    """A ``RadiomicsFeatureExtractor`` computing texture features with :data:`FEATURE_CLASSES`
    and 3D shape with :class:`Shape` (values identical to pyradiomics'); other classes are pyradiomics' own."""

    # pyradiomics' computeShape, taking the shape class from our table
    computeShape = reading(featureextractor.RadiomicsFeatureExtractor.computeShape, getFeatureClasses=_with_fast_shape)
    # pyradiomics' execute, its LoG images also on an axis of < 4 voxels (thin_volumes.log_images)
    execute = reading(featureextractor.RadiomicsFeatureExtractor.execute, imageoperations=IMAGE_OPERATIONS)

    def computeFeatures(self, image: sitk.Image, mask: sitk.Image, imageTypeName: str,  # noqa: N802, N803
                        **kwargs: Any) -> collections.OrderedDict:
        """pyradiomics' ``computeFeatures`` loop, with one :class:`ImageInputs` for all classes."""
        if kwargs.get("voxelBased", False):
            return super().computeFeatures(image, mask, imageTypeName, **kwargs)
        inputs = ImageInputs(image, mask, kwargs, imageTypeName)
        stock = getFeatureClasses()
        featureVector: collections.OrderedDict = collections.OrderedDict()  # noqa: N806
        for class_name, feature_names in self.enabledFeatures.items():
            if class_name.startswith("shape") or class_name not in stock:
                continue
            if class_name in FEATURE_CLASSES:
                feature_class = FEATURE_CLASSES[class_name](image, mask, inputs=inputs, **kwargs)
            else:
                feature_class = stock[class_name](image, mask, **kwargs)
            for feature in feature_names or ():
                feature_class.enableFeatureByName(feature)
            for name, value in feature_class.execute().items():
                featureVector[f"{imageTypeName}_{class_name}_{name}"] = value
        return featureVector


def execute_in_threads(extractors: Sequence[featureextractor.RadiomicsFeatureExtractor], image: sitk.Image,
                       mask: sitk.Image, threads: int) -> dict[str, Any]:
    """Run ``extractors`` (one per filtered image, see ``radiomic.params.split_params``) on one image
    in ``threads`` threads and merge their features in the extractors' order.

    Each part's features depend only on its own image, so the merged result is one sequential
    run's. Biggest parts (the wavelet bank) start first.
    """
    order = sorted(range(len(extractors)), key=lambda i: -_part_cost(extractors[i]))
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(extractors))),
                            thread_name_prefix="radiomics") as pool:
        futures = {i: pool.submit(extractors[i].execute, image, mask) for i in order}
        result: dict[str, Any] = {}
        for i in range(len(extractors)):
            result.update(futures[i].result())
    return result


def _part_cost(extractor: featureextractor.RadiomicsFeatureExtractor) -> int:
    """Relative cost of a part: the wavelet bank filters into 8 (3D) images, other types into one."""
    return 8 if "Wavelet" in extractor.enabledImagetypes else 1
