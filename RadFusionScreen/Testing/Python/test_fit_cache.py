"""The fit cache behind `radfusion train`'s speed: a pipeline step is fitted once per training
rows and parameters, and a cached pipeline gives exactly the uncached one's numbers."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from RadFusionScreenLib.model.fit_cache import FitCache
from RadFusionScreenLib.model.feature_selection import UnivariateFilter
from RadFusionScreenLib.model.train import ModelSettings, build_pipeline


class CountingScaler(StandardScaler):
    fits = 0

    def fit(self, X, y=None, sample_weight=None):
        type(self).fits += 1
        return super().fit(X, y, sample_weight)


def _table(seed: int = 0, n: int = 80, p: int = 30) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    X = pd.DataFrame(rng.normal(size=(n, p)) + 0.8 * y[:, None] * (np.arange(p) < 3),
                     columns=[f"original_firstorder_f{j}" for j in range(p)], index=[f"c{i}" for i in range(n)])
    return X, y


def test_a_step_is_fitted_once_per_rows_and_parameters():
    X, y = _table()
    cache = FitCache()
    CountingScaler.fits = 0
    steps = [("filter", UnivariateFilter("mannwhitney", 0.2, None)), ("scale", CountingScaler()),
             ("model", LogisticRegression())]  # the last step is never cached: it is the model
    first = Pipeline(steps, memory=cache).fit(X, y)
    again = Pipeline([(n, clone(s)) for n, s in steps], memory=cache).fit(X, y)
    assert CountingScaler.fits == 1, "the same rows and parameters were fitted twice"
    np.testing.assert_array_equal(first.predict_proba(X), again.predict_proba(X))
    Pipeline([(n, clone(s)) for n, s in steps], memory=cache).fit(X.iloc[:-1], y[:-1])  # other rows
    other = [("filter", UnivariateFilter("mannwhitney", 0.1, None)), ("scale", CountingScaler()),
             ("model", LogisticRegression())]
    Pipeline(other, memory=cache).fit(X, y)  # other parameters upstream
    assert CountingScaler.fits == 3
    cache.clear()


def test_cached_models_equal_uncached_ones_exactly():
    X, y = _table(seed=1)
    X["site"] = np.where(np.arange(len(X)) % 2, "a", "b")
    settings = ModelSettings(site_column="site")
    cache = FitCache()
    for classifier in ("lr", "rf"):
        plain = build_pipeline([c for c in X.columns if c != "site"], classifier, settings).fit(X, y)
        cached = build_pipeline([c for c in X.columns if c != "site"], classifier, settings, memory=cache)
        cached.fit(X, y)
        cached.fit(X, y)  # every step now from the cache
        np.testing.assert_array_equal(plain.predict_proba(X), cached.predict_proba(X))
        assert list(plain[:-1].get_feature_names_out()) == list(cached[:-1].get_feature_names_out())
    cache.clear()


def test_the_cache_travels_to_workers_as_a_name_only():
    X, y = _table()
    cache = FitCache()
    Pipeline([("scale", StandardScaler())], memory=cache).fit(X, y)
    copy = pickle.loads(pickle.dumps(cache))
    assert copy.name == cache.name and len(pickle.dumps(cache)) < 200
    cache.clear()


def test_a_comparison_gives_the_same_numbers_on_one_or_two_processes():
    """`compare_models` runs its fits as pool tasks (every classifier of a feature set on one row
    set per task, all feature sets in one pool, then the calibration refits): the numbers must not
    depend on the number of processes or on the order the tasks finish in."""
    from test_train_leakage import make_cohort

    from RadFusionScreenLib.model.train import FeatureColumns, compare_models, split_cohort
    from RadFusionScreenLib.model.train.model_result import folds_to_refit

    table = make_cohort(140, n_features=16, seed=8, effect=0.6)
    table = table.rename(columns={c: c.replace("original_firstorder_", "deep_") for c in table.columns[-6:]})
    columns = FeatureColumns(radiomic=tuple(c for c in table.columns if c.startswith("original_")),
                             deep=tuple(c for c in table.columns if c.startswith("deep_")))
    split = split_cohort(table, test_size=0.3, seed=1, groups="duplicate_group")
    runs = [compare_models(split.train, split.test, columns=columns, group_column="duplicate_group",
                           classifiers=("lr", "rf", "svm"), grid="quick", outer_folds=3, inner_folds=3,
                           settings=ModelSettings(lasso_folds=3), n_boot=50, n_jobs=n_jobs) for n_jobs in (1, 2)]
    serial, parallel = runs
    assert list(serial.results) == list(parallel.results) and len(serial.results) == 10  # 3 sets x 3 + nomogram
    assert serial.best_model == parallel.best_model and serial.failed == parallel.failed == {}
    for name, one in serial.results.items():
        two = parallel.results[name]
        for field in ("probability", "linear_predictor", "fold_aucs"):
            np.testing.assert_array_equal(getattr(one.cv, field), getattr(two.cv, field), err_msg=f"{name} {field}")
        np.testing.assert_array_equal(one.test_probability, two.test_probability, err_msg=name)
        assert one.cv.best_params == two.cv.best_params and one.selected_features == two.selected_features
        assert one.threshold == two.threshold or (np.isnan(one.threshold) and np.isnan(two.threshold))
        if one.calibration_probability is not None:
            np.testing.assert_array_equal(one.calibration_probability, two.calibration_probability, err_msg=name)
    # the calibration refits ran: some fold chose other hyper-parameters than its final model
    assert any(folds_to_refit(result.model, result.cv.best_params) for result in parallel.results.values()
               if result.classifier != "logistic")


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_the_shared_steps_search_is_gridsearchcv_bit_for_bit():
    """SharedStepsGridSearchCV fits the steps before the classifier once per inner split; its
    scores, choice and refit must be GridSearchCV's own, for every classifier family."""
    from sklearn.model_selection import GridSearchCV

    from RadFusionScreenLib.model.train import param_grid
    from RadFusionScreenLib.model.train.shared_steps_search import SharedStepsGridSearchCV
    from RadFusionScreenLib.model.train.splits import StratifiedSiteKFold

    X, y = _table(seed=4, n=90, p=40)
    X["site"] = np.where(np.arange(len(X)) % 3, "a", "b")
    columns = [c for c in X.columns if c != "site"]
    for classifier in ("lr", "svm", "rf", "extratrees", "xgboost", "lightgbm", "mlp"):
        pipeline = build_pipeline(columns, classifier, ModelSettings(site_column="site", lasso_folds=3))
        grid = param_grid(classifier, "full")
        options = dict(scoring="roc_auc", cv=StratifiedSiteKFold(3, random_state=1), refit=True, error_score="raise")
        plain = GridSearchCV(pipeline, grid, **options).fit(X, y)
        shared = SharedStepsGridSearchCV(clone(pipeline).set_params(memory=FitCache()), grid, **options)
        assert shared._tunes_the_last_step_only()  # the shared path, not GridSearchCV.fit
        shared.fit(X, y)
        for key in ("mean_test_score", "std_test_score", "rank_test_score", "split0_test_score", "split2_test_score"):
            np.testing.assert_array_equal(plain.cv_results_[key], shared.cv_results_[key], err_msg=f"{classifier} {key}")
        assert plain.best_params_ == shared.best_params_ and plain.best_score_ == shared.best_score_
        np.testing.assert_array_equal(plain.predict_proba(X), shared.predict_proba(X), err_msg=classifier)
    # an integer cv is scikit-learn's stratified K-fold, as in GridSearchCV
    pipeline = build_pipeline(columns, "lr", ModelSettings(site_column=None))
    plain = GridSearchCV(pipeline, {"classifier__C": [0.1, 1.0]}, scoring="roc_auc", cv=3).fit(X, y)
    shared = SharedStepsGridSearchCV(pipeline, {"classifier__C": [0.1, 1.0]}, scoring="roc_auc", cv=3).fit(X, y)
    np.testing.assert_array_equal(plain.cv_results_["mean_test_score"], shared.cv_results_["mean_test_score"])
    # a grid that tunes an earlier step is GridSearchCV's own path
    search = SharedStepsGridSearchCV(pipeline, {"reduce__cv": [2, 3]}, scoring="roc_auc", cv=3).fit(X, y)
    assert not search._tunes_the_last_step_only() and search.best_params_["reduce__cv"] in (2, 3)
