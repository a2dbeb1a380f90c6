"""Splitting a cohort without leakage: the training / test split and the cross-validation folds.

Groups (e.g. ``duplicate_group``: images of one patient or near-duplicate images) are never
split: not by :func:`split_cohort`, not by :class:`StratifiedSiteKFold` (outer folds and inner
grid-search folds alike).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, train_test_split

from RadFusionScreenLib.core.errors import InputError


class StratifiedSiteKFold:
    """K folds stratified by label (and by site when X has ``site_column``); groups kept whole.

    Stratifying by label x site keeps every site with at least two cases in every training
    fold, which ComBat needs (it cannot harmonise a site it was not fitted on). With
    ``groups`` (passed to :meth:`split`, e.g. duplicate_group) it is a
    :class:`~sklearn.model_selection.StratifiedGroupKFold`: no group is ever split.
    """

    def __init__(self, n_splits: int = 5, site_column: str | None = None, shuffle: bool = True,
                 random_state: int = 0) -> None:
        self.n_splits = n_splits
        self.site_column = site_column
        self.shuffle = shuffle
        self.random_state = random_state

    def get_n_splits(self, X: Any = None, y: Any = None, groups: Any = None) -> int:
        return self.n_splits

    def split(self, X: Any, y: Any, groups: Any = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        strata = self._strata(X, y)
        state = self.random_state if self.shuffle else None
        if groups is None:
            splitter = StratifiedKFold(self.n_splits, shuffle=self.shuffle, random_state=state)
        else:
            splitter = StratifiedGroupKFold(self.n_splits, shuffle=self.shuffle, random_state=state)
        with warnings.catch_warnings():  # small label x site strata: stratification is best-effort, as intended
            warnings.filterwarnings("ignore", message=".*least populated class.*", category=UserWarning)
            folds = list(splitter.split(np.zeros(len(strata)), strata, groups))
        yield from folds

    def _strata(self, X: Any, y: Any) -> np.ndarray:
        labels = np.asarray(y).astype(str)
        if self.site_column is None or not isinstance(X, pd.DataFrame) or self.site_column not in X.columns:
            return labels
        sites = X[self.site_column].astype(str).to_numpy()
        return np.char.add(np.char.add(labels, "|"), sites.astype(str))


@dataclass
class CohortSplit:
    """Training and test tables and a sentence saying how they were split."""

    train: pd.DataFrame
    test: pd.DataFrame
    description: str


def split_cohort(
    table: pd.DataFrame,
    test_size: float = 0.3,
    seed: int = 0,
    stratify: str | None = "label",
    groups: str | None = None,
    external_site: str | Sequence[str] | None = None,
    site_column: str = "site",
) -> CohortSplit:
    """Split a cohort into training and test sets.

    Parameters
    ----------
    table : DataFrame, one row per case
    test_size : float
        Share of cases (of groups, when ``groups`` is given) for the random test set.
    seed : int
    stratify : str or None
        Label column to stratify on (a group is stratified by its most common label).
    groups : str or None
        Column whose rows must stay together (e.g. ``duplicate_group``; empty = own group).
    external_site : str or list, optional
        External validation instead: the test set is every case of these site(s).
    site_column : str
    """
    table = table.reset_index(drop=True) if not table.index.is_unique else table
    if external_site is not None:
        return _external_split(table, external_site, site_column, groups)
    if not 0 < test_size < 1:
        raise InputError(f"test_size must lie strictly between 0 and 1, got {test_size}")
    group_ids = group_labels(table, groups)
    unique_groups = pd.unique(group_ids)
    strata = None
    if stratify is not None:
        if stratify not in table.columns:
            raise InputError(f"stratify column {stratify!r} is not in the table")
        strata = pd.Series(table[stratify].to_numpy()).groupby(group_ids).agg(lambda s: s.mode().iloc[0])
        strata = strata.loc[unique_groups].to_numpy()
    try:
        _, test_groups = train_test_split(unique_groups, test_size=test_size, random_state=seed, stratify=strata)
    except ValueError as exc:
        raise InputError(f"cannot split the cohort ({exc}); use fewer strata or a larger test_size") from None
    in_test = np.isin(group_ids, test_groups)
    kind = "stratified " if stratify else ""
    kept = f", groups of {groups!r} kept whole" if groups else ""
    return CohortSplit(table[~in_test], table[in_test],
                       f"random {kind}split, test share {test_size:g} (seed {seed}){kept}")


def _external_split(table: pd.DataFrame, external_site: Any, site_column: str, groups: str | None) -> CohortSplit:
    if site_column not in table.columns:
        raise InputError(f"external validation needs a site column; {site_column!r} is not in the table")
    sites = [external_site] if isinstance(external_site, str) or np.isscalar(external_site) else list(external_site)
    site_text = table[site_column].astype(str)
    unknown = [s for s in sites if str(s) not in set(site_text)]
    if unknown:
        raise InputError(f"external site(s) {unknown} not found in column {site_column!r}")
    in_test = site_text.isin([str(s) for s in sites]).to_numpy()
    if in_test.all():
        raise InputError("every case belongs to the external site(s): nothing is left to train on")
    group_ids = group_labels(table, groups)
    straddling = set(group_ids[in_test]) & set(group_ids[~in_test])
    if straddling:
        raise InputError(f"group(s) {sorted(map(str, straddling))[:5]} have cases on both sides of the external split")
    return CohortSplit(table[~in_test], table[in_test], f"external test on site(s) {', '.join(map(str, sites))}")


def group_labels(table: pd.DataFrame, groups: str | None) -> np.ndarray:
    """Group id per row; rows without a group (or no group column) are their own group."""
    own = np.array([f"__row_{i}" for i in range(len(table))], dtype=object)
    if groups is None:
        return own
    if groups not in table.columns:
        raise InputError(f"group column {groups!r} is not in the table")
    values = table[groups].to_numpy(dtype=object)
    empty = pd.isna(values)
    return np.where(empty, own, values.astype(str)).astype(object)
