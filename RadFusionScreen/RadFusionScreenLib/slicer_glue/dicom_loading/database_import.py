"""Slicer's DICOM import and plugins for "Load DICOM folder", with a report of what did not load.

:func:`loadDicomFolder` needs the real application (compiled ``ctkDICOMDatabase`` /
``ctkDICOMIndexer`` behind ``DICOMLib.DICOMUtils``). The folder is imported into Slicer's DICOM
database (a temporary one when none is open), every series it holds is examined by the enabled
DICOM plugins and each selected loadable is loaded on its own, with Slicer's own
``DICOMUtils.getLoadablesFromFileLists`` / ``selectHighestConfidenceLoadables`` /
``loadLoadables`` (what ``loadSeriesByUID`` runs), so the report can say which file, series and
loadable failed.

SEG / RTSTRUCT series that no enabled plugin loads go to the engine's reader
(:mod:`.seg_rtstruct_fallback`).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError

from RadFusionScreenLib.slicer_glue.dicom_loading.load_report import DicomLoadError, DicomLoadReport, counted
from RadFusionScreenLib.slicer_glue.dicom_loading.mask_headers import mask_kind
from RadFusionScreenLib.slicer_glue.dicom_loading.seg_rtstruct_fallback import PLUGIN_FOR_KIND, load_with_engine

SERIES_UID_TAG, MODALITY_TAG, DESCRIPTION_TAG, SOP_CLASS_TAG = "0020,000E", "0008,0060", "0008,103E", "0008,0016"
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"


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
    mask_kind_of = {uid: mask_kind(modality_of[uid], _file_value(database, files_of[uid], SOP_CLASS_TAG))
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
                               f"{modality_of[uid] or '?'}, {description!r}, {counted(len(files_of[uid]), 'file')})")
    if mask_files:
        load_with_engine(mask_files, report, plugin_names, volume_node_ids=list(report.volume_node_ids),
                         folder_series_uids=series_uids, failed_in_slicer=failed_in_slicer)


def _file_value(database: Any, files: Sequence[str], tag: str) -> str:
    return str(database.fileValue(files[0], tag) or "").strip() if files else ""



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
