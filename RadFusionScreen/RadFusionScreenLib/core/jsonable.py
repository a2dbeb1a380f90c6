"""One conversion to plain JSON types, for manifests, summaries and results."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from typing import Any, Literal

import numpy as np


def to_jsonable(value: Any, unknown: Literal["raise", "repr", "str"] | Callable[[Any], Any] = "raise") -> Any:
    """A copy made of dict (str keys), list, str, int, float, bool and None: numpy scalars and
    arrays, pandas Series and tuples unpacked, NaN and +/-inf as None, paths as strings.

    Any other object is an error (``unknown="raise"``: TypeError naming it), or its ``repr`` /
    ``str`` (e.g. a harmonizer template in a settings record), or ``unknown(value)`` when
    ``unknown`` is a function (e.g. one raising the caller's own error).
    """
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v, unknown) for k, v in value.items()}
    if hasattr(value, "tolist") and not isinstance(value, np.generic):  # arrays, Series, Index
        return to_jsonable(value.tolist(), unknown)
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v, unknown) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if callable(unknown):
        return unknown(value)
    if unknown == "repr":
        return repr(value)
    if unknown == "str":
        return str(value)
    raise TypeError(f"a {type(value).__name__} is not JSON data: {value!r}")
