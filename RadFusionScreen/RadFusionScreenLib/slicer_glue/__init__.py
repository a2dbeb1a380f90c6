"""The Slicer glue: the only part of the engine that imports ``slicer``, ``qt`` or ``ctk``.

``RadFusionScreen.py`` (the scripted module) stays thin and delegates here:

- :mod:`.mrml`: MRML nodes <-> SimpleITK images and tables, the all-or-nothing scene transaction;
- :mod:`.scene_logic`: the Logic's work (screen a segment, write results into the scene);
- :mod:`.engine_process`: the background ``PythonSlicer -m RadFusionScreenLib screen`` run,
  whose Cancel ends the whole process tree;
- :mod:`.packages`: installing what the engine needs, the Slicer way (PyTorch extension for
  torch, ``slicer.packaging.pip_ensure`` for the rest, nothing Slicer bundles is touched);
- :mod:`.dicom_loading`: "Load DICOM folder", with DICOM SEG / RTSTRUCT loaded by the engine
  when Slicer's own plugins for them are not installed;
- :mod:`.widget_controller`: the panel's behaviour behind the module's Widget.

Everything else in ``RadFusionScreenLib`` runs without Slicer.
"""
