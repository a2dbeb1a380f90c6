"""The figures of the model-comparison report (:mod:`RadFusionScreenLib.presentation.model_report`).

Matplotlib figures, no pyplot: ROC curves drawn from the predictions, calibration and decision
curves drawn from the comparison summary (:func:`RadFusionScreenLib.model.evaluation.comparison_summary`),
and the SHAP summaries of the selected model (bars of mean |SHAP|, a beeswarm-like dot plot).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from RadFusionScreenLib.explanation.shap_values import ShapResult
from RadFusionScreenLib.model.evaluation import TEST_SET, EvaluationSet
from RadFusionScreenLib.model.train import ModelComparison


def roc_figure(comparison: ModelComparison, evaluation: EvaluationSet, names: Sequence[str],
               selected: str) -> Figure:
    """ROC curves of ``names`` on the evaluation set, the selected model drawn thicker."""
    figure = Figure(figsize=(6.2, 5.6))
    axes = figure.subplots()
    for name in names:
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
    return figure


def _roc_points(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(1 − specificity, sensitivity) at every distinct threshold, positive when p ≥ t."""
    order = np.argsort(-p, kind="stable")
    p, y = p[order], y[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(p) != 0), p.size - 1]
    tp, fp = np.cumsum(y)[last_of_tie], np.cumsum(1 - y)[last_of_tie]
    return np.r_[0.0, fp / max(fp[-1], 1)], np.r_[0.0, tp / max(tp[-1], 1)]


def calibration_figure(calibration: Mapping[str, Mapping[str, Any]]) -> Figure:
    """Observed event rate (95% Wilson CI) against mean predicted probability per decile group,
    one line per model of the summary's ``calibration`` entry."""
    figure = Figure(figsize=(5.6, 5.4))
    axes = figure.subplots()
    axes.plot([0, 1], [0, 1], ls=":", color="grey", lw=1, label="ideal")
    for name, entry in calibration.items():
        curve = pd.DataFrame(entry.get("curve") or [])
        if not curve.empty:
            error = np.vstack([curve["observed_rate"] - curve["observed_lower"],
                               curve["observed_upper"] - curve["observed_rate"]])
            axes.errorbar(curve["mean_predicted"], curve["observed_rate"], yerr=np.clip(error, 0, None), marker="o",
                          capsize=3, lw=1.2, label=name)
    axes.set(xlabel="mean predicted probability (decile groups)", ylabel="observed event rate (95% Wilson CI)",
             xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), title="Calibration")
    axes.legend(loc="upper left", fontsize=8)
    return figure


def decision_curve_figure(curves: Mapping[str, Any]) -> Figure:
    """Net benefit of each model against treating all and treating none (the summary's ``decision_curve``)."""
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
    return figure


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
