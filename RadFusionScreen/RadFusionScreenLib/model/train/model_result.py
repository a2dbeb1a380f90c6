"""Models' evaluation: nested CV on the training set, the final fit, the probability
calibration and the Youden threshold from out-of-fold predictions, then the untouched test set
(a :class:`ModelResult` per model; the fits of all models run as pool tasks, :mod:`.fit_tasks`).

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
from RadFusionScreenLib.model.train.cross_validation import (CrossValidatedPredictions, FoldFit, predictions_from_folds,
                                                             process_count)
from RadFusionScreenLib.model.train.fit_tasks import (FinalFit, FitFailure, FitOutput, FitTask, RowSet, failure_reason,
                                                      run_fit_tasks)
from RadFusionScreenLib.model.train.pipelines import (ModelSettings, build_pipeline, build_search, param_grid,
                                                      predict_probability, selected_feature_names)
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
    # Its fits' time summed over processes, plus calibration and test scoring. The steps before
    # the classifier, shared by the models of its feature set, count for the first one fitted.
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


@dataclass(frozen=True)
class ModelSpec:
    """One model to evaluate: a classifier family on a feature set's columns."""

    feature_set: str
    classifier: str
    columns: tuple[str, ...]
    settings: ModelSettings | None = None  # None: the comparison's
    name: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", f"{self.feature_set}/{self.classifier}")


def evaluate_models(context: EvaluationContext, specs: Sequence[ModelSpec]) -> dict[str, ModelResult | FitFailure]:
    """Nested CV, final fit, calibration, Youden threshold and test metrics of every model.

    The fits of all models run as one list of pool tasks (:mod:`.fit_tasks`): per feature set,
    its final fit and each outer fold, every classifier family of the set in one task. A model
    whose fit fails on any row set comes back as a :class:`FitFailure` with the first failure's
    reason (outer folds in order, then the final fit); the others go on.
    """
    specs = list(specs)
    searches = {spec.name: _search(context, spec) for spec in specs}
    splits = list(context.outer_cv.split(context.train, context.y_train, context.groups))
    row_sets = [RowSet("final fit", np.arange(len(context.train)))] + [
        RowSet(f"outer fold {k + 1}/{len(splits)}", train, valid) for k, (train, valid) in enumerate(splits)]
    feature_sets = list(dict.fromkeys(spec.feature_set for spec in specs))
    tasks = [FitTask(_task_title(feature_set, specs), tuple((spec.name, searches[spec.name]) for spec in specs
                                                            if spec.feature_set == feature_set), rows)
             for rows in row_sets for feature_set in feature_sets]  # the final fits, the largest, first
    context.log(f"nested CV of {len(specs)} model(s): the final fit and {len(splits)} outer folds per feature set, "
                f"{len(tasks)} tasks on {process_count(context.n_jobs, len(tasks))} process(es)")
    outputs = run_fit_tasks(tasks, context.train, context.y_train, context.groups, context.n_jobs, context.log)
    # per model: [final fit, outer fold 1, ..., outer fold K] (the tasks' row-set order)
    fits = {spec.name: [output[spec.name] for output in outputs if spec.name in output] for spec in specs}
    failures = {name: _first_failure(row_fits[1:] + row_fits[:1]) for name, row_fits in fits.items()}
    fitted = {name: row_fits for name, row_fits in fits.items() if failures[name] is None}
    refits = _refit_final_configuration(context, specs, splits, fitted, failures)
    results: dict[str, ModelResult | FitFailure] = {}
    for spec in specs:
        if failures[spec.name] is not None:
            results[spec.name] = failures[spec.name]
            continue
        final, *folds = fits[spec.name]
        try:
            results[spec.name] = _finish_model(context, spec, splits, final, folds, refits.get(spec.name, {}))
        except Exception as exc:  # noqa: BLE001 -- e.g. a calibration that cannot be fitted: that model only
            results[spec.name] = FitFailure(failure_reason(exc))
    return results


def evaluate_model(context: EvaluationContext, feature_set: str, classifier: str, feature_columns: Sequence[str],
                   settings: ModelSettings | None = None) -> ModelResult:
    """One model through :func:`evaluate_models`; a failed fit raises :class:`InputError`."""
    spec = ModelSpec(feature_set, classifier, tuple(feature_columns), settings)
    result = evaluate_models(context, [spec])[spec.name]
    if isinstance(result, FitFailure):
        raise InputError(result.reason)
    return result


def _search(context: EvaluationContext, spec: ModelSpec) -> Any:
    """The model's unfitted grid search (or pipeline, for a single candidate), one process each."""
    pipeline = build_pipeline(spec.columns, spec.classifier, spec.settings or context.settings,
                              clinical=spec.feature_set == "clinical",
                              categorical_columns=context.categorical_columns, memory=context.memory)
    return build_search(pipeline, param_grid(spec.classifier, context.grid), context.inner_cv, 1)


def _task_title(feature_set: str, specs: Sequence[ModelSpec]) -> str:
    names = [spec.name for spec in specs if spec.feature_set == feature_set]
    return names[0] if len(names) == 1 else f"{feature_set} ({len(names)} models)"


def _first_failure(row_fits: Sequence[FitOutput]) -> FitFailure | None:
    return next((fit for fit in row_fits if isinstance(fit, FitFailure)), None)


def folds_to_refit(final_model: Any, fold_params: Sequence[dict[str, Any]]) -> list[int]:
    """Outer folds whose grid search chose other hyper-parameters than the final model's.

    The calibrator is fitted on the out-of-fold probabilities of the final model's
    configuration (see the module doc); a fold that chose the same hyper-parameters already
    holds that very fit (the same pipeline on the same rows), only the others are refitted.
    """
    chosen = getattr(final_model, "best_params_", None)
    if chosen is None:
        return []
    return [k for k, params in enumerate(fold_params) if params != chosen]


def _refit_final_configuration(context: EvaluationContext, specs: Sequence[ModelSpec],
                               splits: Sequence[tuple[np.ndarray, np.ndarray]],
                               fitted: dict[str, list[FitOutput]],
                               failures: dict[str, FitFailure | None]) -> dict[str, dict[int, FoldFit]]:
    """Held-out probabilities of the final configuration on the folds that chose others, by model
    and fold; a model whose refit fails joins ``failures``."""
    wanted: dict[int, dict[str, list[tuple[str, Any]]]] = {}  # fold -> feature set -> (name, model)
    for spec in specs:
        if spec.name not in fitted:
            continue
        final, *folds = fitted[spec.name]
        refit = folds_to_refit(final.model, [fold.best_params for fold in folds])
        if refit:
            context.log(f"{spec.name}: outer fold(s) {', '.join(str(k + 1) for k in refit)} refitted with the final "
                        f"hyper-parameters {final.model.best_params_} (for the calibration)")
        for k in refit:
            wanted.setdefault(k, {}).setdefault(spec.feature_set, []).append(
                (spec.name, clone(final.model.best_estimator_)))
    plan = [(k, FitTask(f"{feature_set}: calibration refit", tuple(models),
                        RowSet(f"outer fold {k + 1}/{len(splits)}", *splits[k])))
            for k, by_set in sorted(wanted.items()) for feature_set, models in by_set.items()]
    refits: dict[str, dict[int, FoldFit]] = {}
    if not plan:
        return refits
    outputs = run_fit_tasks([task for _, task in plan], context.train, context.y_train, context.groups,
                            context.n_jobs, context.log)
    for (k, _), output in zip(plan, outputs):
        for name, fit in output.items():
            if isinstance(fit, FitFailure):
                failures[name] = failures[name] or fit
            else:
                refits.setdefault(name, {})[k] = fit
    return refits


def _finish_model(context: EvaluationContext, spec: ModelSpec, splits: Sequence[tuple[np.ndarray, np.ndarray]],
                  final: FinalFit, folds: list[FoldFit], refits: dict[int, FoldFit]) -> ModelResult:
    """Calibration, threshold and test metrics of a model whose fits all succeeded."""
    started = time.perf_counter()
    cv = predictions_from_folds(context.y_train, splits, folds)
    oof = cv.probability  # the final configuration's out-of-fold probabilities
    if refits:
        oof = oof.copy()
        for k, fit in refits.items():
            oof[splits[k][1]] = fit.probability
    calibration = select_calibrator(oof, context.y_train, context.groups, context.inner_cv.n_splits,
                                    context.settings.random_state)
    context.log(f"{spec.name}: calibration {calibration.calibrator.describe()}")
    model = final.model
    result = ModelResult(
        name=spec.name, feature_set=spec.feature_set, classifier=spec.classifier, cv=cv,
        threshold=training_threshold(context.y_train, calibration.apply(oof)), model=model,
        selected_features=selected_feature_names(model), best_params=getattr(model, "best_params_", {}),
        seconds=0.0, remarks=[f"calibration: {remark}" for remark in calibration.remarks], calibration=calibration,
        calibration_probability=oof,
    )
    if context.test is not None:
        raw = predict_probability(model, context.test)
        result.test_probability_uncalibrated = raw
        score_test_set(result, calibration.apply(raw), context)
    fit_seconds = final.seconds + sum(fit.seconds for fit in [*folds, *refits.values()])
    result.seconds = fit_seconds + time.perf_counter() - started
    return result


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
        outcome: ModelResult | FitFailure = evaluate()
    except Exception as exc:  # noqa: BLE001 -- one degenerate model must not end the comparison
        outcome = FitFailure(failure_reason(exc))
    return note_outcome(name, outcome, notes, failed, log)


def note_outcome(name: str, outcome: ModelResult | FitFailure, notes: list[str], failed: dict[str, str],
                 log: Callable[[str], None]) -> ModelResult | None:
    """A finished model's progress line, or its failure as a note (and in ``failed``)."""
    if isinstance(outcome, FitFailure):
        failed[name] = outcome.reason
        notes.append(f"model {name} not built: {outcome.reason}")
        log(f"{name}: not built ({outcome.reason})")
        return None
    log(progress_line(outcome))
    return outcome
