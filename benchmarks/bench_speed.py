"""Speed and scale benchmark: one command, a printed table, benchmarks/results/speed.json.

Run:  .venv/bin/python benchmarks/bench_speed.py [--repeats 5] [--cohort 100 [484]] [--skip-large]

Every timing is a median of ``repeats`` runs (with min and max), measured side by side in one
run so that ratios compare like with like. Cases:

- ``busi_2d``: a BUSI ultrasound case (../shared/data/busi), shipped model busi-ultrasound;
- ``sts001_ct``: the STS_001 CT DICOM series with its GTV mask (../shared/data/dicom/sts_rtstruct);
- ``synthetic_ct_512``: a generated 512 x 512 x 300 CT with a ~100 mL lesion.

The CT cases are screened with a CT model bundle trained here on generated CT phantoms
(models of real CT cohorts would cost the same: the stages are identical).

Figures: interactive screening, warm (model loaded once, as in Slicer): per-stage times and
the ratio *whole screen / plain pyradiomics* (``RadiomicsFeatureExtractor.execute`` on the
uncropped volume with the bundle's params, pyradiomics as installed), with radiomics in worker
processes (`radfusion screen`) and, for 3D cases, in one process (the Slicer Logic and the
Python API); cold start (fresh process to first result: the API in one process, and the
`radfusion screen` CLI that the Slicer module's Analyze button starts) and ``radfusion
--help``; peak RSS of screening each case in a fresh process; cohort extraction of
``--cohort`` BUSI cases with 1 and 2 worker processes (cases/minute, scaling ratio, peak RSS
of a worker). GPU: measured only where CUDA is present (``--device cuda``).
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
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
BUSI = SHARED / "busi"
STS = SHARED / "dicom" / "sts_rtstruct" / "STS_001" / "CT"
STAGES = ("io", "radiomics", "deep", "model", "gradcam", "total")
WORK = Path(tempfile.gettempdir()) / "radfusion-bench"


def figures(values: list[float]) -> dict[str, float]:
    return {"median_s": statistics.median(values), "min_s": min(values), "max_s": max(values), "n": len(values)}


# ---------------------------------------------------------------------------- cases
def cases(skip_large: bool) -> dict[str, tuple[Path, Path, str]]:
    """name -> (image, mask, model); missing shared data is skipped with a line."""
    found = {}
    if BUSI.is_dir():
        found["busi_2d"] = (BUSI / "images" / "malignant_99.png", BUSI / "masks" / "malignant_99.png", "busi-ultrasound")
    else:
        print(f"skipped busi_2d: {BUSI} not found")
    masks = sorted((STS / "nifti" / "mask").glob("*.nii.gz")) if STS.is_dir() else []
    if masks:
        found["sts001_ct"] = (STS / "dicom" / "image", masks[0], str(ct_model()))
    else:
        print(f"skipped sts001_ct: {STS} not found")
    if not skip_large:
        found["synthetic_ct_512"] = (*large_ct(), str(ct_model()))
    return found


def ct_model() -> Path:
    """A CT bundle trained on 24 generated phantoms (built once, kept in the temp folder)."""
    bundle = WORK / "ct-phantom-model"
    if not (bundle / "manifest.json").is_file():
        from RadFusionScreenLib.app.train_command import TrainOptions, build_model
        from RadFusionScreenLib.inputs.phantoms import write_ct_cohort

        manifest = write_ct_cohort(WORK / "ct-cohort", n_cases=24)
        build_model(manifest, bundle, TrainOptions(feature_sets=("radiomic", "fused"), classifiers=("lr",),
                                                   grid="quick", outer_folds=3, inner_folds=3, n_boot=100,
                                                   extraction={"modality": "CT"}))
    return bundle


def large_ct() -> tuple[Path, Path]:
    """512 x 512 x 300 CT (0.7 x 0.7 x 1.0 mm) with a ~100 mL lesion (radius 28.8 mm)."""
    image_path, mask_path = WORK / "ct512.nii.gz", WORK / "ct512_mask.nii.gz"
    if not image_path.is_file():
        import SimpleITK as sitk

        from RadFusionScreenLib.inputs.phantoms import synthetic_ct

        image, mask = synthetic_ct(shape=(300, 512, 512), spacing=(0.7, 0.7, 1.0), radius_mm=28.8, malignancy=0.6)
        WORK.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(image, str(image_path), useCompression=True)
        sitk.WriteImage(mask, str(mask_path), useCompression=True)
    return image_path, mask_path


# ---------------------------------------------------------------------- screening
def warm_screen(image: Path, mask: Path, model: str, repeats: int, device: str | None,
                processes: int | None = None) -> dict:
    """Stage timings of a loaded Screener and, side by side, plain pyradiomics. ``processes``:
    radiomics worker processes; the default, every core, is what `radfusion screen` (and so the
    Slicer module's Analyze button) uses; 1 is the in-process Slicer Logic / Python console."""
    import yaml
    from radiomics.featureextractor import RadiomicsFeatureExtractor

    from RadFusionScreenLib.inputs.images import read_image, read_mask
    from RadFusionScreenLib.serving.screening import Screener

    screener = Screener(model, device, processes=processes or os.cpu_count())
    reference = RadiomicsFeatureExtractor(yaml.safe_load(screener.extraction["params_yaml"]))
    volume = read_image(image)
    roi = read_mask(mask, reference=volume)
    stages: dict[str, list[float]] = {stage: [] for stage in STAGES}
    plain = []
    for _ in range(repeats):
        result = screener.screen(str(image), str(mask))
        for stage in STAGES:
            stages[stage].append(result.timings[stage])
        with warnings.catch_warnings():
            # plain pyradiomics on a uint8 picture overflows its bin edges (numpy 2 wraps 255 +
            # binWidth); timed as users run it, its warnings are not this benchmark's output
            warnings.simplefilter("ignore", RuntimeWarning)
            start = time.perf_counter()
            reference.execute(volume, roi)
            plain.append(time.perf_counter() - start)
    out = {stage: figures(values) for stage, values in stages.items()}
    out["plain_pyradiomics_uncropped"] = figures(plain)
    out["ratio_screen_to_plain_pyradiomics"] = out["total"]["median_s"] / out["plain_pyradiomics_uncropped"]["median_s"]
    out["roi_voxels"] = int(roi_count(roi))
    out["size"] = list(volume.GetSize())
    return out


def roi_count(mask) -> int:
    import numpy as np
    import SimpleITK as sitk

    return int(np.count_nonzero(sitk.GetArrayViewFromImage(mask)))


# Peaks from /proc VmHWM (ru_maxrss survives exec, so a child forked from this large benchmark
# process would report the parent's size). Worker processes: VmHWM of those still alive (idle
# pool workers), RUSAGE_CHILDREN of those already reaped (active_children() reaps the exited).
PEAKS = """
import multiprocessing as _mp, re as _re, resource as _r
def _hwm(pid):
    try:
        return int(_re.search(r'VmHWM:\\s+(\\d+)', open(f'/proc/{pid}/status').read()).group(1)) / 1024
    except (OSError, AttributeError):  # gone, or a zombie (reaped below)
        return 0.0
_live = max([_hwm(p.pid) for p in _mp.active_children()], default=0.0)
_mp.active_children()
print(_hwm('self'), max(_live, _r.getrusage(_r.RUSAGE_CHILDREN).ru_maxrss / 1024))
"""


def child(code: str) -> tuple[float, tuple[float, float], str]:
    """Wall seconds, (own peak RSS, largest child's peak RSS) in MB, and stdout of a fresh process."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code + "\n" + PEAKS], capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    lines = done.stdout.strip().splitlines()
    own, children = (float(v) for v in lines[-1].split())
    return wall, (own, children), "\n".join(lines[:-1])


def cold_screen(image: Path, mask: Path, model: str) -> dict:
    """Fresh process to first result, two ways: the Python API in one process (the Slicer Logic
    and console), and the `radfusion screen` CLI with its radiomics workers (what the Slicer
    module's Analyze button starts for every click)."""
    code = ("from RadFusionScreenLib import screen; "
            f"r = screen({str(image)!r}, {str(mask)!r}, model={model!r}); print(r.probability)")
    wall, (peak, _), _ = child(code)
    cli = ("import sys; from RadFusionScreenLib.app.cli import main; "
           f"code = main(['screen', {str(image)!r}, {str(mask)!r}, '--model', {model!r}, '--json'])")
    cli_wall, (cli_peak, cli_worker_peak), _ = child(cli)
    return {"fresh_process_to_first_result_s": wall, "peak_rss_mb": peak,
            "cli_fresh_process_to_first_result_s": cli_wall, "cli_peak_rss_mb": cli_peak,
            "cli_worker_peak_rss_mb": cli_worker_peak}


def help_time() -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "RadFusionScreenLib", "--help"], capture_output=True, check=True)
    return time.perf_counter() - start


# ------------------------------------------------------------------------- cohort
def cohort_scaling(n_cases: int) -> dict:
    import pandas as pd

    manifest = pd.read_csv(BUSI / "manifest.csv").head(n_cases)
    manifest = manifest.assign(image=[str(BUSI / p) for p in manifest["image"]],
                               mask=[str(BUSI / p) for p in manifest["mask"]])
    path = WORK / f"busi{n_cases}.csv"
    manifest.to_csv(path, index=False)
    out = {}
    for workers in (1, 2):
        code = ("import time; from RadFusionScreenLib.features.cohort import extract_cohort; t = time.perf_counter(); "
                f"extract_cohort({str(path)!r}, {str(WORK / f'busi_w{workers}.csv')!r}, workers={workers}, "
                "cache_dir=None, progress=False); print(time.perf_counter() - t)")
        wall, (own, worker), stdout = child(code)
        seconds = float(stdout.strip().splitlines()[-1])
        out[f"workers_{workers}"] = {"seconds": seconds, "cases_per_minute": 60 * n_cases / seconds,
                                     "process_wall_s": wall,
                                     "peak_rss_mb_per_worker": worker if workers > 1 else own}
    out["scaling_2_vs_1"] = out["workers_2"]["cases_per_minute"] / out["workers_1"]["cases_per_minute"]
    return out


# --------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cohort", type=int, nargs="+", default=[100],
                        help="BUSI cohort size(s) for the worker-scaling figure (0: skip)")
    parser.add_argument("--skip-large", action="store_true", help="leave out the 512 x 512 x 300 CT")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: auto)")
    parser.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "speed.json"))
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    import torch

    results: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "repeats": args.repeats,
                     "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (GPU not measured)",
                     "radfusion_help_s": help_time(), "cases": {}}
    for name, (image, mask, model) in cases(args.skip_large).items():
        results["cases"][name] = {"warm": warm_screen(image, mask, model, args.repeats, args.device),
                                  "cold": cold_screen(image, mask, model)}
        if results["cases"][name]["warm"]["size"][2] > 1:  # one-slice pictures always run in-process
            results["cases"][name]["warm_in_process"] = warm_screen(image, mask, model, args.repeats, args.device, 1)
        print_case(name, results["cases"][name])
    for n_cases in (n for n in args.cohort if n > 0 and BUSI.is_dir()):
        c = results.setdefault("cohort_extraction", {})[f"{n_cases}_cases"] = cohort_scaling(n_cases)
        print(f"cohort extraction, {n_cases} BUSI cases: 1 worker {c['workers_1']['cases_per_minute']:.0f} "
              f"cases/min, 2 workers {c['workers_2']['cases_per_minute']:.0f} cases/min, "
              f"scaling {c['scaling_2_vs_1']:.2f}x; peak RSS per worker {c['workers_2']['peak_rss_mb_per_worker']:.0f} MB")
    print(f"radfusion --help: {results['radfusion_help_s']:.2f} s; GPU: {results['gpu']}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2))
    print(f"written: {args.json}")


def print_case(name: str, figures_: dict) -> None:
    warm = figures_["warm"]
    print(f"\n{name} (size {warm['size']}, ROI {warm['roi_voxels']} voxels), warm median of "
          f"{warm['total']['n']} (min-max):")
    for stage in (*STAGES, "plain_pyradiomics_uncropped"):
        f = warm[stage]
        print(f"  {stage:<28} {f['median_s']:8.3f} s ({f['min_s']:.3f}-{f['max_s']:.3f})")
    print(f"  whole screen / plain pyradiomics: {warm['ratio_screen_to_plain_pyradiomics']:.2f}")
    if "warm_in_process" in figures_:
        one = figures_["warm_in_process"]
        print(f"  in one process (Slicer Logic, Python API): radiomics {one['radiomics']['median_s']:.3f} s, "
              f"total {one['total']['median_s']:.3f} s ({one['total']['min_s']:.3f}-{one['total']['max_s']:.3f}), "
              f"plain pyradiomics {one['plain_pyradiomics_uncropped']['median_s']:.3f} s, "
              f"ratio {one['ratio_screen_to_plain_pyradiomics']:.2f}")
    cold = figures_["cold"]
    print(f"  cold start: API in one process {cold['fresh_process_to_first_result_s']:.2f} s, peak RSS "
          f"{cold['peak_rss_mb']:.0f} MB; `radfusion screen` {cold['cli_fresh_process_to_first_result_s']:.2f} s, "
          f"peak RSS {cold['cli_peak_rss_mb']:.0f} MB + worker {cold['cli_worker_peak_rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
