"""Build and compare screening models from a cohort feature table, without leakage.

The rule this module enforces: every step that learns from data (imputation, ComBat,
variance / univariate / correlation filters, scaling, LASSO or PCA, the classifier) is a
step of one scikit-learn :class:`~sklearn.pipeline.Pipeline`, and only whole pipelines are
fitted, always on training rows. Cross-validation clones and refits the pipeline per fold,
so no held-out row ever influences harmonisation, selection or the model.

How the numbers are obtained (:func:`compare_models`):

- ``cv_auc``: **nested** cross-validation on the training set. An outer stratified K-fold
  (group-aware when groups are given) refits the *whole* grid search (inner K-fold over
  the hyper-parameter grid) inside each outer training fold and predicts the outer fold.
  ``cv_auc_mean ± cv_auc_sd`` are over the outer folds; ``cv_auc_pooled`` is the AUC of all
  out-of-fold predictions together. The grid search's own best inner score
  (``inner_best_scores`` per outer fold; ``grid_best_auc_optimistic`` of the final search in
  the summary) is kept for reference only: it is a maximum over candidates, so optimistic.
  A grid with a single candidate is fitted directly (no inner CV is needed to choose it).
- The final model is the grid search refitted on the whole training set; the threshold is
  Youden's on the training *out-of-fold* probabilities (never on test data); the test set
  gives AUC with DeLong and bootstrap CIs and sensitivity / specificity / PPV / NPV at that
  threshold (:mod:`.stats`).
- ``best_model`` is the one with the highest ``cv_auc_mean``; the test set never chooses.
- Rad-score / deep-score: the linear predictor (logit) of the radiomic-only and deep-only
  LASSO + logistic-regression models, out-of-fold on the training set and from the final
  model on the test set. The nomogram model is an unpenalised logistic regression on
  rad-score, deep-score and the clinical predictors (:class:`~.stats.Nomogram`), fitted on the
  out-of-fold scores; its ``cv_auc`` is a cross-validation of that regression over the same
  outer folds.

Degenerate data never end the whole comparison: where the outcome is separated so that the
nomogram's unpenalised logistic fit does not exist, Firth's bias-reduced fit is used (per
outer fold and for the final fit, marked in ``ModelResult.remarks``); a constant score is
left out of the nomogram with a note; a model whose fit fails (a fold with one class, every
feature constant after selection, a library error) is listed in ``ModelComparison.failed``
with its message and the others go on.

Groups (e.g. ``duplicate_group``: images of one patient or near-duplicate images) are never
split: not by :func:`split_cohort`, not by the outer folds, not by the inner grid-search
folds. (The LASSO's own internal CV over lambda, which runs inside a training fold, is
not group-aware: it can only affect the penalty chosen, never expose held-out rows.)
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from sklearn.base import BaseEstimator, clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.compose import ColumnTransformer
from sklearn.decomposition import PCA
from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, ParameterGrid, StratifiedGroupKFold, StratifiedKFold, train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sklearn.svm import SVC

from RadFusionScreenLib.core.errors import InputError
from RadFusionScreenLib.model.fit_cache import FitCache
from RadFusionScreenLib.model.roles import (CANDIDATE, NOMOGRAM, NOMOGRAM_RESULT, SCORE_FEATURE_SETS, SCORE_ONLY,
                                            SHIPPED_FEATURE_SET)
from RadFusionScreenLib.model.harmonize import ComBatHarmonizer
from RadFusionScreenLib.model.feature_selection import CorrelationPruner, LassoSelector, UnivariateFilter, VarianceFilter
from RadFusionScreenLib.stats import (
    AUCResult,
    Nomogram,
    ThresholdMetrics,
    auc_ci_bootstrap,
    auc_ci_delong,
    delong_test,
    roc_auc,
    threshold_metrics,
    youden_threshold,
)

FEATURE_SETS = ("clinical", "radiomic", "deep", "fused")
CLASSIFIERS = ("lr", "svm", "rf", "extratrees", "xgboost", "lightgbm", "mlp")
GRID_SIZES = ("full", "quick")
REDUCTIONS = ("lasso", "pca", "none")
# pyradiomics image-type prefixes, and IBSI family tags (``--names ibsi`` tables)
RADIOMIC_PREFIXES = (
    "original_", "wavelet", "log-sigma", "square_", "squareroot_", "logarithm_", "exponential_",
    "gradient_", "lbp-2D_", "lbp-3D",
    "morph_", "stat_", "ih_", "cm_", "rlm_", "szm_", "ngl_", "ngt_",
)
DEEP_PREFIX = "deep_"
OUTER_FOLD = "outer_fold"  # column of ModelComparison.scores_train


# ====================================================================== columns
@dataclass(frozen=True)
class FeatureColumns:
    """Which columns of the cohort table form each feature set."""

    radiomic: tuple[str, ...] = ()
    deep: tuple[str, ...] = ()
    clinical: tuple[str, ...] = ()

    def for_set(self, feature_set: str) -> tuple[str, ...]:
        """Columns of one feature set; "fused" is radiomic + deep."""
        sets = {"clinical": self.clinical, "radiomic": self.radiomic, "deep": self.deep,
                "fused": self.radiomic + self.deep}
        if feature_set not in sets:
            raise InputError(f"unknown feature set {feature_set!r}: use {', '.join(FEATURE_SETS)}")
        return sets[feature_set]


def infer_feature_columns(table: pd.DataFrame, clinical: Sequence[str] = ()) -> FeatureColumns:
    """Radiomic columns by pyradiomics / IBSI name prefix, deep columns by ``deep_``.

    Clinical predictors cannot be recognised by name: list them in ``clinical``.
    """
    missing = [c for c in clinical if c not in table.columns]
    if missing:
        raise InputError(f"clinical column(s) {missing} are not in the table")
    numeric = [str(c) for c in table.columns if pd.api.types.is_numeric_dtype(table[c])]
    radiomic = tuple(c for c in numeric if c.startswith(RADIOMIC_PREFIXES))
    deep = tuple(c for c in numeric if c.startswith(DEEP_PREFIX))
    return FeatureColumns(radiomic=radiomic, deep=deep, clinical=tuple(map(str, clinical)))


# ===================================================================== settings
@dataclass(frozen=True)
class ModelSettings:
    """Choices for the feature pipeline shared by all classifiers.

    Attributes
    ----------
    site_column : str or None
        Site / scanner column for ComBat; None: no harmonisation.
    harmonize : bool
        Fit ComBat inside the pipeline when a site column with more than one training site
        exists (switched off, with a note, when the test set holds sites unseen in training).
    covariate_columns : tuple of str
        Numeric covariates ComBat preserves (never the outcome label).
    harmonizer : ComBatHarmonizer or None
        Template harmonizer (cloned per fit), e.g. ``ComBatHarmonizer(mean_only=True)``;
        its site/covariate columns are replaced by the two settings above.
    variance_filter : bool
        Drop near-zero-variance features first.
    univariate_test, univariate_alpha, univariate_k
        :class:`~.select.UnivariateFilter` settings (alpha None / k None: no such cut).
    correlation_threshold : float or None
        :class:`~.select.CorrelationPruner` |r| limit; None: no pruning.
    reduction : {"lasso", "pca", "none"}
        LASSO selection, PCA (``pca_variance`` of the variance kept), or neither.
    lasso_rule, lasso_folds, max_features
        :class:`~.select.LassoSelector` settings.
    random_state : int
        Seed of every random step (CV shuffling, LASSO CV, tree models, MLP).
    """

    site_column: str | None = "site"
    harmonize: bool = True
    covariate_columns: tuple[str, ...] = ()
    harmonizer: ComBatHarmonizer | None = None
    variance_filter: bool = True
    univariate_test: str = "mannwhitney"
    univariate_alpha: float | None = 0.05
    univariate_k: int | None = None
    correlation_threshold: float | None = 0.9
    reduction: str = "lasso"
    lasso_rule: str = "1se"
    lasso_folds: int = 5
    max_features: int | None = None
    pca_variance: float = 0.95
    random_state: int = 0


# ================================================================== classifiers
def make_classifier(name: str, random_state: int = 0) -> BaseEstimator:
    """A classifier with modest, single-threaded defaults (tuned further by :func:`param_grid`)."""
    factories: dict[str, Callable[[], BaseEstimator]] = {
        "lr": lambda: LogisticRegression(C=1.0, l1_ratio=0.0, max_iter=2000),
        # SVC(probability=True) is deprecated: Platt scaling by CalibratedClassifierCV instead.
        "svm": lambda: CalibratedClassifierCV(SVC(kernel="rbf", gamma="scale", C=1.0), method="sigmoid", cv=3),
        "rf": lambda: RandomForestClassifier(n_estimators=300, max_features="sqrt", n_jobs=1,
                                             random_state=random_state),
        "extratrees": lambda: ExtraTreesClassifier(n_estimators=300, max_features="sqrt", n_jobs=1,
                                                   random_state=random_state),
        "xgboost": lambda: _xgboost(random_state),
        "lightgbm": lambda: _lightgbm(random_state),
        # lbfgs: the solver scikit-learn recommends for small data sets; deterministic.
        "mlp": lambda: MLPClassifier(hidden_layer_sizes=(32,), alpha=1.0, solver="lbfgs", max_iter=1000,
                                     random_state=random_state),
    }
    if name not in factories:
        raise InputError(f"unknown classifier {name!r}: use {', '.join(CLASSIFIERS)}")
    return factories[name]()


def _xgboost(random_state: int) -> BaseEstimator:
    from xgboost import XGBClassifier  # imported on use: optional [train] dependency

    return XGBClassifier(n_estimators=200, max_depth=2, learning_rate=0.05, subsample=0.8, colsample_bytree=0.8,
                         tree_method="hist", eval_metric="logloss", n_jobs=1, random_state=random_state)


def _lightgbm(random_state: int) -> BaseEstimator:
    from lightgbm import LGBMClassifier

    return LGBMClassifier(n_estimators=200, learning_rate=0.05, num_leaves=7, min_child_samples=10,
                          subsample=0.8, subsample_freq=1, colsample_bytree=0.8, n_jobs=1, verbose=-1,
                          random_state=random_state)


_FULL_GRIDS: dict[str, dict[str, list]] = {
    "lr": {"C": [0.01, 0.1, 1.0, 10.0]},
    "svm": {"estimator__C": [0.1, 1.0, 10.0]},
    "rf": {"max_depth": [None, 5], "min_samples_leaf": [1, 5]},
    "extratrees": {"max_depth": [None, 5], "min_samples_leaf": [1, 5]},
    "xgboost": {"max_depth": [2, 4], "learning_rate": [0.03, 0.1]},
    "lightgbm": {"num_leaves": [4, 8], "min_child_samples": [5, 20]},
    "mlp": {"alpha": [0.01, 1.0], "hidden_layer_sizes": [(16,), (32, 16)]},
}
# One or two candidates per family, for tests and first looks.
_QUICK_GRIDS: dict[str, dict[str, list]] = {
    "lr": {"C": [0.1, 1.0]},
    "svm": {"estimator__C": [1.0]},
    "rf": {"n_estimators": [100], "min_samples_leaf": [3]},
    "extratrees": {"n_estimators": [100], "min_samples_leaf": [3]},
    "xgboost": {"n_estimators": [100], "max_depth": [2]},
    "lightgbm": {"n_estimators": [100]},
    "mlp": {"alpha": [1.0]},
}


def param_grid(classifier: str, size: str = "full") -> dict[str, list]:
    """Hyper-parameter grid of a classifier family, keys prefixed for the pipeline step."""
    grids = {"full": _FULL_GRIDS, "quick": _QUICK_GRIDS}
    if size not in grids:
        raise InputError(f"grid size must be one of {', '.join(GRID_SIZES)}, got {size!r}")
    if classifier not in grids[size]:
        raise InputError(f"unknown classifier {classifier!r}: use {', '.join(CLASSIFIERS)}")
    return {f"classifier__{key}": list(values) for key, values in grids[size][classifier].items()}


# ==================================================================== pipelines
def build_pipeline(
    feature_columns: Sequence[str],
    classifier: str,
    settings: ModelSettings = ModelSettings(),
    clinical: bool = False,
    categorical_columns: Sequence[str] = (),
    memory: FitCache | None = None,
) -> Pipeline:
    """One Pipeline from raw table columns to a probability: every fitted step inside.

    Imaging features (radiomic / deep / fused): select columns + median imputation →
    ComBat (when ``settings`` harmonise; the site column is passed through to it) →
    near-zero-variance filter → univariate filter → correlation pruning → scaling →
    LASSO / PCA → classifier. Clinical predictors: median (numeric) or most-frequent +
    one-hot (``categorical_columns``) imputation → scaling → classifier; no selection,
    since clinical predictors are chosen by the researcher.

    The input is the cohort DataFrame itself (other columns are ignored). Steps before
    the last transformer pass DataFrames on, so ``pipeline[:-1].get_feature_names_out()``
    and each selector's ``selected_features_`` give real column names.

    ``memory``: cache of fitted transformers (scikit-learn's ``Pipeline(memory=...)``, a
    :class:`~.fit_cache.FitCache`): the steps before the classifier are fitted once per
    training fold and reused by every grid candidate and classifier family fitted on the same rows.
    """
    columns = [str(c) for c in feature_columns]
    if not columns:
        raise InputError("a pipeline needs at least one feature column")
    steps = _clinical_steps(columns, categorical_columns) if clinical else _imaging_steps(columns, settings)
    steps.append(("classifier", make_classifier(classifier, settings.random_state)))
    return _with_named_outputs(Pipeline(steps, memory=memory))


def _clinical_steps(columns: list[str], categorical_columns: Sequence[str]) -> list[tuple[str, Any]]:
    categorical = [c for c in columns if c in set(map(str, categorical_columns))]
    numeric = [c for c in columns if c not in categorical]
    transformers = []
    if numeric:
        transformers.append(("numeric", SimpleImputer(strategy="median"), numeric))
    if categorical:
        encode = Pipeline([("impute", SimpleImputer(strategy="most_frequent")),
                           ("one_hot", OneHotEncoder(handle_unknown="ignore", sparse_output=False))])
        transformers.append(("categorical", encode, categorical))
    select = ColumnTransformer(transformers, remainder="drop", verbose_feature_names_out=False)
    return [("columns", select), ("scale", StandardScaler())]


def _imaging_steps(columns: list[str], settings: ModelSettings) -> list[tuple[str, Any]]:
    harmonize = settings.harmonize and settings.site_column is not None
    transformers: list[tuple[str, Any, list[str]]] = [("impute", SimpleImputer(strategy="median"), columns)]
    if harmonize:  # ComBat reads the site (and covariates) by name from its input
        transformers.append(("site", "passthrough", [settings.site_column, *settings.covariate_columns]))
    steps: list[tuple[str, Any]] = [
        ("columns", ColumnTransformer(transformers, remainder="drop", verbose_feature_names_out=False))
    ]
    if harmonize:
        steps.append(("harmonize", _harmonizer(settings)))
    if settings.variance_filter:
        steps.append(("variance", VarianceFilter()))
    if settings.univariate_alpha is not None or settings.univariate_k is not None:
        steps.append(("univariate", UnivariateFilter(settings.univariate_test, settings.univariate_alpha,
                                                     settings.univariate_k)))
    if settings.correlation_threshold is not None:
        steps.append(("decorrelate", CorrelationPruner(settings.correlation_threshold, test=settings.univariate_test)))
    steps.append(("scale", StandardScaler()))
    steps.append(("reduce", _reduction(settings)))
    return steps


def _harmonizer(settings: ModelSettings) -> ComBatHarmonizer:
    template = settings.harmonizer if settings.harmonizer is not None else ComBatHarmonizer()
    return clone(template).set_params(site_column=settings.site_column,
                                      covariate_columns=tuple(settings.covariate_columns))


def _reduction(settings: ModelSettings) -> Any:
    if settings.reduction == "lasso":
        return LassoSelector(cv=settings.lasso_folds, rule=settings.lasso_rule, max_features=settings.max_features,
                             random_state=settings.random_state)
    if settings.reduction == "pca":
        return PCA(n_components=settings.pca_variance, svd_solver="full", random_state=settings.random_state)
    if settings.reduction == "none":
        return "passthrough"
    raise InputError(f"reduction must be one of {', '.join(REDUCTIONS)}, got {settings.reduction!r}")


def _with_named_outputs(pipeline: Pipeline) -> Pipeline:
    """DataFrames between transformers (names survive); the classifier gets a plain array.

    Plain arrays for the classifier because LightGBM / XGBoost refuse some characters in
    column names that radiomics or clinical tables may contain.
    """
    transformers = [step for _, step in pipeline.steps[:-1] if step != "passthrough"]
    for step in transformers[:-1]:
        step.set_output(transform="pandas")
    return pipeline


def selected_feature_names(model: Pipeline | GridSearchCV) -> list[str]:
    """Names of the columns that reach the classifier of a fitted pipeline (or grid search)."""
    pipeline = model.best_estimator_ if isinstance(model, GridSearchCV) else model
    return [str(name) for name in pipeline[:-1].get_feature_names_out()]


# ==================================================================== splitting
class StratifiedSiteKFold:
    """K folds stratified by label (and by site when X has ``site_column``); groups kept whole.

    Stratifying by label x site keeps every site with at least two cases in every training
    fold, which ComBat needs (it cannot harmonise a site it was not fitted on). With
    ``groups`` (passed to :meth:`split`, e.g. duplicate_group) it is a
    :class:`~sklearn.model_selection.StratifiedGroupKFold`: no group is ever split.
    """

    def __init__(self, n_splits: int = 5, site_column: str | None = None, shuffle: bool = True,
                 random_state: int = 0) -> None:
        self.n_splits = n_splits
        self.site_column = site_column
        self.shuffle = shuffle
        self.random_state = random_state

    def get_n_splits(self, X: Any = None, y: Any = None, groups: Any = None) -> int:
        return self.n_splits

    def split(self, X: Any, y: Any, groups: Any = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        strata = self._strata(X, y)
        state = self.random_state if self.shuffle else None
        if groups is None:
            splitter = StratifiedKFold(self.n_splits, shuffle=self.shuffle, random_state=state)
        else:
            splitter = StratifiedGroupKFold(self.n_splits, shuffle=self.shuffle, random_state=state)
        with warnings.catch_warnings():  # small label x site strata: stratification is best-effort, as intended
            warnings.filterwarnings("ignore", message=".*least populated class.*", category=UserWarning)
            folds = list(splitter.split(np.zeros(len(strata)), strata, groups))
        yield from folds

    def _strata(self, X: Any, y: Any) -> np.ndarray:
        labels = np.asarray(y).astype(str)
        if self.site_column is None or not isinstance(X, pd.DataFrame) or self.site_column not in X.columns:
            return labels
        sites = X[self.site_column].astype(str).to_numpy()
        return np.char.add(np.char.add(labels, "|"), sites.astype(str))


@dataclass
class CohortSplit:
    """Training and test tables and a sentence saying how they were split."""

    train: pd.DataFrame
    test: pd.DataFrame
    description: str


def split_cohort(
    table: pd.DataFrame,
    test_size: float = 0.3,
    seed: int = 0,
    stratify: str | None = "label",
    groups: str | None = None,
    external_site: str | Sequence[str] | None = None,
    site_column: str = "site",
) -> CohortSplit:
    """Split a cohort into training and test sets.

    Parameters
    ----------
    table : DataFrame, one row per case
    test_size : float
        Share of cases (of groups, when ``groups`` is given) for the random test set.
    seed : int
    stratify : str or None
        Label column to stratify on (a group is stratified by its most common label).
    groups : str or None
        Column whose rows must stay together (e.g. ``duplicate_group``; empty = own group).
    external_site : str or list, optional
        External validation instead: the test set is every case of these site(s).
    site_column : str
    """
    table = table.reset_index(drop=True) if not table.index.is_unique else table
    if external_site is not None:
        return _external_split(table, external_site, site_column, groups)
    if not 0 < test_size < 1:
        raise InputError(f"test_size must lie strictly between 0 and 1, got {test_size}")
    group_ids = group_labels(table, groups)
    unique_groups = pd.unique(group_ids)
    strata = None
    if stratify is not None:
        if stratify not in table.columns:
            raise InputError(f"stratify column {stratify!r} is not in the table")
        strata = pd.Series(table[stratify].to_numpy()).groupby(group_ids).agg(lambda s: s.mode().iloc[0])
        strata = strata.loc[unique_groups].to_numpy()
    try:
        _, test_groups = train_test_split(unique_groups, test_size=test_size, random_state=seed, stratify=strata)
    except ValueError as exc:
        raise InputError(f"cannot split the cohort ({exc}); use fewer strata or a larger test_size") from None
    in_test = np.isin(group_ids, test_groups)
    kind = "stratified " if stratify else ""
    kept = f", groups of {groups!r} kept whole" if groups else ""
    return CohortSplit(table[~in_test], table[in_test],
                       f"random {kind}split, test share {test_size:g} (seed {seed}){kept}")


def _external_split(table: pd.DataFrame, external_site: Any, site_column: str, groups: str | None) -> CohortSplit:
    if site_column not in table.columns:
        raise InputError(f"external validation needs a site column; {site_column!r} is not in the table")
    sites = [external_site] if isinstance(external_site, str) or np.isscalar(external_site) else list(external_site)
    site_text = table[site_column].astype(str)
    unknown = [s for s in sites if str(s) not in set(site_text)]
    if unknown:
        raise InputError(f"external site(s) {unknown} not found in column {site_column!r}")
    in_test = site_text.isin([str(s) for s in sites]).to_numpy()
    if in_test.all():
        raise InputError("every case belongs to the external site(s): nothing is left to train on")
    group_ids = group_labels(table, groups)
    straddling = set(group_ids[in_test]) & set(group_ids[~in_test])
    if straddling:
        raise InputError(f"group(s) {sorted(map(str, straddling))[:5]} have cases on both sides of the external split")
    return CohortSplit(table[~in_test], table[in_test], f"external test on site(s) {', '.join(map(str, sites))}")


def group_labels(table: pd.DataFrame, groups: str | None) -> np.ndarray:
    """Group id per row; rows without a group (or no group column) are their own group."""
    own = np.array([f"__row_{i}" for i in range(len(table))], dtype=object)
    if groups is None:
        return own
    if groups not in table.columns:
        raise InputError(f"group column {groups!r} is not in the table")
    values = table[groups].to_numpy(dtype=object)
    empty = pd.isna(values)
    return np.where(empty, own, values.astype(str)).astype(object)


# ======================================================== cross-validation tools
def build_search(
    pipeline: Pipeline,
    grid: Mapping[str, Sequence[Any]],
    cv: StratifiedSiteKFold,
    n_jobs: int = 1,
) -> Pipeline | GridSearchCV:
    """GridSearchCV (ROC AUC) over the grid; a single-candidate grid is set directly.

    Errors are raised, not scored as NaN, so a failing fit (e.g. an unseen site) is seen.
    """
    candidates = list(ParameterGrid(dict(grid)))
    if len(candidates) == 1:
        return clone(pipeline).set_params(**candidates[0])
    return GridSearchCV(pipeline, dict(grid), scoring="roc_auc", cv=cv, n_jobs=n_jobs, refit=True,
                        error_score="raise")


def fit_model(model: Pipeline | GridSearchCV, X: pd.DataFrame, y: np.ndarray, groups: np.ndarray | None = None):
    """Fit a pipeline or grid search on training rows (groups reach the inner CV)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        if isinstance(model, GridSearchCV) and groups is not None:
            return model.fit(X, y, groups=groups)
        return model.fit(X, y)


def predict_probability(model: Any, X: pd.DataFrame) -> np.ndarray:
    """P(case) per row."""
    return np.asarray(model.predict_proba(X))[:, 1]


def linear_predictor(model: Any, X: pd.DataFrame) -> np.ndarray | None:
    """The model's decision function (for logistic regression: the logit), when it has one."""
    return np.asarray(model.decision_function(X), dtype=float).ravel() if hasattr(model, "decision_function") else None


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
        return _auc_or_nan(self.y, self.probability)


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
    folds = Parallel(n_jobs=_jobs(n_jobs, len(splits)), return_as="generator")(
        delayed(_fit_fold)(clone(model), X, y, groups, train, valid) for train, valid in splits)
    probability, lp = np.full(y.size, np.nan), np.full(y.size, np.nan)
    fold = np.full(y.size, -1)
    aucs, params, inner = [], [], []
    for k, ((_, valid), (p, scores, best_params, best_score)) in enumerate(zip(splits, folds)):
        probability[valid] = p
        if scores is not None:
            lp[valid] = scores
        fold[valid] = k
        aucs.append(_auc_or_nan(y[valid], p))
        params.append(best_params)
        inner.append(best_score)
        if progress is not None:
            progress(f"outer fold {k + 1}/{len(splits)} done")
    has_lp = not np.isnan(lp).all()
    return CrossValidatedPredictions(y, probability, lp if has_lp else None, fold, np.array(aucs), params, inner)


def _fit_fold(model, X: pd.DataFrame, y: np.ndarray, groups: np.ndarray | None, train: np.ndarray,
              valid: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any], float]:
    """One outer fold: fit on ``train`` rows; probability, linear predictor, chosen parameters and
    inner best score of the ``valid`` rows."""
    fitted = fit_model(model, X.iloc[train], y[train], None if groups is None else groups[train])
    return (predict_probability(fitted, X.iloc[valid]), linear_predictor(fitted, X.iloc[valid]),
            getattr(fitted, "best_params_", {}), float(getattr(fitted, "best_score_", np.nan)))


def _jobs(n_jobs: int | None, tasks: int) -> int:
    """Processes to use: ``n_jobs`` (None: every core), never more than the tasks."""
    return max(1, min(tasks, n_jobs or os.cpu_count() or 1))


def _auc_or_nan(y: np.ndarray, score: np.ndarray) -> float:
    return roc_auc(y, score) if 0 < np.sum(y) < y.size else float("nan")


# ============================================================== model results
@dataclass
class ModelResult:
    """One model of the comparison: CV on training data, then the untouched test set."""

    name: str
    feature_set: str
    classifier: str
    cv: CrossValidatedPredictions
    threshold: float  # Youden on training out-of-fold probabilities
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


@dataclass
class ModelComparison:
    """Every model, the best one by CV AUC, rad/deep scores and the nomogram."""

    results: dict[str, ModelResult]
    best_model: str
    y_train: np.ndarray
    y_test: np.ndarray | None
    scores_train: pd.DataFrame  # out-of-fold rad-score / deep-score (+ clinical) per training case
    scores_test: pd.DataFrame | None
    nomogram: Nomogram | None
    settings: ModelSettings
    notes: list[str] = field(default_factory=list)
    score_models: dict[str, str] = field(default_factory=dict)  # rad_score / deep_score -> result name
    clinical_fill: dict[str, Any] = field(default_factory=dict)  # training value for a missing clinical value
    failed: dict[str, str] = field(default_factory=dict)  # model name -> why it could not be built

    def candidates(self, feature_set: str | None = None, classifier: str | None = None) -> list[ModelResult]:
        """The results a bundle may ship (not the score-only models, not the nomogram)."""
        return [r for r in self.results.values() if r.role == CANDIDATE
                and (feature_set is None or r.feature_set == feature_set)
                and (classifier is None or r.classifier == classifier)]

    def shipped_result(self, feature_set: str | None = None, classifier: str | None = None) -> ModelResult:
        """The model a bundle serves: the best (nested-CV AUC) candidate of ``feature_set`` (and
        ``classifier``) when given, else the best fused model, else the best candidate."""
        if feature_set is not None or classifier is not None:
            chosen = best_result(self.candidates(feature_set, classifier))
        else:
            chosen = best_result(self.candidates(SHIPPED_FEATURE_SET)) or best_result(self.candidates())
        if chosen is None:
            wanted = " ".join(x for x in (feature_set, classifier) if x) or "candidate"
            raise InputError(f"the comparison has no {wanted} model to ship (only the nomogram or score models "
                             f"were built); it has: {sorted(self.results)}")
        return chosen

    def summary(self) -> pd.DataFrame:
        """One row per model, best first by CV AUC; DeLong p vs the best model on the test set."""
        table = pd.DataFrame([result.row() for result in self.results.values()])
        if self.y_test is not None and self.best_model in self.results:
            best = self.results[self.best_model].test_probability
            table["test_delong_p_vs_best"] = [
                np.nan if name == self.best_model else delong_test(self.y_test, best, r.test_probability).p_value
                for name, r in self.results.items()
            ]
        return table.sort_values("cv_auc_mean", ascending=False, kind="stable").reset_index(drop=True)


# ============================================================== compare models
def compare_models(
    train: pd.DataFrame,
    test: pd.DataFrame | None = None,
    *,
    columns: FeatureColumns | None = None,
    label_column: str = "label",
    group_column: str | None = None,
    feature_sets: Sequence[str] = FEATURE_SETS,
    classifiers: Sequence[str] = CLASSIFIERS,
    categorical_columns: Sequence[str] = (),
    settings: ModelSettings = ModelSettings(),
    grid: str = "full",
    outer_folds: int = 5,
    inner_folds: int = 5,
    n_boot: int = 2000,
    nomogram: bool = True,
    n_jobs: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> ModelComparison:
    """Nested-CV comparison of feature sets x classifiers, then the test set (see module doc).

    Parameters
    ----------
    train, test : DataFrame
        Cohort tables from :func:`split_cohort` (``test`` None: cross-validation only).
    columns : FeatureColumns, optional
        Feature set columns; default :func:`infer_feature_columns` (no clinical predictors).
    label_column : str
        0/1 outcome (1 = case).
    group_column : str, optional
        Rows that must stay in one fold (e.g. ``duplicate_group``).
    feature_sets, classifiers : sequences
        Subsets of :data:`FEATURE_SETS` and :data:`CLASSIFIERS`. Empty feature sets are
        skipped with a note.
    categorical_columns : sequence
        Clinical predictors that are categorical (one-hot in models, factor in the nomogram).
    settings : ModelSettings
    grid : {"full", "quick"}
    outer_folds, inner_folds : int
        Nested CV folds (outer: performance estimate; inner: grid search).
    n_boot : int
        Bootstrap replicates for the test AUC interval.
    nomogram : bool
        Also build rad-score / deep-score and the nomogram model.
    n_jobs : int or None
        Processes for the outer folds and the final grid search (None: every core). The
        results do not depend on it.
    progress : callable, optional
        Called with progress lines (model, outer fold) and one line per finished model.

    The steps before the classifier (imputation, ComBat, filters, LASSO / PCA) are fitted
    once per training fold and reused by every grid candidate and classifier family fitted
    on the same rows (:class:`~.fit_cache.FitCache`, in memory, freed at the end), with
    results identical to fitting them every time.
    """
    cache = FitCache()
    try:
        comparison = _compare(train, test, columns, label_column, group_column, feature_sets, classifiers,
                              categorical_columns, settings, grid, outer_folds, inner_folds, n_boot, nomogram,
                              n_jobs, progress, cache)
    finally:
        cache.clear()
    _forget_cache(comparison)
    return comparison


def _compare(train, test, columns, label_column, group_column, feature_sets, classifiers, categorical_columns,
             settings, grid, outer_folds, inner_folds, n_boot, nomogram, n_jobs, progress, memory) -> ModelComparison:
    log = progress or (lambda message: None)
    columns = columns or infer_feature_columns(train)
    settings, notes = _resolve_harmonization(settings, train, test)
    site = settings.site_column if settings.harmonize else None
    context = _Context(
        train=train, test=test, y_train=_labels(train, label_column, "training"),
        y_test=_labels(test, label_column, "test") if test is not None else None,
        groups=group_labels(train, group_column) if group_column else None,
        settings=settings, grid=grid, n_boot=n_boot, n_jobs=n_jobs,
        outer_cv=StratifiedSiteKFold(outer_folds, site, random_state=settings.random_state),
        inner_cv=StratifiedSiteKFold(inner_folds, site, random_state=settings.random_state + 1),
        categorical_columns=tuple(categorical_columns), memory=memory, log=log,
    )
    failed: dict[str, str] = {}
    results = _evaluate_all(context, columns, feature_sets, classifiers, notes, failed, log)
    scores_train, scores_test, fitted_nomogram, score_models = pd.DataFrame(), None, None, {}
    if nomogram:
        scores_train, scores_test, fitted_nomogram, score_models = _add_nomogram(
            context, columns, results, notes, failed, log)
    if not results:
        reasons = "; ".join(notes) or "every requested feature set is empty"
        raise InputError(f"no model could be built: {reasons}")
    best = best_result(results.values()).name
    categorical = {c: _levels(train[c]) for c in columns.clinical if c in context.categorical_columns}
    return ModelComparison(results, best, context.y_train, context.y_test, scores_train, scores_test,
                           fitted_nomogram, settings, notes, score_models,
                           _clinical_fill_values(train, list(columns.clinical), categorical), failed)


def _forget_cache(comparison: ModelComparison) -> None:
    """The fitted models outlive the comparison's fit cache: they no longer point at it."""
    for result in comparison.results.values():
        for pipeline in (result.model, getattr(result.model, "estimator", None),
                         getattr(result.model, "best_estimator_", None)):
            if isinstance(pipeline, Pipeline):
                pipeline.set_params(memory=None)


def best_result(results: Iterable[ModelResult]) -> ModelResult | None:
    """The result with the highest nested-CV AUC (NaN ranks last); None when there is none."""
    return max(results, key=lambda r: np.nan_to_num(r.cv_auc_mean, nan=-np.inf), default=None)


@dataclass(frozen=True)
class _Context:
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


def _evaluate_all(context: _Context, columns: FeatureColumns, feature_sets: Sequence[str],
                  classifiers: Sequence[str], notes: list[str], failed: dict[str, str],
                  log: Callable[[str], None]) -> dict[str, ModelResult]:
    """Every feature set x classifier, in the order given; a model that fails is noted, not fatal.

    A feature set with exactly the columns of one evaluated before (fused without deep
    features is the radiomic set) gets that set's results: refitting would repeat the same
    computation and give the same numbers.
    """
    results: dict[str, ModelResult] = {}
    evaluated: dict[tuple[str, ...], str] = {}
    for feature_set in feature_sets:
        feature_columns = columns.for_set(feature_set)
        if not feature_columns:
            notes.append(f"feature set {feature_set!r} skipped: it has no columns")
            continue
        same_as = evaluated.get(tuple(feature_columns)) if feature_set != "clinical" else None
        if same_as is not None:
            _copy_results(same_as, feature_set, classifiers, results, failed)
            notes.append(f"feature set {feature_set!r} has the same columns as {same_as!r}: its models are "
                         f"{same_as!r}'s (not fitted twice)")
            log(notes[-1])
            continue
        if feature_set != "clinical":
            evaluated[tuple(feature_columns)] = feature_set
        for classifier in classifiers:
            result = _evaluate_or_note(f"{feature_set}/{classifier}", notes, failed, log,
                                       lambda: _evaluate(context, feature_set, classifier, feature_columns))
            if result is not None:
                results[result.name] = result
    return results


def _copy_results(source: str, feature_set: str, classifiers: Sequence[str], results: dict[str, ModelResult],
                  failed: dict[str, str]) -> None:
    for classifier in classifiers:
        name = f"{feature_set}/{classifier}"
        if f"{source}/{classifier}" in results:
            results[name] = replace(results[f"{source}/{classifier}"], name=name, feature_set=feature_set)
        elif f"{source}/{classifier}" in failed:
            failed[name] = failed[f"{source}/{classifier}"]


def _evaluate_or_note(name: str, notes: list[str], failed: dict[str, str], log: Callable[[str], None],
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
    log(_progress_line(result))
    return result


def _add_nomogram(
    context: _Context, columns: FeatureColumns, results: dict[str, ModelResult], notes: list[str],
    failed: dict[str, str], log: Callable[[str], None],
) -> tuple[pd.DataFrame, pd.DataFrame | None, Nomogram | None, dict[str, str]]:
    """Rad-score / deep-score, then the nomogram model, added to ``results``."""
    scores_train, scores_test, score_models = _rad_deep_scores(context, columns, results, notes, failed, log)
    if scores_train is None:
        return pd.DataFrame(), None, None, {}
    nomogram_result, fitted = _evaluate_nomogram(context, columns, scores_train, scores_test, notes)
    if nomogram_result is not None:
        results[nomogram_result.name] = nomogram_result
        log(_progress_line(nomogram_result))
    else:
        failed[NOMOGRAM_RESULT] = notes[-1]
    return scores_train, scores_test, fitted, score_models


def _labels(table: pd.DataFrame, label_column: str, which: str) -> np.ndarray:
    if label_column not in table.columns:
        raise InputError(f"the {which} table has no label column {label_column!r}")
    values = table[label_column]
    if values.isna().any():
        raise InputError(f"the {which} label column {label_column!r} has missing values")
    labels = values.to_numpy()
    if not np.isin(labels, (0, 1, True, False)).all():
        raise InputError(f"label column {label_column!r} must hold 0 (control) and 1 (case), "
                         f"found {sorted(map(str, pd.unique(values)))[:5]}")
    labels = labels.astype(int)
    if labels.min() == labels.max():
        raise InputError(f"the {which} set holds a single class: both cases and controls are needed")
    return labels


def _resolve_harmonization(settings: ModelSettings, train: pd.DataFrame,
                           test: pd.DataFrame | None) -> tuple[ModelSettings, list[str]]:
    """Switch ComBat off (with a note) where it cannot work; refuse sites too small to fit."""
    site = settings.site_column
    if not settings.harmonize or site is None:
        return replace(settings, harmonize=False), []
    if site not in train.columns:
        return replace(settings, harmonize=False), [f"no ComBat: the table has no site column {site!r}"]
    if train[site].isna().any():
        raise InputError(f"site column {site!r} has missing values in the training set")
    counts = train[site].astype(str).value_counts()
    if counts.size < 2:
        return replace(settings, harmonize=False), ["no ComBat: the training set holds a single site"]
    if test is not None and site in test.columns:
        unseen = sorted(set(test[site].astype(str)) - set(counts.index))
        if unseen:
            return replace(settings, harmonize=False), [
                f"no ComBat: test site(s) {unseen} are not in the training set, and a ComBat model can only "
                "harmonise sites it was fitted on; models are built on unharmonised features"
            ]
    small = counts[counts < 2]
    if not small.empty:
        raise InputError(f"site(s) {list(small.index)} have fewer than 2 training cases: ComBat cannot be fitted "
                         "per cross-validation fold; merge small sites or set harmonize=False")
    return settings, []


def _evaluate(context: _Context, feature_set: str, classifier: str, feature_columns: Sequence[str],
              settings: ModelSettings | None = None) -> ModelResult:
    """Nested CV, final fit, Youden threshold from out-of-fold predictions, test metrics."""
    started = time.perf_counter()
    settings = settings or context.settings
    pipeline = build_pipeline(feature_columns, classifier, settings, clinical=feature_set == "clinical",
                              categorical_columns=context.categorical_columns, memory=context.memory)
    search = build_search(pipeline, param_grid(classifier, context.grid), context.inner_cv, _jobs(context.n_jobs, 64))
    name = f"{feature_set}/{classifier}"
    context.log(f"{name}: nested CV ({context.outer_cv.n_splits} outer folds)")
    cv = cross_validated_predictions(search, context.train, context.y_train, context.outer_cv, context.groups,
                                     context.n_jobs, lambda line: context.log(f"{name}: {line}"))
    context.log(f"{name}: final fit on the training set")
    final = fit_model(clone(search), context.train, context.y_train, context.groups)
    result = ModelResult(
        name=name, feature_set=feature_set, classifier=classifier, cv=cv,
        threshold=_training_threshold(context.y_train, cv.probability), model=final,
        selected_features=selected_feature_names(final), best_params=getattr(final, "best_params_", {}),
        seconds=0.0,
    )
    if context.test is not None:
        _score_test(result, predict_probability(final, context.test), context)
    result.seconds = time.perf_counter() - started
    return result


def _score_test(result: ModelResult, probability: np.ndarray, context: _Context) -> None:
    result.test_probability = probability
    result.test_auc_delong = auc_ci_delong(context.y_test, probability)
    result.test_auc_bootstrap = auc_ci_bootstrap(context.y_test, probability, n_boot=context.n_boot,
                                                 seed=context.settings.random_state)
    if np.isfinite(result.threshold):
        result.test_metrics = threshold_metrics(context.y_test, probability, result.threshold)


def _training_threshold(y: np.ndarray, oof_probability: np.ndarray) -> float:
    """Youden threshold on training out-of-fold probabilities (NaN for a constant predictor)."""
    try:
        return youden_threshold(y, oof_probability)
    except InputError:
        return float("nan")


def _progress_line(result: ModelResult) -> str:
    test = "" if result.test_auc_delong is None else f", test AUC {result.test_auc_delong.auc:.3f}"
    return (f"{result.name}: CV AUC {result.cv_auc_mean:.3f} ± {result.cv_auc_sd:.3f}{test} "
            f"({len(result.selected_features)} features, {result.seconds:.1f} s)")


# =========================================================== scores / nomogram
def _rad_deep_scores(context: _Context, columns: FeatureColumns, results: dict[str, ModelResult],
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


def _lasso_lr_result(context: _Context, feature_set: str, columns: FeatureColumns,
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
    result = _evaluate_or_note(name, notes, failed, log, lambda: replace(
        _evaluate(context, feature_set, "lr", columns.for_set(feature_set), settings), name=name, role=SCORE_ONLY))
    if result is not None:
        results[name] = result
    return result


def _evaluate_nomogram(
    context: _Context, columns: FeatureColumns, scores_train: pd.DataFrame, scores_test: pd.DataFrame | None,
    notes: list[str],
) -> tuple[ModelResult | None, Nomogram | None]:
    """Logistic nomogram on rad/deep scores + clinical predictors: CV over the outer folds, then test."""
    started = time.perf_counter()
    clinical = list(columns.clinical)
    categorical = {c: _levels(context.train[c]) for c in clinical if c in context.categorical_columns}
    fill = _clinical_fill_values(context.train, clinical, categorical)
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
        threshold=_training_threshold(context.y_train, cv.probability), model=fitted,
        selected_features=list(train_frame.columns), best_params={}, seconds=0.0, remarks=remarks, role=NOMOGRAM,
    )
    if scores_test is not None:
        test_frame = scores_test.join(context.test[clinical].fillna(fill)) if clinical else scores_test
        _score_test(result, fitted.points(test_frame)["probability"].to_numpy(), context)
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
        aucs.append(_auc_or_nan(y[valid], probability[valid]))
    return CrossValidatedPredictions(y, probability, None, fold, np.array(aucs), [{}] * len(aucs),
                                     [np.nan] * len(aucs))


def _levels(values: pd.Series) -> list[Any]:
    """Levels of a categorical predictor, most frequent first (the nomogram's reference level)."""
    return list(values.dropna().value_counts(sort=True).index)


def _clinical_fill_values(train: pd.DataFrame, clinical: list[str], categorical: dict[str, list]) -> dict[str, Any]:
    """Training median (numeric) or most frequent level (categorical) for missing clinical values."""
    return {c: (categorical[c][0] if c in categorical else float(train[c].median())) for c in clinical}
