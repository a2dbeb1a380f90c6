"""Extraction speed where people wait (issue 16 items 3 and 4), before/after in one run.

Run:  .venv/bin/python benchmarks/radiomics_speed.py [--repeats 3] [--cases 473]
           [--before OTHER_CHECKOUT/RadFusionScreen]   (the engine of another checkout, e.g. the base commit)
           [--skip-cohort] [--skip-ct]

Both figures run the engine in fresh processes (``PYTHONPATH`` = this checkout, or ``--before``),
alternating before / after in each repeat so that both see the same machine load; each figure
is the median of ``repeats``, with CPU seconds (user + sys of the process tree) beside the wall
seconds, since wall time on a shared machine is noisy.

- ``lidc_cohort``: ``radfusion extract`` of the LIDC nodule crops (../shared/data/lidc, 473 crops,
  median 44 x 44 x 6 voxels) with ``--workers 2 --no-cache``, as a user types it (deep features
  included: the default), and with ``--no-deep``. The feature tables of before and after are
  compared cell by cell (bit-identical expected, but GLCM MCC from the commit that computes it
  from singular values on: there the largest difference per feature kind is given).
- ``sts001_in_process``: the STS_001 CT (198 x 202 x 59, ROI 117k voxels) screened in one
  process (``Screener(model, processes=1).screen``: the Slicer Logic / Python API) with the CT
  bundle of bench_speed.py, and plain pyradiomics (as shipped, same params, uncropped) in the
  same process; the figure is their ratio. The radiomic features of before and after are compared.

CUDA: not measured here (the CNN runs on the CPU; bench_speed.py measures a GPU where one exists).
Writes benchmarks/results/radiomics_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENGINE = REPO / "RadFusionScreen"
LIDC = REPO.parent / "shared" / "data" / "lidc"
STS = REPO.parent / "shared" / "data" / "dicom" / "sts_rtstruct" / "STS_001" / "CT"
WORK = Path(tempfile.gettempdir()) / "radfusion-bench"

# One fresh process: screen STS_001 in this process `repeats` times, plain pyradiomics between.
_IN_PROCESS = r"""
import json, sys, time, warnings, yaml
from radiomics.featureextractor import RadiomicsFeatureExtractor
from RadFusionScreenLib.inputs.images import read_image, read_mask
from RadFusionScreenLib.serving.screening import Screener
image, mask, model, repeats = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
screener = Screener(model, "cpu", processes=1)
plain = RadiomicsFeatureExtractor(yaml.safe_load(screener.extraction["params_yaml"]))
volume = read_image(image); roi = read_mask(mask, reference=volume)
screen, reference, features = [], [], None
for _ in range(repeats):
    start, cpu = time.perf_counter(), time.process_time()
    result = screener.screen(image, mask)
    screen.append((time.perf_counter() - start, time.process_time() - cpu))
    start, cpu = time.perf_counter(), time.process_time()
    plain.execute(volume, roi)  # pyradiomics as installed (the engine changes nothing in it)
    reference.append((time.perf_counter() - start, time.process_time() - cpu))
radiomic = screener._radiomic.execute(volume, roi)
print(json.dumps({"screen": screen, "plain": reference, "radiomic": radiomic}))
"""


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def run(command: list[str], engine: Path) -> tuple[float, float, subprocess.CompletedProcess]:
    """Wall and CPU seconds (user + sys of the process and its children) of a fresh process."""
    env = dict(os.environ, PYTHONPATH=str(engine))
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:  # files: a full pipe would block
        start = time.perf_counter()
        process = subprocess.Popen(command, env=env, cwd=tempfile.gettempdir(), stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    done = subprocess.CompletedProcess(command, os.waitstatus_to_exitcode(status), stdout, stderr)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{stderr[-2000:]}")
    # wait4's usage covers the process and its reaped children (the pool workers)
    return wall, usage.ru_utime + usage.ru_stime, done


# ------------------------------------------------------------------------- LIDC cohort
def lidc_cohort(engines: dict[str, Path], repeats: int, n_cases: int) -> dict:
    import pandas as pd

    manifest = pd.read_csv(LIDC / "manifest.csv").head(n_cases)
    manifest = manifest.assign(image=[str(LIDC / p) for p in manifest["image"]],
                               mask=[str(LIDC / p) for p in manifest["mask"]])
    path = WORK / f"lidc{n_cases}.csv"
    WORK.mkdir(parents=True, exist_ok=True)
    manifest.to_csv(path, index=False)
    out: dict = {"cases": len(manifest), "workers": 2}
    for variant, extra in (("default", []), ("no_deep", ["--no-deep"])):
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in engines}
        tables = {}
        for _ in range(repeats):
            for name, engine in engines.items():
                table = WORK / f"lidc_{variant}_{name}.csv"
                command = [sys.executable, "-m", "RadFusionScreenLib", "extract", str(path), "-o", str(table),
                           "--workers", "2", "--no-cache", "--quiet", *extra]
                wall, cpu, _ = run(command, engine)
                times[name].append((wall, cpu))
                tables[name] = table
        out[variant] = {name: _figures(values, len(manifest)) for name, values in times.items()}
        if len(tables) == 2:
            out[variant]["tables_identical"] = _same_tables(*tables.values())
    return out


def _figures(values: list[tuple[float, float]], n_cases: int) -> dict:
    walls, cpus = [w for w, _ in values], [c for _, c in values]
    return {"wall_s": median(walls), "wall_min_s": min(walls), "wall_max_s": max(walls), "cpu_s": median(cpus),
            "cpu_s_per_case": median(cpus) / n_cases, "runs": len(values)}


def _same_tables(first: Path, second: Path) -> dict:
    """Cell-by-cell comparison of two feature tables (CSV floats round-trip exactly), with the
    largest difference per feature kind where they differ (e.g. glcm_MCC: singular values now)."""
    import pandas as pd

    a, b = pd.read_csv(first, low_memory=False), pd.read_csv(second, low_memory=False)
    if list(a.columns) != list(b.columns) or len(a) != len(b):
        return {"identical": False, "reason": "different columns or rows"}
    differing, rows, largest = {}, set(), {}
    for column in a.columns:
        left, right = a[column], b[column]
        same = (left == right) | (left.isna() & right.isna())
        if not same.all():
            differing[column] = int((~same).sum())
            rows.update(a.loc[~same, "case_id"])
            kind = column.split("_", 1)[-1]
            if pd.api.types.is_numeric_dtype(left) and pd.api.types.is_numeric_dtype(right):
                largest[kind] = max(largest.get(kind, 0.0), float((left - right).abs().max()))
            else:
                largest[kind] = "text"
    families = sorted({c.split("_", 1)[0] for c in differing})
    return {"identical": not differing, "differing_columns": len(differing), "families": families,
            "largest_difference_by_feature": largest, "cases_differing": len(rows), "cases": sorted(rows)[:20]}


# ---------------------------------------------------------------------- STS_001 in process
def sts_in_process(engines: dict[str, Path], repeats: int) -> dict:
    masks = sorted((STS / "nifti" / "mask").glob("*.nii.gz"))
    model = _ct_model()
    results: dict[str, dict] = {name: {"screen": [], "plain": []} for name in engines}
    radiomic = {}
    for _ in range(repeats):  # one fresh process per engine and repeat, alternating
        for name, engine in engines.items():
            command = [sys.executable, "-c", _IN_PROCESS, str(STS / "dicom" / "image"), str(masks[0]), str(model), "1"]
            _, _, done = run(command, engine)
            measured = json.loads(done.stdout.strip().splitlines()[-1])
            results[name]["screen"] += measured["screen"]
            results[name]["plain"] += measured["plain"]
            radiomic[name] = measured["radiomic"]
    out = {}
    for name, values in results.items():
        screen, plain = median([w for w, _ in values["screen"]]), median([w for w, _ in values["plain"]])
        out[name] = {"screen_s": screen, "screen_cpu_s": median([c for _, c in values["screen"]]),
                     "plain_pyradiomics_s": plain, "plain_cpu_s": median([c for _, c in values["plain"]]),
                     "ratio": screen / plain, "runs": len(values["screen"])}
    if len(radiomic) == 2:
        first, second = radiomic.values()
        differing = {n: abs(first[n] - second[n]) for n in first
                     if not (first[n] == second[n] or (first[n] != first[n] and second[n] != second[n]))}  # NaN == NaN
        out["radiomic_features_identical"] = list(first) == list(second) and not differing
        out["radiomic_features_differing"] = differing
    return out


def _ct_model() -> Path:
    sys.path.insert(0, str(REPO / "benchmarks"))
    from bench_speed import ct_model  # the CT bundle bench_speed.py screens with (built once)

    return ct_model()


# ------------------------------------------------------------------------------- main
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cases", type=int, default=473, help="LIDC crops (manifest order)")
    parser.add_argument("--before", type=Path, help="RadFusionScreen folder of the engine to compare with")
    parser.add_argument("--skip-cohort", action="store_true")
    parser.add_argument("--skip-ct", action="store_true")
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "radiomics_speed.json")
    args = parser.parse_args()
    engines = {"before": args.before.resolve(), "after": ENGINE} if args.before else {"after": ENGINE}
    report: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "repeats": args.repeats,
                    "engines": {k: str(v) for k, v in engines.items()}, "cuda": "not measured (no GPU)"}
    if not args.skip_cohort and LIDC.is_dir():
        report["lidc_cohort"] = lidc_cohort(engines, args.repeats, args.cases)
    if not args.skip_ct and STS.is_dir():
        report["sts001_in_process"] = sts_in_process(engines, args.repeats)
    print_table(report, list(engines))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1))
    print(f"written: {args.json}")
    return 0


def print_table(report: dict, names: list[str]) -> None:
    header = "".join(f"{name + ' (wall / CPU)':>26}" for name in names)
    print(f"\n{'figure (median of ' + str(report['repeats']) + ')':<46}{header}")
    cohort = report.get("lidc_cohort")
    if cohort:
        for variant, label in (("default", "default (deep features)"), ("no_deep", "--no-deep")):
            figures = cohort[variant]
            row = "".join(f"{figures[n]['wall_s']:>15.1f} s /{figures[n]['cpu_s']:>6.0f} s" for n in names)
            print(f"{'LIDC ' + str(cohort['cases']) + ' crops, --workers 2, ' + label:<46}{row}")
            if "tables_identical" in cohort[variant]:
                same = cohort[variant]["tables_identical"]
                detail = "yes" if same["identical"] else (
                    f"no: {same['differing_columns']} columns, largest difference by feature "
                    f"{same.get('largest_difference_by_feature')} ({same.get('cases_differing')} cases)")
                print(f"{'  feature tables before == after':<46}{detail}")
    ct = report.get("sts001_in_process")
    if ct:
        row = "".join(f"{ct[n]['screen_s']:>15.2f} s /{ct[n]['screen_cpu_s']:>6.1f} s" for n in names)
        print(f"{'STS_001 CT screen, in one process':<46}{row}")
        row = "".join(f"{ct[n]['plain_pyradiomics_s']:>15.2f} s /{ct[n]['plain_cpu_s']:>6.1f} s" for n in names)
        print(f"{'  plain pyradiomics, same process':<46}{row}")
        print(f"{'  ratio screen / plain pyradiomics':<46}" + "".join(f"{ct[n]['ratio']:>26.2f}" for n in names))
        if "radiomic_features_identical" in ct:
            differing = ct.get("radiomic_features_differing") or {}
            detail = "yes" if ct["radiomic_features_identical"] else f"no: {differing}"
            print(f"{'  radiomic features before == after':<46}{detail}")
    print(f"CUDA: {report['cuda']}")


if __name__ == "__main__":
    raise SystemExit(main())
