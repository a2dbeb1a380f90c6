"""Reproducibility of filtered features on thin CT crops: N fresh processes, distinct results.

Run:  .venv/bin/python benchmarks/thin_volumes.py [--runs 20] [--json benchmarks/results/thin_volumes.json]
           [--engine-path OTHER_CHECKOUT/RadFusionScreen]   (the engine variant from another checkout)

For each LIDC crop (2, 3 and 2 slices of 2.5 mm, from ../shared/data/lidc) and each variant,
the same extraction runs in ``runs`` fresh processes:
  plain_pyradiomics   RadiomicsFeatureExtractor(shipped CT.yaml).execute, no engine code
  engine_cli          `radfusion features IMAGE MASK --no-deep -o OUT.csv`, as a user runs it
It prints the number of distinct results (bit for bit) and failures, and which feature families
(image types) differ between the distinct results.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LIDC = REPO.parent / "shared" / "data" / "lidc"
CASES = ("LIDC-IDRI-0272_R_1", "LIDC-IDRI-0012_R_2", "LIDC-IDRI-0011_R_6")
PARAMS = REPO / "RadFusionScreen" / "RadFusionScreenLib" / "params" / "CT.yaml"

_ONE_RUN = r"""
import json, logging, sys
image, mask, variant, params = sys.argv[1:5]
try:
    if variant == "plain_pyradiomics":
        from radiomics import featureextractor
        logging.getLogger("radiomics").setLevel(logging.ERROR)
        result = featureextractor.RadiomicsFeatureExtractor(params).execute(image, mask)
        features = {k: float(v) for k, v in result.items() if not k.startswith("diagnostics")}
    else:
        import csv, tempfile
        from pathlib import Path
        from RadFusionScreenLib.app.cli import main
        out = Path(tempfile.mkdtemp()) / "features.csv"
        if main(["features", image, mask, "--no-deep", "-o", str(out)]) != 0:
            raise RuntimeError("radfusion features failed (see stderr)")
        row = next(csv.DictReader(out.open()))
        features = {k: float(v) for k, v in row.items() if k.startswith(("original_", "log-", "wavelet"))}
    print(json.dumps({"features": features}))
except Exception as error:
    print(json.dumps({"error": f"{type(error).__name__}: {error}"}))
"""


def run_once(case: str, variant: str, engine_path: str | None = None) -> dict:
    args = [str(LIDC / "images" / f"{case}.nii.gz"), str(LIDC / "masks" / f"{case}.nii.gz"), variant, str(PARAMS)]
    env = dict(os.environ, PYTHONPATH=engine_path) if engine_path else None
    done = subprocess.run([sys.executable, "-c", _ONE_RUN, *args], capture_output=True, text=True, check=True,
                          env=env, cwd=tempfile.gettempdir())
    return json.loads(done.stdout.strip().splitlines()[-1])


def summarise(outcomes: list[dict]) -> dict:
    errors = Counter(o["error"] for o in outcomes if "error" in o)
    results = [o["features"] for o in outcomes if "features" in o]
    distinct = {json.dumps(r, sort_keys=True) for r in results}
    summary = {"runs": len(outcomes), "failures": sum(errors.values()), "errors": dict(errors),
               "distinct_results": len(distinct)}
    if len(distinct) > 1:
        first, *others = [json.loads(d) for d in distinct]
        changed = {name for other in others for name in first if first[name] != other.get(name)}
        summary["features_that_differ"] = len(changed)
        summary["families_that_differ"] = sorted({name.split("_", 1)[0] for name in changed})
        summary["max_relative_difference"] = max(
            abs(first[n] - o[n]) / max(abs(first[n]), 1e-12) for o in others for n in changed if n in o)
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "thin_volumes.json")
    parser.add_argument("--engine-path", help="PYTHONPATH holding another checkout's RadFusionScreenLib (before/after)")
    args = parser.parse_args()
    if not LIDC.is_dir():
        print(f"LIDC crops not found at {LIDC}: nothing to measure")
        return 0
    report = {}
    print(f"{'case':<22}{'variant':<20}{'runs':>5}{'distinct':>10}{'failures':>10}  families that differ")
    for case in CASES:
        for variant in ("plain_pyradiomics", "engine_cli"):
            summary = summarise([run_once(case, variant, args.engine_path) for _ in range(args.runs)])
            report[f"{case}/{variant}"] = summary
            families = ", ".join(summary.get("families_that_differ", [])) or "-"
            print(f"{case:<22}{variant:<20}{summary['runs']:>5}{summary['distinct_results']:>10}"
                  f"{summary['failures']:>10}  {families}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1, sort_keys=True))
    print(f"written: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
