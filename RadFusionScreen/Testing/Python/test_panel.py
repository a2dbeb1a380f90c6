"""The Analyze process as Slicer runs it: the command the panel builds, started through a
launcher (like ``PythonSlicer``, a CTK launcher whose child is ``python-real``), from another
working directory, with the module folder on PYTHONPATH; JSON on stdout, the error's last line
on stderr, exit codes; Cancel ends the whole tree; a start failure ends the busy state.

Stand-ins: Qt's compiled ``QProcess`` is :mod:`fake_qprocess` (it really runs the processes);
the ``.ui`` widgets are Slicer-code placeholders (:mod:`slicer_code`). The controller, the
engine process wrapper, the Logic, the parameter node and the scene are the real ones.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

import fake_qprocess
import slicer_code
from mrml_scene import headless_scene, import_module_file, slicer  # skips without slicer-core

TREE_SCRIPT = textwrap.dedent("""
    import multiprocessing, sys, time
    def work():
        time.sleep(120)
    if __name__ == "__main__":
        multiprocessing.set_start_method("spawn")
        workers = [multiprocessing.Process(target=work) for _ in range(2)]
        for worker in workers:
            worker.start()
        print("workers started", flush=True)
        time.sleep(120)
""")


@pytest.fixture()
def qt_process(monkeypatch):
    """Qt's QProcess / QProcessEnvironment replaced by the subprocess-backed stand-in."""
    slicer_code.install()
    import qt

    monkeypatch.setattr(qt, "QProcess", fake_qprocess.QProcess, raising=False)
    monkeypatch.setattr(qt, "QProcessEnvironment", fake_qprocess.QProcessEnvironment, raising=False)
    monkeypatch.setattr(qt, "QByteArray", fake_qprocess.QByteArray, raising=False)
    fake_qprocess.QProcess.started.clear()
    return fake_qprocess.QProcess


@pytest.fixture()
def launcher(tmp_path) -> Path:
    """An executable that starts the real interpreter as its child and waits for it, as
    PythonSlicer does (so killing only the launcher would leave the interpreter running)."""
    path = tmp_path / "PythonSlicer"
    path.write_text(f"#!{sys.executable}\nimport subprocess, sys\n"
                    "sys.exit(subprocess.call([sys.executable, *sys.argv[1:]]))\n")
    path.chmod(0o755)
    return path


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _wait_for_tree(pid: int, size: int, timeout: float = 60.0) -> list[psutil.Process]:
    """The tree once it has at least ``size`` processes and stopped growing for a second
    (multiprocessing may add its resource tracker)."""
    deadline = time.monotonic() + timeout
    tree, stable_since = [], None
    while time.monotonic() < deadline:
        current = _alive(_tree(pid))
        if len(current) != len(tree):
            tree, stable_since = current, time.monotonic()
        elif len(tree) >= size and time.monotonic() - stable_since > 1.0:
            return tree
        time.sleep(0.1)
    raise AssertionError(f"the process tree of {pid} did not reach {size} processes")


def _alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    return [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def test_killing_only_the_launcher_leaves_the_interpreter_and_workers_running(qt_process, launcher, tmp_path):
    """What Cancel did before: QProcess.kill() on PythonSlicer. The rest of the tree survives."""
    script = tmp_path / "tree.py"
    script.write_text(TREE_SCRIPT)
    process = qt_process()
    process.start(str(launcher), [str(script)])
    tree = _wait_for_tree(process.processId(), 4)  # launcher, interpreter, two workers (+ tracker)
    try:
        process.kill()
        process.waitForFinished(5000)
        time.sleep(0.5)
        survivors = _alive(tree)
        assert survivors == tree[1:], f"expected all but the launcher left running, got {survivors}"
    finally:
        from RadFusionScreenLib.slicer_glue.engine_process import killProcessTree

        for survivor in _alive(tree):
            killProcessTree(survivor.pid)


def test_cancel_ends_launcher_interpreter_and_workers(qt_process, launcher, tmp_path):
    from RadFusionScreenLib.slicer_glue.engine_process import EngineServer

    script = tmp_path / "tree.py"
    script.write_text(TREE_SCRIPT)
    runs = []
    engine = EngineServer(runs.append)
    engine.start(str(launcher), [str(script)], workingDirectory=str(tmp_path))
    engine.request(["screen", "image.nrrd", "mask.nrrd", "--json"])
    process = qt_process.started[-1]
    tree = _wait_for_tree(process.processId(), 4)
    before = len(_alive(tree))
    engine.cancel()
    time.sleep(0.2)
    after = len(_alive(tree))
    print(f"cancel: {before} processes before, {after} after")
    assert before >= 4 and after == 0
    assert len(runs) == 1 and runs[0].cancelled and not engine.busy and not engine.alive
    process.pump()  # Qt would deliver nothing more: the signals are disconnected
    assert len(runs) == 1


class FormLayout:
    """Stand-in for the compiled QFormLayout of the clinical-value form: its rows, in order."""

    def __init__(self, parent=None) -> None:
        self.rows = []

    def rowCount(self) -> int:
        return len(self.rows)

    def removeRow(self, row: int) -> None:
        del self.rows[row]

    def addRow(self, label, editor) -> None:
        self.rows.append((label, editor))


class ComboBox(slicer_code.Placeholder):
    """Stand-in for the compiled QComboBox of the model list: its items (text, data) and current index."""

    def __init__(self) -> None:
        super().__init__()
        self.__dict__.update(items=[], currentIndex=-1)

    @property
    def count(self) -> int:
        return len(self.items)

    def clear(self) -> None:
        self.items.clear()

    def addItem(self, text, data="") -> None:
        self.items.append((text, data))

    def insertItem(self, index, text, data="") -> None:
        self.items.insert(index, (text, data))

    def itemData(self, index):
        return self.items[index][1]

    def findData(self, data) -> int:
        return next((i for i, (_, d) in enumerate(self.items) if d == data), -1)

    def setCurrentIndex(self, index) -> None:
        self.__dict__["currentIndex"] = index


@pytest.fixture()
def panel(qt_process, monkeypatch):
    """The real controller on a headless scene, its parameter node, and recorded message boxes."""
    module = import_module_file()
    import qt

    from RadFusionScreenLib.slicer_glue import widget_controller

    monkeypatch.setattr(qt, "QFormLayout", FormLayout, raising=False)

    shown = []
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda text, **kwargs: shown.append(text), raising=False)
    with headless_scene() as scene:
        logic = module.RadFusionScreenLogic(scene)
        ui = type("UI", (), {})()
        for name in slicer_code_ui_names():
            setattr(ui, name, slicer_code.Placeholder())
        ui.modelComboBox = ComboBox()
        resources = Path(module.__file__).parent / "Resources"
        controller = widget_controller.WidgetController(ui, logic, lambda name: str(resources / name))
        controller.parameterNode = logic.getParameterNode()
        yield controller, logic, scene, shown


def slicer_code_ui_names() -> list[str]:
    from test_module_static import _ui_widgets

    return list(_ui_widgets())


def _case(scene):
    from RadFusionScreenLib.inputs.phantoms import synthetic_ultrasound
    from RadFusionScreenLib.slicer_glue import mrml

    image, mask = synthetic_ultrasound()
    volume = mrml.sitk_to_volume_node(image, "synthetic ultrasound", scene)
    label = mrml.sitk_to_volume_node(mask, "lesion", scene, class_name="vtkMRMLLabelMapVolumeNode")
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "lesion")
    assert slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(label, segmentation)
    mrml.remove_node(scene, label)
    return volume, segmentation, segmentation.GetSegmentation().GetNthSegmentID(0)


def _select(controller, scene):
    node = controller.parameterNode
    node.inputVolume, node.inputSegmentation, node.segmentId = _case(scene)
    return node


def _analyze(controller) -> fake_qprocess.QProcess:
    """Click Analyze and let Qt's event loop run until the request is answered."""
    controller.onAnalyze()
    process = fake_qprocess.QProcess.started[-1]
    fake_qprocess.run_until(process, lambda: not controller.engine.busy)
    return process


def test_analyze_runs_the_warm_engine_as_slicer_does_and_fills_the_scene(panel, launcher, monkeypatch):
    from RadFusionScreenLib.slicer_glue import widget_controller
    from RadFusionScreenLib.core.locations import MODULE_DIR

    controller, logic, scene, shown = panel
    monkeypatch.setattr(widget_controller, "pythonExecutable", lambda: str(launcher))
    node = _select(controller, scene)
    expected = logic.getScreener().screen(*logic.exportCase(node.inputVolume, node.inputSegmentation,
                                                            node.segmentId)).probability

    controller.onAnalyze()
    process = fake_qprocess.QProcess.started[-1]
    assert controller.engine.busy and not controller.ui.analyzeButton.enabled and controller.ui.cancelButton.enabled
    assert process.program == str(launcher) and process.arguments[:3] == ["-m", "RadFusionScreenLib", "serve"]
    assert process.arguments[process.arguments.index("--model") + 1] == str(logic.resolveModelPath(""))
    assert Path(process.workingDirectory) != Path.cwd()
    assert process.environment.value("PYTHONPATH").split(os.pathsep)[0] == str(MODULE_DIR)
    fake_qprocess.run_until(process, lambda: not controller.engine.busy)

    assert not shown, shown
    assert controller.engine.alive, "the engine stays up, warm, for the next click"
    assert controller.ui.progressBar.visible is False and str(controller.ui.statusLabel.text).startswith("Done in")
    assert node.probability == pytest.approx(expected, abs=1e-9)
    assert json.loads(node.resultJson)["probability"] == node.probability
    assert node.heatmapVolume is not None and node.featureTable.GetNumberOfRows() > 0
    calibration = str(controller.ui.thresholdLabel.text).split("Calibration: ")[1]
    assert calibration and calibration != "not recorded", "the panel says how well the probability is calibrated"

    count = scene.GetNumberOfNodes()
    _analyze(controller)  # the second click: same engine process, outputs replaced
    assert len(fake_qprocess.QProcess.started) == 1, "a later Analyze must reuse the warm engine"
    assert node.probability == pytest.approx(expected, abs=1e-9) and scene.GetNumberOfNodes() == count
    controller.shutdown()
    assert not controller.engine.alive and process.popen.poll() is not None


def test_an_engine_error_shows_its_last_line_and_changes_nothing(panel, launcher, monkeypatch):
    from RadFusionScreenLib.slicer_glue import widget_controller

    controller, logic, scene, shown = panel
    monkeypatch.setattr(widget_controller, "pythonExecutable", lambda: str(launcher))
    node = _select(controller, scene)
    node.modelPath = str(Path(controller.resourcePath("requirements.txt")).parent)  # not a bundle
    count = scene.GetNumberOfNodes()
    _analyze(controller)
    assert len(shown) == 1 and "is not a model bundle" in shown[0], shown
    assert "is not a model bundle" in str(controller.ui.statusLabel.text)
    assert scene.GetNumberOfNodes() == count and node.probability == -1.0
    assert not controller.engine.busy and controller.ui.progressBar.visible is False
    assert controller.engine.alive, "a bad case does not end the engine"
    controller.shutdown()


def test_a_process_that_cannot_start_ends_the_busy_state(panel, tmp_path, monkeypatch):
    from RadFusionScreenLib.slicer_glue import widget_controller

    controller, logic, scene, shown = panel
    monkeypatch.setattr(widget_controller, "pythonExecutable", lambda: str(tmp_path / "no-such-PythonSlicer"))
    _select(controller, scene)
    controller.onAnalyze()
    assert controller.engine.busy
    job_folder = controller._job["folder"]
    fake_qprocess.run_until_finished(fake_qprocess.QProcess.started[-1])
    assert not controller.engine.busy and not controller.engine.alive, "the busy state must end"
    assert controller.ui.progressBar.visible is False and controller.ui.analyzeButton.enabled
    assert len(shown) == 1 and "could not be started" in shown[0]
    assert not Path(job_folder).exists()


def test_an_engine_that_dies_during_a_case_is_reported_and_restarted(panel, launcher, monkeypatch, tmp_path):
    from RadFusionScreenLib.slicer_glue import widget_controller

    controller, logic, scene, shown = panel
    dying = tmp_path / "dying.py"
    dying.write_text("import sys\nsys.stdin.readline()\nprint('out of memory', file=sys.stderr)\nsys.exit(3)\n")
    monkeypatch.setattr(widget_controller, "pythonExecutable", lambda: str(launcher))
    start = controller.engine.start
    monkeypatch.setattr(controller.engine, "start", lambda program, arguments, **kw: start(program, [str(dying)], **kw))
    node = _select(controller, scene)
    _analyze(controller)
    assert len(shown) == 1 and "the engine stopped (exit code 3)" in shown[0], shown
    assert not controller.engine.busy and not controller.engine.alive and node.probability == -1.0
    monkeypatch.setattr(controller.engine, "start", start)
    _analyze(controller)  # the next click starts a new engine
    assert len(fake_qprocess.QProcess.started) == 2 and node.probability >= 0
    controller.shutdown()


def test_cancel_from_the_panel_ends_the_run_and_says_so(panel, launcher, monkeypatch, tmp_path):
    from RadFusionScreenLib.slicer_glue import widget_controller

    controller, logic, scene, shown = panel
    script = tmp_path / "tree.py"
    script.write_text(TREE_SCRIPT)
    monkeypatch.setattr(widget_controller, "pythonExecutable", lambda: str(launcher))
    start = controller.engine.start
    monkeypatch.setattr(controller.engine, "start", lambda program, arguments, **kw: start(program, [str(script)], **kw))
    node = _select(controller, scene)
    controller.onAnalyze()
    process = fake_qprocess.QProcess.started[-1]
    tree = _wait_for_tree(process.processId(), 4)
    controller.onCancel()
    time.sleep(0.2)
    assert not _alive(tree)
    assert str(controller.ui.statusLabel.text) == "Analysis cancelled." and not shown
    assert not controller.engine.busy and not controller.engine.alive and node.probability == -1.0


def test_model_panel_reads_the_bundle_without_loading_the_cnn(panel, monkeypatch):
    from RadFusionScreenLib.serving import screening

    controller, logic, scene, shown = panel

    def no_cnn(*args, **kwargs):
        raise AssertionError("the model panel loaded the CNN")

    monkeypatch.setattr(screening, "_deep_extractor", no_cnn)
    monkeypatch.setattr(screening, "_radiomic_extractor", no_cnn)
    path = logic.availableModels()[0]
    controller.showModel(str(path))
    summary = str(controller.ui.modelSummaryLabel.text)
    assert summary.startswith(f"{path.name}:") and "Bundle digest" in summary, summary
    (card,), _ = controller.ui.modelCardBrowser.setMarkdown.calls[-1]
    assert card == (path / "README.md").read_text(encoding="utf-8")


def test_model_panel_without_packages_says_so_and_installs_nothing(panel, monkeypatch):
    from RadFusionScreenLib.slicer_glue import widget_controller

    controller, logic, scene, shown = panel

    def install(*args, **kwargs):
        raise AssertionError("showing a model must not install packages (it runs in setup())")

    monkeypatch.setattr(widget_controller, "missingPackages", lambda path: ["torch>=2.2", "lightgbm>=4.0"])
    monkeypatch.setattr(widget_controller, "ensurePackages", install)
    controller.showModel(str(logic.availableModels()[0]))
    summary = str(controller.ui.modelSummaryLabel.text)
    assert "not installed yet" in summary and "torch>=2.2" in summary, summary


def test_model_panel_is_rebuilt_after_the_install(panel, monkeypatch):
    from RadFusionScreenLib.slicer_glue import widget_controller

    controller, logic, scene, shown = panel
    missing = [["torch>=2.2"]]
    monkeypatch.setattr(widget_controller, "missingPackages", lambda path: missing[-1])
    monkeypatch.setattr(widget_controller, "ensurePackages", lambda *args: missing.append([]))
    controller.parameterNode.modelPath = str(logic.availableModels()[0])
    controller.selectModel(controller.parameterNode.modelPath)
    assert "not installed yet" in str(controller.ui.modelSummaryLabel.text)
    assert controller.installPackages()
    assert "Bundle digest" in str(controller.ui.modelSummaryLabel.text), "the panel must show the model now"


def test_default_model_follows_the_input_volumes_modality(panel, monkeypatch, tmp_path):
    """No model chosen: a CT volume shows the CT bundle, an ultrasound picture the ultrasound one,
    and the Analyze arguments carry the same bundle; a chosen model stays whatever the volume."""
    import json

    from RadFusionScreenLib.inputs.phantoms import synthetic_ct, synthetic_ultrasound
    from RadFusionScreenLib.slicer_glue import mrml

    controller, logic, scene, _ = panel
    models = tmp_path / "models"
    for name, modality in (("busi-ultrasound", "US"), ("lidc-ct-nodule", "CT")):
        (models / name).mkdir(parents=True)
        (models / name / "manifest.json").write_text(json.dumps({"extraction": {"modality": modality}}))
    monkeypatch.setenv("RADFUSION_MODELS", str(models))
    controller.populateModels()
    ct = mrml.sitk_to_volume_node(synthetic_ct(shape=(16, 48, 48))[0], "chest CT", scene)
    us = mrml.sitk_to_volume_node(synthetic_ultrasound()[0], "breast US", scene)
    combo = controller.ui.modelComboBox

    def shown():
        return combo.itemData(combo.currentIndex)

    controller.parameterNode.inputVolume = ct
    controller.updateGui()
    assert shown() == str((models / "lidc-ct-nodule").resolve())
    arguments = logic.screenArguments("i.nrrd", "m.nrrd", "h.nrrd", "", volumeNode=ct)
    assert arguments[arguments.index("--model") + 1] == shown()
    controller.parameterNode.inputVolume = us
    controller.updateGui()
    assert shown() == str((models / "busi-ultrasound").resolve())
    controller.parameterNode.modelPath = str(models / "busi-ultrasound")
    controller.parameterNode.inputVolume = ct
    controller.updateGui()
    assert shown() == str((models / "busi-ultrasound").resolve())
