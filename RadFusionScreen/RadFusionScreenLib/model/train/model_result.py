"""One model's evaluation: nested CV on the training set, the final fit, the probability
calibration and the Youden threshold from out-of-fold predictions, then the untouched test set
(a :class:`ModelResult`).

Calibration (:mod:`RadFusionScreenLib.model.calibration`): the method (none, Platt, isotonic)
is chosen and fitted on the training set's out-of-fold probabilities only, with inner folds
grouped as the outer ones. Those out-of-fold probabilities are the *final model's
configuration*'s (its chosen hyper-parameters fixed, refitted on the same outer folds), as
scikit-learn's ``CalibratedClassifierCV(ensemble=False)`` does: the nested-CV predictions mix
each fold's own choice (a LASSO-LR with C = 0.1 in one fold, 0.01 in the next), whose
probability scales differ from the final model's, so a map fitted on them would not fit the
model it is applied to. The threshold is Youden's on the *calibrated* out-of-fold
probabilities (the calibrator fitted on all of them, applied to them), so it is on the scale
of the probability a user sees; ``test_probability`` is the calibrated test probability (what a
bundle serves, the one every test figure describes) and ``test_probability_uncalibrated`` the
classifier's own output.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
from sklearn.base import clone

from RadFusionScreenLib.core.errors import InputError
from RadFusionScreenLib.model.calibration import CalibrationSelection, select_calibrator
from RadFusionScreenLib.model.fit_cache import FitCache
from RadFusionScreenLib.model.roles import CANDIDATE
from RadFusionScreenLib.model.train.cross_validation import (CrossValidatedPredictions, cross_validated_predictions,
                                                             process_count)
from RadFusionScreenLib.model.train.pipelines import (ModelSettings, build_pipeline, build_search, fit_model,
                                                      param_grid, predict_probability, selected_feature_names)
from RadFusionScreenLib.model.train.splits import StratifiedSiteKFold
from RadFusionScreenLib.stats import (AUCResult, ThresholdMetrics, auc_ci_bootstrap, auc_ci_delong, threshold_metrics,
                                      youden_threshold)


@dataclass
class ModelResult:
    """One model of the comparison: CV on training data, then the untouched test set."""

    name: str
    feature_set: str
    classifier: str
    cv: CrossValidatedPredictions
    threshold: float  # Youden on training out-of-fold probabilities (calibrated when a calibration was fitted)
    model: Any  # the final fitted model (pipeline, grid search or Nomogram)
    selected_features: list[str]
    best_params: dict[str, Any]
    seconds: float
    test_probability: np.ndarray | None = None
    test_auc_delong: AUCResult | None = None
    test_auc_bootstrap: AUCResult | None = None
    test_metrics: ThresholdMetrics | None = None
    remarks: list[str] = field(default_factory=list)  # fallbacks used for this model (e.g. Firth's fit)
    role: str = CANDIDATE  # roles.CANDIDATE, SCORE_ONLY (makes a rad/deep score only) or NOMOGRAM
    calibration: CalibrationSelection | None = None  # None: the probability is the model's own (nomogram)
    test_probability_uncalibrated: np.ndarray | None = None  # the classifier's output before calibration
    calibration_probability: np.ndarray | None = None  # out-of-fold, final configuration: what calibration saw

    @property
    def cv_auc_mean(self) -> float:
        return self.cv.auc_mean

    @property
    def cv_auc_sd(self) -> float:
        return self.cv.auc_sd

    @property
    def cv_auc_pooled(self) -> float:
        return self.cv.auc_pooled

    def row(self) -> dict[str, Any]:
        """One summary-table row."""
        row = {
            "model": self.name, "feature_set": self.feature_set, "classifier": self.classifier,
            "cv_auc_mean": self.cv_auc_mean, "cv_auc_sd": self.cv_auc_sd, "cv_auc_pooled": self.cv_auc_pooled,
            # the final grid search's best inner score: a maximum over candidates, optimistic
            "grid_best_auc_optimistic": float(getattr(self.model, "best_score_", np.nan)),
            "threshold": self.threshold, "n_features": len(self.selected_features), "seconds": self.seconds,
            "calibration": None if self.calibration is None else self.calibration.method,
        }
        if self.test_auc_delong is not None:
            row.update(test_auc=self.test_auc_delong.auc,
                       test_auc_delong_lower=self.test_auc_delong.ci_lower,
                       test_auc_delong_upper=self.test_auc_delong.ci_upper,
                       test_auc_bootstrap_lower=self.test_auc_bootstrap.ci_lower,
                       test_auc_bootstrap_upper=self.test_auc_bootstrap.ci_upper)
        if self.test_metrics is not None:
            for metric in ("sensitivity", "specificity", "ppv", "npv", "accuracy"):
                row[f"test_{metric}"] = getattr(self.test_metrics, metric).estimate
        return row


@dataclass(frozen=True)
class EvaluationContext:
    """What every model of one comparison is evaluated with: data, labels, folds, settings."""

    train: pd.DataFrame
    test: pd.DataFrame | None
    y_train: np.ndarray
    y_test: np.ndarray | None
    groups: np.ndarray | None
    settings: ModelSettings
    grid: str
    n_boot: int
    n_jobs: int
    outer_cv: StratifiedSiteKFold
    inner_cv: StratifiedSiteKFold
    categorical_columns: tuple[str, ...]
    memory: FitCache | None = None  # fitted-transformer cache shared by every model of the comparison
    log: Callable[[str], None] = lambda message: None


def evaluate_model(context: EvaluationContext, feature_set: str, classifier: str, feature_columns: Sequence[str],
                   settings: ModelSettings | None = None) -> ModelResult:
    """Nested CV, final fit, Youden threshold from out-of-fold predictions, test metrics."""
    started = time.perf_counter()
    settings = settings or context.settings
    pipeline = build_pipeline(feature_columns, classifier, settings, clinical=feature_set == "clinical",
                              categorical_columns=context.categorical_columns, memory=context.memory)
    search = build_search(pipeline, param_grid(classifier, context.grid), context.inner_cv,
                          process_count(context.n_jobs, 64))
    name = f"{feature_set}/{classifier}"
    context.log(f"{name}: nested CV ({context.outer_cv.n_splits} outer folds)")
    cv = cross_validated_predictions(search, context.train, context.y_train, context.outer_cv, context.groups,
                                     context.n_jobs, lambda line: context.log(f"{name}: {line}"))
    context.log(f"{name}: final fit on the training set")
    final = fit_model(clone(search), context.train, context.y_train, context.groups)
    oof = final_configuration_predictions(final, cv, context, lambda line: context.log(f"{name}: {line}"))
    calibration = select_calibrator(oof, context.y_train, context.groups, context.inner_cv.n_splits,
                                    context.settings.random_state)
    context.log(f"{name}: calibration {calibration.calibrator.describe()}")
    result = ModelResult(
        name=name, feature_set=feature_set, classifier=classifier, cv=cv,
        threshold=training_threshold(context.y_train, calibration.apply(oof)), model=final,
        selected_features=selected_feature_names(final), best_params=getattr(final, "best_params_", {}),
        seconds=0.0, remarks=[f"calibration: {remark}" for remark in calibration.remarks], calibration=calibration,
        calibration_probability=oof,
    )
    if context.test is not None:
        raw = predict_probability(final, context.test)
        result.test_probability_uncalibrated = raw
        score_test_set(result, calibration.apply(raw), context)
    result.seconds = time.perf_counter() - started
    return result


def final_configuration_predictions(final: Any, cv: CrossValidatedPredictions, context: EvaluationContext,
                                    progress: Callable[[str], None] | None = None) -> np.ndarray:
    """Out-of-fold probabilities of the final model's configuration (its hyper-parameters fixed)
    on the outer folds: what its calibrator is fitted on (see the module doc).

    When every outer fold chose the final model's hyper-parameters, the nested-CV predictions
    already are these (the same configuration fitted on the same rows) and are reused.
    """
    chosen = getattr(final, "best_params_", None)
    if chosen is None or all(params == chosen for params in cv.best_params):
        return cv.probability
    if progress is not None:
        progress(f"outer folds refitted with the final hyper-parameters {chosen} (for the calibration)")
    return cross_validated_predictions(clone(final.best_estimator_), context.train, context.y_train,
                                       context.outer_cv, context.groups, context.n_jobs).probability


def score_test_set(result: ModelResult, probability: np.ndarray, context: EvaluationContext) -> None:
    """Test AUC (DeLong and bootstrap CIs) and the metrics at the training threshold, into ``result``."""
    result.test_probability = probability
    result.test_auc_delong = auc_ci_delong(context.y_test, probability)
    result.test_auc_bootstrap = auc_ci_bootstrap(context.y_test, probability, n_boot=context.n_boot,
                                                 seed=context.settings.random_state)
    if np.isfinite(result.threshold):
        result.test_metrics = threshold_metrics(context.y_test, probability, result.threshold)


def training_threshold(y: np.ndarray, oof_probability: np.ndarray) -> float:
    """Youden threshold on training out-of-fold probabilities (NaN for a constant predictor)."""
    try:
        return youden_threshold(y, oof_probability)
    except InputError:
        return float("nan")


def progress_line(result: ModelResult) -> str:
    """The progress line of a finished model."""
    test = "" if result.test_auc_delong is None else f", test AUC {result.test_auc_delong.auc:.3f}"
    return (f"{result.name}: CV AUC {result.cv_auc_mean:.3f} ± {result.cv_auc_sd:.3f}{test} "
            f"({len(result.selected_features)} features, {result.seconds:.1f} s)")


def evaluate_or_note(name: str, notes: list[str], failed: dict[str, str], log: Callable[[str], None],
                     evaluate: Callable[[], ModelResult]) -> ModelResult | None:
    """Run one model's evaluation; any failure (ours or a library's) becomes a note on that model."""
    try:
        result = evaluate()
    except Exception as exc:  # noqa: BLE001 -- one degenerate model must not end the comparison
        reason = str(exc) if isinstance(exc, InputError) else f"{type(exc).__name__}: {exc}"
        failed[name] = reason
        notes.append(f"model {name} not built: {reason}")
        log(f"{name}: not built ({reason})")
        return None
    log(progress_line(result))
    return result
