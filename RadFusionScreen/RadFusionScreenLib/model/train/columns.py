"""Which columns of a cohort table form each feature set (clinical, radiomic, deep, fused)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import pandas as pd

from RadFusionScreenLib.core.errors import InputError

FEATURE_SETS = ("clinical", "radiomic", "deep", "fused")
# pyradiomics image-type prefixes, and IBSI family tags (``--names ibsi`` tables)
RADIOMIC_PREFIXES = (
    "original_", "wavelet", "log-sigma", "square_", "squareroot_", "logarithm_", "exponential_",
    "gradient_", "lbp-2D_", "lbp-3D",
    "morph_", "stat_", "ih_", "cm_", "rlm_", "szm_", "ngl_", "ngt_",
)
DEEP_PREFIX = "deep_"


@dataclass(frozen=True)
class FeatureColumns:
    """Which columns of the cohort table form each feature set."""

    radiomic: tuple[str, ...] = ()
    deep: tuple[str, ...] = ()
    clinical: tuple[str, ...] = ()

    def for_set(self, feature_set: str) -> tuple[str, ...]:
        """Columns of one feature set; "fused" is radiomic + deep."""
        sets = {"clinical": self.clinical, "radiomic": self.radiomic, "deep": self.deep,
                "fused": self.radiomic + self.deep}
        if feature_set not in sets:
            raise InputError(f"unknown feature set {feature_set!r}: use {', '.join(FEATURE_SETS)}")
        return sets[feature_set]


def infer_feature_columns(table: pd.DataFrame, clinical: Sequence[str] = ()) -> FeatureColumns:
    """Radiomic columns by pyradiomics / IBSI name prefix, deep columns by ``deep_``.

    Clinical predictors cannot be recognised by name: list them in ``clinical``.
    """
    missing = [c for c in clinical if c not in table.columns]
    if missing:
        raise InputError(f"clinical column(s) {missing} are not in the table")
    numeric = [str(c) for c in table.columns if pd.api.types.is_numeric_dtype(table[c])]
    radiomic = tuple(c for c in numeric if c.startswith(RADIOMIC_PREFIXES))
    deep = tuple(c for c in numeric if c.startswith(DEEP_PREFIX))
    return FeatureColumns(radiomic=radiomic, deep=deep, clinical=tuple(map(str, clinical)))
