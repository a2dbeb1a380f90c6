"""Input checks shared by the statistics modules (private).

Every check raises :class:`~RadFusionScreenLib.core.errors.InputError` with a message that names
the offending argument, so a caller deep inside a pipeline learns which input to fix.
"""

from __future__ import annotations

from numbers import Integral, Real
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from RadFusionScreenLib.core.errors import InputError


def as_float_vector(values: ArrayLike, name: str, length: int | None = None) -> np.ndarray:
    """1-D float array of finite values (optionally of a given length)."""
    try:
        array = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name} must be numeric: {exc}") from None
    if array.ndim == 2 and 1 in array.shape:
        array = array.ravel()
    if array.ndim != 1:
        raise InputError(f"{name} must be one-dimensional, got shape {array.shape}")
    if length is not None and array.size != length:
        raise InputError(f"{name} has {array.size} values, expected {length} (one per sample)")
    if not np.all(np.isfinite(array)):
        bad = int(np.flatnonzero(~np.isfinite(array))[0])
        raise InputError(f"{name} holds a missing or infinite value (first at position {bad})")
    return array


def as_float_matrix(values: ArrayLike, name: str) -> np.ndarray:
    """2-D float array (samples x features) of finite values; a 1-D input is one column."""
    try:
        array = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name} must be numeric: {exc}") from None
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2:
        raise InputError(f"{name} must be a samples x features table, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        row, col = np.argwhere(~np.isfinite(array))[0]
        raise InputError(f"{name} holds a missing or infinite value (row {row}, column {col})")
    return array


def as_binary_outcome(values: ArrayLike, name: str = "y", require_both: bool = True) -> np.ndarray:
    """0/1 integer outcome vector (1 = event/case); booleans are accepted."""
    array = np.asarray(values)
    if array.dtype == bool:
        array = array.astype(int)
    array = as_float_vector(array, name)
    if not np.all((array == 0) | (array == 1)):
        raise InputError(f"{name} must hold only 0 (control) and 1 (case), found {np.unique(array)[:5]}")
    outcome = array.astype(int)
    if require_both and (outcome.min() == outcome.max()):
        raise InputError(f"{name} holds only {'cases' if outcome[0] else 'controls'}: both classes are needed")
    return outcome


def as_probability_vector(values: ArrayLike, name: str, length: int | None = None) -> np.ndarray:
    """Predicted probabilities in [0, 1]."""
    array = as_float_vector(values, name, length)
    if np.any((array < 0) | (array > 1)):
        raise InputError(f"{name} must be probabilities in [0, 1], found range [{array.min()}, {array.max()}]")
    return array


def check_conf_level(conf_level: float) -> float:
    if not 0 < conf_level < 1:
        raise InputError(f"conf_level must lie strictly between 0 and 1, got {conf_level}")
    return float(conf_level)


def label_key(value: Any) -> str:
    """Canonical text of a batch/level label, so 2, 2.0, np.int64(2) and "2" are one label."""
    if isinstance(value, (bool, np.bool_)):
        return str(int(value))
    if isinstance(value, Integral):
        return str(int(value))
    if isinstance(value, Real):
        number = float(value)
        return str(int(number)) if number.is_integer() else repr(number)
    return str(value)


def sorted_labels(keys: set[str] | list[str]) -> list[str]:
    """Sort labels numerically when all are numbers (as R sorts a numeric factor), else as text."""
    unique = sorted(set(keys))
    try:
        return sorted(unique, key=float)
    except ValueError:
        return unique


def check_format(data: Any, expected_format: str, expected_version: Any, what: str) -> None:
    """A serialised-parameters dict must name our format and a version this engine reads."""
    if not isinstance(data, dict) or data.get("format") != expected_format:
        raise InputError(f"not {what}: expected format {expected_format!r}")
    if data.get("format_version") != expected_version:
        raise InputError(f"{what} have format version {data.get('format_version')!r}; "
                         f"this engine reads version {expected_version}")
