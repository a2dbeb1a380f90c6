"""The LIDC pipeline's internal test figures over several patient-grouped splits, not one.

Run:  .venv/bin/python benchmarks/lidc_repeated_splits.py [--seeds 0 1 2 3 4]
      [--table out/lidc_features.csv] [--json benchmarks/results/lidc_repeated_splits.json]

The shipped CT model (scripts/train_lidc_model.sh) holds out 30 % of the patients once (seed 0),
the hardest of 20 splits for the nodule diameter (benchmarks/lidc_split_sensitivity.py). Here
the same `radfusion train` (its defaults: every feature set x classifier family, nested CV,
calibration, nomogram) runs once per split seed on the same feature table, as a user types it,
and each split's untouched test set gives, per feature set, the test AUC of the model that
nested CV chose in it, and for the fused model the shipped rule picks (the best fused one) its
calibration intercept and slope on the test set. Nothing is chosen by these numbers: they
say how much one split's figures owe to the draw (TRIPOD would rather have a bootstrap
optimism correction; this is the simpler repeated-split view of the same question).

The table is out/lidc_features.csv, the radiomic + orthogonal-view deep features with
diameter_mm and patient_id, as scripts/train_lidc_model.sh writes it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "lidc_repeated_splits.json"
FEATURE_SETS = ("clinical", "radiomic", "deep", "fused", "nomogram")


def train(table: Path, seed: int) -> dict:
    command = [sys.executable, "-m", "RadFusionScreenLib", "train", str(table), "--groups", "patient_id",
               "--clinical", "diameter_mm", "--seed", str(seed), "--json"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO / "RadFusionScreen")})
    if done.returncode != 0:
        raise SystemExit(f"radfusion train --seed {seed} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)


def split_figures(summary: dict, seed: int, seconds: float) -> dict:
    """Per feature set: the nested-CV choice and its test AUC; the shipped fused model's calibration."""
    models = summary["models"]
    row: dict = {"seed": seed, "seconds": round(seconds, 1), "best_model": summary["best_model"],
                 "n_test": summary["cohort"].get("n_test") if isinstance(summary.get("cohort"), dict) else None}
    for feature_set in FEATURE_SETS:
        in_set = {name: m for name, m in models.items() if m["feature_set"] == feature_set
                  and m.get("cv_auc") is not None}
        if not in_set:
            continue
        name = max(in_set, key=lambda n: in_set[n]["cv_auc"])
        row[feature_set] = {"model": name, "cv_auc": in_set[name]["cv_auc"], "test_auc": in_set[name]["test_auc"],
                            "test_auc_ci": in_set[name]["test_auc_ci"]}
    fused = row.get("fused", {}).get("model")
    calibration = summary.get("calibration", {}).get(fused)
    if calibration:
        row["fused_calibration"] = {key: calibration[key] for key in
                                    ("intercept", "intercept_ci", "slope", "slope_ci")}
        row["fused_calibration"]["hosmer_lemeshow_p"] = calibration["hosmer_lemeshow"]["p_value"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--table", type=Path, default=REPO / "out" / "lidc_features.csv")
    parser.add_argument("--json", type=Path, default=RESULTS, help="where the results go (default %(default)s)")
    args = parser.parse_args()
    if not args.table.is_file():
        raise SystemExit(f"{args.table} not found: scripts/train_lidc_model.sh writes it (radfusion train --features)")
    rows = []
    for seed in args.seeds:
        started = time.perf_counter()
        rows.append(split_figures(train(args.table, seed), seed, time.perf_counter() - started))
        row = rows[-1]
        cells = " | ".join(f"{s} {row[s]['test_auc']:.3f}" for s in FEATURE_SETS if s in row)
        calibration = row.get("fused_calibration", {})
        print(f"seed {seed}: {cells} | fused calibration intercept {calibration.get('intercept', float('nan')):.2f} "
              f"slope {calibration.get('slope', float('nan')):.2f} ({row['seconds']:.0f} s)", flush=True)
    summary = {}
    for feature_set in FEATURE_SETS:
        values = [row[feature_set]["test_auc"] for row in rows if feature_set in row]
        if values:
            summary[feature_set] = {"median_test_auc": statistics.median(values), "min": min(values),
                                    "max": max(values)}
    for key in ("intercept", "slope"):
        values = [row["fused_calibration"][key] for row in rows if "fused_calibration" in row]
        if values:
            summary[f"fused_calibration_{key}"] = {"median": statistics.median(values), "min": min(values),
                                                   "max": max(values)}
    summary["fused_minus_radiomic_test_auc"] = [row["fused"]["test_auc"] - row["radiomic"]["test_auc"]
                                                for row in rows if "fused" in row and "radiomic" in row]
    args.json.write_text(json.dumps({"measured": time.strftime("%Y-%m-%d %H:%M"), "table": str(args.table.name),
                                    "splits": rows, "summary": summary}, indent=1) + "\n")
    for feature_set, figures in summary.items():
        print(f"{feature_set}: {figures}")
    print(f"-> {args.json}")


if __name__ == "__main__":
    main()
