"""Thin crops, tiny ROIs and flat intensities through the shipped CT params: features, or the
engine's error saying what is wrong with the input and what to do, never a library's exception.

The LoG of an axis of 1-3 voxels (ITK's recursive filter takes >= 4) is computed on that axis
extended by ITK's own boundary rule (thin_volumes.log_images); the claim it rests on is checked
here against ITK itself (bit for bit where ITK runs) and against scipy's Gaussian Laplacian.
The other cases' features are checked unchanged against plain pyradiomics, bit for bit.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from radiomics import imageoperations
from radiomics.featureextractor import RadiomicsFeatureExtractor
from scipy import ndimage

from conftest import SHARED_DATA
from RadFusionScreenLib.app.cli import main
from RadFusionScreenLib.core.errors import InputError, MaskError
from RadFusionScreenLib.features.radiomic import RadiomicExtractor, default_params_path, quiet_pyradiomics
from RadFusionScreenLib.features.radiomic.thin_volumes import _edge_extended, log_images
from RadFusionScreenLib.inputs.images import read_image, read_mask
from test_radiomic import assert_same_features

LIDC = SHARED_DATA / "lidc"
needs_lidc = pytest.mark.skipif(not (LIDC / "manifest.csv").is_file(),
                                reason=f"the LIDC crops are not in {LIDC} (shared data absent)")


@pytest.fixture(scope="module")
def ct() -> RadiomicExtractor:
    return RadiomicExtractor.for_modality("CT")


def crop(voxels: np.ndarray, roi: np.ndarray, spacing=(0.7, 0.7, 2.5)) -> tuple[sitk.Image, sitk.Image]:
    """Image and mask from numpy (z, y, x) arrays on one grid."""
    image = sitk.GetImageFromArray(voxels)
    image.SetSpacing(spacing)
    image.SetOrigin((-12.0, 30.0, -100.0))
    mask = sitk.GetImageFromArray(roi.astype(np.uint8))
    mask.CopyInformation(image)
    return image, mask


def nodule(slices: int, z_spacing: float = 2.5, seed: int = 0) -> tuple[sitk.Image, sitk.Image]:
    """A CT-like nodule crop (int16 HU) with a disk-shaped ROI through all ``slices``."""
    rng = np.random.default_rng(seed)
    voxels = rng.normal(-750, 120, size=(slices, 44, 44))
    yy, xx = np.mgrid[:44, :44]
    disk = (yy - 22) ** 2 + (xx - 21) ** 2 < 36
    voxels[:, disk] += 700 + 60 * np.arange(slices)[:, None]
    return crop(voxels.astype(np.int16), np.repeat(disk[None], slices, axis=0), (0.7, 0.7, z_spacing))


def assert_engine_error(call, error_type: type, *phrases: str) -> str:
    """``call`` raises exactly the engine's ``error_type`` (not a library's exception) naming ``phrases``."""
    with pytest.raises(Exception) as caught:
        call()
    assert type(caught.value) is error_type, f"{type(caught.value).__name__}: {caught.value}"
    assert not isinstance(caught.value, IndexError)
    for phrase in phrases:
        assert phrase in str(caught.value), str(caught.value)
    return str(caught.value)


# ------------------------------------------------------------ LoG on an axis of < 4 voxels
def _itk_log(image: sitk.Image, sigma: float) -> np.ndarray:
    log = sitk.LaplacianRecursiveGaussianImageFilter()
    log.SetNormalizeAcrossScale(True)
    log.SetSigma(sigma)
    return sitk.GetArrayFromImage(log.Execute(image))


@pytest.mark.parametrize("dtype", [np.int16, np.float32, np.float64])
def test_edge_extension_gives_itks_own_log_where_itk_runs(dtype):
    """ITK's recursive filter assumes a constant signal beyond the border: repeating the edge voxels
    (by any width, on any axis) changes no bit of its LoG on axes of >= 4 voxels. A mirror does."""
    rng = np.random.default_rng(1)
    for size, spacing in (((4, 21, 25), (0.8, 0.7, 1.0)), ((6, 19, 23), (1.0, 1.0, 2.5))):
        image, _ = crop(rng.normal(-500, 200, size).astype(dtype), np.ones(size), spacing)
        for sigma in (1.0, 2.0, 3.0):
            expected = _itk_log(image, sigma)
            for before, after in (([0, 0, 1], [0, 0, 2]), ([3, 1, 0], [2, 5, 4])):
                extended = _itk_log(_edge_extended(image, before, after), sigma)
                inner = tuple(slice(b, b + n) for b, n in zip(before[::-1], size))
                assert np.array_equal(extended[inner], expected)
            reflected = np.pad(sitk.GetArrayFromImage(image), ((2, 2), (0, 0), (0, 0)), "reflect")
            mirrored = sitk.GetImageFromArray(reflected)
            mirrored.CopyInformation(_edge_extended(image, [0, 0, 2], [0, 0, 2]))
            assert not np.array_equal(_itk_log(mirrored, sigma)[2:-2], expected)  # the check can fail


@pytest.mark.parametrize("slices", [1, 2, 3])
def test_thin_axis_log_is_the_constant_extension_log(slices):
    """On 1-3 slices: the same values whatever the extension width (so they are the LoG of the
    constant extension, ITK's boundary rule), as close to scipy's Gaussian Laplacian (mode
    'nearest': the same boundary, FIR kernel) as ITK is on a normal volume, on the input grid;
    sigmas pyradiomics' own rule refuses (ceil(sigma / spacing) + 1 voxels per axis) stay skipped."""
    rng = np.random.default_rng(slices)
    voxels = ndimage.gaussian_filter(rng.normal(0, 200, (slices, 40, 40)), 1.0)
    image, mask = crop(voxels, np.ones(voxels.shape), (1.0, 1.0, 1.0))
    images = {name: out for out, name, _ in log_images(image, mask, sigma=[1.0, 2.0, 3.0])}
    expected = [f"log-sigma-{s}-0-mm-3D" for s in (1, 2, 3) if slices >= s + 1]
    assert list(images) == expected
    for name, out in images.items():
        sigma = float(name.split("-")[2])
        assert out.GetSize() == image.GetSize() and out.GetOrigin() == image.GetOrigin()
        wider = _itk_log(_edge_extended(image, [0, 0, 5], [0, 0, 7]), sigma)[5:5 + slices]
        assert np.array_equal(sitk.GetArrayFromImage(out), wider)
        reference = sigma ** 2 * ndimage.gaussian_laplace(voxels, sigma, mode="nearest", truncate=8)
        inner = (slice(None), slice(8, -8), slice(8, -8))  # away from the in-plane border
        error = np.abs(sitk.GetArrayFromImage(out)[inner] - reference[inner]).max() / np.abs(reference[inner]).max()
        assert error < 0.03, error  # ITK's recursive approximation: ~1 % on normal volumes too


def test_log_images_leave_pyradiomics_alone_on_normal_volumes():
    """>= 4 voxels on every axis: pyradiomics' own getLoGImage, same images bit for bit."""
    image, mask = nodule(5)
    ours = [(n, sitk.GetArrayFromImage(i)) for i, n, _ in log_images(image, mask, sigma=[1.0, 3.0])]
    with quiet_pyradiomics():
        stock = [(n, sitk.GetArrayFromImage(i))
                 for i, n, _ in imageoperations.getLoGImage(image, mask, sigma=[1.0, 3.0])]
    assert [n for n, _ in ours] == [n for n, _ in stock] == ["log-sigma-1-0-mm-3D", "log-sigma-3-0-mm-3D"]
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(ours, stock))


# ------------------------------------------------------------ features through the CT params
def test_two_slice_crop_gives_features(ct):
    """2 slices of 1.25 mm: a 3-voxel-thick grid at 1 mm. LoG sigma 1 and 2 computed (thin-axis
    rule), sigma 3 empty with pyradiomics' reason; every other feature finite."""
    features, notes = ct.execute_case(*nodule(2, z_spacing=1.25))
    empty = sorted({name.split("_")[0] for name, value in features.items() if np.isnan(value)})
    assert empty == ["log-sigma-3-0-mm-3D"] and len(features) == 1130
    text = "; ".join(notes)
    assert "LoG sigma 1, 2 mm: axis z (3 voxels)" in text and "repeating its edge voxels" in text
    assert "log-sigma-3-0-mm-3D: the image on the extraction grid (" in text and "pyradiomics' rule" in text
    features, notes = ct.execute_case(*nodule(2))  # 2.5 mm slices: a 5-voxel grid, everything defined
    assert not any(np.isnan(v) for v in features.values()) and "B-spline" in notes[0] and len(notes) == 1


def test_one_voxel_thick_roi_gives_features(ct):
    """An ROI on one slice of a 3-slice crop (pyradiomics keeps the slice spacing on that axis: a
    3-voxel grid): all features defined, LoG through the thin-axis rule."""
    image, mask = nodule(3)
    roi = sitk.GetArrayFromImage(mask)
    roi[[0, 2]] = 0
    one_slice = sitk.GetImageFromArray(roi)
    one_slice.CopyInformation(mask)
    features, notes = ct.execute_case(image, one_slice)
    assert len(features) == 1130 and not any(np.isnan(v) for v in features.values())
    assert features["original_shape_VoxelVolume"] == pytest.approx(roi.sum() * 0.7 * 0.7 * 2.5, rel=0.1)
    assert notes == ["LoG sigma 1, 2, 3 mm: axis z (3 voxels) of the extraction grid is shorter than ITK's recursive "
                     "filter takes (4); computed on it extended by repeating its edge voxels (ITK's own boundary "
                     "rule), then cropped back"]


@pytest.mark.parametrize("slices", [2, 6])
def test_flat_intensity_roi_gives_features(ct, slices):
    """A constant-HU image: one grey level in the ROI. pyradiomics defines every feature on it
    (entropies 0, NGTDM coarseness its 1e6 for a homogeneous ROI): no NaN, no error."""
    roi = np.pad(np.ones((slices, 10, 10)), ((0, 0), (15, 15), (15, 15)))
    image, mask = crop(np.full((slices, 40, 40), -40, np.int16), roi)
    features = ct.execute(image, mask)
    assert len(features) == 1130 and not any(np.isnan(v) for v in features.values())
    assert abs(features["original_glcm_JointEntropy"]) < 1e-12 and abs(features["original_firstorder_Entropy"]) < 1e-12
    assert features["original_ngtdm_Coarseness"] == 1e6


# ------------------------------------------------------------ or the engine's error
@pytest.mark.parametrize("spacing, box", [((0.4, 0.4, 0.4), (1, 2, 2)), ((0.4, 0.4, 0.4), (2, 2, 2)),
                                          ((0.5, 0.5, 0.5), (2, 2, 2))])
def test_roi_below_the_1mm_grid_is_a_mask_error(ct, spacing, box):
    """2-8 voxels of 0.4-0.7 mm become one voxel at 1 mm: pyradiomics' "mask only contains 1
    segmented voxel" becomes our MaskError naming both grids and the remedy."""
    roi = np.zeros((6, 30, 30))
    roi[3:3 + box[0], 10:10 + box[1], 10:10 + box[2]] = 1
    image, mask = crop(np.random.default_rng(0).normal(-700, 100, roi.shape).astype(np.int16), roi, spacing)
    message = assert_engine_error(lambda: ct.execute(image, mask), MaskError, "too small for the extraction grid",
                                  f"it has {int(roi.sum())} voxel(s)", "it keeps 1 voxel(s)",
                                  "resampledPixelSpacing 1x1x1 mm", "resample less coarsely")
    assert "segmented voxel" not in message


def test_line_roi_is_a_mask_error(ct):
    image, _ = nodule(6)
    roi = np.zeros((6, 44, 44))
    roi[1:5, 20, 20] = 1  # a line across 4 slices
    mask = sitk.GetImageFromArray(roi.astype(np.uint8))
    mask.CopyInformation(image)
    assert_engine_error(lambda: ct.execute(image, mask), MaskError, "spans too few dimensions", "4 voxel(s), 1 x 1 x 4",
                        "spanning 1 dimension(s)", "minimumROIDimensions 2", "Segment the lesion's whole extent")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_voxels_are_an_input_error(ct, bad):
    image, mask = nodule(4)
    voxels = sitk.GetArrayFromImage(image).astype(np.float32)
    voxels[2, 22, 21] = bad
    image, mask = crop(voxels, sitk.GetArrayFromImage(mask), image.GetSpacing())
    assert_engine_error(lambda: ct.execute(image, mask), InputError, "1 NaN or infinite voxel(s), 1 of them inside "
                        "the ROI", "Replace them")


def test_grey_levels_beyond_the_guard_are_an_input_error(ct, monkeypatch):
    """One voxel at 3e5 on a 25-HU bin width: 11,000+ grey levels (a 12.8 GB GLCM, or a crash in
    pyradiomics' C code); refused before any matrix, naming the range. The guard is configurable."""
    image, mask = nodule(4)
    voxels = sitk.GetArrayFromImage(image).astype(np.float32)
    voxels[2, 22, 21] = 3e5
    image, mask = crop(voxels, sitk.GetArrayFromImage(mask), image.GetSpacing())
    assert_engine_error(lambda: ct.execute(image, mask), InputError, "the ROI's intensities in the original image",
                        "grey levels, above the guard of 2,000", "binWidth 25", "RADFUSION_MAX_GRAY_LEVELS")
    monkeypatch.setenv("RADFUSION_MAX_GRAY_LEVELS", "20")  # a normal nodule spans ~60 levels
    assert_engine_error(lambda: ct.execute(*nodule(4)), InputError, "above the guard of 20")


def test_a_texture_matrix_failure_is_an_input_error(ct, monkeypatch):
    """pyradiomics' "Calculation of GLCM Failed" (IndexError) comes back as our InputError with the grid."""
    def failing(*args, **kwargs):
        raise IndexError("Calculation of GLCM Failed.")

    extractor = RadiomicExtractor.for_modality("CT")
    monkeypatch.setattr(extractor._inner, "execute", failing)
    assert_engine_error(lambda: extractor.execute(*nodule(4)), InputError, "could not build a texture matrix",
                        "IndexError: Calculation of GLCM Failed)", "on the extraction grid of")


# ------------------------------------------------------------ the real crops
@needs_lidc
def test_lidc_thin_crops_extract_from_the_command_line(tmp_path):
    """LIDC-IDRI-0011_R_6 (2 slices of 2.5 mm: pyradiomics' "Calculation of GLCM Failed" in 17 of 20
    runs, benchmarks/results/thin_volumes.json) and LIDC-IDRI-0321_R_2 (2 of 1.25 mm) through
    `radfusion extract` with the CT params: features, no error."""
    manifest = pd.read_csv(LIDC / "manifest.csv")
    cases = manifest[manifest["case_id"].isin(["LIDC-IDRI-0011_R_6", "LIDC-IDRI-0321_R_2"])].copy()
    cases[["image", "mask"]] = cases[["image", "mask"]].map(lambda p: str(LIDC / p))
    cases.to_csv(tmp_path / "thin.csv", index=False)
    out = tmp_path / "features.csv"
    assert main(["extract", str(tmp_path / "thin.csv"), "-o", str(out), "--no-deep", "--no-cache",
                 "--modality", "CT"]) == 0
    table = pd.read_csv(out).set_index("case_id")
    assert table["error"].isna().all(), table["error"].to_dict()
    features = [c for c in table.columns if c.startswith(("original_", "log-", "wavelet"))]
    assert len(features) == 1130 and table.loc["LIDC-IDRI-0011_R_6", features].notna().all()
    empty = table.loc["LIDC-IDRI-0321_R_2", features].isna()
    assert sorted({c.split("_")[0] for c in empty[empty].index}) == ["log-sigma-3-0-mm-3D"]
    assert "LoG sigma 1, 2 mm: axis z (3 voxels)" in table.loc["LIDC-IDRI-0321_R_2", "radiomics_notes"]


@needs_lidc
@pytest.mark.parametrize("case", ["LIDC-IDRI-0001_R_1", "LIDC-IDRI-0012_R_2", "LIDC-IDRI-0748_R_7"])
def test_normal_crops_equal_plain_pyradiomics(ct, case):
    """The thin-volume rules change nothing where pyradiomics runs as intended: 11 slices, 3 slices,
    the smallest ROI (44 voxels) give plain pyradiomics' features, bit for bit (GLCM MCC, computed
    from singular values, to its tolerance: test_radiomic.MCC_TOLERANCE)."""
    image = read_image(LIDC / "images" / f"{case}.nii.gz")
    mask = read_mask(LIDC / "masks" / f"{case}.nii.gz", reference=image)
    with quiet_pyradiomics():
        plain = RadiomicsFeatureExtractor(str(default_params_path("CT"))).execute(image, mask)
    expected = {k: float(np.real(v)) for k, v in plain.items() if not k.startswith("diagnostics_")}
    features, notes = ct.execute_case(image, mask)
    assert notes == [] and list(features) == list(expected)
    assert_same_features(expected, features, rtol=0)
