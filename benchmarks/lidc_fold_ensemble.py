"""Would serving the mean of the fold models calibrate the CT model better? (issue 14, decision 2)

Run:  .venv/bin/python benchmarks/lidc_fold_ensemble.py [--seeds 0 1 2 3 4]
      [--table out/lidc_features.csv] -> benchmarks/results/lidc_fold_ensemble.json

The shipped CT model is the fused logistic regression that `radfusion train` builds (nested CV,
patient-grouped; scripts/train_lidc_model.sh). Its calibrator is chosen and fitted on the
out-of-fold probabilities of its configuration refitted on the 5 outer training folds, then
applied to the model refitted on the whole training set. That model has seen a quarter more
cases than each fold model, so it may be more confident than what the calibrator learned from:
on the shipped split its calibrated test slope is 0.55. Here, per patient-grouped split seed,
the same pipeline is built as `radfusion train` builds it (same seeds, grid, folds and
calibration selection) and served two ways, with the same calibrator:

- ``final``: the model refitted on the whole training set (what bundles serve today);
- ``fold_ensemble``: the mean of the 5 fold models' probabilities (the models the calibrator
  was fitted on; scikit-learn's ``CalibratedClassifierCV(ensemble=True)`` idea).

For both: test AUC and the calibration intercept and slope on the untouched test set. Seed 0's
``final`` row must reproduce the shipped figures (test AUC 0.882, calibration -0.60 / 0.55).
Nothing is chosen by these numbers: they inform a decision asked on issue 14.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "RadFusionScreen"))

from RadFusionScreenLib.app.train_command import TrainOptions  # noqa: E402
from RadFusionScreenLib.model.calibration import calibration_metrics, select_calibrator  # noqa: E402
from RadFusionScreenLib.model.train import (StratifiedSiteKFold, build_pipeline, build_search, fit_model,  # noqa: E402
                                            group_labels, infer_feature_columns, param_grid, predict_probability,
                                            split_cohort)
from RadFusionScreenLib.stats.roc import roc_auc  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "lidc_fold_ensemble.json"


def one_split(table: pd.DataFrame, seed: int) -> dict:
    """The fused logistic regression of one split seed, served as the final model and as the fold mean."""
    from sklearn.base import clone

    # `radfusion train --groups patient_id --clinical diameter_mm --seed SEED` on a table without sites
    options = TrainOptions(clinical=("diameter_mm",), group_column="patient_id", site_column=None, seed=seed)
    split = split_cohort(table, options.test_size, seed, stratify=options.label_column, groups=options.group_column)
    train, test = split.train, split.test
    y_train, y_test = train[options.label_column].to_numpy(int), test[options.label_column].to_numpy(int)
    groups = group_labels(train, options.group_column)
    columns = infer_feature_columns(table, options.clinical).for_set("fused")
    settings = options.settings()
    # as compare_models: inner folds seeded random_state + 1, outer folds random_state
    search = build_search(build_pipeline(columns, "lr", settings), param_grid("lr", options.grid),
                          StratifiedSiteKFold(options.inner_folds, None, random_state=settings.random_state + 1))
    final = fit_model(search, train, y_train, groups)
    outer = StratifiedSiteKFold(options.outer_folds, None, random_state=settings.random_state)
    out_of_fold, fold_test = np.full(len(train), np.nan), []
    for fold_train, fold_valid in outer.split(train, y_train, groups):
        model = fit_model(clone(final.best_estimator_), train.iloc[fold_train], y_train[fold_train])
        out_of_fold[fold_valid] = predict_probability(model, train.iloc[fold_valid])
        fold_test.append(predict_probability(model, test))
    calibration = select_calibrator(out_of_fold, y_train, groups, options.inner_folds, settings.random_state)
    served = {"final": predict_probability(final, test), "fold_ensemble": np.mean(fold_test, axis=0)}
    row: dict = {"seed": seed, "training_cases": len(train), "test_cases": len(test),
                 "best_params": final.best_params_, "calibration": calibration.calibrator.describe()}
    for name, raw in served.items():
        probability = calibration.apply(raw)
        metrics = calibration_metrics(y_test, probability)
        row[name] = {"test_auc": roc_auc(y_test, probability), "intercept": metrics["intercept"],
                     "slope": metrics["slope"], "hosmer_lemeshow_p": metrics["hosmer_lemeshow"]["p_value"],
                     "mean_predicted": metrics["mean_predicted"], "observed_rate": metrics["observed_rate"]}
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--table", type=Path, default=REPO / "out" / "lidc_features.csv")
    parser.add_argument("--json", type=Path, default=RESULTS)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    if not args.table.is_file():
        print(f"no feature table at {args.table}: run scripts/train_lidc_model.sh first", file=sys.stderr)
        return 1
    table = pd.read_csv(args.table, low_memory=False)
    table = table[table["error"].isna() | (table["error"].astype(str) == "")] if "error" in table else table
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        rows = list(pool.map(one_split, [table] * len(args.seeds), args.seeds))
    print(f"{'seed':>4}  {'served':<14}{'test AUC':>9}{'intercept':>11}{'slope':>7}{'HL p':>8}  calibrator")
    for row in rows:
        for name in ("final", "fold_ensemble"):
            figures = row[name]
            print(f"{row['seed']:>4}  {name:<14}{figures['test_auc']:>9.3f}{figures['intercept']:>11.2f}"
                  f"{figures['slope']:>7.2f}{figures['hosmer_lemeshow_p']:>8.3f}  {row['calibration']}")
    summary = {name: {key: statistics.median(row[name][key] for row in rows)
                      for key in ("test_auc", "intercept", "slope")} for name in ("final", "fold_ensemble")}
    print("medians:", json.dumps(summary))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"table": str(args.table.relative_to(REPO) if args.table.is_relative_to(REPO)
                                                  else args.table), "rows": rows, "medians": summary},
                                    indent=1, default=float) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
