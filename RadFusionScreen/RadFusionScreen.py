"""RadFusionScreen: deep-learning radiomics screening inside 3D Slicer.

Thin scripted module (Slicer template split: Module, parameter node, Widget, Logic, Test).
All computation lives in the Slicer-independent engine package ``RadFusionScreenLib``; the
Logic only moves data between MRML nodes and the engine and has no Qt dependency.
"""

import json
import logging
import os
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLTableNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

try:  # Qt exists only inside the Slicer application; the Logic never needs it
    import ctk
    import qt
except ImportError:
    ctk = qt = None

MODULE_DIR = Path(__file__).resolve().parent
CITATION = (
    "RadFusionScreen uses PyRadiomics (van Griethuysen et al., Cancer Research 2017;77(21):e104-e107) "
    "and EfficientNet-Lite0 ImageNet weights (Apache-2.0)."
)
LOAD_BUNDLE_ITEM = "Load bundle…"


#
# RadFusionScreen
#
class RadFusionScreen(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("RadFusionScreen")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Radiomics")]
        self.parent.dependencies = ["Segmentations"]
        self.parent.contributors = ["RadFusionScreen developers"]
        self.parent.helpText = _(
            "Deep-learning radiomics for opportunistic screening: handcrafted PyRadiomics features and "
            "deep CNN features of a segmented lesion (plus the clinical values the model needs), fused by "
            "a trained model bundle into a probability, a risk class, a nomogram breakdown and a Grad-CAM "
            "overlay. Research use only: not for clinical use without local validation. "
        ) + CITATION
        self.parent.acknowledgementText = _(
            "Built on 3D Slicer, PyRadiomics, SimpleITK, pydicom and PyTorch. "
            "IBSI reference data: Zwanenburg et al., Radiology 2020;295(2):328-338. "
            "Shipped ultrasound model: BUSI, Al-Dhabyani et al., Data in Brief 2020;28:104863."
        )


#
# Parameter node
#
@parameterNodeWrapper
class RadFusionScreenParameterNode:
    """Inputs and outputs of the module, saved with the scene.

    inputVolume / inputSegmentation / segmentId - the image and the lesion segment.
    modelPath - model bundle folder ("" = the shipped model); device - "auto", "cpu" or "cuda".
    clinicalValues - JSON object of the clinical values the model needs; site - the case's
        site when the model harmonises by site (ComBat).
    heatmapVisible / heatmapOpacity - Grad-CAM overlay in the slice views.
    probability (-1 before the first analysis), riskClass, resultJson (the full engine
        result) and the output nodes: written by the Logic, replaced on every run.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    inputSegmentation: vtkMRMLSegmentationNode
    segmentId: str = ""
    modelPath: str = ""
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    clinicalValues: str = "{}"
    site: str = ""
    heatmapVisible: bool = True
    heatmapOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    probability: float = -1.0
    riskClass: str = ""
    resultJson: str = ""
    featureTable: vtkMRMLTableNode
    nomogramTable: vtkMRMLTableNode
    heatmapVolume: vtkMRMLScalarVolumeNode


#
# Widget: moves values between the GUI, the parameter node and the Logic.
#
class RadFusionScreenWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._process = None
        self._job = None
        self._clinicalEditors = {}
        self._packagesReady = None  # None: not asked yet; the install offer is made once
        self._lastResult = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/RadFusionScreen.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = RadFusionScreenLogic()
        self._clinicalLayout = qt.QFormLayout(self.ui.clinicalFormWidget)
        self._timer = qt.QTimer()
        self._timer.setInterval(500)
        self._timer.connect("timeout()", self._showElapsed)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.segmentSelector.connect("currentSegmentChanged(QString)", self.onSegmentChanged)
        self.ui.loadDicomButton.connect("clicked(bool)", self.onLoadDicom)
        self.ui.editRoiButton.connect("clicked(bool)", self.onEditRoi)
        self.ui.modelComboBox.connect("activated(int)", self.onModelActivated)
        self.ui.siteComboBox.connect("currentTextChanged(QString)", self.onSiteChanged)
        self.ui.analyzeButton.connect("clicked(bool)", self.onAnalyze)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.heatmapVisibleCheckBox.connect("toggled(bool)", self.onHeatmapDisplayChanged)
        self.ui.heatmapOpacitySlider.connect("valueChanged(double)", self.onHeatmapDisplayChanged)
        self.ui.exportReportButton.connect("clicked(bool)", self.onExportReport)

        self._populateModels()
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.onCancel()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        self.onCancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    # ------------------------------------------------------------ parameter node
    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            self._parameterNode.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
        self._selectModel(self._parameterNode.modelPath)

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # Widgets with a SlicerParameterName property in the .ui file are bound automatically.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)
            self._updateGui()

    def _updateGui(self, caller=None, event=None) -> None:
        node = self._parameterNode
        if node is None:
            return
        self.ui.segmentSelector.setCurrentNode(node.inputSegmentation)
        if node.segmentId and self.ui.segmentSelector.currentSegmentID() != node.segmentId:
            self.ui.segmentSelector.setCurrentSegmentID(node.segmentId)
        self.ui.editRoiButton.enabled = node.inputVolume is not None
        running = self._process is not None
        ready = bool(node.inputVolume and node.inputSegmentation and node.segmentId)
        self.ui.analyzeButton.enabled = ready and not running
        self.ui.analyzeButton.toolTip = _("Screen the selected lesion") if ready else _("Select a volume and a segment")
        self.ui.cancelButton.enabled = running
        self._showResult()

    def onSegmentChanged(self, segmentId) -> None:
        if self._parameterNode:
            self._parameterNode.segmentId = segmentId or ""

    def onSiteChanged(self, site) -> None:
        if self._parameterNode:
            self._parameterNode.site = site or ""

    # ------------------------------------------------------------ inputs
    def onLoadDicom(self) -> None:
        folder = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), _("Select a DICOM folder"))
        if not folder:
            return
        with slicer.util.tryWithErrorDisplay(_("Loading the DICOM folder failed."), waitCursor=True):
            nodeIds = loadDicomFolder(folder)
            nodes = [slicer.mrmlScene.GetNodeByID(nodeId) for nodeId in nodeIds]
            volumes = [n for n in nodes if n is not None and n.IsA("vtkMRMLScalarVolumeNode")
                       and not n.IsA("vtkMRMLLabelMapVolumeNode")]
            segmentations = [n for n in nodes if n is not None and n.IsA("vtkMRMLSegmentationNode")]
            if not volumes:
                raise ValueError(_("The folder holds no image series that Slicer loads as a scalar volume."))
            self._parameterNode.inputVolume = volumes[0]
            if segmentations:
                self._parameterNode.inputSegmentation = segmentations[0]
                self._parameterNode.segmentId = segmentations[0].GetSegmentation().GetNthSegmentID(0) or ""
            slicer.util.setSliceViewerLayers(background=volumes[0], fit=True)

    def onEditRoi(self) -> None:
        """Open Segment Editor on the module's volume and segmentation (created when missing)."""
        node = self._parameterNode
        volume = node.inputVolume
        if volume is None:
            return
        segmentation = node.inputSegmentation
        if segmentation is None:
            segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{volume.GetName()} lesion")
            segmentation.CreateDefaultDisplayNodes()
            segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
            node.inputSegmentation = segmentation
            node.segmentId = self.logic.addLesionSegment(segmentation)
        slicer.util.setSliceViewerLayers(background=volume)
        slicer.util.selectModule("SegmentEditor")
        editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
        editor.setSegmentationNode(segmentation)
        setSource = getattr(editor, "setSourceVolumeNode", None) or editor.setMasterVolumeNode  # Slicer < 5.2
        setSource(volume)
        if node.segmentId:
            editor.setCurrentSegmentID(node.segmentId)

    # ------------------------------------------------------------ model
    def _populateModels(self) -> None:
        """Bundles of the models folder, then "Load bundle…" (a folder dialog)."""
        combo = self.ui.modelComboBox
        combo.clear()
        for path in self.logic.availableModels():
            combo.addItem(path.name, str(path))
        combo.addItem(_(LOAD_BUNDLE_ITEM), "")

    def _selectModel(self, modelPath) -> None:
        try:
            path = str(self.logic.resolveModelPath(modelPath))
        except Exception:  # e.g. a saved scene names a bundle that is not on this computer
            path = ""
        combo = self.ui.modelComboBox
        index = combo.findData(path) if path else -1
        if index < 0 and path:
            combo.insertItem(combo.count - 1, Path(path).name, path)
            index = combo.findData(path)
        combo.setCurrentIndex(index)
        self._showModel(path)

    def onModelActivated(self, index) -> None:
        combo = self.ui.modelComboBox
        path = combo.itemData(index)
        if not path:  # "Load bundle…"
            path = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), _("Select a model bundle folder"))
            if not path:
                self._selectModel(self._parameterNode.modelPath)
                return
        self._parameterNode.modelPath = str(path)
        self._selectModel(str(path))

    def _showModel(self, path) -> None:
        """Model card summary and the clinical-value form of the selected bundle."""
        self._clearClinicalForm()
        if not path or not self._ensurePackages():
            self.ui.modelSummaryLabel.text = _("No model loaded.")
            return
        try:
            with waitCursor():
                screener = self.logic.getScreener(path, self._parameterNode.device)
        except Exception as error:  # a broken bundle must not break the panel
            self.ui.modelSummaryLabel.text = _("Cannot load this bundle: {error}").format(error=error)
            return
        self.ui.modelSummaryLabel.text = self.logic.modelSummary(screener)
        card = self.logic.modelCard(path)
        if hasattr(self.ui.modelCardBrowser, "setMarkdown"):
            self.ui.modelCardBrowser.setMarkdown(card)
        else:
            self.ui.modelCardBrowser.setPlainText(card)
        self._buildClinicalForm(screener)

    def _clearClinicalForm(self) -> None:
        while self._clinicalLayout.rowCount() > 0:
            self._clinicalLayout.removeRow(0)
        self._clinicalEditors = {}

    def _buildClinicalForm(self, screener) -> None:
        values = parseClinicalValues(self._parameterNode.clinicalValues)
        levels = screener.categorical_levels
        for name in screener.clinical_predictors:
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
        self.ui.siteComboBox.addItems([""] + screener.known_sites)
        self.ui.siteComboBox.setCurrentText(self._parameterNode.site)
        self.ui.siteLabel.visible = self.ui.siteComboBox.visible = bool(screener.site_column)
        self._storeClinicalValues()

    def _storeClinicalValues(self, *args) -> None:
        values = {}
        for name, editor in self._clinicalEditors.items():
            text = editor.currentText if isinstance(editor, qt.QComboBox) else editor.text
            if text.strip():
                values[name] = text.strip()
        self._parameterNode.clinicalValues = json.dumps(values)

    def _ensurePackages(self) -> bool:
        """Offer the missing Python packages for install once per session (one dialog)."""
        if self._packagesReady is None:
            requirements = self.resourcePath("requirements.txt")
            try:
                self._packagesReady = ensurePackages(requirements)
            except Exception as error:
                logging.error(f"RadFusionScreen: required Python packages are missing: {error}")
                self._packagesReady = False
        if not self._packagesReady:
            self.ui.statusLabel.text = _("Required Python packages are missing (see Resources/requirements.txt); "
                                         "restart Slicer to be offered the installation again.")
        return self._packagesReady

    # ------------------------------------------------------------ analyze
    def onAnalyze(self) -> None:
        """Export the case, then screen it in a background process (the GUI stays responsive)."""
        node = self._parameterNode
        if self._process is not None or not self._ensurePackages():
            return
        folder = tempfile.mkdtemp(prefix="RadFusionScreen-")
        try:
            with slicer.util.tryWithErrorDisplay(_("Cannot start the analysis."), waitCursor=True):
                imagePath, maskPath = self.logic.writeCaseFiles(
                    node.inputVolume, node.inputSegmentation, node.segmentId, folder)
                heatmapPath = os.path.join(folder, "heatmap.nrrd")  # NRRD keeps the geometry's doubles
                arguments = self.logic.screenArguments(
                    imagePath, maskPath, heatmapPath, node.modelPath, node.device,
                    parseClinicalValues(node.clinicalValues), node.site)
        except Exception:
            shutil.rmtree(folder, ignore_errors=True)
            return
        self._job = {"folder": folder, "heatmap": heatmapPath, "volume": node.inputVolume,
                     "segmentation": node.inputSegmentation, "segmentId": node.segmentId,
                     "started": time.perf_counter(), "stdout": [], "stderr": [], "status": _("Analyzing…")}
        process = qt.QProcess()
        environment = qt.QProcessEnvironment.systemEnvironment()
        pythonPath = os.pathsep.join(p for p in (str(MODULE_DIR), environment.value("PYTHONPATH")) if p)
        environment.insert("PYTHONPATH", pythonPath)
        process.setProcessEnvironment(environment)
        process.connect("readyReadStandardOutput()", self._readOutput)
        process.connect("readyReadStandardError()", self._readOutput)
        process.connect("finished(int,QProcess::ExitStatus)", self._onProcessFinished)
        self._process = process
        self.ui.progressBar.setRange(0, 0)  # busy: the engine reports no fractions
        self.ui.progressBar.visible = True
        self._showElapsed()
        self._timer.start()
        process.start(pythonExecutable(), ["-m", "RadFusionScreenLib", *arguments])
        self._updateGui()

    def _readOutput(self) -> None:
        if self._process is None:
            return
        self._job["stdout"].append(_text(self._process.readAllStandardOutput()))
        error = _text(self._process.readAllStandardError())
        if error:
            self._job["stderr"].append(error)
            lines = [line for line in error.splitlines() if line.strip()]
            if lines:
                self._job["status"] = lines[-1][:100]
        self._showElapsed()

    def _showElapsed(self) -> None:
        if self._job is not None:
            elapsed = time.perf_counter() - self._job["started"]
            self.ui.statusLabel.text = f"{self._job['status']} ({elapsed:.0f} s)"

    def onCancel(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            process.disconnect("finished(int,QProcess::ExitStatus)", self._onProcessFinished)
            process.kill()
            process.waitForFinished(3000)
            self._finishJob(_("Analysis cancelled."))

    def _onProcessFinished(self, exitCode, exitStatus) -> None:
        self._readOutput()
        self._process = None
        job = self._job
        stderr = "".join(job["stderr"]).strip()
        try:
            if exitCode != 0 or exitStatus != qt.QProcess.NormalExit:
                message = (stderr.splitlines()[-1] if stderr
                           else _("the engine stopped (exit code {code})").format(code=exitCode))
                slicer.util.errorDisplay(_("Analysis failed: {message}").format(message=message),
                                         detailedText=stderr)
                self._finishJob(_("Analysis failed."))
                return
            if not slicer.mrmlScene.IsNodePresent(job["volume"]):
                raise ValueError(_("the input volume was removed during the analysis"))
            result = self.logic.resultFromOutput("".join(job["stdout"]), job["heatmap"])
            self.logic.writeResults(result, job["volume"], job["segmentation"], job["segmentId"])
            self._lastResult = result
            self._finishJob(_("Done in {seconds:.1f} s.").format(seconds=time.perf_counter() - job["started"]))
        except Exception as error:
            slicer.util.errorDisplay(_("Analysis failed: {message}").format(message=error), detailedText=stderr)
            self._finishJob(_("Analysis failed."))

    def _finishJob(self, message) -> None:
        self._timer.stop()
        if self._job is not None:
            shutil.rmtree(self._job["folder"], ignore_errors=True)
        self._job = None
        self.ui.progressBar.visible = False
        self.ui.statusLabel.text = message
        self._updateGui()

    # ------------------------------------------------------------ results
    def _showResult(self) -> None:
        node = self._parameterNode
        hasResult = node.probability >= 0 and bool(node.resultJson)
        self.ui.resultsCollapsibleButton.enabled = hasResult
        self.ui.exportReportButton.enabled = hasResult
        if not hasResult:
            self.ui.probabilityLabel.text = "–"
            self.ui.riskClassLabel.text = ""
            self.ui.thresholdLabel.text = ""
            self.ui.warningsLabel.text = ""
            return
        result = json.loads(node.resultJson)
        self.ui.probabilityLabel.text = f"{node.probability:.3f}"
        self.ui.riskClassLabel.text = _("{risk} risk").format(risk=node.riskClass.upper())
        colour = "#c0392b" if node.riskClass == "high" else "#27ae60"
        self.ui.riskClassLabel.setStyleSheet(f"color: {colour}; font-size: 20pt; font-weight: bold;")
        self.ui.thresholdLabel.text = _("Decision threshold {threshold:.3f} (model {model})").format(
            threshold=result["threshold"], model=result["model"].get("name"))
        self.ui.warningsLabel.text = "\n".join(f"⚠ {w}" for w in result.get("warnings", []))
        self.ui.nomogramTableView.setMRMLTableNode(node.nomogramTable)
        self.ui.featureTableView.setMRMLTableNode(node.featureTable)

    def onHeatmapDisplayChanged(self, *args) -> None:
        self.logic.showHeatmap(self.ui.heatmapVisibleCheckBox.checked, self.ui.heatmapOpacitySlider.value)

    def onExportReport(self) -> None:
        path = qt.QFileDialog.getSaveFileName(slicer.util.mainWindow(), _("Export report"),
                                              "RadFusionScreen-report.html", "HTML (*.html)")
        if not path:
            return
        with slicer.util.tryWithErrorDisplay(_("Exporting the report failed."), waitCursor=True):
            node = self._parameterNode
            result = self.logic.resultFromDict(json.loads(node.resultJson))
            volume = node.inputVolume.GetName() if node.inputVolume else "?"
            description = f"volume {volume}, segment {node.segmentId}"
            self.logic.writeReport(path, result, viewsScreenshot(), description)
            self.ui.statusLabel.text = _("Report written to {path}").format(path=path)


@contextmanager
def waitCursor():
    qt.QApplication.setOverrideCursor(qt.Qt.WaitCursor)
    try:
        yield
    finally:
        qt.QApplication.restoreOverrideCursor()


def _text(byteArray) -> str:
    """Text of a QByteArray (PythonQt returns its data as bytes)."""
    data = byteArray.data()
    return data.decode(errors="replace") if isinstance(data, bytes) else str(data)


def pythonExecutable() -> str:
    """Slicer's Python launcher (sets up the environment) for background engine runs."""
    return shutil.which("PythonSlicer") or sys.executable


def viewsScreenshot() -> bytes:
    """PNG of the view layout (slice views with the overlay)."""
    slicer.util.forceRenderAllViews()
    image = ctk.ctkWidgetsUtils.grabWidget(slicer.app.layoutManager().viewport())
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "views.png")
        image.save(path)
        return Path(path).read_bytes()


def loadDicomFolder(folder) -> list:
    """Import a folder into Slicer's DICOM database (a temporary one when none is open) and
    load the series found in it; returns the loaded node IDs."""
    from DICOMLib import DICOMUtils

    def importAndLoad(database):
        if not DICOMUtils.importDicom(folder, database):  # it returns False, it does not raise
            raise ValueError(_("Slicer could not import {folder} into its DICOM database (see the log)").format(
                folder=folder))
        files = slicer.util.getFilesInDirectory(folder)
        seriesUIDs = sorted({database.seriesForFile(f) for f in files} - {""})
        if not seriesUIDs:
            raise ValueError(_("No DICOM series found in {folder}").format(folder=folder))
        return DICOMUtils.loadSeriesByUID(seriesUIDs)

    database = getattr(slicer, "dicomDatabase", None)
    if database is not None and database.isOpen:
        return importAndLoad(database)
    with DICOMUtils.TemporaryDICOMDatabase() as database:
        return importAndLoad(database)


def missingRequirements(requirementsPath) -> list:
    """Lines of requirements.txt whose distribution is not installed (or has another version)."""
    from importlib import metadata

    missing = []
    for line in Path(requirementsPath).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, _sep, version = line.partition("==")
        try:
            installed = metadata.version(name.strip())
        except metadata.PackageNotFoundError:
            missing.append(line)
            continue
        if version and installed != version.strip():
            missing.append(line)
    return missing


def ensurePackages(requirementsPath) -> bool:
    """Install missing packages after one confirmation dialog; True when all are present."""
    missing = missingRequirements(requirementsPath)
    if not missing:
        return True
    packaging = getattr(slicer, "packaging", None)
    if packaging is not None and hasattr(packaging, "pip_ensure"):
        from packaging.requirements import Requirement

        packaging.pip_ensure([Requirement(line) for line in missing], requester="RadFusionScreen")
        return not missingRequirements(requirementsPath)
    text = _("RadFusionScreen needs these Python packages:\n\n{packages}\n\nInstall them now?").format(
        packages="\n".join(missing))
    if not slicer.util.confirmOkCancelDisplay(text, _("RadFusionScreen: install Python packages")):
        return False
    with waitCursor():
        slicer.util.pip_install(missing)
    return not missingRequirements(requirementsPath)


def parseClinicalValues(clinical) -> dict:
    """Clinical values as a dict, from a dict, a JSON object string, or nothing."""
    if clinical is None or clinical == "":
        return {}
    if isinstance(clinical, dict):
        return dict(clinical)
    from RadFusionScreenLib.errors import InputError

    try:
        values = json.loads(clinical)
    except json.JSONDecodeError as error:
        raise InputError(f"clinical values must be a JSON object like {{\"age\": 61}}: {error}") from None
    if not isinstance(values, dict):
        raise InputError("clinical values must be a JSON object like {\"age\": 61}")
    return values


#
# Logic: engine adapter, no Qt.
#
class RadFusionScreenLogic(ScriptedLoadableModuleLogic):
    """Screen a segmented lesion with a model bundle and put the results into the scene.

    ``scene``: the MRML scene to work on (default: ``slicer.mrmlScene``). Loaded bundles are
    cached per (model, device), so the CNN is loaded once, not per click.
    """

    def __init__(self, scene=None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._scene = scene
        self._screeners = {}
        self.lastScreenSeconds = None

    @property
    def scene(self):
        return self._scene if self._scene is not None else slicer.mrmlScene

    def getParameterNode(self):
        """The module's singleton parameter node in this Logic's scene (created when missing)."""
        scene = self.scene
        node = scene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
        if node is None:
            node = slicer.vtkMRMLScriptedModuleNode()
            node.SetSingletonTag(self.moduleName)
            node.SetAttribute("ModuleName", self.moduleName)
            node.SetName(scene.GenerateUniqueName(self.moduleName))
            node = scene.AddNode(node)
        elif node.GetAttribute("ModuleName") != self.moduleName:
            node.SetAttribute("ModuleName", self.moduleName)  # lost on scene close
        return RadFusionScreenParameterNode(node)

    # ------------------------------------------------------------ models
    @staticmethod
    def modelsDirectory() -> Path:
        """Where shipped bundles live: $RADFUSION_MODELS, the installed extension's
        Resources/models, or the source tree's models/ folder."""
        candidates = [os.environ.get("RADFUSION_MODELS"), MODULE_DIR / "Resources" / "models",
                      MODULE_DIR.parent / "models"]
        for candidate in candidates:
            if candidate and Path(candidate).is_dir():
                return Path(candidate)
        return MODULE_DIR.parent / "models"

    def availableModels(self) -> list:
        folder = self.modelsDirectory()
        if not folder.is_dir():
            return []
        return sorted(p.resolve() for p in folder.iterdir() if (p / "manifest.json").is_file())

    def resolveModelPath(self, modelPath=None) -> Path:
        """A bundle folder: a path, a bundle name in the models folder, or (None / "") the shipped one."""
        from RadFusionScreenLib.screening import DEFAULT_MODEL, resolve_model_path

        if not modelPath:
            modelPath = DEFAULT_MODEL
        named = self.modelsDirectory() / str(modelPath)
        return resolve_model_path(named if not Path(modelPath).exists() and named.is_dir() else modelPath).resolve()

    def getScreener(self, modelPath=None, device=None):
        """The engine's Screener for a bundle, loaded once per (model, device)."""
        from RadFusionScreenLib.screening import Screener

        device = None if device in (None, "", "auto") else device
        key = (str(self.resolveModelPath(modelPath)), device)
        if key not in self._screeners:
            self._screeners[key] = Screener(key[0], device)
        return self._screeners[key]

    @staticmethod
    def addLesionSegment(segmentationNode) -> str:
        """An empty segment named "lesion" (AddEmptySegment's first argument is the ID); its ID."""
        return segmentationNode.GetSegmentation().AddEmptySegment("", "lesion")

    def modelCard(self, modelPath=None) -> str:
        card = self.resolveModelPath(modelPath) / "README.md"
        return card.read_text(encoding="utf-8") if card.is_file() else _("This bundle has no model card (README.md).")

    @staticmethod
    def modelSummary(screener) -> str:
        info = screener.model_info()
        clinical = ", ".join(screener.clinical_predictors) or _("none")
        return _("{name}: {modality} images, decision threshold {threshold:.3f}, clinical values: {clinical}. "
                 "Bundle digest {digest}; {provenance}. Research use only.").format(
            name=info["name"], modality=info["modality"] or "?", threshold=float(screener.bundle.threshold),
            clinical=clinical, digest=info["digest"][:16], provenance=info["provenance"])

    # ------------------------------------------------------------ screening
    def exportCase(self, volumeNode, segmentationNode, segmentId):
        """The volume and the segment as SimpleITK images (LPS) on the volume's voxel grid."""
        from RadFusionScreenLib.slicer_glue.mrml import segment_to_sitk_mask, volume_node_to_sitk

        return volume_node_to_sitk(volumeNode), segment_to_sitk_mask(segmentationNode, segmentId, volumeNode)

    def screen(self, volumeNode, segmentationNode, segmentId, clinical=None, modelPath=None, device=None, site=None):
        """Screen one lesion; results go into the scene (replacing earlier ones) and are returned.

        ``clinical``: dict or JSON object string of the values the model needs. On any error
        the scene is left as it was: the engine runs before any node is created.
        """
        started = time.perf_counter()
        image, mask = self.exportCase(volumeNode, segmentationNode, segmentId)
        screener = self.getScreener(modelPath, device)
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
        from RadFusionScreenLib.slicer_glue import mrml

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
        from RadFusionScreenLib.slicer_glue.mrml import write_columns_table

        node = write_columns_table(columns, self.scene.AddNewNodeByClass("vtkMRMLTableNode", name))
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
        from RadFusionScreenLib.slicer_glue import mrml

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
                        site=None) -> list:
        """Arguments of ``python -m RadFusionScreenLib`` that screen the exported case."""
        arguments = ["screen", str(imagePath), str(maskPath), "--json", "--heatmap", str(heatmapPath),
                     "--model", str(self.resolveModelPath(modelPath)), "--device", device or "auto"]
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
        from RadFusionScreenLib.screening import ScreenResult

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
        )

    @staticmethod
    def writeReport(path, result, screenshotPng, description="") -> Path:
        """Self-contained HTML report: result, nomogram, warnings and a screenshot of the views."""
        from RadFusionScreenLib.demo import html_page

        path = Path(path)
        path.write_text(html_page(description, result, screenshotPng), encoding="utf-8")
        return path


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


#
# Test: runs headless in real Slicer (Slicer --no-main-window --python-script ...).
#
class RadFusionScreenTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_ScreenSyntheticUltrasound()

    def test_ScreenSyntheticUltrasound(self):
        from RadFusionScreenLib.slicer_glue import mrml
        from RadFusionScreenLib.errors import InputError
        from RadFusionScreenLib.phantoms import synthetic_ultrasound

        self.delayDisplay("Synthetic ultrasound picture with a lesion")
        image, mask = synthetic_ultrasound()
        scene = slicer.mrmlScene
        volumeNode = mrml.sitk_to_volume_node(image, "synthetic ultrasound", scene)
        volumeNode.CreateDefaultDisplayNodes()
        labelNode = mrml.sitk_to_volume_node(mask, "lesion", scene, class_name="vtkMRMLLabelMapVolumeNode")
        segmentationNode = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "lesion")
        segmentations = slicer.modules.segmentations.logic()
        self.assertTrue(segmentations.ImportLabelmapToSegmentationNode(labelNode, segmentationNode))
        mrml.remove_node(scene, labelNode)
        segmentId = segmentationNode.GetSegmentation().GetNthSegmentID(0)

        self.delayDisplay("Screen with the shipped ultrasound model")
        logic = RadFusionScreenLogic()
        result = logic.screen(volumeNode, segmentationNode, segmentId)
        parameterNode = logic.getParameterNode()
        self.assertTrue(0.0 <= result.probability <= 1.0)
        self.assertEqual(parameterNode.probability, result.probability)
        self.assertIn(parameterNode.riskClass, ("low", "high"))
        self.assertEqual(parameterNode.featureTable.GetNumberOfRows(), len(result.features))
        self.assertGreaterEqual(parameterNode.nomogramTable.GetNumberOfRows(), len(result.nomogram))
        heatmap = parameterNode.heatmapVolume
        self.assertIsNotNone(heatmap)
        self.assertEqual(mrml.volume_ijk_to_ras(heatmap).tolist(), mrml.volume_ijk_to_ras(volumeNode).tolist())
        composite = scene.GetNthNodeByClass(0, "vtkMRMLSliceCompositeNode")
        if composite is not None:
            self.assertEqual(composite.GetForegroundVolumeID(), heatmap.GetID())

        self.delayDisplay("Re-run replaces; a failing run changes nothing")
        count = scene.GetNumberOfNodes()
        logic.screen(volumeNode, segmentationNode, segmentId)
        self.assertEqual(scene.GetNumberOfNodes(), count)
        with self.assertRaises(InputError):
            logic.screen(volumeNode, segmentationNode, segmentId, modelPath="/no/such/bundle")
        self.assertEqual(scene.GetNumberOfNodes(), count)
        self.delayDisplay("Test passed")
