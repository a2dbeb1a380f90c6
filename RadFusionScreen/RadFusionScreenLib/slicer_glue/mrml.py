"""The one small MRML adapter: moves data between Slicer nodes and the engine's SimpleITK images.

Slicer nodes are RAS; SimpleITK, ITK and DICOM are LPS. Both conventions meet only here.
Imports ``slicer`` lazily so that the rest of the engine never depends on it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import SimpleITK as sitk

from RadFusionScreenLib.core.errors import InputError, MaskError

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


def _format_value(value: Any) -> str:
    if isinstance(value, (float, np.floating)):
        return repr(float(value))  # full precision: the table must reproduce the engine's numbers
    return str(value)


# ------------------------------------------------------------------ engine → scene

OUTPUT_ATTRIBUTE = "RadFusionScreen.output"  # node attribute: which module output a node holds
HEAT_COLOR_NODE_IDS = ("vtkMRMLPETProceduralColorNodePET-Heat", "vtkMRMLColorTableNodeIron")
#: The one display threshold of the Grad-CAM map (maps are normalised to a maximum of 1 on the
#: CNN's crop): values below it are transparent, in the module's slice views
#: (:func:`show_heatmap`), in the headless views of reports and the screenshot
#: (``slice_views``) and in the engine-side fallback renderer of ``radfusion demo``. 0.5 shows the
#: upper half of the map, where the deep-score's evidence concentrates: on the BUSI screenshot
#: case 0.05 tinted 92 % of the picture (a map over the whole crop says nothing about where),
#: 0.3 42 %, 0.5 20 %.
HEATMAP_THRESHOLD = 0.5
#: Where PET-Heat's colours begin (its dark-red stop at 35 of 0-255; below is black, which at
#: half opacity only darkens the picture). The heat map's window starts so that the threshold
#: lands on this stop: the visible values run dark red -> yellow -> white.
PET_HEAT_FIRST_COLOUR = 35.0 / 255.0


def heatmap_window(maximum: float = 1.0, threshold: float = HEATMAP_THRESHOLD) -> tuple[float, float]:
    """Window (low, high) of the heat-map display: ``threshold × maximum`` maps to PET-Heat's
    first colour (:data:`PET_HEAT_FIRST_COLOUR`) and ``maximum`` to its top (white)."""
    start = PET_HEAT_FIRST_COLOUR
    low = maximum * (float(threshold) - start) / (1.0 - start)
    return low, float(maximum)


def ijk_to_ras_matrix(image: sitk.Image) -> np.ndarray:
    """4×4 IJK→RAS matrix of a SimpleITK (LPS) image's voxel grid."""
    direction = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    matrix = np.eye(4)
    matrix[:3, :3] = _RAS_TO_LPS @ direction @ np.diag(image.GetSpacing())
    matrix[:3, 3] = _RAS_TO_LPS @ np.array(image.GetOrigin(), dtype=float)
    return matrix


def volume_ijk_to_ras(volume_node: Any) -> np.ndarray:
    """A volume node's 4×4 IJK→RAS matrix as a numpy array."""
    import vtk

    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def sitk_to_volume_node(image: sitk.Image, name: str, scene: Any | None = None,
                        class_name: str = "vtkMRMLScalarVolumeNode") -> Any:
    """A new volume node (added to ``scene``, default the global one) holding a SimpleITK image.

    Voxels are copied; the LPS geometry becomes the node's RAS IJK→RAS matrix, so the node
    lies exactly where ``image`` lies physically (a 2D image becomes a one-slice volume). No
    display node is created.
    """
    import slicer
    import vtk

    if image.GetDimension() == 2:
        image = sitk.JoinSeries(image)  # a picture becomes a one-slice volume, as the engine reads it
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"a 2D or 3D scalar image is needed for a volume node, got {image.GetDimension()}D "
                         f"with {image.GetNumberOfComponentsPerPixel()} components")
    scene = scene if scene is not None else slicer.mrmlScene
    node = scene.AddNewNodeByClass(class_name, name)
    matrix = vtk.vtkMatrix4x4()
    for r, row in enumerate(ijk_to_ras_matrix(image)):
        for c, value in enumerate(row):
            matrix.SetElement(r, c, float(value))
    node.SetIJKToRASMatrix(matrix)
    slicer.util.updateVolumeFromArray(node, sitk.GetArrayFromImage(image))
    return node


def write_columns_table(columns: dict[str, list[Any]], table_node: Any) -> Any:
    """Fill a table node with named columns: all-number columns as doubles, others as text."""
    import vtk

    table = vtk.vtkTable()
    for name, values in columns.items():
        numeric = all(_is_number(v) for v in values)
        column = vtk.vtkDoubleArray() if numeric else vtk.vtkStringArray()
        column.SetName(name)
        for value in values:
            column.InsertNextValue(float(value) if numeric else _format_value(value))
        table.AddColumn(column)
    table_node.SetAndObserveTable(table)
    return table_node


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def output_nodes(scene: Any) -> dict[str, Any]:
    """Nodes that carry :data:`OUTPUT_ATTRIBUTE`, by its value (the output's role)."""
    found = {}
    for i in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(i)
        role = node.GetAttribute(OUTPUT_ATTRIBUTE)
        if role:
            found[role] = node
    return found


def remove_node(scene: Any, node: Any) -> None:
    """Remove a node with its display and storage nodes (RemoveNode alone leaves them behind)."""
    dependents = []
    for getter, count in (("GetNthDisplayNode", "GetNumberOfDisplayNodes"),
                          ("GetNthStorageNode", "GetNumberOfStorageNodes")):
        if hasattr(node, count):
            dependents += [getattr(node, getter)(i) for i in range(getattr(node, count)())]
    scene.RemoveNode(node)
    for dependent in dependents:
        if dependent is not None and scene.IsNodePresent(dependent):
            scene.RemoveNode(dependent)


def _composite_nodes(scene: Any) -> list[Any]:
    return [scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
            for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode"))]


def _layers(composite: Any) -> tuple[Any, ...]:
    return (composite.GetBackgroundVolumeID(), composite.GetForegroundVolumeID(), composite.GetForegroundOpacity())


@contextmanager
def scene_transaction(scene: Any) -> Iterator[None]:
    """All or nothing: if the block raises, every node it added is removed and the slice views
    get their background / foreground layers and foreground opacity back."""
    before = _node_ids(scene)
    layers = [(composite, _layers(composite)) for composite in _composite_nodes(scene)]
    try:
        yield
    except BaseException:
        # Layers first: a slice view showing a volume recreates its display node when removed.
        for composite, (background, foreground, opacity) in layers:
            composite.SetBackgroundVolumeID(background)
            composite.SetForegroundVolumeID(foreground)
            composite.SetForegroundOpacity(opacity)
        for _ in range(3):  # removing a node can make MRML add another (default display nodes)
            added = _node_ids(scene) - before
            for node_id in sorted(added):
                node = scene.GetNodeByID(node_id)
                if node is not None:
                    scene.RemoveNode(node)
        raise


def show_heatmap(heatmap_node: Any, background_node: Any | None, opacity: float = 0.5,
                 threshold: float = HEATMAP_THRESHOLD) -> None:
    """Heat colours (PET-Heat) on the fixed window of :func:`heatmap_window` (the map is
    normalised to 0-1), values below ``threshold`` transparent; shown as the foreground of every
    slice view (over ``background_node`` where a view has no background)."""
    scene = heatmap_node.GetScene()
    heatmap_node.CreateDefaultDisplayNodes()
    display = heatmap_node.GetDisplayNode()
    color_id = next((i for i in HEAT_COLOR_NODE_IDS if scene.GetNodeByID(i) is not None), None)
    if color_id is not None:
        display.SetAndObserveColorNodeID(color_id)
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(*heatmap_window(1.0, threshold))
    display.SetApplyThreshold(1)
    display.SetLowerThreshold(threshold)
    display.SetUpperThreshold(1.0e6)
    set_foreground(scene, heatmap_node, opacity, background_node)


def set_foreground(scene: Any, volume_node: Any | None, opacity: float | None = None,
                   background_node: Any | None = None) -> None:
    """Show ``volume_node`` (or nothing) as the foreground layer of every slice view."""
    for composite in _composite_nodes(scene):
        if background_node is not None and not composite.GetBackgroundVolumeID():
            composite.SetBackgroundVolumeID(background_node.GetID())
        composite.SetForegroundVolumeID(volume_node.GetID() if volume_node is not None else None)
        if opacity is not None:
            composite.SetForegroundOpacity(float(opacity))
