"""screen(): the shipped BUSI model on real cases, nomogram consistency, Grad-CAM geometry,
batch CLI = API, demo, and clean refusals (tampered bundle, clinical values, site, masks)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from scipy.special import expit

from conftest import REPO_ROOT, shared_path
from RadFusionScreenLib.app.cli import main
from RadFusionScreenLib.core.errors import GeometryMismatchError, InputError, MaskError
from RadFusionScreenLib import screen
from RadFusionScreenLib.serving.screening import Screener

SHIPPED = REPO_ROOT / "models" / "busi-ultrasound"


@pytest.fixture(scope="module")
def screener() -> Screener:
    if not (SHIPPED / "manifest.json").is_file():
        pytest.fail(f"the shipped model bundle is missing: {SHIPPED}")
    return Screener(SHIPPED)


@pytest.fixture(scope="module")
def busi_test_cases(screener) -> pd.DataFrame:
    """BUSI cases of the shipped model's internal test set, with their recorded probabilities."""
    busi = shared_path("busi")
    recorded = screener.bundle.manifest["training"]["reference"]["test_predictions"]
    manifest = pd.read_csv(busi / "manifest.csv", dtype={"case_id": str})
    cases = manifest[manifest["case_id"].isin(recorded)].copy()
    cases["recorded"] = cases["case_id"].map(recorded)
    cases["image"] = [str(busi / p) for p in cases["image"]]
    cases["mask"] = [str(busi / p) for p in cases["mask"]]
    return pd.concat([cases[cases.label == 1].head(2), cases[cases.label == 0].head(2)])


def test_screen_reproduces_the_bundles_recorded_test_predictions(screener, busi_test_cases):
    for case in busi_test_cases.itertuples():
        result = screener.screen(case.image, case.mask, heatmap=False)
        assert result.probability == pytest.approx(case.recorded, abs=1e-9), case.case_id
        assert result.decision == (result.probability >= screener.bundle.threshold)
        assert result.risk_class == ("high" if result.decision else "low")
        calibrator = screener.bundle.calibrator
        uncalibrated = [w for w in result.warnings if w.startswith("not calibrated: the bundle stores no probability")]
        if calibrator is None:  # a bundle written before calibrated bundles: served uncalibrated, and it says so
            assert result.uncalibrated_probability == result.probability and result.calibration["method"] is None
            assert uncalibrated and "calibration none: the bundle stores no" in result.summary_text()
        else:
            assert result.probability == pytest.approx(calibrator.apply([result.uncalibrated_probability])[0])
            assert not uncalibrated and result.calibration["method"] == calibrator.method


def test_nomogram_breakdown_is_consistent_with_the_bundle(screener, busi_test_cases):
    case = busi_test_cases.iloc[0]
    result = screener.screen(case["image"], case["mask"])
    nomogram = screener.bundle.nomogram
    assert result.nomogram["points"].sum() == pytest.approx(result.nomogram_total_points, abs=1e-9)
    lp = float(nomogram.total_points_to_linear_predictor(result.nomogram_total_points))
    assert lp == pytest.approx(result.nomogram_linear_predictor, abs=1e-9)
    assert expit(lp) == pytest.approx(result.nomogram_probability, abs=1e-9)
    values = dict(zip(result.nomogram["predictor"], result.nomogram["value"]))
    assert values["rad_score"] == pytest.approx(result.rad_score) and values["deep_score"] == pytest.approx(result.deep_score)
    points = nomogram.points(pd.DataFrame([values]))
    assert points["total_points"].iloc[0] == pytest.approx(result.nomogram_total_points, abs=1e-9)
    assert set(result.timings) >= {"io", "radiomics", "deep", "model", "gradcam", "total"}
    json.dumps(result.to_dict(), allow_nan=False)
    assert set(result.features.columns) >= {"name", "raw", "scaled"} and len(result.features) > 0


def test_heatmap_is_in_the_input_geometry_and_on_the_lesion(screener, busi_test_cases):
    case = busi_test_cases.iloc[0]
    result = screener.screen(case["image"], case["mask"])
    from RadFusionScreenLib.inputs.images import read_image, read_mask

    image = read_image(case["image"])
    mask = sitk.GetArrayFromImage(read_mask(case["mask"], reference=image)) > 0
    heat = sitk.GetArrayFromImage(result.heatmap)
    assert result.heatmap.GetSize() == image.GetSize() and result.heatmap.GetOrigin() == image.GetOrigin()
    assert heat.min() >= 0 and heat.max() == pytest.approx(1.0)
    rows, cols = np.nonzero(mask[0])
    # zero far outside the ROI's context crop (crop = ROI box + margin)
    assert heat[0, :, : max(cols.min() - 200, 0)].max(initial=0) == 0
    assert heat[0][mask[0]].mean() > heat[0][~mask[0]].mean()


def test_numpy_arrays_give_the_same_probability_as_files(screener, busi_test_cases):
    case = busi_test_cases.iloc[1]
    from RadFusionScreenLib.inputs.images import read_image, read_mask

    image = read_image(case["image"])
    mask = read_mask(case["mask"], reference=image)
    from_files = screener.screen(case["image"], case["mask"], heatmap=False)
    from_arrays = screener.screen(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(mask), heatmap=False)
    assert from_arrays.probability == from_files.probability


def test_batch_cli_equals_api_and_reports_failing_cases(tmp_path, screener, busi_test_cases):
    manifest = busi_test_cases[["case_id", "image", "mask"]].copy()
    empty = tmp_path / "empty.png"
    first = sitk.ReadImage(manifest["mask"].iloc[0])
    sitk.WriteImage(first * 0, str(empty))
    manifest.loc[len(manifest)] = ["broken", manifest["image"].iloc[0], str(empty)]
    manifest.to_csv(tmp_path / "cases.csv", index=False)
    assert main(["screen", str(tmp_path / "cases.csv"), "-o", str(tmp_path / "predictions.csv")]) == 0
    predictions = pd.read_csv(tmp_path / "predictions.csv", dtype={"case_id": str}, keep_default_na=False)
    assert list(predictions.columns) == ["case_id", "probability", "decision", "risk_class", "rad_score",
                                         "deep_score", "error"]
    for case in busi_test_cases.itertuples():
        row = predictions[predictions.case_id == case.case_id].iloc[0]
        assert float(row.probability) == screen(case.image, case.mask, model=SHIPPED).probability
    broken = predictions[predictions.case_id == "broken"].iloc[0]
    assert "empty" in broken.error.lower() and broken.probability == ""


def test_single_case_cli_json_and_heatmap_file(tmp_path, capsys, busi_test_cases):
    case = busi_test_cases.iloc[0]
    heatmap = tmp_path / "heat.nii.gz"
    assert main(["screen", case["image"], case["mask"], "--json", "--heatmap", str(heatmap)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["probability"] == pytest.approx(case["recorded"], abs=1e-9)
    assert sitk.ReadImage(str(heatmap)).GetSize()[:2] == sitk.ReadImage(case["image"]).GetSize()[:2]
    assert main(["screen", case["image"], case["mask"]]) == 0
    assert "risk" in capsys.readouterr().out


def test_tampered_missing_or_newer_bundles_are_refused(tmp_path, busi_test_cases):
    case = busi_test_cases.iloc[0]
    for damage, expected in (("flip", "weights.safetensors"), ("delete", "weights.safetensors"),
                             ("newer", "format version"), ("pickle", "model.pkl")):
        bundle = tmp_path / damage
        shutil.copytree(SHIPPED, bundle)
        weights = bundle / "weights.safetensors"
        if damage == "flip":
            data = bytearray(weights.read_bytes())
            data[len(data) // 2] ^= 1
            weights.write_bytes(bytes(data))
        elif damage == "delete":
            weights.unlink()
        elif damage == "newer":
            manifest = json.loads((bundle / "manifest.json").read_text())
            manifest["format_version"] = "99"
            (bundle / "manifest.json").write_text(json.dumps(manifest))
        else:
            (bundle / "model.pkl").write_bytes(b"\x80\x04N.")
        with pytest.raises(InputError, match=expected):
            screen(case["image"], case["mask"], model=bundle)


def test_bad_masks_fail_cleanly(screener, busi_test_cases):
    case = busi_test_cases.iloc[0]
    image = sitk.ReadImage(case["image"], sitk.sitkUInt8)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(case["mask"], sitk.sitkUInt8)) > 0
    with pytest.raises(MaskError):
        screener.screen(sitk.GetArrayFromImage(image), np.zeros_like(labels, dtype=np.uint8))
    one_voxel = np.zeros_like(labels, dtype=np.uint8)
    one_voxel[tuple(np.argwhere(labels)[0])] = 1
    with pytest.raises(MaskError):
        screener.screen(sitk.GetArrayFromImage(image), one_voxel)
    two_labels = labels.astype(np.uint8)
    two_labels[: labels.shape[0] // 2] *= 2
    with pytest.raises(MaskError, match="several labels"):
        screener.screen(sitk.GetArrayFromImage(image), two_labels)
    shifted = sitk.GetImageFromArray(labels.astype(np.uint8)[None])
    shifted.SetOrigin((5.0, 0.0, 0.0))
    volume = sitk.JoinSeries(image)
    with pytest.raises(GeometryMismatchError):
        screener.screen(volume, shifted)


@pytest.fixture(scope="module")
def clinical_bundle(tmp_path_factory) -> Path:
    """A small bundle with a clinical predictor and ComBat by site (40 BUSI images, quick grid).

    The labels are random (seeded): on a few real BUSI cases the rad-score can separate the
    classes perfectly (the nomogram is then Firth's fit); this test is about the inputs, not accuracy.
    """
    pytest.importorskip("sklearn", reason="building a bundle is training (scikit-learn, the `train` extra); "
                        "the Slicer-like environment serves only")
    from RadFusionScreenLib.app.train_command import TrainOptions, build_model

    busi = shared_path("busi")
    folder = tmp_path_factory.mktemp("clinical")
    manifest = pd.read_csv(busi / "manifest.csv").head(40)
    rng = np.random.default_rng(0)
    label = rng.integers(0, 2, len(manifest))
    manifest = manifest.assign(image=[str(busi / p) for p in manifest["image"]],
                               mask=[str(busi / p) for p in manifest["mask"]], label=label,
                               age=np.round(50 + 10 * label + rng.normal(0, 8, len(manifest))),
                               site=np.where(np.arange(len(manifest)) % 2, "north", "south"))
    manifest.to_csv(folder / "manifest.csv", index=False)
    options = TrainOptions(clinical=("age",), feature_sets=("radiomic", "fused"),
                           classifiers=("lr",), grid="quick", outer_folds=3, inner_folds=3, n_boot=100)
    build_model(folder / "manifest.csv", folder / "bundle", options)
    return folder / "bundle"


def test_clinical_values_and_site_are_required_and_checked(clinical_bundle, busi_test_cases):
    case = busi_test_cases.iloc[0]
    clinical_screener = Screener(clinical_bundle)
    assert clinical_screener.clinical_predictors == ["age"]
    with pytest.raises(InputError, match="needs the clinical value 'age'"):
        clinical_screener.screen(case["image"], case["mask"], site="north")
    with pytest.raises(InputError, match="must be a number"):
        clinical_screener.screen(case["image"], case["mask"], clinical={"age": "old"}, site="north")
    with pytest.raises(InputError, match="unseen|unknown|not.*site|site"):
        clinical_screener.screen(case["image"], case["mask"], clinical={"age": 61}, site="mars")
    result = clinical_screener.screen(case["image"], case["mask"], clinical={"age": 61}, site="north")
    assert "age" in set(result.nomogram["predictor"])
    assert 0 < result.probability < 1


def test_demo_writes_summary_overlay_and_report(tmp_path, busi_test_cases):
    assert main(["demo", "-o", str(tmp_path / "demo")]) == 0
    for name in ("summary.txt", "overlay.png", "report.html", "result.json"):
        assert (tmp_path / "demo" / name).stat().st_size > 0
    result = json.loads((tmp_path / "demo" / "result.json").read_text())
    assert result["probability"] == pytest.approx(result["recorded_probability"], abs=1e-9)
    assert (tmp_path / "demo" / "overlay.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_without_shared_data_screens_a_generated_phantom(tmp_path, monkeypatch, screener):
    import RadFusionScreenLib.app.demo as demo

    monkeypatch.setattr(demo, "BUSI", tmp_path / "absent")
    lines = demo.run_demo(tmp_path / "demo", model=str(SHIPPED))
    assert "synthetic ultrasound-like phantom" in lines[0]
    result = json.loads((tmp_path / "demo" / "result.json").read_text())
    assert 0 <= result["probability"] <= 1 and result["recorded_probability"] is None
    assert (tmp_path / "demo" / "synthetic_ultrasound.png").is_file()


def test_another_modality_is_refused_also_for_arrays(screener):
    """The ultrasound model refuses a CT volume given as SimpleITK image (as Slicer passes it)."""
    from RadFusionScreenLib.inputs.phantoms import synthetic_ct

    image, mask = synthetic_ct(shape=(16, 48, 48), radius_mm=6.0)
    with pytest.raises(InputError, match="trained on US images; this image is CT"):
        screener.screen(image, mask, heatmap=False)
    with pytest.raises(InputError, match="this image is MR \\(declared MR\\)"):
        screener.screen(image, mask, heatmap=False, modality="MR")
