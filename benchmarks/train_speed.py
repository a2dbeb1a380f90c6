"""`radfusion train` before/after: wall time with the defaults, and the same answers.

Run:  .venv/bin/python benchmarks/train_speed.py --before /path/to/old/checkout [--cases noise busi]
      -> benchmarks/results/train_speed.json

Both engines run `radfusion train TABLE --groups duplicate_group --json` with their own
defaults (the old one: grid searches in one process, every pipeline step refitted per grid
candidate and family; the new one: outer folds over every core, the steps before the
classifier fitted once per training fold), side by side in one run. Tables:

- ``noise``: 200 cases x 1,500 pure-noise features with random labels and 3 sites
  (Testing/Python/test_train_leakage.make_cohort, seed 11): every AUC must be near 0.5;
- ``busi``: the BUSI feature table (extracted once with `radfusion extract`, 2 workers).

Equality: the same best model, the same models with the same CV and test AUCs (to 1e-9), the
same selected features and hyper-parameters.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
BUSI = REPO.parent / "shared" / "data" / "busi" / "manifest.csv"


def noise_table() -> Path:
    path = RESULTS / "noise_200x1500.csv"
    if not path.is_file():
        sys.path.insert(0, str(REPO / "RadFusionScreen" / "Testing" / "Python"))
        from test_train_leakage import make_cohort

        table = make_cohort(200, seed=11)
        table.insert(0, "case_id", table.index)
        table.to_csv(path, index=False)
    return path


def busi_table(engine: Path) -> Path:
    path = RESULTS / "busi_features.csv"
    if not path.is_file():
        _radfusion(engine, ["extract", str(BUSI), "-o", str(path), "--workers", "2", "--quiet"])
    return path


def _radfusion(engine: Path, arguments: list[str]) -> tuple[float, str]:
    environment = {**os.environ, "PYTHONPATH": str(engine / "RadFusionScreen")}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "RadFusionScreenLib", *arguments], capture_output=True, text=True,
                          env=environment, cwd=engine)
    if done.returncode != 0:
        raise SystemExit(f"{engine}: radfusion {' '.join(arguments)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - started, done.stdout


def train(engine: Path, table: Path) -> tuple[float, dict]:
    seconds, stdout = _radfusion(engine, ["train", str(table), "--groups", "duplicate_group", "--json"])
    return seconds, json.loads(stdout)


def differences(before: dict, after: dict, tolerance: float = 1e-9) -> list[str]:
    found = []
    if before["best_model"] != after["best_model"]:
        found.append(f"best model {before['best_model']} -> {after['best_model']}")
    old, new = before["models"], after["models"]
    if set(old) != set(new):
        found.append(f"models {sorted(set(old) ^ set(new))}")
    for name in sorted(set(old) & set(new)):
        for key in ("cv_auc", "cv_auc_sd", "test_auc"):
            a, b = old[name].get(key), new[name].get(key)
            if (a is None) != (b is None) or (a is not None and abs(a - b) > tolerance):
                found.append(f"{name} {key}: {a} -> {b}")
        for key in ("selected_features", "best_params"):
            if old[name].get(key) != new[name].get(key):
                found.append(f"{name} {key} differ")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="checkout of the engine before the change")
    parser.add_argument("--cases", nargs="+", default=["noise", "busi"], choices=["noise", "busi"])
    args = parser.parse_args()
    before_engine = Path(args.before).resolve()
    out = RESULTS / "train_speed.json"
    figures = json.loads(out.read_text()) if out.is_file() else {"cases": {}}  # other cases' last run kept
    figures["cpu_count"] = os.cpu_count()
    for case in args.cases:
        table = noise_table() if case == "noise" else busi_table(REPO)
        old_seconds, old = train(before_engine, table)
        new_seconds, new = train(REPO, table)
        found = differences(old, new)
        figures["cases"][case] = {"before_s": old_seconds, "after_s": new_seconds, "speed_up": old_seconds / new_seconds,
                                  "best_model": new["best_model"], "same_answers": not found, "differences": found,
                                  "models": len(new["models"]), "measured": time.strftime("%Y-%m-%d %H:%M")}
        print(f"{case:6s} before {old_seconds / 60:5.1f} min | after {new_seconds / 60:5.1f} min | "
              f"x{old_seconds / new_seconds:.1f} | best {new['best_model']} | same answers: {not found}")
        for line in found:
            print(f"   {line}")
    out.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"-> {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
