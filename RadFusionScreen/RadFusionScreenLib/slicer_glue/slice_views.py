"""Slice views rendered as Slicer draws them, without a display: one code for the module,
reports and the extension's screenshot.

Slicer's own 2D pipeline does the work (``vtkMRMLSliceLogic``: reslice each layer, map it
through its display node, blend with ``vtkImageBlend``), so what comes out is what a slice
view shows: the volume with its window/level as background, the Grad-CAM heat map as
foreground (PET-Heat, values below :data:`HEATMAP_THRESHOLD_FRACTION` of its maximum
transparent, as the module shows it), the segment as Slicer's label outline. No OpenGL.

The user's scene is left as it was: the slice node is never added to the scene (so Slicer's
layout creates no view for it), and every node added for the render (slice composite and
slice-model nodes, a heat-map proxy sharing the map's voxels, the temporary label map and its
colour table, a default display node) is removed afterwards.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from RadFusionScreenLib.core.errors import InputError, MaskError
from RadFusionScreenLib.slicer_glue import mrml

ORIENTATIONS = ("Axial", "Coronal", "Sagittal")
#: Heat-map values below this fraction of the map's maximum are transparent: the module's one
#: threshold :data:`mrml.HEATMAP_THRESHOLD` (Grad-CAM maps are normalised to a maximum of 1).
HEATMAP_THRESHOLD_FRACTION = mrml.HEATMAP_THRESHOLD
HEATMAP_OPACITY = 0.5  # the module's default heat-map opacity (parameter node heatmapOpacity)
_SLICE_NORMALS_RAS = {"Sagittal": 0, "Coronal": 1, "Axial": 2}  # RAS axis each view looks along
_ALPHA_BLENDING = 0  # vtkMRMLSliceCompositeNode::Alpha


class SliceViews(dict):
    """Orientation → RGB view (a plain dict), with per view ``pixel_to_ras`` (4×4: column, row
    from the top, 0, 1 → the RAS point Slicer samples for that pixel, its XYToRAS) and
    ``seconds`` (the pipeline update)."""

    def __init__(self) -> None:
        super().__init__()
        self.pixel_to_ras: dict[str, np.ndarray] = {}
        self.seconds: dict[str, float] = {}


def views_for_volume(volume_node: Any, orientations: Iterable[str] = ORIENTATIONS) -> tuple[str, ...]:
    """The orientations worth showing: all of ``orientations`` for a 3D volume; for a
    single-slice (2D) volume only the view that looks along its thin axis (axial for a picture
    read as a one-slice volume)."""
    orientations = tuple(orientations)
    unknown = [o for o in orientations if o not in _SLICE_NORMALS_RAS]
    if unknown:
        raise InputError(f"unknown slice orientation(s) {unknown}: use {', '.join(ORIENTATIONS)}")
    dimensions = volume_node.GetImageData().GetDimensions()
    thin = [axis for axis in range(3) if dimensions[axis] == 1]
    if len(thin) != 1:
        return orientations
    thin_direction_ras = mrml.volume_ijk_to_ras(volume_node)[:3, thin[0]]
    looks_along = int(np.argmax(np.abs(thin_direction_ras)))
    return tuple(o for o in ORIENTATIONS if _SLICE_NORMALS_RAS[o] == looks_along)


def render_slice_views(scene: Any, volume_node: Any, heatmap_node: Any | None = None,
                       segmentation_node: Any | None = None, segment_id: str | None = None,
                       orientations: Iterable[str] = ORIENTATIONS, size: tuple[int, int] = (512, 512),
                       heatmap_opacity: float = HEATMAP_OPACITY,
                       heatmap_threshold: float = HEATMAP_THRESHOLD_FRACTION,
                       center_ras: Iterable[float] | None = None) -> SliceViews:
    """Slice views of ``volume_node`` as Slicer draws them: orientation → RGB ``uint8`` array
    of shape (height, width, 3), first row at the top of the view (radiological: the
    patient's left on the image's right in axial and coronal views).

    - background: ``volume_node`` with its display node's window/level (a default display
      node, auto window/level, is used and removed again when it has none);
    - foreground: ``heatmap_node`` in PET-Heat over :func:`mrml.heatmap_window` (the threshold
      on PET-Heat's dark red, the maximum white), values below ``heatmap_threshold`` × maximum
      transparent, at ``heatmap_opacity`` (the module's
      look; the heat map's own display node is not used or changed);
    - label layer: ``segment_id`` of ``segmentation_node`` (all its visible segments when no
      ID is given) exported onto the volume's grid and drawn as Slicer's label outline
      (``vtkImageLabelOutline``: labelled pixels with another value within the segmentation
      display node's slice-intersection thickness), in the segment's colour, over the heat map;
    - every view passes through ``center_ras``, by default the centroid of the segment's
      voxels on the volume's grid (the lesion centre), else the volume's centre.

    ``orientations`` is reduced by :func:`views_for_volume` (a 2D volume gives just its axial
    view). The scene is left with exactly the nodes it had. The result is a dict that also
    carries each view's pixel → RAS matrix and timing (:class:`SliceViews`).
    """
    if volume_node is None or volume_node.GetImageData() is None:
        raise InputError("no image data in the volume to render: load or select a volume first")
    width, height = (int(v) for v in size)
    if width < 1 or height < 1:
        raise InputError(f"view size must be positive, got {size}")
    scene = scene if scene is not None else volume_node.GetScene()
    orientations = views_for_volume(volume_node, orientations)
    nodes_before = mrml._node_ids(scene)
    logics = []
    views = SliceViews()
    try:
        if volume_node.GetDisplayNode() is None:
            volume_node.CreateDefaultDisplayNodes()  # removed again below
        heat = _heatmap_proxy(scene, heatmap_node, heatmap_threshold) if heatmap_node is not None else None
        label = None
        if segmentation_node is not None:
            label = _segment_labelmap(scene, segmentation_node, segment_id, volume_node)
        if center_ras is None:
            center_ras = _label_centroid_ras(label) if label is not None else _volume_center_ras(volume_node)
        center_ras = [float(v) for v in center_ras]
        for orientation in orientations:
            logic = _slice_logic(scene, orientation, width, height)
            logics.append(logic)
            composite = logic.GetSliceCompositeNode()
            composite.SetBackgroundVolumeID(volume_node.GetID())
            composite.SetForegroundVolumeID(heat.GetID() if heat is not None else None)
            composite.SetForegroundOpacity(float(heatmap_opacity) if heat is not None else 0.0)
            composite.SetLabelVolumeID(label.GetID() if label is not None else None)
            composite.SetLabelOpacity(1.0)
            logic.FitSliceToVolume(volume_node, width, height)
            logic.GetSliceNode().JumpSliceByOffsetting(*center_ras)
            started = time.perf_counter()
            views[orientation] = _blend_output(logic)
            views.seconds[orientation] = time.perf_counter() - started
            views.pixel_to_ras[orientation] = _pixel_to_ras(logic.GetSliceNode(), height)
    finally:
        # Slice logics let go of the scene first (else a segfault when the scene or the colour
        # logic goes), then every node added here is removed.
        for logic in logics:
            logic.SetMRMLScene(None)
        _remove_added_nodes(scene, nodes_before)
    return views


# ------------------------------------------------------------------ pieces of the render


def _slice_logic(scene: Any, orientation: str, width: int, height: int) -> Any:
    """A slice logic on a slice node that is not in the scene (Slicer's layout would create a
    view widget for a slice node added to the scene); its composite node is unlinked."""
    import slicer

    layout_name = f"RadFusionRender{orientation}{uuid.uuid4().hex[:8]}"
    slice_node = scene.CreateNodeByClass("vtkMRMLSliceNode")  # the scene's defaults (orientation presets)
    slice_node.UnRegister(None)  # CreateNodeByClass hands over a reference Python already holds
    slice_node.SetName(layout_name)
    slice_node.SetLayoutName(layout_name)
    if not slice_node.HasSliceOrientationPreset(orientation):
        slice_node.AddSliceOrientationPreset(orientation, _orientation_preset(orientation))
    slice_node.SetOrientation(orientation)  # else "Reformat" on an identity matrix (left/right flipped)
    slice_node.SetDimensions(width, height, 1)
    slice_node.SetUseLabelOutline(True)
    logic = slicer.vtkMRMLSliceLogic()
    logic.SetMRMLScene(scene)
    logic.SetSliceNode(slice_node)  # adds the composite node for layout_name to the scene
    composite = logic.GetSliceCompositeNode()
    composite.SetLinkedControl(0)  # never broadcast to the user's linked slice views
    composite.SetHotLinkedControl(0)
    composite.SetCompositing(_ALPHA_BLENDING)
    return logic


def _orientation_preset(orientation: str) -> Any:
    """Slicer's own orientation matrix, for a scene whose default slice node has no presets."""
    import slicer

    defaults = slicer.vtkMRMLScene()
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(defaults)
    node = defaults.CreateNodeByClass("vtkMRMLSliceNode")
    node.UnRegister(None)
    return node.GetSliceOrientationPreset(orientation)


def _heatmap_proxy(scene: Any, heatmap_node: Any, threshold_fraction: float) -> Any:
    """A hidden volume node sharing ``heatmap_node``'s voxels and geometry, displayed as the
    module displays heat maps; the heat map's own display node stays untouched."""
    image = heatmap_node.GetImageData()
    if image is None:
        raise InputError(f"heat map {heatmap_node.GetName()!r} has no image data")
    color_id = next((i for i in mrml.HEAT_COLOR_NODE_IDS if scene.GetNodeByID(i) is not None), None)
    if color_id is None:
        raise InputError("no heat colour table (PET-Heat or Iron) in the scene: the scene needs Slicer's colour logic")
    maximum = float(image.GetScalarRange()[1])
    if not np.isfinite(maximum) or maximum <= 0:
        maximum = 1.0  # an all-zero map: nothing above the threshold, nothing drawn
    proxy = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", f"{heatmap_node.GetName()} (render)")
    proxy.SetHideFromEditors(True)
    proxy.SetSaveWithScene(False)
    matrix = _vtk_matrix(mrml.volume_ijk_to_ras(heatmap_node))
    proxy.SetIJKToRASMatrix(matrix)
    proxy.SetAndObserveImageData(image)  # shared, not copied
    proxy.SetAndObserveTransformNodeID(heatmap_node.GetTransformNodeID())
    display = scene.AddNewNodeByClass("vtkMRMLScalarVolumeDisplayNode")
    display.SetAndObserveColorNodeID(color_id)
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(*mrml.heatmap_window(maximum, threshold_fraction))
    display.SetApplyThreshold(1)
    display.SetLowerThreshold(float(threshold_fraction) * maximum)
    display.SetUpperThreshold(1.0e6 * maximum)
    proxy.SetAndObserveDisplayNodeID(display.GetID())
    return proxy


def _segment_labelmap(scene: Any, segmentation_node: Any, segment_id: str | None, reference: Any) -> Any:
    """The segment (or the visible segments) as a hidden label map on ``reference``'s grid,
    in the segments' colours (Slicer's export adds a colour table; removed with the rest)."""
    import slicer
    import vtk

    segmentation = segmentation_node.GetSegmentation()
    if segment_id and segmentation.GetSegment(segment_id) is None:
        raise MaskError(f"segment {segment_id!r} not found in segmentation {segmentation_node.GetName()!r}")
    label = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", f"{segmentation_node.GetName()} (render)")
    label.SetHideFromEditors(True)
    label.SetSaveWithScene(False)
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    if segment_id:
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(segment_id)
        exported = logic.ExportSegmentsToLabelmapNode(segmentation_node, ids, label, reference)
    else:
        exported = logic.ExportVisibleSegmentsToLabelmapNode(segmentation_node, label, reference)
    if not exported or label.GetImageData() is None or label.GetDisplayNode() is None:
        raise MaskError(f"segmentation {segmentation_node.GetName()!r} could not be drawn on the volume's grid")
    segmentation_display = segmentation_node.GetDisplayNode()
    if segmentation_display is not None:  # the segment's outline as thick as Slicer draws it
        label.GetDisplayNode().SetSliceIntersectionThickness(segmentation_display.GetSliceIntersectionThickness())
    return label


def _label_centroid_ras(label: Any) -> list[float]:
    """Centroid of the label map's voxels, rounded to the nearest voxel centre, in RAS."""
    import slicer

    kji = np.argwhere(slicer.util.arrayFromVolume(label) != 0)
    if kji.size == 0:
        raise MaskError("the segment is empty on the volume's grid: nothing to centre the views on")
    ijk = np.rint(kji.mean(axis=0))[::-1]
    return list((mrml.volume_ijk_to_ras(label) @ np.append(ijk, 1.0))[:3])


def _volume_center_ras(volume_node: Any) -> list[float]:
    bounds = [0.0] * 6
    volume_node.GetRASBounds(bounds)
    return [0.5 * (bounds[2 * a] + bounds[2 * a + 1]) for a in range(3)]


def _blend_output(logic: Any) -> np.ndarray:
    """The slice logic's blended RGBA (the real vtkImageBlend) as RGB, top row first."""
    from vtk.util.numpy_support import vtk_to_numpy

    connection = logic.GetImageDataConnection()
    if connection is None:
        raise InputError("the slice view has nothing to draw (no volume with image data)")
    producer = connection.GetProducer()
    producer.Update()
    image = producer.GetOutputDataObject(connection.GetIndex())
    width, height, _ = image.GetDimensions()
    rgba = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(height, width, -1)
    return np.ascontiguousarray(rgba[::-1, :, :3], dtype=np.uint8)  # VTK's first row is the bottom


def _pixel_to_ras(slice_node: Any, height: int) -> np.ndarray:
    """XY → RAS of the slice node, for pixels counted from the top row (as returned)."""
    xy_to_ras = slice_node.GetXYToRAS()
    matrix = np.array([[xy_to_ras.GetElement(r, c) for c in range(4)] for r in range(4)])
    top_down = np.array([[1.0, 0, 0, 0], [0, -1.0, 0, height - 1.0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])
    return matrix @ top_down


def _vtk_matrix(array: np.ndarray) -> Any:
    import vtk

    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


def _remove_added_nodes(scene: Any, nodes_before: set[str]) -> None:
    for _ in range(3):  # removing a node can make MRML add another (default display nodes)
        added = mrml._node_ids(scene) - nodes_before
        if not added:
            return
        for node_id in sorted(added):
            node = scene.GetNodeByID(node_id)
            if node is not None:
                scene.RemoveNode(node)


# ------------------------------------------------------------------ pictures


def compose_views(views: Mapping[str, np.ndarray], caption_lines: Iterable[str] = (), gap: int = 4,
                  label_views: bool = True) -> np.ndarray:
    """Views side by side (in the order given, on black) over a caption strip of short lines
    (white text on dark grey); each view's name in its top-left corner. RGB ``uint8``."""
    from PIL import Image, ImageDraw

    if not views:
        raise InputError("no views to compose")
    font = _font(14)
    tiles = [np.asarray(view, dtype=np.uint8) for view in views.values()]
    height = max(tile.shape[0] for tile in tiles)
    width = sum(tile.shape[1] for tile in tiles) + gap * (len(tiles) - 1)
    lines = [str(line) for line in caption_lines]
    line_height = 20
    strip = 12 + line_height * len(lines) if lines else 0
    canvas = Image.new("RGB", (width, height + strip), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    x = 0
    for name, tile in zip(views, tiles):
        canvas.paste(Image.fromarray(tile, "RGB"), (x, 0))
        if label_views:
            left, top, right, bottom = draw.textbbox((x + 6, 4), name, font=font)
            draw.rectangle((left - 3, top - 2, right + 3, bottom + 2), fill=(0, 0, 0))
            draw.text((x + 6, 4), name, fill=(255, 255, 0), font=font)
        x += tile.shape[1] + gap
    if lines:
        draw.rectangle((0, height, width, height + strip), fill=(40, 40, 40))
        for i, line in enumerate(lines):
            draw.text((8, height + 6 + i * line_height), line, fill=(255, 255, 255), font=font)
    return np.asarray(canvas)


def png_bytes(rgb: np.ndarray) -> bytes:
    """An RGB ``uint8`` array as PNG bytes (optimised)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(rgb, dtype=np.uint8), "RGB").save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def write_png(path: str | Path, rgb: np.ndarray) -> Path:
    """Write an RGB ``uint8`` array as an optimised PNG."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(rgb, dtype=np.uint8), "RGB").save(path, optimize=True)
    return path


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # scalable (FreeType) where pillow has it
    except TypeError:  # pillow < 10.1
        return ImageFont.load_default()


# ------------------------------------------------------------------ outside Slicer (CLI, reports)


def slicer_available() -> bool:
    """Whether Slicer's Python (a real Slicer, or slicer-core: the ``mrml`` extra) is importable."""
    import importlib.util

    return importlib.util.find_spec("slicer") is not None


def render_images(image: Any, mask: Any, heatmap: Any | None = None, *, height: int = 440,
                  grey_window: tuple[float, float] | None = None, outline_rgb: tuple[int, int, int] = (0, 255, 102),
                  outline_thickness: int = 2, orientations: Iterable[str] = ORIENTATIONS) -> SliceViews:
    """:func:`render_slice_views` for SimpleITK images outside Slicer (``radfusion demo``, scripts):
    a private headless scene (slicer-core) with the image (window ``grey_window``, else Slicer's
    auto window/level), the lesion mask as a segment drawn as an outline in ``outline_rgb`` and the
    heat map; each view ``height`` pixels high, as wide as the image's field of view needs.
    Never call it inside Slicer (it builds its own application logic): the module renders its
    own scene's nodes with :func:`render_slice_views`."""
    import slicer
    import vtk

    scene = slicer.vtkMRMLScene()
    app = slicer.vtkSlicerApplicationLogic()
    app.SetMRMLScene(scene)
    app.GetColorLogic().SetMRMLScene(scene)
    app.SetSliceLogics(vtk.vtkCollection())
    app.SetViewLogics(vtk.vtkCollection())
    segmentations = slicer.vtkSlicerSegmentationsModuleLogic()
    segmentations.SetMRMLScene(scene)
    segmentations.SetMRMLApplicationLogic(app)
    try:
        volume = mrml.sitk_to_volume_node(image, "image", scene)
        volume.CreateDefaultDisplayNodes()
        if grey_window is not None:
            volume.GetDisplayNode().AutoWindowLevelOff()
            volume.GetDisplayNode().SetWindowLevelMinMax(float(grey_window[0]), float(grey_window[1]))
        labelmap = mrml.sitk_to_volume_node(mask, "mask", scene, class_name="vtkMRMLLabelMapVolumeNode")
        segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "lesion")
        segmentation.CreateDefaultDisplayNodes()
        if not segmentations.ImportLabelmapToSegmentationNode(labelmap, segmentation):
            raise MaskError("the lesion mask could not be imported as a segment")
        scene.RemoveNode(labelmap)
        segment_id = segmentation.GetSegmentation().GetNthSegmentID(0)
        segmentation.GetSegmentation().GetSegment(segment_id).SetColor(*(c / 255.0 for c in outline_rgb))
        segmentation.GetDisplayNode().SetSliceIntersectionThickness(int(outline_thickness))
        heat = mrml.sitk_to_volume_node(heatmap, "Grad-CAM", scene) if heatmap is not None else None
        views = SliceViews()
        for orientation in views_for_volume(volume, orientations):
            size = fitting_size(volume, orientation, height)
            one = render_slice_views(scene, volume, heat, segmentation, segment_id, orientations=(orientation,),
                                     size=size)
            views[orientation] = one[orientation]
            views.pixel_to_ras[orientation] = one.pixel_to_ras[orientation]
            views.seconds[orientation] = one.seconds[orientation]
        return views
    finally:
        app.SetSliceLogics(None)
        app.SetViewLogics(None)
        segmentations.SetMRMLScene(None)
        app.GetColorLogic().SetMRMLScene(None)
        scene.Clear(1)


def fitting_size(volume_node: Any, orientation: str, height: int) -> tuple[int, int]:
    """(width, height) of a ``height``-pixel view that the volume's extent fills (the RAS axes of
    the view's plane; for the report's views)."""
    bounds = [0.0] * 6
    volume_node.GetRASBounds(bounds)
    extent = [max(bounds[2 * a + 1] - bounds[2 * a], 1e-6) for a in range(3)]
    across, up = {"Axial": (0, 1), "Coronal": (0, 2), "Sagittal": (1, 2)}[orientation]
    return max(1, round(height * extent[across] / extent[up])), int(height)
