"""Headless Slicer MRML (slicer-core) for Logic tests: a real scene with the module logics
that Volumes, Segmentations, Subject hierarchy and Tables need, optionally the slice views'
logics (they blend layers without OpenGL). No Qt, no rendering.

:func:`import_module_file` imports ``RadFusionScreen.py`` itself: slicer-core lacks the three
Slicer-application modules it imports (ScriptedLoadableModule, parameterNodeWrapper, i18n),
so minimal stand-ins are installed for those (and only when the real ones are absent).
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import sys
import tempfile
import types
import typing
import unittest
from contextlib import contextmanager
from pathlib import Path

import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core (headless MRML) is not installed")


_SLICE_LOGICS: dict[int, dict[str, object]] = {}


@contextmanager
def headless_scene(slice_views: bool = False):
    """A fresh scene wired into `slicer.mrmlScene` and `slicer.modules.<name>.logic()`.

    ``slice_views``: also the default layout's slice nodes (Red, Green, Yellow), each with a
    slice logic and so a slice composite node; see :func:`slice_logic`. The scene can write
    and read MRB bundles (cache and data I/O managers are set).
    """
    import vtk

    scene = slicer.vtkMRMLScene()
    cache = slicer.vtkCacheManager()
    cache_dir = tempfile.TemporaryDirectory(prefix="mrml-cache-")
    cache.SetRemoteCacheDirectory(cache_dir.name)
    data_io = slicer.vtkDataIOManager()
    data_io.SetCacheManager(cache)
    scene.SetCacheManager(cache)
    scene.SetDataIOManager(data_io)
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    app_logic.GetColorLogic().SetMRMLScene(scene)
    app_logic.SetSliceLogics(vtk.vtkCollection())
    app_logic.SetViewLogics(vtk.vtkCollection())
    logics = {
        "volumes": slicer.vtkSlicerVolumesLogic(),
        "segmentations": slicer.vtkSlicerSegmentationsModuleLogic(),
        "subjecthierarchy": slicer.vtkSlicerSubjectHierarchyModuleLogic(),
        "tables": slicer.vtkSlicerTablesLogic(),
    }
    module_names = {"volumes": "Volumes", "segmentations": "Segmentations",
                    "subjecthierarchy": "SubjectHierarchy", "tables": "Tables"}
    for key, logic in logics.items():
        logic.SetMRMLScene(scene)
        logic.SetMRMLApplicationLogic(app_logic)
        app_logic.SetModuleLogic(module_names[key], logic)
    previous = (getattr(slicer, "mrmlScene", None), getattr(slicer, "modules", None), getattr(slicer, "app", None))
    slicer.mrmlScene = scene
    slicer.modules = types.SimpleNamespace(
        **{key: types.SimpleNamespace(logic=(lambda logic=logic: logic)) for key, logic in logics.items()}
    )
    layout_logic = None
    if slice_views:
        layout_logic = slicer.vtkMRMLLayoutLogic()
        layout_logic.SetMRMLScene(scene)
        _SLICE_LOGICS[id(scene)] = {}
        for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceNode")):
            slice_node = scene.GetNthNodeByClass(i, "vtkMRMLSliceNode")
            logic = slicer.vtkMRMLSliceLogic()
            logic.SetMRMLScene(scene)
            logic.SetMRMLApplicationLogic(app_logic)
            logic.SetSliceNode(slice_node)
            app_logic.GetSliceLogics().AddItem(logic)
            _SLICE_LOGICS[id(scene)][slice_node.GetLayoutName()] = logic
    try:
        yield scene
    finally:
        # Slice and layout logics must let go of the scene before Clear (else a segfault).
        for logic in _SLICE_LOGICS.pop(id(scene), {}).values():
            logic.SetMRMLScene(None)
        if layout_logic is not None:
            layout_logic.SetMRMLScene(None)
        app_logic.SetSliceLogics(None)
        app_logic.SetViewLogics(None)
        scene.Clear(1)
        cache_dir.cleanup()
        slicer.mrmlScene, slicer.modules, _ = previous


def slice_logic(scene, name: str = "Red"):
    """The slice logic of a slice view of a ``headless_scene(slice_views=True)``."""
    return _SLICE_LOGICS[id(scene)][name]


# ----------------------------------------------------------------- the module file


@functools.lru_cache(maxsize=1)
def import_module_file() -> types.ModuleType:
    """``RadFusionScreen/RadFusionScreen.py`` imported as the module ``RadFusionScreen``."""
    _install_stand_ins()
    path = Path(__file__).resolve().parents[2] / "RadFusionScreen.py"
    spec = importlib.util.spec_from_file_location("RadFusionScreen", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _install_stand_ins() -> None:
    for name, build in (("i18n", _i18n), ("ScriptedLoadableModule", _scripted_loadable_module),
                        ("parameterNodeWrapper", _parameter_node_wrapper)):
        full_name = f"slicer.{name}"
        if full_name in sys.modules or importlib.util.find_spec(full_name) is not None:
            continue  # the real one (inside Slicer)
        module = types.ModuleType(full_name)
        build(module)
        sys.modules[full_name] = module
        setattr(slicer, name, module)


def _i18n(module: types.ModuleType) -> None:
    module.tr = lambda text: text
    module.translate = lambda context, text: text


def _scripted_loadable_module(module: types.ModuleType) -> None:
    class ScriptedLoadableModule:
        def __init__(self, parent):
            self.parent = parent
            self.moduleName = type(self).__name__

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent=None):
            self.parent = parent

    class ScriptedLoadableModuleLogic:
        def __init__(self, parent=None):
            self.moduleName = type(self).__name__.removesuffix("Logic")
            self.isSingletonParameterNode = True

    class ScriptedLoadableModuleTest(unittest.TestCase):
        def delayDisplay(self, message, requestedDelay=None, msec=None):
            logging.info(message)

    for cls in (ScriptedLoadableModule, ScriptedLoadableModuleWidget, ScriptedLoadableModuleLogic,
                ScriptedLoadableModuleTest):
        setattr(module, cls.__name__, cls)


def _parameter_node_wrapper(module: types.ModuleType) -> None:
    """Typed properties over a vtkMRMLScriptedModuleNode, stored as Slicer's wrapper stores
    them: node references (plus an empty parameter), "True"/"False", str() of numbers."""

    def parameterNodeWrapper(cls):
        hints = typing.get_type_hints(cls)
        defaults = {name: getattr(cls, name, None) for name in hints}

        def __init__(self, node):
            self.parameterNode = node
            for name, kind in hints.items():
                if not node.HasParameter(name):
                    _write(node, name, kind, defaults[name])

        attributes = {"__init__": __init__, "__doc__": cls.__doc__}
        for name, kind in hints.items():
            attributes[name] = property(
                lambda self, name=name, kind=kind: _read(self.parameterNode, name, kind),
                lambda self, value, name=name, kind=kind: _write(self.parameterNode, name, kind, value))
        return type(cls.__name__, (), attributes)

    module.parameterNodeWrapper = parameterNodeWrapper


def _is_node_type(kind) -> bool:
    return isinstance(kind, type) and issubclass(kind, slicer.vtkMRMLNode)


def _write(node, name: str, kind, value) -> None:
    if _is_node_type(kind):
        node.SetParameter(name, "")
        node.SetNodeReferenceID(name, value.GetID() if value is not None else None)
    elif kind is bool:
        node.SetParameter(name, "True" if value else "False")
    else:
        node.SetParameter(name, "" if value is None else str(value))


def _read(node, name: str, kind):
    if _is_node_type(kind):
        return node.GetNodeReference(name)
    text = node.GetParameter(name)
    if kind is bool:
        return text == "True"
    return kind(text) if kind in (int, float) else text
