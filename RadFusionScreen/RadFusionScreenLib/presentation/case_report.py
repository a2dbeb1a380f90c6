"""The case report: one self-contained, printable HTML page for one screened case.

The one presentation of a screened case, used by ``radfusion demo`` (:mod:`.demo`) and by the
Slicer module's "Export report" (``slicer_glue.scene_logic.writeReport``). Sections:

1. patient-free header: case hash (of the voxels, never a name), date, model name, bundle digest
   and provenance;
2. **the answer**: the fused model's probability (calibrated by the bundle's calibrator) and the
   decision at the bundle's threshold (the only probability in large type), with one line on
   how well calibrated it is on the bundle's internal test set;
3. slice views (drawn by ``slicer_glue.slice_views`` where slicer-core / Slicer is there, else by
   :func:`.figures.render_views_engine` with the same conventions; the page says which) with
   the Grad-CAM colour bar and what the map is and is not;
4. why this case: SHAP waterfall of the fused model (:mod:`.reasons`), which explains the
   classifier's own (uncalibrated) output; the page says that the calibration map turns it into
   the probability shown, and draws the threshold on that raw scale;
5. the nomogram figure with this case marked, its own estimate labelled as the nomogram's;
6. the operating point at the threshold (sensitivity, specificity, PPV / NPV, 95 % CIs, source);
7. warnings; 8. research-use notice.

No scripts, no external resources: every image is a ``data:`` PNG, styles inline.
"""

from __future__ import annotations

import base64
import hashlib
import html
from datetime import datetime, timezone
from typing import Any, Mapping

import numpy as np

RESEARCH_USE = ("Research use only. Not a diagnosis and not for clinical use without local validation on the "
                "population, scanners and protocols where it would be used.")
GRAD_CAM_TEXT = (
    "What the colour shows: Grad-CAM of the deep-score, i.e. the gradient-weighted activations of the CNN's "
    "last feature map (7 × 7 cells over the lesion's crop, upsampled), normalised to its maximum; values below "
    "{threshold:g} of the maximum are not drawn. It marks where the CNN features that the deep-score uses were "
    "strongest. What it is not: not a segmentation of the lesion, not proof of malignancy, and not an "
    "explanation of the fused model's answer (the fused model also uses radiomic features; see 'Why this "
    "case').")
ONE_PROBABILITY_TEXT = (
    "The answer is the fused model's probability. The nomogram is a separate, simpler logistic model on the "
    "two scores (rad-score, deep-score) that shows how they add up; its own estimate is printed on its risk "
    "axis for reading the figure, not as a second answer.")


def case_hash(image: Any, mask: Any) -> str:
    """First 16 hex digits of SHA-256 over the image and mask voxels and grid (no names, no dates)."""
    import SimpleITK as sitk

    digest = hashlib.sha256()
    for item in (image, mask):
        digest.update(np.ascontiguousarray(sitk.GetArrayViewFromImage(item)).tobytes())
        digest.update(repr((item.GetSize(), item.GetSpacing(), item.GetOrigin(), item.GetDirection())).encode())
    return digest.hexdigest()[:16]


def bundle_nomogram(result: Any) -> Any:
    """The nomogram of the bundle that screened ``result`` (by its path), when its digest still
    matches the result's; else None."""
    from RadFusionScreenLib.model.bundle import load_bundle

    path, digest = (result.model or {}).get("path"), (result.model or {}).get("digest")
    if not path:
        return None
    try:
        bundle = load_bundle(path)
    except Exception:  # noqa: BLE001 -- a report without the figure beats no report
        return None
    return bundle.nomogram if bundle.digest == digest else None


def case_report_html(result: Any, views_png: bytes | None, *, case_id: str, description: str = "",
                     renderer: str = "", nomogram: Any = None, heat_threshold: float | None = None,
                     heat_window: tuple[float, float] | None = None, date: datetime | None = None) -> str:
    """The page (see the module doc). ``views_png``: the composed slice views; ``renderer``:
    one line saying what drew them; ``heat_threshold`` / ``heat_window``: the display's
    (``slicer_glue.mrml.HEATMAP_THRESHOLD`` / ``heatmap_window()``) for the colour bar."""
    from RadFusionScreenLib.presentation.figures import case_marks, colour_bar_png, figure_png, nomogram_figure, waterfall_figure

    date = date or datetime.now(timezone.utc)
    sections = [_header(result, case_id, description, date), _answer(result)]
    views = []
    if views_png:
        views.append(_image(views_png, "slice views with Grad-CAM and lesion outline", "views"))
        if result.heatmap is not None or heat_threshold is not None:
            if heat_threshold is not None and heat_window is not None:
                views.append(_image(colour_bar_png(heat_threshold, heat_window), "Grad-CAM colour bar", "bar"))
            views.append(f"<p class=small>{_e(GRAD_CAM_TEXT.format(threshold=heat_threshold or 0))}</p>")
        if renderer:
            views.append(f"<p class=small>{_e(renderer)}</p>")
    else:
        views.append("<p>No views were drawn.</p>")
    sections.append(_section("Image, Grad-CAM and lesion outline", *views))
    sections.append(_reasons(result, figure_png, waterfall_figure))
    if nomogram is not None and result.nomogram_total_points is not None:
        figure = figure_png(nomogram_figure(nomogram, case_marks(result)))
        sections.append(_section(
            "Nomogram (breakdown by the two scores)",
            f"<p class=small>{_e(ONE_PROBABILITY_TEXT)}</p>",
            _image(figure, "nomogram with this case marked", "nomogram"),
            _nomogram_table(result)))
    elif result.nomogram_total_points is not None:
        sections.append(_section("Nomogram (breakdown by the two scores)",
                                 f"<p class=small>{_e(ONE_PROBABILITY_TEXT)}</p>", _nomogram_table(result)))
    sections.append(_operating_point(result.operating_point))
    warnings = "".join(f"<li>{_e(w)}</li>" for w in result.warnings) or "<li>none</li>"
    sections.append(_section("Warnings", f"<ul>{warnings}</ul>"))
    sections.append(f'<p class="notice">{_e(RESEARCH_USE)}</p>')
    title = f"RadFusionScreen case report {case_id}"
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_e(title)}</title>"
            f"<style>{_STYLE}</style></head><body>\n" + "\n".join(sections) + "\n</body></html>\n")


_STYLE = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;max-width:1000px;margin:1.5em auto;
padding:0 1em;color:#222;line-height:1.4}
h1{font-size:1.4em;margin-bottom:.2em}h2{font-size:1.15em;border-bottom:1px solid #ccc;margin-top:1.4em}
table{border-collapse:collapse;font-size:.9em;margin:.5em 0}td,th{border:1px solid #ccc;padding:.2em .6em;
text-align:left}th{background:#f2f2f2}.answer{font-size:1.9em;font-weight:bold;margin:.3em 0}
.high{color:#c0392b}.low{color:#1e8449}.small{font-size:.85em;color:#444}.meta{font-size:.85em;color:#444}
img{max-width:100%;height:auto;display:block}.notice{border-top:1px solid #ccc;padding-top:.6em;font-style:italic}
section{page-break-inside:avoid}@media print{body{margin:0;max-width:none}h2{page-break-after:avoid}}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _section(title: str, *parts: str) -> str:
    return f"<section><h2>{_e(title)}</h2>\n" + "\n".join(p for p in parts if p) + "\n</section>"


def _image(png: bytes, alt: str, css_id: str) -> str:
    encoded = base64.b64encode(png).decode("ascii")
    return f'<img id="{_e(css_id)}" alt="{_e(alt)}" src="data:image/png;base64,{encoded}">'


def _header(result: Any, case_id: str, description: str, date: datetime) -> str:
    model = result.model or {}
    digest = str(model.get("digest") or "")
    return (f"<h1>RadFusionScreen case report</h1>\n<p class=meta>case {_e(case_id)} · "
            f"{_e(date.strftime('%Y-%m-%d %H:%M UTC'))}<br>model {_e(model.get('name'))} · bundle digest "
            f"<code>{_e(digest[:16])}</code> · {_e(model.get('provenance', ''))}"
            + (f"<br>{_e(description)}" if description else "") + "</p>")


def _answer(result: Any) -> str:
    risk = str(result.risk_class)
    decision = "positive" if result.decision else "negative"
    return (f'<p class="answer {_e(risk)}">probability {result.probability:.3f} · {_e(risk.upper())} risk</p>'
            f"<p>The fused model's probability that the lesion is positive (label 1). Decision at the model's "
            f"threshold {result.threshold:.3f}: <b>{decision}</b> (positive when the probability is at or above "
            "the threshold, which was fixed on training data; see 'Operating point').</p>"
            f'<p class="small" id="calibration">{_e(_calibration_text(result))}</p>')


def _calibration_text(result: Any) -> str:
    """One line: is the probability calibrated, and how well on the bundle's internal test set."""
    from RadFusionScreenLib.serving.screening import calibration_fit_text

    calibration = getattr(result, "calibration", None) or {}
    if not calibration:
        return "Calibration: not recorded with this result."
    if not calibration.get("method"):
        return ("Not calibrated: the model bundle stores no calibration, so this is the classifier's raw output, "
                "which may be far from the observed risk; read it against the threshold, not as a risk.")
    after = (calibration.get("test_set") or {}).get("after")
    how = (f"on the bundle's internal test set: {calibration_fit_text(after)} (ideal: intercept 0, slope 1)"
           if after else "not checked on a test set")
    return f"Calibration: {calibration.get('description')}, fitted on training data only; {how}."


def _reasons(result: Any, figure_png: Any, waterfall_figure: Any) -> str:
    explanation = result.explanation or {}
    contributions = explanation.get("contributions") or []
    if not contributions:
        reason = explanation.get("reason") or "no per-case explanation was computed"
        return _section("Why this case", f"<p>{_e(reason)}.</p>")
    calibration = getattr(result, "calibration", None) or {}
    raw_threshold = calibration.get("raw_threshold", result.threshold) if calibration else result.threshold
    figure = figure_png(waterfall_figure(explanation, raw_threshold))
    raw = explanation.get("probability", getattr(result, "uncalibrated_probability", None) or result.probability)
    mapped = ("" if not calibration.get("calibrated") else
              f" That is the classifier's own output; the bundle's calibration map ({calibration.get('description')}) "
              f"turns it into the probability shown, {result.probability:.3f}, and the dashed threshold line is drawn "
              "where the calibrated probability reaches the threshold.")
    rows = "".join(f"<tr><td>{_e(c['label'])}</td><td>{c['value']:.4g}</td><td>{c['shap']:+.3f}</td></tr>"
                   for c in contributions[:10])
    return _section(
        "Why this case",
        f"<p class=small>SHAP contributions of the fused model for this case ({_e(explanation.get('method'))}): "
        f"each bar moves the model's output from its base value ({explanation['base']:.2f}, the average over "
        f"the training data) towards this case's {explanation.get('log_odds', float('nan')):.2f} "
        f"(probability {raw:.3f}).{_e(mapped)} Names: family · filter · "
        "feature for radiomic features, 'CNN feature n' for the deep features.</p>",
        _image(figure, "SHAP waterfall of this case", "waterfall"),
        "<table><tr><th>feature</th><th>value</th><th>SHAP (log-odds)</th></tr>" + rows + "</table>")


def _nomogram_table(result: Any) -> str:
    rows = "".join(f"<tr><td>{_e(r.predictor)}</td><td>{_value(r.value)}</td><td>{r.points:.1f}</td></tr>"
                   for r in result.nomogram.itertuples())
    return ("<table><tr><th>predictor</th><th>value</th><th>points</th></tr>" + rows
            + f"<tr><th>total points</th><td></td><td>{result.nomogram_total_points:.1f}</td></tr>"
            f"<tr><td colspan=2>the nomogram's own estimate (not the answer)</td>"
            f"<td>{result.nomogram_probability:.3f}</td></tr></table>")


def _value(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float, np.floating)) else _e(value)


def _operating_point(point: Mapping[str, Any] | None) -> str:
    if not point:
        return _section("Operating point", "<p>The bundle records no test-set rates at its threshold.</p>")

    def row(name: str, entry: Mapping[str, Any], counts: bool = True) -> str:
        extra = f" ({entry['successes']}/{entry['trials']})" if counts else ""
        return (f"<tr><td>{_e(name)}</td><td>{entry['estimate']:.3f}{extra}</td>"
                f"<td>{entry['lower']:.3f}–{entry['upper']:.3f}</td></tr>")

    prevalence = point["prevalence"]
    auc = point.get("test_auc")
    auc_text = (f" Test AUC {auc:.3f} (DeLong 95% CI {point['test_auc_ci'][0]:.3f}–{point['test_auc_ci'][1]:.3f})."
                if auc is not None and None not in point.get("test_auc_ci", [None]) else "")
    return _section(
        "Operating point",
        f"<p class=small>Model {_e(point.get('model'))} at its decision threshold {point['threshold']:.3f} "
        f"({_e(point['threshold_rule'])}). Out of 100 positive lesions like those of the test set it calls about "
        f"{100 * point['sensitivity']['estimate']:.0f} positive; out of 100 negative ones about "
        f"{100 * point['specificity']['estimate']:.0f} negative. Source: {_e(point['source'])}.{_e(auc_text)}</p>",
        "<table><tr><th>at the threshold</th><th>estimate</th><th>95% CI</th></tr>"
        + row("sensitivity", point["sensitivity"]) + row("specificity", point["specificity"])
        + row(f"PPV at the training prevalence {prevalence:.3f}", point["ppv"], False)
        + row(f"NPV at the training prevalence {prevalence:.3f}", point["npv"], False) + "</table>",
        f"<p class=small>Intervals: {_e(point['ci_method'])}. PPV and NPV change with the prevalence where the "
        "model is used; a screening population usually has far fewer positives than this cohort.</p>")
