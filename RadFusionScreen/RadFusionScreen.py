"""RadFusionScreen: deep-learning radiomics screening inside 3D Slicer 5.12.

Thin scripted module, split as Slicer's template and SlicerNNUNet: Module, parameter node,
a Widget that delegates, a Logic facade and the self-test. The panel's behaviour, the
background engine process, package installation and the DICOM / Segment Editor hand-offs
live in ``RadFusionScreenLib.slicer_glue``; all computation in the Slicer-independent engine
``RadFusionScreenLib``. Nothing here installs packages or loads the engine at import.
"""

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

from RadFusionScreenLib.slicer_glue.scene_logic import ScreeningLogic

CITATION = (
    "RadFusionScreen uses PyRadiomics (van Griethuysen et al., Cancer Research 2017;77(21):e104-e107) "
    "and EfficientNet-Lite0 ImageNet weights (Apache-2.0)."
)


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
# Widget: loads the .ui, binds the parameter node, forwards signals to the controller.
#
class RadFusionScreenWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.controller = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self) -> None:
        from RadFusionScreenLib.slicer_glue.widget_controller import WidgetController

        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/RadFusionScreen.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = RadFusionScreenLogic()
        self.controller = controller = WidgetController(self.ui, self.logic, self.resourcePath)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.segmentSelector.connect("currentSegmentChanged(QString)", controller.onSegmentChanged)
        self.ui.loadDicomButton.connect("clicked(bool)", controller.onLoadDicom)
        self.ui.editRoiButton.connect("clicked(bool)", controller.onEditRoi)
        self.ui.modelComboBox.connect("activated(int)", controller.onModelActivated)
        self.ui.siteComboBox.connect("currentTextChanged(QString)", controller.onSiteChanged)
        self.ui.analyzeButton.connect("clicked(bool)", controller.onAnalyze)
        self.ui.cancelButton.connect("clicked(bool)", controller.onCancel)
        self.ui.heatmapVisibleCheckBox.connect("toggled(bool)", controller.onHeatmapDisplayChanged)
        self.ui.heatmapOpacitySlider.connect("valueChanged(double)", controller.onHeatmapDisplayChanged)
        self.ui.exportReportButton.connect("clicked(bool)", controller.onExportReport)

        controller.populateModels()
        self.initializeParameterNode()

    def cleanup(self) -> None:
        if self.controller is not None:
            self.controller.shutdown()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        self.controller.onCancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            self._parameterNode.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
        self.controller.selectModel(self._parameterNode.modelPath)

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)
        self._parameterNode = self.controller.parameterNode = inputParameterNode
        if self._parameterNode:
            # Widgets with a SlicerParameterName property in the .ui file are bound automatically.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)
            self._updateGui()

    def _updateGui(self, caller=None, event=None) -> None:
        self.controller.updateGui()


#
# Logic: the engine adapter (RadFusionScreenLib.slicer_glue.scene_logic) and the parameter node; no Qt.
#
class RadFusionScreenLogic(ScriptedLoadableModuleLogic, ScreeningLogic):
    """Screen a segmented lesion with a model bundle and put the results into the scene.

    ``scene``: the MRML scene to work on (default: ``slicer.mrmlScene``). See ``ScreeningLogic``.
    """

    def __init__(self, scene=None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        ScreeningLogic.__init__(self, scene)

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
        from RadFusionScreenLib.slicer_glue.packages import missingPackages
        from RadFusionScreenLib.core.locations import MODULE_DIR

        missing = missingPackages(MODULE_DIR / "Resources" / "requirements.txt")
        if missing:  # testing mode installs nothing; a ctest run must not pip-install torch
            self.delayDisplay(f"Skipped: the engine's Python packages are not installed ({', '.join(missing)})")
            return

        from RadFusionScreenLib.core.errors import InputError
        from RadFusionScreenLib.inputs.phantoms import synthetic_ultrasound
        from RadFusionScreenLib.slicer_glue import mrml

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

