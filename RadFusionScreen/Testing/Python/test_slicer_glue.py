"""The module's GUI glue against Slicer 5.12's own code (../shared/slicer-5.12), not stand-ins.

- every ``SlicerParameterName`` binding of the ``.ui`` goes through Slicer's real
  ``createGuiConnector`` with the parameter node's real annotations (a ``str`` on a
  ``QComboBox`` without ``Choice`` or an unbounded ``float`` on a ``ctkSliderWidget`` raise
  there exactly as in Slicer);
- every method / property the module uses on a ``.ui`` widget of a Slicer or CTK class exists
  in that class's header (public slots, ``Q_INVOKABLE``, ``Q_PROPERTY``, signals, base classes);
- the Logic's hand-offs on real MRML (the new lesion segment is *named* "lesion").
"""

from __future__ import annotations

import ast
import typing

import pytest

import slicer_code
from mrml_scene import headless_scene, import_module_file
from test_module_static import _bindings, _ui_widgets, panel_source

# Qt base classes have no header in the shared folder: the plain Qt API PythonQt exposes that the
# module uses on them (QWidget properties, QAbstractButton / QComboBox / QLabel / QTextBrowser).
QT_API = {
    "QWidget": {"enabled", "visible", "toolTip", "setEnabled", "setVisible", "connect", "setMRMLScene"},
    "QAbstractButton": {"text", "checked", "clicked", "toggled", "setText", "setChecked"},
    "QTableView": {"setModel"},
}


@pytest.fixture(scope="module")
def module():
    return import_module_file()


def test_every_binding_connects_through_slicers_own_gui_connector(module):
    from slicer.parameterNodeWrapper import createGuiConnector

    hints = typing.get_type_hints(module.RadFusionScreenParameterNode, include_extras=True)
    bound = _bindings()
    assert {"inputVolume", "inputSegmentation", "device", "heatmapOpacity", "heatmapVisible"} <= {
        parameter for _, parameter in bound.values()}
    for name, (element, parameter) in bound.items():
        assert parameter in hints, f"{name}: SlicerParameterName {parameter!r} is not a parameter-node field"
        createGuiConnector(slicer_code.widget(element.get("class")), hints[parameter])  # raises as Slicer does


def _ui_attribute_uses() -> dict[str, set[str]]:
    """``self.ui.NAME.attribute`` uses in the panel's files: NAME -> attributes."""
    uses: dict[str, set[str]] = {}
    for node in ast.walk(ast.parse(panel_source())):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
                and isinstance(node.value.value, ast.Attribute) and node.value.value.attr == "ui"):
            uses.setdefault(node.value.attr, set()).add(node.attr)
    return uses


def _exposed(class_name: str) -> set[str] | None:
    """Everything PythonQt exposes on a Slicer/CTK class, following its bases; None for plain Qt."""
    names: set[str] = set()
    current, seen_header = class_name, False
    while current:
        api = slicer_code.header_api(current)
        if api is None:
            names |= QT_API.get(current, set()) | QT_API["QWidget"]
            break
        seen_header = True
        names |= api
        current = slicer_code.header_base(current)
    return names if seen_header else None


def test_every_method_used_on_a_slicer_or_ctk_widget_is_in_its_header():
    widgets = _ui_widgets()
    checked = 0
    for name, attributes in _ui_attribute_uses().items():
        exposed = _exposed(widgets[name].get("class"))
        if exposed is None:
            continue  # a plain Qt class: no header here
        unknown = sorted(a for a in attributes if a not in exposed)
        assert not unknown, f"{name} ({widgets[name].get('class')}) has no {unknown} in Slicer 5.12's headers"
        checked += 1
    assert checked >= 3, "segment selector, slider and collapsible/node widgets must be checked"


def test_a_new_lesion_segment_is_named_lesion(module):
    with headless_scene() as scene:
        segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        segment_id = module.RadFusionScreenLogic.addLesionSegment(segmentation)
        assert segmentation.GetSegmentation().GetSegment(segment_id).GetName() == "lesion"
