"""How well should the shipped CT model do on new patients? (issue 14)

Run:  .venv/bin/python benchmarks/lidc_refit_validation.py [--parts bootstrap cv]
      [--replicates 100] [--repeats 5] [--table out/lidc_features.csv]
      -> benchmarks/results/lidc_refit_validation.json (a part not run keeps its recorded result)

The shipped CT model is the fused logistic regression's configuration refitted on all 473
nodules (`radfusion train --refit-all`, scripts/train_lidc_model.sh), so no held-out case is
left to test it on. Two estimates of the whole procedure (grid search over grouped inner folds,
calibration chosen and fitted on out-of-fold probabilities, as `radfusion train` builds it;
checked first to rebuild the shipped model exactly):

- ``bootstrap``: Efron's optimism correction (TRIPOD item 10b; Harrell, *Regression Modeling
  Strategies* 5.3.5, as ``rms::validate``). Apparent figures of the model built on every nodule,
  minus the mean optimism of models built on bootstrap samples of patients (a patient drawn
  twice brings all his nodules twice, and his copies share one fold): figure on the sample
  minus figure on the original nodules.
- ``cv``: repeated grouped cross-validation of the whole procedure: per repeat, 5 folds by
  patient; the configuration built on 4 folds (~378 nodules) scores the fifth; the pooled
  out-of-fold probabilities of a repeat give its AUC and calibration intercept and slope.

Figures: AUC, calibration intercept and slope of the calibrated probability (what a user
sees). Nothing is chosen by these numbers; they are the model card's estimate for nodules of
other patients.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lidc_configuration import (REPO, add_common_arguments, build_configuration, fused_columns,  # noqa: E402
                                read_feature_table, shipped_options)
from RadFusionScreenLib.model.calibration import calibration_metrics  # noqa: E402
from RadFusionScreenLib.model.train import StratifiedSiteKFold, group_labels, split_cohort  # noqa: E402
from RadFusionScreenLib.stats.roc import roc_auc  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "lidc_refit_validation.json"
OPTIONS = shipped_options()
FIGURES = ("auc", "intercept", "slope")


def figures(y: np.ndarray, probability: np.ndarray) -> dict[str, float]:
    metrics = calibration_metrics(y, probability)
    return {"auc": roc_auc(y, probability), "intercept": metrics["intercept"], "slope": metrics["slope"]}


def replicate(table: pd.DataFrame, columns: list[str], seed: int) -> dict:
    """One bootstrap replicate: patients drawn with replacement, the configuration built on them."""
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    patients = table[OPTIONS.group_column].unique()
    drawn = rng.choice(patients, size=len(patients), replace=True)
    rows = table.groupby(OPTIONS.group_column).indices
    sample = table.iloc[np.concatenate([rows[p] for p in drawn])]
    if sample[OPTIONS.label_column].nunique() < 2:
        return {"seed": seed, "skipped": "one class"}
    predict = build_configuration(sample, columns, OPTIONS).probability
    y_sample, y_all = sample[OPTIONS.label_column].to_numpy(int), table[OPTIONS.label_column].to_numpy(int)
    return {"seed": seed, "sample": figures(y_sample, predict(sample)), "original": figures(y_all, predict(table)),
            "seconds": time.perf_counter() - started}


def shipped_difference(table: pd.DataFrame, shipped) -> float:
    """Largest difference between the shipped bundle's recorded (in-sample) probabilities and the
    configuration built here on every nodule: the apparent model must be the shipped one."""
    from RadFusionScreenLib.model.bundle import recorded_predictions

    manifest = json.loads((REPO / "models" / "lidc-ct-nodule" / "manifest.json").read_text())
    recorded, in_sample = recorded_predictions(manifest)
    if not in_sample:
        raise SystemExit("models/lidc-ct-nodule is not refitted on every case (radfusion train --refit-all)")
    rows = table.set_index(table["case_id"].astype(str)).loc[list(recorded)]
    difference = float(np.max(np.abs(shipped(rows) - np.array(list(recorded.values())))))
    if difference > 1e-9:
        raise SystemExit(f"the configuration built here is not the shipped model (probabilities differ by "
                         f"{difference:.3g}): is out/lidc_features.csv the table it was trained on?")
    return difference


def cv_repeat(table: pd.DataFrame, columns: list[str], repeat: int) -> dict:
    """One repeat of grouped 5-fold CV of the whole procedure: pooled out-of-fold figures."""
    started = time.perf_counter()
    y, groups = table[OPTIONS.label_column].to_numpy(int), group_labels(table, OPTIONS.group_column)
    probability = np.full(len(table), np.nan)
    folds = StratifiedSiteKFold(OPTIONS.outer_folds, None, random_state=1000 + repeat)
    for fold_train, fold_test in folds.split(table, y, groups):
        predict = build_configuration(table.iloc[fold_train], columns, OPTIONS).probability
        probability[fold_test] = predict(table.iloc[fold_test])
    return {"repeat": repeat, **figures(y, probability), "seconds": time.perf_counter() - started}


def bootstrap_part(table: pd.DataFrame, columns: list[str], shipped, replicates: int, workers: int) -> dict:
    apparent = figures(table[OPTIONS.label_column].to_numpy(int), shipped(table))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        rows = list(pool.map(replicate, [table] * replicates, [columns] * replicates, range(1, replicates + 1)))
    done = [row for row in rows if "sample" in row]
    optimism = {k: statistics.fmean(row["sample"][k] - row["original"][k] for row in done) for k in FIGURES}
    corrected = {k: apparent[k] - optimism[k] for k in FIGURES}
    print(f"bootstrap: {len(done)} replicates of {replicates}")
    print(f"{'figure':<10}{'apparent':>10}{'optimism':>10}{'corrected':>11}")
    for k in FIGURES:
        print(f"{k:<10}{apparent[k]:>10.3f}{optimism[k]:>10.3f}{corrected[k]:>11.3f}")
    return {"replicates": replicates, "done": len(done), "apparent": apparent, "optimism": optimism,
            "corrected": corrected, "rows": rows}


def cv_part(table: pd.DataFrame, columns: list[str], repeats: int, workers: int) -> dict:
    with ProcessPoolExecutor(max_workers=workers) as pool:
        rows = list(pool.map(cv_repeat, [table] * repeats, [columns] * repeats, range(repeats)))
    summary = {k: {"mean": statistics.fmean(r[k] for r in rows), "min": min(r[k] for r in rows),
                   "max": max(r[k] for r in rows)} for k in FIGURES}
    print(f"repeated grouped CV: {repeats} x {OPTIONS.outer_folds} folds")
    for k in FIGURES:
        print(f"{k:<10} mean {summary[k]['mean']:.3f} (range {summary[k]['min']:.3f} to {summary[k]['max']:.3f})")
    return {"repeats": repeats, "folds": OPTIONS.outer_folds, "summary": summary, "rows": rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", choices=["bootstrap", "cv"], default=["bootstrap", "cv"])
    parser.add_argument("--replicates", type=int, default=100, help="bootstrap replicates")
    parser.add_argument("--repeats", type=int, default=5, help="repeats of grouped 5-fold CV")
    add_common_arguments(parser, RESULTS)
    args = parser.parse_args()
    table = read_feature_table(args.table)
    if table is None:
        return 1
    # in the order `radfusion train --refit-all` fits them (training part, then test part): fold
    # assignment follows row order, and the apparent model must be the shipped one
    split = split_cohort(table, OPTIONS.test_size, OPTIONS.seed, stratify=OPTIONS.label_column,
                         groups=OPTIONS.group_column)
    table = pd.concat([split.train, split.test]).reset_index(drop=True)
    columns = fused_columns(table, OPTIONS)
    started = time.perf_counter()
    shipped = build_configuration(table, columns, OPTIONS).probability
    reproduced = shipped_difference(table, shipped)
    print(f"the shipped bundle's recorded probabilities reproduced to {reproduced:.2g}")
    results = json.loads(args.json.read_text()) if args.json.is_file() else {}
    results.update(table=str(args.table.relative_to(REPO) if args.table.is_relative_to(REPO) else args.table),
                   cases=len(table), shipped_bundle_max_difference=reproduced)
    if "bootstrap" in args.parts:
        results["bootstrap"] = bootstrap_part(table, columns, shipped, args.replicates, args.workers)
    if "cv" in args.parts:
        results["cv"] = cv_part(table, columns, args.repeats, args.workers)
    print(f"{time.perf_counter() - started:.0f} s")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1, default=float) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
