"""radiomic_fast: pyradiomics' feature values, bit for bit, from the faster feature classes and threads.

Every comparison is exact (==, NaN equal to NaN): the fast classes keep each floating-point
operation and its order, so any difference is a bug, however small. One exception: GLCM MCC
comes from singular values, not pyradiomics' general eigen-solver; against pyradiomics it may
differ by that solver's own error (up to ~1e-7 per angle where eigenvalues are close), and it is checked
on its own against a 50-digit reference.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import SimpleITK as sitk
from radiomics import getFeatureClasses
from radiomics.featureextractor import RadiomicsFeatureExtractor

from conftest import shared_path
from RadFusionScreenLib.features.radiomic import scoped_classes as radiomic_fast
from RadFusionScreenLib.features.radiomic.direct_reductions import NUMPY_DIRECT
from RadFusionScreenLib.features.radiomic import native_calls as radiomic_nogil
from RadFusionScreenLib.inputs.images import read_image, read_mask
from RadFusionScreenLib.features.radiomic import RadiomicExtractor, default_params_path
from RadFusionScreenLib.features.radiomic.native_calls import reading
from RadFusionScreenLib.features.radiomic.scoped_classes import ScopedFeatureExtractor
from RadFusionScreenLib.features.radiomic.thin_volumes import IMAGE_OPERATIONS
from test_radiomic import MCC_TOLERANCE, ct_like

ALL_CLASSES = {"shape": None, "firstorder": None, "glcm": None, "glrlm": None, "glszm": None, "gldm": None,
               "ngtdm": None}
# LIDC crops: a wide wavelet-LLL gray-level range (~200 bins: large GLCMs; the widest, 379 bins,
# also agrees but costs pyradiomics' dense MCC 35 s), a RAS-stored crop, a 2-slice crop (empty
# GLCM angles are deleted, thin-volume treatments apply).
LIDC_CASES = ("LIDC-IDRI-0375_R_1", "LIDC-IDRI-0262_R_1", "LIDC-IDRI-0321_R_2")


def assert_identical(expected: dict, got: dict, mcc_tolerance: float = MCC_TOLERANCE) -> None:
    """Every feature equal; MCC (glcm_MCC) within ``mcc_tolerance`` (0: equal too)."""
    assert list(got) == list(expected)  # same features, same order
    differing = [name for name, value in expected.items()
                 if not (_same(value, got[name]) or _close_mcc(name, value, got[name], mcc_tolerance))]
    assert not differing, f"{len(differing)} features differ, e.g. {[(n, expected[n], got[n]) for n in differing[:3]]}"


def _close_mcc(name: str, a, b, tolerance: float) -> bool:
    return name.endswith("_glcm_MCC") and bool(np.all(np.abs(np.real(a) - np.real(b)) <= tolerance))


def _same(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and bool(np.all((a == b) | (np.isnan(np.real(a)) & np.isnan(np.real(b)))))


def both_extractors(params: dict, image: sitk.Image, mask: sitk.Image) -> tuple[dict, dict]:
    stock = RadiomicsFeatureExtractor(params).execute(image, mask)
    fast = ScopedFeatureExtractor(params).execute(image, mask)
    return _features(stock), _features(fast)


def _features(result: dict) -> dict:
    return {name: value for name, value in result.items() if not name.startswith("diagnostics_")}


def textured(seed: int, shape=(9, 24, 26), levels: float = 400.0) -> tuple[sitk.Image, sitk.Image]:
    """A smooth + noisy volume and a blob-shaped ROI (integers, so bin widths cut it into many levels)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape)
    smooth = np.sin(x / 3.0 + seed) * np.cos(y / 4.0) + 0.3 * z
    voxels = np.round(levels * smooth + 40 * rng.standard_normal(shape)).astype(np.int32)
    centre = np.array(shape) / 2
    inside = ((z - centre[0]) / 3.5) ** 2 + ((y - centre[1]) / 8) ** 2 + ((x - centre[2]) / 9) ** 2 < 1
    image = sitk.GetImageFromArray(voxels)
    image.SetSpacing((0.8, 0.7, 2.0))
    mask = sitk.GetImageFromArray(inside.astype(np.uint8))
    mask.CopyInformation(image)
    return image, mask


SETTINGS = {
    "default": {"binWidth": 25},
    "fine bins (large Ng)": {"binWidth": 8},
    "bin count, 2 distances, asymmetric GLCM": {"binCount": 32, "distances": [1, 2], "symmetricalGLCM": False},
    "weighted (one GLCM angle left)": {"binWidth": 10, "weightingNorm": "manhattan"},
    "force2D": {"binWidth": 10, "force2D": True, "force2Ddimension": 0},
    "gldm alpha, shift": {"binWidth": 15, "gldm_a": 2, "voxelArrayShift": 1000},
}


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("setting", list(SETTINGS), ids=list(SETTINGS))
def test_fast_classes_equal_pyradiomics(setting, seed):
    image, mask = textured(seed)
    params = {"imageType": {"Original": {}, "LoG": {"sigma": [1.0]}}, "featureClass": ALL_CLASSES,
              "setting": SETTINGS[setting]}
    stock, fast = both_extractors(params, image, mask)
    assert len(stock) == 200  # 14 shape + 2 images x 93 texture features
    assert_identical(stock, fast)


def test_flat_two_voxel_and_one_slice_rois():
    """One gray level (MCC's flat-region 1, NaN correlations), a 3-voxel ROI, an ROI in one slice."""
    image, _ = textured(3)
    params = {"imageType": {"Original": {}}, "featureClass": ALL_CLASSES, "setting": {"binWidth": 25}}
    shape = sitk.GetArrayViewFromImage(image).shape
    rois = {"flat": np.zeros(shape, np.uint8), "three voxels": np.zeros(shape, np.uint8),
            "one slice": np.zeros(shape, np.uint8)}
    rois["flat"][3:6, 5:10, 5:10] = 1
    rois["three voxels"][4, 7, 7:9] = rois["three voxels"][4, 8, 7] = 1
    rois["one slice"][4, 3:15, 4:17] = 1
    flat = sitk.GetArrayFromImage(image)
    flat[3:6, 5:10, 5:10] = 100
    images = {"flat": sitk.GetImageFromArray(flat), "three voxels": image, "one slice": image}
    for name, roi in rois.items():
        images[name].CopyInformation(image)
        mask = sitk.GetImageFromArray(roi)
        mask.CopyInformation(image)
        stock, fast = both_extractors(params, images[name], mask)
        assert_identical(stock, fast)


def _glcm(rng: np.random.Generator, ng: int, angles: int, occupancy: float) -> np.ndarray:
    """A normalised symmetric GLCM (1 x Ng x Ng x angles) with about ``occupancy`` of its cells filled."""
    counts = rng.integers(1, 50, size=(1, ng, ng, angles)) * (rng.random((1, ng, ng, angles)) < occupancy)
    P = (counts + counts.transpose(0, 2, 1, 3)).astype(float)  # noqa: N806
    P[0, 0, 0] += 1  # no empty angle
    return P / P.sum((1, 2), keepdims=True)


def _reference_mcc(P: np.ndarray) -> list[float]:  # noqa: N803
    """Haralick's definition in 50-digit arithmetic: per angle, the square root of the second
    largest eigenvalue of Q[i, j] = sum_k P[i, k] P[j, k] / (px[i] py[k]), terms with P = 0 left
    out (pyradiomics adds eps = 2.2e-16 to each denominator instead: a guard against 0 / 0 that
    also moves MCC by ~eps / (px py), 1e-11 on these small GLCMs)."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 50
    values = []
    for angle in range(P.shape[3]):
        p = [[mpmath.mpf(float(v)) for v in row] for row in P[0, :, :, angle]]
        ng = len(p)
        px = [sum(p[i]) for i in range(ng)]
        py = [sum(p[i][k] for i in range(ng)) for k in range(ng)]
        q = mpmath.matrix(ng, ng)
        for i in range(ng):
            for j in range(ng):
                q[i, j] = sum(p[i][k] * p[j][k] / (px[i] * py[k]) for k in range(ng) if p[i][k] and p[j][k])
        eigenvalues = sorted(mpmath.re(e) for e in mpmath.eig(q, left=False, right=False))
        values.append(float(mpmath.sqrt(max(eigenvalues[-2], 0))))
    return values


def test_mcc_matches_a_50_digit_reference():
    """MCC per angle from singular values == its definition computed to 50 digits, on
    sparse and dense GLCMs, a gray level absent in one direction, and a GLCM in two disconnected
    parts (eigenvalue 1 twice: MCC exactly 1, where a general eigen-solver loses up to ~1e-7)."""
    rng = np.random.default_rng(5)
    glcms = [_glcm(rng, ng, 3, occupancy) for ng, occupancy in ((2, 1.0), (6, 0.3), (9, 0.6), (12, 1.0))]
    absent = _glcm(rng, 8, 2, 0.5)
    absent[0, 3, :, 0] = absent[0, :, 3, 0] = 0  # gray level 3 has no neighbour in direction 0
    glcms.append(absent / absent.sum((1, 2), keepdims=True))
    split = np.zeros((1, 8, 8, 2))
    split[0, :4, :4], split[0, 4:, 4:] = _glcm(rng, 4, 2, 1.0)[0], _glcm(rng, 4, 2, 1.0)[0]
    glcms.append(split / split.sum((1, 2), keepdims=True))
    for P in glcms:  # noqa: N806
        got = radiomic_fast._mcc_by_angle(P[0], P[0].sum(1), P[0].sum(0))
        np.testing.assert_allclose(got, _reference_mcc(P), rtol=0, atol=1e-13)
    assert np.allclose(radiomic_fast._mcc_by_angle(split[0], split[0].sum(1), split[0].sum(0)), 1, rtol=0, atol=1e-15)


def _volume_for_native(seed: int, shape=(30, 40, 45)) -> tuple[np.ndarray, np.ndarray]:
    """A discretised volume (gray levels 1..12) and blob mask larger than NATIVE_MIN_VOXELS."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape)
    levels = np.clip(np.round(6 + 3 * np.sin(x / 4.0) + rng.normal(0, 1.5, shape)), 1, 12).astype(np.int64)
    centre = np.array(shape) / 2
    inside = ((z - centre[0]) / 12) ** 2 + ((y - centre[1]) / 15) ** 2 + ((x - centre[2]) / 17) ** 2 < 1
    assert levels.size >= radiomic_nogil.NATIVE_MIN_VOXELS
    return levels, inside


@pytest.mark.parametrize("force2D", [False, True])
def test_native_c_calls_equal_the_extension(force2D):  # noqa: N803
    """pyradiomics' C functions called with the GIL released return what its extension returns."""
    from radiomics import cMatrices, cShape

    import ctypes

    assert radiomic_nogil.AVAILABLE, "pyradiomics-bhklab 3.1.4's C functions should be callable"
    assert not isinstance(radiomic_nogil._MATRICES, ctypes.PyDLL)  # CDLL calls release the GIL
    image, mask = _volume_for_native(4)
    image[mask] = np.maximum(image[mask], 1)
    ng, distances = int(image[mask].max()), np.array([1, 2])
    calls = {
        "calculate_glcm": (image, mask, distances, ng, force2D, 1),
        "calculate_glszm": (image, mask, ng, int(mask.sum()), force2D, 1),
        "calculate_glrlm": (image, mask, ng, max(image.shape), force2D, 1),
        "calculate_ngtdm": (image, mask, distances, ng, force2D, 1),
        "calculate_gldm": (image, mask, distances, ng, 1, force2D, 1),
    }
    for name, args in calls.items():
        expected, got = getattr(cMatrices, name)(*args), getattr(radiomic_nogil, name)(*args)
        pairs = zip(expected, got) if isinstance(expected, tuple) else [(expected, got)]
        for e, g in pairs:
            assert e.dtype == g.dtype and np.array_equal(e, g), name
    padded, spacing = np.pad(mask, 1), np.array([2.5, 0.7, 0.8])
    assert radiomic_nogil.calculate_coefficients(padded, spacing) == cShape.calculate_coefficients(padded, spacing)
    with pytest.raises(IndexError, match="GLCM"):  # the extension's error for a gray level above Ng
        radiomic_nogil.calculate_glcm(image, mask, distances, ng - 1, force2D, 1)


def test_fast_classes_through_the_gil_free_calls(monkeypatch):
    """Small images normally take the extension's own calls; here every call goes through ctypes."""
    monkeypatch.setattr(radiomic_nogil, "NATIVE_MIN_VOXELS", 0)
    for setting in ("default", "bin count, 2 distances, asymmetric GLCM", "force2D", "gldm alpha, shift"):
        image, mask = textured(0)
        params = {"imageType": {"Original": {}, "LoG": {"sigma": [1.0]}}, "featureClass": ALL_CLASSES,
                  "setting": SETTINGS[setting]}
        assert_identical(*both_extractors(params, image, mask))


def test_pyradiomics_itself_is_untouched():
    """The fast classes are ours alone: pyradiomics' class table and extractor are its own."""
    ScopedFeatureExtractor({"imageType": {"Original": {}}, "featureClass": ALL_CLASSES})
    classes = getFeatureClasses()
    assert all(cls.__module__.startswith("radiomics.") for cls in classes.values())
    assert RadiomicsFeatureExtractor.computeFeatures is not ScopedFeatureExtractor.computeFeatures
    # the fast classes report pyradiomics' own feature table (names and deprecated flags)
    for name, fast in radiomic_fast.FEATURE_CLASSES.items():
        assert fast.getFeatureNames() == classes[name].getFeatureNames()
    # their copies of pyradiomics' methods see the direct reductions; pyradiomics' own see numpy
    getter = radiomic_fast.FEATURE_CLASSES["glcm"].getJointEnergyFeatureValue
    assert getter.__globals__["numpy"] is NUMPY_DIRECT and getter is not classes["glcm"].getJointEnergyFeatureValue
    assert classes["glcm"].getJointEnergyFeatureValue.__globals__["numpy"] is np


def test_direct_reductions_equal_numpy():
    """sum / nanmean / nanpercentile / nanmedian of NUMPY_DIRECT == numpy's, bit for bit and of the
    same type: plain float rows (odd and even lengths, ties, strided views) take the direct path;
    NaN, float32, axis tuples, empty arrays and other arguments go to numpy's own."""
    rng = np.random.default_rng(7)
    arrays = []
    for length in (1, 2, 7, 8, 599, 600, 1001):
        values = rng.normal(size=(2, length)) * 10.0 ** rng.integers(-3, 4)
        arrays += [values, np.round(values), values[:1], np.ascontiguousarray(values[:, ::2]), values[:, ::2]]
    with_nan = rng.normal(size=(1, 40))
    with_nan[0, 3] = np.nan
    arrays += [with_nan, rng.normal(size=(1, 40)).astype(np.float32), np.empty((1, 0))]
    calls = [("sum", (1,), {}), ("sum", (), {}), ("sum", (1,), {"keepdims": True}), ("nanmean", (1,), {}),
             ("nanmean", ((0, 1),), {}), ("nanmedian", (1,), {})]
    calls += [("nanpercentile", (q,), {"axis": 1}) for q in (10, 25, 75, 90)] + [("nanpercentile", (50, 1), {})]
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # numpy's own "mean of empty slice"
        for array in arrays:
            for name, args, kwargs in calls:
                expected = getattr(np, name)(array, *args, **kwargs)
                got = getattr(NUMPY_DIRECT, name)(array, *args, **kwargs)
                same = type(got) is type(expected) and np.array_equal(got, expected, equal_nan=True)
                assert same, (name, array.shape, array.dtype)


class _StockWithThinLog(RadiomicsFeatureExtractor):
    """pyradiomics' own extractor and classes; LoG images as the engine makes them on a thin axis."""

    execute = reading(RadiomicsFeatureExtractor.execute, imageoperations=IMAGE_OPERATIONS)


def with_stock_classes(extractor: RadiomicExtractor) -> RadiomicExtractor:
    """The same engine (crop, resampling, thin-volume treatments), pyradiomics' own classes, one thread."""
    extractor._inner = _StockWithThinLog(extractor._inner_params)
    extractor.threads = 1
    return extractor


@pytest.mark.parametrize("case", LIDC_CASES)
def test_lidc_crops_equal_the_stock_classes(case):
    """Shipped CT params on real nodule crops: fast classes == pyradiomics' classes, every feature."""
    lidc = shared_path("lidc")
    image = read_image(lidc / "images" / f"{case}.nii.gz")
    mask = read_mask(lidc / "masks" / f"{case}.nii.gz", reference=image)
    fast, fast_notes = RadiomicExtractor(default_params_path("CT"), threads=1).execute_case(image, mask)
    stock, stock_notes = with_stock_classes(RadiomicExtractor(default_params_path("CT"))).execute_case(image, mask)
    assert len(stock) > 1000 and fast_notes == stock_notes
    assert_identical(stock, fast)


def test_threads_equal_one_sequential_run():
    """Filtered images in threads (the in-process default for 3D) == one sequential run."""
    image, mask = ct_like()
    params = {"imageType": {"Original": {}, "LoG": {"sigma": [1.0, 2.0]}, "Wavelet": {}},
              "featureClass": ALL_CLASSES, "setting": {"binWidth": 25}}
    sequential = RadiomicExtractor(params, threads=1).execute(image, mask)
    extractor = RadiomicExtractor(params, threads=3)
    threaded = extractor.execute(image, mask)
    assert extractor._thread_parts is not None  # it did run in threads (a 113 x 112 x 36 grid)
    assert_identical(sequential, threaded, mcc_tolerance=0)
    assert sum(name.startswith("original_shape_") for name in threaded) > 0


def test_small_crops_run_without_threads():
    """A nodule-sized grid is mostly GIL-bound Python: no threads there."""
    image, mask = textured(0)
    extractor = RadiomicExtractor({"imageType": {"Original": {}, "LoG": {"sigma": [1.0]}},
                                   "featureClass": {"firstorder": None}}, threads=4)
    extractor.execute(image, mask)
    assert extractor._thread_parts is None


def test_sts001_ct_in_threads_equals_the_stock_classes():
    """The STS_001 CT (117k-voxel ROI): fast classes in threads == stock classes, one thread."""
    folder = shared_path("dicom", "sts_rtstruct", "STS_001", "CT", "nifti")
    image = sitk.ReadImage(str(folder / "image" / "image.nii.gz"))
    mask = sitk.ReadImage(str(folder / "mask" / "mask.nii.gz"))
    extractor = RadiomicExtractor(default_params_path("CT"), threads=2)
    threaded = extractor.execute(image, mask)
    assert extractor._thread_parts is not None
    stock = with_stock_classes(RadiomicExtractor(default_params_path("CT"))).execute(image, mask)
    assert_identical(stock, threaded)
    assert not any(math.isnan(v) for v in threaded.values())
