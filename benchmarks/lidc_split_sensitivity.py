"""How much the LIDC internal test figures depend on which patients the one test split holds.

Run:  .venv/bin/python benchmarks/lidc_split_sensitivity.py [--seeds 20]
      -> prints a table, writes benchmarks/results/lidc_split_sensitivity.json

`radfusion train` (and scripts/train_lidc_model.sh) holds out 30 % of the patients once:
``split_cohort(test_size=0.3, seed=0, stratify="label", groups="patient_id")``. With ~150
test nodules of ~95 patients, the test AUC of one split carries the luck of the draw. This
measures that luck on a predictor that needs no fitting: the nodule's diameter (nodules.csv),
whose AUC on a split's test and training parts is computed for seeds 0 .. N-1 of the same
split. A split whose test part is much harder than its training part for the diameter is hard
for every model (they all lean on size), so its test AUCs sit below the nested-CV estimates.
Nothing here is fitted or tuned; no seed is chosen by it (the shipped model keeps seed 0).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import pandas as pd

from RadFusionScreenLib.model.train.splits import split_cohort
from RadFusionScreenLib.stats import auc_ci_delong

REPO = Path(__file__).resolve().parents[1]
LIDC = REPO.parent / "shared" / "data" / "lidc"


def diameter_aucs(seeds: int) -> list[dict[str, float]]:
    cases = pd.read_csv(LIDC / "manifest.csv").merge(
        pd.read_csv(LIDC / "nodules.csv")[["case_id", "diameter_mm"]], on="case_id", validate="one_to_one")
    rows = []
    for seed in range(seeds):
        split = split_cohort(cases, test_size=0.3, seed=seed, stratify="label", groups="patient_id")
        test = auc_ci_delong(split.test["label"].to_numpy(), split.test["diameter_mm"].to_numpy())
        train = auc_ci_delong(split.train["label"].to_numpy(), split.train["diameter_mm"].to_numpy())
        rows.append({"seed": seed, "n_test": len(split.test), "test_auc": test.auc, "test_ci": [test.ci_lower, test.ci_upper],
                     "train_auc": train.auc, "test_minus_train": test.auc - train.auc})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    args = parser.parse_args()
    if not LIDC.is_dir():
        raise SystemExit(f"{LIDC} is absent: nothing to measure")
    rows = diameter_aucs(args.seeds)
    print("seed  n_test  diameter AUC test (95% CI)   training   test - training")
    for row in rows:
        print(f"{row['seed']:4d}  {row['n_test']:6d}  {row['test_auc']:.3f} ({row['test_ci'][0]:.3f}-{row['test_ci'][1]:.3f})"
              f"        {row['train_auc']:.3f}     {row['test_minus_train']:+.3f}")
    tests = [row["test_auc"] for row in rows]
    rank = sorted(tests).index(rows[0]["test_auc"]) + 1
    summary = {"median_test_auc": statistics.median(tests), "min_test_auc": min(tests), "max_test_auc": max(tests),
               "seed0_test_auc": rows[0]["test_auc"], "seed0_rank_from_lowest": rank, "seeds": len(rows)}
    print(f"diameter test AUC over {len(rows)} splits: median {summary['median_test_auc']:.3f} "
          f"(range {summary['min_test_auc']:.3f}-{summary['max_test_auc']:.3f}); the shipped split (seed 0): "
          f"{summary['seed0_test_auc']:.3f}, rank {rank} of {len(rows)} from the lowest")
    out = REPO / "benchmarks" / "results" / "lidc_split_sensitivity.json"
    out.write_text(json.dumps({"summary": summary, "splits": rows}, indent=2) + "\n")
    print(f"-> {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
