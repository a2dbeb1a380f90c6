"""Comparison summary and HTML report (report.py).

The summary's numbers are checked against the ModelResult values and against the stats
functions (and a few hand formulas) recomputed here from the predictions; the JSON has no
NaN; the HTML parses, holds every section and its figures as embedded PNGs, escapes text
and links to nothing outside itself; writing is atomic.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from RadFusionScreenLib.core.errors import InputError
from RadFusionScreenLib.explanation.shap_values import shap_values
from RadFusionScreenLib.model.evaluation import TEST_SET, TRAINING_OOF, comparison_summary, describe_cohort
from RadFusionScreenLib.presentation.model_report import RESEARCH_USE, write_report
from RadFusionScreenLib.stats import (
    auc_ci_bootstrap,
    auc_ci_delong,
    calibration_curve,
    calibration_intercept_slope,
    delong_test,
    hosmer_lemeshow_test,
    roc_auc,
    threshold_metrics,
    youden_threshold,
)
from RadFusionScreenLib.model.train import (
    ModelComparison,
    ModelSettings,
    compare_models,
    selected_feature_names,
    split_cohort,
)

SECTIONS = ("cohort", "models", "roc", "delong", "calibration", "decision-curve", "nomogram", "shap", "features",
            "settings", "notes")
HOSTILE_NOTE = 'site "<b>A</b>" & <script>alert(1)</script>'


# ------------------------------------------------------------------------ data
def make_cohort(n: int = 150, seed: int = 0) -> pd.DataFrame:
    """30 radiomic + 20 deep Gaussian features, signal planted in 3 of each, two sites with offsets."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    sites = rng.integers(0, 2, n)
    radiomic = rng.normal(size=(n, 30)) + rng.normal(scale=0.5, size=(2, 30))[sites]
    deep = rng.normal(size=(n, 20)) + rng.normal(scale=0.5, size=(2, 20))[sites]
    radiomic[:, :3] += 1.0 * y[:, None]
    deep[:, :3] += 0.8 * y[:, None]
    table = pd.concat([pd.DataFrame(radiomic, columns=[f"original_firstorder_f{j:02d}" for j in range(30)]),
                       pd.DataFrame(deep, columns=[f"deep_{j:03d}" for j in range(20)])], axis=1)
    table.insert(0, "label", y)
    table.insert(1, "site", [f"site{s}" for s in sites])
    table.index = [f"case{i:03d}" for i in range(n)]
    return table


@pytest.fixture(scope="module")
def cohort() -> tuple[pd.DataFrame, pd.DataFrame, str]:
    split = split_cohort(make_cohort(), test_size=0.3, seed=0)
    return split.train, split.test, split.description


@pytest.fixture(scope="module")
def comparison(cohort) -> ModelComparison:
    train, test, _ = cohort
    # small folds and a 3-fold LASSO keep this under ~15 s: the report, not the models, is under test
    result = compare_models(train, test, classifiers=("lr", "rf"), feature_sets=("radiomic", "deep", "fused"),
                            grid="quick", outer_folds=3, inner_folds=2, n_boot=300,
                            settings=ModelSettings(lasso_folds=3))
    result.notes.append(HOSTILE_NOTE)
    return result


@pytest.fixture(scope="module")
def summary(comparison, cohort) -> dict:
    train, test, description = cohort
    return comparison_summary(comparison, cohort=describe_cohort(train, test, split=description),
                              settings={"grid": "quick", "outer_folds": 3, "command": "radfusion train <x>"})


def without_test_set(comparison: ModelComparison) -> ModelComparison:
    """The same models as if no test set had been given (cross-validation only)."""
    results = {name: dataclasses.replace(r, test_probability=None, test_auc_delong=None, test_auc_bootstrap=None,
                                         test_metrics=None) for name, r in comparison.results.items()}
    return dataclasses.replace(comparison, results=results, y_test=None, scores_test=None)


# ===================================================================== summary
def test_model_numbers_equal_the_results_and_independent_recomputation(comparison, summary) -> None:
    y_train, y_test = comparison.y_train, comparison.y_test
    assert set(summary["models"]) == set(comparison.results)
    for name, result in comparison.results.items():
        entry, p = summary["models"][name], result.test_probability
        assert entry["cv_auc"] == pytest.approx(np.mean(result.cv.fold_aucs), abs=1e-12)
        assert entry["cv_auc_sd"] == pytest.approx(np.std(result.cv.fold_aucs, ddof=1), abs=1e-12)
        assert entry["cv_auc_pooled"] == pytest.approx(roc_auc(y_train, result.cv.probability), abs=1e-12)
        assert entry["test_auc"] == pytest.approx(roc_auc(y_test, p), abs=1e-12)
        delong = auc_ci_delong(y_test, p)
        assert entry["test_auc_ci"] == pytest.approx([delong.ci_lower, delong.ci_upper], abs=1e-12)
        boot = auc_ci_bootstrap(y_test, p, n_boot=entry["bootstrap"]["n_boot"], seed=entry["bootstrap"]["seed"])
        assert entry["test_auc_ci_bootstrap"] == pytest.approx([boot.ci_lower, boot.ci_upper], abs=1e-12)
        assert entry["bootstrap"]["n_boot"] == 300
        # Youden on the calibrated out-of-fold probabilities: the scale of the probability served
        oof = result.cv.probability if result.calibration is None else result.calibration.apply(result.cv.probability)
        threshold = youden_threshold(y_train, oof)
        assert entry["threshold"] == pytest.approx(threshold, abs=1e-12)
        if result.calibration is not None:
            np.testing.assert_allclose(p, result.calibration.apply(result.test_probability_uncalibrated))
            assert entry["calibration"]["method"] == result.calibration.method
        metrics = threshold_metrics(y_test, p, threshold)
        for metric in ("sensitivity", "specificity", "ppv", "npv", "accuracy"):
            expected = getattr(metrics, metric)
            assert entry[metric]["estimate"] == pytest.approx(expected.estimate, abs=1e-12)
            assert [entry[metric]["lower"], entry[metric]["upper"]] == pytest.approx([expected.lower, expected.upper])
        called = p >= threshold
        assert entry["sensitivity"]["estimate"] == pytest.approx(called[y_test == 1].mean())
        assert entry["specificity"]["estimate"] == pytest.approx(1 - called[y_test == 0].mean())
        assert entry["selected_features"] == result.selected_features
        assert entry["n_features"] == len(result.selected_features)
        if result.feature_set != "nomogram":
            assert entry["selected_features"] == selected_feature_names(result.model)


def test_best_model_and_cohort(comparison, summary, cohort) -> None:
    train, test, description = cohort
    assert summary["best_model"] == comparison.best_model
    assert summary["models"][summary["best_model"]]["cv_auc"] == max(m["cv_auc"] for m in summary["models"].values())
    assert summary["evaluation_set"] == TEST_SET
    facts = summary["cohort"]
    assert (facts["n_train"], facts["n_test"]) == (len(train), len(test))
    assert facts["prevalence_test"] == pytest.approx(test["label"].mean())
    assert facts["cases_train"] == int(train["label"].sum())
    assert facts["sites_train"] == train["site"].value_counts().sort_index().to_dict()
    assert facts["split"] == description


def test_delong_p_values_vs_best_and_fused_vs_single_sources(comparison, summary) -> None:
    y, results, best = comparison.y_test, comparison.results, comparison.best_model
    tests = summary["delong"]
    vs_best = {t["model"]: t for t in tests if t["comparison"] == "vs best model"}
    assert set(vs_best) == set(results) - {best}
    for t in tests:
        expected = delong_test(y, results[t["model"]].test_probability, results[t["reference"]].test_probability)
        assert t["p_value"] == pytest.approx(expected.p_value, abs=1e-12)
        assert t["difference"] == pytest.approx(roc_auc(y, results[t["model"]].test_probability)
                                                - roc_auc(y, results[t["reference"]].test_probability), abs=1e-12)
    pairs = {(t["model"].split("/")[0], t["reference"].split("/")[0]) for t in tests if "fused vs" in t["comparison"]}
    assert pairs == {("fused", "radiomic"), ("fused", "deep")}
    # the same p-values as ModelComparison.summary()
    table = comparison.summary().set_index("model")["test_delong_p_vs_best"]
    for name, t in vs_best.items():
        assert t["p_value"] == pytest.approx(table[name], abs=1e-12)


def test_calibration_and_decision_curve_recomputed(comparison, summary) -> None:
    y = comparison.y_test
    names = [comparison.best_model, comparison.shipped_result().name, "nomogram/logistic"]
    assert list(summary["calibration"]) == list(dict.fromkeys(names))
    for name, entry in summary["calibration"].items():
        result = comparison.results[name]
        p = result.test_probability
        if result.calibration is None:  # the nomogram serves its own logistic probability
            assert entry["calibration"] is None
        else:  # before / after the calibrator, with Wald intervals around the recomputed fits
            for when, probability in (("before", result.test_probability_uncalibrated), ("after", p)):
                fit = calibration_intercept_slope(y, probability, clip=entry["calibration"][when]["clip"])
                got = entry["calibration"][when]
                assert (got["intercept"], got["slope"]) == (pytest.approx(fit.intercept), pytest.approx(fit.slope))
                assert got["slope_ci"] == pytest.approx([fit.slope - 1.959964 * fit.slope_se,
                                                         fit.slope + 1.959964 * fit.slope_se], abs=1e-5)
                assert got["hosmer_lemeshow"]["p_value"] == pytest.approx(hosmer_lemeshow_test(y, probability).p_value)
            assert entry["calibration"]["method"] == result.calibration.method
        expected_curve = calibration_curve(y, p, n_bins=10)
        assert pd.DataFrame(entry["curve"])["observed_rate"].tolist() == pytest.approx(
            expected_curve["observed_rate"].tolist())
        hl = hosmer_lemeshow_test(y, p, g=10)
        assert (entry["hosmer_lemeshow"]["statistic"], entry["hosmer_lemeshow"]["df"]) == (
            pytest.approx(hl.statistic), hl.df)
        assert entry["hosmer_lemeshow"]["p_value"] == pytest.approx(hl.p_value)
        fit = calibration_intercept_slope(y, p, clip=entry["clip"])
        assert (entry["intercept"], entry["slope"]) == (pytest.approx(fit.intercept), pytest.approx(fit.slope))
        assert entry["set"] == TEST_SET
    curves = summary["decision_curve"]
    threshold = np.asarray(curves["threshold"])
    assert threshold[0] == pytest.approx(0.01) and threshold[-1] == pytest.approx(0.99)
    prevalence, odds, n = y.mean(), threshold / (1 - threshold), y.size
    np.testing.assert_allclose(curves["treat_all"], prevalence - (1 - prevalence) * odds)
    assert curves["treat_none"] == [0.0] * threshold.size
    for name, benefit in curves["models"].items():
        p = comparison.results[name].test_probability
        tp = np.array([np.sum((p > t) & (y == 1)) for t in threshold])
        fp = np.array([np.sum((p > t) & (y == 0)) for t in threshold])
        np.testing.assert_allclose(benefit, tp / n - fp / n * odds, atol=1e-12)


def test_summary_is_strict_json(comparison, summary) -> None:
    text = json.dumps(summary, allow_nan=False)
    assert json.loads(text) == summary
    rf = next(name for name in summary["models"] if name.endswith("/rf"))
    assert summary["models"][rf]["grid_best_auc_optimistic"] is None  # NaN (no grid search) becomes null
    assert summary["notes"][-1] == HOSTILE_NOTE
    assert {"numpy", "scikit-learn", "python"} <= set(summary["packages"])
    assert summary["model_settings"]["reduction"] == comparison.settings.reduction


def test_without_a_test_set_the_curves_use_out_of_fold_predictions(comparison) -> None:
    cv_only = without_test_set(comparison)
    summary = comparison_summary(cv_only, cohort={}, settings={})
    json.dumps(summary, allow_nan=False)
    assert summary["evaluation_set"] == TRAINING_OOF
    best = summary["models"][cv_only.best_model]
    assert best["test_auc"] is None and best["sensitivity"] is None and best["cv_auc"] is not None
    assert summary["cohort"]["n_test"] == 0
    p = cv_only.results[cv_only.best_model].cv.probability
    hl = hosmer_lemeshow_test(cv_only.y_train, p)
    assert summary["calibration"][cv_only.best_model]["hosmer_lemeshow"]["statistic"] == pytest.approx(hl.statistic)
    assert all(t["set"] == TRAINING_OOF for t in summary["delong"])


# ======================================================================== HTML
class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.ids: list[str] = []
        self.images: list[str] = []
        self.links: list[tuple[str, str]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        attributes = dict(attrs)
        if "id" in attributes:
            self.ids.append(attributes["id"])
        if tag == "img":
            self.images.append(attributes.get("src", ""))
        for name in ("src", "href", "action", "srcset"):
            if name in attributes and tag != "img":
                self.links.append((tag, attributes[name]))

    def handle_data(self, data):
        self.text.append(data)


def parse(path: Path) -> _Collector:
    collector = _Collector()
    collector.feed(path.read_text(encoding="utf-8"))
    collector.close()
    return collector


@pytest.fixture(scope="module")
def shap(comparison, cohort):
    train, test, _ = cohort
    return shap_values(comparison.results[comparison.best_model].model, test, train)


def test_report_is_self_contained_with_every_section(comparison, summary, shap, tmp_path) -> None:
    path = write_report(tmp_path / "out" / "report.html", comparison, summary, shap, comparison.best_model)
    page = parse(path)
    assert all(section in page.ids for section in SECTIONS)
    assert len(page.images) == 6  # ROC, calibration, decision curve, nomogram, SHAP bars, SHAP dots
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert page.links == []  # no external src/href of any kind
    assert "script" not in page.tags and "link" not in page.tags and "iframe" not in page.tags
    text = " ".join(page.text)
    assert RESEARCH_USE in text and HOSTILE_NOTE in text  # shown as text, not markup
    raw = path.read_text(encoding="utf-8")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in raw and "<b>A</b>" not in raw
    best = summary["models"][comparison.best_model]
    assert f"{best['test_auc']:.3f}" in text and f"{best['test_auc_ci'][0]:.3f}" in text
    for feature in best["selected_features"]:
        assert feature in text
    assert list(path.parent.iterdir()) == [path]  # no temporary file left


def test_report_without_shap_nomogram_or_test_set(comparison, tmp_path) -> None:
    cv_only = dataclasses.replace(without_test_set(comparison), nomogram=None)
    summary = comparison_summary(cv_only, cohort={"split": "none"}, settings={})
    selected = next(name for name in cv_only.results if name != cv_only.best_model)
    page = parse(write_report(tmp_path / "report.html", cv_only, summary, None, selected))
    assert all(section in page.ids for section in SECTIONS)
    assert len(page.images) == 3  # ROC, calibration, decision curve
    text = " ".join(page.text)
    assert "out-of-fold" in text and "SHAP values were not computed" in text and "No nomogram" in text
    assert f"{selected} (selected)" in text


def test_report_write_is_atomic(comparison, summary, tmp_path, monkeypatch) -> None:
    path = tmp_path / "report.html"
    path.write_text("previous report", encoding="utf-8")
    with pytest.raises(InputError, match="not one of the compared models"):
        write_report(path, comparison, summary, None, "no/such-model")
    assert path.read_text(encoding="utf-8") == "previous report"

    def failing_replace(source, target):
        raise OSError("disk full")

    monkeypatch.setattr("RadFusionScreenLib.presentation.model_report.os.replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        write_report(path, comparison, summary, None, comparison.best_model)
    assert path.read_text(encoding="utf-8") == "previous report"
    assert list(tmp_path.iterdir()) == [path]
    monkeypatch.undo()
    write_report(path, comparison, summary, None, comparison.best_model)
    assert path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
