"""The "Edit ROI" hand-off to Slicer's Segment Editor (Slicer 5.12 API, checked against
qMRMLSegmentEditorWidget.h and the SegmentEditor module, whose widget's ``editor`` it is)."""

from __future__ import annotations

from collections.abc import Callable

import slicer

# qMRMLSegmentEditorWidget slots this hand-off calls (a test checks them against the header).
EDITOR_SLOTS = ("setSegmentationNode", "setSourceVolumeNode", "setCurrentSegmentID")


def editLesion(volume, segmentation, segmentId: str, addLesionSegment: Callable[[object], str]) -> tuple[object, str]:
    """Open Segment Editor on ``volume`` and ``segmentation`` (created, with an empty "lesion"
    segment, when missing); the segmentation node and segment ID to select."""
    if segmentation is None:
        segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{volume.GetName()} lesion")
        segmentation.CreateDefaultDisplayNodes()
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        segmentId = addLesionSegment(segmentation)
    slicer.util.setSliceViewerLayers(background=volume)
    slicer.util.selectModule("SegmentEditor")
    editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
    editor.setSegmentationNode(segmentation)
    editor.setSourceVolumeNode(volume)
    if segmentId:
        editor.setCurrentSegmentID(segmentId)
    return segmentation, segmentId
