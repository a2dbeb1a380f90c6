"""One scikit-learn Pipeline per model, from raw table columns to a probability.

Every step that learns from data (imputation, ComBat, variance / univariate / correlation
filters, scaling, LASSO or PCA, the classifier) is a step of one pipeline, and only whole
pipelines are fitted, always on training rows. Also here: the classifier families and their
hyper-parameter grids, the grid search around a pipeline, and fitting / predicting.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.compose import ColumnTransformer
from sklearn.decomposition import PCA
from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, ParameterGrid
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sklearn.svm import SVC

from RadFusionScreenLib.core.errors import InputError
from RadFusionScreenLib.model.feature_selection import (CorrelationPruner, LassoSelector, UnivariateFilter,
                                                       VarianceFilter)
from RadFusionScreenLib.model.fit_cache import FitCache
from RadFusionScreenLib.model.harmonize import ComBatHarmonizer
from RadFusionScreenLib.model.train.shared_steps_search import SharedStepsGridSearchCV
from RadFusionScreenLib.model.train.splits import StratifiedSiteKFold

CLASSIFIERS = ("lr", "svm", "rf", "extratrees", "xgboost", "lightgbm", "mlp")
GRID_SIZES = ("full", "quick")
REDUCTIONS = ("lasso", "pca", "none")


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


# ==================================================================== fitting
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
    return SharedStepsGridSearchCV(pipeline, dict(grid), scoring="roc_auc", cv=cv, n_jobs=n_jobs, refit=True,
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
