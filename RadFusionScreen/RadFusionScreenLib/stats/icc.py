"""Intraclass correlation of repeated feature measurements (``psych::ICC(x, lmer=FALSE)``).

Vectorised over features: every feature is its own subjects x raters table, analysed by
the two-way ANOVA (subjects + raters) that psych fits with ``aov``. Types (Shrout-Fleiss
names as psych prints them, McGraw-Wong names in brackets):

- ICC1  one-way random, single measure
- ICC2  two-way random, absolute agreement, single = ICC(A,1)
- ICC3  two-way mixed, consistency, single = ICC(C,1)
- ICC1k, ICC2k, ICC3k  the same for the mean of the k raters.

CIs: ICC1/ICC3 (and k) use exact F quantiles; ICC2 (and k) psych's Satterthwaite-type
approximation (McGraw & Wong 1996). psych's default ``lmer=TRUE`` gives different numbers
(variance components truncated at 0); the ANOVA (``lmer=FALSE``) values are computed here.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import stats as _sp

from RadFusionScreenLib.core.errors import InputError
from RadFusionScreenLib.stats._validation import as_float_matrix

ICC_TYPES = ("ICC1", "ICC2", "ICC3", "ICC1k", "ICC2k", "ICC3k")
RESULT_COLUMNS = ("feature", "type", "ICC", "F", "df1", "df2", "p", "lower", "upper")


def _stack_raters(ratings: Sequence[ArrayLike]) -> tuple[np.ndarray, list[str]]:
    """(subjects, raters, features) array and the feature names."""
    if len(ratings) < 2:
        raise InputError(f"ICC needs at least two raters (measurements per subject), got {len(ratings)}")
    first = ratings[0]
    names = [str(c) for c in first.columns] if isinstance(first, pd.DataFrame) else None
    matrices = []
    for index, rater in enumerate(ratings):
        if isinstance(rater, pd.DataFrame) and names is not None and [str(c) for c in rater.columns] != names:
            raise InputError(f"rater {index + 1} does not have the same feature columns, in the same order, as rater 1")
        matrices.append(as_float_matrix(rater, f"rater {index + 1}"))
    shapes = {m.shape for m in matrices}
    if len(shapes) != 1:
        raise InputError(f"all raters must have the same subjects x features shape, got {sorted(shapes)}")
    stacked = np.stack(matrices, axis=1)
    if stacked.shape[0] < 2:
        raise InputError("ICC needs at least two subjects")
    if names is None:
        names = [f"feature_{j + 1}" for j in range(stacked.shape[2])]
    return stacked, names


def _mean_squares(x: np.ndarray) -> dict[str, np.ndarray]:
    n, k, _ = x.shape
    grand = x.mean(axis=(0, 1))
    subject_means = x.mean(axis=1)
    rater_means = x.mean(axis=0)
    # SSE from the residuals themselves: SST - SSB - SSJ cancels catastrophically when ICC ~ 1.
    residuals = x - subject_means[:, None, :] - rater_means[None, :, :] + grand
    ss_subjects = k * np.sum((subject_means - grand) ** 2, axis=0)
    ss_raters = n * np.sum((rater_means - grand) ** 2, axis=0)
    ss_error = np.sum(residuals**2, axis=(0, 1))
    df_error = (n - 1) * (k - 1)
    return {
        "MSB": ss_subjects / (n - 1),
        "MSJ": ss_raters / (k - 1),
        "MSE": ss_error / df_error,
        "MSW": (ss_raters + ss_error) / ((k - 1) + df_error),
    }


def _icc2_interval(ms: dict[str, np.ndarray], icc2: np.ndarray, n: int, k: int, alpha: float):
    """psych's (McGraw-Wong) approximate interval for ICC(A,1), Satterthwaite df ``v``."""
    msb, msj, mse = ms["MSB"], ms["MSJ"], ms["MSE"]
    fj = msj / mse
    vn = (k - 1) * (n - 1) * (k * icc2 * fj + n * (1 + (k - 1) * icc2) - k * icc2) ** 2
    vd = (n - 1) * k**2 * icc2**2 * fj**2 + (n * (1 + (k - 1) * icc2) - k * icc2) ** 2
    v = vn / vd
    f_upper = _sp.f.ppf(1 - alpha / 2, n - 1, v)
    f_lower = _sp.f.ppf(1 - alpha / 2, v, n - 1)
    rater_term = k * msj + (k * n - k - n) * mse
    lower = n * (msb - f_upper * mse) / (f_upper * rater_term + n * msb)
    upper = n * (f_lower * msb - mse) / (rater_term + n * f_lower * msb)
    return lower, upper


def intraclass_correlation(
    ratings: Sequence[ArrayLike],
    alpha: float = 0.05,
    types: Sequence[str] = ICC_TYPES,
) -> pd.DataFrame:
    """ICCs with F tests and confidence intervals for many features at once.

    Mirrors ``psych::ICC(cbind(rater1[, j], rater2[, j], ...), lmer=FALSE, alpha)$results``
    for every feature column j.

    Parameters
    ----------
    ratings : sequence of array_like, each subjects x features
        One table per rater / repeated measurement (e.g. two segmentations), same subjects
        in the same row order. DataFrames must share their columns, which name the features.
    alpha : float
        1 - confidence level of the intervals (psych's ``alpha``; default 0.05 → 95%).
    types : sequence of str
        Subset of ICC1, ICC2, ICC3, ICC1k, ICC2k, ICC3k. ICC(A,1) is "ICC2", ICC(C,1) "ICC3".

    Returns
    -------
    pandas.DataFrame
        Long format, one row per (feature, type): feature, type, ICC, F, df1, df2, p,
        lower, upper. Select e.g. ``result[result.type == "ICC2"].set_index("feature")``.
    """
    unknown = [t for t in types if t not in ICC_TYPES]
    if unknown:
        raise InputError(f"unknown ICC type(s) {unknown}: use {', '.join(ICC_TYPES)}")
    if not 0 < alpha < 1:
        raise InputError(f"alpha must lie strictly between 0 and 1, got {alpha}")
    x, names = _stack_raters(ratings)
    n, k, _ = x.shape
    table = _all_types(_mean_squares(x), n, k, alpha)
    frames = [pd.DataFrame({"feature": names, "type": t, **table[t]}) for t in types]
    return pd.concat(frames, ignore_index=True)[list(RESULT_COLUMNS)]


def _all_types(ms: dict[str, np.ndarray], n: int, k: int, alpha: float) -> dict[str, dict[str, np.ndarray]]:
    msb, msj, mse, msw = ms["MSB"], ms["MSJ"], ms["MSE"], ms["MSW"]
    with np.errstate(divide="ignore", invalid="ignore"):
        icc = {
            "ICC1": (msb - msw) / (msb + (k - 1) * msw),
            "ICC2": (msb - mse) / (msb + (k - 1) * mse + k * (msj - mse) / n),
            "ICC3": (msb - mse) / (msb + (k - 1) * mse),
            "ICC1k": (msb - msw) / msb,
            "ICC2k": (msb - mse) / (msb + (msj - mse) / n),
            "ICC3k": (msb - mse) / msb,
        }
        df1, df_one_way, df_two_way = n - 1, n * (k - 1), (n - 1) * (k - 1)
        f_one_way, f_two_way = msb / msw, msb / mse
        p_one_way, p_two_way = _sp.f.sf(f_one_way, df1, df_one_way), _sp.f.sf(f_two_way, df1, df_two_way)
        # Exact F-based bounds (Shrout & Fleiss) for the one-way and consistency types.
        f1_low = f_one_way / _sp.f.ppf(1 - alpha / 2, df1, df_one_way)
        f1_high = f_one_way * _sp.f.ppf(1 - alpha / 2, df_one_way, df1)
        f3_low = f_two_way / _sp.f.ppf(1 - alpha / 2, df1, df_two_way)
        f3_high = f_two_way * _sp.f.ppf(1 - alpha / 2, df_two_way, df1)
        lower2, upper2 = _icc2_interval(ms, icc["ICC2"], n, k, alpha)
        bounds = {
            "ICC1": ((f1_low - 1) / (f1_low + k - 1), (f1_high - 1) / (f1_high + k - 1)),
            "ICC2": (lower2, upper2),
            "ICC3": ((f3_low - 1) / (f3_low + k - 1), (f3_high - 1) / (f3_high + k - 1)),
            "ICC1k": (1 - 1 / f1_low, 1 - 1 / f1_high),
            "ICC2k": (lower2 * k / (1 + lower2 * (k - 1)), upper2 * k / (1 + upper2 * (k - 1))),
            "ICC3k": (1 - 1 / f3_low, 1 - 1 / f3_high),
        }
    tests = {"1": (f_one_way, df1, df_one_way, p_one_way), "2": (f_two_way, df1, df_two_way, p_two_way)}
    result = {}
    for name in ICC_TYPES:
        f_value, d1, d2, p = tests["1"] if name.startswith("ICC1") else tests["2"]
        result[name] = {
            "ICC": icc[name], "F": f_value, "df1": d1, "df2": d2, "p": p,
            "lower": bounds[name][0], "upper": bounds[name][1],
        }
    return result
