"""A grid search that fits a pipeline's steps before the classifier once per inner split.

scikit-learn's ``GridSearchCV`` fits and scores the whole pipeline for every candidate and
split: with a grid that tunes only the classifier, every candidate repeats the same
imputation, ComBat, filters and LASSO on the same rows (the fit cache spares the fits, not
the input checks, hashing and transforms of thousands of columns), and every score transforms
the held-out rows again. :class:`SharedStepsGridSearchCV` is a ``GridSearchCV`` whose ``fit``
does, for such a grid, exactly the same computations once each: per inner split the steps
before the classifier are fitted on the training rows and transform the held-out rows, then
every candidate fits and scores the classifier on those arrays. The scores, the chosen
candidate (the same mean / rank rule) and the refit are ``GridSearchCV``'s, bit for bit
(``test_fit_cache``); any other grid goes through ``GridSearchCV.fit`` itself.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import rankdata
from sklearn.base import clone, is_classifier
from sklearn.metrics import check_scoring
from sklearn.model_selection import GridSearchCV, ParameterGrid, check_cv
from sklearn.pipeline import Pipeline


class SharedStepsGridSearchCV(GridSearchCV):
    """``GridSearchCV`` (one scorer, ``refit=True``, ``error_score="raise"``) that shares the
    steps before a Pipeline's last step across the candidates of a grid tuning that step only,
    one candidate after the other in this process (``n_jobs`` 1 or None; other settings go
    through ``GridSearchCV.fit``)."""

    def fit(self, X: Any, y: Any = None, **params: Any) -> "SharedStepsGridSearchCV":
        groups = params.pop("groups", None)
        if params or not self._tunes_the_last_step_only():
            return super().fit(X, y, **params, **({} if groups is None else {"groups": groups}))
        y = np.asarray(y)
        last_name, last_step = self.estimator.steps[-1]
        candidates = list(ParameterGrid(self.param_grid))
        candidate_params = [{key.split("__", 1)[1]: value for key, value in c.items()} for c in candidates]
        splits = list(check_cv(self.cv, y, classifier=is_classifier(self.estimator)).split(X, y, groups))
        scorer = check_scoring(self.estimator, scoring=self.scoring)
        scores = np.empty((len(candidates), len(splits)))
        for j, (train, test) in enumerate(splits):
            steps = clone(self.estimator).set_params(**{last_name: "passthrough"})
            X_train = steps.fit_transform(_rows(X, train), y[train])
            X_test = steps.transform(_rows(X, test))
            for i, values in enumerate(candidate_params):
                model = clone(last_step).set_params(**clone(values, safe=False)).fit(X_train, y[train])
                scores[i, j] = scorer(model, X_test, y[test])
        self._store_search(candidates, scores, scorer)
        started = time.time()
        self.best_estimator_ = clone(self.estimator).set_params(**clone(self.best_params_, safe=False)).fit(X, y)
        self.refit_time_ = time.time() - started
        if hasattr(self.best_estimator_, "feature_names_in_"):
            self.feature_names_in_ = self.best_estimator_.feature_names_in_
        return self

    def _tunes_the_last_step_only(self) -> bool:
        if (not isinstance(self.estimator, Pipeline) or self.refit is not True or not isinstance(self.scoring, str)
                or self.n_jobs not in (None, 1)):
            return False
        last_name = self.estimator.steps[-1][0]
        grids = self.param_grid if isinstance(self.param_grid, list) else [self.param_grid]
        return all(key.startswith(f"{last_name}__") for grid in grids for key in grid)

    def _store_search(self, candidates: list[dict[str, Any]], scores: np.ndarray, scorer: Any) -> None:
        """``cv_results_`` and the best candidate as ``GridSearchCV`` computes them."""
        means = np.average(scores, axis=1)
        stds = np.sqrt(np.average((scores - means[:, np.newaxis]) ** 2, axis=1))
        if np.isnan(means).all():
            ranks = np.ones(means.size, dtype=np.int32)
        else:  # a NaN mean ranks with the worst, as in GridSearchCV
            filled = np.where(np.isnan(means), np.nanmin(means) - 1, means)
            ranks = rankdata(-filled, method="min").astype(np.int32, copy=False)
        results: dict[str, Any] = {"params": candidates, "mean_test_score": means, "std_test_score": stds,
                                   "rank_test_score": ranks}
        for j in range(scores.shape[1]):
            results[f"split{j}_test_score"] = scores[:, j]
        self.cv_results_ = results
        self.best_index_ = int(ranks.argmin())
        self.best_score_ = means[self.best_index_]
        self.best_params_ = candidates[self.best_index_]
        self.scorer_ = scorer
        self.n_splits_ = scores.shape[1]
        self.multimetric_ = False


def _rows(X: Any, rows: np.ndarray) -> Any:
    return X.iloc[rows] if isinstance(X, (pd.DataFrame, pd.Series)) else X[rows]
