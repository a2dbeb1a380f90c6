"""The numbers of a model comparison, as plain JSON: the record behind the report and ``radfusion train --json``.

:func:`comparison_summary` turns a :class:`~RadFusionScreenLib.model.train.ModelComparison` into
plain JSON (no NaN: missing values are ``null``): per-model CV and test performance with
intervals, DeLong tests, calibration and decision curves, the pipeline settings and the package
versions. :func:`describe_cohort` gives cases per split and site for its ``cohort`` argument.

Which data the curves use: the test set when there is one; otherwise the training
out-of-fold predictions of the nested cross-validation (:func:`evaluation_set`), and every
entry says which. On the test set a model's probability is the calibrated one it serves
(:mod:`.calibration`); each calibration entry of a calibrated model also gives the calibration
``before`` and ``after`` the calibrator (on the out-of-fold set, "after" uses each case's
calibration fitted without its inner fold), with the method and how it was chosen. The HTML report (:mod:`RadFusionScreenLib.presentation.model_report`) renders
its tables from this summary, so the HTML and the JSON agree.
"""

from __future__ import annotations

import dataclasses
import platform
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from typing import Any, Mapping

import numpy as np
import pandas as pd

from RadFusionScreenLib.core.errors import InputError
from RadFusionScreenLib.core.jsonable import to_jsonable
from RadFusionScreenLib.model.calibration import calibration_metrics
from RadFusionScreenLib.model.roles import NOMOGRAM_RESULT
from RadFusionScreenLib.model.train import ModelComparison, ModelResult, best_result
from RadFusionScreenLib.model.train.model_result import training_threshold
from RadFusionScreenLib.stats import Nomogram, calibration_curve, decision_curve, delong_test

FORMAT = "RadFusionScreen.ComparisonSummary"
FORMAT_VERSION = 1
TEST_SET = "test set"
TRAINING_OOF = "training set, out-of-fold (no test set)"
PACKAGES = ("numpy", "pandas", "scipy", "scikit-learn", "xgboost-cpu", "xgboost", "lightgbm", "matplotlib",
            "pyradiomics-bhklab", "torch", "SimpleITK")


# ====================================================================== summary
@dataclass(frozen=True)
class EvaluationSet:
    """The labels and each model's probabilities on the set the curves are drawn from."""

    label: str
    y: np.ndarray
    probability: dict[str, np.ndarray]


def evaluation_set(comparison: ModelComparison) -> EvaluationSet:
    """The test set when every model has test predictions, else the training out-of-fold predictions."""
    results = comparison.results
    if comparison.y_test is not None and all(r.test_probability is not None for r in results.values()):
        return EvaluationSet(TEST_SET, np.asarray(comparison.y_test),
                             {n: r.test_probability for n, r in results.items()})
    return EvaluationSet(TRAINING_OOF, np.asarray(comparison.y_train),
                         {n: r.cv.probability for n, r in results.items()})


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
    evaluation = evaluation_set(comparison)
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
        "calibration": {name: _calibration(comparison, evaluation, name) for name in _curve_models(comparison)},
        "decision_curve": _decision_curves(comparison, evaluation),
        "notes": [str(note) for note in comparison.notes],
        "failed_models": dict(comparison.failed),
        "packages": package_versions(),
    }
    return to_jsonable(summary, unknown="str")


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
    # a value that is not JSON data as its repr (e.g. a harmonizer template)
    return {f.name: to_jsonable(getattr(settings, f.name), unknown="repr") for f in dataclasses.fields(settings)}


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
        "threshold_rule": "Youden on training out-of-fold probabilities"
                          + ("" if result.calibration is None else ", calibrated"),
        "threshold_uncalibrated": None if result.calibration is None else training_threshold(
            result.cv.y, _calibration_input(result)),
        "calibration": None if result.calibration is None else result.calibration.to_dict(),
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


def _delong_tests(comparison: ModelComparison, evaluation: EvaluationSet) -> list[dict[str, Any]]:
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
    """The best model, the shipped one and the nomogram: those a reader compares on calibration and net benefit."""
    names = [comparison.best_model]
    try:
        names.append(comparison.shipped_result().name)
    except InputError:
        pass
    if NOMOGRAM_RESULT in comparison.results and NOMOGRAM_RESULT not in names:
        names.append(NOMOGRAM_RESULT)
    return names


def _calibration(comparison: ModelComparison, evaluation: EvaluationSet, name: str) -> dict[str, Any]:
    """Calibration of the probability on the evaluation set (:func:`.calibration.calibration_metrics`:
    intercept and slope with Wald CIs, Hosmer-Lemeshow) and its curve; for a calibrated model
    also ``calibration``: the method, its choice, and the metrics before and after it."""
    y, p = evaluation.y, np.asarray(evaluation.probability[name], dtype=float)
    entry: dict[str, Any] = {"set": evaluation.label, **calibration_metrics(y, p)}
    try:
        entry["curve"] = calibration_curve(y, p, n_bins=10).to_dict(orient="records")
    except InputError as exc:
        entry.update(curve=None, curve_error=str(exc))
    result = comparison.results[name]
    selection = result.calibration
    entry["probability"] = ("the nomogram's own (logistic model)" if selection is None else
                            f"as served (calibration: {selection.method})" if evaluation.label == TEST_SET
                            else "uncalibrated (out-of-fold)")
    if selection is None:
        entry["calibration"] = None
        return entry
    if evaluation.label == TEST_SET:
        before, after = result.test_probability_uncalibrated, p
    else:
        before = _calibration_input(result)
        after = before if selection.held_out is None else selection.held_out
    entry["calibration"] = {"method": selection.method, "description": selection.calibrator.describe(),
                            "selection": selection.to_dict(),
                            "before": None if before is None else calibration_metrics(y, before),
                            "after": calibration_metrics(y, after),
                            "after_note": None if evaluation.label == TEST_SET else
                            "each training case calibrated by the chosen method fitted without its inner fold"}
    return entry


def _calibration_input(result: ModelResult) -> np.ndarray:
    """The training out-of-fold probabilities the calibrator was fitted on (the final configuration's)."""
    return result.cv.probability if result.calibration_probability is None else result.calibration_probability


def _decision_curves(comparison: ModelComparison, evaluation: EvaluationSet) -> dict[str, Any]:
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
