"""Rad-score, deep-score and the nomogram of a comparison.

Rad-score / deep-score: the linear predictor (logit) of the radiomic-only and deep-only
LASSO + logistic-regression models, out-of-fold on the training set and from the final
model on the test set. The nomogram model is an unpenalised logistic regression on
rad-score, deep-score and the clinical predictors (:class:`~.stats.Nomogram`), fitted on the
out-of-fold scores (Firth's fit where the outcome is separated); its ``cv_auc`` is a
cross-validation of that regression over the same outer folds.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, Callable

import numpy as np
import pandas as pd

from RadFusionScreenLib.core.errors import InputError
from RadFusionScreenLib.model.roles import NOMOGRAM, NOMOGRAM_RESULT, SCORE_FEATURE_SETS, SCORE_ONLY
from RadFusionScreenLib.model.train.columns import FeatureColumns
from RadFusionScreenLib.model.train.cross_validation import CrossValidatedPredictions, auc_or_nan
from RadFusionScreenLib.model.train.model_result import (EvaluationContext, ModelResult, evaluate_model,
                                                         evaluate_or_note, progress_line, score_test_set,
                                                         training_threshold)
from RadFusionScreenLib.model.train.pipelines import linear_predictor
from RadFusionScreenLib.stats import Nomogram

OUTER_FOLD = "outer_fold"  # column of ModelComparison.scores_train


def add_nomogram(
    context: EvaluationContext, columns: FeatureColumns, results: dict[str, ModelResult], notes: list[str],
    failed: dict[str, str], log: Callable[[str], None],
) -> tuple[pd.DataFrame, pd.DataFrame | None, Nomogram | None, dict[str, str]]:
    """Rad-score / deep-score, then the nomogram model, added to ``results``."""
    scores_train, scores_test, score_models = _rad_deep_scores(context, columns, results, notes, failed, log)
    if scores_train is None:
        return pd.DataFrame(), None, None, {}
    nomogram_result, fitted = _evaluate_nomogram(context, columns, scores_train, scores_test, notes)
    if nomogram_result is not None:
        results[nomogram_result.name] = nomogram_result
        log(progress_line(nomogram_result))
    else:
        failed[NOMOGRAM_RESULT] = notes[-1]
    return scores_train, scores_test, fitted, score_models


def _rad_deep_scores(context: EvaluationContext, columns: FeatureColumns, results: dict[str, ModelResult],
                     notes: list[str], failed: dict[str, str], log: Callable[[str], None],
                     ) -> tuple[pd.DataFrame | None, pd.DataFrame | None, dict[str, str]]:
    """Out-of-fold (training) and final-model (test) logits of the LASSO-LR rad/deep models,
    and which result made each score."""
    scores_train = pd.DataFrame(index=context.train.index)
    scores_test = pd.DataFrame(index=context.test.index) if context.test is not None else None
    fold, score_models = None, {}
    for score_name, feature_set in SCORE_FEATURE_SETS.items():
        if not columns.for_set(feature_set):
            notes.append(f"no {score_name}: no {feature_set} columns")
            continue
        result = _lasso_lr_result(context, feature_set, columns, results, notes, failed, log)
        if result is None:
            notes.append(f"no {score_name}: its LASSO-LR model could not be built")
            continue
        score_models[score_name] = result.name
        scores_train[score_name] = result.cv.linear_predictor
        fold = result.cv.fold  # one outer splitter, so the same folds for every model
        if scores_test is not None:
            scores_test[score_name] = linear_predictor(result.model, context.test)
    if fold is None:
        return None, None, {}
    scores_train[OUTER_FOLD] = fold
    return scores_train, scores_test, score_models


def _lasso_lr_result(context: EvaluationContext, feature_set: str, columns: FeatureColumns,
                     results: dict[str, ModelResult], notes: list[str], failed: dict[str, str],
                     log: Callable[[str], None]) -> ModelResult | None:
    """The LASSO + logistic-regression model of a feature set: reused when it was run, else
    built and added to ``results`` as ``<feature set>/lasso-lr`` (None when it cannot be built)."""
    if context.settings.reduction == "lasso" and f"{feature_set}/lr" in results:
        return results[f"{feature_set}/lr"]
    if context.settings.reduction == "lasso" and f"{feature_set}/lr" in failed:
        return None
    settings = replace(context.settings, reduction="lasso")
    name = f"{feature_set}/lasso-lr"
    result = evaluate_or_note(name, notes, failed, log, lambda: replace(
        evaluate_model(context, feature_set, "lr", columns.for_set(feature_set), settings), name=name, role=SCORE_ONLY))
    if result is not None:
        results[name] = result
    return result


def _evaluate_nomogram(
    context: EvaluationContext, columns: FeatureColumns, scores_train: pd.DataFrame, scores_test: pd.DataFrame | None,
    notes: list[str],
) -> tuple[ModelResult | None, Nomogram | None]:
    """Logistic nomogram on rad/deep scores + clinical predictors: CV over the outer folds, then test."""
    started = time.perf_counter()
    clinical = list(columns.clinical)
    categorical = {c: categorical_levels(context.train[c]) for c in clinical if c in context.categorical_columns}
    fill = clinical_fill_values(context.train, clinical, categorical)
    scores = _without_constant_scores(scores_train.drop(columns=OUTER_FOLD), notes)
    if scores_test is not None:
        scores_test = scores_test[list(scores.columns)]
    train_frame = scores.join(context.train[clinical].fillna(fill)) if clinical else scores
    if train_frame.shape[1] == 0:
        notes.append("no nomogram model: it has no predictor left")
        return None, None
    remarks: list[str] = []
    try:
        cv = _nomogram_cv(train_frame, context.y_train, categorical, scores_train[OUTER_FOLD].to_numpy(), remarks)
        fitted = Nomogram.fit(train_frame, context.y_train, categorical=categorical)
    except InputError as exc:
        notes.append(f"no nomogram model: {exc}")
        return None, None
    if fitted.fit_method == "firth":
        remarks.insert(0, f"final fit: {fitted.logistic_fit.description}")
        notes.append(f"nomogram: {fitted.logistic_fit.description}; its coefficients are Firth's estimates "
                     "(rms::lrm would give no fit)")
    result = ModelResult(
        name=NOMOGRAM_RESULT, feature_set="nomogram", classifier="logistic", cv=cv,
        threshold=training_threshold(context.y_train, cv.probability), model=fitted,
        selected_features=list(train_frame.columns), best_params={}, seconds=0.0, remarks=remarks, role=NOMOGRAM,
    )
    if scores_test is not None:
        test_frame = scores_test.join(context.test[clinical].fillna(fill)) if clinical else scores_test
        score_test_set(result, fitted.points(test_frame)["probability"].to_numpy(), context)
    result.seconds = time.perf_counter() - started
    return result, fitted


def _without_constant_scores(scores: pd.DataFrame, notes: list[str]) -> pd.DataFrame:
    """Drop a score that is constant on the training set (its model kept no signal): it has no axis."""
    constant = [c for c in scores.columns if scores[c].nunique(dropna=True) < 2]
    for column in constant:
        notes.append(f"{column} left out of the nomogram: it is constant on the training set")
    return scores.drop(columns=constant)


def _nomogram_cv(frame: pd.DataFrame, y: np.ndarray, categorical: dict[str, list],
                 fold: np.ndarray, remarks: list[str]) -> CrossValidatedPredictions:
    """Refit the nomogram regression per outer fold (the folds that made the out-of-fold scores)."""
    probability = np.full(y.size, np.nan)
    aucs = []
    for k in np.unique(fold):
        train, valid = fold != k, fold == k
        model = Nomogram.fit(frame[train], y[train], categorical=categorical)
        if model.fit_method == "firth":
            remarks.append(f"outer fold {k + 1}: Firth's fit ({model.logistic_fit.separation} separation)")
        probability[valid] = model.points(frame[valid])["probability"].to_numpy()
        aucs.append(auc_or_nan(y[valid], probability[valid]))
    return CrossValidatedPredictions(y, probability, None, fold, np.array(aucs), [{}] * len(aucs),
                                     [np.nan] * len(aucs))


def categorical_levels(values: pd.Series) -> list[Any]:
    """Levels of a categorical predictor, most frequent first (the nomogram's reference level)."""
    return list(values.dropna().value_counts(sort=True).index)


def clinical_fill_values(train: pd.DataFrame, clinical: list[str], categorical: dict[str, list]) -> dict[str, Any]:
    """Training median (numeric) or most frequent level (categorical) for missing clinical values."""
    return {c: (categorical[c][0] if c in categorical else float(train[c].median())) for c in clinical}
