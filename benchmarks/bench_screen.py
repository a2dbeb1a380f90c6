"""Screening latency with the shipped model: warm per-stage medians, cold start, peak memory.

Run:  .venv/bin/python benchmarks/bench_screen.py [--repeats 20] [--case malignant_99]

One process loads the bundle once (as the Slicer module does) and screens the same BUSI
case ``repeats`` times; each stage (io, radiomics, deep, model, gradcam, total) is reported
as median / min / max. Side by side, in the same process and on the same input, plain
pyradiomics (``RadiomicsFeatureExtractor.execute`` on the uncropped image with the bundle's
params) gives the reference time; the ratio whole-screen / plain-pyradiomics is printed.
Cold start (a fresh process: imports + bundle load + first case) and that process's peak RSS
are measured in a child process. Results: benchmarks/results/screen.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUSI = REPO.parent / "shared" / "data" / "busi"
STAGES = ("io", "radiomics", "deep", "model", "gradcam", "total")


def figures(values: list[float]) -> dict[str, float]:
    return {"median_s": statistics.median(values), "min_s": min(values), "max_s": max(values)}


def warm(case: str, repeats: int) -> dict:
    import yaml
    from radiomics.featureextractor import RadiomicsFeatureExtractor

    from RadFusionScreenLib.io import read_image, read_mask
    from RadFusionScreenLib.screening import Screener

    image_path, mask_path = BUSI / "images" / f"{case}.png", BUSI / "masks" / f"{case}.png"
    screener = Screener()
    timings: dict[str, list[float]] = {stage: [] for stage in STAGES}
    plain: list[float] = []
    params = yaml.safe_load(screener.extraction["params_yaml"])
    reference = RadiomicsFeatureExtractor(params)
    image = read_image(image_path)
    mask = read_mask(mask_path, reference=image)
    for _ in range(repeats):
        result = screener.screen(str(image_path), str(mask_path))
        for stage in STAGES:
            timings[stage].append(result.timings[stage])
        start = time.perf_counter()
        reference.execute(image, mask)
        plain.append(time.perf_counter() - start)
    out = {stage: figures(values) for stage, values in timings.items()}
    out["plain_pyradiomics_uncropped"] = figures(plain)
    out["ratio_screen_total_to_plain_pyradiomics"] = out["total"]["median_s"] / out["plain_pyradiomics_uncropped"]["median_s"]
    out["probability"] = result.probability
    return out


def cold(case: str) -> dict:
    code = (
        "import time; t=time.perf_counter(); from RadFusionScreenLib import screen; "
        f"r=screen('{BUSI}/images/{case}.png', '{BUSI}/masks/{case}.png'); "
        "print(time.perf_counter()-t)"
    )
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"process_wall_s": wall, "in_process_s": float(done.stdout.strip().splitlines()[-1]), "peak_rss_mb": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--case", default="malignant_99")
    parser.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "screen.json"))
    args = parser.parse_args()
    if not BUSI.is_dir():
        raise SystemExit(f"{BUSI} not found: this benchmark needs ../shared/data/busi")
    results = {"case": args.case, "repeats": args.repeats, "cold": cold(args.case), "warm": warm(args.case, args.repeats)}
    warm_figures = results["warm"]
    print(f"case {args.case}, warm, median of {args.repeats} (min-max):")
    for stage in (*STAGES, "plain_pyradiomics_uncropped"):
        f = warm_figures[stage]
        print(f"  {stage:<28} {f['median_s'] * 1000:8.1f} ms ({f['min_s'] * 1000:.1f}-{f['max_s'] * 1000:.1f})")
    print(f"  whole screen / plain pyradiomics: {warm_figures['ratio_screen_total_to_plain_pyradiomics']:.2f}")
    c = results["cold"]
    print(f"cold start (fresh process to first result): {c['process_wall_s']:.2f} s, peak RSS {c['peak_rss_mb']:.0f} MB")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2))
    print(f"written: {args.json}")


if __name__ == "__main__":
    main()
