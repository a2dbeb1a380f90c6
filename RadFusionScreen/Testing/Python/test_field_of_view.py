"""Field of view (features.field_of_view): a crop and the whole scan around it give the same features.

A model trained on small crops must see the same context when a radiologist screens the whole
scan. The rule cuts every input to a region relative to the ROI, in training and at screening;
these tests check the region, that what lies beyond it no longer changes features or the
probability (and that it did without the rule), and that bundles record and apply it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from RadFusionScreenLib.core.errors import InputError
from RadFusionScreenLib.features.field_of_view import (FieldOfView, crop_to_field_of_view, field_of_view_region,
                                                       paste_into)
from RadFusionScreenLib.inputs.phantoms import synthetic_ct

MODULE_DIR = Path(__file__).resolve().parents[2]
RULE = {"slice_margin": 1, "in_plane_voxels": 44, "in_plane_margin": 5}


def whole_scan_around(image: sitk.Image, mask: sitk.Image, seed: int = 1) -> tuple[sitk.Image, sitk.Image]:
    """``image`` inside a larger volume of other tissue-like noise (a 'whole scan'), mask padded with 0."""
    pad_low, pad_high = [30, 20, 6], [25, 35, 9]
    size = [s + lo + hi for s, lo, hi in zip(image.GetSize(), pad_low, pad_high)]
    noise = np.random.default_rng(seed).normal(-600, 250, size[::-1]).astype(np.int16)
    scan = sitk.GetImageFromArray(noise)
    scan.SetSpacing(image.GetSpacing())
    scan.SetDirection(image.GetDirection())
    scan.SetOrigin(image.TransformIndexToPhysicalPoint([-p for p in pad_low]))
    scan = sitk.Paste(scan, sitk.Cast(image, scan.GetPixelID()), image.GetSize(), [0, 0, 0], pad_low)
    return scan, sitk.ConstantPad(mask, pad_low, pad_high, 0)


def roi_bounds(mask: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    occupied = np.argwhere(sitk.GetArrayViewFromImage(mask) > 0)
    return occupied.min(axis=0)[::-1], occupied.max(axis=0)[::-1]  # x, y, z


def test_the_region_keeps_the_roi_its_place_and_the_rules_context():
    image, mask = synthetic_ct(shape=(30, 90, 90), radius_mm=8.0, seed=3)
    rule = FieldOfView(**RULE)
    cropped_image, cropped_mask = crop_to_field_of_view(image, mask, rule)
    low, high = roi_bounds(mask)
    start, size = field_of_view_region(mask, rule)
    assert start[2] == low[2] - 1 and size[2] == high[2] - low[2] + 3  # the ROI's slices, one more each side
    for axis in (0, 1):
        assert size[axis] == max(44, high[axis] - low[axis] + 1 + 10)
        assert start[axis] <= low[axis] - 5 and start[axis] + size[axis] - 1 >= high[axis] + 5
    assert int(sitk.GetArrayViewFromImage(cropped_mask).sum()) == int(sitk.GetArrayViewFromImage(mask).sum())
    assert np.allclose(cropped_image.GetOrigin(), image.TransformIndexToPhysicalPoint(start))
    assert cropped_image.GetSpacing() == image.GetSpacing() and cropped_image.GetDirection() == image.GetDirection()
    assert np.array_equal(sitk.GetArrayFromImage(paste_into(mask, cropped_mask)), sitk.GetArrayFromImage(mask))


def test_a_whole_scan_and_its_crop_give_the_same_region():
    image, mask = synthetic_ct(shape=(24, 64, 64), radius_mm=9.0, seed=5)
    scan, scan_mask = whole_scan_around(image, mask)
    rule = FieldOfView(**RULE)
    from_crop, from_scan = crop_to_field_of_view(image, mask, rule), crop_to_field_of_view(scan, scan_mask, rule)
    for a, b in zip(from_crop, from_scan):
        assert np.array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))
        assert np.allclose(a.GetOrigin(), b.GetOrigin())


def test_the_region_is_clipped_at_the_image_edge_and_2d_images_crop_in_plane():
    image, mask = synthetic_ct(shape=(10, 40, 40), radius_mm=6.0, seed=2)  # narrower than the 44-voxel window
    start, size = field_of_view_region(mask, FieldOfView(slice_margin=50))
    assert start == [0, 0, 0] and size == list(image.GetSize())
    picture = sitk.GetImageFromArray(np.arange(80 * 100, dtype=np.float32).reshape(80, 100))
    roi = np.zeros((80, 100), np.uint8)
    roi[30:40, 60:70] = 1
    cropped, cropped_roi = crop_to_field_of_view(picture, sitk.GetImageFromArray(roi), FieldOfView(in_plane_voxels=20))
    assert cropped.GetSize() == (20, 20) and int(sitk.GetArrayViewFromImage(cropped_roi).sum()) == 100


def test_bad_rules_and_empty_masks_are_refused_with_a_reason():
    for record in ({"slice_margin": -1}, {"slice_margin": True}, {"slices": 0}, {"in_plane_voxels": 4.5}, [0]):
        with pytest.raises(InputError, match="field of view"):
            FieldOfView.from_record(record)
    for text in ("x", "1,2,3,4", ""):
        with pytest.raises(InputError, match="--field-of-view"):
            FieldOfView.parse(text)
    assert FieldOfView.parse("2,50") == FieldOfView(2, 50, 5)
    image, mask = synthetic_ct(shape=(8, 32, 32), radius_mm=5.0)
    with pytest.raises(InputError, match="mask is empty"):
        crop_to_field_of_view(image, mask * 0, FieldOfView())
    run = subprocess.run([sys.executable, "-m", "RadFusionScreenLib", "features", "i.nii.gz", "m.nii.gz",
                          "--field-of-view", "-3"], cwd=MODULE_DIR, capture_output=True, text=True)
    assert run.returncode == 2 and "slice_margin must be a whole number >= 0" in run.stderr


def test_with_a_field_of_view_what_lies_beyond_no_longer_changes_the_features():
    from RadFusionScreenLib.features.case_features import CaseFeatureExtractor, ExtractionConfig

    image, mask = synthetic_ct(shape=(20, 64, 64), radius_mm=8.0, malignancy=0.6, seed=7)
    scan, scan_mask = whole_scan_around(image, mask)
    with_rule = CaseFeatureExtractor(ExtractionConfig(modality="CT", deep=None, field_of_view=RULE))
    without = CaseFeatureExtractor(ExtractionConfig(modality="CT", deep=None))
    crop_features, scan_features = (with_rule.extract(i, m).radiomic for i, m in ((image, mask), (scan, scan_mask)))
    assert crop_features.keys() == scan_features.keys()
    assert max(abs(crop_features[k] - scan_features[k]) / max(abs(crop_features[k]), 1e-9)
               for k in crop_features) < 1e-9
    plain_crop, plain_scan = (without.extract(i, m).radiomic for i, m in ((image, mask), (scan, scan_mask)))
    changed = [k for k in plain_crop if not np.isclose(plain_crop[k], plain_scan[k], rtol=1e-6, atol=1e-9)]
    assert len(changed) > 50  # without the rule the filters see the other tissue (LoG, wavelet)
    assert with_rule.config.fingerprint()["field_of_view"] == RULE
    assert "field_of_view" not in without.config.fingerprint()  # default settings keep their cache key


@pytest.fixture(scope="module")
def field_of_view_bundle(tmp_path_factory) -> Path:
    """The conftest ct_bundle's recipe (24 CT phantoms, quick LR grid), extracted with RULE."""
    pytest.importorskip("sklearn", reason="building a bundle is training (scikit-learn, the `train` extra)")
    from RadFusionScreenLib.app.train_command import TrainOptions, build_model
    from RadFusionScreenLib.inputs.phantoms import write_ct_cohort

    folder = tmp_path_factory.mktemp("fov_model")
    manifest = write_ct_cohort(folder / "cohort", n_cases=24)
    options = TrainOptions(feature_sets=("radiomic", "fused"), classifiers=("lr",), grid="quick", outer_folds=3,
                           inner_folds=3, n_boot=100, extraction={"modality": "CT", "field_of_view": RULE})
    build_model(manifest, folder / "model", options)
    return folder / "model"


def test_screening_applies_the_field_of_view_the_bundle_records(field_of_view_bundle, ct_bundle):
    from RadFusionScreenLib.serving.screening import Screener

    manifest = json.loads((field_of_view_bundle / "manifest.json").read_text())
    assert manifest["extraction"]["field_of_view"] == RULE
    assert "field_of_view" not in json.loads((ct_bundle / "manifest.json").read_text())["extraction"]
    cohort = field_of_view_bundle.parent / "cohort"
    image, mask = sitk.ReadImage(str(cohort / "ct001.nii.gz")), sitk.ReadImage(str(cohort / "ct001_mask.nii.gz"))
    scan, scan_mask = whole_scan_around(image, mask)

    screener = Screener(field_of_view_bundle, device="cpu")
    on_crop, on_scan = screener.screen(image, mask), screener.screen(scan, scan_mask)
    assert on_scan.probability == pytest.approx(on_crop.probability, abs=1e-9)
    assert on_scan.heatmap.GetSize() == scan.GetSize()  # overlaid on the scan the user loaded
    assert np.allclose(on_scan.heatmap.GetOrigin(), scan.GetOrigin())
    inside = crop_to_field_of_view(on_scan.heatmap, scan_mask, FieldOfView(**RULE))[0]
    assert np.allclose(sitk.GetArrayFromImage(inside),
                       sitk.GetArrayFromImage(crop_to_field_of_view(on_crop.heatmap, mask, FieldOfView(**RULE))[0]))
    assert sitk.GetArrayFromImage(inside).max() > 0
    assert sitk.GetArrayFromImage(on_scan.heatmap).sum() == pytest.approx(sitk.GetArrayFromImage(inside).sum())

    plain = Screener(ct_bundle, device="cpu")  # no field of view: the whole input is read
    assert plain.screen(scan, scan_mask, heatmap=False).probability != pytest.approx(
        plain.screen(image, mask, heatmap=False).probability, abs=1e-6)
