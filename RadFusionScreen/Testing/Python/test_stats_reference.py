"""RadFusionScreenLib.stats against the R reference values in ../shared/reference/stats.

Each test states the R call it mirrors and uses the tolerance of that reference's README.
The whole module is skipped, with the path it looked for, when the reference is absent.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit

from RadFusionScreenLib import stats

REPO_ROOT = Path(__file__).resolve().parents[3]
REFERENCE_DIR = REPO_ROOT.parent / "shared" / "reference" / "stats"


def reference_dir() -> Path:
    """The R reference folder; skips the calling test with the reason when it is missing."""
    if not (REFERENCE_DIR / "README.md").is_file():
        pytest.skip(f"R reference values not available at {REFERENCE_DIR} (read-only shared folder)")
    return REFERENCE_DIR


def load_json(name: str) -> dict:
    return json.loads((reference_dir() / name).read_text())


def load_csv(name: str) -> pd.DataFrame:
    return pd.read_csv(reference_dir() / name)


def assert_rel(actual, expected, rtol: float) -> None:
    np.testing.assert_allclose(np.asarray(actual, float), np.asarray(expected, float), rtol=rtol, atol=0)


def assert_abs(actual, expected, atol: float) -> None:
    np.testing.assert_allclose(np.asarray(actual, float), np.asarray(expected, float), rtol=0, atol=atol)


# ----------------------------------------------------------------- 1. DeLong (pROC)
DELONG_CASES = [
    ("n200", "delong_n200.csv", ("score1", "score2")),
    ("n30_ties", "delong_n30_ties.csv", ("score_a", "score_b")),
]


@pytest.mark.parametrize("key, csv, scores", DELONG_CASES)
def test_auc_and_delong_ci_match_proc(key, csv, scores):
    data, expected = load_csv(csv), load_json("delong_expected.json")[key]
    for score in scores:
        result = stats.auc_ci_delong(data["y"], data[score])
        want = expected[score]
        assert_abs(result.auc, want["auc"], 1e-12)
        assert_abs(stats.roc_auc(data["y"], data[score]), want["auc"], 1e-12)
        assert_rel(result.variance, want["var_delong"], 1e-9)
        assert_rel([result.ci_lower, result.ci_upper], [want["ci_lower"], want["ci_upper"]], 1e-9)
        assert (result.n_cases, result.n_controls) == (expected["n_cases"], expected["n_controls"])


@pytest.mark.parametrize("key, csv, scores", DELONG_CASES)
def test_paired_delong_test_matches_proc_roc_test(key, csv, scores):
    data, expected = load_csv(csv), load_json("delong_expected.json")[key]["paired_delong_test"]
    result = stats.delong_test(data["y"], data[scores[0]], data[scores[1]])
    assert_rel(result.z, expected["z"], 1e-9)
    assert_rel(result.p_value, expected["p_value"], 1e-9)
    assert_rel(result.covariance, expected["cov_delong"], 1e-9)
    assert_abs(result.auc_difference, expected["auc_difference"], 1e-12)


@pytest.mark.parametrize("key, csv, scores", DELONG_CASES)
def test_bootstrap_ci_is_seeded_and_close_to_delong(key, csv, scores):
    data = load_csv(csv)
    delong = stats.auc_ci_delong(data["y"], data[scores[0]])
    first = stats.auc_ci_bootstrap(data["y"], data[scores[0]], n_boot=2000, seed=7)
    again = stats.auc_ci_bootstrap(data["y"], data[scores[0]], n_boot=2000, seed=7)
    assert (first.ci_lower, first.ci_upper) == (again.ci_lower, again.ci_upper)
    assert first.auc == delong.auc and (first.n_boot, first.seed) == (2000, 7)
    # Percentile and normal intervals differ by Monte-Carlo error and skewness only.
    assert abs(first.ci_lower - delong.ci_lower) < 0.03
    assert abs(first.ci_upper - delong.ci_upper) < 0.03


# ------------------------------------------------- 2. Hosmer-Lemeshow (ResourceSelection)
@pytest.mark.parametrize(
    "key, csv", [("n300", "hosmer_lemeshow_n300.csv"), ("n300_ties", "hosmer_lemeshow_n300_ties.csv")]
)
def test_hosmer_lemeshow_matches_hoslem_test(key, csv):
    data, expected = load_csv(csv), load_json("hosmer_lemeshow_expected.json")[key]
    result = stats.hosmer_lemeshow_test(data["y"], data["p"], g=10)
    assert result.df == expected["df"]
    assert result.n_groups == expected["n_groups_nonempty"]
    assert_rel(result.statistic, expected["statistic"], 1e-10)
    assert_rel(result.p_value, expected["p_value"], 1e-10)
    assert_rel(result.breaks, expected["breaks"], 1e-10)
    groups = expected["groups"]
    for column in ("n", "observed_0", "observed_1"):
        np.testing.assert_array_equal(result.groups[column].to_numpy(), groups[column])
    for column in ("expected_0", "expected_1"):
        assert_rel(result.groups[column], groups[column], 1e-10)


def test_calibration_curve_uses_the_hosmer_lemeshow_groups():
    data, expected = load_csv("hosmer_lemeshow_n300_ties.csv"), load_json("hosmer_lemeshow_expected.json")["n300_ties"]
    curve = stats.calibration_curve(data["y"], data["p"], n_bins=10)
    groups = expected["groups"]
    np.testing.assert_array_equal(curve["n"].to_numpy(), groups["n"])
    assert_rel(curve["observed_rate"], np.divide(groups["observed_1"], groups["n"]), 1e-12)
    assert_rel(curve["mean_predicted"], np.divide(groups["expected_1"], groups["n"]), 1e-10)
    assert np.all(curve["observed_lower"] <= curve["observed_rate"])
    assert np.all(curve["observed_rate"] <= curve["observed_upper"])


# ------------------------------------------------------------- 3. ComBat (sva)
COMBAT_CASES = [
    ("with_covariates", True, False),
    ("no_covariates", False, False),
    ("mean_only_with_covariates", True, True),
]


def _combat_inputs(with_covariates: bool):
    features, design = load_csv("combat_features.csv"), load_csv("combat_covariates.csv")
    return features, design["batch"], design[["group", "age"]] if with_covariates else None


@pytest.mark.parametrize("key, with_covariates, mean_only", COMBAT_CASES)
def test_combat_matches_sva(key, with_covariates, mean_only):
    features, batch, covariates = _combat_inputs(with_covariates)
    expected = load_json("combat_expected.json")[key]
    model = stats.ComBatModel.fit(features, batch, covariates, mean_only=mean_only)
    adjusted = model.transform(features, batch, covariates)
    assert list(adjusted.columns) == list(features.columns)
    assert_abs(adjusted, expected["adjusted"], 1e-9)  # README: faithful port, atol 1e-9
    diagnostics = expected["diagnostics"]
    assert model.batches == ["1", "2", "3"]
    assert_abs(model.grand_mean, diagnostics["grand_mean"], 1e-9)
    assert_abs(model.var_pooled, diagnostics["var_pooled"], 1e-9)
    assert_abs(model.gamma_star, diagnostics["gamma_star"], 1e-9)
    assert_abs(model.delta_star, diagnostics["delta_star"], 1e-9)
    for name in ("gamma_hat", "delta_hat", "gamma_bar", "tau2", "a_prior", "b_prior"):
        assert_abs(model.diagnostics[name], diagnostics[name], 1e-9)  # inf == inf for mean_only priors
    if with_covariates:
        coefficients = diagnostics["covariate_coefficients"]
        assert model.covariate_names == ["group", "age"]
        assert_abs(model.covariate_coefficients, [coefficients["group"], coefficients["age"]], 1e-9)
    else:
        assert model.covariate_coefficients is None and diagnostics["covariate_coefficients"] is None


@pytest.mark.parametrize("key, with_covariates, mean_only", COMBAT_CASES)
def test_combat_json_round_trip_applies_to_single_new_cases(key, with_covariates, mean_only):
    features, batch, covariates = _combat_inputs(with_covariates)
    expected = np.asarray(load_json("combat_expected.json")[key]["adjusted"])
    fitted = stats.ComBatModel.fit(features, batch, covariates, mean_only=mean_only)
    restored = stats.ComBatModel.from_dict(json.loads(json.dumps(fitted.to_dict(), allow_nan=False)))
    for row in (0, 1, 45, 89):  # batches 2, 1, ..., one case at a time
        case_covariates = None if covariates is None else covariates.iloc[row].to_dict()
        case_covariates = None if case_covariates is None else pd.DataFrame([case_covariates])
        one = restored.transform(features.iloc[[row]], batch.iloc[row], case_covariates)
        assert_abs(one.to_numpy()[0], expected[row], 1e-9)


# -------------------------------------------------------------- 4. Nomogram (rms)
def _nomogram_from_reference():
    expected = load_json("nomogram_expected.json")
    training = load_csv("nomogram_train.csv")
    nomogram = stats.Nomogram.from_coefficients(expected["coefficients"], training, categorical={"sex": [0, 1]})
    return nomogram, expected, training


def test_nomogram_axes_match_rms():
    nomogram, expected, _ = _nomogram_from_reference()
    assert_rel(nomogram.scale, expected["scale_factor_sc"], 1e-10)
    assert_abs(nomogram.intercept_info, expected["intercept_info"], 1e-10)
    for name, axis in nomogram.axes().items():
        want = expected["axes"][name]
        if axis.categorical:
            assert axis.ticks == want["ticks"]
        else:
            assert_abs(axis.ticks, want["ticks"], 1e-12)  # pretty() of the datadist range
        assert_abs(axis.xbeta, want["Xbeta"], 1e-10)
        assert_abs(axis.points, want["points"], 1e-10)


def test_nomogram_patient_points_lp_and_risk_match_rms():
    nomogram, expected, _ = _nomogram_from_reference()
    patients = load_csv("nomogram_patients.csv")
    result = nomogram.points(patients)
    want = expected["patients"]
    for name, points in want["points"].items():
        assert_abs(result[name], points, 1e-10)
    assert_abs(result["total_points"], want["total_points"], 1e-10)
    assert_abs(result["linear_predictor"], want["lp"], 1e-10)
    assert_abs(result["probability"], want["risk"], 1e-10)


def test_nomogram_scales_match_rms():
    nomogram, expected, _ = _nomogram_from_reference()
    scales = nomogram.scales()
    assert_abs(scales["total_points"]["values"], expected["total_points_axis"], 1e-12)
    assert_abs(scales["linear_predictor"]["values"], expected["lp_axis"]["lp"], 1e-12)
    assert_abs(scales["linear_predictor"]["total_points"], expected["lp_axis"]["total_points"], 1e-10)
    assert_abs(scales["probability"]["values"], expected["risk_axis"]["risk"], 1e-12)
    # rms places risk ticks by linear interpolation of plogis on a 1000-point lp grid
    # (nomogram.s: approx(fu, xseq, fat)); we invert exactly. Reproduce rms to prove it.
    lp_ticks = scales["linear_predictor"]["values"]
    grid = np.linspace(lp_ticks.min(), lp_ticks.max(), 1000)
    rms_lp = np.interp(expected["risk_axis"]["risk"], expit(grid), grid)
    assert_abs(nomogram.linear_predictor_to_total_points(rms_lp), expected["risk_axis"]["total_points"], 1e-10)
    assert_abs(scales["probability"]["total_points"], expected["risk_axis"]["total_points"], 1e-4)


def test_logistic_fit_matches_lrm_coefficients():
    _, expected, training = _nomogram_from_reference()
    nomogram = stats.Nomogram.fit(training.drop(columns="y"), training["y"], categorical={"sex": [0, 1]})
    fitted = nomogram.logistic_fit.coefficient_dict()
    assert list(fitted) == list(expected["coefficients"])
    assert_rel(list(fitted.values()), list(expected["coefficients"].values()), 1e-8)
    assert_rel(nomogram.scale, expected["scale_factor_sc"], 1e-8)


# ----------------------------------------------------------------- 5. ICC (psych)
def test_icc_all_types_match_psych_lmer_false():
    expected = load_json("icc_expected.json")["features"]
    result = stats.intraclass_correlation([load_csv("icc_rater1.csv"), load_csv("icc_rater2.csv")], alpha=0.05)
    assert len(result) == 6 * len(expected)
    for row in result.itertuples(index=False):
        want = expected[row.feature][row.type]
        assert (row.df1, row.df2) == (want["df1"], want["df2"])
        assert_rel([row.ICC, row.F, row.p, row.lower, row.upper],
                   [want["ICC"], want["F"], want["p"], want["lower"], want["upper"]], 1e-8)


# ------------------------------------------------------- 6. Decision curve (rmda)
def test_decision_curve_matches_rmda():
    data, expected = load_csv("decision_curve_n300.csv"), load_json("decision_curve_expected.json")
    curve = stats.decision_curve(data["y"], data["p_model"])
    assert_abs(curve["threshold"], expected["thresholds"], 0)
    np.testing.assert_array_equal(curve["tp"], expected["tp"])
    np.testing.assert_array_equal(curve["fp"], expected["fp"])
    for column in ("net_benefit_model", "net_benefit_treat_all", "net_benefit_treat_none",
                   "standardized_net_benefit_model"):
        assert_abs(curve[column], expected[column], 1e-12)
    inclusive = stats.decision_curve(data["y"], data["p_model"], strict=False)  # no p on a threshold here
    assert_abs(inclusive["net_benefit_model"], expected["net_benefit_model"], 1e-12)


# ------------------------------------------------ 7. Mann-Whitney and Welch (R stats)
@pytest.mark.parametrize("key", ["raw_features", "combat_with_covariates_features"])
def test_univariate_tests_match_wilcox_and_welch(key):
    expected = pd.DataFrame(load_json("univariate_tests_expected.json")[key]).T.astype(float)
    columns = load_csv("combat_features.csv").columns
    features = load_csv("combat_features.csv") if key == "raw_features" else pd.DataFrame(
        load_json("combat_expected.json")["with_covariates"]["adjusted"], columns=columns)
    group = load_csv("combat_covariates.csv")["group"]
    result = stats.univariate_tests(features, group)
    expected = expected.loc[result.index]
    for column in result.columns:
        assert_rel(result[column], expected[column], 1e-9)
    single = stats.mann_whitney_test(features["f01"][group == 1], features["f01"][group == 0])
    welch = stats.welch_t_test(features["f01"][group == 1], features["f01"][group == 0])
    assert_rel([single.w, single.p_value], expected.loc["f01", ["mannwhitney_W", "mannwhitney_p"]], 1e-9)
    assert_rel([welch.t, welch.df, welch.p_value], expected.loc["f01", ["welch_t", "welch_df", "welch_p"]], 1e-9)


# -------------------------------------------- 8. Firth's logistic regression (brglm2)
@pytest.mark.parametrize("name, kind", [("complete", "complete"), ("quasi", "quasi-complete")])
def test_firth_fit_matches_brglm2_under_separation(name, kind):
    """glm(y ~ x1 + x2, binomial, method="brglmFit", type="AS_mean") on separated data."""
    expected = load_json("firth_expected.json")[name]
    data = load_csv(f"firth_{name}.csv")
    X, y = data[["x1", "x2"]], data["y"]
    assert stats.detect_separation(X, y) == kind
    with pytest.raises(stats.SeparationError, match=f"{kind}ly separated"):
        stats.fit_logistic_regression(X, y)  # no finite ML estimate: refused, not a wrong number
    fit = stats.fit_logistic_or_firth(X, y)
    assert (fit.method, fit.separation) == ("firth", kind)
    assert list(fit.coefficient_dict()) == ["Intercept", "x1", "x2"]
    assert_rel(fit.coefficients, list(expected["coefficients"].values()), 1e-8)
    assert_rel(fit.standard_errors, list(expected["std_errors"].values()), 1e-8)
    assert_rel(fit.predict_proba(X)[:5], expected["fitted_first5"], 1e-8)
    direct = stats.fit_firth_logistic_regression(X, y)
    assert_rel(direct.coefficients, fit.coefficients, 1e-12)
    assert type(fit).from_dict(fit.to_dict()).to_dict() == fit.to_dict()  # method and separation kept


def test_ml_is_kept_where_it_exists():
    """No separation in the rms nomogram data: the fallback gives lrm's own ML coefficients."""
    _, expected, training = _nomogram_from_reference()
    design = pd.get_dummies(training.drop(columns="y"), columns=["sex"], drop_first=True, dtype=float)
    assert stats.detect_separation(design, training["y"]) == "none"
    fit = stats.fit_logistic_or_firth(design, training["y"])
    assert fit.method == "ml"
    assert_rel(fit.coefficients, list(expected["coefficients"].values()), 1e-8)
