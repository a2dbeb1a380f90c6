"""Cohort model-building benchmark: a full `radfusion train` on BUSI, features cached.

Run:  .venv/bin/python benchmarks/bench_train.py [--features FEATURES.csv] [--grid full|quick]

Features come from a cached extraction (`radfusion extract ../shared/data/busi/manifest.csv
-o FEATURES.csv`, run first when the file is absent). The train command runs in a child
process, so its wall time and peak RSS (ru_maxrss of the child) are its own; the figures are
printed and written to benchmarks/results/train.json with the JSON summary of the run.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUSI = REPO.parent / "shared" / "data" / "busi" / "manifest.csv"
RADFUSION = [sys.executable, "-m", "RadFusionScreenLib"]


def run(command: list[str]) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MB) of the child, stdout."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return seconds, max(peak, before) / 1024, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", default=str(REPO / "benchmarks" / "results" / "busi_features.csv"))
    parser.add_argument("--grid", choices=["full", "quick"], default="full")
    parser.add_argument("--workers", type=int, default=2, help="extraction workers when features are absent")
    parser.add_argument("--jobs", type=int, default=2, help="parallel grid-search fits")
    parser.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "train.json"))
    args = parser.parse_args()
    features = Path(args.features)
    figures: dict = {"machine": f"{platform.machine()} {platform.processor()}".strip(), "grid": args.grid}
    if not features.is_file():
        if not BUSI.is_file():
            raise SystemExit(f"{BUSI} not found: the benchmark needs ../shared/data/busi")
        seconds, peak, _ = run([*RADFUSION, "extract", str(BUSI), "-o", str(features), "--workers",
                                str(args.workers), "--quiet"])
        figures["extract"] = {"seconds": seconds, "peak_rss_mb": peak, "workers": args.workers}
    out = features.parent / "busi-bench-model"
    seconds, peak, stdout = run([*RADFUSION, "train", str(features), "--groups", "duplicate_group",
                                 "--grid", args.grid, "--jobs", str(args.jobs), "--out", str(out), "--report", str(out) + ".html", "--json"])
    summary = json.loads(stdout)
    figures["train"] = {"seconds": seconds, "peak_rss_mb": peak, "best_model": summary["best_model"]}
    figures["models"] = {name: {k: m.get(k) for k in ("cv_auc", "test_auc", "test_auc_ci")}
                         for name, m in summary["models"].items()}
    print(f"train ({args.grid} grid): {seconds:.0f} s, peak RSS {peak:.0f} MB, best {summary['best_model']}")
    for name, m in figures["models"].items():
        ci = m["test_auc_ci"] or [float("nan")] * 2
        print(f"  {name:<22} cv AUC {m['cv_auc']:.3f}  test AUC {m['test_auc']:.3f} ({ci[0]:.3f}-{ci[1]:.3f})")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(figures, indent=2))
    print(f"written: {args.json}")


if __name__ == "__main__":
    main()
