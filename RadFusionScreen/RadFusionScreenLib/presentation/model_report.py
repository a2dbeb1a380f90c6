"""The HTML report of a model comparison.

:func:`write_report` renders a comparison summary (:func:`RadFusionScreenLib.model.evaluation.comparison_summary`)
and the comparison's predictions as one self-contained HTML file (figures embedded as PNG,
no scripts, no external links), so it can be mailed, archived or opened offline. The figures
are drawn by :mod:`RadFusionScreenLib.presentation.report_figures`.

Which data the curves use: the test set when there is one; otherwise the training
out-of-fold predictions of the nested cross-validation, and every such section says so.
Tables in the report are rendered from the summary, so the HTML and the JSON agree.
"""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from RadFusionScreenLib.core.errors import InputError
from RadFusionScreenLib.core.files import write_text_atomically
from RadFusionScreenLib.core.text import MISSING, interval, number
from RadFusionScreenLib.explanation.shap_values import ShapResult, shap_summary
from RadFusionScreenLib.model.evaluation import EvaluationSet, evaluation_set
from RadFusionScreenLib.model.roles import NOMOGRAM_RESULT
from RadFusionScreenLib.model.train import ModelComparison
from RadFusionScreenLib.presentation.card import fitting_remarks
from RadFusionScreenLib.presentation.figures import figure_png, nomogram_figure
from RadFusionScreenLib.presentation.report_figures import (
    calibration_figure,
    decision_curve_figure,
    roc_figure,
    shap_bar_figure,
    shap_dot_figure,
)
from RadFusionScreenLib.stats import Nomogram

RESEARCH_USE = ("Research use only: these models are not for clinical use without local validation "
                "on the population, scanners and protocols where they would be used.")
ROC_TOP_MODELS = 5


def write_report(path: str | os.PathLike, comparison: ModelComparison, summary: Mapping[str, Any],
                 shap: ShapResult | None, selected_model_name: str) -> Path:
    """Write the comparison as one self-contained HTML file; returns its path.

    Parameters
    ----------
    path : file to write (replaced atomically: readers never see a half-written report)
    comparison : ModelComparison
        Gives the predictions behind the ROC, calibration and decision-curve figures.
    summary : mapping
        From :func:`~RadFusionScreenLib.model.evaluation.comparison_summary` (tables are rendered from it).
    shap : ShapResult or None
        SHAP values of the selected model, if computed
        (:func:`~RadFusionScreenLib.explanation.shap_values.shap_values`).
    selected_model_name : str
        The model chosen for export (often ``summary["best_model"]``).
    """
    if selected_model_name not in comparison.results:
        raise InputError(f"selected model {selected_model_name!r} is not one of the compared models: "
                         f"{', '.join(comparison.results)}")
    evaluation = evaluation_set(comparison)
    sections = [
        _header(summary, selected_model_name),
        _cohort_section(summary),
        _models_section(summary, selected_model_name),
        _roc_section(comparison, evaluation, selected_model_name),
        _delong_section(summary),
        _calibration_section(summary),
        _decision_section(summary),
        _nomogram_section(comparison.nomogram),
        _shap_section(shap, selected_model_name),
        _features_section(summary, selected_model_name),
        _settings_section(summary),
        _notes_section(summary),
    ]
    return write_text_atomically(Path(path), _page(sections))


_STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2em auto;max-width:1100px;color:#222;
padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:.6em 0;font-size:.85em}
th,td{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#f2f2f2}tr.best td{font-weight:600}tr.selected td{background:#eef6ff}
img{max-width:100%;height:auto}.warning{background:#fff4e5;border-left:4px solid #f0a030;padding:.6em 1em}
.small{font-size:.85em;color:#555}code{font-size:.9em}
"""


def _page(sections: Iterable[str]) -> str:
    body = "\n".join(s for s in sections if s)
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<title>RadFusionScreen model comparison</title>\n"
            f"<style>{_STYLE}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _section(anchor: str, title: str, *parts: str) -> str:
    return f'<section id="{_e(anchor)}">\n<h2>{_e(title)}</h2>\n' + "\n".join(p for p in parts if p) + "\n</section>"


def _paragraph(text: str, css: str | None = None) -> str:
    cls = f' class="{_e(css)}"' if css else ""
    return f"<p{cls}>{_e(text)}</p>"


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]], row_classes: Sequence[str] | None = None) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for k, row in enumerate(rows):
        cls = row_classes[k] if row_classes and row_classes[k] else ""
        attribute = f' class="{_e(cls)}"' if cls else ""
        body.append(f"<tr{attribute}>" + "".join(f"<td>{_e(cell)}</td>" for cell in row) + "</tr>")
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(body) + "\n</tbody>\n</table>"


def _figure(figure: Figure, alt: str) -> str:
    encoded = base64.b64encode(figure_png(figure)).decode("ascii")
    return f'<figure><img alt="{_e(alt)}" src="data:image/png;base64,{encoded}"></figure>'


# ------------------------------------------------------------------ formatting
def _p(value: Any) -> str:
    if value is None:
        return MISSING
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def _proportion(entry: Mapping[str, Any] | None) -> str:
    if not entry or entry.get("estimate") is None:
        return MISSING
    return (f"{entry['estimate']:.3f} ({number(entry.get('lower'))}–{number(entry.get('upper'))}; "
            f"{entry['successes']}/{entry['trials']})")


def _text(value: Any) -> str:
    """A settings value in one line: mappings as key=value, sequences comma-separated."""
    if isinstance(value, Mapping):
        return "; ".join(f"{k}={_text(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(_text(v) for v in value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return MISSING if value is None else str(value)


# -------------------------------------------------------------------- sections
def _header(summary: Mapping[str, Any], selected: str) -> str:
    refit = summary.get("refit")
    refit_text = "" if not refit else (
        f" The bundle serves {selected}'s configuration refitted on all {refit.get('n', MISSING)} cases "
        f"(--refit-all; nested cross-validated AUC over all cases {number(refit.get('cv_auc_mean'))} ± "
        f"{number(refit.get('cv_auc_sd'))}): every figure below is that of the configuration developed on the "
        "training part only.")
    return (f"<h1>RadFusionScreen model comparison</h1>\n"
            f"<p class=\"warning\">{_e(RESEARCH_USE)}</p>\n"
            + _paragraph(f"Created {summary.get('created', MISSING)}. Best model by cross-validated AUC: "
                         f"{summary.get('best_model', MISSING)}; selected model: {selected}. "
                         f"Curves and tests use the {summary.get('evaluation_set', MISSING)}.{refit_text}"))


def _cohort_section(summary: Mapping[str, Any]) -> str:
    cohort = summary.get("cohort", {})
    rows = [(key, _text(value)) for key, value in cohort.items()]
    return _section("cohort", "Cohort", _table(("item", "value"), rows))


_METRICS = ("sensitivity", "specificity", "ppv", "npv", "accuracy")


def _ranked_models(summary: Mapping[str, Any]) -> list[str]:
    models = summary.get("models", {})
    return sorted(models, key=lambda n: -(models[n].get("cv_auc") if models[n].get("cv_auc") is not None else -1))


def _models_section(summary: Mapping[str, Any], selected: str) -> str:
    models, best = summary.get("models", {}), summary.get("best_model")
    p_vs_best = {t["model"]: t.get("p_value") for t in summary.get("delong", []) if t["comparison"] == "vs best model"}
    headers = ("model", "CV AUC mean ± SD", "CV AUC pooled", "test AUC", "95% CI DeLong", "95% CI bootstrap",
               "p vs best", "threshold", *_METRICS, "features")
    rows, classes = [], []
    for name in _ranked_models(summary):
        m = models[name]
        label = (name + (" (best)" if name == best else "") + (" (selected)" if name == selected else "")
                 + (" (Firth fit)" if m.get("fit_method") == "firth" else ""))
        rows.append((label, f"{number(m.get('cv_auc'))} ± {number(m.get('cv_auc_sd'))}",
                     number(m.get("cv_auc_pooled")), number(m.get("test_auc")), interval(m.get("test_auc_ci")),
                     interval(m.get("test_auc_ci_bootstrap")),
                     MISSING if name == best else _p(p_vs_best.get(name)), number(m.get("threshold")),
                     *(_proportion(m.get(metric)) for metric in _METRICS), m.get("n_features")))
        classes.append("best" if name == best else "selected" if name == selected else "")
    note = _paragraph("Models ranked by mean outer-fold cross-validated AUC (nested CV on the training set). "
                      "The threshold is Youden's on training out-of-fold probabilities (after calibration, so "
                      "on the scale of the probability shown) and is applied unchanged to the test set's calibrated "
                      "probabilities; metrics show the estimate (95% Wilson interval; count).", "small")
    return _section("models", "Model comparison", note, _table(headers, rows, classes), _remarks(summary))


def _remarks(summary: Mapping[str, Any]) -> str:
    """Per-model fallbacks (e.g. Firth's fit under separation) and models that could not be built."""
    items = fitting_remarks(summary)
    if not items:
        return ""
    return _paragraph("Remarks: " + "; ".join(items), "small warning")


def _roc_models(comparison: ModelComparison, selected: str) -> list[str]:
    ranked = sorted(comparison.results, key=lambda n: -np.nan_to_num(comparison.results[n].cv_auc_mean, nan=-1.0))
    chosen = ranked[:ROC_TOP_MODELS]
    for extra in (comparison.best_model, selected, NOMOGRAM_RESULT):
        if extra in comparison.results and extra not in chosen:
            chosen.append(extra)
    return chosen


def _roc_section(comparison: ModelComparison, evaluation: EvaluationSet, selected: str) -> str:
    figure = roc_figure(comparison, evaluation, _roc_models(comparison, selected), selected)
    return _section("roc", "ROC curves", _paragraph(
        f"Top {ROC_TOP_MODELS} models by cross-validated AUC, plus the best, the selected and the nomogram "
        f"model; {evaluation.label}.", "small"), _figure(figure, "ROC curves"))


def _delong_section(summary: Mapping[str, Any]) -> str:
    tests = summary.get("delong", [])
    if not tests:
        return _section("delong", "DeLong tests", _paragraph("Only one model: nothing to compare."))
    rows = [(t["comparison"], t["model"], t["reference"], number(t.get("auc_model")), number(t.get("auc_reference")),
             number(t.get("difference")), number(t.get("z"), 2), _p(t.get("p_value")), t.get("error", ""))
            for t in tests]
    headers = ("comparison", "model", "reference", "AUC model", "AUC reference", "difference", "z", "p", "remark")
    return _section("delong", "DeLong tests", _paragraph(
        f"Paired DeLong tests of correlated ROC curves on the {tests[0]['set']} (two-sided, unadjusted "
        "for multiple comparisons).", "small"), _table(headers, rows))


def _calibration_section(summary: Mapping[str, Any]) -> str:
    calibration = summary.get("calibration", {})
    if not calibration:
        return ""
    rows, methods = [], []
    for name, entry in calibration.items():
        recalibration = entry.get("calibration")
        if recalibration is None:
            rows.append(_calibration_row(name, entry.get("probability", ""), entry, entry))
            continue
        methods.append(f"{name}: {recalibration.get('description')}")
        for when in ("before", "after"):
            if recalibration.get(when):
                label = "uncalibrated" if when == "before" else f"calibrated ({recalibration.get('method')})"
                rows.append(_calibration_row(name, f"{when}: {label}", recalibration[when], entry))
    headers = ("model", "probability", "set", "n", "Hosmer-Lemeshow χ²", "df", "p", "calibration intercept (95% CI)",
               "calibration slope (95% CI)", "probability clip", "remark")
    chosen = ("Calibration (chosen by nested CV on the training out-of-fold probabilities, by held-out log-loss "
              "with the one-standard-error rule towards the simpler method; never on the test set): "
              + "; ".join(methods) + ".") if methods else ""
    return _section("calibration", "Calibration", _paragraph(
        "Groups are deciles of predicted risk (as hoslem.test). Intercept: calibration-in-the-large (0 is "
        "ideal); slope: 1 is ideal, below 1 means too extreme predictions, above 1 too modest ones; Wald 95% "
        "intervals. The figure shows the probabilities as served.", "small"),
        _paragraph(chosen, "small") if chosen else "",
        _figure(calibration_figure(calibration), "calibration plot"), _table(headers, rows))


def _calibration_row(name: str, label: str, metrics: Mapping[str, Any], entry: Mapping[str, Any]) -> tuple:
    hl = metrics.get("hosmer_lemeshow") or {}
    return (name, label, entry.get("set"), metrics.get("n"), number(hl.get("statistic"), 2), hl.get("df", MISSING),
            _p(hl.get("p_value")), _with_ci(metrics, "intercept"), _with_ci(metrics, "slope"),
            MISSING if metrics.get("clip") is None else f"{metrics['clip']:g}",
            metrics.get("hosmer_lemeshow_error", "") or metrics.get("intercept_slope_error", "")
            or _slope_remark(metrics))


def _with_ci(metrics: Mapping[str, Any], name: str) -> str:
    ci = interval(metrics.get(f"{name}_ci"))
    return number(metrics.get(name)) + ("" if ci == MISSING else f" ({ci})")


def _slope_remark(entry: Mapping[str, Any]) -> str:
    if entry.get("slope_method") != "firth":
        return ""
    return ("slope by Firth's bias-reduced fit: the predictions rank this set without error, so the "
            "maximum-likelihood slope is infinite; with no misranked case the slope is poorly determined")


def _decision_section(summary: Mapping[str, Any]) -> str:
    curves = summary.get("decision_curve")
    if not curves:
        return ""
    return _section("decision-curve", "Decision curves", _paragraph(
        "Net benefit = TP/n − FP/n · pt/(1 − pt) over threshold probabilities pt, against treating everyone "
        "and treating no one.", "small"), _figure(decision_curve_figure(curves), "decision curves"))


def _nomogram_section(nomogram: Nomogram | None) -> str:
    if nomogram is None:
        return _section("nomogram", "Nomogram", _paragraph("No nomogram model was built."))
    try:
        figure = nomogram_figure(nomogram)
    except InputError as exc:
        return _section("nomogram", "Nomogram", _paragraph(f"The nomogram cannot be drawn: {exc}"))
    return _section("nomogram", "Nomogram", _paragraph(
        "Read each predictor's points on the top axis, add them, and read the risk under the total. "
        "Logistic regression on rad-score, deep-score and clinical predictors (rms conventions).", "small"),
        _figure(figure, "nomogram"))


def _shap_section(shap: ShapResult | None, selected: str) -> str:
    if shap is None:
        return _section("shap", "SHAP feature contributions", _paragraph("SHAP values were not computed."))
    table = shap_summary(shap, top=20)
    rows = [(r.feature, f"{r.mean_abs_shap:.4g}", f"{r.mean_shap:.4g}", number(r.correlation, 2), r.direction)
            for r in table.itertuples()]
    caveat = "" if shap.exact else " (an approximation)"
    return _section("shap", "SHAP feature contributions", _paragraph(
        f"Model {selected}: {shap.method}{caveat}; values in {shap.output} space, base value "
        f"{shap.base_value:.4g}, {shap.values.shape[0]} explained cases.", "small"),
        _figure(shap_bar_figure(table, shap.output), "mean absolute SHAP values"),
        _figure(shap_dot_figure(shap, table["feature"].tolist()), "SHAP values per case"),
        _table(("feature", "mean |SHAP|", "mean SHAP", "r(value, SHAP)", "direction"), rows))


def _features_section(summary: Mapping[str, Any], selected: str) -> str:
    models, best = summary.get("models", {}), summary.get("best_model")
    parts = []
    for name in dict.fromkeys([selected, best]):
        if name not in models:
            continue
        features = models[name].get("selected_features") or []
        role = "selected model" if name == selected else "best model"
        parts.append(f"<h3>{_e(name)} ({_e(role)}): {len(features)} features</h3>")
        parts.append(_table(("#", "feature"), [(k + 1, f) for k, f in enumerate(features)]))
        params = models[name].get("best_params") or {}
        if params:
            parts.append(_paragraph(f"Hyper-parameters: {_text(params)}", "small"))
    return _section("features", "Selected features", *parts)


def _settings_section(summary: Mapping[str, Any]) -> str:
    parts = []
    for key, title in (("settings", "Run settings"), ("model_settings", "Pipeline settings"),
                       ("packages", "Package versions")):
        values = summary.get(key) or {}
        parts.append(f"<h3>{_e(title)}</h3>")
        parts.append(_table(("name", "value"), [(k, _text(v)) for k, v in values.items()]))
    return _section("settings", "Settings and versions", *parts)


def _notes_section(summary: Mapping[str, Any]) -> str:
    notes = [str(n) for n in summary.get("notes", [])]
    items = "\n".join(f"<li>{_e(n)}</li>" for n in notes) if notes else "<li>none</li>"
    return _section("notes", "Notes", f"<ul>\n{items}\n</ul>", f'<p class="warning">{_e(RESEARCH_USE)}</p>')
