"""Would serving the mean of the fold models calibrate the CT model better? (issue 14, decision 2)

Run:  .venv/bin/python benchmarks/lidc_fold_ensemble.py [--seeds 0 1 2 3 4]
      [--table out/lidc_features.csv] -> benchmarks/results/lidc_fold_ensemble.json

The shipped CT model's configuration is the fused logistic regression that `radfusion train`
builds (nested CV, patient-grouped; scripts/train_lidc_model.sh, which then refits it on every
nodule). On the validation split, its calibrator is chosen and fitted on the
out-of-fold probabilities of its configuration refitted on the 5 outer training folds, then
applied to the model refitted on the whole training set. That model has seen a quarter more
cases than each fold model, so it may be more confident than what the calibrator learned from:
on the validation split its calibrated test slope is 0.55. Here, per patient-grouped split seed,
the same pipeline is built as `radfusion train` builds it (same seeds, grid, folds and
calibration selection) and served two ways, with the same calibrator:

- ``final``: the model refitted on the whole training set (what bundles serve today);
- ``fold_ensemble``: the mean of the 5 fold models' probabilities (the models the calibrator
  was fitted on; scikit-learn's ``CalibratedClassifierCV(ensemble=True)`` idea).

For both: test AUC and the calibration intercept and slope on the untouched test set. Seed 0's
``final`` row must reproduce the model card's internal test figures (test AUC 0.882,
calibration -0.60 / 0.55).
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lidc_configuration import (REPO, add_common_arguments, build_configuration, fused_columns,  # noqa: E402
                                read_feature_table, shipped_options)
from RadFusionScreenLib.model.calibration import calibration_metrics  # noqa: E402
from RadFusionScreenLib.model.train import predict_probability, split_cohort  # noqa: E402
from RadFusionScreenLib.stats.roc import roc_auc  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "lidc_fold_ensemble.json"


def one_split(table: pd.DataFrame, seed: int) -> dict:
    """The fused logistic regression of one split seed, served as the final model and as the fold mean."""
    options = shipped_options(seed)
    split = split_cohort(table, options.test_size, seed, stratify=options.label_column, groups=options.group_column)
    train, test = split.train, split.test
    y_test = test[options.label_column].to_numpy(int)
    built = build_configuration(train, fused_columns(table, options), options)
    served = {"final": predict_probability(built.final, test),
              "fold_ensemble": np.mean([predict_probability(model, test) for model in built.fold_models], axis=0)}
    row: dict = {"seed": seed, "training_cases": len(train), "test_cases": len(test),
                 "best_params": built.final.best_params_, "calibration": built.calibration.calibrator.describe()}
    for name, raw in served.items():
        probability = built.calibration.apply(raw)
        metrics = calibration_metrics(y_test, probability)
        row[name] = {"test_auc": roc_auc(y_test, probability), "intercept": metrics["intercept"],
                     "slope": metrics["slope"], "hosmer_lemeshow_p": metrics["hosmer_lemeshow"]["p_value"],
                     "mean_predicted": metrics["mean_predicted"], "observed_rate": metrics["observed_rate"]}
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    add_common_arguments(parser, RESULTS)
    args = parser.parse_args()
    table = read_feature_table(args.table)
    if table is None:
        return 1
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
