"""The case report of issue 19 on real parts: the shipped bundle, a real BUSI test case, Slicer's
own slice pipeline (slicer-core) and the engine's fallback renderer.

- SHAP of the fused model for one case adds up to its uncalibrated probability (exact TreeSHAP), with
  readable names;
- the operating point's counts are those of the bundle's test split (checked against the
  recorded test predictions and the BUSI labels) and its intervals are Wilson / Mercaldo logit;
- one display threshold for viewer, slice views and engine renderer; PET-Heat colours equal
  slicer-core's node; the engine renderer draws what Slicer's slice pipeline draws;
- the nomogram figure marks the case where its points are; the page shows one answer.
"""

from __future__ import annotations

import base64
import inspect
import io
import json
import re

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from scipy.special import expit

from RadFusionScreenLib.presentation import figures
from RadFusionScreenLib.explanation import reasons
from RadFusionScreenLib.slicer_glue import mrml

from conftest import REPO_ROOT, SHARED_DATA

SHIPPED = REPO_ROOT / "models" / "busi-ultrasound"
BUSI = SHARED_DATA / "busi"
CASE = "malignant_1"  # first malignant case of the bundle's internal test split (manifest order)


@pytest.fixture(scope="module")
def screened():
    if not (BUSI / "images" / f"{CASE}.png").is_file():
        pytest.skip("BUSI data (../shared/data/busi) is not present")
    from RadFusionScreenLib.inputs.images import read_image, read_mask
    from RadFusionScreenLib.serving.screening import Screener

    screener = Screener(SHIPPED)
    image = read_image(BUSI / "images" / f"{CASE}.png")
    mask = read_mask(BUSI / "masks" / f"{CASE}.png", reference=image)
    result = screener.screen(image, mask)
    return type("Screened", (), dict(screener=screener, image=image, mask=mask, result=result))


def test_shap_of_the_fused_model_adds_up_to_its_uncalibrated_probability(screened):
    """SHAP explains the classifier's own output; a calibrated bundle maps that to the probability
    shown (the shipped bundle predates calibration, so there the two are equal)."""
    result, manifest = screened.result, screened.screener.bundle.manifest
    explanation = result.explanation
    assert explanation["method"].startswith("LightGBM native TreeSHAP")
    contributions = explanation["contributions"]
    assert len(contributions) == len(manifest["models"]["primary"]["spec"]["features"]) == 47
    total = explanation["base"] + sum(c["shap"] for c in contributions)
    assert expit(total) == pytest.approx(result.uncalibrated_probability, abs=1e-9)
    calibrator = screened.screener.bundle.calibrator
    shown = result.uncalibrated_probability if calibrator is None else calibrator.apply([expit(total)])[0]
    assert shown == pytest.approx(result.probability, abs=1e-9)
    recorded = manifest["training"]["reference"]["test_predictions"][CASE]
    assert result.probability == pytest.approx(recorded, abs=1e-9)
    assert [abs(c["shap"]) for c in contributions] == sorted((abs(c["shap"]) for c in contributions), reverse=True)
    top = contributions[0]
    assert top["label"] == "Shape (2D) · original image · Sphericity" and top["shap"] > 1
    assert top["value"] == pytest.approx(float(result.features.set_index("name").loc[top["feature"], "raw"]))
    # JSON round trip (the Slicer panel gets the result as JSON from the engine process)
    assert json.loads(json.dumps(result.to_dict()))["explanation"]["contributions"][0] == top


def test_feature_labels_are_readable():
    label = reasons.feature_label
    assert label("deep_effnetl0_0044") == "CNN feature 44"
    assert label("wavelet-HH_gldm_SmallDependenceLowGrayLevelEmphasis") == \
        "GLDM · wavelet HH · Small Dependence Low Gray Level Emphasis"
    assert label("log-sigma-3-0-mm-3D_firstorder_Kurtosis") == "First order · LoG σ 3.0 mm · Kurtosis"
    assert label("original_glcm_MCC") == "GLCM · original image · MCC"
    assert label("age") == "age"


def test_operating_point_counts_and_intervals():
    manifest = json.loads((SHIPPED / "manifest.json").read_text())
    point = reasons.operating_point(manifest)
    sens, spec = point["sensitivity"], point["specificity"]
    assert (sens["successes"], sens["trials"], spec["successes"], spec["trials"]) == (40, 44, 85, 90)
    for entry in (sens, spec):  # Wilson score interval, written out
        k, n, z = entry["successes"], entry["trials"], 1.959963984540054
        p = k / n
        centre, half = (p + z * z / (2 * n)) / (1 + z * z / n), z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        assert (entry["lower"], entry["upper"]) == pytest.approx((centre - half, centre + half), abs=1e-12)
    prevalence = 108 / 341  # the training set's (duplicate groups kept whole)
    assert point["prevalence"] == pytest.approx(prevalence)
    bayes_ppv = sens["estimate"] * prevalence / (sens["estimate"] * prevalence + (1 - spec["estimate"]) * (1 - prevalence))
    assert point["ppv"]["estimate"] == pytest.approx(bayes_ppv)
    assert point["ppv"]["lower"] < bayes_ppv < point["ppv"]["upper"] and point["ppv"]["adjusted"] is False
    assert (round(point["ppv"]["lower"], 3), round(point["npv"]["upper"], 3)) == (0.763, 0.983)
    # The counts are those of the recorded test predictions (BUSI case IDs carry the class).
    predictions = pd.Series(manifest["training"]["reference"]["test_predictions"])
    called = predictions >= manifest["decision_threshold"]
    truth = pd.Series(predictions.index.str.startswith("malignant_"), index=predictions.index)
    assert (int((called & truth).sum()), int(truth.sum())) == (40, 44)
    assert (int((~called & ~truth).sum()), int((~truth).sum())) == (85, 90)


def test_one_display_threshold_everywhere():
    from RadFusionScreenLib.slicer_glue import slice_views

    assert mrml.HEATMAP_THRESHOLD == 0.5
    assert inspect.signature(mrml.show_heatmap).parameters["threshold"].default == mrml.HEATMAP_THRESHOLD
    assert slice_views.HEATMAP_THRESHOLD_FRACTION == mrml.HEATMAP_THRESHOLD
    low, high = mrml.heatmap_window()
    assert (mrml.HEATMAP_THRESHOLD - low) / (high - low) == pytest.approx(35 / 255)  # PET-Heat's dark red


def test_pet_heat_stops_are_slicers():
    slicer = pytest.importorskip("slicer", reason="slicer-core (headless MRML) is not installed")
    scene = slicer.vtkMRMLScene()
    app = slicer.vtkMRMLApplicationLogic()
    colours = slicer.vtkMRMLColorLogic()
    colours.SetMRMLApplicationLogic(app)
    colours.SetMRMLScene(scene)
    try:
        function = scene.GetNodeByID(mrml.HEAT_COLOR_NODE_IDS[0]).GetColorTransferFunction()
        positions = np.linspace(0, 1, 97)
        theirs = np.array([function.GetColor(255 * x) for x in positions])
        assert np.abs(figures.pet_heat_rgb(positions) - theirs).max() < 1e-6
    finally:
        colours.SetMRMLScene(None)
        scene.Clear(1)


def test_engine_renderer_draws_what_slicers_slice_pipeline_draws(screened):
    """The CLI's fallback renderer against slicer_glue.slice_views (Slicer's vtkMRMLSliceLogic)
    on the real case: same size, same tinted pixels, same outline, close colours."""
    pytest.importorskip("slicer", reason="slicer-core (headless MRML) is not installed")
    from RadFusionScreenLib.slicer_glue import slice_views

    result = screened.result
    slicer_view = slice_views.render_images(screened.image, screened.mask, result.heatmap, height=360,
                                            grey_window=(0, 255))["Axial"].astype(int)
    engine_view = figures.render_views_engine(screened.image, screened.mask, result.heatmap,
                                              threshold=mrml.HEATMAP_THRESHOLD, window=mrml.heatmap_window(),
                                              grey_window=(0, 255), height=360)["Axial"].astype(int)
    assert slicer_view.shape == engine_view.shape == (360, 270, 3)

    def tinted(view):  # coloured, not grey and not the outline's green
        grey = (view[..., 0] == view[..., 1]) & (view[..., 1] == view[..., 2])
        return ~grey & ~outline(view)

    def outline(view):
        return (np.abs(view - np.array(figures.OUTLINE_RGB)).max(axis=-1) <= 2)

    heat = sitk.GetArrayFromImage(result.heatmap)[0]
    assert 0.05 < (heat >= mrml.HEATMAP_THRESHOLD).mean() < 0.25  # 10 % of the picture (0.05 gave 92 %)
    a, b = tinted(slicer_view), tinted(engine_view)
    assert abs(a.mean() - b.mean()) < 0.01 and (a & b).sum() / (a | b).sum() > 0.95
    assert 0.05 < a.mean() < 0.25
    o1, o2 = outline(slicer_view), outline(engine_view)
    from scipy import ndimage

    assert (o1 & ndimage.binary_dilation(o2, iterations=2)).sum() / o1.sum() > 0.95
    assert np.abs(slicer_view - engine_view).mean() < 6


def test_nomogram_figure_marks_the_case_at_its_points(screened):
    result, nomogram = screened.result, screened.screener.bundle.nomogram
    figure = figures.nomogram_figure(nomogram, figures.case_marks(result))
    axes = figure.axes[0]
    dots = [(float(line.get_xdata()[0]), float(line.get_ydata()[0])) for line in axes.lines if line.get_marker() == "o"]
    points = dict(zip(result.nomogram["predictor"], result.nomogram["points"]))
    for row, name in enumerate(nomogram.predictors, start=1):  # row 0 is the points axis
        assert (points[name] / nomogram.maxscale, -row) in [pytest.approx(d) for d in dots]
    width = float(np.max(nomogram.scales()["total_points"]["values"]))
    assert any(d == pytest.approx((result.nomogram_total_points / width, -(len(nomogram.predictors) + 1)))
               for d in dots)
    labels = " ".join(t.get_text() for t in axes.texts)
    assert f"nomogram {result.nomogram_probability:.3f}" in labels


def test_case_report_shows_one_answer_and_embeds_everything(screened, tmp_path):
    from RadFusionScreenLib.app import case_report_page
    from PIL import Image

    result = screened.result
    views, renderer = case_report_page.case_views(screened.image, screened.mask, result.heatmap, "US",
                                                  prefer_slicer=False)
    page = case_report_page.report_html(result, screened.image, screened.mask, views, renderer, "BUSI malignant_1")
    answer = re.findall(r'class="answer[^"]*">([^<]*)<', page)
    assert answer == [f"probability {result.probability:.3f} · HIGH risk"]
    assert page.count(f"{result.nomogram_probability:.3f}") >= 1 and "the nomogram's own estimate" in page
    assert "not a segmentation" in page and "not an explanation of the fused model" in page
    assert "0.909 (40/44)" in page and "0.944 (85/90)" in page
    calibrated = screened.screener.bundle.calibrator is not None
    assert ("Calibration: " if calibrated else "Not calibrated: the model bundle stores no calibration") in page
    assert result.model["digest"][:16] in page and "Research use only" in page
    assert "http://" not in page and "https://" not in page and "<script" not in page
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    ids = re.findall(r'<img id="([^"]+)"', page)
    assert ids == ["views", "bar", "waterfall", "nomogram"] and len(images) == 4
    for encoded in images:
        Image.open(io.BytesIO(base64.b64decode(encoded))).load()


def test_screen_command_writes_the_same_case_report(screened, tmp_path, capsys):
    """``radfusion screen IMAGE MASK --report OUT.html``: the case report of that screen, with the
    same answer as the printed result; a manifest run refuses the option."""
    from RadFusionScreenLib.app.cli import main

    image, mask = BUSI / "images" / f"{CASE}.png", BUSI / "masks" / f"{CASE}.png"
    out = tmp_path / "reports" / "case.html"
    assert main(["screen", str(image), str(mask), "--model", str(SHIPPED), "--json", "--report", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    page = out.read_text(encoding="utf-8")
    assert re.findall(r'class="answer[^"]*">([^<]*)<', page) == [
        f"probability {printed['probability']:.3f} · {printed['risk_class'].upper()} risk"]
    from RadFusionScreenLib.presentation.case_report import case_hash

    assert f"case {case_hash(screened.image, screened.mask)}" in page and f"{CASE}.png" in page
    assert len(re.findall(r'src="data:image/png;base64,', page)) == 4 and list(out.parent.iterdir()) == [out]
    manifest = tmp_path / "cases.csv"
    manifest.write_text(f"case_id,image,mask\n{CASE},{image},{mask}\n")
    assert main(["screen", str(manifest), "-o", str(tmp_path / "p.csv"), "--report", str(tmp_path / "x.html")]) == 2
    assert "--report writes one case's report" in capsys.readouterr().err and not (tmp_path / "x.html").exists()


def test_slicer_export_report_draws_the_scene_nodes_through_the_slice_pipeline(screened, tmp_path):
    """The module Logic's writeReport (Slicer's "Export report"): its views are
    render_slice_views of the scene's nodes (pixel for pixel), not a grab of the view layout."""
    pytest.importorskip("slicer", reason="slicer-core (headless MRML) is not installed")
    from mrml_scene import headless_scene, import_module_file, slicer
    from PIL import Image
    from RadFusionScreenLib.slicer_glue import slice_views

    module = import_module_file()
    with headless_scene() as scene:
        volume = mrml.sitk_to_volume_node(screened.image, CASE, scene)
        volume.CreateDefaultDisplayNodes()
        labelmap = mrml.sitk_to_volume_node(screened.mask, "mask", scene, class_name="vtkMRMLLabelMapVolumeNode")
        segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "lesion")
        assert slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(labelmap, segmentation)
        mrml.remove_node(scene, labelmap)
        segment_id = segmentation.GetSegmentation().GetNthSegmentID(0)
        logic = module.RadFusionScreenLogic(scene)
        logic.writeResults(screened.result, volume, segmentation, segment_id, modelPath=str(SHIPPED))
        heatmap = logic.getParameterNode().heatmapVolume
        nodes_before = scene.GetNumberOfNodes()
        path = logic.writeReport(tmp_path / "report.html", screened.result, "headless export")
        assert scene.GetNumberOfNodes() == nodes_before
        expected = slice_views.compose_views(slice_views.render_slice_views(
            scene, volume, heatmap, segmentation, segment_id, orientations=("Axial",),
            size=slice_views.fitting_size(volume, "Axial", 360)))
    page = path.read_text()
    views = re.search(r'<img id="views" alt="[^"]*" src="data:image/png;base64,([^"]+)"', page).group(1)
    drawn = np.asarray(Image.open(io.BytesIO(base64.b64decode(views))).convert("RGB"))
    np.testing.assert_array_equal(drawn, expected)
    tinted = ~((drawn[..., 0] == drawn[..., 1]) & (drawn[..., 1] == drawn[..., 2]))
    assert 0.05 < tinted.mean() < 0.3  # heat above the threshold (+ outline), not the whole picture
    from RadFusionScreenLib.presentation.case_report import case_hash

    assert f"case {case_hash(screened.image, screened.mask)}" in page and 'id="nomogram"' in page


def test_demo_case_follows_the_bundles_modality(tmp_path, monkeypatch):
    """CT bundle: a LIDC nodule from ../shared when present, else a generated CT phantom that the
    engine reads as CT; another modality is refused with a message."""
    from RadFusionScreenLib.app import demo
    from RadFusionScreenLib.core.errors import InputError
    from RadFusionScreenLib.features.case_features import resolve_modality
    from RadFusionScreenLib.inputs.images import read_image

    ct = type("Screener", (), {"modality": "CT", "bundle": type("B", (), {"manifest": {}})()})()
    if (demo.LIDC / "manifest.csv").is_file():
        image, mask, description, recorded, in_sample = demo.example_case(ct, tmp_path)
        assert "LIDC-IDRI nodule" in description and image.is_file() and mask.is_file() and recorded is None
        assert in_sample is False
    monkeypatch.setattr(demo, "LIDC", tmp_path / "absent")
    image, mask, description, *_ = demo.example_case(ct, tmp_path)
    assert "synthetic CT phantom" in description
    assert resolve_modality(None, read_image(image)) == "CT"
    ct.modality = "MR"
    with pytest.raises(InputError, match="no example case for a MR model"):
        demo.example_case(ct, tmp_path)
