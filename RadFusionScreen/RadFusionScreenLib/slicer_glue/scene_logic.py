"""The module Logic's work: screen a segmented lesion and put the results into the MRML scene.

No Qt: runs in Slicer, in PythonSlicer and on slicer-core. ``RadFusionScreenLogic`` (the
module file) is this class plus the module's parameter node.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import slicer

from RadFusionScreenLib.core.errors import InputError
from RadFusionScreenLib.core.files import write_text_atomically
from RadFusionScreenLib.core.locations import available_models, models_directory, resolve_model_path
from RadFusionScreenLib.slicer_glue import mrml

try:
    from slicer.i18n import tr as _
except ImportError:  # slicer-core without Slicer's i18n module
    def _(text: str) -> str:
        return text



def parseClinicalValues(clinical) -> dict:
    """Clinical values as a dict, from a dict, a JSON object string, or nothing."""
    if clinical is None or clinical == "":
        return {}
    if isinstance(clinical, dict):
        return dict(clinical)
    try:
        values = json.loads(clinical)
    except json.JSONDecodeError as error:
        raise InputError(f"clinical values must be a JSON object like {{\"age\": 61}}: {error}") from None
    if not isinstance(values, dict):
        raise InputError("clinical values must be a JSON object like {\"age\": 61}")
    return values


class ScreeningLogic:
    """Screen a segmented lesion with a model bundle and put the results into the scene.

    ``scene``: the MRML scene to work on (default: ``slicer.mrmlScene``). Loaded bundles are
    cached per (model, device), so the CNN is loaded once, not per click.
    """

    def __init__(self, scene=None) -> None:
        self._scene = scene
        self._screeners = {}
        self.lastScreenSeconds = None

    @property
    def scene(self):
        return self._scene if self._scene is not None else slicer.mrmlScene

    # ------------------------------------------------------------ models
    @staticmethod
    def modelsDirectory() -> Path:
        """Where bundles are looked up by name (``core.locations.models_directory``)."""
        return models_directory()

    def availableModels(self) -> list:
        return available_models()

    def resolveModelPath(self, modelPath=None, volumeNode=None) -> Path:
        """A bundle folder: a path, a bundle name in the models folder, or (None / "") the shipped
        bundle of the volume's modality (CT -> the lung-nodule model, US -> breast ultrasound)."""
        modality = self.volumeModality(volumeNode) if not modelPath and volumeNode is not None else None
        return resolve_model_path(modelPath, modality).resolve()

    def volumeModality(self, volumeNode) -> str:
        """The volume's modality: its series' DICOM Modality when Slicer loaded it from DICOM, else
        the engine's rule on its voxels (one slice: US; air in HU: CT; else MR)."""
        from RadFusionScreenLib.features.case_features import resolve_modality

        declared = self._dicomModality(volumeNode) or None
        # the voxels are copied only when no DICOM Modality answers (the rule reads them then)
        return resolve_modality(declared, None if declared else mrml.volume_node_to_sitk(volumeNode))

    @staticmethod
    def _dicomModality(volumeNode) -> str:
        """Modality (0008,0060) of the first instance the volume was loaded from ("" when unknown)."""
        uids = (volumeNode.GetAttribute("DICOM.instanceUIDs") or "").split()
        database = getattr(slicer, "dicomDatabase", None)
        if not uids or database is None:
            return ""
        filePath = database.fileForInstance(uids[0])
        return str(database.fileValue(filePath, "0008,0060") or "").strip() if filePath else ""

    def getScreener(self, modelPath=None, device=None):
        """The engine's Screener for a bundle, loaded once per (model, device)."""
        from RadFusionScreenLib.serving.screening import Screener

        device = None if device in (None, "", "auto") else device
        key = (str(self.resolveModelPath(modelPath)), device)
        if key not in self._screeners:
            self._screeners[key] = Screener(key[0], device)
        return self._screeners[key]

    @staticmethod
    def addLesionSegment(segmentationNode) -> str:
        """An empty segment named "lesion" (AddEmptySegment's first argument is the ID); its ID."""
        return segmentationNode.GetSegmentation().AddEmptySegment("", "lesion")

    def describeModel(self, modelPath=None):
        """The bundle's manifest, card and inputs (``screening.ModelDescription``): verified, but
        without loading the CNN, for the model panel. Raises ``BundleError`` / ``InputError``."""
        from RadFusionScreenLib.serving.screening import ModelDescription

        return ModelDescription(self.resolveModelPath(modelPath))

    @staticmethod
    def modelSummary(description) -> str:
        """One paragraph on a bundle (a ``ModelDescription`` or a ``Screener``)."""
        info = description.model_info()
        clinical = ", ".join(description.clinical_predictors) or _("none")
        return _("{name}: {modality} images, decision threshold {threshold:.3f}, clinical values: {clinical}. "
                 "Bundle digest {digest}; {provenance}. Research use only.").format(
            name=info["name"], modality=info["modality"] or "?", threshold=description.threshold,
            clinical=clinical, digest=info["digest"][:16], provenance=info["provenance"])

    # ------------------------------------------------------------ screening
    def exportCase(self, volumeNode, segmentationNode, segmentId):
        """The volume and the segment as SimpleITK images (LPS) on the volume's voxel grid."""
        return mrml.volume_node_to_sitk(volumeNode), mrml.segment_to_sitk_mask(segmentationNode, segmentId, volumeNode)

    def screen(self, volumeNode, segmentationNode, segmentId, clinical=None, modelPath=None, device=None, site=None):
        """Screen one lesion; results go into the scene (replacing earlier ones) and are returned.

        ``clinical``: dict or JSON object string of the values the model needs. On any error
        the scene is left as it was: the engine runs before any node is created.
        """
        started = time.perf_counter()
        image, mask = self.exportCase(volumeNode, segmentationNode, segmentId)
        screener = self.getScreener(modelPath or str(self.resolveModelPath(None, volumeNode)), device)
        result = screener.screen(image, mask, clinical=parseClinicalValues(clinical), site=site or None, heatmap=True)
        self.writeResults(result, volumeNode, segmentationNode, segmentId, modelPath=modelPath, device=device,
                          clinical=clinical, site=site)
        self.lastScreenSeconds = time.perf_counter() - started
        logging.info(f"RadFusionScreen: probability {result.probability:.4f} ({result.risk_class} risk) "
                     f"in {self.lastScreenSeconds:.1f} s")
        return result

    def writeResults(self, result, volumeNode, segmentationNode=None, segmentId="", modelPath=None, device=None,
                     clinical=None, site=None) -> dict:
        """Tables, heat map and parameter-node outputs of ``result``; earlier outputs are replaced.

        All or nothing: on error every node added here is removed again and the slice views
        keep their layers.
        """
        scene = self.scene
        previous = mrml.output_nodes(scene)
        with mrml.scene_transaction(scene):
            parameterNode = self.getParameterNode()
            nodes = {
                "features": self._table(featureColumns(result), "RadFusionScreen features"),
                "nomogram": self._table(nomogramColumns(result), "RadFusionScreen nomogram"),
            }
            if result.heatmap is not None:
                nodes["heatmap"] = mrml.sitk_to_volume_node(result.heatmap, f"{volumeNode.GetName()} Grad-CAM", scene)
                opacity = parameterNode.heatmapOpacity if parameterNode.heatmapVisible else 0.0
                mrml.show_heatmap(nodes["heatmap"], volumeNode, opacity)
            for role, node in nodes.items():
                node.SetAttribute(mrml.OUTPUT_ATTRIBUTE, role)
            self._setParameters(parameterNode, result, nodes, volumeNode, segmentationNode, segmentId,
                                modelPath, device, clinical, site)
            for node in previous.values():
                mrml.remove_node(scene, node)
        return nodes

    def _table(self, columns, name):
        node = mrml.write_columns_table(columns, self.scene.AddNewNodeByClass("vtkMRMLTableNode", name))
        node.SetLocked(True)  # results, not for editing
        return node

    def _setParameters(self, parameterNode, result, nodes, volumeNode, segmentationNode, segmentId,
                       modelPath, device, clinical, site) -> None:
        parameterNode.inputVolume = volumeNode
        if segmentationNode is not None:
            parameterNode.inputSegmentation = segmentationNode
            parameterNode.segmentId = segmentId or ""
        if modelPath is not None:
            parameterNode.modelPath = str(modelPath)
        if device is not None:
            parameterNode.device = device
        if clinical is not None:
            parameterNode.clinicalValues = json.dumps(parseClinicalValues(clinical))
        if site is not None:
            parameterNode.site = site
        parameterNode.featureTable = nodes["features"]
        parameterNode.nomogramTable = nodes["nomogram"]
        parameterNode.heatmapVolume = nodes.get("heatmap")
        parameterNode.riskClass = result.risk_class
        parameterNode.resultJson = json.dumps(result.to_dict())
        parameterNode.probability = float(result.probability)  # last: observers see a complete result

    def showHeatmap(self, visible=True, opacity=None) -> None:
        """Show or hide the Grad-CAM overlay (foreground of the slice views)."""
        heatmap = mrml.output_nodes(self.scene).get("heatmap")
        if heatmap is not None:  # without a result, leave the user's layers alone
            mrml.set_foreground(self.scene, heatmap if visible else None, opacity)

    # ------------------------------------------------------------ background process (GUI)
    def writeCaseFiles(self, volumeNode, segmentationNode, segmentId, folder):
        """The case as image.nrrd / mask.nrrd (LPS, lossless) for a background engine run."""
        import SimpleITK as sitk

        image, mask = self.exportCase(volumeNode, segmentationNode, segmentId)
        imagePath, maskPath = os.path.join(folder, "image.nrrd"), os.path.join(folder, "mask.nrrd")
        sitk.WriteImage(image, imagePath)
        sitk.WriteImage(mask, maskPath)
        return imagePath, maskPath

    def screenArguments(self, imagePath, maskPath, heatmapPath, modelPath=None, device=None, clinical=None,
                        site=None, volumeNode=None) -> list:
        """Arguments of ``python -m RadFusionScreenLib`` that screen the exported case (no
        ``modelPath``: the shipped bundle of ``volumeNode``'s modality)."""
        arguments = ["screen", str(imagePath), str(maskPath), "--json", "--heatmap", str(heatmapPath),
                     "--model", str(self.resolveModelPath(modelPath, volumeNode)), "--device", device or "auto"]
        values = parseClinicalValues(clinical)
        if values:
            arguments += ["--clinical", *(f"{k}={v}" for k, v in values.items())]
        if site:
            arguments += ["--site", str(site)]
        return arguments

    def resultFromOutput(self, stdout, heatmapPath=None):
        """The engine's ScreenResult from the CLI's --json output and its --heatmap file."""
        import SimpleITK as sitk

        start = stdout.find("{")
        if start < 0:
            raise ValueError(f"the engine printed no result: {stdout[-500:]!r}")
        heatmap = sitk.ReadImage(str(heatmapPath)) if heatmapPath and os.path.isfile(heatmapPath) else None
        return self.resultFromDict(json.loads(stdout[start:]), heatmap)

    @staticmethod
    def resultFromDict(values, heatmap=None):
        """A ScreenResult from ``ScreenResult.to_dict()`` output (a saved scene, the CLI)."""
        import pandas as pd
        from RadFusionScreenLib.serving.screening import ScreenResult

        nomogram = values.get("nomogram") or {}
        return ScreenResult(
            probability=values["probability"], decision=values["decision"], risk_class=values["risk_class"],
            threshold=values["threshold"], rad_score=values.get("rad_score"), deep_score=values.get("deep_score"),
            nomogram=pd.DataFrame(nomogram.get("terms") or [], columns=["predictor", "value", "points"]),
            nomogram_total_points=nomogram.get("total_points"),
            nomogram_linear_predictor=nomogram.get("linear_predictor"),
            nomogram_probability=nomogram.get("probability"),
            features=pd.DataFrame(values.get("features") or []), heatmap=heatmap, model=values.get("model") or {},
            timings=values.get("timings_s") or {}, warnings=list(values.get("warnings") or []),
            explanation=values.get("explanation"), operating_point=values.get("operating_point"),
            uncalibrated_probability=values.get("uncalibrated_probability"), calibration=values.get("calibration"),
        )

    def writeReport(self, path, result, description="", volumeNode=None, segmentationNode=None, segmentId=None,
                    heatmapNode=None) -> Path:
        """The case report (:mod:`..case_report`, the one the CLI demo writes) of ``result``.

        Its slice views are drawn by :func:`.slice_views.render_slice_views` from this scene's
        nodes (by default the parameter node's input volume, segmentation, segment and Grad-CAM
        volume): what the slice views show, through the lesion centre, whatever the user's views
        are showing at the moment. The scene is left unchanged.
        """
        from RadFusionScreenLib.presentation.case_report import bundle_nomogram, case_hash, case_report_html
        from RadFusionScreenLib.slicer_glue import slice_views

        parameterNode = self.getParameterNode()
        volumeNode = volumeNode or parameterNode.inputVolume
        segmentationNode = segmentationNode or parameterNode.inputSegmentation
        segmentId = segmentId or parameterNode.segmentId or None
        heatmapNode = heatmapNode or parameterNode.heatmapVolume
        viewsPng, caseId = None, "unknown"
        if volumeNode is not None:
            views = {}
            for orientation in slice_views.views_for_volume(volumeNode):
                views.update(slice_views.render_slice_views(
                    self.scene, volumeNode, heatmapNode, segmentationNode, segmentId, orientations=(orientation,),
                    size=slice_views.fitting_size(volumeNode, orientation, REPORT_VIEW_HEIGHT)))
            viewsPng = slice_views.png_bytes(slice_views.compose_views(views))
            if segmentationNode is not None and segmentId:
                caseId = case_hash(*self.exportCase(volumeNode, segmentationNode, segmentId))
        html = case_report_html(
            result, viewsPng, case_id=caseId, description=description, nomogram=bundle_nomogram(result),
            renderer="Drawn by Slicer's slice pipeline (vtkMRMLSliceLogic) from the scene's nodes, as the slice views "
                     "draw them; patient's left on the right.",
            heat_threshold=mrml.HEATMAP_THRESHOLD, heat_window=mrml.heatmap_window())
        return write_text_atomically(path, html)


REPORT_VIEW_HEIGHT = 360


def featureColumns(result) -> dict:
    """Feature table columns: name, raw, harmonised (when the model harmonises), scaled."""
    frame = result.features
    return {column: frame[column].tolist() for column in ("name", "raw", "harmonised", "scaled") if column in frame}


def nomogramColumns(result) -> dict:
    """Nomogram table: one row per predictor, then total points, linear predictor, probability."""
    rows = [(str(r.predictor), r.value, float(r.points)) for r in result.nomogram.itertuples()]
    nan = float("nan")
    if result.nomogram_total_points is not None:
        rows += [("total points", "", result.nomogram_total_points),
                 ("linear predictor", result.nomogram_linear_predictor, nan),
                 ("probability", result.nomogram_probability, nan)]
    return {"predictor": [r[0] for r in rows], "value": [r[1] for r in rows], "points": [r[2] for r in rows]}


