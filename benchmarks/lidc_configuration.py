"""The shipped CT model's configuration as `radfusion train` builds it, for the LIDC benchmarks
(lidc_fold_ensemble.py, lidc_refit_validation.py): the fused LASSO logistic regression, its grid
searched over patient-grouped inner folds, its calibrator chosen and fitted on the outer folds'
out-of-fold probabilities of the chosen configuration (as ``compare_models`` does)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "RadFusionScreen"))

from RadFusionScreenLib.app.train_command import TrainOptions  # noqa: E402
from RadFusionScreenLib.model.calibration import CalibrationSelection, select_calibrator  # noqa: E402
from RadFusionScreenLib.model.train import (StratifiedSiteKFold, build_pipeline, build_search, fit_model,  # noqa: E402
                                            group_labels, infer_feature_columns, param_grid, predict_probability)

DEFAULT_TABLE = REPO / "out" / "lidc_features.csv"  # written by scripts/train_lidc_model.sh


def shipped_options(seed: int = 0) -> TrainOptions:
    """`radfusion train --groups patient_id --clinical diameter_mm --seed SEED` on a table without sites."""
    return TrainOptions(clinical=("diameter_mm",), group_column="patient_id", site_column=None, seed=seed)


def read_feature_table(path: Path) -> pd.DataFrame | None:
    """The extracted LIDC table without failed rows; None (with a message) when it is missing."""
    if not path.is_file():
        print(f"no feature table at {path}: run scripts/train_lidc_model.sh first", file=sys.stderr)
        return None
    table = pd.read_csv(path, low_memory=False)
    return table[table["error"].isna() | (table["error"].astype(str) == "")] if "error" in table else table


def add_common_arguments(parser: argparse.ArgumentParser, results: Path) -> None:
    """--table, --json and --workers, as every benchmark of the shipped configuration takes them."""
    parser.add_argument("--table", type=Path, default=DEFAULT_TABLE)
    parser.add_argument("--json", type=Path, default=results)
    parser.add_argument("--workers", type=int, default=2)


def fused_columns(table: pd.DataFrame, options: TrainOptions) -> list[str]:
    return list(infer_feature_columns(table, options.clinical).for_set("fused"))


@dataclass
class BuiltConfiguration:
    final: Any  # the grid search refitted on every row it was given
    fold_models: list[Any]  # the chosen configuration refitted on each outer training fold
    calibration: CalibrationSelection

    def probability(self, table: pd.DataFrame) -> np.ndarray:
        """The calibrated probability the bundle would serve."""
        return self.calibration.apply(predict_probability(self.final, table))


def build_configuration(cases: pd.DataFrame, columns: list[str], options: TrainOptions) -> BuiltConfiguration:
    """The fused logistic regression of ``options`` built on ``cases`` (module doc)."""
    from sklearn.base import clone

    settings = options.settings()
    y, groups = cases[options.label_column].to_numpy(int), group_labels(cases, options.group_column)
    # as compare_models: inner folds seeded random_state + 1, outer folds random_state
    search = build_search(build_pipeline(columns, "lr", settings), param_grid("lr", options.grid),
                          StratifiedSiteKFold(options.inner_folds, None, random_state=settings.random_state + 1))
    final = fit_model(search, cases, y, groups)
    out_of_fold, fold_models = np.full(len(cases), np.nan), []
    outer = StratifiedSiteKFold(options.outer_folds, None, random_state=settings.random_state)
    for fold_train, fold_valid in outer.split(cases, y, groups):
        model = fit_model(clone(final.best_estimator_), cases.iloc[fold_train], y[fold_train])
        out_of_fold[fold_valid] = predict_probability(model, cases.iloc[fold_valid])
        fold_models.append(model)
    calibration = select_calibrator(out_of_fold, y, groups, options.inner_folds, settings.random_state)
    return BuiltConfiguration(final, fold_models, calibration)
