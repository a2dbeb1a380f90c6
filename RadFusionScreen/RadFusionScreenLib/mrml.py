"""The one small MRML adapter: moves data between Slicer nodes and the engine's SimpleITK images.

Slicer nodes are RAS; SimpleITK, ITK and DICOM are LPS. Both conventions meet only here.
Imports ``slicer`` lazily so that the rest of the engine never depends on it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import SimpleITK as sitk

from .errors import InputError, MaskError

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def volume_node_to_sitk(volume_node: Any) -> sitk.Image:
    """Scalar volume node → SimpleITK image (voxel values copied, geometry converted to LPS)."""
    import slicer

    if volume_node is None or volume_node.GetImageData() is None:
        raise InputError("no image data in the selected volume: load or select a volume first")
    array = slicer.util.arrayFromVolume(volume_node)  # (k, j, i) like SimpleITK's array view
    if array.ndim != 3:
        raise InputError(f"volume {volume_node.GetName()!r} is not a scalar volume (array shape {array.shape})")
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    _copy_geometry(volume_node, image)
    return image


def segment_to_sitk_mask(segmentation_node: Any, segment_id: str, reference_volume_node: Any) -> sitk.Image:
    """One segment as a binary (0/1, uint8) SimpleITK mask on the reference volume's voxel grid.

    Uses Slicer's own export (which resamples the segment onto the reference grid) through a
    temporary labelmap node; every node the export adds is removed again, so the scene is left
    exactly as it was (slicer.util.arrayFromSegmentBinaryLabelmap leaves a display node behind).
    """
    import slicer
    import vtk

    if segmentation_node is None or not segment_id:
        raise MaskError("no segment selected: choose a segmentation and a segment (or draw one in Segment Editor)")
    if segmentation_node.GetSegmentation().GetSegment(segment_id) is None:
        raise MaskError(f"segment {segment_id!r} not found in segmentation {segmentation_node.GetName()!r}")
    scene = segmentation_node.GetScene()
    nodes_before = _node_ids(scene)
    segment_ids = vtk.vtkStringArray()
    segment_ids.InsertNextValue(segment_id)
    try:
        labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__radfusion_temporary__")
        exported = slicer.modules.segmentations.logic().ExportSegmentsToLabelmapNode(
            segmentation_node, segment_ids, labelmap, reference_volume_node
        )
        if not exported:
            raise MaskError(f"segment {segment_id!r} could not be exported onto the grid of the selected volume")
        array = slicer.util.arrayFromVolume(labelmap)
        mask = sitk.GetImageFromArray((np.asarray(array) != 0).astype(np.uint8))
    finally:
        for node_id in _node_ids(scene) - nodes_before:
            node = scene.GetNodeByID(node_id)
            if node is not None:
                scene.RemoveNode(node)
    _copy_geometry(reference_volume_node, mask)
    return mask


def _node_ids(scene: Any) -> set[str]:
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


def _copy_geometry(volume_node: Any, image: sitk.Image) -> None:
    """Set origin, spacing and direction of ``image`` (LPS) from a volume node's IJK→RAS geometry."""
    import vtk

    directions = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASDirectionMatrix(directions)
    ras_directions = np.array([[directions.GetElement(r, c) for c in range(3)] for r in range(3)])
    image.SetSpacing(tuple(float(s) for s in volume_node.GetSpacing()))
    image.SetOrigin(tuple(float(v) for v in _RAS_TO_LPS @ np.array(volume_node.GetOrigin())))
    image.SetDirection(tuple(float(v) for v in (_RAS_TO_LPS @ ras_directions).ravel()))


def write_table_node(row: dict[str, Any], table_node: Any | None, name: str) -> Any:
    """Write one result row as a two-column (name, value) table; reuse ``table_node`` when given.

    A long table reads better than 1,300 columns in Slicer's table view. Re-running fills the
    same node again instead of adding a new one.
    """
    import slicer
    import vtk

    if table_node is None:
        table_node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode", name)
    table = vtk.vtkTable()
    names, values = vtk.vtkStringArray(), vtk.vtkStringArray()
    names.SetName("feature")
    values.SetName("value")
    for key, value in row.items():
        names.InsertNextValue(str(key))
        values.InsertNextValue(_format_value(value))
    table.AddColumn(names)
    table.AddColumn(values)
    table_node.SetAndObserveTable(table)
    return table_node


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)  # full precision: the table must reproduce the engine's numbers
    return str(value)
