"""Leakage tests of the cohort model builder (train.py): can a model learn from nothing?

The design rule is that every data-dependent step (imputation, ComBat, filters, LASSO,
classifier) is fitted on training folds only. These tests check it from the outside:

(a) on pure noise (random labels) every classifier family must score AUC 0.5 ± 0.1, both in
    nested cross-validation and on an independent test set;
(b) a planted signal must be found (AUC > 0.85, the planted features selected), so (a) is
    not passing merely because nothing can be learned;
(c) the same check *fails* on a deliberately leaky variant (selection fitted on all rows
    before cross-validation), so the test is able to detect leakage;
(d) groups (duplicate_group) are never split, by the splitter, split_cohort or the
    folds inside compare_models;
(e) ComBat inside the pipeline is fitted on training rows only, checked with a recording
    subclass of the real harmonizer (not a mock).

Data sets are seeded, so results are reproducible. Chance-level margins: with 200 cases the
pooled null AUC has a standard deviation of about 0.04, with the 400-case test set 0.03, so
±0.1 is 2.4 to 3.4 standard deviations; leakage pushes noise AUCs far beyond it.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import Pipeline

from RadFusionScreenLib.core.errors import InputError
from RadFusionScreenLib.model.harmonize import ComBatHarmonizer
from RadFusionScreenLib.stats import roc_auc
from RadFusionScreenLib.model.train import (
    CLASSIFIERS,
    FeatureColumns,
    ModelSettings,
    StratifiedSiteKFold,
    build_pipeline,
    compare_models,
    group_labels,
    split_cohort,
)

N_FEATURES = 1500
N_SIGNAL = 5
CHANCE_MARGIN = 0.1


# ------------------------------------------------------------------------ data
def make_cohort(n_cases: int, n_features: int = N_FEATURES, seed: int = 0, effect: float = 0.0,
                n_sites: int = 2, group_size: int = 1) -> pd.DataFrame:
    """Gaussian features, random 0/1 labels, per-site offsets (for ComBat to remove).

    With ``effect`` > 0 the first N_SIGNAL features are shifted by ``effect`` SDs in cases.
    With ``group_size`` > 1 consecutive rows form a duplicate_group sharing one label.
    """
    rng = np.random.default_rng(seed)
    n_groups = -(-n_cases // group_size)
    labels = np.repeat(rng.integers(0, 2, n_groups), group_size)[:n_cases]
    sites = np.repeat(rng.integers(0, n_sites, n_groups), group_size)[:n_cases]
    features = rng.normal(size=(n_cases, n_features))
    features += rng.normal(scale=0.5, size=(n_sites, n_features))[sites]  # site (scanner) effect
    features[:, :N_SIGNAL] += effect * labels[:, None]
    table = pd.DataFrame(features, columns=[f"original_firstorder_f{j:04d}" for j in range(n_features)])
    table.insert(0, "label", labels)
    table.insert(1, "site", [f"site{s}" for s in sites])
    table.insert(2, "duplicate_group", [f"g{seed}_{i // group_size}" for i in range(n_cases)])
    table.index = [f"case{seed}_{i:04d}" for i in range(n_cases)]
    return table


def radiomic_columns(table: pd.DataFrame) -> FeatureColumns:
    return FeatureColumns(radiomic=tuple(c for c in table.columns if c.startswith("original_")))


def assert_at_chance(auc: float, what: str) -> None:
    assert abs(auc - 0.5) <= CHANCE_MARGIN, f"{what}: AUC {auc:.3f} on pure noise is not 0.5 ± {CHANCE_MARGIN}"


@pytest.fixture(scope="module")
def noise_train() -> pd.DataFrame:
    return make_cohort(200, seed=11)


@pytest.fixture(scope="module")
def noise_test() -> pd.DataFrame:
    return make_cohort(400, seed=12)


# ------------------------------------------------------------------ (a) noise
@pytest.mark.slow
def test_every_model_family_is_at_chance_on_pure_noise(noise_train, noise_test):
    comparison = compare_models(noise_train, noise_test, columns=radiomic_columns(noise_train),
                                feature_sets=("radiomic",), classifiers=CLASSIFIERS, grid="quick",
                                nomogram=False, n_boot=200)
    assert comparison.settings.harmonize, "ComBat should run inside the pipeline here"
    assert {r.classifier for r in comparison.results.values()} == set(CLASSIFIERS)
    for name, result in comparison.results.items():
        assert_at_chance(result.cv_auc_mean, f"{name} nested-CV mean")
        assert_at_chance(result.cv_auc_pooled, f"{name} pooled out-of-fold")
        assert_at_chance(result.test_auc_delong.auc, f"{name} test")
    print("\n" + comparison.summary()[["model", "cv_auc_mean", "cv_auc_sd", "cv_auc_pooled", "test_auc",
                                       "n_features", "seconds"]].round(3).to_string())


# ---------------------------------------------------------------- (b) signal
@pytest.mark.slow
def test_planted_signal_is_found_and_selected():
    train, test = make_cohort(200, seed=21, effect=1.5), make_cohort(400, seed=22, effect=1.5)
    planted = [f"original_firstorder_f{j:04d}" for j in range(N_SIGNAL)]
    comparison = compare_models(train, test, columns=radiomic_columns(train), feature_sets=("radiomic",),
                                classifiers=CLASSIFIERS, grid="quick", nomogram=False, n_boot=200)
    for name, result in comparison.results.items():
        assert result.cv_auc_mean > 0.85, f"{name}: CV AUC {result.cv_auc_mean:.3f}"
        assert result.test_auc_delong.auc > 0.85, f"{name}: test AUC {result.test_auc_delong.auc:.3f}"
        missing = set(planted) - set(result.selected_features)
        assert not missing, f"{name}: planted features {sorted(missing)} not selected"
    print("\n" + comparison.summary()[["model", "cv_auc_mean", "test_auc", "n_features"]].round(3).to_string())


# ------------------------------------------------------------- (c) leakage
def _selection_steps(table: pd.DataFrame) -> Pipeline:
    """Everything of the LR pipeline except the classifier: impute, filters, LASSO."""
    settings = ModelSettings(site_column=None)
    return build_pipeline(radiomic_columns(table).radiomic, "lr", settings)[:-1]


def test_selection_before_cross_validation_is_detected_as_leakage(noise_train):
    y = noise_train["label"].to_numpy()
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    # Leaky: features chosen on all 200 rows, then "cross-validated".
    selected = _selection_steps(noise_train).fit(noise_train, y).transform(noise_train)
    leaky = cross_val_predict(LogisticRegression(max_iter=2000), selected, y, cv=folds, method="predict_proba")[:, 1]
    # Honest: the same steps refitted inside every training fold.
    pipeline = build_pipeline(radiomic_columns(noise_train).radiomic, "lr", ModelSettings(site_column=None))
    honest = cross_val_predict(pipeline, noise_train, y, cv=folds, method="predict_proba")[:, 1]
    leaky_auc, honest_auc = roc_auc(y, leaky), roc_auc(y, honest)
    print(f"\nnoise AUC: leaky selection {leaky_auc:.3f}, selection inside CV {honest_auc:.3f}")
    assert leaky_auc > 0.6 + CHANCE_MARGIN / 2
    with pytest.raises(AssertionError):
        assert_at_chance(leaky_auc, "leaky variant")  # the chance check catches the leak
    assert_at_chance(honest_auc, "honest variant")


# ---------------------------------------------------------------- (d) groups
def test_splitter_never_splits_a_group():
    table = make_cohort(150, n_features=5, seed=31, group_size=3, n_sites=3)
    groups = group_labels(table, "duplicate_group")
    y = table["label"].to_numpy()
    for site_column in (None, "site"):
        splitter = StratifiedSiteKFold(5, site_column=site_column, random_state=4)
        for train, valid in splitter.split(table, y, groups):
            assert not set(groups[train]) & set(groups[valid])


def test_split_cohort_keeps_groups_and_sites_whole():
    table = make_cohort(150, n_features=5, seed=32, group_size=3, n_sites=3)
    split = split_cohort(table, test_size=0.3, seed=1, stratify="label", groups="duplicate_group")
    assert not set(split.train["duplicate_group"]) & set(split.test["duplicate_group"])
    assert len(split.train) + len(split.test) == len(table)
    assert 0.2 < len(split.test) / len(table) < 0.4
    external = split_cohort(table, external_site="site2")
    assert set(external.test["site"]) == {"site2"} and "site2" not in set(external.train["site"])


def test_split_cohort_refuses_a_group_across_the_external_split():
    table = make_cohort(60, n_features=5, seed=33, group_size=3)
    table.loc[table.index[0], "site"] = "elsewhere"  # one member of a group moved to another site
    with pytest.raises(InputError, match="both sides"):
        split_cohort(table, external_site="elsewhere", groups="duplicate_group")


# ------------------------------------------------------------ (e) ComBat spy
class RecordingHarmonizer(ComBatHarmonizer):
    """The real ComBat harmonizer, recording which rows each fit saw (a class list: clones share it)."""

    fitted_rows: ClassVar[list[frozenset]] = []

    def fit(self, X, y=None):
        type(self).fitted_rows.append(frozenset(X.index))
        return super().fit(X, y)


def test_combat_and_folds_see_training_rows_only():
    table = make_cohort(180, n_features=40, seed=41, group_size=2, n_sites=3)
    split = split_cohort(table, test_size=0.3, seed=2, groups="duplicate_group")
    RecordingHarmonizer.fitted_rows = []
    outer, inner = 4, 3
    comparison = compare_models(
        split.train, split.test, columns=radiomic_columns(table), group_column="duplicate_group",
        feature_sets=("radiomic",), classifiers=("lr",), grid="quick", outer_folds=outer, inner_folds=inner,
        settings=ModelSettings(harmonizer=RecordingHarmonizer(), lasso_folds=3), nomogram=False, n_boot=100,
        n_jobs=1,  # fits recorded in this process
    )
    fits = RecordingHarmonizer.fitted_rows
    train_rows, test_rows = frozenset(split.train.index), frozenset(split.test.index)
    result = comparison.results["radiomic/lr"]
    # The fit cache fits ComBat once per training set, however many grid candidates (2 here)
    # use it: per search, the inner CV's training sets and the refit's.
    per_search = inner + 1
    assert len(fits) == per_search + outer * per_search  # the final search, then the nested CV's
    assert len(set(fits)) == len(fits), "a training set was harmonised twice: the fit cache was not used"
    assert all(not rows & test_rows for rows in fits), "ComBat saw a test row"
    assert fits[per_search - 1] == train_rows  # the final search's refit: all training rows, nothing else
    # every nested-CV fit leaves out at least one whole outer fold
    outer_training_sets = [train_rows - frozenset(split.train.index[result.cv.fold == k]) for k in range(outer)]
    for rows in fits[per_search:]:
        assert any(rows <= allowed for allowed in outer_training_sets), "ComBat saw its own validation fold"
    # groups stay whole inside every fit, inner folds included
    members = split.train.groupby("duplicate_group").groups
    for rows in fits:
        for group_rows in members.values():
            inside = {r in rows for r in group_rows}
            assert len(inside) == 1, "a duplicate_group was split across folds"
    final_combat = result.model.best_estimator_.named_steps["harmonize"].model_
    assert sum(final_combat.batch_sizes) == len(split.train)


def test_unseen_external_site_switches_combat_off_with_a_note():
    table = make_cohort(160, n_features=30, seed=51, n_sites=3)
    split = split_cohort(table, external_site="site2")
    comparison = compare_models(split.train, split.test, columns=radiomic_columns(table),
                                feature_sets=("radiomic",), classifiers=("lr",), grid="quick",
                                outer_folds=3, inner_folds=3, nomogram=False, n_boot=100)
    assert not comparison.settings.harmonize
    assert any("site2" in note for note in comparison.notes)
    assert "harmonize" not in comparison.results["radiomic/lr"].model.best_estimator_.named_steps
