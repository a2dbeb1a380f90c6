"""Headless Slicer MRML (slicer-core) for Logic tests: a real scene with the module logics
that Volumes, Segmentations, Subject hierarchy and Tables need. No Qt, no rendering."""

from __future__ import annotations

import types
from contextlib import contextmanager

import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core (headless MRML) is not installed")


@contextmanager
def headless_scene():
    """A fresh scene wired into `slicer.mrmlScene` and `slicer.modules.<name>.logic()`."""
    import vtk

    scene = slicer.vtkMRMLScene()
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
    try:
        yield scene
    finally:
        app_logic.SetSliceLogics(None)
        app_logic.SetViewLogics(None)
        scene.Clear(1)
        slicer.mrmlScene, slicer.modules, _ = previous
