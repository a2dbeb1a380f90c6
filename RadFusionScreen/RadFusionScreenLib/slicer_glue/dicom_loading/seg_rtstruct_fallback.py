"""DICOM SEG / RTSTRUCT loaded by the engine's own reader when Slicer has no plugin that loads them.

:func:`load_with_engine` is pure MRML plus the engine's reader
(:mod:`RadFusionScreenLib.inputs.dicom_seg`), so that it can be tested on a headless slicer-core
scene. A SEG or RTSTRUCT whose Slicer plugin is not enabled (or that Slicer's plugin failed to
load) becomes a ``vtkMRMLSegmentationNode`` on the volume of the series it references, one
segment per SEG segment / RTSTRUCT ROI, with its name and colour; each object is all or nothing
(:func:`RadFusionScreenLib.slicer_glue.mrml.scene_transaction`).

Plugin names are the keys that Slicer's plugins register in ``slicer.modules.dicomPlugins`` and
that Slicer 5.12's ``DICOMScalarVolumePlugin.examineFiles`` itself checks before it skips SEG
and RTSTRUCT files: ``"DICOMSegmentationPlugin"`` (Slicer core since 5.12, before that the
QuantitativeReporting extension) and ``"DicomRtImportExportPlugin"`` (SlicerRT).

The referenced volume is found the way Slicer's own segmentation node does it
(``vtkMRMLSegmentationNode::OnSubjectHierarchyUIDAdded``): by SOP Instance UIDs. A volume
loaded by ``DICOMScalarVolumePlugin`` carries the node attribute ``DICOM.instanceUIDs`` (the
instances it was read from, space-separated); the volume sharing most instances with those the
SEG / RTSTRUCT references is used. This holds even when one series is split into several
volumes, and needs no subject hierarchy. Only when no volume shares an instance is the series
UID on the volume's subject-hierarchy item (UID name ``"DICOM"``) compared with the referenced
series UIDs. Frame of Reference alone is never used: several series share one.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from RadFusionScreenLib.core.errors import MaskError, RadFusionError
from RadFusionScreenLib.inputs.dicom_seg import list_segments, read_dicom_mask
from RadFusionScreenLib.slicer_glue.dicom_loading.load_report import DicomLoadReport, EngineSegmentation
from RadFusionScreenLib.slicer_glue.dicom_loading.mask_headers import MaskObject, read_mask_object
from RadFusionScreenLib.slicer_glue.mrml import scene_transaction, volume_node_to_sitk

SEG_PLUGIN = "DICOMSegmentationPlugin"
RTSTRUCT_PLUGIN = "DicomRtImportExportPlugin"
PLUGIN_FOR_KIND = {"SEG": SEG_PLUGIN, "RTSTRUCT": RTSTRUCT_PLUGIN}
EXTENSION_FOR_KIND = {"SEG": "Slicer 5.12 core, earlier with the QuantitativeReporting extension",
                      "RTSTRUCT": "the SlicerRT extension"}
INSTANCE_UIDS_ATTRIBUTE = "DICOM.instanceUIDs"  # set by Slicer's DICOMScalarVolumePlugin (and its SEG plugin)
SOURCE_ATTRIBUTE = "RadFusionScreen.dicomSource"  # file the engine's reader loaded a segmentation from
REFERENCED_SERIES_ATTRIBUTE = "RadFusionScreen.referencedSeriesUID"
_log = logging.getLogger(__name__)


def load_with_engine(
    paths: Iterable[str | Path],
    report: DicomLoadReport,
    available_plugins: Collection[str],
    *,
    volume_node_ids: Sequence[str] | None = None,
    folder_series_uids: Collection[str] | None = None,
    failed_in_slicer: Collection[str | Path] = (),
) -> None:
    """Load the SEG / RTSTRUCT files among ``paths`` that Slicer does not load, through the
    engine's reader, into segmentation nodes of ``slicer.mrmlScene``; record them (or why not)
    in ``report``.

    A file is left to Slicer when the plugin for its kind is in ``available_plugins`` and the
    file is not in ``failed_in_slicer`` (files of a series that plugin failed to load). Other
    DICOM objects among ``paths`` are ignored. The volume is searched among ``volume_node_ids``
    (default: every scalar volume of the scene). ``folder_series_uids`` (the series of the
    folder) lets the report say whether a missing referenced series is absent from the folder
    or was not loaded. Each object is all or nothing: a failure while creating its node
    removes every node added for it.
    """
    import slicer

    scene = slicer.mrmlScene
    failed = {str(Path(p)) for p in failed_in_slicer}
    volumes = _volume_nodes(scene, volume_node_ids)
    for path in paths:
        try:
            mask_object = read_mask_object(path)
        except MaskError as exc:
            report.add_problem("segmentation", path, str(exc).split(": ", 1)[-1])
            continue
        if mask_object is None:
            continue
        plugin = PLUGIN_FOR_KIND[mask_object.kind]
        if plugin in available_plugins and str(Path(path)) not in failed:
            continue  # Slicer's plugin loads it
        reason = (f"Slicer's {plugin} did not load it" if plugin in available_plugins
                  else f"Slicer's {plugin} is not installed or is disabled (it comes with "
                       f"{EXTENSION_FOR_KIND[mask_object.kind]})")
        _load_one(scene, mask_object, volumes, report, reason, folder_series_uids)


def _volume_nodes(scene: Any, volume_node_ids: Sequence[str] | None) -> list[Any]:
    if volume_node_ids is not None:
        nodes = [scene.GetNodeByID(node_id) for node_id in volume_node_ids]
    else:
        nodes = [scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode")
                 for i in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode"))]
    return [n for n in nodes if n is not None and n.IsA("vtkMRMLScalarVolumeNode")
            and not n.IsA("vtkMRMLLabelMapVolumeNode")]


def find_reference_volume(mask_object: MaskObject, volumes: Sequence[Any], scene: Any) -> tuple[Any | None, str]:
    """The volume that ``mask_object`` segments, and how it was matched (see the module docstring)."""
    best, best_count = None, 0
    for volume in volumes:
        uids = set((volume.GetAttribute(INSTANCE_UIDS_ATTRIBUTE) or "").split())
        count = len(uids & mask_object.referenced_instance_uids)
        if count > best_count:
            best, best_count = volume, count
    if best is not None:
        return best, (f"SOP Instance UID, {best_count} of the {len(mask_object.referenced_instance_uids)} "
                      "referenced images")
    if mask_object.referenced_series_uids and scene.GetFirstNodeByClass("vtkMRMLSubjectHierarchyNode") is not None:
        import slicer

        hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
        uid_name = slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMUIDName()
        for volume in volumes:
            item = hierarchy.GetItemByDataNode(volume)
            if item and hierarchy.GetItemUID(item, uid_name) in mask_object.referenced_series_uids:
                return volume, "Series Instance UID (subject hierarchy)"
    return None, ""


def _load_one(scene: Any, mask_object: MaskObject, volumes: Sequence[Any], report: DicomLoadReport, reason: str,
              folder_series_uids: Collection[str] | None) -> None:
    path, kind = mask_object.path, mask_object.kind
    volume, matched_by = find_reference_volume(mask_object, volumes, scene)
    if volume is None:
        report.add_problem("segmentation", path, _no_volume_message(mask_object, folder_series_uids, reason))
        return
    try:
        reference = volume_node_to_sitk(volume)
        segments = list_segments(path)
    except RadFusionError as exc:
        report.add_problem("segmentation", path, f"{kind} not loaded ({reason}): {exc}")
        return
    masks: list[tuple[str, tuple[float, float, float] | None, np.ndarray]] = []
    for number, name in segments:
        label = name or f"Segment {number}"
        try:
            mask = read_dicom_mask(path, reference, number)
        except RadFusionError as exc:
            report.add_problem("segmentation", path, f"{kind} segment {number} {label!r} not loaded: {exc}")
            continue
        masks.append((label, mask_object.colors.get(number), sitk.GetArrayFromImage(mask)))
    if not masks:
        if not segments:
            report.add_problem("segmentation", path, f"{kind} defines no segments / ROIs; nothing loaded")
        return
    name = mask_object.description or f"{kind} {path.stem}"
    try:
        with scene_transaction(scene):
            node = _segmentation_node(scene, name, volume, mask_object, masks)
    except Exception as exc:  # everything added for this object was removed by the transaction
        _log.exception("Creating the segmentation node for %s failed", path)
        report.add_problem("segmentation", path, f"{kind} read, but creating its segmentation node failed "
                           f"({type(exc).__name__}: {exc}); nothing was added to the scene")
        return
    referenced_series = _volume_series(scene, volume) or next(iter(mask_object.referenced_series_uids), "")
    report.segmentation_node_ids.append(node.GetID())
    report.engine_segmentations.append(EngineSegmentation(
        node_id=node.GetID(), node_name=node.GetName(), kind=kind, source=str(path),
        referenced_series_uid=referenced_series, volume_node_id=volume.GetID(), volume_name=volume.GetName(),
        matched_by=matched_by, segment_names=tuple(label for label, _, _ in masks), reason=reason,
    ))


def _no_volume_message(mask_object: MaskObject, folder_series_uids: Collection[str] | None, reason: str) -> str:
    referenced = ", ".join(mask_object.referenced_series_uids) or "no series (it names none)"
    if folder_series_uids is not None and mask_object.referenced_series_uids \
            and not set(mask_object.referenced_series_uids) & set(folder_series_uids):
        where = "which is not in the folder: load the image series it was drawn on together with it"
    else:
        where = "but no loaded volume holds the images it references (the series is not in the folder or did not load)"
    return f"{mask_object.kind} not loaded ({reason}): it references series {referenced}, {where}"


def _volume_series(scene: Any, volume: Any) -> str:
    import slicer

    if scene.GetFirstNodeByClass("vtkMRMLSubjectHierarchyNode") is None:
        return ""
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    item = hierarchy.GetItemByDataNode(volume)
    return hierarchy.GetItemUID(item, slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMUIDName()) if item else ""


def _segmentation_node(scene: Any, name: str, volume: Any, mask_object: MaskObject,
                       masks: Sequence[tuple[str, tuple[float, float, float] | None, np.ndarray]]) -> Any:
    """A segmentation node on ``volume``'s geometry with one segment per mask (raises on failure)."""
    import slicer

    before = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    segmentation = node.GetSegmentation()
    for label, color, array in masks:
        segment_id = segmentation.AddEmptySegment("", label, list(color)) if color is not None \
            else segmentation.AddEmptySegment("", label)
        if not segment_id:
            raise RuntimeError(f"could not add segment {label!r}")
        slicer.util.updateSegmentBinaryLabelmapFromArray(array, node, segment_id, volume)
    # updateSegmentBinaryLabelmapFromArray removes its temporary labelmap node but not that node's display node
    keep = {node.GetID()} | {node.GetNthDisplayNodeID(i) for i in range(node.GetNumberOfDisplayNodes())}
    for node_id in {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())} - before - keep:
        leftover = scene.GetNodeByID(node_id)
        if leftover is not None and leftover.IsA("vtkMRMLDisplayNode") and leftover.GetDisplayableNode() is None:
            scene.RemoveNode(leftover)
    node.SetAttribute(INSTANCE_UIDS_ATTRIBUTE, mask_object.sop_instance_uid)  # as Slicer's SEG plugin does
    node.SetAttribute(SOURCE_ATTRIBUTE, str(mask_object.path))
    node.SetAttribute(REFERENCED_SERIES_ATTRIBUTE, " ".join(mask_object.referenced_series_uids))
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    volume_item, node_item = hierarchy.GetItemByDataNode(volume), hierarchy.GetItemByDataNode(node)
    if volume_item and node_item:
        hierarchy.SetItemParent(node_item, hierarchy.GetItemParent(volume_item))  # beside its volume (same study)
    return node
