"""Degenerate cohorts never end `radfusion train`: Firth's fit under separation, named notes.

Small or very separable cohorts are normal in radiomics (100-300 cases; a nodule's diameter
alone nearly separates large nodules). The unpenalised logistic fits of the nomogram and of
the calibration slope do not exist under separation; other fits fail on degenerate folds.
Each gets a named fallback or a per-model note, and the rest of the comparison goes on.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from RadFusionScreenLib import stats
from RadFusionScreenLib.core.errors import InputError
from RadFusionScreenLib.model.evaluation import comparison_summary
from RadFusionScreenLib.presentation.model_report import write_report
from RadFusionScreenLib.model.train import FeatureColumns, compare_models, split_cohort

QUICK = dict(classifiers=("lr",), grid="quick", outer_folds=3, inner_folds=3, n_boot=100)


def separable_cohort(n: int = 72, seed: int = 0, constant_radiomic: bool = False) -> pd.DataFrame:
    """Deep features that separate the classes completely (a gap), radiomic ones of noise."""
    rng = np.random.default_rng(seed)
    label = np.tile([0, 1], n // 2)
    deep = rng.normal(size=(n, 6))
    deep[:, 0] = np.where(label == 1, 3.0, -3.0) + rng.uniform(-1, 1, n)
    radiomic = np.ones((n, 5)) if constant_radiomic else rng.normal(size=(n, 5))
    table = pd.DataFrame(np.hstack([radiomic, deep]),
                         columns=[f"original_firstorder_f{j}" for j in range(5)] + [f"deep_{j}" for j in range(6)])
    table.insert(0, "label", label)
    table.insert(0, "case_id", [f"c{i:03d}" for i in range(n)])
    return table


def columns_of(table: pd.DataFrame) -> FeatureColumns:
    return FeatureColumns(radiomic=tuple(c for c in table if c.startswith("original_")),
                          deep=tuple(c for c in table if c.startswith("deep_")))


# ------------------------------------------------------------------ statistics
def test_detect_separation_kinds_on_hand_made_data():
    y = [0, 0, 0, 1, 1, 1]
    assert stats.detect_separation(np.array([[-2], [-1], [-0.5], [0.5], [1], [2.0]]), y) == "complete"
    # a tie at x = 0 carrying both outcomes: separated except on the tie
    assert stats.detect_separation(np.array([[-2], [-1], [0], [0], [1], [2.0]]), y) == "quasi-complete"
    assert stats.detect_separation(np.array([[-2], [-1], [0], [1], [2], [3.0]]), [0, 1, 0, 1, 0, 1]) == "none"
    # two predictors, neither separating alone, together separating (y = x1 + x2 > 0)
    x = np.array([[1, -2], [-2, 1], [-1, 0.5], [2, -1.5], [1, 0.5], [-0.5, 1], [0.2, 0.1], [3, -2.5]])
    assert stats.detect_separation(x, (x.sum(axis=1) > 0).astype(int)) == "complete"


def test_nomogram_falls_back_to_firth_and_says_so():
    rng = np.random.default_rng(1)
    y = np.tile([0, 1], 20)
    data = pd.DataFrame({"rad_score": np.where(y == 1, 1.0, -1.0) + rng.uniform(-0.5, 0.5, y.size),
                         "age": rng.normal(60, 10, y.size)})
    with pytest.raises(stats.SeparationError):
        stats.fit_logistic_regression(data, y)
    nomogram = stats.Nomogram.fit(data, y)
    assert nomogram.fit_method == "firth" and nomogram.logistic_fit.separation == "complete"
    assert np.all(np.isfinite(nomogram.logistic_fit.coefficients))
    restored = stats.Nomogram.from_dict(json.loads(json.dumps(nomogram.to_dict())))
    assert restored.fit_method == "firth"
    np.testing.assert_allclose(restored.points(data)["probability"], nomogram.points(data)["probability"], rtol=1e-12)
    # an older bundle's nomogram (no fit_method recorded) reads as ML
    legacy = {k: v for k, v in nomogram.to_dict().items() if k != "fit_method"}
    assert stats.Nomogram.from_dict(legacy).fit_method == "ml"


def test_calibration_slope_of_a_perfectly_ranked_set_is_firth_not_a_crash():
    y = np.array([0] * 6 + [1] * 6)
    p = np.linspace(0.05, 0.95, 12)
    fit = stats.calibration_intercept_slope(y, p)
    assert fit.slope_method == "firth" and np.isfinite(fit.slope) and fit.slope > 0
    ordinary = stats.calibration_intercept_slope(np.array([0, 1] * 6), p)
    assert ordinary.slope_method == "ml"


# ---------------------------------------------------------------- comparison
def test_separated_nomogram_uses_firth_in_every_fold_and_is_marked(tmp_path):
    table = separable_cohort()
    split = split_cohort(table, test_size=0.3, seed=0, stratify="label")
    comparison = compare_models(split.train, split.test, columns=columns_of(table),
                                feature_sets=("radiomic", "deep", "fused"), **QUICK)
    nomogram = comparison.results["nomogram/logistic"]
    assert comparison.nomogram.fit_method == "firth"
    assert nomogram.remarks[0].startswith("final fit: Firth's bias-reduced logistic regression")
    assert any(remark.startswith("outer fold") for remark in nomogram.remarks)
    assert any("Firth" in note for note in comparison.notes)
    assert nomogram.test_auc_delong.auc > 0.95  # a usable model, not a placeholder
    summary = comparison_summary(comparison, cohort={}, settings={})
    assert summary["models"]["nomogram/logistic"]["fit_method"] == "firth"
    assert summary["models"]["nomogram/logistic"]["remarks"] == nomogram.remarks
    json.dumps(summary, allow_nan=False)
    report = tmp_path / "report.html"
    write_report(report, comparison, summary, None, comparison.best_model)
    assert "(Firth fit)" in report.read_text()


def test_a_model_that_cannot_be_fitted_is_noted_and_the_others_go_on(tmp_path):
    """Every radiomic feature constant: radiomic/lr and the rad-score fail, deep and fused go on."""
    table = separable_cohort(constant_radiomic=True)
    split = split_cohort(table, test_size=0.3, seed=0, stratify="label")
    comparison = compare_models(split.train, split.test, columns=columns_of(table),
                                feature_sets=("radiomic", "deep", "fused"), **QUICK)
    assert set(comparison.failed) == {"radiomic/lr"}
    assert "constant" in comparison.failed["radiomic/lr"]
    assert {"deep/lr", "fused/lr", "nomogram/logistic"} <= set(comparison.results)
    assert any(note.startswith("model radiomic/lr not built") for note in comparison.notes)
    assert any(note.startswith("no rad_score") for note in comparison.notes)
    assert comparison.nomogram.predictors == ["deep_score"]
    summary = comparison_summary(comparison, cohort={}, settings={})
    assert summary["failed_models"] == comparison.failed
    report = tmp_path / "report.html"
    write_report(report, comparison, summary, None, comparison.best_model)
    assert "radiomic/lr: not built" in report.read_text()


def test_when_no_model_can_be_built_the_error_says_why():
    table = separable_cohort(constant_radiomic=True)
    split = split_cohort(table, test_size=0.3, seed=0, stratify="label")
    with pytest.raises(InputError, match="no model could be built: .*model radiomic/lr not built: every feature is constant"):
        compare_models(split.train, split.test, columns=columns_of(table), feature_sets=("radiomic",),
                       nomogram=False, **QUICK)


def test_a_text_clinical_column_not_declared_categorical_is_a_clear_error():
    """Before: a pandas TypeError from the nomogram's fill values; now the engine says what to do."""
    table = separable_cohort()
    table["smoker"] = np.where(np.arange(len(table)) % 3 == 0, "yes", "no")
    split = split_cohort(table, test_size=0.3, seed=0, stratify="label")
    columns = FeatureColumns(radiomic=columns_of(table).radiomic, deep=columns_of(table).deep, clinical=("smoker",))
    with pytest.raises(InputError, match=r"clinical column\(s\) \['smoker'\] hold non-numeric values: declare them "
                                         r"categorical \(--categorical smoker\)"):
        compare_models(split.train, split.test, columns=columns, **QUICK)
    comparison = compare_models(split.train, split.test, columns=columns, categorical_columns=("smoker",),
                                feature_sets=("clinical",), **QUICK)
    assert comparison.nomogram is not None and "smoker" in comparison.clinical_fill
