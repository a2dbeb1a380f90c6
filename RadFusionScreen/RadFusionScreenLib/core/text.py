"""How numbers and missing values read in reports, model cards and the Slicer panel."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

MISSING = "—"  # a value that does not exist or could not be computed (never "nan", never "n/a")


def number(value: Any, digits: int = 3) -> str:
    """``value`` with ``digits`` decimals; :data:`MISSING` for None, NaN, infinities and non-numbers."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "__float__"):
        return MISSING
    try:
        value = float(value)
    except (TypeError, ValueError):
        return MISSING
    return f"{value:.{digits}f}" if math.isfinite(value) else MISSING


def interval(values: Sequence[Any] | None, digits: int = 3) -> str:
    """A confidence interval as ``low–high``; :data:`MISSING` when either end is missing."""
    if not values or len(values) != 2:
        return MISSING
    low, high = number(values[0], digits), number(values[1], digits)
    return MISSING if MISSING in (low, high) else f"{low}–{high}"
