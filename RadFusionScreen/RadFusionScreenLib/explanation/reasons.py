"""Why one case scored as it did, and how good the model is at its threshold.

- :func:`case_contributions`: SHAP values of the bundle's fused (primary) model for one case,
  without the ``shap`` package (see :mod:`.explain` for why), on the bundle's own model
  (numpy / native boosters, no scikit-learn, so it serves in Slicer):

  ==========================  ==========================================================
  LightGBM / XGBoost           native exact TreeSHAP (``pred_contrib`` / ``pred_contribs``),
                               log-odds; base value = the booster's expected output
  logistic regression          exact linear SHAP β_j·z_j on the standardised inputs, i.e.
                               against the training mean (the scaler's centre), log-odds
  other families               not explained here (the reason is given)
  ==========================  ==========================================================

  In every case ``base + Σ contributions`` is the model's log-odds, so
  ``expit(base + Σ) == probability`` (a test checks this on the shipped bundle). That is the
  classifier's own, *uncalibrated* probability: a calibrated bundle shows its calibration map
  of it (:mod:`RadFusionScreenLib.model.calibration`, monotone, so the order of cases and the
  direction of every contribution hold), and the case report says so.
- :func:`feature_label`: a readable name (family · filter · feature; "CNN feature n").
- :func:`operating_point`: sensitivity and specificity of the shipped model at its decision
  threshold on the bundle's internal test set (counts recovered from the recorded rates and
  the test cohort's size, Wilson 95 % intervals), and PPV / NPV at the training prevalence
  (Bayes' rule; logit intervals of Mercaldo, Lau & Zhou, Stat Med 2007;26:2170). For a model
  refitted on every case, those of its configuration, developed without the test cases.

Nothing here imports scikit-learn, matplotlib, Qt or Slicer.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping

import numpy as np
import pandas as pd

FAMILIES = {
    "shape": "Shape (3D)", "shape2D": "Shape (2D)", "firstorder": "First order", "glcm": "GLCM",
    "glrlm": "GLRLM", "glszm": "GLSZM", "gldm": "GLDM", "ngtdm": "NGTDM",
}
_ACRONYMS = ("MCC", "IDMN", "IDN", "IMC1", "IMC2", "ID", "IDM", "GLN", "GLNN", "RLN", "RLNN", "SZN", "SZNN",
             "DN", "DNN", "MeshVolume", "VoxelVolume")
_DEEP = re.compile(r"^deep_[A-Za-z0-9]+_(\d+)$")


def feature_label(name: str) -> str:
    """A readable feature name: ``Family · filter · Feature words`` for PyRadiomics names,
    ``CNN feature n`` for deep features, the name itself otherwise."""
    name = str(name)
    deep = _DEEP.match(name)
    if deep:
        return f"CNN feature {int(deep.group(1))}"
    parts = name.split("_")
    if len(parts) >= 3 and parts[-2] in FAMILIES:
        image_type = "_".join(parts[:-2])
        return f"{FAMILIES[parts[-2]]} · {_filter_label(image_type)} · {_words(parts[-1])}"
    return name


def _filter_label(image_type: str) -> str:
    if image_type == "original":
        return "original image"
    if image_type.startswith("wavelet-"):
        return f"wavelet {image_type.split('-', 1)[1]}"
    sigma = re.match(r"log-sigma-(\d+)-(\d+)-mm", image_type)
    if sigma:
        return f"LoG σ {sigma.group(1)}.{sigma.group(2)} mm"
    return image_type.replace("-", " ")


def _words(feature: str) -> str:
    if feature in _ACRONYMS:
        return feature
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", " ", feature)


# ================================================================ SHAP for one case
def case_contributions(bundle_model: Any, frame: pd.DataFrame) -> dict[str, Any]:
    """SHAP contributions (log-odds) of ``bundle_model`` (a :class:`~.bundle.BundleModel`)
    for the first row of ``frame``.

    Returns ``{"method", "output", "base", "log_odds", "probability" (the model's own,
    uncalibrated), "contributions": [{"feature", "label", "value", "shap"}, ...] largest |shap|
    first}``, or ``{"method": None, "reason": ...}`` when the model family is not explained here.
    """
    from scipy.special import logit

    classifier = bundle_model._classifier
    kind = type(classifier).__name__
    stages = bundle_model.transform(frame.iloc[[0]])
    model_input = next(reversed(stages.values())).to_numpy(dtype=float)
    names = list(bundle_model.input_names)
    if "components" in stages:
        return {"method": None, "reason": "the model works on principal components: per-feature SHAP values "
                                          "are not computed for one case"}
    raw = stages.get("raw")
    if kind == "_LightGBM":
        values = np.asarray(classifier.booster.predict(model_input, pred_contrib=True, num_threads=1), dtype=float)[0]
        method = "LightGBM native TreeSHAP (exact, log-odds)"
        phi, base = values[:-1], float(values[-1])
    elif kind == "_XGBoost":
        import xgboost

        values = np.asarray(classifier.booster.predict(xgboost.DMatrix(model_input), pred_contribs=True), dtype=float)
        phi, base = values.reshape(-1)[:-1], float(values.reshape(-1)[-1])
        method = "XGBoost native TreeSHAP (exact, log-odds)"
    elif kind == "_Logistic" and "scaled" in stages:
        phi = np.asarray(classifier.coef, dtype=float) * model_input[0]
        base = float(classifier.intercept)
        method = "exact linear SHAP against the training mean (standardised inputs, log-odds)"
    else:
        return {"method": None, "reason": f"per-case SHAP values are not computed for a {kind.strip('_')} model"}
    probability = float(bundle_model.predict_proba(frame.iloc[[0]])[0])
    log_odds = float(logit(np.clip(probability, 1e-15, 1 - 1e-15)))
    rows = []
    for j, name in enumerate(names):
        value = float(raw[name].iloc[0]) if raw is not None and name in raw.columns else float(model_input[0, j])
        rows.append({"feature": name, "label": feature_label(name), "value": value, "shap": float(phi[j])})
    rows.sort(key=lambda r: -abs(r["shap"]))
    return {"method": method, "output": "log-odds", "base": base, "log_odds": log_odds,
            "probability": probability, "contributions": rows}


# ====================================================================== operating point
def operating_point(manifest: Mapping[str, Any], conf_level: float = 0.95) -> dict[str, Any] | None:
    """The shipped model's operating point at its decision threshold (see the module doc);
    ``None`` when the bundle records no test-set rates."""
    from RadFusionScreenLib.stats import binomial_confidence_interval

    primary = (manifest.get("models") or {}).get("primary") or {}
    validation = primary.get("validation")  # a model refitted on every case: its configuration's test
    metrics = (validation or primary).get("metrics") or {}
    cohort = (manifest.get("training") or {}).get("cohort") or {}
    test, train = cohort.get("test") or {}, cohort.get("train") or {}
    sensitivity, specificity = metrics.get("test_sensitivity"), metrics.get("test_specificity")
    if sensitivity is None or specificity is None or not test.get("n") or not train.get("n"):
        return None
    positives = int(test["n_positive"])
    negatives = int(test["n"]) - positives
    tp, tn = round(sensitivity * positives), round(specificity * negatives)
    if abs(tp / positives - sensitivity) > 1e-9 or abs(tn / negatives - specificity) > 1e-9:
        return None  # the rates are not count ratios of this test set: no honest interval
    prevalence = float(train["n_positive"]) / float(train["n"])
    z = float(_normal_quantile(0.5 + conf_level / 2))

    def proportion(successes: int, trials: int) -> dict[str, Any]:
        low, high = binomial_confidence_interval(successes, trials, "wilson", conf_level)
        return {"estimate": successes / trials, "lower": low, "upper": high, "successes": successes, "trials": trials}

    ppv, npv = _predictive_values(tp, positives, tn, negatives, prevalence, z)
    threshold = float(manifest.get("decision_threshold", primary.get("threshold", float("nan"))))
    source = (f"the bundle's internal test set ({int(test['n'])} cases, {positives} positive), "
              "used once after the model and its threshold were fixed")
    if validation:  # the rates are the procedure's: its model without the test cases, at its own Youden threshold
        source += (f"; measured on the same configuration developed without those cases, at its own threshold "
                   f"{float(validation.get('threshold', float('nan'))):.3f}; the shipped model is that "
                   "configuration refitted on every case")
    return {
        "model": primary.get("result"), "threshold": threshold,
        "threshold_rule": "Youden's J on the training set's out-of-fold predictions",
        "source": source,
        "sensitivity": proportion(tp, positives), "specificity": proportion(tn, negatives),
        "prevalence": prevalence, "ppv": ppv, "npv": npv, "conf_level": conf_level,
        "ci_method": "Wilson (sensitivity, specificity); logit, Mercaldo et al. 2007 (PPV, NPV at the "
                     "training prevalence)",
        "test_auc": metrics.get("test_auc"),
        "test_auc_ci": [metrics.get("test_auc_delong_lower"), metrics.get("test_auc_delong_upper")],
    }


def _predictive_values(tp: int, n1: int, tn: int, n0: int, prevalence: float, z: float) -> tuple[dict, dict]:
    """PPV and NPV at ``prevalence`` with Mercaldo's logit intervals (the adjusted form, adding
    z²/2 to each count, when a rate is 0 or 1 and the plain logit is undefined)."""
    sens, spec = tp / n1, tn / n0
    adjusted = tp in (0, n1) or tn in (0, n0)
    if adjusted:
        sens, spec = (tp + z * z / 2) / (n1 + z * z), (tn + z * z / 2) / (n0 + z * z)
        n1, n0 = n1 + z * z, n0 + z * z
    p = prevalence
    ppv_logit = math.log(sens * p / ((1 - spec) * (1 - p)))
    ppv_se = math.sqrt((1 - sens) / (sens * n1) + spec / ((1 - spec) * n0))
    npv_logit = math.log(spec * (1 - p) / ((1 - sens) * p))
    npv_se = math.sqrt(sens / ((1 - sens) * n1) + (1 - spec) / (spec * n0))

    def value(centre: float, se: float) -> dict[str, Any]:
        return {"estimate": _expit(centre), "lower": _expit(centre - z * se), "upper": _expit(centre + z * se),
                "adjusted": adjusted}

    return value(ppv_logit, ppv_se), value(npv_logit, npv_se)


def _expit(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _normal_quantile(q: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(q))
