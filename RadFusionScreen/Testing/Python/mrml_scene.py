"""Headless Slicer MRML (slicer-core) for Logic tests: a real scene with the module logics
that Volumes, Segmentations, Subject hierarchy and Tables need, optionally the slice views'
logics (they blend layers without OpenGL). No Qt, no rendering.

:func:`import_module_file` imports ``RadFusionScreen.py`` itself, on Slicer 5.12's own
ScriptedLoadableModule, parameterNodeWrapper and i18n (:mod:`slicer_code`), which slicer-core
lacks.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
import tempfile
import types
from contextlib import contextmanager
from pathlib import Path

import pytest

import slicer_code

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
    """``RadFusionScreen/RadFusionScreen.py`` imported as the module ``RadFusionScreen``, on Slicer
    5.12's own ScriptedLoadableModule / parameterNodeWrapper / i18n (see :mod:`slicer_code`)."""
    slicer_code.install()
    path = Path(__file__).resolve().parents[2] / "RadFusionScreen.py"
    spec = importlib.util.spec_from_file_location("RadFusionScreen", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


