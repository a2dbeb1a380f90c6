"""Probability calibration (model.calibration): the fits against scikit-learn's references, what
calibration does to a miscalibrated score and to noise, that it sees training out-of-fold
predictions only (never a test label, never a group across an inner fold), and that bundles
store it as checked JSON numbers, apply it when screening, and load older bundles uncalibrated
with a warning.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit, logit

from conftest import REPO_ROOT
from test_bundle import make_cohort, radiomic
from RadFusionScreenLib.core.errors import BundleError, InputError
from RadFusionScreenLib.model.bundle import LOCK, MANIFEST, load_bundle, lock_bytes, write_bundle
from RadFusionScreenLib.model.bundle.loading import UNCALIBRATED_WARNING
from RadFusionScreenLib.model.calibration import (CLIP, Calibrator, calibration_metrics, fit_calibrator,
                                                  log_loss_per_case, select_calibrator)
from RadFusionScreenLib.model.train import FeatureColumns, ModelSettings, compare_models
from RadFusionScreenLib.stats import roc_auc, youden_threshold

SHIPPED = REPO_ROOT / "models" / "busi-ultrasound"


def miscalibrated(n: int, seed: int, stretch: float = 3.0, shift: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """Outcomes drawn from a true risk, and a score whose logit is the true logit × ``stretch`` + ``shift``."""
    rng = np.random.default_rng(seed)
    true_logit = rng.normal(-0.3, 1.2, n)
    y = rng.binomial(1, expit(true_logit))
    return expit(stretch * true_logit + shift), y


# ================================================================= the fits = scikit-learn's
def test_platt_equals_sklearn_sigmoid_calibration_on_logit_p():
    from sklearn.calibration import _SigmoidCalibration

    for seed in range(3):
        p, y = miscalibrated(300, seed)
        p[:3] = (0.0, 1.0, 0.5)  # exact 0 and 1: clipped before the logit, as the reference is fed
        ours = fit_calibrator("platt", p, y)
        score = logit(np.clip(p, CLIP, 1 - CLIP))
        theirs = _SigmoidCalibration().fit(score, y)
        assert (ours.a, ours.b) == pytest.approx((-theirs.a_, -theirs.b_), abs=1e-6)  # sklearn: expit(-(aF + b))
        np.testing.assert_allclose(ours.apply(p), np.clip(theirs.predict(score), CLIP, 1 - CLIP), atol=1e-7)


def test_isotonic_equals_sklearn_isotonic_regression_knots_and_predictions():
    from sklearn.isotonic import IsotonicRegression

    grid = np.linspace(0, 1, 2001)
    for seed in range(3):
        p, y = miscalibrated(400, seed)
        p = np.round(p, 3)  # ties in p: averaged as scikit-learn does
        ours = fit_calibrator("isotonic", p, y)
        theirs = IsotonicRegression(out_of_bounds="clip").fit(p, y)
        np.testing.assert_allclose(ours.x, theirs.X_thresholds_, rtol=0, atol=0)
        np.testing.assert_allclose(ours.y, theirs.y_thresholds_, rtol=0, atol=1e-12)
        np.testing.assert_allclose(ours.apply(grid), np.clip(theirs.predict(grid), CLIP, 1 - CLIP), atol=1e-12)
        assert np.all(np.diff(ours.apply(grid)) >= 0)


def test_log_loss_is_sklearns():
    from sklearn.metrics import log_loss

    p, y = miscalibrated(200, 4)
    p[0], y[0] = 0.0, 1  # a certainty the outcome contradicts: clipped, as sklearn clips
    assert log_loss_per_case(y, p).mean() == pytest.approx(log_loss(y, np.clip(p, 1e-15, 1 - 1e-15)), rel=1e-12)


# ============================================================== what calibration does
def test_a_miscalibrated_score_is_recalibrated_on_held_out_cases_and_its_auc_kept():
    p_train, y_train = miscalibrated(3000, 10)
    p_test, y_test = miscalibrated(3000, 11)
    selection = select_calibrator(p_train, y_train, random_state=0)
    assert selection.method in ("platt", "isotonic")
    assert selection.log_loss[selection.method] < selection.log_loss["none"] - 0.05
    before, after = calibration_metrics(y_test, p_test), calibration_metrics(y_test, selection.apply(p_test))
    assert before["slope"] == pytest.approx(1 / 3, abs=0.05) and before["slope_ci"][1] < 0.5
    assert abs(before["intercept"]) > 0.5 and before["hosmer_lemeshow"]["p_value"] < 1e-6
    # within sampling error of ideal (train and test are separate draws: their prevalences differ a little)
    assert after["slope"] == pytest.approx(1, abs=0.15) and after["slope_ci"][0] < 1 < after["slope_ci"][1]
    assert abs(after["intercept"]) < 0.2 and after["hosmer_lemeshow"]["p_value"] > 0.001
    platt = fit_calibrator("platt", p_train, y_train)
    assert platt.a == pytest.approx(1 / 3, abs=0.05) and platt.b == pytest.approx(-0.5, abs=0.1)  # inverts ×3 + 1.5
    assert roc_auc(y_test, platt.apply(p_test)) == roc_auc(y_test, p_test)  # a strictly monotone map
    isotonic = fit_calibrator("isotonic", p_train, y_train)
    assert roc_auc(y_test, isotonic.apply(p_test)) == pytest.approx(roc_auc(y_test, p_test), abs=0.01)  # steps tie


def test_a_calibrated_score_is_left_alone():
    rng = np.random.default_rng(5)
    true = expit(rng.normal(0, 1.5, 2000))
    y = rng.binomial(1, true)
    assert select_calibrator(true, y).method == "none"


def test_pure_noise_stays_at_chance_before_and_after():
    rng = np.random.default_rng(6)
    p_train, y_train = rng.uniform(size=2000), rng.integers(0, 2, 2000)
    p_test, y_test = rng.uniform(size=2000), rng.integers(0, 2, 2000)
    selection = select_calibrator(p_train, y_train)
    calibrated = selection.apply(p_test)
    assert abs(roc_auc(y_test, p_test) - 0.5) < 0.04 and abs(roc_auc(y_test, calibrated) - 0.5) < 0.04
    assert abs(calibrated.mean() - y_train.mean()) < 0.05  # noise carries no risk information


def test_calibration_never_reverses_the_ranking():
    p, y = miscalibrated(500, 7)
    flipped = fit_calibrator("platt", 1 - p, y)  # a score ranking the wrong way round
    assert flipped.a == 0 and np.ptp(flipped.apply(p)) == 0
    assert select_calibrator(1 - p, y).method != "none"  # a constant beats a reversed ranking


def test_raw_threshold_is_where_the_calibrated_probability_reaches_the_threshold():
    p, y = miscalibrated(1000, 8)
    grid = np.sort(np.random.default_rng(0).uniform(size=5000))
    for method in ("none", "platt", "isotonic"):
        calibrator = fit_calibrator(method, p, y)
        for threshold in (0.2, 0.5, 0.8):
            raw = calibrator.raw_threshold(threshold)
            away = np.abs(grid - raw) > 1e-9
            assert ((calibrator.apply(grid) >= threshold) == (grid >= raw))[away].all(), (method, threshold)


# ================================================================== nested, no leakage
def test_inner_folds_keep_groups_whole_and_both_classes_in_each():
    p, y = miscalibrated(600, 9)
    groups = np.repeat(np.arange(200), 3).astype(str)  # three rows per patient
    selection = select_calibrator(p, y, groups=groups, n_splits=5)
    folds = pd.Series(selection.fold).groupby(groups).nunique()
    assert (folds == 1).all() and set(selection.fold) == set(range(5))
    for k in range(5):
        assert 0 < y[selection.fold == k].mean() < 1


@pytest.fixture(scope="module")
def grouped_cohort() -> tuple[pd.DataFrame, pd.DataFrame]:
    table = make_cohort(200, n_features=20, seed=1)
    table["patient"] = [f"p{i // 3}" for i in range(len(table))]
    return table.iloc[:140], table.iloc[140:]


def _compare(train: pd.DataFrame, test: pd.DataFrame, group_column: str | None = None):
    return compare_models(train, test, columns=FeatureColumns(radiomic=tuple(radiomic(train))),
                          feature_sets=("radiomic",), classifiers=("lr",), group_column=group_column,
                          settings=ModelSettings(lasso_folds=3, harmonize=False), grid="quick", outer_folds=3,
                          inner_folds=3, n_boot=20, nomogram=False)


def test_test_labels_never_reach_the_calibrator(grouped_cohort):
    train, test = grouped_cohort
    honest = _compare(train, test).results["radiomic/lr"]
    permuted = test.assign(label=np.random.default_rng(0).permutation(test["label"].to_numpy()))
    blind = _compare(train, permuted).results["radiomic/lr"]
    assert honest.calibration.method == "platt", "this cohort's LASSO-LR is miscalibrated out of fold"
    assert honest.calibration.calibrator.to_dict() == blind.calibration.calibrator.to_dict()
    assert honest.calibration.to_dict() == blind.calibration.to_dict() and honest.threshold == blind.threshold
    np.testing.assert_array_equal(honest.test_probability, blind.test_probability)
    assert honest.test_auc_delong.auc != blind.test_auc_delong.auc  # the permutation did change the test set
    # what is served: the calibrated probability, thresholded on the calibrated out-of-fold scale
    np.testing.assert_allclose(honest.test_probability, honest.calibration.apply(honest.test_probability_uncalibrated))
    called = honest.calibration.apply(honest.cv.probability) >= honest.threshold
    assert honest.threshold > 0 and 0 < called.mean() < 1


def test_the_comparison_calibrates_inside_patient_groups(grouped_cohort):
    train, test = grouped_cohort
    result = _compare(train, test, group_column="patient").results["radiomic/lr"]
    assert (pd.Series(result.calibration.fold, index=train.index).groupby(train["patient"]).nunique() == 1).all()


def test_the_calibrator_sees_the_final_configuration_out_of_fold():
    """Fitted on the out-of-fold probabilities of the final hyper-parameters, refitted on the same
    outer folds (CalibratedClassifierCV(ensemble=False)), not on the nested-CV mix of each fold's own."""
    from sklearn.base import clone

    from RadFusionScreenLib.model.train.cross_validation import cross_validated_predictions
    from RadFusionScreenLib.model.train.model_result import folds_to_refit
    from RadFusionScreenLib.model.train.splits import StratifiedSiteKFold

    table = make_cohort(200, n_features=20, seed=3)  # its outer folds choose C = 0.1, 1, 1; the final fit 0.1
    train, test = table.iloc[:140], table.iloc[140:]
    result = _compare(train, test).results["radiomic/lr"]
    y = train["label"].to_numpy()
    assert any(params != result.model.best_params_ for params in result.cv.best_params)
    assert not np.allclose(result.calibration_probability, result.cv.probability)
    refit = cross_validated_predictions(clone(result.model.best_estimator_), train, y, StratifiedSiteKFold(3), None, 1)
    np.testing.assert_allclose(result.calibration_probability, refit.probability, atol=1e-12)
    assert result.calibration.calibrator == select_calibrator(refit.probability, y, None, 3, 0).calibrator
    assert result.threshold == youden_threshold(y, result.calibration.apply(refit.probability))
    # only the folds that chose other hyper-parameters were refitted: the others already hold that fit
    refitted = folds_to_refit(result.model, result.cv.best_params)
    assert refitted == [k for k, params in enumerate(result.cv.best_params) if params != result.model.best_params_]
    assert 0 < len(refitted) < 3
    kept = ~np.isin(result.cv.fold, refitted)
    assert np.array_equal(result.calibration_probability[kept], result.cv.probability[kept])
    assert folds_to_refit(result.model, [dict(result.model.best_params_)] * 3) == []
    assert folds_to_refit(result.model.best_estimator_, result.cv.best_params) == []  # no grid: nothing to choose


# =========================================================================== bundles
@pytest.fixture(scope="module")
def calibrated_bundle(grouped_cohort, tmp_path_factory) -> tuple[Path, object, pd.DataFrame]:
    train, test = grouped_cohort
    comparison = _compare(train, test)
    folder = write_bundle(tmp_path_factory.mktemp("models") / "calibrated", comparison, name="calibrated",
                          extraction={"modality": "CT"}, training_summary={}, feature_set="radiomic")
    return folder, comparison, test


def test_bundle_round_trip_applies_the_calibrator(calibrated_bundle):
    folder, comparison, test = calibrated_bundle
    result = comparison.results["radiomic/lr"]
    bundle = load_bundle(folder)
    assert bundle.calibrator == result.calibration.calibrator and bundle.calibrator.method == "platt"
    assert UNCALIBRATED_WARNING not in bundle.warnings
    predicted = bundle.predict(test[bundle.required_columns])
    np.testing.assert_allclose(predicted["uncalibrated_probability"], result.test_probability_uncalibrated, atol=1e-9)
    np.testing.assert_allclose(predicted["probability"], result.test_probability, atol=1e-9)
    assert (predicted["decision"] == (predicted["probability"] >= bundle.threshold)).all()
    record = bundle.manifest["models"]["primary"]["calibration"]
    after = calibration_metrics(comparison.y_test, result.test_probability)
    assert record["test_set"]["after"]["slope"] == pytest.approx(after["slope"])
    assert record["test_set"]["before"]["intercept"] == pytest.approx(
        calibration_metrics(comparison.y_test, result.test_probability_uncalibrated)["intercept"])
    summary = bundle.calibration_summary()
    assert summary["method"] == "platt" and summary["test_set"] == record["test_set"]
    assert bundle.calibrator.apply([summary["raw_threshold"]])[0] == pytest.approx(bundle.threshold, abs=1e-9)
    json.dumps(summary, allow_nan=False)


def test_model_card_gives_the_test_calibration_before_and_after(calibrated_bundle):
    from RadFusionScreenLib.presentation.card import model_card_text

    folder, comparison, _ = calibrated_bundle
    manifest = json.loads((folder / MANIFEST).read_text())
    card = model_card_text(manifest)
    section = card[card.index("## Calibration"):card.index("## Limitations")]
    record = manifest["models"]["primary"]["calibration"]
    assert record["selection"]["description"] in section and "platt " in section
    for when, label in (("before", "| before: the classifier's output |"), ("after", "| after: calibrated (shown) |")):
        m = record["test_set"][when]
        row = next(line for line in section.splitlines() if line.startswith(label))
        assert f"{m['intercept']:.3f} ({m['intercept_ci'][0]:.3f}–{m['intercept_ci'][1]:.3f})" in row
        assert f"{m['slope']:.3f} ({m['slope_ci'][0]:.3f}–{m['slope_ci'][1]:.3f})" in row
        assert f"{m['hosmer_lemeshow']['statistic']:.2f} ({m['hosmer_lemeshow']['df']})" in row


def reseal(folder: Path, manifest: dict) -> None:
    """Write a manifest as the engine would (new lock): only the calibrator's own checks can refuse it."""
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))
    (folder / LOCK).write_bytes(lock_bytes(manifest))


def _as_isotonic_keeping_the_platt_formula(record: dict) -> None:
    for key in ("a", "b", "input_clip"):
        del record[key]
    record.update(method="isotonic", x=[0.1, 0.5], y=[0.2, 0.9])


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.update(a=-0.5), "negative"),
    (lambda c: c.update(a="0.5"), "finite number"),
    (lambda c: c.update(b=None), "finite number"),
    (lambda c: c.update(method="beta"), "unknown method"),
    (lambda c: c.update(extra=1), "unexpected keys"),
    (lambda c: c.update(format_version=2), "version"),
    (lambda c: c.update(input_clip=0.1), "input_clip"),
    (lambda c: _as_isotonic_keeping_the_platt_formula(c), "formula"),
    (lambda c: c.clear() or c.update(Calibrator("isotonic", x=(0.5, 0.2), y=(0.1, 0.9)).to_dict()),
     "strictly increasing"),
    (lambda c: c.clear() or c.update(Calibrator("isotonic", x=(0.2, 0.5), y=(0.9, 0.1)).to_dict()), "non-decreasing"),
    (lambda c: c.clear() or c.update(Calibrator("isotonic", x=(0.2, 0.5), y=(0.1, 1.5)).to_dict()), r"\[0, 1\]"),
])
def test_a_tampered_calibration_is_refused(calibrated_bundle, tmp_path, edit, message):
    folder = Path(shutil.copytree(calibrated_bundle[0], tmp_path / "copy"))
    manifest = json.loads((folder / MANIFEST).read_text())
    edit(manifest["models"]["primary"]["calibration"]["calibrator"])
    reseal(folder, manifest)
    with pytest.raises(BundleError, match=f"probability calibration is invalid: .*{message}"):
        load_bundle(folder)


def test_a_calibration_edited_by_hand_is_refused_by_the_lock(calibrated_bundle, tmp_path):
    folder = Path(shutil.copytree(calibrated_bundle[0], tmp_path / "copy"))
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["models"]["primary"]["calibration"]["calibrator"]["b"] += 1.0
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))
    with pytest.raises(BundleError, match=r"edited outside RadFusionScreen \(changed: models\.primary\.calibration"):
        load_bundle(folder)


def test_an_older_bundle_without_calibration_loads_uncalibrated_with_a_warning(calibrated_bundle, tmp_path):
    folder, comparison, test = calibrated_bundle
    copy_folder = Path(shutil.copytree(folder, tmp_path / "old"))
    manifest = copy.deepcopy(json.loads((copy_folder / MANIFEST).read_text()))
    del manifest["models"]["primary"]["calibration"]
    reseal(copy_folder, manifest)
    bundle = load_bundle(copy_folder)
    assert bundle.calibrator is None and UNCALIBRATED_WARNING in bundle.warnings
    predicted = bundle.predict(test[bundle.required_columns])
    np.testing.assert_array_equal(predicted["probability"], predicted["uncalibrated_probability"])
    assert bundle.calibration_summary()["method"] is None


@pytest.mark.parametrize("folder", sorted(p.parent for p in (REPO_ROOT / "models").glob(f"*/{MANIFEST}")),
                         ids=lambda p: p.name)
def test_every_shipped_bundle_loads_and_warns_exactly_when_it_is_uncalibrated(folder):
    """Bundles written before calibration (the shipped ones until they are re-exported) load and
    are served uncalibrated with a warning; a re-exported one carries its calibrator."""
    bundle = load_bundle(folder)
    assert (bundle.calibrator is None) == (UNCALIBRATED_WARNING in bundle.warnings)
    assert (bundle.calibrator is None) == ("calibration" not in bundle.manifest["models"]["primary"])
    assert bundle.calibration_summary()["method"] == (None if bundle.calibrator is None else bundle.calibrator.method)


def test_the_busi_bundle_is_shipped():
    assert (SHIPPED / MANIFEST).is_file(), f"the shipped model bundle is missing: {SHIPPED}"


def test_calibrator_json_round_trip_and_bad_inputs():
    for calibrator in (Calibrator("none"), Calibrator("platt", a=0.7, b=-0.2),
                       Calibrator("isotonic", x=(0.1, 0.4, 0.9), y=(0.0, 0.5, 1.0))):
        record = json.loads(json.dumps(calibrator.to_dict(), allow_nan=False))
        assert Calibrator.from_dict(record) == calibrator
    with pytest.raises(BundleError, match="expected an object"):
        Calibrator.from_dict([1, 2])
    with pytest.raises(InputError, match="finite probabilities"):
        fit_calibrator("platt", [0.2, np.nan], [0, 1])
    with pytest.raises(InputError, match="unknown calibration method"):
        fit_calibrator("beta", [0.2, 0.3], [0, 1])
    few = select_calibrator([0.1, 0.2, 0.8], [0, 0, 1])
    assert few.method == "none" and "too few cases" in few.remarks[0]


# ============================================================ screening a real image
@pytest.mark.slow
def test_screening_applies_the_bundles_calibration(ct_bundle):
    """write_bundle (radfusion train on CT phantoms) -> load_bundle -> Screener.screen."""
    from RadFusionScreenLib.serving.screening import Screener

    screener = Screener(ct_bundle)
    cohort = ct_bundle.parent / "cohort"
    result = screener.screen(cohort / "ct001.nii.gz", cohort / "ct001_mask.nii.gz", heatmap=False)
    calibrator = screener.bundle.calibrator
    assert calibrator is not None and result.calibration["method"] == calibrator.method
    assert result.probability == pytest.approx(float(calibrator.apply([result.uncalibrated_probability])[0]), abs=1e-12)
    assert result.decision == (result.probability >= screener.bundle.threshold)
    assert UNCALIBRATED_WARNING not in result.warnings
    values = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert values["uncalibrated_probability"] == pytest.approx(result.uncalibrated_probability)
    assert "calibration " in result.summary_text() and calibrator.describe() in result.summary_text()


def test_case_report_shows_the_calibrated_probability_and_how_the_waterfall_maps_to_it(calibrated_bundle):
    """The answer is the calibrated probability with one line on its calibration; the SHAP waterfall
    explains the raw output and says that the calibration map turns it into the probability shown."""
    from RadFusionScreenLib.presentation.case_report import case_report_html
    from RadFusionScreenLib.serving.screening import ScreenResult

    bundle = load_bundle(calibrated_bundle[0])
    raw = 0.8
    shown = float(bundle.calibrator.apply([raw])[0])
    explanation = {"method": "exact linear SHAP", "output": "log-odds", "base": -0.2, "log_odds": float(logit(raw)),
                   "probability": raw, "contributions": [{"feature": "f", "label": "f", "value": 1.0,
                                                          "shap": float(logit(raw)) + 0.2}]}
    result = ScreenResult(probability=shown, decision=shown >= bundle.threshold, risk_class="high",
                          threshold=bundle.threshold,
                          rad_score=None, deep_score=None, nomogram=pd.DataFrame(), nomogram_total_points=None,
                          nomogram_linear_predictor=None, nomogram_probability=None, features=pd.DataFrame(),
                          heatmap=None, model={"name": "calibrated", "digest": bundle.digest}, timings={},
                          explanation=explanation, uncalibrated_probability=raw,
                          calibration=bundle.calibration_summary())
    page = case_report_html(result, None, case_id="x")
    assert f"probability {shown:.3f}" in page and shown != pytest.approx(raw, abs=1e-3)
    line = page.split('id="calibration">')[1].split("</p>")[0]
    after = bundle.calibration_summary()["test_set"]["after"]
    assert line.startswith("Calibration: Platt scaling") and f"slope {after['slope']:.2f}" in line
    assert f"(probability {raw:.3f})" in page and "turns it into the probability shown" in page
