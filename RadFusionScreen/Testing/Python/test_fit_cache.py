"""The fit cache behind `radfusion train`'s speed: a pipeline step is fitted once per training
rows and parameters, and a cached pipeline gives exactly the uncached one's numbers."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
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
