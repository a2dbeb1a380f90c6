"""Unit tests of the ComBat transformer (harmonize.py), the selectors (select.py) and the
pipeline builders of train.py."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone

from RadFusionScreenLib.core.errors import InputError
from RadFusionScreenLib.model.harmonize import ComBatHarmonizer
from RadFusionScreenLib.model.feature_selection import CorrelationPruner, ICCFilter, LassoSelector, UnivariateFilter, VarianceFilter
from RadFusionScreenLib.stats import ComBatModel
from RadFusionScreenLib.model.train import (
    FeatureColumns,
    ModelSettings,
    build_pipeline,
    compare_models,
    infer_feature_columns,
    selected_feature_names,
)


def sited_table(n: int = 90, n_features: int = 6, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    sites = np.array(["A", "B", "C"])[np.arange(n) % 3]
    shift = {"A": 0.0, "B": 2.0, "C": -1.0}
    features = rng.normal(size=(n, n_features)) + np.array([shift[s] for s in sites])[:, None]
    table = pd.DataFrame(features, columns=[f"f{j}" for j in range(n_features)])
    table["site"] = sites
    table["age"] = rng.normal(60, 8, n)
    return table


# ------------------------------------------------------------------- harmonize
def test_harmonizer_matches_combat_model_and_drops_non_features():
    table = sited_table()
    harmonizer = ComBatHarmonizer(covariate_columns=("age",)).set_output(transform="pandas")
    out = harmonizer.fit_transform(table)
    expected = ComBatModel.fit(table[[f"f{j}" for j in range(6)]], table["site"], table[["age"]]).transform(
        table[[f"f{j}" for j in range(6)]], table["site"], table[["age"]])
    assert list(out.columns) == [f"f{j}" for j in range(6)]
    assert out.index.equals(table.index)
    np.testing.assert_allclose(out.to_numpy(), np.asarray(expected), rtol=1e-12)
    site_means = out.groupby(table["site"]).mean()
    assert site_means.to_numpy().std(axis=0).max() < 0.3  # site offsets of 0 / 2 / -1 removed


def test_harmonizer_keeps_non_features_when_asked_and_round_trips_through_json():
    table = sited_table()
    harmonizer = ComBatHarmonizer(keep_non_features=True).set_output(transform="pandas").fit(table.drop(columns="age"))
    out = harmonizer.transform(table.drop(columns="age"))
    assert list(out.columns)[-1] == "site" and list(out["site"]) == list(table["site"])
    assert out["f0"].dtype == float
    restored = ComBatHarmonizer.from_dict(json.loads(json.dumps(harmonizer.to_dict())))
    pd.testing.assert_frame_equal(restored.transform(table.drop(columns="age")), out)


def test_harmonizer_refuses_unseen_site_and_plain_arrays():
    table = sited_table()
    harmonizer = ComBatHarmonizer().fit(table.drop(columns="age"))
    new_case = table.drop(columns="age").head(1).assign(site="Z")
    with pytest.raises(InputError, match="'Z' was not seen"):
        harmonizer.transform(new_case)
    with pytest.raises(InputError, match="DataFrame"):
        ComBatHarmonizer().fit(table.drop(columns=["age", "site"]).to_numpy())
    one_case = harmonizer.transform(table.drop(columns="age").tail(1))  # a single known-site case works
    assert one_case.shape == (1, 6)
    assert clone(harmonizer).get_params() == harmonizer.get_params()


# --------------------------------------------------------------------- selectors
def test_icc_filter_keeps_reproducible_features_and_passes_other_columns():
    rng = np.random.default_rng(1)
    truth = rng.normal(size=(40, 3))
    noise_scale = np.array([0.05, 0.3, 3.0])  # reliable, fair, unreliable
    ratings = [pd.DataFrame(truth + rng.normal(size=truth.shape) * noise_scale, columns=["a", "b", "c"])
               for _ in range(2)]
    icc = ICCFilter.icc_values(ratings)
    assert icc["a"] > 0.95 and icc["c"] < 0.5
    table = ratings[0].assign(site="X", label=1)
    kept = ICCFilter(icc, threshold=0.75).set_output(transform="pandas").fit(table).transform(table)
    assert list(kept.columns) == ["a", "b", "site", "label"]
    strict = ICCFilter.from_ratings(ratings, threshold=0.75, missing="drop").fit(table)
    assert strict.selected_features_ == ["a", "b"]


def test_variance_filter_drops_constant_and_near_zero_variance():
    rng = np.random.default_rng(2)
    table = pd.DataFrame({"ok": rng.normal(size=100), "constant": 1.0,
                          "nzv": np.r_[np.zeros(98), 1.0, 2.0], "binary": rng.integers(0, 2, 100)})
    assert VarianceFilter().fit(table).selected_features_ == ["ok", "binary"]


def test_univariate_filter_alpha_k_and_minimum():
    rng = np.random.default_rng(3)
    y = np.repeat([0, 1], 50)
    X = pd.DataFrame(rng.normal(size=(100, 20)), columns=[f"x{j}" for j in range(20)])
    X["strong"] = y * 2.0 + rng.normal(size=100)
    X["weaker"] = y * 0.8 + rng.normal(size=100)
    assert UnivariateFilter(k=1).fit(X, y).selected_features_ == ["strong"]
    assert {"strong", "weaker"} <= set(UnivariateFilter(test="welch").fit(X, y).selected_features_)
    fdr = UnivariateFilter(correction="fdr_bh").fit(X, y).selected_features_
    assert {"strong", "weaker"} <= set(fdr) and len(fdr) <= 4
    noise_only = X.drop(columns=["strong", "weaker"])
    assert len(UnivariateFilter(alpha=1e-9, min_features=2).fit(noise_only, y).selected_features_) == 2
    with pytest.raises(InputError, match="single class"):
        UnivariateFilter().fit(X, np.ones(100))


def test_correlation_pruner_keeps_the_more_associated_of_a_pair_deterministically():
    rng = np.random.default_rng(4)
    y = np.repeat([0, 1], 60)
    signal = y + rng.normal(scale=0.7, size=120)
    X = pd.DataFrame({"copy_noisy": signal + rng.normal(scale=0.2, size=120), "other": rng.normal(size=120),
                      "original": signal})
    pruner = CorrelationPruner(threshold=0.9).fit(X, y)
    assert pruner.selected_features_ == ["other", "original"]
    assert CorrelationPruner(threshold=0.9).fit(X, y).selected_features_ == pruner.selected_features_
    assert CorrelationPruner(threshold=0.9, rank_by="order").fit(X).selected_features_ == ["copy_noisy", "other"]


def test_lasso_selector_finds_signal_and_keeps_one_feature_on_noise():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 160)
    X = pd.DataFrame(rng.normal(size=(160, 60)), columns=[f"x{j}" for j in range(60)])
    noise = LassoSelector().fit(X, y)
    assert 1 <= len(noise.selected_features_) <= 10
    X[["x0", "x1", "x2"]] += y[:, None] * 1.5
    lasso = LassoSelector().fit(X, y)
    assert {"x0", "x1", "x2"} <= set(lasso.selected_features_)
    assert LassoSelector(max_features=2).fit(X, y).support_.sum() == 2
    assert lasso.transform(X).shape == (160, len(lasso.selected_features_))
    assert list(lasso.cv_results_.columns) == ["C", "mean_score", "sem"]
    assert LassoSelector(min_features=3, n_lambdas=3).fit(X.iloc[:, 10:], y).support_.sum() >= 3


# ----------------------------------------------------------------- pipelines
def test_pipelines_name_their_features_pca_and_clinical_variants():
    rng = np.random.default_rng(6)
    table = sited_table(120, 30, seed=6)
    table["label"] = rng.integers(0, 2, 120)
    table["f0"] += table["label"] * 2
    table.loc[table.index[:5], "f3"] = np.nan
    table["sex"] = rng.choice(["F", "M", None], 120)
    features = [f"f{j}" for j in range(30)]
    lasso = build_pipeline(features, "lr", ModelSettings()).fit(table, table["label"])
    assert "f0" in selected_feature_names(lasso)
    assert "harmonize" in lasso.named_steps
    pca = build_pipeline(features, "svm", ModelSettings(reduction="pca", site_column=None)).fit(table, table["label"])
    assert selected_feature_names(pca)[0] == "pca0"
    clinical = build_pipeline(["age", "sex"], "lightgbm", clinical=True, categorical_columns=["sex"])
    clinical.fit(table, table["label"])
    assert {"age", "sex_F", "sex_M"} <= set(selected_feature_names(clinical))
    assert clinical.predict_proba(table.head(3)).shape == (3, 2)


def test_infer_feature_columns_and_errors():
    table = pd.DataFrame({"original_shape_Volume": [1.0], "wavelet-LLH_glcm_Idmn": [2.0], "deep_0001": [3.0],
                          "age": [50], "site": ["A"], "label": [1]})
    columns = infer_feature_columns(table, clinical=["age"])
    assert columns == FeatureColumns(("original_shape_Volume", "wavelet-LLH_glcm_Idmn"), ("deep_0001",), ("age",))
    assert columns.for_set("fused") == columns.radiomic + columns.deep
    with pytest.raises(InputError, match="not in the table"):
        infer_feature_columns(table, clinical=["bmi"])
    with pytest.raises(InputError, match="unknown classifier"):
        build_pipeline(["age"], "knn")


def test_compare_models_builds_scores_and_nomogram():
    rng = np.random.default_rng(7)
    n = 160
    y = rng.integers(0, 2, n)
    table = pd.DataFrame(rng.normal(size=(n, 20)), columns=[f"original_f{j}" for j in range(20)])
    table[[f"deep_{j}" for j in range(10)]] = rng.normal(size=(n, 10))
    table["original_f0"] += y * 1.5
    table["deep_0"] += y * 1.0
    table["age"] = rng.normal(60, 10, n) + y * 5
    table["sex"] = rng.choice(["F", "M"], n)
    table["label"] = y
    train, test = table.iloc[:110], table.iloc[110:]
    columns = infer_feature_columns(table, clinical=["age", "sex"])
    comparison = compare_models(train, test, columns=columns, classifiers=("lr", "rf"), categorical_columns=["sex"],
                                grid="quick", outer_folds=3, inner_folds=3, n_boot=200)
    summary = comparison.summary()
    assert {"clinical/lr", "fused/rf", "nomogram/logistic"} <= set(summary["model"])
    assert comparison.best_model == summary["model"].iloc[0]  # chosen by CV AUC, not test
    assert list(comparison.scores_train.columns) == ["rad_score", "deep_score", "outer_fold"]
    assert comparison.nomogram.predictors == ["rad_score", "deep_score", "age", "sex"]
    nomogram = comparison.results["nomogram/logistic"]
    assert nomogram.cv_auc_mean > 0.75 and nomogram.test_auc_delong.auc > 0.75
    assert summary["test_delong_p_vs_best"].isna().sum() == 1
    assert any("no ComBat" in note for note in comparison.notes)  # the table has no site column
