"""The numbers and the HTML report of a model comparison.

:func:`comparison_summary` turns a :class:`~.train.ModelComparison` into plain JSON
(no NaN: missing values are ``null``): per-model CV and test performance with intervals,
DeLong tests, calibration and decision curves. :func:`write_report` renders that summary
and the comparison's predictions as one self-contained HTML file (figures embedded as PNG,
no scripts, no external links), so it can be mailed, archived or opened offline.

Which data the curves use: the test set when there is one; otherwise the training
out-of-fold predictions of the nested cross-validation, and every such section says so.
Tables in the report are rendered from the summary, so the HTML and the JSON agree.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import math
import os
import platform
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from RadFusionScreenLib.presentation.card import fitting_remarks
from RadFusionScreenLib.core.errors import InputError
from RadFusionScreenLib.explanation.shap_values import ShapResult, shap_summary
from RadFusionScreenLib.presentation.figures import nomogram_figure  # noqa: F401 -- shared with the case report and the Slicer panel
from RadFusionScreenLib.stats import (
    Nomogram,
    calibration_curve,
    calibration_intercept_slope,
    decision_curve,
    delong_test,
    hosmer_lemeshow_test,
)
from RadFusionScreenLib.model.roles import NOMOGRAM_RESULT as NOMOGRAM_MODEL
from RadFusionScreenLib.model.train import ModelComparison, ModelResult, best_result

FORMAT = "RadFusionScreen.ComparisonSummary"
FORMAT_VERSION = 1
TEST_SET = "test set"
TRAINING_OOF = "training set, out-of-fold (no test set)"
RESEARCH_USE = ("Research use only: these models are not for clinical use without local validation "
                "on the population, scanners and protocols where they would be used.")
CALIBRATION_CLIP = 1e-6  # for probabilities of exactly 0 or 1 (e.g. random forests)
PACKAGES = ("numpy", "pandas", "scipy", "scikit-learn", "xgboost-cpu", "xgboost", "lightgbm", "matplotlib",
            "pyradiomics-bhklab", "torch", "SimpleITK")
ROC_TOP_MODELS = 5


# ====================================================================== summary
@dataclass(frozen=True)
class _Evaluation:
    """The labels and each model's probabilities on the set the curves are drawn from."""

    label: str
    y: np.ndarray
    probability: dict[str, np.ndarray]


def _evaluation(comparison: ModelComparison) -> _Evaluation:
    results = comparison.results
    if comparison.y_test is not None and all(r.test_probability is not None for r in results.values()):
        return _Evaluation(TEST_SET, np.asarray(comparison.y_test), {n: r.test_probability for n, r in results.items()})
    return _Evaluation(TRAINING_OOF, np.asarray(comparison.y_train), {n: r.cv.probability for n, r in results.items()})


def describe_cohort(train: pd.DataFrame, test: pd.DataFrame | None = None, *, label_column: str = "label",
                    site_column: str | None = "site", split: str | None = None) -> dict[str, Any]:
    """Cases per split and site, for the ``cohort`` argument of :func:`comparison_summary`."""
    cohort: dict[str, Any] = {"split": split} if split else {}
    for name, table in (("train", train), ("test", test)):
        if table is None:
            continue
        if site_column and site_column in table.columns:
            cohort[f"sites_{name}"] = {str(k): int(v) for k, v in table[site_column].astype(str).value_counts()
                                       .sort_index().items()}
        if label_column in table.columns:
            cohort[f"cases_{name}"] = int((table[label_column] == 1).sum())
    return cohort


def comparison_summary(comparison: ModelComparison, *, cohort: Mapping[str, Any],
                       settings: Mapping[str, Any]) -> dict[str, Any]:
    """Every number of a comparison, JSON-serialisable (``json.dumps(..., allow_nan=False)``).

    Parameters
    ----------
    comparison : ModelComparison
    cohort : mapping
        Extra cohort facts (e.g. from :func:`describe_cohort`); counts and prevalence are
        added from the comparison's labels.
    settings : mapping
        The run's settings as the caller wants them recorded (command line, grid, folds).
    """
    evaluation = _evaluation(comparison)
    summary = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "evaluation_set": evaluation.label,
        "cohort": _cohort(comparison, cohort),
        "settings": dict(settings),
        "model_settings": _model_settings(comparison),
        "best_model": comparison.best_model,
        "best_model_rule": "highest mean outer-fold cross-validated AUC on the training set",
        "models": {name: _model_summary(result) for name, result in comparison.results.items()},
        "delong": _delong_tests(comparison, evaluation),
        "calibration": {name: _calibration(evaluation, name) for name in _curve_models(comparison)},
        "decision_curve": _decision_curves(comparison, evaluation),
        "notes": [str(note) for note in comparison.notes],
        "failed_models": dict(comparison.failed),
        "packages": package_versions(),
    }
    return json_safe(summary)


def _cohort(comparison: ModelComparison, extra: Mapping[str, Any]) -> dict[str, Any]:
    """Counts from the comparison's labels (authoritative), then the caller's other facts."""
    counts = _cohort_counts(comparison)
    return {**counts, **{str(k): v for k, v in extra.items() if str(k) not in counts}}


def _cohort_counts(comparison: ModelComparison) -> dict[str, Any]:
    counts: dict[str, Any] = {}
    for name, y in (("train", comparison.y_train), ("test", comparison.y_test)):
        if y is None:
            counts.update({f"n_{name}": 0, f"prevalence_{name}": None})
            continue
        y = np.asarray(y)
        counts.update({f"n_{name}": int(y.size), f"cases_{name}": int(y.sum()),
                       f"controls_{name}": int(y.size - y.sum()), f"prevalence_{name}": float(y.mean())})
    return counts


def _model_settings(comparison: ModelComparison) -> dict[str, Any]:
    settings = comparison.settings
    return {f.name: _plain(getattr(settings, f.name)) for f in dataclasses.fields(settings)}


def _plain(value: Any) -> Any:
    """JSON-able as is, else its repr (e.g. a harmonizer template)."""
    if value is None or isinstance(value, (bool, int, float, str, list, tuple, dict)):
        return value
    return repr(value)


def _model_summary(result: ModelResult) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "feature_set": result.feature_set,
        "classifier": result.classifier,
        "cv_auc": result.cv_auc_mean,
        "cv_auc_sd": result.cv_auc_sd,
        "cv_auc_pooled": result.cv_auc_pooled,
        "cv_fold_aucs": list(result.cv.fold_aucs),
        "grid_best_auc_optimistic": float(getattr(result.model, "best_score_", np.nan)),
        "threshold": result.threshold,
        "threshold_rule": "Youden on training out-of-fold probabilities",
        "n_features": len(result.selected_features),
        "selected_features": list(result.selected_features),
        "best_params": dict(result.best_params),
        "seconds": result.seconds,
        "remarks": list(result.remarks),
        "test_auc": None, "test_auc_ci": None, "test_auc_ci_bootstrap": None, "bootstrap": None,
    }
    if result.test_auc_delong is not None:
        delong, boot = result.test_auc_delong, result.test_auc_bootstrap
        summary.update(test_auc=delong.auc, test_auc_ci=[delong.ci_lower, delong.ci_upper],
                       conf_level=delong.conf_level)
        if boot is not None:
            summary.update(test_auc_ci_bootstrap=[boot.ci_lower, boot.ci_upper],
                           bootstrap={"n_boot": boot.n_boot, "seed": boot.seed})
    if isinstance(result.model, Nomogram):
        summary["fit_method"] = result.model.fit_method
    metrics = result.test_metrics
    for metric in ("sensitivity", "specificity", "ppv", "npv", "accuracy"):
        summary[metric] = None if metrics is None else dataclasses.asdict(getattr(metrics, metric))
    if metrics is not None:
        summary["confusion"] = {"tp": metrics.tp, "fp": metrics.fp, "tn": metrics.tn, "fn": metrics.fn}
        summary["metric_ci_method"] = metrics.ci_method
    return summary


# ---------------------------------------------------------------- comparisons
def _best_of_set(comparison: ModelComparison, feature_set: str) -> str | None:
    best = best_result(r for r in comparison.results.values() if r.feature_set == feature_set)
    return None if best is None else best.name


def _delong_pairs(comparison: ModelComparison) -> list[tuple[str, str, str]]:
    """(kind, model, reference): every model vs the best; best fused vs best radiomic / deep."""
    best = comparison.best_model
    pairs = [("vs best model", name, best) for name in comparison.results if name != best]
    fused = _best_of_set(comparison, "fused")
    for other_set in ("radiomic", "deep"):
        other = _best_of_set(comparison, other_set)
        if fused is not None and other is not None:
            pairs.append((f"fused vs {other_set} (best of each by CV AUC)", fused, other))
    return pairs


def _delong_tests(comparison: ModelComparison, evaluation: _Evaluation) -> list[dict[str, Any]]:
    tests = []
    for kind, name, reference in _delong_pairs(comparison):
        entry: dict[str, Any] = {"comparison": kind, "model": name, "reference": reference, "set": evaluation.label}
        try:
            result = delong_test(evaluation.y, evaluation.probability[name], evaluation.probability[reference])
        except InputError as exc:
            entry.update(p_value=None, error=str(exc))
        else:
            entry.update(auc_model=result.auc1, auc_reference=result.auc2, difference=result.auc_difference,
                         z=result.z, p_value=result.p_value)
        tests.append(entry)
    return tests


def _curve_models(comparison: ModelComparison) -> list[str]:
    """The best model and the nomogram: the two a reader compares on calibration and net benefit."""
    names = [comparison.best_model]
    if NOMOGRAM_MODEL in comparison.results and NOMOGRAM_MODEL not in names:
        names.append(NOMOGRAM_MODEL)
    return names


def _calibration(evaluation: _Evaluation, name: str) -> dict[str, Any]:
    y, p = evaluation.y, np.asarray(evaluation.probability[name], dtype=float)
    clip = CALIBRATION_CLIP if np.any((p <= 0) | (p >= 1)) else None
    entry: dict[str, Any] = {"set": evaluation.label, "n": int(y.size), "clip": clip}
    try:
        entry["curve"] = calibration_curve(y, p, n_bins=10).to_dict(orient="records")
    except InputError as exc:
        entry.update(curve=None, curve_error=str(exc))
    try:
        hl = hosmer_lemeshow_test(y, p, g=10)
        entry["hosmer_lemeshow"] = {"statistic": hl.statistic, "df": hl.df, "p_value": hl.p_value,
                                    "n_groups": hl.n_groups}
    except InputError as exc:
        entry.update(hosmer_lemeshow=None, hosmer_lemeshow_error=str(exc))
    try:
        fit = calibration_intercept_slope(y, p, clip=clip)
        entry.update(intercept=fit.intercept, slope=fit.slope, intercept_se=fit.intercept_se, slope_se=fit.slope_se,
                     slope_method=fit.slope_method)
    except InputError as exc:
        entry.update(intercept=None, slope=None, intercept_slope_error=str(exc))
    return entry


def _decision_curves(comparison: ModelComparison, evaluation: _Evaluation) -> dict[str, Any]:
    curves = {name: decision_curve(evaluation.y, evaluation.probability[name]) for name in _curve_models(comparison)}
    first = next(iter(curves.values()))
    return {
        "set": evaluation.label,
        "rule": "positive when p > threshold (rmda)",
        "threshold": first["threshold"].tolist(),
        "treat_all": first["net_benefit_treat_all"].tolist(),
        "treat_none": first["net_benefit_treat_none"].tolist(),
        "models": {name: curve["net_benefit_model"].tolist() for name, curve in curves.items()},
    }


def package_versions() -> dict[str, str]:
    """Python and the installed versions of the packages the numbers depend on."""
    versions = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    try:
        versions["radfusionscreen"] = metadata.version("radfusionscreen")
    except metadata.PackageNotFoundError:
        pass
    return versions


def json_safe(value: Any) -> Any:
    """Plain JSON types: numpy scalars / arrays unpacked, tuples as lists, NaN and ±inf as None."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (np.ndarray, pd.Series)):
        return json_safe(np.asarray(value).tolist())
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if value is None or isinstance(value, str):
        return value
    return str(value)


# ======================================================================== HTML
def write_report(path: str | os.PathLike, comparison: ModelComparison, summary: Mapping[str, Any],
                 shap: ShapResult | None, selected_model_name: str) -> Path:
    """Write the comparison as one self-contained HTML file; returns its path.

    Parameters
    ----------
    path : file to write (replaced atomically: readers never see a half-written report)
    comparison : ModelComparison
        Gives the predictions behind the ROC, calibration and decision-curve figures.
    summary : mapping
        From :func:`comparison_summary` (tables are rendered from it).
    shap : ShapResult or None
        SHAP values of the selected model (:func:`~.explain.shap_values`), if computed.
    selected_model_name : str
        The model chosen for export (often ``summary["best_model"]``).
    """
    if selected_model_name not in comparison.results:
        raise InputError(f"selected model {selected_model_name!r} is not one of the compared models: "
                         f"{', '.join(comparison.results)}")
    evaluation = _evaluation(comparison)
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
    return _write_atomically(Path(path), _page(sections))


def _write_atomically(path: Path, text: str) -> Path:
    """Temp file beside the target (same file system), then os.replace: all or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(temporary, "x", encoding="utf-8") as stream:  # "x": honours the umask, unlike mkstemp
            stream.write(text)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


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
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<figure><img alt="{_e(alt)}" src="data:image/png;base64,{encoded}"></figure>'


# ------------------------------------------------------------------ formatting
def _num(value: Any, digits: int = 3) -> str:
    return "—" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.{digits}f}"


def _interval(values: Sequence[float] | None) -> str:
    return "—" if not values or any(v is None for v in values) else f"{values[0]:.3f}–{values[1]:.3f}"


def _p(value: Any) -> str:
    if value is None:
        return "—"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def _proportion(entry: Mapping[str, Any] | None) -> str:
    if not entry or entry.get("estimate") is None:
        return "—"
    return (f"{entry['estimate']:.3f} ({_num(entry.get('lower'))}–{_num(entry.get('upper'))}; "
            f"{entry['successes']}/{entry['trials']})")


def _text(value: Any) -> str:
    """A settings value in one line: mappings as key=value, sequences comma-separated."""
    if isinstance(value, Mapping):
        return "; ".join(f"{k}={_text(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(_text(v) for v in value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return "—" if value is None else str(value)


# -------------------------------------------------------------------- sections
def _header(summary: Mapping[str, Any], selected: str) -> str:
    return (f"<h1>RadFusionScreen model comparison</h1>\n"
            f"<p class=\"warning\">{_e(RESEARCH_USE)}</p>\n"
            + _paragraph(f"Created {summary.get('created', '—')}. Best model by cross-validated AUC: "
                         f"{summary.get('best_model', '—')}; selected model: {selected}. "
                         f"Curves and tests use the {summary.get('evaluation_set', '—')}."))


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
        rows.append((label, f"{_num(m.get('cv_auc'))} ± {_num(m.get('cv_auc_sd'))}", _num(m.get("cv_auc_pooled")),
                     _num(m.get("test_auc")), _interval(m.get("test_auc_ci")),
                     _interval(m.get("test_auc_ci_bootstrap")),
                     "—" if name == best else _p(p_vs_best.get(name)), _num(m.get("threshold")),
                     *(_proportion(m.get(metric)) for metric in _METRICS), m.get("n_features")))
        classes.append("best" if name == best else "selected" if name == selected else "")
    note = _paragraph("Models ranked by mean outer-fold cross-validated AUC (nested CV on the training set). "
                      "The threshold is Youden's on training out-of-fold probabilities and is applied unchanged "
                      "to the test set; metrics show the estimate (95% Wilson interval; count).", "small")
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
    for extra in (comparison.best_model, selected, NOMOGRAM_MODEL):
        if extra in comparison.results and extra not in chosen:
            chosen.append(extra)
    return chosen


def _roc_points(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(1 − specificity, sensitivity) at every distinct threshold, positive when p ≥ t."""
    order = np.argsort(-p, kind="stable")
    p, y = p[order], y[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(p) != 0), p.size - 1]
    tp, fp = np.cumsum(y)[last_of_tie], np.cumsum(1 - y)[last_of_tie]
    return np.r_[0.0, fp / max(fp[-1], 1)], np.r_[0.0, tp / max(tp[-1], 1)]


def _roc_section(comparison: ModelComparison, evaluation: _Evaluation, selected: str) -> str:
    figure = Figure(figsize=(6.2, 5.6))
    axes = figure.subplots()
    for name in _roc_models(comparison, selected):
        fpr, tpr = _roc_points(evaluation.y, np.asarray(evaluation.probability[name], dtype=float))
        result = comparison.results[name]
        auc = (f"AUC {result.test_auc_delong.auc:.3f} ({result.test_auc_delong.ci_lower:.3f}–"
               f"{result.test_auc_delong.ci_upper:.3f})") if evaluation.label == TEST_SET else \
            f"pooled OOF AUC {result.cv_auc_pooled:.3f}"
        axes.step(fpr, tpr, where="post", lw=2.2 if name == selected else 1.3, label=f"{name}: {auc}")
    axes.plot([0, 1], [0, 1], ls=":", color="grey", lw=1)
    axes.set(xlabel="1 − specificity", ylabel="sensitivity", xlim=(-0.01, 1.01), ylim=(-0.01, 1.01),
             title=f"ROC curves ({evaluation.label})")
    axes.legend(loc="lower right", fontsize=7)
    return _section("roc", "ROC curves", _paragraph(
        f"Top {ROC_TOP_MODELS} models by cross-validated AUC, plus the best, the selected and the nomogram "
        f"model; {evaluation.label}.", "small"), _figure(figure, "ROC curves"))


def _delong_section(summary: Mapping[str, Any]) -> str:
    tests = summary.get("delong", [])
    if not tests:
        return _section("delong", "DeLong tests", _paragraph("Only one model: nothing to compare."))
    rows = [(t["comparison"], t["model"], t["reference"], _num(t.get("auc_model")), _num(t.get("auc_reference")),
             _num(t.get("difference")), _num(t.get("z"), 2), _p(t.get("p_value")), t.get("error", ""))
            for t in tests]
    headers = ("comparison", "model", "reference", "AUC model", "AUC reference", "difference", "z", "p", "remark")
    return _section("delong", "DeLong tests", _paragraph(
        f"Paired DeLong tests of correlated ROC curves on the {tests[0]['set']} (two-sided, unadjusted "
        "for multiple comparisons).", "small"), _table(headers, rows))


def _calibration_section(summary: Mapping[str, Any]) -> str:
    calibration = summary.get("calibration", {})
    if not calibration:
        return ""
    figure = Figure(figsize=(5.6, 5.4))
    axes = figure.subplots()
    axes.plot([0, 1], [0, 1], ls=":", color="grey", lw=1, label="ideal")
    rows = []
    for name, entry in calibration.items():
        curve = pd.DataFrame(entry.get("curve") or [])
        if not curve.empty:
            error = np.vstack([curve["observed_rate"] - curve["observed_lower"],
                               curve["observed_upper"] - curve["observed_rate"]])
            axes.errorbar(curve["mean_predicted"], curve["observed_rate"], yerr=np.clip(error, 0, None), marker="o",
                          capsize=3, lw=1.2, label=name)
        hl = entry.get("hosmer_lemeshow") or {}
        rows.append((name, entry.get("set"), entry.get("n"), _num(hl.get("statistic"), 2), hl.get("df", "—"),
                     _p(hl.get("p_value")), _num(entry.get("intercept")), _num(entry.get("slope")),
                     "—" if entry.get("clip") is None else f"{entry['clip']:g}",
                     entry.get("hosmer_lemeshow_error", "") or entry.get("intercept_slope_error", "")
                     or _slope_remark(entry)))
    axes.set(xlabel="mean predicted probability (decile groups)", ylabel="observed event rate (95% Wilson CI)",
             xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), title="Calibration")
    axes.legend(loc="upper left", fontsize=8)
    headers = ("model", "set", "n", "Hosmer-Lemeshow χ²", "df", "p", "calibration intercept", "calibration slope",
               "probability clip", "remark")
    return _section("calibration", "Calibration", _paragraph(
        "Groups are deciles of predicted risk (as hoslem.test). Intercept: calibration-in-the-large (0 is "
        "ideal); slope: 1 is ideal, below 1 means too extreme predictions, above 1 too modest ones.", "small"),
        _figure(figure, "calibration plot"), _table(headers, rows))


def _slope_remark(entry: Mapping[str, Any]) -> str:
    if entry.get("slope_method") != "firth":
        return ""
    return ("slope by Firth's bias-reduced fit: the predictions rank this set without error, so the "
            "maximum-likelihood slope is infinite; with no misranked case the slope is poorly determined")


def _decision_section(summary: Mapping[str, Any]) -> str:
    curves = summary.get("decision_curve")
    if not curves:
        return ""
    threshold = np.asarray(curves["threshold"], dtype=float)
    figure = Figure(figsize=(6.4, 4.6))
    axes = figure.subplots()
    for name, benefit in curves["models"].items():
        axes.plot(threshold, np.asarray(benefit, dtype=float), lw=1.6, label=name)
    treat_all = np.asarray(curves["treat_all"], dtype=float)
    axes.plot(threshold, treat_all, color="grey", lw=1, label="treat all")
    axes.plot(threshold, np.asarray(curves["treat_none"], dtype=float), color="black", lw=1, ls="--",
              label="treat none")
    top = max(0.05, float(np.nanmax(treat_all[:1])) if treat_all.size else 0.05)
    axes.set(xlabel="threshold probability", ylabel="net benefit", ylim=(-0.05, top * 1.1 + 0.02),
             title=f"Decision curves ({curves['set']})")
    axes.legend(fontsize=8)
    return _section("decision-curve", "Decision curves", _paragraph(
        "Net benefit = TP/n − FP/n · pt/(1 − pt) over threshold probabilities pt, against treating everyone "
        "and treating no one.", "small"), _figure(figure, "decision curves"))


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
    rows = [(r.feature, f"{r.mean_abs_shap:.4g}", f"{r.mean_shap:.4g}", _num(r.correlation, 2), r.direction)
            for r in table.itertuples()]
    caveat = "" if shap.exact else " (an approximation)"
    return _section("shap", "SHAP feature contributions", _paragraph(
        f"Model {selected}: {shap.method}{caveat}; values in {shap.output} space, base value "
        f"{shap.base_value:.4g}, {shap.values.shape[0]} explained cases.", "small"),
        _figure(shap_bar_figure(table, shap.output), "mean absolute SHAP values"),
        _figure(shap_dot_figure(shap, table["feature"].tolist()), "SHAP values per case"),
        _table(("feature", "mean |SHAP|", "mean SHAP", "r(value, SHAP)", "direction"), rows))


def shap_bar_figure(table: pd.DataFrame, output: str) -> Figure:
    """Horizontal bars of mean |SHAP|, the most important feature on top."""
    figure = Figure(figsize=(7.0, 0.3 * len(table) + 1.2))
    axes = figure.subplots()
    axes.barh(np.arange(len(table))[::-1], table["mean_abs_shap"], color="#3b75af")
    axes.set_yticks(np.arange(len(table))[::-1], labels=table["feature"], fontsize=7)
    axes.set_xlabel(f"mean |SHAP value| ({output})")
    return figure


def shap_dot_figure(shap: ShapResult, features: Sequence[str]) -> Figure:
    """Beeswarm-like dot plot: one row per feature, dots spread by density, coloured by value rank."""
    figure = Figure(figsize=(7.6, 0.34 * len(features) + 1.4))
    axes = figure.subplots()
    index = {name: j for j, name in enumerate(shap.feature_names)}
    points = None
    for row, name in enumerate(features):
        values = np.asarray(shap.values[:, index[name]], dtype=float)
        y = len(features) - 1 - row + _swarm_offsets(values)
        colour = _value_ranks(None if shap.data is None else np.asarray(shap.data)[:, index[name]], values.size)
        points = axes.scatter(values, y, c=colour, cmap="coolwarm", vmin=0, vmax=1, s=9, linewidths=0)
    axes.axvline(0, color="grey", lw=0.8)
    axes.set_yticks(np.arange(len(features))[::-1], labels=list(features), fontsize=7)
    axes.set_xlabel(f"SHAP value ({shap.output})")
    if points is not None:
        colorbar = figure.colorbar(points, ax=axes, fraction=0.03, pad=0.01, ticks=[0, 1])
        colorbar.ax.set_yticklabels(["low", "high"])
        colorbar.set_label("feature value", fontsize=8)
    return figure


def _swarm_offsets(values: np.ndarray, bins: int = 40, height: float = 0.38) -> np.ndarray:
    """Vertical offsets that fan out dots where values crowd (deterministic)."""
    if values.size == 0 or np.ptp(values) == 0:
        return np.linspace(-height, height, values.size) if values.size > 1 else np.zeros(values.size)
    edges = np.linspace(values.min(), values.max(), bins + 1)
    which = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, bins - 1)
    offsets = np.zeros(values.size)
    widest = np.bincount(which, minlength=bins).max()
    for b in np.unique(which):
        members = np.flatnonzero(which == b)
        rank = np.arange(members.size)
        signed = np.where(rank % 2 == 0, rank // 2, -(rank // 2 + 1))  # 0, -1, 1, -2, 2, ...
        offsets[members] = signed * (2 * height / max(widest, 2))
    return np.clip(offsets, -height, height)


def _value_ranks(values: np.ndarray | None, n: int) -> np.ndarray:
    if values is None:
        return np.full(n, 0.5)
    ranks = pd.Series(values).rank(pct=True).to_numpy()
    return np.nan_to_num(ranks, nan=0.5)


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
