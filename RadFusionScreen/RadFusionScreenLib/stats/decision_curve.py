"""Decision-curve analysis: net benefit of a model against treat-all and treat-none.

Mirrors ``rmda::decision_curve(y ~ p, fitted.risk=TRUE, policy="opt-in")$derived.data``:
NB(pt) = TP/n - FP/n · pt/(1 - pt); treat-all = prevalence - (1 - prevalence) · pt/(1 - pt);
treat-none = 0; standardised NB = NB / prevalence. rmda calls a sample positive when
``p > pt`` (strict); Vickers' ``dca``/``dcurves`` use ``p >= pt`` (``strict=False``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from RadFusionScreenLib.core.errors import InputError
from RadFusionScreenLib.stats._validation import as_binary_outcome, as_float_vector, as_probability_vector


def default_thresholds() -> np.ndarray:
    """rmda's grid ``round(seq(0.01, 0.99, by=0.01), 2)``."""
    return np.round(np.arange(1, 100) / 100, 2)


def decision_curve(
    y: ArrayLike,
    p: ArrayLike,
    thresholds: ArrayLike | None = None,
    strict: bool = True,
) -> pd.DataFrame:
    """Net benefit over threshold probabilities (``rmda::decision_curve``).

    Parameters
    ----------
    y : array_like of 0/1
        Outcome, 1 = event.
    p : array_like
        Predicted risk in [0, 1].
    thresholds : array_like, optional
        Threshold probabilities in (0, 1); default 0.01, 0.02, ..., 0.99.
    strict : bool
        True (rmda): positive when p > pt. False (dca/dcurves): p >= pt.

    Returns
    -------
    pandas.DataFrame
        One row per threshold: threshold, tp, fp, net_benefit_model, net_benefit_treat_all,
        net_benefit_treat_none, standardized_net_benefit_model.
    """
    outcome = as_binary_outcome(y, require_both=False)
    risk = as_probability_vector(p, "p", outcome.size)
    grid = default_thresholds() if thresholds is None else as_float_vector(thresholds, "thresholds")
    if np.any((grid <= 0) | (grid >= 1)):
        raise InputError("thresholds must lie strictly between 0 and 1")
    positive = risk[None, :] > grid[:, None] if strict else risk[None, :] >= grid[:, None]
    tp = (positive & (outcome == 1)).sum(axis=1)
    fp = (positive & (outcome == 0)).sum(axis=1)
    n = outcome.size
    prevalence = outcome.mean()
    odds = grid / (1 - grid)
    net_benefit = tp / n - fp / n * odds
    return pd.DataFrame(
        {
            "threshold": grid,
            "tp": tp,
            "fp": fp,
            "net_benefit_model": net_benefit,
            "net_benefit_treat_all": prevalence - (1 - prevalence) * odds,
            "net_benefit_treat_none": np.zeros_like(grid),
            "standardized_net_benefit_model": net_benefit / prevalence if prevalence > 0 else np.nan,
        }
    )
