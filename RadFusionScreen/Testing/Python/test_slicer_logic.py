"""The module's Logic (RadFusionScreen.py) on real MRML from slicer-core, headless.

Ultrasound: a BUSI case screened with the shipped model through the Logic, compared with
the CLI on the same files; outputs, heat map in RAS, slice-view overlay, re-runs, failures
and an MRB round trip. CT: a real DICOM series (STS_001) with a CT bundle trained on
generated phantoms (the session fixture ``ct_bundle``). Run with ``-s`` to see the timing.
"""

from __future__ import annotations

import json
import types

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import shared_path
from mrml_scene import headless_scene, import_module_file, slice_logic, slicer  # skips without slicer-core
from RadFusionScreenLib.app import cli
from RadFusionScreenLib.slicer_glue import mrml
from RadFusionScreenLib.core.errors import InputError
from RadFusionScreenLib.inputs.images import read_image, read_mask

BUSI_CASE = "malignant_10"


@pytest.fixture(scope="module")
def module() -> types.ModuleType:
    return import_module_file()


def _volume_and_segment(scene, image: sitk.Image, mask: sitk.Image, name: str):
    """A volume node and a one-segment segmentation node (imported from a labelmap)."""
    volume = mrml.sitk_to_volume_node(image, name, scene)
    volume.CreateDefaultDisplayNodes()
    labelmap = mrml.sitk_to_volume_node(mask, f"{name} mask", scene, class_name="vtkMRMLLabelMapVolumeNode")
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{name} lesion")
    assert slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(labelmap, segmentation)
    mrml.remove_node(scene, labelmap)
    return volume, segmentation, segmentation.GetSegmentation().GetNthSegmentID(0)


def _state(scene) -> tuple:
    """What a failed run must not change: node IDs, slice layers, parameter-node values."""
    ids = frozenset(scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes()))
    layers = tuple(mrml._layers(scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode"))
                   for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")))
    parameters = scene.GetSingletonNode("RadFusionScreen", "vtkMRMLScriptedModuleNode")
    values = None
    if parameters is not None:
        values = tuple((name, parameters.GetParameter(name)) for name in parameters.GetParameterNames())
        values += tuple((name, parameters.GetNodeReferenceID(name)) for name in ("featureTable", "heatmapVolume"))
    return ids, layers, values


def _table_column(table, name: str) -> list[str]:
    column = table.GetTable().GetColumnByName(name)
    assert column is not None, f"no column {name!r}"
    return [column.GetValue(i) for i in range(column.GetNumberOfTuples())]


# ======================================================================= ultrasound
@pytest.fixture(scope="module")
def busi(module):
    """One BUSI case in a headless scene with slice views, screened once through the Logic."""
    folder = shared_path("busi")
    image_path, mask_path = folder / "images" / f"{BUSI_CASE}.png", folder / "masks" / f"{BUSI_CASE}.png"
    image = read_image(image_path)
    mask = read_mask(mask_path, reference=image)
    with headless_scene(slice_views=True) as scene:
        volume, segmentation, segment_id = _volume_and_segment(scene, image, mask, BUSI_CASE)
        logic = module.RadFusionScreenLogic(scene)
        result = logic.screen(volume, segmentation, segment_id)
        print(f"\nRadFusionScreenLogic.screen on BUSI {BUSI_CASE} {image.GetSize()}: {logic.lastScreenSeconds:.1f} s "
              f"(first run, bundle load included)")
        yield types.SimpleNamespace(scene=scene, logic=logic, volume=volume, segmentation=segmentation,
                                    segment_id=segment_id, result=result, image=image, mask=mask,
                                    image_path=image_path, mask_path=mask_path)


def test_outputs_are_in_the_scene_and_parameter_node(busi):
    result, parameters = busi.result, busi.logic.getParameterNode()
    assert 0.0 <= result.probability <= 1.0 and result.risk_class in ("low", "high")
    assert parameters.probability == result.probability  # the saved float is the engine's, bit for bit
    assert parameters.riskClass == result.risk_class
    assert json.loads(parameters.resultJson)["probability"] == result.probability
    assert parameters.inputVolume is busi.volume and parameters.segmentId == busi.segment_id
    assert mrml.output_nodes(busi.scene) == {"features": parameters.featureTable, "nomogram": parameters.nomogramTable,
                                             "heatmap": parameters.heatmapVolume}

    features = parameters.featureTable
    assert _table_column(features, "name") == list(result.features["name"])
    np.testing.assert_array_equal(np.array(_table_column(features, "raw"), dtype=float), result.features["raw"])
    np.testing.assert_array_equal(np.array(_table_column(features, "scaled"), dtype=float), result.features["scaled"])

    nomogram = parameters.nomogramTable
    predictors = _table_column(nomogram, "predictor")
    assert predictors == [*result.nomogram["predictor"], "total points", "linear predictor", "probability"]
    points = np.array(_table_column(nomogram, "points"), dtype=float)
    np.testing.assert_array_equal(points[: len(result.nomogram)], result.nomogram["points"])
    assert points[len(result.nomogram)] == result.nomogram_total_points
    assert float(_table_column(nomogram, "value")[-1]) == result.nomogram_probability


def test_probability_equals_the_cli_on_the_same_case(busi, module, capsys, tmp_path):
    """The Logic's path (PNG → volume node in RAS → LPS image) changes no bit of the inputs, so
    the probability equals the CLI's exactly; the GUI's background-process path (the CLI's JSON
    and heat-map file read back by the Logic) reproduces the result too."""
    heatmap_path = tmp_path / "heatmap.nrrd"  # as the GUI asks for it
    arguments = ["screen", str(busi.image_path), str(busi.mask_path), "--json", "--heatmap", str(heatmap_path)]
    assert cli.main(arguments) == 0
    stdout = capsys.readouterr().out
    assert json.loads(stdout)["probability"] == busi.result.probability

    from_cli = busi.logic.resultFromOutput(stdout, heatmap_path)
    assert from_cli.probability == busi.result.probability
    assert from_cli.nomogram_total_points == busi.result.nomogram_total_points
    np.testing.assert_array_equal(sitk.GetArrayFromImage(from_cli.heatmap), sitk.GetArrayFromImage(busi.result.heatmap))


def test_gui_exports_the_case_losslessly_for_the_background_process(busi, tmp_path):
    image_path, mask_path = busi.logic.writeCaseFiles(busi.volume, busi.segmentation, busi.segment_id, tmp_path)
    for written, original in ((read_image(image_path), busi.image), (read_image(mask_path), busi.mask)):
        np.testing.assert_array_equal(sitk.GetArrayFromImage(written), sitk.GetArrayFromImage(original))
        assert written.GetOrigin() == original.GetOrigin() and written.GetSpacing() == original.GetSpacing()
        assert written.GetDirection() == original.GetDirection()
    arguments = busi.logic.screenArguments(image_path, mask_path, tmp_path / "h.nii.gz", "", "cpu", {"age": "61"}, "A")
    parsed = cli.build_parser().parse_args(arguments)
    assert parsed.inputs == [str(image_path), str(mask_path)] and parsed.json and parsed.device == "cpu"
    assert parsed.model.endswith("busi-ultrasound") and parsed.clinical == ["age=61"] and parsed.site == "A"


def test_heatmap_lies_on_the_lesion_in_the_volume_geometry(busi):
    heatmap = busi.logic.getParameterNode().heatmapVolume
    np.testing.assert_array_equal(mrml.volume_ijk_to_ras(heatmap), mrml.volume_ijk_to_ras(busi.volume))
    heat = slicer.util.arrayFromVolume(heatmap)
    np.testing.assert_array_equal(heat, sitk.GetArrayFromImage(busi.result.heatmap))
    # The segment, exported through RAS onto the heat map's own grid.
    inside = sitk.GetArrayFromImage(mrml.segment_to_sitk_mask(busi.segmentation, busi.segment_id, heatmap)) > 0
    assert inside.any() and heat.max() == pytest.approx(1.0)
    assert heat[inside].mean() > 2 * heat[~inside].mean()
    display = heatmap.GetDisplayNode()
    assert display.GetColorNodeID() == "vtkMRMLPETProceduralColorNodePET-Heat" and display.GetApplyThreshold()


def _blended(logic) -> np.ndarray:
    from vtk.util.numpy_support import vtk_to_numpy

    producer = logic.GetImageDataConnection().GetProducer()
    producer.Update()
    image = producer.GetOutputDataObject(0)
    width, height, _ = image.GetDimensions()
    return vtk_to_numpy(image.GetPointData().GetScalars()).reshape(height, width, -1).copy()


def test_slice_view_composites_the_heatmap_over_the_image(busi):
    """The Red view's foreground is the heat map, and its blended RGBA differs from the bare
    image where the heat map is visible (the slice logic composites without OpenGL)."""
    heatmap = busi.logic.getParameterNode().heatmapVolume
    logic = slice_logic(busi.scene, "Red")
    composite = logic.GetSliceCompositeNode()
    assert composite.GetForegroundVolumeID() == heatmap.GetID()
    assert composite.GetBackgroundVolumeID() == busi.volume.GetID()
    assert composite.GetForegroundOpacity() == pytest.approx(0.5)
    width, height = busi.image.GetSize()[:2]
    logic.GetSliceNode().SetDimensions(width, height, 1)
    logic.FitSliceToAll()
    with_heat = _blended(logic)
    composite.SetForegroundVolumeID(None)
    without = _blended(logic)
    composite.SetForegroundVolumeID(heatmap.GetID())

    # Heat at each pixel centre: pixel (x, y) → RAS (slice node) → heat map IJK.
    xy_to_ras = slicer.util.arrayFromVTKMatrix(logic.GetSliceNode().GetXYToRAS())
    ras_to_ijk = np.linalg.inv(mrml.volume_ijk_to_ras(heatmap))
    ys, xs = np.mgrid[0:height, 0:width]
    pixels = np.stack([xs.ravel(), ys.ravel(), np.zeros(xs.size), np.ones(xs.size)])
    i, j, k = np.rint((ras_to_ijk @ xy_to_ras @ pixels)[:3]).astype(int)
    heat = slicer.util.arrayFromVolume(heatmap)
    valid = (k == 0) & (i >= 0) & (i < width) & (j >= 0) & (j < height)
    assert valid.mean() > 0.9
    heat_at_pixel = np.zeros(xs.size)
    heat_at_pixel[valid] = heat[k[valid], j[valid], i[valid]]
    heat_at_pixel = heat_at_pixel.reshape(height, width)
    changed = (with_heat != without).any(axis=-1)
    threshold = mrml.HEATMAP_THRESHOLD  # the module's one display threshold (0.5 of the map's maximum)
    assert changed[heat_at_pixel > threshold + 0.05].mean() > 0.99
    assert changed[heat_at_pixel < threshold - 0.05].mean() < 0.01  # below-threshold heat is transparent


def test_failed_runs_leave_the_scene_as_it_was(busi, monkeypatch):
    logic, scene = busi.logic, busi.scene
    before = _state(scene)
    with pytest.raises(InputError, match="not found"):
        logic.screen(busi.volume, busi.segmentation, busi.segment_id, modelPath="/no/such/bundle")
    assert _state(scene) == before
    with pytest.raises(InputError, match="unknown clinical value"):
        logic.screen(busi.volume, busi.segmentation, busi.segment_id, clinical='{"age": 61}')
    assert _state(scene) == before
    empty_id = busi.segmentation.GetSegmentation().AddEmptySegment("empty")
    try:
        with pytest.raises(InputError):
            logic.screen(busi.volume, busi.segmentation, empty_id)
        assert _state(scene) == before
    finally:
        busi.segmentation.GetSegmentation().RemoveSegment(empty_id)

    # A failure while the outputs are being written (after nodes were added and the views changed).
    def failing_show_heatmap(node, background, opacity=0.5):
        mrml.set_foreground(node.GetScene(), node, 0.9, background)
        raise RuntimeError("display failed")

    monkeypatch.setattr(mrml, "show_heatmap", failing_show_heatmap)
    with pytest.raises(RuntimeError, match="display failed"):
        logic.writeResults(busi.result, busi.volume, busi.segmentation, busi.segment_id)
    assert _state(scene) == before


def test_rerun_replaces_the_output_nodes(busi):
    scene, logic = busi.scene, busi.logic
    first = mrml.output_nodes(scene)
    count = scene.GetNumberOfNodes()
    again = logic.screen(busi.volume, busi.segmentation, busi.segment_id)
    assert again.probability == busi.result.probability
    assert scene.GetNumberOfNodes() == count
    second = mrml.output_nodes(scene)
    assert set(second) == {"features", "nomogram", "heatmap"}
    assert all(not scene.IsNodePresent(node) for node in first.values())
    tagged = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())
              if scene.GetNthNode(i).GetAttribute(mrml.OUTPUT_ATTRIBUTE)]
    assert len(tagged) == 3
    assert logic.getParameterNode().heatmapVolume is second["heatmap"]


def test_scene_saved_as_mrb_keeps_tables_and_heatmap(busi, module, tmp_path):
    parameters = busi.logic.getParameterNode()
    heat = slicer.util.arrayFromVolume(parameters.heatmapVolume).copy()
    raw = np.array(_table_column(parameters.featureTable, "raw"), dtype=float)
    bundle = tmp_path / "case.mrb"
    assert busi.scene.WriteToMRB(str(bundle))
    with headless_scene() as scene:
        assert scene.ReadFromMRB(str(bundle))
        outputs = mrml.output_nodes(scene)
        assert set(outputs) == {"features", "nomogram", "heatmap"}
        reloaded = module.RadFusionScreenLogic(scene).getParameterNode()
        assert reloaded.probability == busi.result.probability
        assert reloaded.heatmapVolume is outputs["heatmap"] and reloaded.featureTable is outputs["features"]
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(outputs["heatmap"]), heat)
        np.testing.assert_array_equal(mrml.volume_ijk_to_ras(outputs["heatmap"]), mrml.volume_ijk_to_ras(busi.volume))
        assert _table_column(outputs["features"], "name") == list(busi.result.features["name"])
        # Slicer's table storage writes doubles with 6 significant digits.
        np.testing.assert_allclose(np.array(_table_column(outputs["features"], "raw"), dtype=float), raw, rtol=1e-5)
        assert _table_column(outputs["nomogram"], "predictor") == _table_column(parameters.nomogramTable, "predictor")


def test_module_self_test_runs_headless(module):
    """RadFusionScreenTest, as Slicer runs it (here on slicer-core with stand-ins for the
    application-only Slicer modules)."""
    with headless_scene():
        test = module.RadFusionScreenTest()
        test.runTest()


def test_module_self_test_installs_nothing_and_says_why_it_skips(module, monkeypatch):
    """In a ctest run (testing mode) the engine's packages are not installed for the self-test:
    it says so and screens nothing, instead of failing on an import or pip-installing torch."""
    from RadFusionScreenLib.slicer_glue import packages

    monkeypatch.setattr(packages, "missingPackages", lambda path: ["torch>=2.2"])
    with headless_scene() as scene:
        test = module.RadFusionScreenTest()
        messages = []
        monkeypatch.setattr(test, "delayDisplay", messages.append)
        test.runTest()
        assert messages == ["Skipped: the engine's Python packages are not installed (torch>=2.2)"]
        assert scene.GetNodesByClass("vtkMRMLScalarVolumeNode").GetNumberOfItems() == 0


# =============================================================================== CT
@pytest.mark.slow
def test_ct_dicom_series_with_a_ct_bundle(module, ct_bundle):
    ct = shared_path("dicom", "sts_rtstruct", "STS_001", "CT")
    image = read_image(ct / "dicom" / "image")
    mask = read_mask(sorted((ct / "nifti" / "mask").glob("*.nii.gz"))[0], reference=image)
    with headless_scene(slice_views=True) as scene:
        volume, segmentation, segment_id = _volume_and_segment(scene, image, mask, "STS_001 CT")
        logic = module.RadFusionScreenLogic(scene)
        exported_image, exported_mask = logic.exportCase(volume, segmentation, segment_id)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(exported_image), sitk.GetArrayFromImage(image))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(exported_mask), sitk.GetArrayFromImage(mask))
        np.testing.assert_allclose(exported_image.GetOrigin(), image.GetOrigin(), atol=1e-9)
        np.testing.assert_allclose(exported_image.GetDirection(), image.GetDirection(), atol=1e-12)

        result = logic.screen(volume, segmentation, segment_id, modelPath=ct_bundle)
        print(f"\nRadFusionScreenLogic.screen on STS_001 CT {image.GetSize()}: {logic.lastScreenSeconds:.1f} s "
              f"(engine: {', '.join(f'{k} {v:.1f} s' for k, v in result.timings.items())})")
        parameters = logic.getParameterNode()
        assert 0.0 <= parameters.probability <= 1.0 and parameters.probability == result.probability
        assert parameters.featureTable.GetNumberOfRows() == len(result.features) > 0
        assert parameters.nomogramTable is not None
        heatmap = parameters.heatmapVolume
        assert heatmap is not None and heatmap.GetImageData().GetDimensions() == image.GetSize()
        np.testing.assert_array_equal(mrml.volume_ijk_to_ras(heatmap), mrml.volume_ijk_to_ras(volume))
        inside = sitk.GetArrayFromImage(mask) > 0
        heat = slicer.util.arrayFromVolume(heatmap)
        assert heat[inside].mean() > heat[~inside].mean()
        assert slice_logic(scene, "Red").GetSliceCompositeNode().GetForegroundVolumeID() == heatmap.GetID()


def test_lidc_nodule_gets_the_shipped_ct_bundle(module):
    """A chest-CT nodule (LIDC-IDRI) in the scene, no model chosen: the Logic picks the shipped CT
    bundle by the volume's modality (not the ultrasound default), screens it with the nodule's
    diameter as the clinical value, and the answer is a calibrated probability."""
    import pandas as pd

    from conftest import REPO_ROOT

    folder = shared_path("lidc")
    bundle = REPO_ROOT / "models" / "lidc-ct-nodule"
    assert (bundle / "manifest.json").is_file(), "the shipped CT bundle models/lidc-ct-nodule is missing"
    cases = pd.read_csv(folder / "manifest.csv").merge(pd.read_csv(folder / "nodules.csv"), on="case_id")
    case = cases[cases["label"] == 1].iloc[0]
    image = read_image(folder / case["image"])
    mask = read_mask(folder / case["mask"], reference=image)
    with headless_scene(slice_views=True) as scene:
        volume, segmentation, segment_id = _volume_and_segment(scene, image, mask, case["case_id"])
        logic = module.RadFusionScreenLogic(scene)
        assert logic.volumeModality(volume) == "CT"
        assert logic.resolveModelPath("", volume) == bundle.resolve()
        result = logic.screen(volume, segmentation, segment_id, clinical={"diameter_mm": float(case["diameter_mm"])})
        assert result.model["name"] == "lidc-ct-nodule" and result.calibration
        parameters = logic.getParameterNode()
        assert parameters.modelPath == "", "no model was chosen: the default keeps following the volume"
        assert 0.0 < parameters.probability < 1.0 and parameters.probability == result.probability
        assert parameters.heatmapVolume is not None and parameters.nomogramTable is not None
        with pytest.raises(InputError, match="diameter_mm"):  # the nomogram's clinical value is required
            logic.screen(volume, segmentation, segment_id)
