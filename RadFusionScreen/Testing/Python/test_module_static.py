"""Static checks of the Slicer module (the Qt GUI cannot run here, so it is parsed, not run)."""

from __future__ import annotations

import ast
import re
import xml.etree.ElementTree as ET
from pathlib import Path

MODULE_DIR = Path(__file__).resolve().parents[2]
MODULE_FILE = MODULE_DIR / "RadFusionScreen.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "RadFusionScreen.ui"


def _ui_widgets() -> dict[str, ET.Element]:
    root = ET.parse(UI_FILE).getroot()
    return {w.get("name"): w for w in root.iter("widget")}


def _parameter_node_fields() -> set[str]:
    tree = ast.parse(MODULE_FILE.read_text())
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "RadFusionScreenParameterNode":
            return {item.target.id for item in node.body if isinstance(item, ast.AnnAssign)}
    raise AssertionError("RadFusionScreenParameterNode not found")


def test_every_ui_name_the_code_uses_exists_in_the_ui_file():
    used = set(re.findall(r"self\.ui\.(\w+)", MODULE_FILE.read_text()))
    assert used, "the widget uses no self.ui names: the check would be vacuous"
    missing = used - set(_ui_widgets())
    assert not missing, f"widgets used in RadFusionScreen.py but absent from the .ui: {sorted(missing)}"


def test_gui_bindings_name_real_parameter_node_fields():
    fields = _parameter_node_fields()
    bound = {}
    for name, widget in _ui_widgets().items():
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[name] = prop.findtext("string")
    assert bound, "no widget is bound to the parameter node"
    unknown = {w: p for w, p in bound.items() if p not in fields}
    assert not unknown, f"SlicerParameterName values without a parameter-node field: {unknown}"


def test_module_follows_the_template_split_and_keeps_engine_out():
    tree = ast.parse(MODULE_FILE.read_text())
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
