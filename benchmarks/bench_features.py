"""Feature-extraction benchmark: wall time and peak memory, side by side with plain pyradiomics.

Run:  .venv/bin/python benchmarks/bench_features.py [--repeats 5] [--json benchmarks/results/features.json]

Cases (read from ../shared/data; a missing one is reported and skipped):
  busi_2d   a BUSI ultrasound image (2D, US params)
  sts001_ct the STS_001 CT series (DICOM folder) with its NIfTI GTV mask (CT params)
Variants per case, each timed `repeats` times in one warm process (medians, min, max):
  pyradiomics_uncropped  plain RadiomicsFeatureExtractor.execute on the full volume, same params
  radiomic_cropped       our RadiomicExtractor (ROI crop + margin first)
  deep                   EfficientNet-Lite0 features on the ROI crop (model loaded once, warm)
  case_total             read image + mask, radiomic + deep (CaseFeatureExtractor.extract_paths)
Peak RSS is measured per variant in a fresh subprocess (ru_maxrss of that process).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
CASES = {
    "busi_2d": (SHARED / "busi/images/malignant_10.png", SHARED / "busi/masks/malignant_10.png", "US"),
    "sts001_ct": (
        SHARED / "dicom/sts_rtstruct/STS_001/CT/dicom/image",
        next(iter(sorted((SHARED / "dicom/sts_rtstruct/STS_001/CT/nifti/mask").glob("*.nii.gz"))), None)
        if (SHARED / "dicom/sts_rtstruct/STS_001/CT/nifti/mask").exists()
        else None,
        "CT",
    ),
}
VARIANTS = ("pyradiomics_uncropped", "radiomic_cropped", "deep", "case_total")


def _runner(case: str, variant: str, repeats: int) -> dict:
    """Build the variant's callable once (warm), then time it `repeats` times."""
    from RadFusionScreenLib.features.case_features import CaseFeatureExtractor, ExtractionConfig
    from RadFusionScreenLib.inputs.images import read_image_with_metadata, read_mask
    from RadFusionScreenLib.features.radiomic import RadiomicExtractor, default_params_path

    image_path, mask_path, modality = CASES[case]
    image, _ = read_image_with_metadata(image_path)
    mask = read_mask(mask_path, reference=image)
    params = str(default_params_path(modality))
    if variant == "pyradiomics_uncropped":
        from radiomics import featureextractor

        plain = featureextractor.RadiomicsFeatureExtractor(params)
        run = lambda: plain.execute(image, mask)  # noqa: E731
    elif variant == "radiomic_cropped":
        ours = RadiomicExtractor(params)
        run = lambda: ours.execute(image, mask)  # noqa: E731
    elif variant == "deep":
        from RadFusionScreenLib.features.deep import get_deep_extractor

        network = get_deep_extractor("efficientnet-lite0", modality=modality)
        network.extract(image, mask)  # warm-up: model load and first-call allocations
        run = lambda: network.extract(image, mask)  # noqa: E731
    else:
        extractor = CaseFeatureExtractor(ExtractionConfig(modality=modality))
        extractor.extract_paths(image_path, mask_path)  # warm-up
        run = lambda: extractor.extract_paths(image_path, mask_path)  # noqa: E731
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = run()
        seconds.append(time.perf_counter() - start)
    n_features = len(result) if isinstance(result, dict) else getattr(result, "size", 0)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "peak_rss_mb": peak_mb, "n_outputs": int(n_features)}


def _measure(case: str, variant: str, repeats: int) -> dict:
    """Run one variant in a fresh interpreter so its peak memory is its own."""
    code = (
        "import json, sys; sys.path.insert(0, %r); import bench_features as b; "
        "print(json.dumps(b._runner(%r, %r, %d)))" % (str(Path(__file__).parent), case, variant, repeats)
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "failed"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cases", nargs="*", default=list(CASES))
    parser.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "features.json"))
    args = parser.parse_args()

    results: dict[str, dict] = {}
    for case in args.cases:
        image_path, mask_path, _ = CASES[case]
        if mask_path is None or not Path(image_path).exists() or not Path(mask_path).exists():
            print(f"{case}: skipped (shared data not found)")
            continue
        results[case] = {variant: _measure(case, variant, args.repeats) for variant in VARIANTS}

    print(f"\n{'case':<11} {'variant':<22} {'median s':>9} {'min s':>8} {'max s':>8} {'peak MB':>8} {'outputs':>8}")
    for case, variants in results.items():
        for variant, figures in variants.items():
            if "error" in figures:
                print(f"{case:<11} {variant:<22} error: {figures['error']}")
                continue
            s = figures["seconds"]
            figures.update(median_s=statistics.median(s), min_s=min(s), max_s=max(s))
            print(
                f"{case:<11} {variant:<22} {figures['median_s']:9.3f} {figures['min_s']:8.3f} "
                f"{figures['max_s']:8.3f} {figures['peak_rss_mb']:8.0f} {figures['n_outputs']:8d}"
            )
        plain, cropped = variants.get("pyradiomics_uncropped", {}), variants.get("radiomic_cropped", {})
        if "median_s" in plain and "median_s" in cropped:
            ratio = cropped["median_s"] / plain["median_s"]
            variants["ratio_cropped_to_plain"] = ratio
            print(f"{case:<11} radiomic cropped / plain pyradiomics time ratio: {ratio:.3f}")
        if "median_s" in plain and "median_s" in variants.get("case_total", {}):
            ratio = variants["case_total"]["median_s"] / plain["median_s"]
            variants["ratio_case_total_to_plain"] = ratio
            print(f"{case:<11} whole case (radiomic + deep + I/O) / plain pyradiomics ratio: {ratio:.3f}")

    machine = {"python": platform.python_version(), "machine": platform.machine(), "cpus": _cpu_count()}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"machine": machine, "repeats": args.repeats, "results": results}, indent=2))
    print(f"\nwritten: {args.json}")
    return 0


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


if __name__ == "__main__":
    raise SystemExit(main())
