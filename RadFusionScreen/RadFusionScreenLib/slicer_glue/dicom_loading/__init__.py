""""Load DICOM folder": Slicer's DICOM import and plugins, a report of what did not load, and
DICOM SEG / RTSTRUCT loaded by the engine's own reader when Slicer has no plugin that loads them.

:mod:`.database_import` imports the folder into Slicer's DICOM database and loads each series
with Slicer's enabled plugins (:func:`loadDicomFolder`, needs the real application);
:mod:`.seg_rtstruct_fallback` turns the SEG / RTSTRUCT objects no plugin loaded into segmentation
nodes on the volume they reference (:func:`load_with_engine`, pure MRML: testable on a headless
slicer-core scene); :mod:`.mask_headers` reads what such a file references and its colours;
:mod:`.load_report` holds the report of what loaded and what did not.
"""

from RadFusionScreenLib.slicer_glue.dicom_loading.database_import import (DICOMDIR_SOP_CLASS, loadDicomFolder,
                                                                          load_dicom_folder, why_not_imported)
from RadFusionScreenLib.slicer_glue.dicom_loading.load_report import (DicomLoadError, DicomLoadReport,
                                                                      EngineSegmentation, LoadProblem)
from RadFusionScreenLib.slicer_glue.dicom_loading.mask_headers import MaskObject, dicom_lab_to_rgb, read_mask_object
from RadFusionScreenLib.slicer_glue.dicom_loading.seg_rtstruct_fallback import (EXTENSION_FOR_KIND,
                                                                                INSTANCE_UIDS_ATTRIBUTE,
                                                                                PLUGIN_FOR_KIND,
                                                                                REFERENCED_SERIES_ATTRIBUTE,
                                                                                RTSTRUCT_PLUGIN, SEG_PLUGIN,
                                                                                SOURCE_ATTRIBUTE,
                                                                                find_reference_volume,
                                                                                load_with_engine)

__all__ = [
    "DICOMDIR_SOP_CLASS",
    "DicomLoadError",
    "DicomLoadReport",
    "EXTENSION_FOR_KIND",
    "EngineSegmentation",
    "INSTANCE_UIDS_ATTRIBUTE",
    "LoadProblem",
    "MaskObject",
    "PLUGIN_FOR_KIND",
    "REFERENCED_SERIES_ATTRIBUTE",
    "RTSTRUCT_PLUGIN",
    "SEG_PLUGIN",
    "SOURCE_ATTRIBUTE",
    "dicom_lab_to_rgb",
    "find_reference_volume",
    "loadDicomFolder",
    "load_dicom_folder",
    "load_with_engine",
    "read_mask_object",
    "why_not_imported",
]
