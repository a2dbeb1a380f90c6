"""ROC AUC with confidence intervals and the paired DeLong test (pROC conventions).

Conventions of ``pROC::roc(y, score, levels=c(0, 1), direction="<")``: higher scores mean
"case", so an AUC below 0.5 is reported as such (never flipped); a case-control tie counts
1/2. DeLong variances use the placement values with (m-1) and (n-1) denominators.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats as _sp

from RadFusionScreenLib.core.errors import InputError
from RadFusionScreenLib.stats._validation import as_binary_outcome, as_float_vector, check_conf_level

DEFAULT_N_BOOT = 2000  # pROC's default boot.n
DEFAULT_SEED = 20240601


@dataclass(frozen=True)
class AUCResult:
    """AUC with its confidence interval.

    ``variance`` is the DeLong variance (None for bootstrap); ``n_boot`` and ``seed`` are set
    for bootstrap intervals so that a report can state how the interval was obtained.
    """

    auc: float
    ci_lower: float
    ci_upper: float
    conf_level: float
    method: str
    n_cases: int
    n_controls: int
    variance: float | None = None
    n_boot: int | None = None
    seed: int | None = None


@dataclass(frozen=True)
class DeLongTestResult:
    """Paired DeLong test of two correlated ROC curves (``pROC::roc.test(..., paired=TRUE)``)."""

    auc1: float
    auc2: float
    auc_difference: float  # auc1 - auc2
    variance1: float
    variance2: float
    covariance: float
    z: float
    p_value: float  # two-sided


def _split_scores(y: ArrayLike, score: ArrayLike, name: str) -> tuple[np.ndarray, np.ndarray]:
    outcome = as_binary_outcome(y)
    values = as_float_vector(score, name, length=outcome.size)
    return values[outcome == 1], values[outcome == 0]


def _require_two_per_class(cases: np.ndarray, controls: np.ndarray) -> None:
    if min(cases.size, controls.size) < 2:
        raise InputError(
            f"DeLong variance needs at least 2 cases and 2 controls, got {cases.size} and {controls.size}"
        )


def _placements(cases: np.ndarray, controls: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong placement values V10 (per case) and V01 (per control).

    With mid-ranks, rank among all minus rank among own class counts the other class's
    values below plus half the ties, which is exactly the 1 / 0.5 / 0 kernel of pROC.
    """
    m, n = cases.size, controls.size
    ranks_all = _sp.rankdata(np.concatenate([cases, controls]))
    v10 = (ranks_all[:m] - _sp.rankdata(cases)) / n
    v01 = 1.0 - (ranks_all[m:] - _sp.rankdata(controls)) / m
    return v10, v01


def roc_auc(y: ArrayLike, score: ArrayLike) -> float:
    """Area under the ROC curve, ties counted 1/2 (``pROC::auc`` with ``direction="<"``).

    Parameters
    ----------
    y : array_like of 0/1
        Outcome, 1 = case.
    score : array_like
        Higher values mean "more likely a case".
    """
    cases, controls = _split_scores(y, score, "score")
    v10, _ = _placements(cases, controls)
    return float(v10.mean())


def _delong_components(cases: np.ndarray, controls: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    v10, v01 = _placements(cases, controls)
    return float(v10.mean()), v10, v01


def _normal_ci(auc: float, variance: float, conf_level: float) -> tuple[float, float]:
    half_width = _sp.norm.ppf(0.5 + conf_level / 2) * np.sqrt(variance)
    return max(0.0, auc - half_width), min(1.0, auc + half_width)


def auc_ci_delong(y: ArrayLike, score: ArrayLike, conf_level: float = 0.95) -> AUCResult:
    """AUC with the DeLong confidence interval (``pROC::ci.auc(roc, method="delong")``).

    var = var(V10)/m + var(V01)/n (sample variances); CI = auc ± z·sqrt(var), cut to [0, 1].

    Parameters
    ----------
    y : array_like of 0/1
        Outcome, 1 = case.
    score : array_like
        Predictor; higher means case.
    conf_level : float
        Coverage of the interval.
    """
    conf_level = check_conf_level(conf_level)
    cases, controls = _split_scores(y, score, "score")
    _require_two_per_class(cases, controls)
    auc, v10, v01 = _delong_components(cases, controls)
    variance = float(np.var(v10, ddof=1) / cases.size + np.var(v01, ddof=1) / controls.size)
    lower, upper = _normal_ci(auc, variance, conf_level)
    return AUCResult(auc, lower, upper, conf_level, "delong", cases.size, controls.size, variance=variance)


def _bootstrap_aucs(cases: np.ndarray, controls: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    m, n = cases.size, controls.size
    resampled_cases = cases[rng.integers(0, m, size=(n_boot, m))]
    resampled_controls = controls[rng.integers(0, n, size=(n_boot, n))]
    ranks = _sp.rankdata(np.hstack([resampled_cases, resampled_controls]), axis=1)
    # Mann-Whitney form of the AUC, row by row (mid-ranks count ties 1/2).
    return (ranks[:, :m].sum(axis=1) - m * (m + 1) / 2) / (m * n)


def auc_ci_bootstrap(
    y: ArrayLike,
    score: ArrayLike,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = DEFAULT_SEED,
    conf_level: float = 0.95,
) -> AUCResult:
    """AUC with a stratified percentile bootstrap interval (``pROC::ci.auc(method="bootstrap")``).

    Cases and controls are resampled separately (pROC's ``stratified=TRUE``), ``n_boot``
    times, from ``numpy.random.default_rng(seed)``; the interval is the type-7 (linear)
    quantiles of the bootstrap AUCs. The same seed always gives the same interval.

    Parameters
    ----------
    y : array_like of 0/1
        Outcome, 1 = case.
    score : array_like
        Predictor; higher means case.
    n_boot : int
        Bootstrap replicates (default 2000, as pROC).
    seed : int
        Seed of the random generator (default 20240601).
    conf_level : float
        Coverage of the interval.
    """
    conf_level = check_conf_level(conf_level)
    if int(n_boot) < 2:
        raise InputError(f"n_boot must be at least 2, got {n_boot}")
    cases, controls = _split_scores(y, score, "score")
    auc, _, _ = _delong_components(cases, controls)
    aucs = _bootstrap_aucs(cases, controls, int(n_boot), int(seed))
    alpha = 1 - conf_level
    lower, upper = np.quantile(aucs, [alpha / 2, 1 - alpha / 2])
    return AUCResult(
        auc, float(lower), float(upper), conf_level, "bootstrap", cases.size, controls.size,
        n_boot=int(n_boot), seed=int(seed),
    )


def delong_test(y: ArrayLike, score1: ArrayLike, score2: ArrayLike) -> DeLongTestResult:
    """Paired DeLong test of two ROC curves on the same samples.

    Mirrors ``pROC::roc.test(roc1, roc2, method="delong", paired=TRUE)``:
    z = (auc1 - auc2) / sqrt(v1 + v2 - 2·cov), p = 2Φ(-|z|), where cov is
    ``pROC::cov(roc1, roc2, method="delong")``.

    Parameters
    ----------
    y : array_like of 0/1
        Outcome shared by both scores, 1 = case.
    score1, score2 : array_like
        The two predictors, higher means case.
    """
    cases1, controls1 = _split_scores(y, score1, "score1")
    cases2, controls2 = _split_scores(y, score2, "score2")
    _require_two_per_class(cases1, controls1)
    auc1, v10_1, v01_1 = _delong_components(cases1, controls1)
    auc2, v10_2, v01_2 = _delong_components(cases2, controls2)
    m, n = cases1.size, controls1.size
    s10 = np.cov(np.vstack([v10_1, v10_2]))  # ddof=1
    s01 = np.cov(np.vstack([v01_1, v01_2]))
    covariance_matrix = s10 / m + s01 / n
    var1, var2, cov12 = covariance_matrix[0, 0], covariance_matrix[1, 1], covariance_matrix[0, 1]
    difference = auc1 - auc2
    variance_of_difference = var1 + var2 - 2 * cov12
    if variance_of_difference <= 0:
        # Identical (or perfectly rank-equivalent) curves: no evidence of a difference.
        z, p = 0.0, 1.0
    else:
        z = difference / np.sqrt(variance_of_difference)
        p = 2 * _sp.norm.sf(abs(z))
    return DeLongTestResult(auc1, auc2, difference, float(var1), float(var2), float(cov12), float(z), float(p))
