"""Slice views rendered by Slicer's own slice pipeline, headless (slicer_glue.slice_views).

A synthetic 64×64×20 volume (LPS identity grid, so voxel i grows to the patient's left and j
to posterior) with a lesion sphere off-centre in every axis, a bright marker on the patient's
LEFT anterior side, a heat map (1.0 in a ball, 0.02 elsewhere: non-zero but under the
threshold) and the lesion as a segment. Assertions are on the blended RGB pixels, mapped back
to voxels through each view's pixel → RAS matrix.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("slicer", reason="slicer-core (headless MRML) is not installed")

from mrml_scene import headless_scene, slicer  # noqa: E402
from RadFusionScreenLib.slicer_glue import mrml, slice_views  # noqa: E402

SHAPE = (20, 64, 64)  # k, j, i
LESION_CENTER, LESION_RADIUS = (5, 34, 22), 5  # (k, j, i): off-centre in all three axes
HEAT_CENTER, HEAT_RADIUS = (5, 34, 24), 6
MARKER = (slice(None), slice(3, 8), slice(54, 60))  # every slice; low j = anterior, high i = left
BACKGROUND, LESION, MARKER_VALUE = 10.0, 60.0, 200.0
SEGMENT_COLOR = (1.0, 0.0, 1.0)  # magenta: nowhere else in the picture
OUTLINE_THICKNESS = 2  # the segmentation display node's slice-intersection thickness (pixels)
SIZE = (127, 127)  # ~2 pixels per voxel; pixel samples never fall on a voxel boundary


def _ball(center, radius) -> np.ndarray:
    k, j, i = np.indices(SHAPE)
    return (k - center[0]) ** 2 + (j - center[1]) ** 2 + (i - center[2]) ** 2 <= radius ** 2


@pytest.fixture(scope="module")
def case():
    image = np.full(SHAPE, BACKGROUND, np.float32)
    lesion = _ball(LESION_CENTER, LESION_RADIUS)
    image[lesion] = LESION
    image[MARKER] = MARKER_VALUE
    heat = np.full(SHAPE, 0.02, np.float32)
    heat[_ball(HEAT_CENTER, HEAT_RADIUS)] = 1.0
    with headless_scene() as scene:
        volume = mrml.sitk_to_volume_node(sitk.GetImageFromArray(image), "synthetic", scene)
        heatmap = mrml.sitk_to_volume_node(sitk.GetImageFromArray(heat), "synthetic Grad-CAM", scene)
        labelmap = mrml.sitk_to_volume_node(sitk.GetImageFromArray(lesion.astype(np.uint8)), "mask", scene,
                                            class_name="vtkMRMLLabelMapVolumeNode")
        segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "lesion")
        assert slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(labelmap, segmentation)
        mrml.remove_node(scene, labelmap)
        segment_id = segmentation.GetSegmentation().GetNthSegmentID(0)
        segmentation.GetSegmentation().GetSegment(segment_id).SetColor(*SEGMENT_COLOR)
        segmentation.GetDisplayNode().SetSliceIntersectionThickness(OUTLINE_THICKNESS)
        yield type("Case", (), dict(scene=scene, volume=volume, heatmap=heatmap, segmentation=segmentation,
                                    segment_id=segment_id, lesion=lesion, heat=heat, image=image))


def _voxel_at_pixels(views, orientation) -> tuple[np.ndarray, ...]:
    """(k, j, i) of the voxel nearest to each pixel centre, and whether it is in the volume."""
    width, height = SIZE
    rows, columns = np.mgrid[0:height, 0:width]
    pixels = np.stack([columns.ravel(), rows.ravel(), np.zeros(rows.size), np.ones(rows.size)])
    ras = views.pixel_to_ras[orientation] @ pixels
    ijk = np.linalg.inv(np.array(_ijk_to_ras())) @ ras
    i, j, k = (np.rint(ijk[axis]).astype(int).reshape(height, width) for axis in range(3))
    inside = (k >= 0) & (k < SHAPE[0]) & (j >= 0) & (j < SHAPE[1]) & (i >= 0) & (i < SHAPE[2])
    return np.clip(k, 0, SHAPE[0] - 1), np.clip(j, 0, SHAPE[1] - 1), np.clip(i, 0, SHAPE[2] - 1), inside


def _ijk_to_ras() -> np.ndarray:
    return mrml.ijk_to_ras_matrix(sitk.GetImageFromArray(np.zeros(SHAPE, np.uint8)))


def _render(case, **kwargs):
    return slice_views.render_slice_views(case.scene, case.volume, size=SIZE, **kwargs)


def test_overlay_where_heat_is_above_threshold_and_plain_background_below(case):
    from scipy import ndimage

    plain = _render(case, segmentation_node=case.segmentation, segment_id=case.segment_id)
    heated = _render(case, heatmap_node=case.heatmap, segmentation_node=case.segmentation,
                     segment_id=case.segment_id)
    assert set(heated) == set(slice_views.ORIENTATIONS)
    hot = case.heat >= slice_views.HEATMAP_THRESHOLD_FRACTION * case.heat.max()
    # Voxels whose whole 3×3×3 neighbourhood is hot / cold: linear interpolation cannot blur them.
    surely_hot = ndimage.binary_erosion(hot, np.ones((3, 3, 3)), border_value=1)
    surely_cold = ~ndimage.binary_dilation(hot, np.ones((3, 3, 3)))
    top = np.array(case.scene.GetNodeByID(mrml.HEAT_COLOR_NODE_IDS[0]).GetColorTransferFunction().GetColor(255.0))
    for orientation in slice_views.ORIENTATIONS:
        k, j, i, inside = _voxel_at_pixels(heated, orientation)
        hot_pixels = inside & surely_hot[k, j, i]
        cold_pixels = inside & surely_cold[k, j, i]
        assert hot_pixels.sum() > 50 and cold_pixels.sum() > 500, orientation
        with_heat, without = heated[orientation].astype(int), plain[orientation].astype(int)
        outline = (plain[orientation] == np.rint(np.array(SEGMENT_COLOR) * 255)).all(axis=-1)
        # The label layer is blended last (Slicer draws the outline over the heat map).
        np.testing.assert_array_equal(with_heat[outline], without[outline])
        hot_pixels &= ~outline
        # Below the threshold: exactly the plain picture (grey image + outline), no tint at all.
        np.testing.assert_array_equal(with_heat[cold_pixels], without[cold_pixels])
        # Above it (heat 1.0, the top of PET-Heat: white): half-opacity blend over the picture.
        expected = 0.5 * without[hot_pixels] + 0.5 * 255 * top
        assert np.abs(with_heat[hot_pixels] - expected).max() <= 2, orientation
        assert (with_heat[hot_pixels] != without[hot_pixels]).any(axis=-1).all(), orientation


def test_radiological_left_right_and_anterior_up(case):
    """The marker at the patient's left and anterior lies on the image's right and top half."""
    ijk_to_ras = _ijk_to_ras()
    marker, middle = ijk_to_ras @ np.array([56.0, 5.0, 0.0, 1.0]), ijk_to_ras @ np.array([32.0, 32.0, 0.0, 1.0])
    assert marker[0] < middle[0] and marker[1] > middle[1]  # RAS: smaller R is left, larger A anterior
    axial = _render(case, orientations=("Axial",))["Axial"]  # default display node: auto window/level
    assert (axial[..., 0] == axial[..., 1]).all() and (axial[..., 1] == axial[..., 2]).all()  # grey only
    grey = axial[..., 0].astype(int)
    rows, columns = np.nonzero(grey >= grey.max() - 2)  # the marker is the brightest thing
    width, height = SIZE
    assert rows.size > 20
    assert columns.min() > width / 2, "patient's left must be on the image's right (radiological)"
    assert rows.max() < height / 2, "anterior must be at the top of the axial view"


def test_window_level_of_the_display_node(case):
    from scipy import ndimage

    case.volume.CreateDefaultDisplayNodes()
    display = case.volume.GetDisplayNode()
    try:
        display.AutoWindowLevelOff()
        display.SetWindowLevelMinMax(0.0, 100.0)  # lesion 60 → 60 % grey, marker 200 → white
        center = _ijk_to_ras() @ np.array([LESION_CENTER[2], LESION_CENTER[1], LESION_CENTER[0], 1.0])
        axial = _render(case, orientations=("Axial",), center_ras=center[:3])
        k, j, i, inside = _voxel_at_pixels(axial, "Axial")
        grey = axial["Axial"][..., 0].astype(int)
        for value, expected in ((BACKGROUND, 0.10 * 255), (LESION, 0.60 * 255), (MARKER_VALUE, 255)):
            # Away from edges (linear interpolation): voxels whose 3×3×3 neighbours share the value.
            same = ndimage.binary_erosion(case.image == value, np.ones((3, 3, 3)), border_value=1)
            pixels = inside & same[k, j, i]
            assert pixels.sum() > 20, value
            assert np.abs(grey[pixels] - expected).max() <= 1, value
    finally:
        mrml.remove_node(case.scene, display)


def test_outline_on_the_segment_boundary_through_the_lesion_centre(case):
    from scipy import ndimage

    views = _render(case, segmentation_node=case.segmentation, segment_id=case.segment_id)
    color = np.rint(np.array(SEGMENT_COLOR) * 255).astype(np.uint8)
    center_ras = _ijk_to_ras() @ np.array([LESION_CENTER[2], LESION_CENTER[1], LESION_CENTER[0], 1.0])
    for orientation, normal_axis in (("Axial", 2), ("Coronal", 1), ("Sagittal", 0)):
        # The view's plane passes through the lesion centre.
        plane = views.pixel_to_ras[orientation] @ np.array([[0, 0, 0, 1], [100, 70, 0, 1]], dtype=float).T
        np.testing.assert_allclose(plane[normal_axis], center_ras[normal_axis], atol=1e-6)
        k, j, i, inside = _voxel_at_pixels(views, orientation)
        in_segment = inside & case.lesion[k, j, i]
        # vtkImageLabelOutline: a segment pixel with a non-segment pixel within the thickness.
        kernel = np.ones((2 * OUTLINE_THICKNESS + 1,) * 2)
        ring = in_segment & ~ndimage.binary_erosion(in_segment, kernel)
        interior = in_segment & ~ring
        outline = (views[orientation] == color).all(axis=-1)
        assert ring.sum() > 20 and interior.sum() > 20, orientation
        assert not outline[~ring].any(), f"{orientation}: outline pixels off the segment's boundary"
        assert outline[ring].all(), f"{orientation}: boundary not outlined"
        assert not outline[interior].any(), f"{orientation}: segment interior filled"


def test_scene_is_left_as_it_was(case):
    scene = case.scene
    heat_display = scene.AddNewNodeByClass("vtkMRMLScalarVolumeDisplayNode")
    heat_display.SetAndObserveColorNodeID("vtkMRMLColorTableNodeGrey")
    case.heatmap.SetAndObserveDisplayNodeID(heat_display.GetID())
    before_ids = mrml._node_ids(scene)
    before_count = scene.GetNumberOfNodes()
    assert case.volume.GetDisplayNode() is None  # one is created for the render and removed again
    views = _render(case, heatmap_node=case.heatmap, segmentation_node=case.segmentation, segment_id=None)
    assert set(views) == set(slice_views.ORIENTATIONS)
    assert scene.GetNumberOfNodes() == before_count
    assert mrml._node_ids(scene) == before_ids
    assert case.volume.GetDisplayNode() is None
    assert case.heatmap.GetDisplayNode() is heat_display
    assert heat_display.GetColorNodeID() == "vtkMRMLColorTableNodeGrey" and not heat_display.GetApplyThreshold()
    mrml.remove_node(scene, heat_display)


def test_single_slice_volume_gives_the_axial_view_only(case):
    scene = case.scene
    before = scene.GetNumberOfNodes()
    picture = np.zeros((1, 40, 60), np.float32)
    picture[0, 10:20, 40:50] = 100.0
    node = mrml.sitk_to_volume_node(sitk.GetImageFromArray(picture), "picture", scene)
    try:
        views = slice_views.render_slice_views(scene, node, size=(60, 40))
        assert list(views) == ["Axial"]
        assert views["Axial"].shape == (40, 60, 3) and views["Axial"].dtype == np.uint8
        bright = np.nonzero(views["Axial"][..., 0] > 128)
        assert bright[1].min() >= 39 and bright[0].max() <= 21  # left (i 40–49) on the right, anterior up
    finally:
        mrml.remove_node(scene, node)
    assert scene.GetNumberOfNodes() == before


def test_threshold_and_colour_are_the_modules():
    default = inspect.signature(mrml.show_heatmap).parameters["threshold"].default
    assert slice_views.HEATMAP_THRESHOLD_FRACTION == default
    assert mrml.HEAT_COLOR_NODE_IDS[0] == "vtkMRMLPETProceduralColorNodePET-Heat"


def test_compose_and_write_png(tmp_path):
    from PIL import Image

    views = {"Axial": np.full((30, 40, 3), 90, np.uint8), "Coronal": np.full((20, 40, 3), 30, np.uint8)}
    picture = slice_views.compose_views(views, ["probability 0.9", "Research use only"], gap=4, label_views=False)
    assert picture.shape[1] == 84 and picture.shape[0] > 30 + 2 * 14 and picture.dtype == np.uint8
    assert (picture[15, 80] == 30).all() and (picture[25, 80] == 0).all()  # shorter view padded with black
    path = slice_views.write_png(tmp_path / "views.png", picture)
    np.testing.assert_array_equal(np.asarray(Image.open(path).convert("RGB")), picture)
