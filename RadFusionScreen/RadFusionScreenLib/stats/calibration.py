"""Calibration of predicted probabilities: Hosmer-Lemeshow test, calibration curve, slope.

Grouping follows ``ResourceSelection::hoslem.test``: break points are the distinct type-7
quantiles of p; bins are right-closed ``(b[k-1], b[k]]`` with the first one closed
``[b0, b1]`` (R's ``cut(p, breaks, include.lowest=TRUE)``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import stats as _sp
from scipy.special import logit

from RadFusionScreenLib.core.errors import InputError
from RadFusionScreenLib.stats._validation import as_binary_outcome, as_probability_vector
from RadFusionScreenLib.stats.logistic import fit_logistic_or_firth, fit_logistic_regression
from RadFusionScreenLib.stats.threshold import binomial_confidence_interval


@dataclass(frozen=True)
class HosmerLemeshowResult:
    """Hosmer-Lemeshow goodness of fit; ``groups`` has one row per non-empty group."""

    statistic: float
    df: int
    p_value: float
    n_groups_requested: int
    n_groups: int  # non-empty groups G; df = G - 2
    breaks: np.ndarray
    groups: pd.DataFrame


@dataclass(frozen=True)
class CalibrationFit:
    """Logistic recalibration of predictions on logit(p).

    ``intercept``: calibration-in-the-large, the intercept of ``y ~ offset(logit p)``
    (0 when the mean risk is right). ``slope``: the coefficient of ``y ~ logit p``
    (1 when predictions are neither too extreme nor too modest);
    ``intercept_with_slope`` is that model's own intercept. ``slope_method`` is "ml", or
    "firth" when logit(p) separates the outcome perfectly (a test set the model ranks
    without error): the ML slope is then infinite and Firth's finite estimate is given.
    """

    intercept: float
    slope: float
    intercept_with_slope: float
    intercept_se: float
    slope_se: float
    slope_method: str = "ml"


def quantile_type7(values: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """R's default ``quantile(x, probs, type=7)``, with R's own interpolation arithmetic."""
    ordered = np.sort(values)
    index = (ordered.size - 1) * probs  # 0-based version of R's 1 + (n-1)p
    lo = np.floor(index).astype(int)
    hi = np.ceil(index).astype(int)
    result = ordered[lo].copy()
    h = index - lo
    interpolate = (index > lo) & (ordered[hi] != result)
    result[interpolate] = (1 - h[interpolate]) * result[interpolate] + h[interpolate] * ordered[hi[interpolate]]
    return result


def quantile_groups(p: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Group index (0-based) of each p and the distinct quantile breaks, as hoslem.test cuts.

    Repeated breaks (ties in p) are merged, so fewer than ``n_groups`` groups may result.
    """
    if int(n_groups) < 2:
        raise InputError(f"the number of groups must be at least 2, got {n_groups}")
    probs = np.arange(n_groups + 1) / n_groups  # R: seq(0, 1, 1/g)
    breaks = np.unique(quantile_type7(p, probs))
    if breaks.size < 2:
        raise InputError("all predicted probabilities are equal: they cannot be grouped")
    # side="left" gives k with b[k-1] < p <= b[k]; p == b0 joins the first bin.
    group = np.clip(np.searchsorted(breaks, p, side="left"), 1, breaks.size - 1) - 1
    return group, breaks


def hosmer_lemeshow_test(y: ArrayLike, p: ArrayLike, g: int = 10) -> HosmerLemeshowResult:
    """Hosmer-Lemeshow goodness-of-fit test (``ResourceSelection::hoslem.test(y, p, g)``).

    Statistic = Σ over groups and both outcome columns of (O - E)² / E, with E1 = Σp and
    E0 = Σ(1 - p) in each group; df = G - 2 where G counts the non-empty groups (fewer
    than ``g`` when quantile breaks repeat, as they do when p has ties);
    p = P(χ²_df > statistic).

    Parameters
    ----------
    y : array_like of 0/1
        Observed outcome, 1 = event.
    p : array_like
        Predicted probability of the event.
    g : int
        Requested number of groups (default 10).
    """
    outcome = as_binary_outcome(y, require_both=False)
    probs = as_probability_vector(p, "p", outcome.size)
    group, breaks = quantile_groups(probs, g)
    table = _group_table(outcome, probs, group, breaks)
    table = table[table["n"] > 0].reset_index(drop=True)
    observed = table[["observed_0", "observed_1"]].to_numpy(float)
    expected = table[["expected_0", "expected_1"]].to_numpy(float)
    if np.any(expected == 0):
        raise InputError(
            "a Hosmer-Lemeshow group has an expected count of 0 (predicted probabilities of exactly 0 or 1): "
            "the statistic is undefined"
        )
    statistic = float(np.sum((observed - expected) ** 2 / expected))
    n_groups = len(table)
    df = n_groups - 2
    if df < 1:
        raise InputError(f"only {n_groups} distinct probability groups: Hosmer-Lemeshow needs at least 3")
    return HosmerLemeshowResult(statistic, df, float(_sp.chi2.sf(statistic, df)), int(g), n_groups, breaks, table)


def _group_table(outcome: np.ndarray, probs: np.ndarray, group: np.ndarray, breaks: np.ndarray) -> pd.DataFrame:
    n_bins = breaks.size - 1
    count = lambda weights: np.bincount(group, weights=weights, minlength=n_bins)  # noqa: E731
    events = count(outcome.astype(float))
    expected_events = count(probs)
    n = np.bincount(group, minlength=n_bins)
    return pd.DataFrame(
        {
            "lower": breaks[:-1],
            "upper": breaks[1:],
            "n": n,
            "observed_0": n - events,
            "observed_1": events,
            "expected_0": n - expected_events,
            "expected_1": expected_events,
        }
    )


def calibration_curve(
    y: ArrayLike,
    p: ArrayLike,
    n_bins: int = 10,
    strategy: str = "quantile",
    conf_level: float = 0.95,
) -> pd.DataFrame:
    """Binned observed event rate against mean predicted probability (for a calibration plot).

    ``strategy="quantile"`` bins as :func:`hosmer_lemeshow_test` does (same groups);
    ``"uniform"`` uses equal-width bins on [0, 1], right-closed, the first closed.
    Empty bins are dropped. The observed rate has a Wilson interval.

    Parameters
    ----------
    y : array_like of 0/1
    p : array_like of probabilities
    n_bins : int
    strategy : {"quantile", "uniform"}
    conf_level : float

    Returns
    -------
    pandas.DataFrame
        Columns lower, upper (bin edges), n, mean_predicted, observed_rate,
        observed_lower, observed_upper.
    """
    outcome = as_binary_outcome(y, require_both=False)
    probs = as_probability_vector(p, "p", outcome.size)
    if strategy == "quantile":
        group, breaks = quantile_groups(probs, n_bins)
    elif strategy == "uniform":
        breaks = np.linspace(0.0, 1.0, int(n_bins) + 1)
        group = np.clip(np.searchsorted(breaks, probs, side="left"), 1, breaks.size - 1) - 1
    else:
        raise InputError(f"unknown binning strategy {strategy!r}: use 'quantile' or 'uniform'")
    table = _group_table(outcome, probs, group, breaks)
    table = table[table["n"] > 0].reset_index(drop=True)
    intervals = [
        binomial_confidence_interval(int(k), int(n), "wilson", conf_level)
        for k, n in zip(table["observed_1"], table["n"])
    ]
    return pd.DataFrame(
        {
            "lower": table["lower"],
            "upper": table["upper"],
            "n": table["n"],
            "mean_predicted": table["expected_1"] / table["n"],
            "observed_rate": table["observed_1"] / table["n"],
            "observed_lower": [lo for lo, _ in intervals],
            "observed_upper": [hi for _, hi in intervals],
        }
    )


def calibration_intercept_slope(y: ArrayLike, p: ArrayLike, clip: float | None = None) -> CalibrationFit:
    """Calibration intercept (in-the-large) and slope by logistic regression on logit(p).

    As ``rms::val.prob`` (slope and its intercept: ``glm(y ~ logit(p), binomial)``) and the
    calibration-in-the-large of Van Calster et al. (``glm(y ~ 1, offset = logit(p))``).

    Parameters
    ----------
    y : array_like of 0/1
    p : array_like of probabilities
        Must lie strictly inside (0, 1) unless ``clip`` is given.
    clip : float, optional
        If given, p is clipped to [clip, 1 - clip] first (for models that output exact
        0 or 1, such as random forests). Report it: the slope depends on it.
    """
    outcome = as_binary_outcome(y)
    probs = as_probability_vector(p, "p", outcome.size)
    if clip is not None:
        probs = np.clip(probs, clip, 1 - clip)
    if np.any((probs <= 0) | (probs >= 1)):
        raise InputError("p holds exact 0 or 1, whose logit is infinite: pass clip=1e-6 (or similar)")
    log_odds = logit(probs)
    offset_fit = fit_logistic_regression(np.empty((outcome.size, 0)), outcome, offset=log_odds)
    slope_fit = fit_logistic_or_firth(log_odds[:, None], outcome, feature_names=["logit_p"])
    return CalibrationFit(
        intercept=float(offset_fit.coefficients[0]),
        slope=float(slope_fit.coefficients[1]),
        intercept_with_slope=float(slope_fit.coefficients[0]),
        intercept_se=float(offset_fit.standard_errors[0]),
        slope_se=float(slope_fit.standard_errors[1]),
        slope_method=slope_fit.method,
    )
