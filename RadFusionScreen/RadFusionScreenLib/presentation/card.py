"""Model cards: the README.md of a model bundle, written from its own recorded numbers.

What a reader needs before using a model (Mitchell et al. 2019, "Model Cards for Model
Reporting"): intended use, data, cohort sizes, internal test metrics with confidence
intervals, calibration of the shipped model, and limitations. The numbers are read from
the bundle's manifest (the training summary ``radfusion train`` recorded); calibration of
the shipped model is the manifest's record (the calibration method and the test set's
intercept, slope and Hosmer-Lemeshow before and after it), or, for a bundle written before
bundles were calibrated, recomputed from its recorded test predictions and the test labels.
Free text (data source, citation, known problems) comes from the person who trained it.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from RadFusionScreenLib.core.text import MISSING, interval, number

FAMILIES = ("radiomic", "deep", "fused", "nomogram")


def model_card_text(manifest: Mapping[str, Any], notes: str = "",
                    test_labels: Mapping[str, int] | None = None) -> str:
    """Markdown model card for a bundle manifest; ``notes`` is inserted as written."""
    training = manifest.get("training") or {}
    metrics = training.get("metrics") or {}
    models = metrics.get("models") or {}
    primary = manifest["models"]["primary"]
    lines = [
        f"# Model card: {manifest.get('name')}",
        "",
        f"Bundle format {manifest.get('format_version')}, created {manifest.get('created')} by RadFusionScreen "
        f"{(manifest.get('packages') or {}).get('radfusionscreen', '')}.",
        "",
        "## Intended use",
        "",
        "Research on opportunistic screening: the probability that a segmented lesion is positive "
        f"(label 1) from {(manifest.get('extraction') or {}).get('modality', '?')} images, with a nomogram "
        "breakdown and a Grad-CAM map. **Not for clinical use without local validation** on the site's own "
        "patients, scanners and segmentation practice. Not a diagnosis; not validated prospectively.",
        "",
    ]
    if notes.strip():
        lines += [notes.strip(), ""]
    refit = metrics.get("refit") if primary.get("validation") else None
    lines += _cohort_section(training.get("cohort") or {}, refit)
    lines += _model_section(primary, manifest, refit)
    lines += _metrics_section(models, metrics, refit)
    if refit:
        lines += _refit_section(refit)
    lines += _calibration_section(manifest, primary, test_labels)
    lines += _limitations(training.get("cohort") or {}, refit)
    return "\n".join(lines).rstrip() + "\n"


def fitting_remarks(summary: Mapping[str, Any]) -> list[str]:
    """"model: remark" for each fallback a model used (e.g. Firth's fit) and each model not built,
    from a comparison summary (``radfusion train --json``, a bundle's training metrics)."""
    remarks = [f"{name}: {remark}" for name, m in (summary.get("models") or {}).items()
               for remark in m.get("remarks") or []]
    return remarks + [f"{name}: not built: {why}" for name, why in (summary.get("failed_models") or {}).items()]


def _cases(info: Mapping[str, Any]) -> str:
    groups = f", {info['n_groups']} groups" if "n_groups" in info else ""
    return (f"{info.get('n', '?')} cases ({info.get('n_positive', '?')} positive, "
            f"prevalence {number(info.get('prevalence'))}{groups})")


def _cohort_section(cohort: Mapping[str, Any], refit: Mapping[str, Any] | None) -> list[str]:
    shipped = ([f"- the shipped model: refitted on all {_cases(refit)}; the split above validated its "
                "configuration (below)"] if refit else [])
    return ["## Cohort", "", f"- split: {cohort.get('split', '?')}", f"- training: {_cases(cohort.get('train') or {})}",
            f"- internal test: {_cases(cohort.get('test') or {})}", *shipped,
            f"- features: {cohort.get('n_radiomic_features', 0)} radiomic, {cohort.get('n_deep_features', 0)} deep; "
            f"clinical: {', '.join(cohort.get('clinical') or []) or 'none'}", ""]


def _model_section(primary: Mapping[str, Any], manifest: Mapping[str, Any],
                   refit: Mapping[str, Any] | None) -> list[str]:
    extraction = manifest.get("extraction") or {}
    deep = extraction.get("deep") or {}
    field_of_view = extraction.get("field_of_view")
    fitted_on = f"all {refit.get('n', '?')} cases'" if refit else "training"
    return ["## Shipped model", "",
            f"- {primary.get('result')} ({primary.get('feature_set')} features, classifier {primary.get('classifier')}), "
            f"{len(primary['spec'].get('input_columns', []))} input columns",
            f"- decision threshold {number(manifest.get('decision_threshold'))} (Youden, on {fitted_on} out-of-fold "
            "predictions)",
            f"- deep features: {deep.get('backbone', '?')} ({deep.get('weights', '')}), {deep.get('layer', '')}",
            "- radiomic features: PyRadiomics with the params YAML recorded in manifest.json",
            (f"- field of view: every image cut to the ROI's slices ± {field_of_view.get('slice_margin')} and an "
             f"in-plane window of at least {field_of_view.get('in_plane_voxels')} voxels "
             f"({field_of_view.get('in_plane_margin')} beside the ROI), in training and at screening"
             if field_of_view else "- field of view: the whole image as given (features can depend on how far it "
             "extends beyond the ROI)"), ""]


def _metrics_section(models: Mapping[str, Any], metrics: Mapping[str, Any],
                     refit: Mapping[str, Any] | None) -> list[str]:
    validates = (f" These models were developed on the training part only: they validate the configuration "
                 f"of {refit.get('model')}, which the bundle serves refitted on every case." if refit else "")
    lines = ["## Internal test metrics", "",
             f"Best model of each family by nested-CV AUC on the training set; the test set was used once.{validates}",
             "",
             "| family | model | CV AUC (mean ± SD) | test AUC (95% CI, DeLong) | bootstrap CI | sensitivity | specificity |",
             "|---|---|---|---|---|---|---|"]
    for family in FAMILIES:
        candidates = {n: m for n, m in models.items() if m.get("feature_set") == family}
        if not candidates:
            continue
        name, m = max(candidates.items(), key=lambda item: _finite(item[1].get("cv_auc")))
        lines.append(f"| {family} | {name} | {number(m.get('cv_auc'))} ± {number(m.get('cv_auc_sd'))} | "
                     f"{number(m.get('test_auc'))} ({interval(m.get('test_auc_ci'))}) | "
                     f"{interval(m.get('test_auc_ci_bootstrap'))} | "
                     f"{_proportion(m.get('sensitivity'))} | {_proportion(m.get('specificity'))} |")
    lines += ["", f"Best model overall by CV AUC: {metrics.get('best_model')}.", ""]
    remarks = fitting_remarks(metrics)
    if remarks:
        lines += ["Fitting remarks (fallbacks used, models that could not be built):", "",
                  *(f"- {remark}" for remark in remarks), ""]
    for test in metrics.get("delong") or []:
        if test.get("comparison", "").startswith("fused vs"):
            lines.append(f"- DeLong, {test['comparison']}: {test['model']} vs {test['reference']}, "
                         f"difference {number(test.get('difference'))}, p = {number(test.get('p_value'))}")
    return lines + [""]


def _refit_section(refit: Mapping[str, Any]) -> list[str]:
    """The model refitted on every case (``radfusion train --refit-all``): what it was fitted on."""
    calibration = (refit.get("calibration") or {}).get("description", MISSING)
    params = ", ".join(f"{k.split('__')[-1]} = {number(v) if isinstance(v, float) else v}"
                       for k, v in (refit.get("best_params") or {}).items()) or "none"
    return ["## The shipped model, refitted on every case", "",
            f"{refit.get('model')}'s configuration was built again on all {_cases(refit)} by the same rules "
            "(TRIPOD's recommendation for the final model): its hyper-parameters chosen by grouped cross-validation "
            "on all cases, its calibration chosen and fitted on their out-of-fold probabilities, its threshold "
            "Youden's on them. It has no held-out test of its own: the internal test above is its configuration's.",
            "", f"- hyper-parameters: {params}; {refit.get('n_features', '?')} features selected",
            f"- nested cross-validated AUC over all cases: {number(refit.get('cv_auc_mean'))} ± "
            f"{number(refit.get('cv_auc_sd'))} (outer folds), pooled {number(refit.get('cv_auc_pooled'))}",
            f"- probability calibration: {calibration}", ""]


def _calibration_section(manifest: Mapping[str, Any], primary: Mapping[str, Any],
                         test_labels: Mapping[str, int] | None) -> list[str]:
    from RadFusionScreenLib.stats import calibration_intercept_slope, hosmer_lemeshow_test

    if primary.get("calibration"):
        return _recorded_calibration(primary["calibration"], primary.get("validation"))
    recorded = ((manifest.get("training") or {}).get("reference") or {}).get("test_predictions") or {}
    cases = [c for c in recorded if test_labels is not None and c in test_labels]
    if len(cases) < 10:
        return ["## Calibration", "", "Not computed (test labels not available to the card).", ""]
    y = np.array([int(test_labels[c]) for c in cases])
    p = np.array([float(recorded[c]) for c in cases])
    hl = hosmer_lemeshow_test(y, p)
    fit = calibration_intercept_slope(y, p, clip=1e-6)
    slope_note = ("; Firth's estimate: the predictions separate the test set perfectly, so the maximum-likelihood "
                  "slope is infinite" if fit.slope_method == "firth" else "")
    return ["## Calibration (shipped model, internal test set)", "",
            "The bundle stores no probability calibration (written before bundles were calibrated): its "
            "probability is the classifier's raw output.", "",
            f"- Hosmer-Lemeshow (10 groups): statistic {hl.statistic:.2f}, df {hl.df}, p = {hl.p_value:.3f}",
            f"- calibration-in-the-large {fit.intercept:.3f} (ideal 0), slope {fit.slope:.3f} (ideal 1){slope_note}",
            f"- mean predicted {p.mean():.3f} vs observed {y.mean():.3f} ({len(y)} cases)", ""] + (
        ["**The probabilities are miscalibrated** (Hosmer-Lemeshow p < 0.05): read them as a ranking "
         "against the decision threshold, and recalibrate on local data before quoting them as risks.", ""]
        if hl.p_value < 0.05 else [])


def _recorded_calibration(record: Mapping[str, Any], validation: Mapping[str, Any] | None = None) -> list[str]:
    """The calibrator and the test set's calibration before and after it, as the bundle recorded them
    (for a model refitted on every case: its configuration's, with that model's own calibrator)."""
    selection = record.get("selection") or {}
    fitted_on = selection.get("fitted_on", "the training out-of-fold probabilities")
    if validation:  # the training set of a model refitted on every case holds the test cases too
        fitted_on = ("the out-of-fold probabilities of every case (the configuration refitted on the outer "
                     "cross-validation folds of all cases)")
    losses = ", ".join(f"{method} {number(value)}" for method, value in (selection.get("log_loss") or {}).items())
    lines = ["## Calibration (shipped model, internal test set)", "",
             f"Probability calibration: **{selection.get('description', MISSING)}**, chosen by nested cross-validation "
             f"(held-out log-loss: {losses or MISSING}; one-standard-error rule towards the simpler method) and "
             f"fitted on {fitted_on}. The decision "
             "threshold is Youden's on the calibrated out-of-fold probabilities, so it is on the scale of the "
             "probability shown.", ""]
    test = record.get("test_set")
    configuration = not test and bool(validation and validation.get("calibration_test_set"))
    if configuration:
        test = validation["calibration_test_set"]
        lines += [f"Checked on the internal test set with the configuration developed on the training part only "
                  f"({validation.get('result')}, its own calibrator: {validation.get('calibrator', MISSING)}); "
                  "the shipped model's calibration cannot be checked on cases it has seen.", ""]
    if not test:
        return lines + ["No test set: the calibration could not be checked on held-out cases.", ""]
    lines += ["| probability | calibration intercept (95% CI) | calibration slope (95% CI) "
              "| Hosmer-Lemeshow χ² (df), p | mean predicted / observed |", "|---|---|---|---|---|"]
    shown = "its calibrated probability" if configuration else "calibrated (shown)"
    for when, label in (("before", "before: the classifier's output"), ("after", f"after: {shown}")):
        m = test.get(when) or {}
        hl = m.get("hosmer_lemeshow") or {}
        hl_text = (MISSING if not hl else f"{number(hl.get('statistic'), 2)} ({hl.get('df')}), "
                   f"p {'< 0.001' if hl['p_value'] < 0.001 else '= ' + number(hl['p_value'])}")
        lines.append(f"| {label} | {_estimate(m, 'intercept')} | {_estimate(m, 'slope')} | {hl_text} | "
                     f"{number(m.get('mean_predicted'))} / {number(m.get('observed_rate'))} |")
    after = test.get("after") or {}
    lines += ["", f"{after.get('n', '?')} test cases; Wald intervals; ideal intercept 0 and slope 1.", ""]
    if ((after.get("hosmer_lemeshow") or {}).get("p_value") or 1.0) < 0.05:
        whose = "The configuration's calibrated probabilities were" if configuration else \
            "The calibrated probabilities are still"
        lines += [f"**{whose} miscalibrated on the test set** (Hosmer-Lemeshow p < 0.05): read them as a ranking "
                  "against the decision threshold, and recalibrate on local data before quoting them as risks.", ""]
    return lines


def _estimate(metrics: Mapping[str, Any], name: str) -> str:
    ci = interval(metrics.get(f"{name}_ci"))
    return number(metrics.get(name)) + ("" if ci == MISSING else f" ({ci})")


def _limitations(cohort: Mapping[str, Any], refit: Mapping[str, Any] | None) -> list[str]:
    lines = ["## Limitations", ""]
    sites = (cohort.get("train") or {}).get("sites")
    if not sites or len(sites) < 2:
        lines.append("- Single site: no harmonisation was possible and transfer to other scanners is unknown.")
    if not cohort.get("clinical"):
        lines.append("- No clinical variables: the nomogram uses the rad-score and deep-score only.")
    lines.append("- Internal validation only (one random split" + (", of the configuration: the shipped model was "
                 "refitted on every case" if refit else "") + "); expect lower performance elsewhere.")
    return lines + [""]


def _finite(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and np.isfinite(value) else -np.inf


def _proportion(value: Any) -> str:
    if not isinstance(value, Mapping):
        return MISSING
    return f"{number(value.get('estimate'))} ({number(value.get('lower'))}–{number(value.get('upper'))})"
