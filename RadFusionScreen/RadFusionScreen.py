"""RadFusionScreen: deep-learning radiomics screening inside 3D Slicer.

Thin scripted module (Slicer template split: Module, parameter node, Widget, Logic, Test).
All computation lives in the Slicer-independent engine package ``RadFusionScreenLib``.
"""

import logging

import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLTableNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

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
            "deep CNN features of a segmented lesion, fused by a trained model. "
            "Research use only: not for clinical use without local validation. "
        ) + CITATION
        self.parent.acknowledgementText = _(
            "Built on 3D Slicer, PyRadiomics, SimpleITK, pydicom and PyTorch. "
            "IBSI reference data: Zwanenburg et al., Radiology 2020;295(2):328-338."
        )


#
# Parameter node
#
@parameterNodeWrapper
class RadFusionScreenParameterNode:
    """Inputs and outputs of the module, saved with the scene.

    inputVolume - the image (CT, MR or a one-slice ultrasound volume).
    inputSegmentation / segmentId - the lesion segment.
    modality - "auto", "CT", "MR" or "US" (selects default parameters and CNN windowing).
    computeDeep - also compute the CNN features.
    device - "auto", "cpu" or "cuda".
    featureTable - output table node (replaced, never duplicated, on re-run).
    """

    inputVolume: vtkMRMLScalarVolumeNode
    inputSegmentation: vtkMRMLSegmentationNode
    segmentId: str = ""
    modality: str = "auto"
    computeDeep: bool = True
    device: str = "auto"
    featureTable: vtkMRMLTableNode


#
# Widget: only moves values between the GUI, the parameter node and the Logic.
#
class RadFusionScreenWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/RadFusionScreen.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = RadFusionScreenLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.segmentSelector.connect("currentSegmentChanged(QString)", self.onSegmentChanged)
        self.ui.extractButton.connect("clicked(bool)", self.onExtractButton)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtonState)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            self._parameterNode.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtonState)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # Widgets carry a SlicerParameterName property in the .ui file.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtonState)
            self.ui.segmentSelector.setSegmentationNode(self._parameterNode.inputSegmentation)
            self._updateButtonState()

    def onSegmentChanged(self, segmentId) -> None:
        self._parameterNode.segmentId = segmentId or ""

    def _updateButtonState(self, caller=None, event=None) -> None:
        node = self._parameterNode
        ready = bool(node and node.inputVolume and node.inputSegmentation and node.segmentId)
        self.ui.extractButton.enabled = ready
        self.ui.extractButton.toolTip = _("Extract features") if ready else _("Select a volume and a segment")
        if node:
            self.ui.segmentSelector.setSegmentationNode(node.inputSegmentation)

    def onExtractButton(self) -> None:
        node = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Feature extraction failed."), waitCursor=True):
            self.logic.extractFeatures(
                node.inputVolume,
                node.inputSegmentation,
                node.segmentId,
                modality=None if node.modality == "auto" else node.modality,
                computeDeep=node.computeDeep,
                device=None if node.device == "auto" else node.device,
            )
            self.ui.featureTableView.setMRMLTableNode(node.featureTable)


#
# Logic: engine adapter, no Qt.
#
class RadFusionScreenLogic(ScriptedLoadableModuleLogic):
    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._extractors = {}

    def getParameterNode(self):
        return RadFusionScreenParameterNode(super().getParameterNode())

    def extractFeatures(
        self, volumeNode, segmentationNode, segmentId, modality=None, computeDeep=True, device=None
    ) -> vtkMRMLTableNode:
        """Radiomic (+ deep) features of one segment, written to the module's feature table node."""
        from RadFusionScreenLib.features import CaseFeatureExtractor, ExtractionConfig
        from RadFusionScreenLib.mrml import segment_to_sitk_mask, volume_node_to_sitk, write_table_node

        image = volume_node_to_sitk(volumeNode)
        mask = segment_to_sitk_mask(segmentationNode, segmentId, volumeNode)
        key = (modality, computeDeep, device)
        if key not in self._extractors:  # the CNN is loaded once per setting, not per click
            config = ExtractionConfig(modality=modality, deep="efficientnet-lite0" if computeDeep else None, device=device)
            self._extractors[key] = CaseFeatureExtractor(config)
        features = self._extractors[key].extract(image, mask, modality=modality)
        parameterNode = self.getParameterNode()
        parameterNode.featureTable = write_table_node(features.row(), parameterNode.featureTable, "RadFusionScreen features")
        logging.info("RadFusionScreen: %d radiomic + %d deep features", len(features.radiomic), len(features.deep))
        return parameterNode.featureTable


#
# Test: runs headless in real Slicer (Slicer --no-main-window --python-script ...).
#
class RadFusionScreenTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_ExtractFeaturesFromSyntheticLesion()

    def test_ExtractFeaturesFromSyntheticLesion(self):
        import numpy as np

        self.delayDisplay("Synthetic CT with a spherical lesion")
        z, y, x = np.mgrid[0:32, 0:64, 0:64]
        lesion = (x - 32) ** 2 + (y - 30) ** 2 + ((z - 16) * 2) ** 2 < 12**2
        rng = np.random.default_rng(0)
        voxels = np.where(lesion, 40.0, -900.0) + rng.normal(0, 20, lesion.shape)
        volumeNode = slicer.util.addVolumeFromArray(voxels.astype(np.int16), name="synthetic CT")
        volumeNode.SetSpacing(0.8, 0.8, 2.0)
        labelNode = slicer.util.addVolumeFromArray(lesion.astype(np.uint8), nodeClassName="vtkMRMLLabelMapVolumeNode")
        labelNode.CopyOrientation(volumeNode)
        segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(labelNode, segmentationNode)
        segmentId = segmentationNode.GetSegmentation().GetNthSegmentID(0)

        table = RadFusionScreenLogic().extractFeatures(volumeNode, segmentationNode, segmentId, modality="CT")
        values = {table.GetCellText(row, 0): table.GetCellText(row, 1) for row in range(table.GetNumberOfRows())}
        self.assertIn("original_shape_MeshVolume", values)
        self.assertTrue(any(name.startswith("deep_") for name in values))
        volume_mm3 = float(values["original_shape_VoxelVolume"])
        self.assertAlmostEqual(volume_mm3, lesion.sum() * 0.8 * 0.8 * 2.0, delta=1e-3 * volume_mm3)
        self.delayDisplay("Test passed")

