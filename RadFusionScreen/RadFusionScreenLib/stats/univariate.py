"""Two-group univariate tests per feature: Mann-Whitney U and Welch's t-test (R ``stats``).

Conventions (``wilcox.test(x1, x0, exact=FALSE, correct=TRUE)`` and
``t.test(x1, x0, var.equal=FALSE)``, both two-sided, x1 = the event group):

- W is the U statistic of group 1: its rank sum minus n1(n1+1)/2 (mid-ranks for ties);
- the Mann-Whitney p uses the normal approximation with continuity correction 0.5 and the
  tie-corrected variance. R's default (``exact=NULL``) would use the exact distribution when
  both groups have < 50 samples and there are no ties; ``method="exact"`` gives that;
- Welch's t uses the Satterthwaite df.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import stats as _sp

from RadFusionScreenLib.core.errors import InputError
from RadFusionScreenLib.stats._validation import as_binary_outcome, as_float_matrix, as_float_vector

MANN_WHITNEY_METHODS = ("asymptotic", "exact")


@dataclass(frozen=True)
class MannWhitneyResult:
    w: float  # U statistic of group 1 (R's W)
    p_value: float
    method: str


@dataclass(frozen=True)
class WelchResult:
    t: float
    df: float
    p_value: float
    mean1: float
    mean0: float


def _check_method(method: str) -> str:
    if method not in MANN_WHITNEY_METHODS:
        raise InputError(f"unknown Mann-Whitney method {method!r}: use {' or '.join(MANN_WHITNEY_METHODS)}")
    return method


def mann_whitney_test(x1: ArrayLike, x0: ArrayLike, method: str = "asymptotic") -> MannWhitneyResult:
    """Two-sided Mann-Whitney U / Wilcoxon rank-sum test (``wilcox.test(x1, x0, exact=FALSE)``).

    Parameters
    ----------
    x1, x0 : array_like
        Values of group 1 (events) and group 0.
    method : {"asymptotic", "exact"}
        Normal approximation with continuity correction (default), or the exact
        distribution (R's choice for small samples without ties; ties are not allowed then).
    """
    first, second = as_float_vector(x1, "x1"), as_float_vector(x0, "x0")
    result = _sp.mannwhitneyu(first, second, use_continuity=True, alternative="two-sided", method=_check_method(method))
    return MannWhitneyResult(float(result.statistic), float(result.pvalue), method)


def welch_t_test(x1: ArrayLike, x0: ArrayLike) -> WelchResult:
    """Two-sided Welch two-sample t-test (``t.test(x1, x0, var.equal=FALSE)``)."""
    first, second = as_float_vector(x1, "x1"), as_float_vector(x0, "x0")
    if min(first.size, second.size) < 2:
        raise InputError("Welch's t-test needs at least two values in each group")
    result = _sp.ttest_ind(first, second, equal_var=False)
    return WelchResult(float(result.statistic), float(result.df), float(result.pvalue), first.mean(), second.mean())


def univariate_tests(features: ArrayLike, y: ArrayLike, method: str = "asymptotic") -> pd.DataFrame:
    """Mann-Whitney and Welch tests of every feature column between y = 1 and y = 0.

    Parameters
    ----------
    features : array_like, samples x features
        A DataFrame's columns name the rows of the result.
    y : array_like of 0/1
        Group of each sample; group 1 is x1 in the R calls.
    method : {"asymptotic", "exact"}
        Mann-Whitney p-value method (see :func:`mann_whitney_test`).

    Returns
    -------
    pandas.DataFrame
        Indexed by feature: mannwhitney_W, mannwhitney_p, welch_t, welch_df, welch_p,
        mean_group1, mean_group0.
    """
    data = as_float_matrix(features, "features")
    group = as_binary_outcome(y, "y")
    if group.size != data.shape[0]:
        raise InputError(f"y has {group.size} values for {data.shape[0]} samples")
    x1, x0 = data[group == 1], data[group == 0]
    if min(len(x1), len(x0)) < 2:
        raise InputError("each group needs at least two samples")
    mw = _sp.mannwhitneyu(x1, x0, use_continuity=True, alternative="two-sided", method=_check_method(method), axis=0)
    welch = _sp.ttest_ind(x1, x0, equal_var=False, axis=0)
    names = list(map(str, features.columns)) if isinstance(features, pd.DataFrame) else [
        f"feature_{j + 1}" for j in range(data.shape[1])
    ]
    return pd.DataFrame(
        {
            "mannwhitney_W": mw.statistic,
            "mannwhitney_p": mw.pvalue,
            "welch_t": welch.statistic,
            "welch_df": np.broadcast_to(welch.df, (data.shape[1],)),
            "welch_p": welch.pvalue,
            "mean_group1": x1.mean(axis=0),
            "mean_group0": x0.mean(axis=0),
        },
        index=pd.Index(names, name="feature"),
    )
