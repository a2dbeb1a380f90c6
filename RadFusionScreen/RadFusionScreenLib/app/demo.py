"""`radfusion demo`: screen one example case of the model's modality and write what a user sees.

The example case follows the bundle's modality (``example_case``):

- US: a real BUSI test case when ../shared/data/busi is present (a case of the shipped model's
  internal test set, so its probability can be compared with the one the bundle recorded);
  otherwise a **synthetic** ultrasound-like phantom (:func:`.phantoms.synthetic_ultrasound`);
- CT: a LIDC-IDRI nodule from ../shared/data/lidc when present (one of the bundle's test cases
  when it records them), else a **synthetic** CT phantom (:func:`.phantoms.synthetic_ct`);
- any other modality: refused with a message (no example case of that kind exists).

No public image is stored in the repository.

Outputs in the chosen folder: ``summary.txt``, ``result.json``, ``overlay.png`` (the slice views
through the lesion centre: image, Grad-CAM, lesion outline) and ``report.html`` (the case report
of :mod:`.case_report_page`). The views are drawn by Slicer's own slice pipeline (slicer-core) when it
is importable (``pip install -e ".[mrml]"``, which ``setup.sh`` does), else by the engine's
renderer with the same conventions (:func:`.figures.render_views_engine`); the report says which.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from RadFusionScreenLib.app.case_report_page import case_views, report_html
from RadFusionScreenLib.core.errors import InputError
from RadFusionScreenLib.core.locations import shared_data_directory

SHARED = shared_data_directory()
BUSI = SHARED / "busi"
LIDC = SHARED / "lidc"



def run_demo(output: str | os.PathLike = "demo_output", model: str | None = None) -> list[str]:
    """Screen the example case; returns the summary lines printed by the CLI."""
    from RadFusionScreenLib.inputs.images import read_image, read_mask
    from RadFusionScreenLib.serving.screening import Screener

    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    screener = Screener(model)
    image_path, mask_path, description, recorded, in_sample = example_case(screener, out)
    result = screener.screen(image_path, mask_path)
    image = read_image(image_path)  # the grid the heat map is on (pictures: one-slice volumes)
    mask = read_mask(mask_path, reference=image)
    views, renderer = case_views(image, mask, result.heatmap, screener.modality)
    (out / "overlay.png").write_bytes(views)
    summary = f"example: {description}\n" + result.summary_text()
    if recorded is not None:
        seen = " (the shipped model, refitted on every case, has seen it)" if in_sample else ""
        summary += f"\nthe bundle recorded probability {recorded:.6f} for this internal-test case{seen}"
    (out / "summary.txt").write_text(summary + "\n")
    (out / "result.json").write_text(json.dumps({"example": description, "recorded_probability": recorded,
                                                 **result.to_dict()}, indent=2, allow_nan=False))
    (out / "report.html").write_text(report_html(result, image, mask, views, renderer, description), encoding="utf-8")
    return summary.splitlines() + [f"views drawn by {renderer.split(':')[0]}",
                                   f"written: {out / 'summary.txt'}, {out / 'overlay.png'}, {out / 'report.html'}"]


def example_case(screener: Any, out: Path) -> tuple[Path, Path, str, float | None, bool]:
    """A case of the bundle's modality (shared public data when present, else a generated phantom),
    and whether the shipped model has seen the case whose probability it recorded."""
    from RadFusionScreenLib.model.bundle import recorded_predictions

    recorded, in_sample = recorded_predictions(screener.bundle.manifest)
    if screener.modality == "US":
        return (*(_busi_case(recorded) or _phantom_ultrasound(out)), in_sample)
    if screener.modality == "CT":
        return (*(_lidc_case(recorded) or _phantom_ct(out)), in_sample)
    raise InputError(f"no example case for a {screener.modality or 'modality-less'} model: "
                     "screen your own case with `radfusion screen IMAGE MASK --model ...`")


def _busi_case(recorded: dict) -> tuple[Path, Path, str, float | None] | None:
    manifest = BUSI / "manifest.csv"
    if not manifest.is_file():
        return None
    import pandas as pd

    cases = pd.read_csv(manifest)
    cases = cases[cases["case_id"].astype(str).isin(recorded)] if recorded else cases
    if not len(cases):
        return None
    case = cases.sort_values("label", ascending=False, kind="stable").iloc[0]  # first positive, manifest order
    return (BUSI / case["image"], BUSI / case["mask"],
            f"BUSI case {case['case_id']} (label {int(case['label'])}, from ../shared/data/busi)",
            recorded.get(str(case["case_id"])))


def _lidc_case(recorded: dict) -> tuple[Path, Path, str, float | None] | None:
    manifest = LIDC / "manifest.csv"
    if not manifest.is_file():
        return None
    import pandas as pd

    cases = pd.read_csv(manifest)
    in_test = cases[cases["case_id"].astype(str).isin(recorded)] if recorded else cases.iloc[0:0]
    cases = in_test if len(in_test) else cases
    if not len(cases):
        return None
    case = cases.iloc[0]
    label = f"label {int(case['label'])}, " if "label" in case and not _missing(case["label"]) else ""
    return (LIDC / case["image"], LIDC / case["mask"],
            f"LIDC-IDRI nodule {case['case_id']} ({label}from ../shared/data/lidc)", recorded.get(str(case["case_id"])))


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def _phantom_ultrasound(out: Path) -> tuple[Path, Path, str, None]:
    from RadFusionScreenLib.inputs.phantoms import synthetic_ultrasound

    image, mask = synthetic_ultrasound()
    image_path, mask_path = out / "synthetic_ultrasound.png", out / "synthetic_ultrasound_mask.png"
    sitk.WriteImage(image, str(image_path))
    sitk.WriteImage(mask * 255, str(mask_path))
    return image_path, mask_path, "synthetic ultrasound-like phantom (generated, not a patient image)", None


def _phantom_ct(out: Path) -> tuple[Path, Path, str, None]:
    from RadFusionScreenLib.inputs.phantoms import synthetic_ct

    image, mask = synthetic_ct(shape=(40, 128, 128), spacing=(0.7, 0.7, 1.25), radius_mm=9.0, malignancy=0.7)
    image_path, mask_path = out / "synthetic_ct.nii.gz", out / "synthetic_ct_mask.nii.gz"
    sitk.WriteImage(image, str(image_path))
    sitk.WriteImage(mask, str(mask_path))
    return image_path, mask_path, "synthetic CT phantom with a lung-nodule-like lesion (generated, not a patient image)", None
