"""Feature selectors for the cohort model builder, in scikit-learn style.

Each selector learns which columns to keep in ``fit`` and keeps them in ``transform``
(:class:`~sklearn.feature_selection.SelectorMixin`), so it exposes ``get_support``,
``get_feature_names_out`` and, after fitting, ``selected_features_`` (the kept names;
``x0, x1, ...`` when fitted on a plain array). Put every selector that looks at the
outcome *inside* the Pipeline that cross-validation clones and refits per training fold:
then selection never sees a held-out row.

=====================  ===============================  ============================
Selector               Keeps                            Uses the labels?
=====================  ===============================  ============================
:class:`ICCFilter`     ICC >= threshold (reproducible)  no (see its doc: pre-split)
:class:`VarianceFilter`  not (near-)constant            no
:class:`UnivariateFilter`  p < alpha and/or top k       yes (fit on training folds)
:class:`CorrelationPruner`  one of each |r| > 0.9 pair  yes, to choose which to keep
:class:`LassoSelector` non-zero L1-logistic coefficients  yes, with CV over lambda
=====================  ===============================  ============================

For a PCA reduction use :class:`sklearn.decomposition.PCA` directly (after scaling).
"""

from __future__ import annotations

import warnings
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.stats import false_discovery_control
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning
from sklearn.feature_selection import SelectorMixin
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.utils.validation import check_is_fitted, validate_data

from RadFusionScreenLib.core.errors import InputError
from RadFusionScreenLib.stats import intraclass_correlation, roc_auc, univariate_tests

UNIVARIATE_TESTS = {"mannwhitney": "mannwhitney_p", "welch": "welch_p"}


class _Selector(SelectorMixin, BaseEstimator):
    """Shared plumbing: the support mask and the names of the kept features."""

    def _get_support_mask(self) -> np.ndarray:
        check_is_fitted(self, "support_")
        return self.support_

    @property
    def selected_features_(self) -> list[str]:
        """Names of the kept features (``x0, x1, ...`` when fitted without column names)."""
        return [str(name) for name in self.get_feature_names_out()]

    def _input_names(self) -> np.ndarray:
        if hasattr(self, "feature_names_in_"):
            return np.asarray(self.feature_names_in_, dtype=object)
        return np.asarray([f"x{i}" for i in range(self.n_features_in_)], dtype=object)


def _binary_labels(y: Any, n_samples: int) -> np.ndarray:
    """0/1 outcome with both classes present, or an InputError that says what is wrong."""
    if y is None:
        raise InputError("this selector needs the outcome y (0 = control, 1 = case)")
    labels = np.asarray(y).ravel()
    if labels.size != n_samples:
        raise InputError(f"y has {labels.size} values for {n_samples} samples")
    if not np.isin(labels, (0, 1)).all():
        raise InputError(f"y must hold only 0 and 1, found {np.unique(labels)[:5]}")
    labels = labels.astype(int)
    if labels.min() == labels.max():
        raise InputError("y holds a single class: both cases and controls are needed to select features")
    return labels


def _univariate_p_values(X: np.ndarray, y: np.ndarray, test: str) -> np.ndarray:
    """p-value per column from stats.univariate_tests; untestable (constant) columns get 1."""
    if test not in UNIVARIATE_TESTS:
        raise InputError(f"unknown univariate test {test!r}: use {' or '.join(UNIVARIATE_TESTS)}")
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # Welch on a constant column: 0/0
        table = univariate_tests(X, y)
    p = table[UNIVARIATE_TESTS[test]].to_numpy(dtype=float)
    return np.where(np.isfinite(p), p, 1.0)


def _rank_order(p_values: np.ndarray) -> np.ndarray:
    """Column indices from most to least associated; ties keep column order (deterministic)."""
    return np.argsort(p_values, kind="stable")


# --------------------------------------------------------------------------- ICC
class ICCFilter(_Selector):
    """Keep features whose reproducibility (ICC) reaches a threshold.

    The ICC per feature is computed beforehand from repeated measurements, e.g. features
    extracted from two segmentations of the same lesions (or from perturbed images), with
    :func:`~RadFusionScreenLib.stats.intraclass_correlation`; :meth:`from_ratings` does that.

    Why this filter may run on the whole cohort before the train/test split: the ICC is a
    property of the measurement process and is computed without the outcome labels, so it
    cannot tune the feature set toward the labels of the test cases; the selection it
    makes would be the same whatever the test labels are. (For a fully separated external
    test, compute the ICC on training cases only: pass only their ratings.)

    Parameters
    ----------
    icc : mapping or pandas.Series, feature name -> ICC
        E.g. ``ICCFilter.icc_values(ratings)``.
    threshold : float
        Minimum ICC to keep a feature (0.75 = "good" reliability, Koo & Li 2016).
    missing : {"keep", "drop"}
        What to do with columns that have no ICC value: "keep" (default) passes them through
        (metadata, clinical values, features not in the reliability study); "drop" removes
        them. A NaN ICC (e.g. a constant feature) counts as below the threshold.

    A fitted filter is a column selector: with ``set_output(transform="pandas")`` it
    returns a DataFrame, other (text) columns included.
    """

    def __init__(self, icc: Mapping[str, float] | pd.Series, threshold: float = 0.75, missing: str = "keep") -> None:
        self.icc = icc
        self.threshold = threshold
        self.missing = missing

    @staticmethod
    def icc_values(ratings: Sequence[pd.DataFrame], icc_type: str = "ICC2") -> pd.Series:
        """ICC per feature from repeated measurements (one DataFrame per segmentation/rater).

        ``icc_type`` is a psych name: "ICC2" = ICC(A,1) two-way random absolute agreement
        (default), "ICC3" = ICC(C,1) consistency, "ICC1" one-way.
        """
        table = intraclass_correlation(ratings, types=(icc_type,))
        return table.set_index("feature")["ICC"].astype(float)

    @classmethod
    def from_ratings(
        cls, ratings: Sequence[pd.DataFrame], threshold: float = 0.75, icc_type: str = "ICC2", missing: str = "keep"
    ) -> "ICCFilter":
        """Filter built from repeated measurements (see :meth:`icc_values`)."""
        return cls(cls.icc_values(ratings, icc_type), threshold=threshold, missing=missing)

    def fit(self, X: Any, y: Any = None) -> "ICCFilter":
        """Decide per column from the given ICC values (X supplies only the column names)."""
        if self.missing not in ("keep", "drop"):
            raise InputError(f"missing must be 'keep' or 'drop', got {self.missing!r}")
        if not isinstance(X, pd.DataFrame):
            raise InputError("ICCFilter needs a DataFrame: features are matched to ICC values by column name")
        validate_data(self, X, dtype=None, ensure_all_finite=False)
        icc = pd.Series(self.icc, dtype=float)
        icc.index = icc.index.map(str)
        names = [str(c) for c in X.columns]
        known = np.array([name in icc.index for name in names])
        values = np.array([icc.get(name, np.nan) for name in names], dtype=float)
        reliable = np.nan_to_num(values, nan=-np.inf) >= self.threshold
        self.support_ = np.where(known, reliable, self.missing == "keep")
        self.icc_ = pd.Series(values, index=names)
        return self

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True  # a pure column selector: values are never read
        tags.input_tags.string = True
        return tags


# ---------------------------------------------------------------------- variance
class VarianceFilter(_Selector):
    """Drop constant and near-zero-variance features (caret's ``nearZeroVar`` rule).

    A feature is dropped when it is constant, or when both its most common value is more
    than ``freq_cut`` times as frequent as the second most common *and* its distinct
    values are fewer than ``unique_cut`` percent of the samples. Labels are not used.

    Parameters
    ----------
    freq_cut : float
        caret's freqCut (95/5).
    unique_cut : float
        caret's uniqueCut, in percent (10).
    """

    def __init__(self, freq_cut: float = 95 / 5, unique_cut: float = 10.0) -> None:
        self.freq_cut = freq_cut
        self.unique_cut = unique_cut

    def fit(self, X: Any, y: Any = None) -> "VarianceFilter":
        data = validate_data(self, X, dtype=float)
        self.support_ = np.array([not self._near_zero_variance(column) for column in data.T])
        if not self.support_.any():
            raise InputError("every feature is constant or nearly so: nothing is left to model")
        return self

    def _near_zero_variance(self, column: np.ndarray) -> bool:
        values, counts = np.unique(column, return_counts=True)
        if values.size <= 1:
            return True
        top_two = np.sort(counts)[-2:]
        frequency_ratio = top_two[1] / top_two[0]
        percent_unique = 100.0 * values.size / column.size
        return bool(frequency_ratio > self.freq_cut and percent_unique < self.unique_cut)


# -------------------------------------------------------------------- univariate
class UnivariateFilter(_Selector):
    """Keep features that differ between cases and controls (fit on training folds only).

    Parameters
    ----------
    test : {"mannwhitney", "welch"}
        Mann-Whitney U (default) or Welch's t, both two-sided, from
        :func:`~RadFusionScreenLib.stats.univariate_tests`.
    alpha : float or None
        Keep features with p < alpha (None: no p cut-off).
    k : int or None
        Then keep at most the k smallest p-values (None: no cap). With ``alpha=None`` this
        is a plain top-k filter.
    min_features : int
        Keep at least this many (the smallest p-values) even if none pass ``alpha``, so
        that the next step always has something to work with.
    correction : {"none", "fdr_bh"}
        Compare raw p-values with alpha (default, the usual radiomics practice before a
        LASSO), or Benjamini-Hochberg adjusted ones (false discovery rate alpha).

    Attributes
    ----------
    p_values_ : ndarray
        p-value per input feature (1 for untestable, constant features).
    """

    def __init__(self, test: str = "mannwhitney", alpha: float | None = 0.05, k: int | None = None,
                 min_features: int = 1, correction: str = "none") -> None:
        self.test = test
        self.alpha = alpha
        self.k = k
        self.min_features = min_features
        self.correction = correction

    def fit(self, X: Any, y: Any) -> "UnivariateFilter":
        data = validate_data(self, X, dtype=float)
        labels = _binary_labels(y, data.shape[0])
        self.p_values_ = _univariate_p_values(data, labels, self.test)
        order = _rank_order(self.p_values_)
        n_keep = self._number_to_keep(order)
        self.support_ = np.zeros(data.shape[1], dtype=bool)
        self.support_[order[:n_keep]] = True
        return self

    def _number_to_keep(self, order: np.ndarray) -> int:
        n_keep = order.size if self.alpha is None else int(np.sum(self._compared_p_values() < self.alpha))
        if self.k is not None:
            n_keep = min(n_keep, int(self.k))
        return min(order.size, max(n_keep, int(self.min_features)))


    def _compared_p_values(self) -> np.ndarray:
        if self.correction == "none":
            return self.p_values_
        if self.correction == "fdr_bh":
            return false_discovery_control(self.p_values_, method="bh")
        raise InputError(f"correction must be 'none' or 'fdr_bh', got {self.correction!r}")


# ------------------------------------------------------------------- correlation
class CorrelationPruner(_Selector):
    """From every group of strongly correlated features keep one (deterministic).

    Features are visited from most to least associated with the label (smallest univariate
    p first; ``rank_by="order"``: column order, labels unused) and a feature is kept when its
    |Pearson r| with every feature kept so far is at most ``threshold``. So of a correlated
    pair, the one more associated with the label survives; ties keep column order.

    Parameters
    ----------
    threshold : float
        Maximum |r| between two kept features (0.9).
    rank_by : {"univariate", "order"}
    test : {"mannwhitney", "welch"}
        Test used for the ranking.
    """

    def __init__(self, threshold: float = 0.9, rank_by: str = "univariate", test: str = "mannwhitney") -> None:
        self.threshold = threshold
        self.rank_by = rank_by
        self.test = test

    def fit(self, X: Any, y: Any = None) -> "CorrelationPruner":
        data = validate_data(self, X, dtype=float)
        order = self._visiting_order(data, y)
        with np.errstate(all="ignore"):
            correlation = np.abs(np.corrcoef(data, rowvar=False)) if data.shape[1] > 1 else np.zeros((1, 1))
        correlation = np.nan_to_num(np.atleast_2d(correlation), nan=0.0)  # constant columns correlate with nothing
        kept: list[int] = []
        for column in order:
            if not kept or correlation[column, kept].max() <= self.threshold:
                kept.append(int(column))
        self.support_ = np.zeros(data.shape[1], dtype=bool)
        self.support_[kept] = True
        return self

    def _visiting_order(self, data: np.ndarray, y: Any) -> np.ndarray:
        if self.rank_by == "order":
            return np.arange(data.shape[1])
        if self.rank_by != "univariate":
            raise InputError(f"rank_by must be 'univariate' or 'order', got {self.rank_by!r}")
        labels = _binary_labels(y, data.shape[0])
        return _rank_order(_univariate_p_values(data, labels, self.test))


# ------------------------------------------------------------------------- LASSO
class LassoSelector(_Selector):
    """Keep the features with a non-zero L1-penalised logistic-regression coefficient.

    The penalty is chosen by stratified K-fold CV *within the data given to fit* (inside
    a pipeline: within the training fold), glmnet-style: features are standardised, the
    grid runs from lambda_max (where the first feature enters) down to
    ``lambda_min_ratio`` x lambda_max, and the rule is lambda.min (best mean CV score) or
    lambda.1se (the strongest penalty within one standard error of it).

    At least ``min_features`` features are always kept: if the chosen penalty zeroes
    everything (typical for pure noise), the features that enter the LASSO path first
    (largest |gradient| at zero, i.e. |X'(y - mean y)| on the standardised scale) are kept.

    Parameters
    ----------
    n_lambdas : int
        Grid size (log-spaced).
    lambda_min_ratio : float
        Smallest lambda as a fraction of lambda_max (0.05: weaker penalties keep dozens of
        features on a typical cohort and are rarely chosen).
    cv : int
        Folds of the inner CV.
    rule : {"1se", "min"}
        "1se" (default) gives the sparser signature usual in radiomics; "min" keeps more
        features, many of them noise when a supervised filter ran before on the same rows.
    scoring : {"neg_log_loss", "roc_auc"}
        CV criterion (deviance, glmnet's default, or AUC).
    max_features : int or None
        Keep at most this many (largest |coefficient|).
    min_features : int
    random_state : int
        Seed of the CV shuffling and the solver.

    Attributes
    ----------
    C_ : float
        Chosen inverse penalty (scikit-learn's C = 1 / lambda, liblinear scaling).
    coef_ : ndarray
        Coefficients per input feature on the standardised scale (0 = dropped).
    cv_results_ : pandas.DataFrame
        Mean and standard error of the CV score per C.
    """

    def __init__(self, n_lambdas: int = 20, lambda_min_ratio: float = 0.05, cv: int = 5, rule: str = "1se",
                 scoring: str = "neg_log_loss", max_features: int | None = None, min_features: int = 1,
                 random_state: int = 0) -> None:
        self.n_lambdas = n_lambdas
        self.lambda_min_ratio = lambda_min_ratio
        self.cv = cv
        self.rule = rule
        self.scoring = scoring
        self.max_features = max_features
        self.min_features = min_features
        self.random_state = random_state

    def fit(self, X: Any, y: Any) -> "LassoSelector":
        data = validate_data(self, X, dtype=float)
        labels = _binary_labels(y, data.shape[0])
        standardised = _standardise(data)
        grid = self._c_grid(standardised, labels)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # strong penalties on tiny folds
            self.cv_results_ = self._cross_validate(standardised, labels, grid)
            self.C_ = float(grid[self._chosen_index(self.cv_results_)])
            self.coef_ = self._fit_coefficients(standardised, labels, self.C_)
        self.support_ = self._support_from(self.coef_, standardised, labels)
        return self

    # -- penalty grid and CV
    def _c_grid(self, data: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """C values from lambda_max (first feature enters) to lambda_min_ratio * lambda_max."""
        gradient_at_zero = np.abs(data.T @ (labels - labels.mean())).max()
        c_entry = 1.0 / max(gradient_at_zero, 1e-12)
        return c_entry * np.logspace(0, -np.log10(self.lambda_min_ratio), int(self.n_lambdas))

    def _cross_validate(self, data: np.ndarray, labels: np.ndarray, grid: np.ndarray) -> pd.DataFrame:
        splitter = StratifiedKFold(n_splits=self._n_folds(labels), shuffle=True, random_state=self.random_state)
        scores = np.empty((grid.size, splitter.get_n_splits()))
        for fold, (train, valid) in enumerate(splitter.split(data, labels)):
            for i, c in enumerate(grid):
                model = self._model(c).fit(data[train], labels[train])
                scores[i, fold] = self._score(model, data[valid], labels[valid])
        sem = scores.std(axis=1, ddof=1) / np.sqrt(scores.shape[1])
        return pd.DataFrame({"C": grid, "mean_score": scores.mean(axis=1), "sem": sem})

    def _n_folds(self, labels: np.ndarray) -> int:
        smallest_class = int(np.bincount(labels).min())
        if smallest_class < 2:
            raise InputError("LASSO selection needs at least 2 cases and 2 controls")
        return max(2, min(int(self.cv), smallest_class))

    def _score(self, model: LogisticRegression, data: np.ndarray, labels: np.ndarray) -> float:
        probability = np.clip(model.predict_proba(data)[:, 1], 1e-15, 1 - 1e-15)
        if self.scoring == "neg_log_loss":  # written out: sklearn's log_loss validates slowly
            return float(np.mean(labels * np.log(probability) + (1 - labels) * np.log1p(-probability)))
        if self.scoring == "roc_auc":
            return roc_auc(labels, probability) if labels.min() != labels.max() else 0.5
        raise InputError(f"scoring must be 'neg_log_loss' or 'roc_auc', got {self.scoring!r}")

    def _chosen_index(self, results: pd.DataFrame) -> int:
        means, sems = results["mean_score"].to_numpy(), results["sem"].to_numpy()
        best = int(np.argmax(means))
        if self.rule == "min":
            return best
        if self.rule == "1se":  # grid runs from strongest to weakest penalty: first one good enough
            return int(np.flatnonzero(means >= means[best] - sems[best])[0])
        raise InputError(f"rule must be 'min' or '1se', got {self.rule!r}")

    # -- final fit
    def _model(self, c: float) -> LogisticRegression:
        return LogisticRegression(C=float(c), l1_ratio=1.0, solver="liblinear", max_iter=1000,
                                  random_state=self.random_state)

    def _fit_coefficients(self, data: np.ndarray, labels: np.ndarray, c: float) -> np.ndarray:
        return self._model(c).fit(data, labels).coef_.ravel()

    def _support_from(self, coef: np.ndarray, data: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Non-zero coefficients (the largest max_features), or the first to enter the path."""
        magnitude = np.abs(coef)
        if np.count_nonzero(magnitude) < self.min_features:
            # The null model won (typical for noise): keep the feature(s) that enter the
            # LASSO path first, i.e. with the largest |gradient| at zero.
            magnitude = np.abs(data.T @ (labels - labels.mean()))
            n_keep = int(self.min_features)
        else:
            n_keep = int(np.count_nonzero(magnitude))
        if self.max_features is not None:
            n_keep = max(int(self.min_features), min(n_keep, int(self.max_features)))
        support = np.zeros(coef.size, dtype=bool)
        support[np.argsort(-magnitude, kind="stable")[:min(n_keep, coef.size)]] = True
        return support


def _standardise(data: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance per column (constant columns become 0), as glmnet does."""
    scale = data.std(axis=0)
    return (data - data.mean(axis=0)) / np.where(scale > 0, scale, 1.0)
