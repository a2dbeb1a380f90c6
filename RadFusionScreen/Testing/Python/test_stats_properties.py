"""Properties of RadFusionScreenLib.stats that hold for any data (no reference files needed)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sp
from scipy.special import expit, logit

from RadFusionScreenLib import InputError, stats


@pytest.fixture()
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)


# ------------------------------------------------------------------------- ROC
def test_auc_of_perfectly_separated_scores_is_one_and_reversed_is_zero():
    y = np.array([0, 0, 0, 0, 1, 1, 1])
    score = np.array([0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.9])
    result = stats.auc_ci_delong(y, score)
    assert result.auc == 1.0 and result.ci_upper == 1.0
    assert stats.roc_auc(y, -score) == 0.0  # direction is fixed ("<"), never flipped
    assert stats.auc_ci_bootstrap(y, score, n_boot=200, seed=1).ci_lower == 1.0


def test_auc_equals_mann_whitney_u_with_ties_and_ci_contains_it(rng):
    y = np.r_[np.zeros(40, int), np.ones(25, int)]
    score = np.round(rng.normal(size=65) + 0.8 * y, 1)  # coarse: many ties
    u = sp.mannwhitneyu(score[y == 1], score[y == 0]).statistic
    delong = stats.auc_ci_delong(y, score)
    assert delong.auc == pytest.approx(u / (25 * 40), abs=1e-14)
    assert delong.ci_lower < delong.auc < delong.ci_upper
    boot = stats.auc_ci_bootstrap(y, score, n_boot=500, seed=3)
    assert boot.ci_lower < boot.auc < boot.ci_upper
    other_seed = stats.auc_ci_bootstrap(y, score, n_boot=500, seed=4)
    assert (boot.ci_lower, boot.ci_upper) != (other_seed.ci_lower, other_seed.ci_upper)


def test_delong_test_of_a_score_with_itself_finds_no_difference(rng):
    y = np.r_[np.zeros(30, int), np.ones(30, int)]
    score = rng.normal(size=60) + y
    result = stats.delong_test(y, score, score)
    assert result.z == 0.0 and result.p_value == 1.0
    assert result.variance1 == pytest.approx(result.covariance)


def test_roc_rejects_bad_outcomes():
    with pytest.raises(InputError, match="both classes"):
        stats.roc_auc([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(InputError, match="only 0"):
        stats.roc_auc([0, 2, 1], [0.1, 0.2, 0.3])
    with pytest.raises(InputError, match="expected 3"):
        stats.roc_auc([0, 1, 1], [0.1, 0.2])


# ------------------------------------------------------------------ calibration
def _logistic_sample(rng, n=400):
    x = rng.normal(size=n)
    y = (rng.random(n) < expit(-0.3 + 1.2 * x)).astype(int)
    return x, y


def test_in_sample_logistic_predictions_are_calibrated_by_construction(rng):
    x, y = _logistic_sample(rng)
    fit = stats.fit_logistic_regression(x[:, None], y)
    gradient = np.column_stack([np.ones_like(x), x]).T @ (y - fit.predict_proba(x[:, None]))
    assert np.max(np.abs(gradient)) < 1e-8  # score equations hold at the ML estimate
    calibration = stats.calibration_intercept_slope(y, fit.predict_proba(x[:, None]))
    assert calibration.slope == pytest.approx(1, abs=1e-8)
    assert calibration.intercept == pytest.approx(0, abs=1e-8)
    overconfident = expit(2 * logit(fit.predict_proba(x[:, None])))
    assert stats.calibration_intercept_slope(y, overconfident).slope == pytest.approx(0.5, abs=1e-8)


def test_hosmer_lemeshow_groups_cover_every_sample_once(rng):
    p = np.round(rng.uniform(0.05, 0.95, 150), 1)  # heavy ties: repeated quantile breaks
    y = (rng.random(150) < p).astype(int)
    result = stats.hosmer_lemeshow_test(y, p, g=10)
    assert result.groups["n"].sum() == 150 and result.groups["observed_1"].sum() == y.sum()
    assert result.df == result.n_groups - 2 and result.n_groups < 10
    assert 0 <= result.p_value <= 1
    with pytest.raises(InputError, match="exactly 0 or 1"):  # first group all p = 0: E1 = 0
        stats.hosmer_lemeshow_test(y[:100], np.r_[np.zeros(30), np.linspace(0.2, 0.9, 70)])


def test_calibration_rejects_exact_zero_one_unless_clipped():
    y, p = np.array([0, 1, 1, 0, 1, 0]), np.array([0.0, 1.0, 0.2, 0.6, 0.7, 0.4])
    with pytest.raises(InputError, match="clip"):
        stats.calibration_intercept_slope(y, p)
    assert np.isfinite(stats.calibration_intercept_slope(y, p, clip=1e-3).slope)


def test_logistic_regression_reports_separation():
    with pytest.raises(InputError, match="separat"):
        stats.fit_logistic_regression(np.arange(10.0)[:, None], np.r_[np.zeros(5), np.ones(5)])


# ---------------------------------------------------------------- decision curve
def test_net_benefit_limits_and_threshold_convention():
    y = np.array([1, 1, 0, 0, 1])
    p = np.array([0.9, 0.5, 0.5, 0.1, 0.3])
    curve = stats.decision_curve(y, p, thresholds=[0.05, 0.5, 0.95])
    assert curve["net_benefit_model"].iloc[0] == pytest.approx(curve["net_benefit_treat_all"].iloc[0])
    assert curve["net_benefit_model"].iloc[2] == 0.0
    strict, inclusive = curve.iloc[1], stats.decision_curve(y, p, thresholds=[0.5], strict=False).iloc[0]
    assert (strict.tp, strict.fp) == (1, 0) and (inclusive.tp, inclusive.fp) == (2, 1)


# ------------------------------------------------------------------------- ICC
def test_icc_consistency_ignores_a_rater_shift_but_agreement_does_not(rng):
    truth = rng.normal(size=(40, 5)) * 3
    rater1 = truth + rng.normal(size=truth.shape)
    rater2 = truth + rng.normal(size=truth.shape)
    base = stats.intraclass_correlation([rater1, rater2]).set_index(["feature", "type"])
    shifted = stats.intraclass_correlation([rater1, rater2 + 2.0]).set_index(["feature", "type"])
    icc3 = pd.IndexSlice[:, "ICC3"]
    icc2 = pd.IndexSlice[:, "ICC2"]
    np.testing.assert_allclose(shifted.loc[icc3, "ICC"], base.loc[icc3, "ICC"], rtol=1e-12)
    assert np.all(shifted.loc[icc2, "ICC"].to_numpy() < base.loc[icc2, "ICC"].to_numpy())
    assert np.all((base["lower"] <= base["ICC"]) & (base["ICC"] <= base["upper"]))


def test_icc_vectorised_equals_one_feature_at_a_time(rng):
    rater1, rater2 = rng.normal(size=(20, 3)), rng.normal(size=(20, 3))
    together = stats.intraclass_correlation([rater1, rater2], types=["ICC2"])
    for j in range(3):
        alone = stats.intraclass_correlation([rater1[:, j], rater2[:, j]], types=["ICC2"])
        np.testing.assert_allclose(alone[["ICC", "lower", "upper"]].to_numpy()[0],
                                   together[["ICC", "lower", "upper"]].to_numpy()[j], rtol=1e-12)


# ----------------------------------------------------------------------- ComBat
def _sites(rng, n_per_site=(25, 35, 30), n_features=6):
    batch = np.repeat(["siteA", "siteB", "siteC"], n_per_site)
    group = rng.integers(0, 2, batch.size).astype(float)
    clean = rng.normal(size=(batch.size, n_features)) + 1.5 * group[:, None]
    shift = {"siteA": (0.0, 1.0), "siteB": (4.0, 2.0), "siteC": (-3.0, 0.5)}
    offset = np.array([shift[b][0] for b in batch])[:, None]
    scale = np.array([shift[b][1] for b in batch])[:, None]
    return clean * scale + offset, batch, group, clean


def test_combat_removes_an_injected_site_shift_and_keeps_the_covariate_effect(rng):
    features, batch, group, _ = _sites(rng)
    adjusted = stats.combat(features, batch, covariates=group[:, None])
    site_means = lambda x: np.array([x[batch == b].mean(axis=0) for b in np.unique(batch)])  # noqa: E731
    residual = lambda x: x - np.outer(group, x[group == 1].mean(0) - x[group == 0].mean(0))  # noqa: E731
    assert np.ptp(site_means(residual(adjusted)), axis=0).max() < 0.6 < np.ptp(site_means(features), axis=0).min()
    group_effect = adjusted[group == 1].mean(axis=0) - adjusted[group == 0].mean(axis=0)
    assert np.all(group_effect > 0.8)  # the biological difference (1.5 in clean units) survives


def test_combat_on_a_single_batch_changes_nothing(rng):
    features = rng.normal(size=(30, 4)) * 5 + 10
    with pytest.warns(UserWarning, match="single batch"):
        model = stats.ComBatModel.fit(features, ["only"] * 30)
    np.testing.assert_allclose(model.transform(features, "only"), features, rtol=0, atol=1e-10)


def test_combat_single_case_equals_its_row_in_the_batch_transform(rng):
    features, batch, group, _ = _sites(rng)
    model = stats.ComBatModel.fit(features, batch, covariates=group[:, None])
    together = model.transform(features, batch, group[:, None])
    restored = stats.ComBatModel.from_dict(json.loads(json.dumps(model.to_dict(), allow_nan=False)))
    for row in (0, 40, 89):
        one = restored.transform(features[row], batch[row], [group[row]])  # plain vector, scalar batch
        np.testing.assert_allclose(one[0], together[row], rtol=0, atol=1e-12)


def test_combat_refuses_an_unseen_batch_and_names_it(rng):
    features, batch, _, _ = _sites(rng)
    model = stats.ComBatModel.fit(features, batch)
    with pytest.raises(InputError, match=r"'siteZ'.*known batches: 'siteA', 'siteB', 'siteC'"):
        model.transform(features[:1], "siteZ")


def test_combat_treats_numeric_batch_labels_alike_and_passes_constant_features(rng):
    features, batch, _, _ = _sites(rng)
    features[batch == "siteB", 2] = 7.0  # constant within one batch: sva leaves it alone
    numeric = np.searchsorted(np.unique(batch), batch) + 1
    model = stats.ComBatModel.fit(features, numeric)
    adjusted = model.transform(features, numeric.astype(float))
    np.testing.assert_array_equal(adjusted[:, 2], features[:, 2])
    np.testing.assert_allclose(model.transform(features[:3], [str(b) for b in numeric[:3]]), adjusted[:3])
    assert list(model.adjusted) == [True, True, False, True, True, True]


def test_combat_requires_the_fitted_covariates(rng):
    features, batch, group, _ = _sites(rng)
    model = stats.ComBatModel.fit(features, batch, covariates=pd.DataFrame({"group": group}))
    with pytest.raises(InputError, match="covariates"):
        model.transform(features[:2], batch[:2])
    with pytest.raises(InputError, match="ComBat parameters"):
        stats.ComBatModel.from_dict({**model.to_dict(), "grand_mean": [1.0]})


# ----------------------------------------------------------------- threshold metrics
def test_youden_threshold_separates_perfectly_separable_data():
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.4, 0.6, 0.8, 0.9])
    threshold = stats.youden_threshold(y, p)
    assert threshold == pytest.approx(0.5)
    metrics = stats.threshold_metrics(y, p, threshold)
    assert metrics.sensitivity.estimate == metrics.specificity.estimate == 1.0
    assert (metrics.tp, metrics.fp, metrics.tn, metrics.fn) == (3, 0, 3, 0)


@pytest.mark.parametrize("method, scipy_method", [("wilson", "wilson"), ("clopper-pearson", "exact")])
@pytest.mark.parametrize("k, n", [(0, 10), (8, 10), (37, 50), (50, 50)])
def test_binomial_intervals_match_scipy(method, scipy_method, k, n):
    ours = stats.binomial_confidence_interval(k, n, method)
    theirs = sp.binomtest(k, n).proportion_ci(0.95, method=scipy_method)
    np.testing.assert_allclose(ours, (theirs.low, theirs.high), atol=1e-12)


def test_threshold_metrics_table_and_undefined_ppv():
    metrics = stats.threshold_metrics([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4], threshold=0.9)
    table = metrics.to_frame()
    assert list(table.index) == ["sensitivity", "specificity", "accuracy", "ppv", "npv"]
    assert np.isnan(metrics.ppv.estimate) and metrics.npv.estimate == 0.5


# -------------------------------------------------------------------- nomogram
def test_nomogram_points_reproduce_the_logistic_model(rng):
    data = pd.DataFrame({"score": rng.normal(size=300), "age": rng.uniform(30, 80, 300),
                         "stage": rng.choice(["I", "II", "III"], 300)})
    lp = -1 + 1.1 * data["score"] + 0.02 * data["age"] + data["stage"].map({"I": 0, "II": 0.5, "III": 1.2})
    y = (rng.random(300) < expit(lp)).astype(int)
    nomogram = stats.Nomogram.fit(data, y, categorical={"stage": ["I", "II", "III"]})
    points = nomogram.points(data)
    design = pd.DataFrame({"score": data["score"], "age": data["age"],
                           "stage=II": (data["stage"] == "II") * 1.0, "stage=III": (data["stage"] == "III") * 1.0})
    np.testing.assert_allclose(points["probability"], nomogram.logistic_fit.predict_proba(design), atol=1e-12)
    assert max(axis.points.max() for axis in nomogram.axes().values()) == pytest.approx(100)
    restored = stats.Nomogram.from_dict(json.loads(json.dumps(nomogram.to_dict())))
    pd.testing.assert_frame_equal(restored.points(data), points)
    with pytest.raises(InputError, match="IV"):
        nomogram.points({"score": 0.0, "age": 50, "stage": "IV"})


def test_pretty_matches_r():
    np.testing.assert_allclose(stats.pretty(0, 100), [0, 20, 40, 60, 80, 100])
    np.testing.assert_allclose(stats.pretty(36.3, 90.5, 10), np.arange(35, 96, 5))
    np.testing.assert_allclose(stats.pretty(0.0029, 0.9997, 10), np.arange(11) / 10)
    np.testing.assert_allclose(stats.pretty(-4.53, 3.28, 10), np.arange(-5, 5))


# ---------------------------------------------------------------- univariate
def test_mann_whitney_w_of_both_orders_sums_to_n1_n0(rng):
    x1, x0 = rng.normal(size=12), rng.normal(size=9)
    forward, backward = stats.mann_whitney_test(x1, x0), stats.mann_whitney_test(x0, x1)
    assert forward.w + backward.w == 12 * 9 and forward.p_value == pytest.approx(backward.p_value)
    exact = stats.mann_whitney_test(x1, x0, method="exact")
    assert exact.p_value == pytest.approx(sp.mannwhitneyu(x1, x0, method="exact").pvalue)
