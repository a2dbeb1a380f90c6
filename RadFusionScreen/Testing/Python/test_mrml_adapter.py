"""The MRML adapter against real Slicer MRML classes (slicer-core, headless)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from mrml_scene import headless_scene, slicer  # skips the module without slicer-core
from RadFusionScreenLib.core.errors import MaskError
from RadFusionScreenLib.slicer_glue.mrml import segment_to_sitk_mask, volume_node_to_sitk


def _oblique_image() -> sitk.Image:
    """A small LPS image with a rotated direction, a non-zero origin and anisotropic spacing."""
    array = np.arange(5 * 6 * 7, dtype=np.int16).reshape(5, 6, 7)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.6, 0.8, 2.5))
    image.SetOrigin((12.0, -30.5, 101.0))
    angle = np.deg2rad(20)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    image.SetDirection(tuple(rotation.ravel()))
    return image


def _node_ids(scene) -> set[str]:
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


def _volume_node_from_sitk(image: sitk.Image, class_name: str = "vtkMRMLScalarVolumeNode"):
    """Independent LPS→RAS conversion through Slicer's own IJK→RAS matrix API."""
    import vtk

    node = slicer.util.addVolumeFromArray(sitk.GetArrayFromImage(image), nodeClassName=class_name)
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    direction = np.array(image.GetDirection()).reshape(3, 3)
    ijk_to_ras = np.eye(4)
    ijk_to_ras[:3, :3] = lps_to_ras @ direction @ np.diag(image.GetSpacing())
    ijk_to_ras[:3, 3] = lps_to_ras @ np.array(image.GetOrigin())
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, ijk_to_ras[r, c])
    node.SetIJKToRASMatrix(matrix)
    return node


def test_volume_round_trip_keeps_voxels_and_lps_geometry():
    image = _oblique_image()
    with headless_scene():
        node = _volume_node_from_sitk(image)
        back = volume_node_to_sitk(node)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))
    np.testing.assert_allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-9)
    np.testing.assert_allclose(back.GetSpacing(), image.GetSpacing(), atol=1e-9)
    np.testing.assert_allclose(back.GetDirection(), image.GetDirection(), atol=1e-9)
    # Same physical point for one voxel index in both conventions (RAS = LPS with x, y negated).
    ras = node.GetOrigin()
    assert back.GetOrigin()[0] == pytest.approx(-ras[0]) and back.GetOrigin()[1] == pytest.approx(-ras[1])


def test_segment_export_matches_labelmap_and_leaves_scene_unchanged():
    image = _oblique_image()
    labels = np.zeros(sitk.GetArrayFromImage(image).shape, dtype=np.uint8)
    labels[1:4, 2:5, 1:6] = 1
    label_image = sitk.GetImageFromArray(labels)
    label_image.CopyInformation(image)
    with headless_scene() as scene:
        volume = _volume_node_from_sitk(image)
        labelmap = _volume_node_from_sitk(label_image, "vtkMRMLLabelMapVolumeNode")
        segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        assert slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(labelmap, segmentation)
        segment_id = segmentation.GetSegmentation().GetNthSegmentID(0)
        before = _node_ids(scene)
        mask = segment_to_sitk_mask(segmentation, segment_id, volume)
        assert _node_ids(scene) == before
        with pytest.raises(MaskError, match="not found"):
            segment_to_sitk_mask(segmentation, "no-such-segment", volume)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(mask), labels)
    np.testing.assert_allclose(mask.GetDirection(), image.GetDirection(), atol=1e-9)
