"""The case report as files: the slice views through the lesion and the report page, with the
Slicer module's display conventions. Used by ``radfusion screen --report`` and ``radfusion demo``
(the Slicer module writes the same page from its scene, :mod:`..slicer_glue.scene_logic`).

The views are drawn by Slicer's own slice pipeline (slicer-core) when it is importable, else by
the engine's renderer with the same colours, threshold and outline
(:func:`..presentation.figures.render_views_engine`); the report says which.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from RadFusionScreenLib.core.files import write_text_atomically

#: Background window (low, high) per modality: a B-mode picture's full 8-bit range; CT in a lung
#: window (W 1500, L -600) where nodules are read.
GREY_WINDOWS = {"US": (0.0, 255.0), "CT": (-1350.0, 150.0)}
VIEW_HEIGHT = 360


def write_case_report(result: Any, image: sitk.Image, mask: sitk.Image, modality: str, path: str | os.PathLike,
                      description: str = "") -> Path:
    """The case report of a screened case (``result``, on ``image`` / ``mask``) as one HTML file."""
    views, renderer = case_views(image, mask, result.heatmap, modality)
    return write_text_atomically(path, report_html(result, image, mask, views, renderer, description))


def report_html(result: Any, image: sitk.Image, mask: sitk.Image, views_png: bytes, renderer: str,
                description: str = "") -> str:
    """The case report (:mod:`.case_report`) with the module's heat-map display conventions."""
    from RadFusionScreenLib.presentation.case_report import bundle_nomogram, case_hash, case_report_html
    from RadFusionScreenLib.slicer_glue.mrml import HEATMAP_THRESHOLD, heatmap_window

    return case_report_html(result, views_png, case_id=case_hash(image, mask), description=description,
                            renderer=renderer, nomogram=bundle_nomogram(result), heat_threshold=HEATMAP_THRESHOLD,
                            heat_window=heatmap_window())


def case_views(image: sitk.Image, mask: sitk.Image, heatmap: sitk.Image | None, modality: str,
               height: int = VIEW_HEIGHT, prefer_slicer: bool = True) -> tuple[bytes, str]:
    """PNG of the slice views (axial, coronal, sagittal; a picture: its one view) through the
    lesion centre, and a line saying what drew them."""
    from RadFusionScreenLib.slicer_glue import mrml, slice_views  # Slicer-free at import: constants and picture helpers

    grey_window = GREY_WINDOWS.get(modality) or _percentile_window(image)
    views = None
    if prefer_slicer and slice_views.slicer_available():
        views = dict(slice_views.render_images(image, mask, heatmap, height=height, grey_window=grey_window))
        renderer = ("Slicer's slice pipeline (slicer-core vtkMRMLSliceLogic, headless): the views the module "
                    "shows")
    if views is None:
        from RadFusionScreenLib.presentation.figures import render_views_engine

        views = render_views_engine(image, mask, heatmap, threshold=mrml.HEATMAP_THRESHOLD,
                                    window=mrml.heatmap_window(), grey_window=grey_window, height=height)
        renderer = ("the engine's renderer (slicer-core is not installed): the module's colours, threshold and "
                    "outline, drawn with numpy")
    buffer = slice_views.png_bytes(slice_views.compose_views(views))
    return buffer, renderer + f"; window {grey_window[0]:g} to {grey_window[1]:g}, patient's left on the right."


def _percentile_window(image: sitk.Image) -> tuple[float, float]:
    values = sitk.GetArrayViewFromImage(image)
    low, high = np.percentile(values, [1, 99])
    return float(low), float(max(high, low + 1))
