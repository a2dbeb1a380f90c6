"""`radfusion demo`: screen one example case with the shipped model and write what a user sees.

The example is a real BUSI test case when ../shared/data/busi is present (a case of the
shipped model's internal test set, so its probability can be compared with the one the
bundle recorded); otherwise a **synthetic** ultrasound-like phantom that this module draws
(speckle, a dark irregular lesion with posterior shadowing). No public image is stored in
the repository.

Outputs in the chosen folder: ``summary.txt``, ``result.json``, ``overlay.png`` (image,
ROI outline and Grad-CAM) and ``report.html`` (one self-contained page).
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

BUSI = Path(os.environ.get("RADFUSION_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data")) / "busi"


def run_demo(output: str | os.PathLike = "demo_output", model: str | None = None) -> list[str]:
    """Screen the example case; returns the summary lines printed by the CLI."""
    from .screening import Screener

    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    screener = Screener(model)
    image_path, mask_path, description, recorded = example_case(screener, out)
    result = screener.screen(image_path, mask_path)
    from .io import read_image, read_mask

    image = read_image(image_path)  # the grid the heat map is on (pictures: one-slice volumes)
    mask = read_mask(mask_path, reference=image)
    overlay = overlay_png(image, mask, result.heatmap)
    (out / "overlay.png").write_bytes(overlay)
    summary = f"example: {description}\n" + result.summary_text()
    if recorded is not None:
        summary += f"\nthe bundle recorded probability {recorded:.6f} for this test case"
    (out / "summary.txt").write_text(summary + "\n")
    (out / "result.json").write_text(json.dumps({"example": description, "recorded_probability": recorded,
                                                 **result.to_dict()}, indent=2, allow_nan=False))
    (out / "report.html").write_text(html_page(description, result, overlay))
    return summary.splitlines() + [f"written: {out / 'summary.txt'}, {out / 'overlay.png'}, {out / 'report.html'}"]


def example_case(screener: Any, out: Path) -> tuple[Path, Path, str, float | None]:
    """A BUSI test case of the shipped model when the data are here, else a synthetic phantom."""
    recorded = ((screener.bundle.manifest.get("training") or {}).get("reference") or {}).get("test_predictions") or {}
    manifest = BUSI / "manifest.csv"
    if manifest.is_file() and screener.modality == "US":
        import pandas as pd

        cases = pd.read_csv(manifest)
        cases = cases[cases["case_id"].astype(str).isin(recorded)] if recorded else cases
        if len(cases):
            case = cases.sort_values("label", ascending=False).iloc[0]
            return (BUSI / case["image"], BUSI / case["mask"],
                    f"BUSI case {case['case_id']} (label {int(case['label'])}, from ../shared/data/busi)",
                    recorded.get(str(case["case_id"])))
    from .phantoms import synthetic_ultrasound

    image, mask = synthetic_ultrasound()
    image_path, mask_path = out / "synthetic_ultrasound.png", out / "synthetic_ultrasound_mask.png"
    sitk.WriteImage(image, str(image_path))
    sitk.WriteImage(mask * 255, str(mask_path))
    return image_path, mask_path, "synthetic ultrasound-like phantom (generated, not a patient image)", None


def overlay_png(image: sitk.Image, mask: sitk.Image, heatmap: sitk.Image | None) -> bytes:
    """PNG of the ROI's largest slice: grey image, Grad-CAM in colour (where > 0), ROI outline."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    pixels = _grey(sitk.GetArrayFromImage(image))
    roi = sitk.GetArrayFromImage(mask) > 0
    heat = None if heatmap is None else sitk.GetArrayFromImage(heatmap)
    if pixels.ndim == 3:
        k = int(np.argmax(roi.reshape(roi.shape[0], -1).sum(axis=1)))
        pixels, roi = pixels[k], roi[k]
        heat = None if heat is None else heat[k]
    figure, axis = plt.subplots(figsize=(6, 6 * pixels.shape[0] / pixels.shape[1]), dpi=100)
    axis.imshow(pixels, cmap="gray")
    if heat is not None:
        axis.imshow(np.ma.masked_less_equal(heat, 0), cmap="jet", alpha=0.45, vmin=0, vmax=1)
    axis.contour(roi, levels=[0.5], colors="lime", linewidths=1.2)
    axis.set_axis_off()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight", pad_inches=0)
    plt.close(figure)
    return buffer.getvalue()


def _grey(pixels: np.ndarray) -> np.ndarray:
    return pixels[..., 0] if pixels.ndim == 4 else pixels


def html_page(description: str, result: Any, overlay: bytes) -> str:
    """A small self-contained HTML report of one screened case."""
    from .screening import format_value

    rows = "".join(f"<tr><td>{html.escape(str(r.predictor))}</td><td>{html.escape(format_value(r.value))}</td>"
                   f"<td>{r.points:.1f}</td></tr>" for r in result.nomogram.itertuples())
    total = ("" if result.nomogram_total_points is None else
             f"<tr><th>total</th><td></td><td>{result.nomogram_total_points:.1f}</td></tr>"
             f"<tr><th>nomogram probability</th><td></td><td>{result.nomogram_probability:.3f}</td></tr>")
    warnings = "".join(f"<li>{html.escape(w)}</li>" for w in result.warnings) or "<li>none</li>"
    image = base64.b64encode(overlay).decode()
    return f"""<!DOCTYPE html><html><head><meta charset="utf-8"><title>RadFusionScreen case report</title>
<style>body{{font-family:sans-serif;max-width:900px;margin:2em auto}}td,th{{padding:2px 10px;text-align:left}}
.big{{font-size:2.2em;font-weight:bold}}</style></head><body>
<h1>RadFusionScreen: one case</h1>
<p>{html.escape(description)}<br>model {html.escape(str(result.model['name']))}, bundle digest
{html.escape(result.model['digest'][:16])}, {html.escape(result.model['provenance'])}</p>
<p class="big">probability {result.probability:.3f}: {html.escape(result.risk_class.upper())} risk</p>
<p>decision threshold {result.threshold:.3f} (Youden, chosen on training data)</p>
<h2>Nomogram</h2><table><tr><th>predictor</th><th>value</th><th>points</th></tr>{rows}{total}</table>
<h2>Grad-CAM (deep-score) over the image, ROI outlined</h2><img alt="overlay" src="data:image/png;base64,{image}">
<h2>Warnings</h2><ul>{warnings}</ul>
<p><em>Research use only. Not for clinical use without local validation.</em></p></body></html>
"""
