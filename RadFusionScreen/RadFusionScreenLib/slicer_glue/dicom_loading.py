""""Load DICOM folder": Slicer's DICOM import and plugins, a report of what did not load, and
DICOM SEG / RTSTRUCT loaded by the engine's own reader when Slicer has no plugin that loads them.

Two parts, so that the second can be tested on a headless slicer-core scene:

1. **Database part** (:func:`loadDicomFolder`): needs the real application (compiled
   ``ctkDICOMDatabase`` / ``ctkDICOMIndexer`` behind ``DICOMLib.DICOMUtils``). The folder is
   imported into Slicer's DICOM database (a temporary one when none is open), every series it
   holds is examined by the enabled DICOM plugins and each selected loadable is loaded on its
   own, with Slicer's own ``DICOMUtils.getLoadablesFromFileLists`` /
   ``selectHighestConfidenceLoadables`` / ``loadLoadables`` (what ``loadSeriesByUID`` runs),
   so the report can say which file, series and loadable failed.
2. **Engine part** (:func:`load_with_engine`): pure MRML plus the engine's reader
   (:mod:`RadFusionScreenLib.inputs.dicom_seg`). A SEG or RTSTRUCT whose Slicer plugin is not enabled
   (or that Slicer's plugin failed to load) becomes a ``vtkMRMLSegmentationNode`` on the volume
   of the series it references, one segment per SEG segment / RTSTRUCT ROI, with its name and
   colour; each object is all or nothing (:func:`.mrml.scene_transaction`).

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
import warnings
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.errors import InvalidDicomError
from pydicom.uid import RTStructureSetStorage, SegmentationStorage

from RadFusionScreenLib.inputs.dicom_seg import list_segments, read_dicom_mask
from RadFusionScreenLib.core.errors import MaskError, RadFusionError
from RadFusionScreenLib.slicer_glue.mrml import scene_transaction, volume_node_to_sitk

SEG_PLUGIN = "DICOMSegmentationPlugin"
RTSTRUCT_PLUGIN = "DicomRtImportExportPlugin"
PLUGIN_FOR_KIND = {"SEG": SEG_PLUGIN, "RTSTRUCT": RTSTRUCT_PLUGIN}
EXTENSION_FOR_KIND = {"SEG": "Slicer 5.12 core, earlier with the QuantitativeReporting extension",
                      "RTSTRUCT": "the SlicerRT extension"}
INSTANCE_UIDS_ATTRIBUTE = "DICOM.instanceUIDs"  # set by Slicer's DICOMScalarVolumePlugin (and its SEG plugin)
SOURCE_ATTRIBUTE = "RadFusionScreen.dicomSource"  # file the engine's reader loaded a segmentation from
REFERENCED_SERIES_ATTRIBUTE = "RadFusionScreen.referencedSeriesUID"
SERIES_UID_TAG, MODALITY_TAG, DESCRIPTION_TAG, SOP_CLASS_TAG = "0020,000E", "0008,0060", "0008,103E", "0008,0016"
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
_MAX_LISTED = 10
_log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- report


@dataclass(frozen=True)
class LoadProblem:
    """Something in the folder that did not load: ``kind`` is "import", "file", "series" or
    "segmentation"; ``subject`` the folder, file path or series UID it concerns."""

    kind: str
    subject: str
    message: str

    def describe(self) -> str:
        subject = Path(self.subject).name if self.kind in ("file", "segmentation") else self.subject
        return f"{subject}: {self.message}"


@dataclass(frozen=True)
class EngineSegmentation:
    """A segmentation node that the engine's reader made from a SEG / RTSTRUCT file."""

    node_id: str
    node_name: str
    kind: str  # "SEG" or "RTSTRUCT"
    source: str  # the file
    referenced_series_uid: str
    volume_node_id: str
    volume_name: str
    matched_by: str  # how the volume was found
    segment_names: tuple[str, ...]
    reason: str  # why Slicer did not load it

    def describe(self) -> str:
        names = ", ".join(self.segment_names[:_MAX_LISTED])
        more = f", ... ({len(self.segment_names)} in all)" if len(self.segment_names) > _MAX_LISTED else ""
        count = f"{len(self.segment_names)} segment{'s' if len(self.segment_names) != 1 else ''}"
        return (f"{self.kind} {self.node_name!r} ({Path(self.source).name}): loaded by RadFusionScreen's own reader "
                f"onto volume {self.volume_name!r} (series {self.referenced_series_uid or '?'}; matched by "
                f"{self.matched_by}): {count}: {names}{more}. Why: {self.reason}")


@dataclass
class DicomLoadReport:
    """What "Load DICOM folder" loaded and what it did not."""

    folder: str
    volume_node_ids: list[str] = field(default_factory=list)
    segmentation_node_ids: list[str] = field(default_factory=list)
    other_node_ids: list[str] = field(default_factory=list)  # other nodes plugins added (tables, sequences, ...)
    partial_node_ids: list[str] = field(default_factory=list)  # nodes left by a plugin whose load failed
    engine_segmentations: list[EngineSegmentation] = field(default_factory=list)
    problems: list[LoadProblem] = field(default_factory=list)

    def add_problem(self, kind: str, subject: str | Path, message: str) -> None:
        self.problems.append(LoadProblem(kind, str(subject), message))

    @property
    def loaded_anything(self) -> bool:
        return bool(self.volume_node_ids or self.segmentation_node_ids or self.other_node_ids)

    @property
    def needs_attention(self) -> bool:
        """True when the person should read :meth:`summary` (problems, or the engine's reader was used)."""
        return bool(self.problems or self.engine_segmentations)

    def headline(self) -> str:
        """One line for the status bar."""
        parts = [_count(len(self.volume_node_ids), "image volume"),
                 _count(len(self.segmentation_node_ids), "segmentation")]
        if self.engine_segmentations:
            parts.append(f"{len(self.engine_segmentations)} of them by RadFusionScreen's SEG/RTSTRUCT reader")
        if self.other_node_ids:
            parts.append(_count(len(self.other_node_ids), "other node"))
        text = f"Loaded from {self.folder}: " + ", ".join(parts)
        if self.problems:
            text += f"; {_count(len(self.problems), 'problem')} (see the details)"
        return text

    def summary(self) -> str:
        """The headline, the segmentations the engine loaded, and every problem (for a message box)."""
        lines = [self.headline() + "."]
        lines += [item.describe() + "." for item in self.engine_segmentations]
        if self.partial_node_ids:
            lines.append(f"{_count(len(self.partial_node_ids), 'node')} left in the scene by a failed Slicer load "
                         "(not selected): " + ", ".join(self.partial_node_ids[:_MAX_LISTED]))
        if self.problems:
            lines.append("Not loaded:")
            files = [p for p in self.problems if p.kind == "file"]
            others = [p for p in self.problems if p.kind != "file"]
            lines += [f"- {p.describe()}" for p in others]
            lines += [f"- {p.describe()}" for p in files[:_MAX_LISTED]]
            if len(files) > _MAX_LISTED:
                lines.append(f"- ... and {len(files) - _MAX_LISTED} more files that were not imported")
        return "\n".join(lines)

    def choose_inputs(self, scene: Any) -> tuple[Any | None, Any | None]:
        """(volume, segmentation) for the module: the first loaded segmentation whose reference
        geometry is a loaded volume, with that volume; else the first volume and first segmentation."""
        import slicer

        volumes = [scene.GetNodeByID(i) for i in self.volume_node_ids]
        volumes = [v for v in volumes if v is not None]
        segmentations = [scene.GetNodeByID(i) for i in self.segmentation_node_ids]
        segmentations = [s for s in segmentations if s is not None]
        role = slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()
        for segmentation in segmentations:
            reference = segmentation.GetNodeReference(role)
            if reference is not None and reference.GetID() in self.volume_node_ids:
                return reference, segmentation
        return (volumes[0] if volumes else None), (segmentations[0] if segmentations else None)


class DicomLoadError(ValueError):
    """Nothing in the folder could be loaded; ``report`` says why."""

    def __init__(self, report: DicomLoadReport, headline: str) -> None:
        self.report = report
        details = report.summary().split("\n", 1)[1] if "\n" in report.summary() else ""
        super().__init__(headline + (f"\n{details}" if details else ""))


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


# --------------------------------------------------------------------------- database part


def loadDicomFolder(folder: str | Path) -> DicomLoadReport:
    """Import ``folder`` into Slicer's DICOM database (a temporary one when none is open), load
    every series Slicer's enabled DICOM plugins can load, and SEG / RTSTRUCT objects that no
    enabled plugin loads through the engine's reader. Raises :class:`DicomLoadError` (a
    ValueError) when nothing at all could be loaded; otherwise the report lists every problem."""
    import slicer
    from DICOMLib import DICOMUtils

    folder = str(folder)
    if not Path(folder).is_dir():
        raise ValueError(f"DICOM folder not found: {folder}")
    report = DicomLoadReport(folder=folder)
    files = slicer.util.getFilesInDirectory(folder)
    if not files:
        raise DicomLoadError(report, f"The folder {folder} holds no files")
    database = getattr(slicer, "dicomDatabase", None)
    if database is not None and database.isOpen:
        _import_and_load(DICOMUtils, database, files, report)
    else:
        with DICOMUtils.TemporaryDICOMDatabase() as database:
            _import_and_load(DICOMUtils, database, files, report)
    if not report.loaded_anything:
        raise DicomLoadError(report, f"Nothing in {folder} could be loaded")
    return report


load_dicom_folder = loadDicomFolder


def _import_and_load(DICOMUtils: Any, database: Any, files: Sequence[str], report: DicomLoadReport) -> None:
    import slicer

    if not DICOMUtils.importDicom(report.folder, database):  # it returns False, it does not raise
        report.add_problem("import", report.folder, "Slicer's DICOM indexer failed on this folder "
                           "(DICOMUtils.importDicom returned False; the Python console / log has the error); "
                           "files it imported before failing are still loaded")
    series_of = {path: database.seriesForFile(path) or "" for path in files}
    for path in (p for p, uid in series_of.items() if not uid):
        report.add_problem("file", path, why_not_imported(path))
    series_uids = sorted(set(series_of.values()) - {""})
    if not series_uids:
        raise DicomLoadError(report, f"No DICOM series found in {report.folder}")

    files_of = {uid: [str(f) for f in database.filesForSeries(uid)] for uid in series_uids}
    modality_of = {uid: _file_value(database, files_of[uid], MODALITY_TAG).upper() for uid in series_uids}
    mask_kind_of = {uid: _mask_kind(modality_of[uid], _file_value(database, files_of[uid], SOP_CLASS_TAG))
                    for uid in series_uids}
    plugin_names = list(DICOMUtils.getDefaultPluginClassNames())  # registered and not disabled in settings

    loaded_series: set[str] = set()
    instances: dict[str, Any] = {}
    file_lists = [files_of[uid] for uid in series_uids if files_of[uid]]
    loadables_by_plugin, _ = DICOMUtils.getLoadablesFromFileLists(file_lists, plugin_names, pluginInstances=instances)
    DICOMUtils.selectHighestConfidenceLoadables(loadables_by_plugin)
    name_of = {id(plugin): name for name, plugin in instances.items()}
    for plugin, loadables in loadables_by_plugin.items():
        for loadable in loadables:
            if not loadable.selected:
                continue
            node_ids = DICOMUtils.loadLoadables({plugin: [loadable]})
            series_uid = database.seriesForFile(loadable.files[0]) if loadable.files else ""
            if getattr(loadable, "loadSuccess", bool(node_ids)):
                loaded_series.add(series_uid)
                _classify_nodes(slicer.mrmlScene, node_ids, report)
            else:
                report.partial_node_ids += list(node_ids)
                report.add_problem("series", series_uid, f"Slicer's {name_of.get(id(plugin), type(plugin).__name__)} "
                                   f"could not load {loadable.name!r} as {getattr(plugin, 'loadType', '?')} "
                                   "(the Python console / log has the error)")

    mask_files: list[str] = []
    failed_in_slicer: set[str] = set()
    for uid in series_uids:
        kind = mask_kind_of[uid]
        if kind is not None and uid not in loaded_series:  # no plugin for it, or its plugin failed
            mask_files += files_of[uid]
            if PLUGIN_FOR_KIND[kind] in plugin_names:
                failed_in_slicer.update(files_of[uid])
        elif uid not in loaded_series:
            description = _file_value(database, files_of[uid], DESCRIPTION_TAG)
            report.add_problem("series", uid, f"no enabled Slicer DICOM plugin loaded this series (modality "
                               f"{modality_of[uid] or '?'}, {description!r}, {_count(len(files_of[uid]), 'file')})")
    if mask_files:
        load_with_engine(mask_files, report, plugin_names, volume_node_ids=list(report.volume_node_ids),
                         folder_series_uids=series_uids, failed_in_slicer=failed_in_slicer)


def _file_value(database: Any, files: Sequence[str], tag: str) -> str:
    return str(database.fileValue(files[0], tag) or "").strip() if files else ""


def _mask_kind(modality: str, sop_class_uid: str) -> str | None:
    if modality == "SEG" or sop_class_uid == SegmentationStorage:
        return "SEG"
    if modality == "RTSTRUCT" or sop_class_uid == RTStructureSetStorage:
        return "RTSTRUCT"
    return None


def _classify_nodes(scene: Any, node_ids: Iterable[str], report: DicomLoadReport) -> None:
    for node_id in node_ids:
        node = scene.GetNodeByID(node_id)
        if node is None:
            continue
        if node.IsA("vtkMRMLScalarVolumeNode") and not node.IsA("vtkMRMLLabelMapVolumeNode"):
            report.volume_node_ids.append(node_id)
        elif node.IsA("vtkMRMLSegmentationNode"):
            report.segmentation_node_ids.append(node_id)
        else:
            report.other_node_ids.append(node_id)


def why_not_imported(path: str | Path) -> str:
    """Why Slicer's indexer left a file out, as far as its header tells."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            header = pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        return "not a DICOM file; not imported"
    except Exception as exc:  # pydicom raises many types for damaged files
        return f"damaged DICOM file ({type(exc).__name__}: {exc}); not imported"
    meta = getattr(header, "file_meta", None)
    if meta is not None and str(meta.get("MediaStorageSOPClassUID", "")) == DICOMDIR_SOP_CLASS:
        return "a DICOMDIR (an index of the folder, holds no images); not imported"
    return "a DICOM file that Slicer's indexer did not import (the log says why)"


# --------------------------------------------------------------------------- engine part


@dataclass(frozen=True)
class MaskObject:
    """A SEG or RTSTRUCT file and what it references."""

    path: Path
    kind: str
    sop_instance_uid: str
    series_uid: str
    description: str
    referenced_series_uids: tuple[str, ...]
    referenced_instance_uids: frozenset[str]
    colors: dict[int, tuple[float, float, float]]  # segment / ROI number -> RGB 0..1


def read_mask_object(path: str | Path) -> MaskObject | None:
    """The header of a SEG / RTSTRUCT file (None for any other DICOM object); MaskError when it
    cannot be read."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            header = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        kind = _mask_kind(str(header.get("Modality", "") or "").strip().upper(), str(header.get("SOPClassUID", "")))
        if kind is None:
            return None
        series, instances = (_seg_references if kind == "SEG" else _rtstruct_references)(header)
        return MaskObject(
            path=path, kind=kind, sop_instance_uid=str(header.get("SOPInstanceUID", "") or ""),
            series_uid=str(header.get("SeriesInstanceUID", "") or ""),
            description=str(header.get("SeriesDescription", "") or "").strip(),
            referenced_series_uids=tuple(dict.fromkeys(series)), referenced_instance_uids=frozenset(instances),
            colors=_seg_colors(header) if kind == "SEG" else _rtstruct_colors(header),
        )
    except Exception as exc:  # pydicom decodes lazily: damage surfaces as many exception types
        raise MaskError(f"{path}: not readable as a DICOM SEG/RTSTRUCT header ({type(exc).__name__}: {exc})") from exc


def _items(dataset: Any, keyword: str) -> list[Any]:
    return list(dataset.get(keyword) or []) if dataset is not None else []


def _uid(item: Any, keyword: str) -> list[str]:
    value = str(item.get(keyword, "") or "").strip()
    return [value] if value else []


def _seg_references(header: Any) -> tuple[list[str], list[str]]:
    series, instances = [], []
    for item in _items(header, "ReferencedSeriesSequence"):
        series += _uid(item, "SeriesInstanceUID")
        for instance in _items(item, "ReferencedInstanceSequence"):
            instances += _uid(instance, "ReferencedSOPInstanceUID")
    groups = _items(header, "SharedFunctionalGroupsSequence") + _items(header, "PerFrameFunctionalGroupsSequence")
    for group in groups:
        for derivation in _items(group, "DerivationImageSequence"):
            for source in _items(derivation, "SourceImageSequence"):
                instances += _uid(source, "ReferencedSOPInstanceUID")
    return series, instances


def _rtstruct_references(header: Any) -> tuple[list[str], list[str]]:
    series, instances = [], []
    for frame in _items(header, "ReferencedFrameOfReferenceSequence"):
        for study in _items(frame, "RTReferencedStudySequence"):
            for item in _items(study, "RTReferencedSeriesSequence"):
                series += _uid(item, "SeriesInstanceUID")
                for image in _items(item, "ContourImageSequence"):
                    instances += _uid(image, "ReferencedSOPInstanceUID")
    for roi in _items(header, "ROIContourSequence"):
        for contour in _items(roi, "ContourSequence"):
            for image in _items(contour, "ContourImageSequence"):
                instances += _uid(image, "ReferencedSOPInstanceUID")
    return series, instances


def _seg_colors(header: Any) -> dict[int, tuple[float, float, float]]:
    colors = {}
    for segment in _items(header, "SegmentSequence"):
        value = segment.get("RecommendedDisplayCIELabValue")
        try:
            colors[int(segment.SegmentNumber)] = dicom_lab_to_rgb([float(v) for v in value])
        except (AttributeError, TypeError, ValueError):
            continue  # no or malformed colour: Slicer picks one
    return colors


def _rtstruct_colors(header: Any) -> dict[int, tuple[float, float, float]]:
    colors = {}
    for roi in _items(header, "ROIContourSequence"):
        try:
            red, green, blue = (min(max(float(v) / 255.0, 0.0), 1.0) for v in roi.ROIDisplayColor)
            colors[int(roi.ReferencedROINumber)] = (red, green, blue)
        except (AttributeError, TypeError, ValueError):
            continue
    return colors


_D65_WHITE = np.array([0.950456, 1.0, 1.088754])  # reference white of DICOM CIELab (as DCMTK's cielabutil)
_XYZ_TO_LINEAR_SRGB = np.array([[3.2404542, -1.5371385, -0.4985314],
                                [-0.9692660, 1.8760108, 0.0415560],
                                [0.0556434, -0.2040259, 1.0572252]])


def dicom_lab_to_rgb(value: Sequence[float]) -> tuple[float, float, float]:
    """DICOM-encoded CIELab (PS3.3 C.10.7.1.1: three 0..65535 integers) to sRGB in 0..1."""
    if len(value) != 3:
        raise ValueError(f"CIELab needs 3 values, got {len(value)}")
    lightness = value[0] * 100.0 / 65535.0
    a, b = (v * 255.0 / 65535.0 - 128.0 for v in value[1:])
    fy = (lightness + 16.0) / 116.0
    f = np.array([fy + a / 500.0, fy, fy - b / 200.0])
    xyz = _D65_WHITE * np.where(f ** 3 > 216.0 / 24389.0, f ** 3, (116.0 * f - 16.0) * 27.0 / 24389.0)
    linear = np.clip(_XYZ_TO_LINEAR_SRGB @ xyz, 0.0, 1.0)
    rgb = np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055)
    red, green, blue = (float(v) for v in np.clip(rgb, 0.0, 1.0))
    return red, green, blue


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
