"""Compare screening models from a cohort feature table, without leakage.

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
- The final model is the grid search refitted on the whole training set; its probability
  is calibrated by a map (none, Platt or isotonic) chosen by nested CV on the training
  *out-of-fold* probabilities and fitted on them (:mod:`..calibration`); the threshold is
  Youden's on the calibrated training out-of-fold probabilities (never on test data); the
  test set gives AUC with DeLong and bootstrap CIs and sensitivity / specificity / PPV / NPV
  at that threshold of the calibrated probability (:mod:`.stats`). The nomogram keeps its
  own (logistic) probability.
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

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pandas as pd
from sklearn.pipeline import Pipeline

from RadFusionScreenLib.core.errors import InputError
from RadFusionScreenLib.model.fit_cache import FitCache
from RadFusionScreenLib.model.roles import CANDIDATE, SHIPPED_FEATURE_SET
from RadFusionScreenLib.model.train.columns import FEATURE_SETS, FeatureColumns, infer_feature_columns
from RadFusionScreenLib.model.train.model_result import (EvaluationContext, ModelResult, ModelSpec, evaluate_models,
                                                         note_outcome)
from RadFusionScreenLib.model.train.pipelines import CLASSIFIERS, ModelSettings
from RadFusionScreenLib.model.train.scores import add_nomogram, categorical_levels, clinical_fill_values
from RadFusionScreenLib.model.train.splits import StratifiedSiteKFold, group_labels
from RadFusionScreenLib.stats import Nomogram, delong_test


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
        Processes for the fitting tasks (None: every core): per feature set, its final fit and
        each outer fold, all classifiers of the set fitted one after the other in one task
        (:mod:`.fit_tasks`). The results do not depend on it.
    progress : callable, optional
        Called with progress lines (model, outer fold) and one line per finished model.

    The steps before the classifier (imputation, ComBat, filters, LASSO / PCA) are fitted
    once per training fold and reused by every grid candidate and classifier family fitted
    on the same rows in the same task (:class:`~.fit_cache.FitCache`, in memory, freed at the
    end), with results identical to fitting them every time.
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
    _check_clinical_types(train, columns.clinical, categorical_columns)
    settings, notes = _resolve_harmonization(settings, train, test)
    site = settings.site_column if settings.harmonize else None
    context = EvaluationContext(
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
        scores_train, scores_test, fitted_nomogram, score_models = add_nomogram(
            context, columns, results, notes, failed, log)
    if not results:
        reasons = "; ".join(notes) or "every requested feature set is empty"
        raise InputError(f"no model could be built: {reasons}")
    best = best_result(results.values()).name
    categorical = {c: categorical_levels(train[c]) for c in columns.clinical if c in context.categorical_columns}
    return ModelComparison(results, best, context.y_train, context.y_test, scores_train, scores_test,
                           fitted_nomogram, settings, notes, score_models,
                           clinical_fill_values(train, list(columns.clinical), categorical), failed)


def _check_clinical_types(train: pd.DataFrame, clinical: Sequence[str], categorical: Sequence[str]) -> None:
    """A clinical column holding text must be declared categorical (it has levels, not a median)."""
    text = [c for c in clinical if c not in categorical and not pd.api.types.is_numeric_dtype(train[c])]
    if text:
        raise InputError(f"clinical column(s) {text} hold non-numeric values: declare them categorical "
                         f"(--categorical {','.join(text)}) or make them numbers")


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


def _evaluate_all(context: EvaluationContext, columns: FeatureColumns, feature_sets: Sequence[str],
                  classifiers: Sequence[str], notes: list[str], failed: dict[str, str],
                  log: Callable[[str], None]) -> dict[str, ModelResult]:
    """Every feature set x classifier, in the order given; a model that fails is noted, not fatal.

    A feature set with exactly the columns of one evaluated before (fused without deep
    features is the radiomic set) gets that set's results: refitting would repeat the same
    computation and give the same numbers.
    """
    specs: list[ModelSpec] = []
    copies: list[tuple[str, str]] = []  # (feature set, the set whose results it shares)
    evaluated: dict[tuple[str, ...], str] = {}
    for feature_set in feature_sets:
        feature_columns = columns.for_set(feature_set)
        if not feature_columns:
            notes.append(f"feature set {feature_set!r} skipped: it has no columns")
            continue
        same_as = evaluated.get(tuple(feature_columns)) if feature_set != "clinical" else None
        if same_as is not None:
            copies.append((feature_set, same_as))
            notes.append(f"feature set {feature_set!r} has the same columns as {same_as!r}: its models are "
                         f"{same_as!r}'s (not fitted twice)")
            log(notes[-1])
            continue
        if feature_set != "clinical":
            evaluated[tuple(feature_columns)] = feature_set
        specs.extend(ModelSpec(feature_set, classifier, tuple(feature_columns)) for classifier in classifiers)
    results: dict[str, ModelResult] = {}
    outcomes = evaluate_models(context, specs) if specs else {}
    for spec in specs:
        result = note_outcome(spec.name, outcomes[spec.name], notes, failed, log)
        if result is not None:
            results[result.name] = result
    for feature_set, same_as in copies:
        _copy_results(same_as, feature_set, classifiers, results, failed)
    order = [f"{feature_set}/{classifier}" for feature_set in feature_sets for classifier in classifiers]
    return {name: results[name] for name in order if name in results}


def _copy_results(source: str, feature_set: str, classifiers: Sequence[str], results: dict[str, ModelResult],
                  failed: dict[str, str]) -> None:
    for classifier in classifiers:
        name = f"{feature_set}/{classifier}"
        if f"{source}/{classifier}" in results:
            results[name] = replace(results[f"{source}/{classifier}"], name=name, feature_set=feature_set)
        elif f"{source}/{classifier}" in failed:
            failed[name] = failed[f"{source}/{classifier}"]


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
