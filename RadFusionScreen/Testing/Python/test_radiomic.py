"""RadiomicExtractor: ROI-cropped extraction equals plain pyradiomics; params; mask errors."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import yaml

from conftest import shared_path
from RadFusionScreenLib.core.errors import GeometryMismatchError, InputError, MaskError
from RadFusionScreenLib.features.radiomic import RadiomicExtractor, crop_margin, default_params_path

# Cropped and plain extraction agree to the bit for integer images (and for filters on any
# image: the LoG / wavelet margins are chosen for that). Resampling a float64 (normalised)
# image evaluates the interpolator at continuous indices computed from a different origin:
# last-bit differences, measured <= 3e-11 relative. 1e-9 leaves room, and still fails for any
# real margin error (those are >= 1e-4, see the margin tests below).
RTOL = 1e-9

# Small filters so the margins fit well inside a small volume and the crop really crops.
FILTERED = {
    "imageType": {"Original": {}, "LoG": {"sigma": [1.0]}, "Wavelet": {}},
    "featureClass": {"firstorder": None, "glcm": None, "glszm": None, "ngtdm": None},
    "setting": {"binWidth": 25},
}


def ct_like(shape=(36, 112, 113), spacing=(0.8, 0.8, 2.5), centre=(18, 60, 50), radius_mm=7.0, seed=0):
    """CT-like int16 volume (numpy order z, y, x): soft tissue, air, a bone slab, a textured lesion."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape).astype(float)
    voxels = 40 + 20 * rng.standard_normal(shape)
    voxels[:, :, : shape[2] // 8] = -1000 + 10 * rng.standard_normal((shape[0], shape[1], shape[2] // 8))
    voxels[:, shape[1] // 3 : shape[1] // 3 + 5, :] += 700
    dist = np.sqrt(((z - centre[0]) * spacing[2]) ** 2 + ((y - centre[1]) * spacing[1]) ** 2
                   + ((x - centre[2]) * spacing[0]) ** 2)
    lesion = dist < radius_mm * (1 + 0.15 * np.sin(3 * np.arctan2(y - centre[1], x - centre[2])))
    voxels[lesion] += 30 + 40 * np.sin(x[lesion] / 2.0) + 15 * rng.standard_normal(int(lesion.sum()))
    image = sitk.GetImageFromArray(np.round(voxels).astype(np.int16))
    image.SetSpacing(spacing)
    image.SetOrigin((-12.3, 40.7, -300.0))
    mask = sitk.GetImageFromArray(lesion.astype(np.uint8))
    mask.CopyInformation(image)
    return image, mask


# GLCM MCC against plain pyradiomics': ours comes from singular values, pyradiomics' from a general
# eigen-solver whose error reaches ~1e-7 per angle where eigenvalues are close (test_radiomic_fast checks ours
# against a 50-digit reference). On the 473 LIDC crops the largest difference is 1.5e-8.
MCC_TOLERANCE = 1e-6


def assert_same_features(plain: dict[str, float], cropped: dict[str, float], rtol: float = RTOL) -> None:
    """Equal to ``rtol`` (0: bit for bit, NaN equal to NaN); GLCM MCC to :data:`MCC_TOLERANCE`."""
    assert plain.keys() == cropped.keys()
    names = sorted(plain)
    a = np.array([plain[n] for n in names])
    b = np.array([cropped[n] for n in names])
    atol = [MCC_TOLERANCE if n.endswith("_glcm_MCC") else 1e-12 if rtol else 0.0 for n in names]
    bad = [n for n, x, y, t in zip(names, a, b, atol) if not np.isclose(x, y, rtol=rtol, atol=t, equal_nan=True)]
    assert not bad, f"{len(bad)} features differ, e.g. {[(n, plain[n], cropped[n]) for n in bad[:3]]}"


def both(params, image, mask) -> tuple[dict[str, float], dict[str, float]]:
    extractor = RadiomicExtractor(params)
    return extractor.execute(image, mask, crop=False), extractor.execute(image, mask, crop=True)


def ct_params(**setting) -> dict:
    params = yaml.safe_load(default_params_path("CT").read_text())
    params["setting"].update(setting)
    return {**params, "setting": {k: v for k, v in params["setting"].items() if v is not None}}


# --- cropped == plain -------------------------------------------------------------------

@pytest.mark.parametrize(
    "centre",
    [(18, 60, 50), (2, 4, 110)],  # inside; touching three borders (wavelet wraps, LoG clips)
    ids=["inside", "at-border"],
)
def test_filters_cropped_equals_plain(centre):
    image, mask = ct_like(centre=centre)
    plain, cropped = both(FILTERED, image, mask)
    assert any(name.startswith("log-sigma-1-0") for name in plain)
    assert any(name.startswith("wavelet-HHH") for name in plain)
    assert_same_features(plain, cropped, rtol=0)  # bit-identical


def test_crop_really_crops():
    from RadFusionScreenLib.features.radiomic.input_checks import _label_bbox

    image, mask = ct_like()
    prepared, _, _ = RadiomicExtractor(FILTERED)._preprocess(image, mask, _label_bbox(mask, 1))
    assert np.prod(prepared.GetSize()) < 0.6 * np.prod(image.GetSize())


def test_ct_default_params_cropped_equals_plain():
    """Shipped CT params: 1 mm B-spline resampling, LoG 1/2/3 mm, wavelet."""
    image, mask = ct_like()
    plain, cropped = both(default_params_path("CT"), image, mask)
    assert len(plain) > 1000
    assert_same_features(plain, cropped, rtol=0)


def test_normalize_and_resampling_cropped_equals_plain():
    """Whole-image normalisation (float64) then linear resampling, lesion near a border."""
    image, mask = ct_like(centre=(3, 60, 108))
    params = ct_params(normalize=True, normalizeScale=100, binWidth=5, interpolator="sitkLinear",
                       resampledPixelSpacing=[1.5, 1.5, 1.5], padDistance=4)
    params["imageType"] = {"Original": {}, "LoG": {"sigma": [1.0]}, "Wavelet": {}}
    assert_same_features(*both(params, image, mask))


def test_normalize_without_resampling_cropped_equals_plain():
    image, mask = ct_like()
    params = {**FILTERED, "setting": {"normalize": True, "normalizeScale": 100, "removeOutliers": 3, "binWidth": 5}}
    assert_same_features(*both(params, image, mask), rtol=0)


def test_precrop_setting_is_respected():
    image, mask = ct_like()
    params = {**FILTERED, "setting": {"binWidth": 25, "preCrop": True, "padDistance": 3}}
    assert_same_features(*both(params, image, mask), rtol=0)


def test_real_ct_case_cropped_equals_plain():
    folder = shared_path("dicom", "sts_rtstruct", "STS_001", "CT", "nifti")
    image = sitk.ReadImage(str(folder / "image" / "image.nii.gz"))
    mask = sitk.ReadImage(str(folder / "mask" / "mask.nii.gz"))
    plain, cropped = both(default_params_path("CT"), image, mask)
    assert_same_features(plain, cropped)


# --- margins ------------------------------------------------------------------------------

def test_crop_margin_rules():
    settings = {"force2D": False}
    margin, wrap = crop_margin({"Original": {}}, settings, (0.8, 0.8, 2.5))
    assert list(margin) == [1, 1, 1] and wrap == ()
    margin, wrap = crop_margin({"LoG": {"sigma": [1.0, 3.0]}}, settings, (0.8, 0.8, 2.5))
    assert list(margin) == [75, 75, 24]  # 20 sigma of the largest sigma, per axis spacing
    margin, wrap = crop_margin({"Wavelet": {"level": 2}}, settings, (1.0, 1.0, 1.0))
    assert list(margin) == [13, 13, 13] and wrap == (0, 1, 2)  # coif1: 6 taps x 2 passes + 1
    margin, wrap = crop_margin({"Wavelet": {}}, {"force2D": True, "force2Ddimension": 0}, (1.0, 1.0, 1.0))
    assert list(margin) == [7, 7, 1] and wrap == (0, 1)  # no filtering across slices
    assert crop_margin({"Square": {}}, settings, (1.0, 1.0, 1.0))[0] is None  # whole-image max
    assert list(crop_margin({"LoG": {"sigma": [5.0]}}, {"preCrop": True, "padDistance": 4}, (1, 1, 1))[0]) == [4, 4, 4]


def test_whole_image_filters_are_not_cropped():
    image, mask = ct_like()
    params = {"imageType": {"Original": {}, "Square": {}}, "featureClass": {"firstorder": None}}
    assert_same_features(*both(params, image, mask), rtol=0)


# --- 2D / ultrasound ----------------------------------------------------------------------

def png_like(seed: int = 1) -> tuple[sitk.Image, sitk.Image]:
    """An 8-bit 2D B-mode-like image with a dark elliptic lesion, as read from a PNG."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(70 + 30 * rng.standard_normal((180, 240)), 0, 255)
    y, x = np.indices(pixels.shape)
    lesion = ((y - 90) / 30.0) ** 2 + ((x - 110) / 50.0) ** 2 < 1
    pixels[lesion] = np.clip(25 + 12 * rng.standard_normal(int(lesion.sum())), 0, 255)
    return sitk.GetImageFromArray(pixels.astype(np.uint8)), sitk.GetImageFromArray(lesion.astype(np.uint8))


def test_ultrasound_2d_png_like():
    image, mask = png_like()
    extractor = RadiomicExtractor.for_modality("US")
    plain, cropped = extractor.execute(image, mask, crop=False), extractor.execute(image, mask)
    assert_same_features(plain, cropped, rtol=0)
    assert "original_shape2D_MeshSurface" in cropped
    assert not any("_shape_" in name for name in cropped)  # no 3D shape for one slice
    assert any(name.startswith("wavelet-HH_") for name in cropped)  # 2D wavelet (force2D)
    assert extractor.settings["force2D"] is True
    one_slice = extractor.execute(sitk.JoinSeries(image), sitk.JoinSeries(mask))
    assert_same_features(cropped, one_slice, rtol=0)


# --- errors ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def original_only():
    return RadiomicExtractor({"imageType": {"Original": {}}, "featureClass": {"firstorder": None}})


def _mask_like(image: sitk.Image, voxels: np.ndarray) -> sitk.Image:
    mask = sitk.GetImageFromArray(voxels.astype(np.uint8))
    mask.CopyInformation(image)
    return mask


def test_empty_mask_raises_mask_error(original_only):
    image, mask = ct_like()
    with pytest.raises(MaskError, match="no voxel with label 1.*empty"):
        original_only.execute(image, mask * 0)


def test_one_voxel_mask_raises_mask_error(original_only):
    image, _ = ct_like()
    voxels = np.zeros(image.GetSize()[::-1])
    voxels[5, 5, 5] = 1
    with pytest.raises(MaskError, match="single voxel"):
        original_only.execute(image, _mask_like(image, voxels))


def test_line_mask_raises_mask_error(original_only):
    image, _ = ct_like()
    voxels = np.zeros(image.GetSize()[::-1])
    voxels[5, 5, 5:15] = 1
    with pytest.raises(MaskError, match="too few dimensions"):
        original_only.execute(image, _mask_like(image, voxels))


def test_wrong_label_value_is_named(original_only):
    image, mask = ct_like()
    with pytest.raises(MaskError, match=r"labels \[255\]"):
        original_only.execute(image, mask * 255)


def test_shared_edge_masks():
    folder = shared_path("edge", "uninformative")
    image = sitk.ReadImage(str(next((folder / "image").glob("*.nii.gz"))))
    extractor = RadiomicExtractor({"imageType": {"Original": {}}, "featureClass": {"firstorder": None}})
    for name, pattern in [("empty_mask", "empty"), ("one_voxel_mask", "single voxel")]:
        mask = sitk.ReadImage(str(folder / "mask" / f"{name}.nii.gz"))
        with pytest.raises(MaskError, match=pattern):
            extractor.execute(image, mask)
    full = sitk.ReadImage(str(folder / "mask" / "full_mask.nii.gz"))
    assert extractor.execute(image, full)  # a mask that fills the image is fine (bhklab fix)


def test_geometry_mismatch(original_only):
    image, mask = ct_like()
    with pytest.raises(GeometryMismatchError, match="size"):
        original_only.execute(image, mask[:-1, :, :])
    shifted = sitk.Image(mask)
    shifted.SetOrigin((0.0, 0.0, 0.0))
    with pytest.raises(GeometryMismatchError):
        original_only.execute(image, shifted)


# --- params -------------------------------------------------------------------------------

def test_default_params_exist_and_validate():
    for modality in ("CT", "MR", "US", "ct"):
        extractor = RadiomicExtractor(default_params_path(modality))
        assert len(extractor.params_hash) == 64
    with pytest.raises(InputError, match="modality"):
        default_params_path("PET-CT")


def test_params_hash_is_canonical():
    path = default_params_path("CT")
    from_path = RadiomicExtractor(path)
    from_dict = RadiomicExtractor(yaml.safe_load(path.read_text()))
    assert from_path.params_hash == from_dict.params_hash
    assert RadiomicExtractor(ct_params(binWidth=10)).params_hash != from_path.params_hash
    assert from_path.settings["binWidth"] == 25 and from_path.params["setting"]["additionalInfo"] is False


def test_invalid_params_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        RadiomicExtractor(tmp_path / "missing.yaml")
    with pytest.raises(InputError, match="invalid pyradiomics params"):
        RadiomicExtractor({"setting": {"binWidth": "wide"}})
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(InputError, match="mapping"):
        RadiomicExtractor(tmp_path / "list.yaml")


def test_pyradiomics_is_quiet(capfd, original_only):
    image, mask = ct_like()
    original_only.execute(image, mask)
    RadiomicExtractor({"setting": {"binCount": 16}})  # pyradiomics warns about binCount by default
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""


def test_uint8_picture_reaching_255_is_binned_like_its_float_copy():
    """pyradiomics' upper bin edge (max + 2 * binWidth) must not wrap around in uint8."""
    rng = np.random.default_rng(3)
    pixels = rng.integers(150, 256, size=(1, 40, 40)).astype(np.uint8)
    pixels[0, 10:14, 10:14] = 255  # the ROI's maximum is the type's maximum
    mask_array = np.zeros_like(pixels)
    mask_array[0, 5:30, 5:30] = 1
    params = {"imageType": {"Original": {}}, "featureClass": {"firstorder": None, "glcm": None},
              "setting": {"binWidth": 5, "force2D": True, "force2Ddimension": 0}}
    extractor = RadiomicExtractor(params)
    features = {}
    for dtype in (np.uint8, np.float64):
        image = sitk.GetImageFromArray(pixels.astype(dtype))
        mask = sitk.GetImageFromArray(mask_array)
        features[dtype] = extractor.execute(image, mask)
    assert_same_features(features[np.float64], features[np.uint8], rtol=1e-12)


def test_parallel_parts_equal_one_sequential_run():
    """processes=2 (filtered images in worker processes) gives the sequential features, bit for bit."""
    image, mask = ct_like()
    params = {**FILTERED, "imageType": {"Original": {}, "LoG": {"sigma": [1.0, 2.0]}, "Wavelet": {}},
              "featureClass": {**FILTERED["featureClass"], "shape": None}}
    sequential = RadiomicExtractor(params).execute(image, mask)
    parallel_extractor = RadiomicExtractor(params, processes=2)
    try:
        parallel = parallel_extractor.execute(image, mask)
    finally:
        parallel_extractor.close()
    assert list(parallel) == list(sequential)  # same names, same order
    assert parallel == sequential
    assert sum(name.startswith("original_shape_") for name in parallel) > 0


# --- pyradiomics' bin edges from the ROI's minimum and maximum only -------------------------

def _original_bin_edges():
    from radiomics import imageoperations

    from RadFusionScreenLib.features.radiomic.scoped_classes import fast_bin_edges

    assert fast_bin_edges.__wrapped__ is imageoperations.getBinEdges, "pyradiomics' own function, not replaced"
    return fast_bin_edges, fast_bin_edges.__wrapped__


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.uint16, np.int32, np.float32, np.float64])
def test_fast_bin_edges_equal_pyradiomics_own(dtype):
    fast, original = _original_bin_edges()
    rng = np.random.default_rng(7)
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None
    for trial in range(150):
        # realistic ranges (pyradiomics' arange of edges would not fit memory for all of int32's)
        low = max(int(info.min), -3000) if info else -2000.0
        high = min(int(info.max), 5000) if info else 3000.0
        size = int(rng.integers(1, 400))
        if info:
            values = rng.integers(low, high, size=size, endpoint=True).astype(dtype)
            values = values // rng.integers(1, 50) if trial % 3 == 0 else values  # narrow ranges too
        else:
            values = (rng.uniform(low, high, size=size) / rng.choice([1, 7, 1000])).astype(dtype)
        if trial % 10 == 0:
            values[:] = values[0]  # flat region: pyradiomics' one-bin special case
        width = float(rng.choice([1, 5, 25, 0.1, 2.5])) if info is None else int(rng.choice([1, 5, 25, 64]))
        with np.errstate(over="ignore"):  # pyradiomics' own uint8 wrap-around, identical in both
            expected, got = original(values, binWidth=width), fast(values, binWidth=width)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))
        assert np.asarray(got).dtype == np.asarray(expected).dtype


def test_fast_bin_edges_pass_bin_count_and_nan_through():
    fast, original = _original_bin_edges()
    values = np.random.default_rng(1).normal(size=500)
    np.testing.assert_array_equal(fast(values, binCount=16), original(values, binCount=16))
    values[17] = np.nan  # pyradiomics' own behaviour for NaN, whatever it is, is kept
    expected = original(values, binWidth=0.5)
    np.testing.assert_array_equal(fast(values, binWidth=0.5), expected)


def test_plain_pyradiomics_unchanged_by_the_fast_bin_edges(monkeypatch):
    """Shipped CT params, plain pyradiomics with its own getBinEdges vs with the wrapper: bit-identical."""
    from radiomics import imageoperations
    from radiomics.featureextractor import RadiomicsFeatureExtractor

    fast, original = _original_bin_edges()
    image, mask = ct_like()
    extractor = RadiomicsFeatureExtractor(str(default_params_path("CT")))
    monkeypatch.setattr(imageoperations, "getBinEdges", fast)
    with_fast = extractor.execute(image, mask)
    monkeypatch.setattr(imageoperations, "getBinEdges", original)
    with_original = extractor.execute(image, mask)
    features = [name for name in with_original if not name.startswith("diagnostics_")]
    assert len(features) > 1000
    assert all(np.array_equal(with_fast[n], with_original[n], equal_nan=True) for n in features)


def test_our_extraction_leaves_pyradiomics_as_it_was(original_only):
    """Nothing process-wide is changed for other pyradiomics users (e.g. other Slicer extensions):
    after our extractions pyradiomics' getBinEdges is its own function and the 'radiomics' and
    'pykwalify' loggers have the levels they had (inside our calls they are raised)."""
    import logging

    import radiomics
    from radiomics import imageoperations

    from RadFusionScreenLib.features.radiomic import quiet_pyradiomics

    original = imageoperations.getBinEdges
    loggers = [logging.getLogger("radiomics"), logging.getLogger("pykwalify")]
    before = [logger.level for logger in loggers]
    handler_level = radiomics.handler.level
    image, mask = ct_like()
    original_only.execute(image, mask)
    original_only.execute(image, mask, crop=False)  # plain pyradiomics, the reference
    RadiomicExtractor(FILTERED, threads=2).execute(image, mask)  # filtered images in threads
    RadiomicExtractor({"setting": {"binCount": 16}})
    with pytest.raises(InputError):
        RadiomicExtractor({"setting": {"binWidth": "wide"}})
    assert imageoperations.getBinEdges is original
    assert not hasattr(imageoperations.getBinEdges, "__wrapped__")
    assert [logger.level for logger in loggers] == before
    assert radiomics.handler.level == handler_level
    with quiet_pyradiomics():
        with quiet_pyradiomics():  # nested (or overlapping in threads): the outermost restores
            assert loggers[0].getEffectiveLevel() >= logging.ERROR
        assert loggers[0].getEffectiveLevel() >= logging.ERROR
    assert [logger.level for logger in loggers] == before
