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
GLUE_DIR = MODULE_DIR / "RadFusionScreenLib" / "slicer_glue"
# Files that use the panel's widgets (self.ui.NAME) and the parameter node.
PANEL_FILES = (MODULE_FILE, GLUE_DIR / "widget_controller.py", GLUE_DIR / "scene_logic.py")


def panel_source() -> str:
    return "\n".join(path.read_text() for path in PANEL_FILES)

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
    used = set(re.findall(r"self\.ui\.(\w+)", panel_source()))
    assert len(used) >= 20, "the widget uses few self.ui names: the check would be nearly vacuous"
    missing = used - set(_ui_widgets())
    assert not missing, f"widgets used by the panel but absent from the .ui: {sorted(missing)}"


def test_parameter_node_fields_the_code_uses_exist():
    fields = _parameter_node_fields()
    text = panel_source()
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
    assert classes == expected, "the module file holds the template's classes and nothing else"
    functions = [node.name for node in tree.body if isinstance(node, ast.FunctionDef)]
    assert not functions, f"module-level functions belong in slicer_glue: {functions}"
    lines = len(MODULE_FILE.read_text().splitlines())
    assert lines <= 300, f"RadFusionScreen.py has {lines} lines: the module file must stay thin"
    for path in (MODULE_DIR / "RadFusionScreenLib").rglob("*.py"):
        if GLUE_DIR in path.parents:
            continue  # the one place that imports slicer / qt / ctk
        assert not re.search(r"^\s*(import|from)\s+(qt|ctk|slicer)\b", path.read_text(), re.M), path


def test_module_file_and_logic_import_without_qt():
    """Only the widget controller and the process / install / hand-off modules import qt or ctk,
    so the module file and the Logic run headless (slicer-core, tests, PythonSlicer)."""
    for path in (MODULE_FILE, GLUE_DIR / "scene_logic.py", GLUE_DIR / "mrml.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                modules = {a.name for a in node.names} | {getattr(node, "module", None) or ""}
                assert not {m.split(".")[0] for m in modules} & {"qt", "ctk"}, f"{path.name} imports Qt"
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


def test_the_panel_opens_before_the_engine_packages_are_installed():
    """The module file, the widget controller and everything they import at module level need
    only the standard library, Slicer itself and packages Slicer 5.12 bundles: the install offer
    comes at Analyze, so a fresh Slicer (no torch, pandas, pyradiomics) must still open the panel."""
    import sys

    allowed = set(sys.stdlib_module_names) | {"numpy", "SimpleITK", "pydicom", "packaging", "vtk", "slicer", "qt",
                                              "ctk", "RadFusionScreenLib"}
    engine = MODULE_DIR / "RadFusionScreenLib"
    queue, seen, offending = [MODULE_FILE, GLUE_DIR / "widget_controller.py"], set(), []
    while queue:
        path = queue.pop()
        if path in seen or not path.is_file():
            continue
        seen.add(path)
        for node in ast.parse(path.read_text()).body:  # module level only: function bodies import lazily
            assert not (isinstance(node, ast.ImportFrom) and node.level), f"{path}: relative import"
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
                for name in names:
                    top = name.split(".")[0]
                    if top not in allowed:
                        offending.append(f"{path.relative_to(MODULE_DIR)}: {name}")
                    if top == "RadFusionScreenLib":
                        submodules = [a.name for a in node.names] if isinstance(node, ast.ImportFrom) else []
                        queue += _engine_files(engine, name.split(".")[1:], submodules)
    assert len(seen) >= 6, f"the walk found too few files: {sorted(p.name for p in seen)}"
    assert not offending, f"imports that need the engine's packages before they are installed: {offending}"


def _engine_files(engine: Path, parts: list[str], names: list[str]) -> list[Path]:
    """The files an import of ``RadFusionScreenLib.<parts>`` (``from ... import <names>``) runs:
    every enclosing package's ``__init__``, the module itself, and imported sub-modules."""
    files = [engine.joinpath(*parts[:depth], "__init__.py") for depth in range(len(parts) + 1)]
    target = engine.joinpath(*parts)
    files += [target.with_suffix(".py")] + [target / f"{name}.py" for name in names]
    files += [target / name / "__init__.py" for name in names]
    return files


def test_extension_metadata_is_true():
    """Slicer 5.12, the PyTorch extension, and no link to a repository that does not exist:
    every metadata path is a file of this repository (the screenshot included)."""
    cmake = (MODULE_DIR.parent / "CMakeLists.txt").read_text()
    metadata = dict(re.findall(r'set\((EXTENSION_\w+) "([^"]*)"\)', cmake))
    assert metadata["EXTENSION_DEPENDS"] == "PyTorch"
    assert "Slicer 5.12" in metadata["EXTENSION_DESCRIPTION"]
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        for value in metadata[key].split():
            assert "://" not in value, f"{key} points outside this repository: {value}"
            assert (MODULE_DIR.parent / value).is_file(), f"{key}: {value} does not exist"
