"""How much the CT bundle's probability depends on how far the image extends beyond the nodule.

Run:  .venv/bin/python benchmarks/lidc_field_of_view.py [--min-margin 2]
      -> prints a table, writes benchmarks/results/lidc_field_of_view.json (about 2 min)

The CT bundle (models/lidc-ct-nodule) was trained on LIDC crops that end at, or a few slices
beyond, the nodule: half of the 473 masks touch the crop's first or last slice (median margin 0
slices, at most 7), in-plane 5-19 voxels of margin. A radiologist in Slicer screens the whole
scan, where the LoG and wavelet filters and the CNN's views see real lung above and below. No
whole LIDC scans are in ../shared/data, so this measures the same dependence the other way:
every crop with at least ``--min-margin`` slices beyond the mask on both sides is screened as
it is and again trimmed to the mask's own slices (the commonest training condition), through
the engine's public API (``Screener.screen``), with its diameter from nodules.csv. Reported:
the change in probability (trimmed minus crop; median, quartiles, extremes), the share of
cases whose side of the bundle's threshold changes, and the AUC of each version on these cases
(paired DeLong).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "RadFusionScreen"))

from RadFusionScreenLib.serving.screening import Screener  # noqa: E402
from RadFusionScreenLib.stats.roc import auc_ci_delong, delong_test  # noqa: E402

LIDC = REPO.parent / "shared" / "data" / "lidc"
BUNDLE = REPO / "models" / "lidc-ct-nodule"
RESULTS = REPO / "benchmarks" / "results"


def mask_slices(mask: sitk.Image) -> tuple[int, int]:
    """First and last slice (z index) holding the mask."""
    occupied = np.flatnonzero(sitk.GetArrayViewFromImage(mask).any(axis=(1, 2)))
    return int(occupied[0]), int(occupied[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--min-margin", type=int, default=2, help="slices beyond the mask on both sides (default 2)")
    parser.add_argument("--json", type=Path, default=RESULTS / "lidc_field_of_view.json")
    args = parser.parse_args()
    if not LIDC.is_dir():
        print(f"no LIDC data at {LIDC}: nothing to measure")
        return 0
    cases = pd.read_csv(LIDC / "manifest.csv").merge(pd.read_csv(LIDC / "nodules.csv")[["case_id", "diameter_mm"]],
                                                     on="case_id", validate="one_to_one")
    screener = Screener(BUNDLE, device="cpu")
    threshold = float(screener.bundle.threshold)
    started, rows, margins = time.perf_counter(), [], []
    for case in cases.itertuples():
        image, mask = sitk.ReadImage(str(LIDC / case.image)), sitk.ReadImage(str(LIDC / case.mask))
        first, last = mask_slices(mask)
        below, above = first, image.GetSize()[2] - 1 - last
        margins.append(min(below, above))
        if min(below, above) < args.min_margin:
            continue
        clinical = {"diameter_mm": case.diameter_mm}
        as_cropped = screener.screen(image, mask, clinical=clinical, heatmap=False).probability
        trimmed = screener.screen(image[:, :, first:last + 1], mask[:, :, first:last + 1], clinical=clinical,
                                  heatmap=False).probability
        rows.append({"case_id": case.case_id, "label": int(case.label), "slices": image.GetSize()[2],
                     "margin_below": below, "margin_above": above, "p_crop": as_cropped, "p_trimmed": trimmed})
    table = pd.DataFrame(rows)
    change = table["p_trimmed"] - table["p_crop"]
    flipped = (table["p_trimmed"] >= threshold) != (table["p_crop"] >= threshold)
    y = table["label"].to_numpy()
    report = {
        "bundle": str(BUNDLE.relative_to(REPO)), "threshold": threshold,
        "cohort_margin_slices": {"min_of_both_sides_median": float(np.median(margins)),
                                 "share_touching_an_end": float(np.mean(np.asarray(margins) == 0))},
        "cases": len(table), "min_margin": args.min_margin,
        "change_trimmed_minus_crop": {"median": float(change.median()), "q1": float(change.quantile(0.25)),
                                      "q3": float(change.quantile(0.75)), "min": float(change.min()),
                                      "max": float(change.max()), "median_abs": float(change.abs().median()),
                                      "share_abs_over_0.05": float((change.abs() > 0.05).mean())},
        "side_of_threshold_changed": int(flipped.sum()),
        "auc_crop": auc_ci_delong(y, table["p_crop"]).auc if 0 < y.sum() < len(y) else None,
        "auc_trimmed": auc_ci_delong(y, table["p_trimmed"]).auc if 0 < y.sum() < len(y) else None,
        "p_delong_trimmed_vs_crop": delong_test(y, table["p_trimmed"], table["p_crop"]).p_value
        if 0 < y.sum() < len(y) else None,
        "seconds": time.perf_counter() - started,
        "rows": rows,
    }
    args.json.write_text(json.dumps(report, indent=1))
    print(f"{len(cases)} crops; the mask touches the first or last slice in "
          f"{report['cohort_margin_slices']['share_touching_an_end']:.0%}")
    print(f"{len(table)} crops with >= {args.min_margin} slices beyond the mask on both sides, screened as cropped "
          f"and trimmed to the mask's slices ({report['seconds']:.0f} s)")
    c = report["change_trimmed_minus_crop"]
    print(f"probability change (trimmed - crop): median {c['median']:+.3f} (IQR {c['q1']:+.3f} to {c['q3']:+.3f}), "
          f"range {c['min']:+.3f} to {c['max']:+.3f}; |change| > 0.05 in {c['share_abs_over_0.05']:.0%}")
    print(f"side of the threshold {threshold:.3f} changed: {report['side_of_threshold_changed']} of {len(table)}")
    if report["auc_crop"] is not None:
        print(f"AUC on these cases: crop {report['auc_crop']:.3f}, trimmed {report['auc_trimmed']:.3f} "
              f"(paired DeLong p = {report['p_delong_trimmed_vs_crop']:.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
