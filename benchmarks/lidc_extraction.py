"""The whole LIDC cohort through `radfusion extract` with the shipped CT params: every nodule
extracts, or its error says why (issue 14 item 5).

Run:  .venv/bin/python benchmarks/lidc_extraction.py [--workers 2] [--no-deep] [--deep]
           [--json benchmarks/results/lidc_extraction.json]

Each run is one fresh `python -m RadFusionScreenLib extract MANIFEST -o OUT.csv --workers N
--no-cache` on ../shared/data/lidc (473 nodule crops of 311 patients), as a user types it;
``--no-deep`` radiomic features only, ``--deep`` (the default) radiomic + deep. Measured:

- cases extracted / failed, each failure with its message (the table's ``error`` column);
- cases with empty (NaN) feature blocks, which blocks, and the reason the engine wrote
  (``radiomics_notes``); every note kind with its count;
- wall seconds, CPU seconds of the process tree, and peak memory: the largest sum of the
  resident memory of the process tree (the command and its worker processes), sampled every
  0.1 s with psutil, and the largest single process.

The JSON keeps the other mode's last figures, with when each was measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import psutil

REPO = Path(__file__).resolve().parents[1]
ENGINE = REPO / "RadFusionScreen"
LIDC = REPO.parent / "shared" / "data" / "lidc"
RESULTS = REPO / "benchmarks" / "results" / "lidc_extraction.json"
FEATURE_PREFIXES = ("original_", "log-sigma-", "wavelet-")
# The engine's thin-volume notes (features.radiomic.thin_volumes), by a phrase each one holds.
NOTE_KINDS = {"B-spline resampling of a 2-voxel axis (mirror extension)": "shorter than the order-3 B-spline",
              "LoG on an axis of < 4 voxels (edge extension)": "repeating its edge voxels",
              "LoG sigma refused by pyradiomics' rule (NaN)": "its features are empty (NaN)"}


def run_extraction(out: Path, workers: int, deep: bool) -> dict:
    """One `radfusion extract` of the cohort; wall / CPU seconds and the process tree's peak memory."""
    command = [sys.executable, "-m", "RadFusionScreenLib", "extract", str(LIDC / "manifest.csv"), "-o", str(out),
               "--workers", str(workers), "--no-cache"] + ([] if deep else ["--no-deep"])
    env = dict(os.environ, PYTHONPATH=str(ENGINE))
    start = time.perf_counter()
    process = psutil.Popen(command, env=env, cwd=tempfile.gettempdir(), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    peak_tree = peak_single = 0
    cpu: dict[int, float] = {}
    while process.poll() is None:
        total = 0
        for member in [process, *process.children(recursive=True)]:
            try:
                rss = member.memory_info().rss
                times = member.cpu_times()
            except psutil.Error:  # ended between listing and reading
                continue
            total += rss
            peak_single = max(peak_single, rss)
            cpu[member.pid] = times.user + times.system  # each one's own: the children are listed
        peak_tree = max(peak_tree, total)
        time.sleep(0.1)
    stdout, stderr = process.communicate()
    wall = time.perf_counter() - start
    if process.returncode != 0:
        raise SystemExit(f"radfusion extract failed ({process.returncode}):\n{stderr[-3000:]}")
    return {"command": " ".join(["radfusion", *command[3:]]), "wall_s": round(wall, 1),
            "cpu_s_sampled": round(sum(cpu.values()), 1), "peak_memory_tree_mb": round(peak_tree / 2**20),
            "peak_memory_largest_process_mb": round(peak_single / 2**20),
            "summary_line": "".join((stdout.strip() or stderr.strip()).splitlines()[-1:])}


def outcome(table: pd.DataFrame, n_manifest: int) -> dict:
    """Extracted / failed cases with reasons, NaN feature blocks with the engine's notes."""
    errors = table["error"].astype(object).where(table["error"].notna(), "").astype(str)
    failed = {case: message for case, message in zip(table["case_id"], errors) if message}
    features = [c for c in table.columns if c.startswith(FEATURE_PREFIXES)]
    radiomic = table[features].apply(pd.to_numeric, errors="coerce")
    with_empty = {}
    for index, row in radiomic.iterrows():
        empty = row[row.isna()].index
        if len(empty) and table.at[index, "case_id"] not in failed:
            with_empty[table.at[index, "case_id"]] = {
                "empty_features": int(len(empty)),
                "empty_blocks": sorted({name.split("_", 1)[0] for name in empty}),
                "reason": str(table.at[index, "radiomics_notes"])}
    notes = table["radiomics_notes"].astype(object).where(table["radiomics_notes"].notna(), "").astype(str)
    kinds = Counter(kind for text in notes for kind, phrase in NOTE_KINDS.items() if phrase in text)
    return {"cases": int(n_manifest), "extracted": int(n_manifest - len(failed)), "failed": len(failed),
            "failures": failed, "radiomic_features_per_case": len(features),
            "deep_features_per_case": len([c for c in table.columns if c.startswith("deep_")]),
            "cases_with_empty_features": with_empty, "cases_with_notes": int((notes != "").sum()),
            "note_kinds": dict(sorted(kinds.items()))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-deep", dest="modes", action="append_const", const="no_deep",
                        help="radiomic features only")
    parser.add_argument("--deep", dest="modes", action="append_const", const="deep",
                        help="radiomic + deep features (the default of radfusion extract)")
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args()
    if not (LIDC / "manifest.csv").is_file():
        print(f"no LIDC cohort at {LIDC}: nothing to measure", file=sys.stderr)
        return 1
    n_manifest = len(pd.read_csv(LIDC / "manifest.csv"))
    report = json.loads(args.json.read_text()) if args.json.is_file() else {}
    for mode in args.modes or ["no_deep", "deep"]:
        with tempfile.TemporaryDirectory() as folder:
            out = Path(folder) / "features.csv"
            figures = run_extraction(out, args.workers, deep=mode == "deep")
            figures.update(outcome(pd.read_csv(out, low_memory=False), n_manifest))
        memory = psutil.virtual_memory().total / 2**30
        figures.update(workers=args.workers, measured=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                       machine=f"{platform.node()}, {os.cpu_count()} cores, {memory:.0f} GiB, "
                               f"load {os.getloadavg()[0]:.1f} at the end")
        report[mode] = figures
        print(f"{mode}: {figures['extracted']} of {figures['cases']} extracted, {figures['failed']} failed; "
              f"{figures['wall_s']} s wall, {figures['cpu_s_sampled']} s CPU, peak memory "
              f"{figures['peak_memory_tree_mb']} MB (process tree), "
              f"{figures['peak_memory_largest_process_mb']} MB (largest process)")
        for case, message in figures["failures"].items():
            print(f"  FAILED {case}: {message}")
        for case, empty in figures["cases_with_empty_features"].items():
            print(f"  {case}: {empty['empty_features']} empty features ({', '.join(empty['empty_blocks'])}): "
                  f"{empty['reason']}")
        print(f"  notes: {figures['note_kinds']}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
