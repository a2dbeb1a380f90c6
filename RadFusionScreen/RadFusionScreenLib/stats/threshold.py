"""Operating point of a risk score: Youden threshold and the metrics at a fixed threshold.

The threshold is chosen on training data (:func:`youden_threshold`) and then applied
unchanged to test data (:func:`threshold_metrics`). A sample is called positive when
``p >= threshold``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import stats as _sp

from RadFusionScreenLib.core.errors import InputError
from RadFusionScreenLib.stats._validation import as_binary_outcome, as_float_vector, check_conf_level

CI_METHODS = ("wilson", "clopper-pearson")


@dataclass(frozen=True)
class Proportion:
    """A proportion with its binomial confidence interval (NaN when ``trials`` is 0)."""

    estimate: float
    lower: float
    upper: float
    successes: int
    trials: int


@dataclass(frozen=True)
class ThresholdMetrics:
    """Confusion counts and the five classic metrics at one threshold (positive: p >= threshold)."""

    threshold: float
    tp: int
    fp: int
    tn: int
    fn: int
    sensitivity: Proportion
    specificity: Proportion
    accuracy: Proportion
    ppv: Proportion
    npv: Proportion
    ci_method: str
    conf_level: float

    def to_frame(self) -> pd.DataFrame:
        """One row per metric: estimate, lower, upper, successes, trials."""
        rows = {
            f.name: vars(getattr(self, f.name))
            for f in fields(self)
            if isinstance(getattr(self, f.name), Proportion)
        }
        return pd.DataFrame.from_dict(rows, orient="index")


def binomial_confidence_interval(
    successes: int, trials: int, method: str = "wilson", conf_level: float = 0.95
) -> tuple[float, float]:
    """Two-sided confidence interval of a binomial proportion.

    ``"wilson"``: Wilson score interval without continuity correction (as
    ``prop.test(correct=FALSE)$conf.int`` / ``binom::binom.wilson``).
    ``"clopper-pearson"``: exact interval from beta quantiles (as ``binom.test()$conf.int``).

    Parameters
    ----------
    successes, trials : int
        Counts, 0 <= successes <= trials. With ``trials == 0`` both bounds are NaN.
    method : {"wilson", "clopper-pearson"}
    conf_level : float
    """
    conf_level = check_conf_level(conf_level)
    if method not in CI_METHODS:
        raise InputError(f"unknown CI method {method!r}: use one of {', '.join(CI_METHODS)}")
    if not 0 <= successes <= trials:
        raise InputError(f"need 0 <= successes <= trials, got {successes} of {trials}")
    if trials == 0:
        return float("nan"), float("nan")
    alpha = 1 - conf_level
    if method == "clopper-pearson":
        lower = _sp.beta.ppf(alpha / 2, successes, trials - successes + 1) if successes > 0 else 0.0
        upper = _sp.beta.ppf(1 - alpha / 2, successes + 1, trials - successes) if successes < trials else 1.0
        return float(lower), float(upper)
    z = _sp.norm.ppf(1 - alpha / 2)
    denominator = trials + z**2
    centre = (successes + z**2 / 2) / denominator
    half_width = z / denominator * np.sqrt(successes * (trials - successes) / trials + z**2 / 4)
    return float(max(0.0, centre - half_width)), float(min(1.0, centre + half_width))


def _proportion(successes: int, trials: int, method: str, conf_level: float) -> Proportion:
    lower, upper = binomial_confidence_interval(successes, trials, method, conf_level)
    estimate = successes / trials if trials else float("nan")
    return Proportion(estimate, lower, upper, int(successes), int(trials))


def threshold_metrics(
    y: ArrayLike,
    p: ArrayLike,
    threshold: float,
    ci_method: str = "wilson",
    conf_level: float = 0.95,
) -> ThresholdMetrics:
    """Sensitivity, specificity, accuracy, PPV and NPV at a fixed threshold, with binomial CIs.

    Mirrors ``pROC::coords(roc, x=threshold, ret=c("sensitivity", "specificity", "accuracy",
    "ppv", "npv"))`` for the point estimates (positive when ``p >= threshold``); each
    interval is a per-metric binomial interval (Wilson score by default, or Clopper-Pearson).
    PPV/NPV are NaN when nothing is called positive/negative.

    Parameters
    ----------
    y : array_like of 0/1
        Outcome, 1 = case.
    p : array_like
        Score or probability.
    threshold : float
        Fixed in advance, e.g. by :func:`youden_threshold` on training data.
    ci_method : {"wilson", "clopper-pearson"}
    conf_level : float
    """
    outcome = as_binary_outcome(y, require_both=False)
    scores = as_float_vector(p, "p", outcome.size)
    called_positive = scores >= float(threshold)
    tp = int(np.sum(called_positive & (outcome == 1)))
    fp = int(np.sum(called_positive & (outcome == 0)))
    fn = int(np.sum(~called_positive & (outcome == 1)))
    tn = int(np.sum(~called_positive & (outcome == 0)))
    metric = lambda k, n: _proportion(k, n, ci_method, conf_level)  # noqa: E731
    return ThresholdMetrics(
        float(threshold), tp, fp, tn, fn,
        sensitivity=metric(tp, tp + fn),
        specificity=metric(tn, tn + fp),
        accuracy=metric(tp + tn, outcome.size),
        ppv=metric(tp, tp + fp),
        npv=metric(tn, tn + fn),
        ci_method=ci_method,
        conf_level=conf_level,
    )


def youden_threshold(y: ArrayLike, p: ArrayLike) -> float:
    """Threshold maximising Youden's J = sensitivity + specificity - 1 on (training) data.

    Mirrors ``pROC::coords(roc, "best", best.method="youden")``: candidate thresholds are
    the midpoints between consecutive distinct scores, so no training score lies on the
    threshold. When several thresholds reach the same J, the lowest (most sensitive) one is
    returned, a screening-friendly choice (pROC would return them all).

    Parameters
    ----------
    y : array_like of 0/1
        Training outcome, 1 = case.
    p : array_like
        Training scores; higher means case.
    """
    outcome = as_binary_outcome(y)
    scores = as_float_vector(p, "p", outcome.size)
    distinct = np.unique(scores)
    if distinct.size < 2:
        raise InputError("p has a single distinct value: no threshold can separate cases from controls")
    candidates = (distinct[:-1] + distinct[1:]) / 2
    cases = np.sort(scores[outcome == 1])
    controls = np.sort(scores[outcome == 0])
    sensitivity = 1 - np.searchsorted(cases, candidates, side="left") / cases.size
    specificity = np.searchsorted(controls, candidates, side="left") / controls.size
    youden = sensitivity + specificity - 1
    # Tolerance so that float noise in J does not decide between genuinely tied thresholds.
    best = np.flatnonzero(youden >= youden.max() - 1e-12)
    return float(candidates[best[0]])
