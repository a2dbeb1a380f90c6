"""The module panel's behaviour: model panel, clinical form, Analyze / Cancel, results.

``RadFusionScreenWidget`` (the module file) loads the ``.ui``, binds the parameter node and
forwards each signal here. Only this file and the other ``slicer_glue`` modules touch Qt.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import qt
import slicer

from RadFusionScreenLib.slicer_glue import segment_editor
from RadFusionScreenLib.slicer_glue.dicom_loading import loadDicomFolder
from RadFusionScreenLib.slicer_glue.engine_process import EngineServer, pythonExecutable
from RadFusionScreenLib.slicer_glue.packages import PackagesMissing, ensurePackages, missingPackages
from RadFusionScreenLib.core.locations import MODULE_DIR
from RadFusionScreenLib.slicer_glue.scene_logic import _, parseClinicalValues

LOAD_BUNDLE_ITEM = "Load bundle…"


class WidgetController:
    """Behind the module's Widget. ``resourcePath(name)``: the module's resource file path."""

    def __init__(self, ui, logic, resourcePath) -> None:
        self.ui = ui
        self.logic = logic
        self.resourcePath = resourcePath
        self.parameterNode = None
        self.engine = EngineServer(self._onEngineFinished, self._onEngineOutput)
        self._job = None
        self._clinicalEditors = {}
        self._packagesError = None  # why the engine's packages are missing, once offered
        self._packagesAsked = False
        self._modelVolume = None  # the input volume the shown default model was chosen for
        self._clinicalLayout = qt.QFormLayout(self.ui.clinicalFormWidget)
        self._timer = qt.QTimer()
        self._timer.setInterval(500)
        self._timer.connect("timeout()", self._showElapsed)

    # ------------------------------------------------------------ parameter node
    def updateGui(self) -> None:
        node = self.parameterNode
        if node is None:
            return
        self.ui.segmentSelector.setCurrentNode(node.inputSegmentation)
        if node.segmentId and self.ui.segmentSelector.currentSegmentID() != node.segmentId:
            self.ui.segmentSelector.setCurrentSegmentID(node.segmentId)
        self.ui.editRoiButton.enabled = node.inputVolume is not None
        if not node.modelPath and node.inputVolume is not self._modelVolume:
            self.selectModel("")  # the default bundle follows the volume's modality
        running = self.engine.busy
        ready = bool(node.inputVolume and node.inputSegmentation and node.segmentId)
        self.ui.analyzeButton.enabled = ready and not running
        self.ui.analyzeButton.toolTip = _("Screen the selected lesion") if ready else _("Select a volume and a segment")
        self.ui.cancelButton.enabled = running
        self._showResult()

    def onSegmentChanged(self, segmentId) -> None:
        if self.parameterNode:
            self.parameterNode.segmentId = segmentId or ""

    def onSiteChanged(self, site) -> None:
        if self.parameterNode:
            self.parameterNode.site = site or ""

    # ------------------------------------------------------------ inputs
    def onLoadDicom(self) -> None:
        folder = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), _("Select a DICOM folder"))
        if not folder:
            return
        with slicer.util.tryWithErrorDisplay(_("Loading the DICOM folder failed."), waitCursor=True):
            report = loadDicomFolder(folder)
            self.useLoadedDicom(report)

    def useLoadedDicom(self, report) -> None:
        """Select the loaded volume (and the segmentation on it) and say what happened."""
        volume, segmentation = report.choose_inputs(slicer.mrmlScene)
        if volume is None:
            raise ValueError(_("The folder holds no image series that Slicer loads as a scalar volume.")
                             + "\n\n" + report.summary())
        self.parameterNode.inputVolume = volume
        if segmentation is not None:
            self.parameterNode.inputSegmentation = segmentation
            self.parameterNode.segmentId = segmentation.GetSegmentation().GetNthSegmentID(0) or ""
        slicer.util.setSliceViewerLayers(background=volume, fit=True)
        self.ui.statusLabel.text = report.headline()
        if report.needs_attention:  # problems, or a SEG / RTSTRUCT loaded by the engine's reader
            slicer.util.warningDisplay(report.summary(), windowTitle=_("RadFusionScreen: DICOM folder"))

    def onEditRoi(self) -> None:
        node = self.parameterNode
        if node.inputVolume is None:
            return
        segmentation, segmentId = segment_editor.editLesion(node.inputVolume, node.inputSegmentation, node.segmentId,
                                                            self.logic.addLesionSegment)
        node.inputSegmentation = segmentation
        node.segmentId = segmentId

    # ------------------------------------------------------------ model
    def populateModels(self) -> None:
        """Bundles of the models folder, then "Load bundle…" (a folder dialog)."""
        combo = self.ui.modelComboBox
        combo.clear()
        for path in self.logic.availableModels():
            combo.addItem(path.name, str(path))
        combo.addItem(_(LOAD_BUNDLE_ITEM), "")

    def selectModel(self, modelPath) -> None:
        """Show ``modelPath`` ("" = the shipped bundle of the input volume's modality)."""
        volume = self.parameterNode.inputVolume if self.parameterNode is not None else None
        self._modelVolume = volume
        try:
            path = str(self.logic.resolveModelPath(modelPath, volume))
        except Exception:  # e.g. a saved scene names a bundle that is not on this computer
            path = ""
        combo = self.ui.modelComboBox
        index = combo.findData(path) if path else -1
        if index < 0 and path:
            combo.insertItem(combo.count - 1, Path(path).name, path)
            index = combo.findData(path)
        combo.setCurrentIndex(index)
        self.showModel(path)

    def onModelActivated(self, index) -> None:
        path = self.ui.modelComboBox.itemData(index)
        if not path:  # "Load bundle…"
            path = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), _("Select a model bundle folder"))
            if not path:
                self.selectModel(self.parameterNode.modelPath)
                return
        self.parameterNode.modelPath = str(path)
        self.selectModel(str(path))

    def showModel(self, path) -> None:
        """Summary, model card and clinical-value form of the bundle: its manifest and card only
        (verified), without loading the CNN."""
        self._clearClinicalForm()
        if not path:
            self.ui.modelSummaryLabel.text = _("No model selected.")
            return
        missing = missingPackages(self.resourcePath("requirements.txt"))
        if missing:  # nothing installs here (setup() calls this): Analyze offers the installation
            self.ui.modelSummaryLabel.text = _(
                "{name}: the engine's Python packages are not installed yet ({packages}). Analyze offers to "
                "install them (once).").format(name=Path(path).name, packages=", ".join(missing))
            return
        try:
            description = self.logic.describeModel(path)
        except Exception as error:  # a broken bundle must not break the panel
            self.ui.modelSummaryLabel.text = _("Cannot use this bundle: {error}").format(error=error)
            return
        self.ui.modelSummaryLabel.text = self.logic.modelSummary(description)
        card = description.card or _("This bundle has no model card (README.md).")
        self.ui.modelCardBrowser.setMarkdown(card)
        self._buildClinicalForm(description)

    def installPackages(self) -> bool:
        """Install the engine's packages, offered once per session (the Slicer way); True when
        they are all present. After an installation the model panel is rebuilt."""
        if not self._packagesAsked:
            self._packagesAsked = True
            if not missingPackages(self.resourcePath("requirements.txt")):
                return True
            try:
                ensurePackages(self.resourcePath("requirements.txt"), self.resourcePath("constraints.txt"))
                self._packagesError = None
            except (PackagesMissing, Exception) as error:  # pip failures included: say why
                logging.error(f"RadFusionScreen: {error}")
                self._packagesError = str(error)
            self.selectModel(self.parameterNode.modelPath)
        return self._packagesError is None

    def _clearClinicalForm(self) -> None:
        while self._clinicalLayout.rowCount() > 0:
            self._clinicalLayout.removeRow(0)
        self._clinicalEditors = {}

    def _buildClinicalForm(self, description) -> None:
        values = parseClinicalValues(self.parameterNode.clinicalValues)
        levels = description.categorical_levels
        for name in description.clinical_predictors:
            if name in levels:
                editor = qt.QComboBox()
                editor.addItems([""] + levels[name])
                editor.setCurrentText(str(values.get(name, "")))
                editor.connect("currentTextChanged(QString)", self._storeClinicalValues)
            else:
                editor = qt.QLineEdit()
                editor.setValidator(qt.QDoubleValidator())
                editor.text = str(values.get(name, ""))
                editor.connect("textChanged(QString)", self._storeClinicalValues)
            self._clinicalLayout.addRow(f"{name}:", editor)
            self._clinicalEditors[name] = editor
        self.ui.clinicalNoteLabel.visible = not self._clinicalEditors
        self.ui.siteComboBox.clear()
        self.ui.siteComboBox.addItems([""] + description.known_sites)
        self.ui.siteComboBox.setCurrentText(self.parameterNode.site)
        self.ui.siteLabel.visible = self.ui.siteComboBox.visible = bool(description.site_column)
        self._storeClinicalValues()

    def _storeClinicalValues(self, *args) -> None:
        values = {}
        for name, editor in self._clinicalEditors.items():
            text = editor.currentText if isinstance(editor, qt.QComboBox) else editor.text
            if text.strip():
                values[name] = text.strip()
        self.parameterNode.clinicalValues = json.dumps(values)

    # ------------------------------------------------------------ analyze
    def onAnalyze(self) -> None:
        """Export the case, then screen it in a background process (the GUI stays responsive)."""
        node = self.parameterNode
        if self.engine.busy:
            return
        formWasEmpty = not self._clinicalEditors
        if not self.installPackages():
            self.ui.statusLabel.text = _("Cannot analyze: {reason}").format(reason=self._packagesError)
            return
        if formWasEmpty and self._clinicalEditors:  # the form appeared with the packages
            self.ui.statusLabel.text = _("Packages installed: enter the clinical values, then Analyze again.")
            return
        folder = tempfile.mkdtemp(prefix="RadFusionScreen-")
        try:
            with slicer.util.tryWithErrorDisplay(_("Cannot start the analysis."), waitCursor=True):
                imagePath, maskPath = self.logic.writeCaseFiles(
                    node.inputVolume, node.inputSegmentation, node.segmentId, folder)
                heatmapPath = os.path.join(folder, "heatmap.nrrd")  # NRRD keeps the geometry's doubles
                modelPath = str(self.logic.resolveModelPath(node.modelPath, node.inputVolume))
                arguments = self.logic.screenArguments(
                    imagePath, maskPath, heatmapPath, modelPath, node.device,
                    parseClinicalValues(node.clinicalValues), node.site)
        except Exception:
            shutil.rmtree(folder, ignore_errors=True)
            return
        self._job = {"folder": folder, "heatmap": heatmapPath, "volume": node.inputVolume,
                     "segmentation": node.inputSegmentation, "segmentId": node.segmentId,
                     "started": time.perf_counter(), "status": _("Analyzing…")}
        self.ui.progressBar.setRange(0, 0)  # busy: the engine reports no fractions
        self.ui.progressBar.visible = True
        self._showElapsed()
        self._timer.start()
        self.startEngine(modelPath, node.device)
        self.engine.request(arguments)
        self.updateGui()

    def startEngine(self, modelPath="", device="auto") -> None:
        """Start the warm engine (it loads the model once), unless it runs already. The module
        folder is put on its path: the engine is imported from the extension, not installed."""
        if not self.engine.alive:
            model = str(self.logic.resolveModelPath(modelPath))
            self.engine.start(pythonExecutable(), ["-m", "RadFusionScreenLib", "serve", "--model", model,
                                                   "--device", device or "auto"],
                              pythonPath=str(MODULE_DIR), workingDirectory=tempfile.gettempdir())

    def shutdown(self) -> None:
        """End the engine (the module is cleaned up or Slicer closes)."""
        self.engine.stop()

    def onCancel(self) -> None:
        self.engine.cancel()

    def _onEngineOutput(self, line) -> None:
        if self._job is not None:
            self._job["status"] = line[:100]
        self._showElapsed()

    def _showElapsed(self) -> None:
        if self._job is not None:
            elapsed = time.perf_counter() - self._job["started"]
            self.ui.statusLabel.text = f"{self._job['status']} ({elapsed:.0f} s)"

    def _onEngineFinished(self, run) -> None:
        job = self._job
        try:
            if run.cancelled:
                self._finishJob(_("Analysis cancelled."))
                return
            if not run.succeeded:
                message = run.lastErrorLine()
                slicer.util.errorDisplay(_("Analysis failed: {message}").format(message=message),
                                         detailedText=run.stderr or run.error)
                self._finishJob(_("Analysis failed: {message}").format(message=message))
                return
            if not slicer.mrmlScene.IsNodePresent(job["volume"]):
                raise ValueError(_("the input volume was removed during the analysis"))
            result = self.logic.resultFromOutput(run.stdout, job["heatmap"])
            self.logic.writeResults(result, job["volume"], job["segmentation"], job["segmentId"])
            self._finishJob(_("Done in {seconds:.1f} s.").format(seconds=time.perf_counter() - job["started"]))
        except Exception as error:
            slicer.util.errorDisplay(_("Analysis failed: {message}").format(message=error), detailedText=run.stderr)
            self._finishJob(_("Analysis failed."))

    def _finishJob(self, message) -> None:
        self._timer.stop()
        if self._job is not None:
            shutil.rmtree(self._job["folder"], ignore_errors=True)
        self._job = None
        self.ui.progressBar.visible = False
        self.ui.statusLabel.text = message
        self.updateGui()

    # ------------------------------------------------------------ results
    def _showResult(self) -> None:
        node = self.parameterNode
        hasResult = node.probability >= 0 and bool(node.resultJson)
        self.ui.resultsCollapsibleButton.enabled = hasResult
        self.ui.exportReportButton.enabled = hasResult
        if not hasResult:
            self.ui.probabilityLabel.text = "–"
            self.ui.riskClassLabel.text = ""
            self.ui.thresholdLabel.text = ""
            self.ui.warningsLabel.text = ""
            self.ui.reasonsLabel.text = ""
            self.ui.nomogramFigureLabel.clear()
            return
        result = json.loads(node.resultJson)
        self.ui.probabilityLabel.text = f"{node.probability:.3f}"
        self.ui.riskClassLabel.text = _("{risk} risk").format(risk=node.riskClass.upper())
        colour = "#c0392b" if node.riskClass == "high" else "#27ae60"
        self.ui.riskClassLabel.setStyleSheet(f"color: {colour}; font-size: 20pt; font-weight: bold;")
        from RadFusionScreenLib.serving.screening import calibration_line  # a result exists: packages are in

        self.ui.thresholdLabel.text = _("Fused model's probability; decision threshold {threshold:.3f} "
                                        "(model {model})\nCalibration: {calibration}").format(
            threshold=result["threshold"], model=result["model"].get("name"),
            calibration=calibration_line(result.get("calibration"), result.get("uncalibrated_probability")))
        self.ui.warningsLabel.text = "\n".join(f"⚠ {w}" for w in result.get("warnings", []))
        self.ui.reasonsLabel.text = reasonsText(result)
        self.ui.nomogramTableView.setMRMLTableNode(node.nomogramTable)
        self.ui.featureTableView.setMRMLTableNode(node.featureTable)
        self._showNomogramFigure(result)

    def _showNomogramFigure(self, result) -> None:
        """The report's nomogram figure, this case marked, as a picture in the panel (matplotlib
        is a serving package: installed with the engine's packages at the first Analyze)."""
        label = self.ui.nomogramFigureLabel
        try:
            png = nomogramFigurePng(self.logic.resultFromDict(result))
        except Exception as error:  # noqa: BLE001 -- the table below still shows the numbers
            logging.info(f"RadFusionScreen: no nomogram figure ({error})")
            png = None
        if not png:
            label.clear()
            return
        pixmap = qt.QPixmap()
        pixmap.loadFromData(qt.QByteArray(png), "PNG")  # drawn at 80 dpi: about the panel's width
        label.setPixmap(pixmap)

    def onHeatmapDisplayChanged(self, *args) -> None:
        self.logic.showHeatmap(self.ui.heatmapVisibleCheckBox.checked, self.ui.heatmapOpacitySlider.value)

    def onExportReport(self) -> None:
        path = qt.QFileDialog.getSaveFileName(slicer.util.mainWindow(), _("Export report"),
                                              "RadFusionScreen-report.html", "HTML (*.html)")
        if not path:
            return
        with slicer.util.tryWithErrorDisplay(_("Exporting the report failed."), waitCursor=True):
            node = self.parameterNode
            result = self.logic.resultFromDict(json.loads(node.resultJson))
            volume = node.inputVolume.GetName() if node.inputVolume else "?"
            description = f"volume {volume}, segment {node.segmentId}"
            # The views come from the scene's nodes through Slicer's slice pipeline (slice_views),
            # not from a grab of whatever the view layout shows.
            self.logic.writeReport(path, result, description)
            self.ui.statusLabel.text = _("Report written to {path}").format(path=path)


def nomogramFigurePng(result) -> bytes | None:
    """PNG of the case's nomogram figure (:func:`..figures.nomogram_figure`), None without a nomogram."""
    from RadFusionScreenLib.presentation.case_report import bundle_nomogram
    from RadFusionScreenLib.presentation.figures import case_marks, figure_png, nomogram_figure

    nomogram = bundle_nomogram(result)
    if nomogram is None or result.nomogram_total_points is None:
        return None
    return figure_png(nomogram_figure(nomogram, case_marks(result)), dpi=80)


def reasonsText(result) -> str:
    """Why this case (top SHAP contributions of the fused model) and the operating point, in a few lines."""
    lines = []
    contributions = (result.get("explanation") or {}).get("contributions") or []
    if contributions:
        lines.append(_("Why (SHAP, fused model, log-odds): ") + "; ".join(
            f"{c['label']} {c['shap']:+.2f}" for c in contributions[:3]))
    point = result.get("operating_point")
    if point:
        sens, spec = point["sensitivity"], point["specificity"]
        lines.append(_("At the threshold (internal test set): sensitivity {s:.2f} ({sl:.2f}–{sh:.2f}), "
                       "specificity {p:.2f} ({pl:.2f}–{ph:.2f})").format(
            s=sens["estimate"], sl=sens["lower"], sh=sens["upper"], p=spec["estimate"], pl=spec["lower"],
            ph=spec["upper"]))
    return "\n".join(lines)
