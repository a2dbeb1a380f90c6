"""Static checks of the Slicer module (the Qt GUI cannot run here, so it is parsed, not run)."""

from __future__ import annotations

import ast
import re
import xml.etree.ElementTree as ET
from pathlib import Path

MODULE_DIR = Path(__file__).resolve().parents[2]
MODULE_FILE = MODULE_DIR / "RadFusionScreen.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "RadFusionScreen.ui"
CMAKE_FILE = MODULE_DIR / "CMakeLists.txt"

WRAPPER_METHODS = {"connectGui", "disconnectGui", "parameterNode"}


def _ui_root() -> ET.Element:
    return ET.parse(UI_FILE).getroot()


def _ui_widgets() -> dict[str, ET.Element]:
    return {w.get("name"): w for w in _ui_root().iter("widget")}


def _module_tree() -> ast.Module:
    return ast.parse(MODULE_FILE.read_text())


def _parameter_node_fields() -> dict[str, str]:
    """Field name → annotation (as source text) of RadFusionScreenParameterNode."""
    for node in _module_tree().body:
        if isinstance(node, ast.ClassDef) and node.name == "RadFusionScreenParameterNode":
            assert any(ast.unparse(d) == "parameterNodeWrapper" for d in node.decorator_list)
            return {item.target.id: ast.unparse(item.annotation)
                    for item in node.body if isinstance(item, ast.AnnAssign)}
    raise AssertionError("RadFusionScreenParameterNode not found")


def _bindings() -> dict[str, tuple[ET.Element, str]]:
    bound = {}
    for name, widget in _ui_widgets().items():
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[name] = (widget, prop.findtext("string"))
    return bound


def test_every_ui_name_the_code_uses_exists_in_the_ui_file():
    used = set(re.findall(r"self\.ui\.(\w+)", MODULE_FILE.read_text()))
    assert len(used) >= 20, "the widget uses few self.ui names: the check would be nearly vacuous"
    missing = used - set(_ui_widgets())
    assert not missing, f"widgets used in RadFusionScreen.py but absent from the .ui: {sorted(missing)}"


def test_parameter_node_fields_the_code_uses_exist():
    fields = _parameter_node_fields()
    text = MODULE_FILE.read_text()
    used = set(re.findall(r"(?:self\._parameterNode|parameterNode)\.([a-z]\w*)", text)) - WRAPPER_METHODS
    assert {"probability", "featureTable", "heatmapVolume", "resultJson"} <= used
    missing = used - set(fields)
    assert not missing, f"parameter-node fields used but not declared: {sorted(missing)}"


def test_ui_declares_its_custom_widgets_and_gives_mrml_widgets_the_scene():
    root = _ui_root()
    declared = {c.findtext("class") for c in root.iter("customwidget")}
    used = {w.get("class") for w in root.iter("widget")}
    custom = {c for c in used if not c.startswith("Q")}
    assert custom <= declared, f"custom widgets without a <customwidget> entry: {sorted(custom - declared)}"
    scene_receivers = {c.findtext("receiver") for c in root.iter("connection")
                       if c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"}
    needs_scene = {name for name, w in _ui_widgets().items()
                   if w.get("class").startswith("qMRML") and w.get("class") != "qMRMLWidget"}
    missing = needs_scene - scene_receivers
    assert not missing, f"qMRML widgets without setMRMLScene: {sorted(missing)}"


def test_module_follows_the_template_split_and_keeps_engine_out():
    tree = _module_tree()
    classes = {node.name for node in tree.body if isinstance(node, ast.ClassDef)}
    expected = {"RadFusionScreen", "RadFusionScreenParameterNode", "RadFusionScreenWidget",
                "RadFusionScreenLogic", "RadFusionScreenTest"}
    assert expected <= classes
    engine_dir = MODULE_DIR / "RadFusionScreenLib"
    for path in engine_dir.rglob("*.py"):
        text = path.read_text()
        assert not re.search(r"^\s*(import|from)\s+(qt|ctk|slicer\.app)\b", text, re.M), path
        if path.name != "mrml.py":  # the one MRML adapter imports slicer lazily, inside functions
            assert not re.search(r"^\s*(import|from)\s+slicer\b", text, re.M), path


def test_logic_and_module_import_without_qt():
    """qt / ctk are imported only under a guard, and the Logic's code never touches them, so the
    Logic runs headless (slicer-core, tests, PythonSlicer)."""
    tree = _module_tree()
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = {a.name.split(".")[0] for a in node.names} | {getattr(node, "module", None) or ""}
            assert not names & {"qt", "ctk"}, "unguarded top-level import of qt / ctk"
    logic = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "RadFusionScreenLogic")
    qt_uses = [n.id for n in ast.walk(logic) if isinstance(n, ast.Name) and n.id in ("qt", "ctk")]
    assert not qt_uses, "the Logic uses Qt"
    help_text = MODULE_FILE.read_text()
    assert "not for clinical use without local validation" in help_text and "CITATION" in help_text


def test_cmake_builds_every_script_and_resource_with_tests():
    cmake = CMAKE_FILE.read_text()
    assert re.search(r"slicerMacroBuildScriptedModule\((?:.|\n)*WITH_GENERIC_TESTS", cmake)
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in cmake
    assert "${MODULE_NAME}.py" in cmake and "${MODULE_NAME}Lib/*.py" in cmake and "GLOB_RECURSE" in cmake
    resources = [p.relative_to(MODULE_DIR).as_posix() for p in (MODULE_DIR / "Resources").rglob("*") if p.is_file()]
    for resource in resources:
        listed = resource.replace("RadFusionScreen", "${MODULE_NAME}")
        assert resource in cmake or listed in cmake, f"{resource} is not listed in CMakeLists.txt"
    assert "../models" in cmake, "the shipped model bundles must travel with the module"
    assert "${MODULE_NAME}Lib/keys/*.pub" in cmake and "${MODULE_NAME}Lib/keys/*.json" in cmake, "bundle trust files"
