"""Outer cross-validation on the training set: out-of-fold predictions of a whole model.

A clone of the model (a whole grid search: nested CV) is refitted per outer fold, so no
held-out row ever influences harmonisation, selection or the model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline

from RadFusionScreenLib.model.train.pipelines import fit_model, linear_predictor, predict_probability
from RadFusionScreenLib.model.train.splits import StratifiedSiteKFold
from RadFusionScreenLib.stats import roc_auc


@dataclass
class CrossValidatedPredictions:
    """Out-of-fold predictions of an outer cross-validation on the training set."""

    y: np.ndarray  # training labels
    probability: np.ndarray
    linear_predictor: np.ndarray | None
    fold: np.ndarray  # outer fold of each training row
    fold_aucs: np.ndarray
    best_params: list[dict[str, Any]]
    inner_best_scores: list[float]  # optimistic: max over grid candidates; for reference only

    @property
    def auc_mean(self) -> float:
        return float(np.nanmean(self.fold_aucs))

    @property
    def auc_sd(self) -> float:
        return float(np.nanstd(self.fold_aucs, ddof=1)) if self.fold_aucs.size > 1 else float("nan")

    @property
    def auc_pooled(self) -> float:
        """AUC of all out-of-fold predictions together."""
        return auc_or_nan(self.y, self.probability)


def cross_validated_predictions(
    model: Pipeline | GridSearchCV,
    X: pd.DataFrame,
    y: np.ndarray,
    cv: StratifiedSiteKFold,
    groups: np.ndarray | None = None,
    n_jobs: int | None = 1,
    progress: Callable[[str], None] | None = None,
) -> CrossValidatedPredictions:
    """Refit a clone of ``model`` (a whole grid search: nested CV) per outer fold; predict the rest.

    ``n_jobs``: outer folds fitted in parallel processes (each fold's grid search then runs
    its candidates one after the other); the result does not depend on it.
    """
    y = np.asarray(y)
    splits = list(cv.split(X, y, groups))
    if isinstance(model, GridSearchCV):
        model = clone(model).set_params(n_jobs=1)  # the folds are the parallel unit
    folds = Parallel(n_jobs=process_count(n_jobs, len(splits)), return_as="generator")(
        delayed(_fit_fold)(clone(model), X, y, groups, train, valid) for train, valid in splits)
    fits = []
    for k, fit in enumerate(folds):
        fits.append(fit)
        if progress is not None:
            progress(f"outer fold {k + 1}/{len(splits)} done")
    return predictions_from_folds(y, splits, fits)


@dataclass
class FoldFit:
    """What an outer fold keeps of a model fitted on its training rows: the held-out predictions."""

    probability: np.ndarray
    linear_predictor: np.ndarray | None
    best_params: dict[str, Any]
    best_score: float  # the grid search's inner best score (NaN without a grid)
    seconds: float = 0.0

    @classmethod
    def of(cls, fitted: Any, X_valid: pd.DataFrame, seconds: float = 0.0) -> "FoldFit":
        return cls(predict_probability(fitted, X_valid), linear_predictor(fitted, X_valid),
                   getattr(fitted, "best_params_", {}), float(getattr(fitted, "best_score_", np.nan)), seconds)


def predictions_from_folds(y: np.ndarray, splits: Sequence[tuple[np.ndarray, np.ndarray]],
                           folds: Sequence[FoldFit]) -> CrossValidatedPredictions:
    """Out-of-fold predictions assembled from each outer fold's fit (in split order)."""
    y = np.asarray(y)
    probability, lp = np.full(y.size, np.nan), np.full(y.size, np.nan)
    fold = np.full(y.size, -1)
    for k, ((_, valid), fit) in enumerate(zip(splits, folds)):
        probability[valid] = fit.probability
        if fit.linear_predictor is not None:
            lp[valid] = fit.linear_predictor
        fold[valid] = k
    aucs = np.array([auc_or_nan(y[valid], fit.probability) for (_, valid), fit in zip(splits, folds)])
    has_lp = not np.isnan(lp).all()
    return CrossValidatedPredictions(y, probability, lp if has_lp else None, fold, aucs,
                                     [fit.best_params for fit in folds], [fit.best_score for fit in folds])


def _fit_fold(model, X: pd.DataFrame, y: np.ndarray, groups: np.ndarray | None, train: np.ndarray,
              valid: np.ndarray) -> FoldFit:
    """One outer fold: fit on ``train`` rows, predict the ``valid`` rows."""
    fitted = fit_model(model, X.iloc[train], y[train], None if groups is None else groups[train])
    return FoldFit.of(fitted, X.iloc[valid])


def process_count(n_jobs: int | None, tasks: int) -> int:
    """Processes to use: ``n_jobs`` (None: every core), never more than the tasks."""
    return max(1, min(tasks, n_jobs or os.cpu_count() or 1))


def auc_or_nan(y: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC, or NaN where ``y`` holds a single class (a fold without cases or controls)."""
    return roc_auc(y, score) if 0 < np.sum(y) < y.size else float("nan")
