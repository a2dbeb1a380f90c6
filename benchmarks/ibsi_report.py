"""IBSI 1 compliance tables: pyradiomics (through RadFusionScreenLib.features.ibsi) vs the consensus values.

    .venv/bin/python benchmarks/ibsi_report.py            # markdown tables on stdout
    .venv/bin/python benchmarks/ibsi_report.py --mismatches

Reads ../shared/data/ibsi (or $RADFUSION_SHARED_DATA/ibsi). Counts per IBSI family:
``matched / compared`` and ``n/m`` = reference tags (with a value) that have no pyradiomics
counterpart. CT-phantom modes: ``params`` = the shipped ct_config_*.yaml; ``IBSI grid`` = IBSI's
interpolation done outside pyradiomics first; ``+ re-seg`` = also IBSI's two-step re-segmentation.
The same comparisons are asserted by RadFusionScreen/Testing/Python/test_ibsi.py.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "RadFusionScreen"))
sys.path.insert(0, str(ROOT / "RadFusionScreen" / "Testing" / "Python"))

import ibsi_reference as ref  # noqa: E402

SHARED = Path(os.environ.get("RADFUSION_SHARED_DATA", ROOT.parent / "shared" / "data")) / "ibsi"
FAMILIES = ("morph", "stat", "ih", "cm", "rlm", "szm", "ngl", "ngt", "other")
MODE_LABELS = {"params": "params", "ibsi_grid": "IBSI grid", "ibsi_grid_reseg": "IBSI grid + re-seg"}


def read_pair(folder: Path, image_name: str) -> tuple[sitk.Image, sitk.Image]:
    return (sitk.ReadImage(str(folder / "nifti" / "image" / image_name)),
            sitk.ReadImage(str(folder / "nifti" / "mask" / "mask.nii.gz")))


def cell(count: ref.FamilyCount) -> str:
    if count.reference == 0:
        return "-"
    return f"{count.matched}/{count.compared} ({count.not_mappable} n/m)"


def table(rows: dict[str, dict[str, ref.FamilyCount]]) -> str:
    head = "| | " + " | ".join(FAMILIES) + " | total |"
    lines = [head, "|" + "---|" * (len(FAMILIES) + 2)]
    for label, counts in rows.items():
        total = ref.totals(counts)
        cells = [cell(counts[family]) for family in FAMILIES]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {cell(total)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mismatches", action="store_true", help="list mismatched tags with values")
    args = parser.parse_args()
    import radiomics

    print(f"pyradiomics {radiomics.__version__}, Python {sys.version.split()[0]}\n")
    references = SHARED / "ibsi_1_reference_values"

    image, mask = read_pair(SHARED / "ibsi_1_digital_phantom", "phantom.nii.gz")
    reference = ref.load_reference(references / "ibsi_1_dig_phantom.csv")
    values = ref.phantom_values(image, mask)
    counts = ref.compare(values, reference)
    print("## Digital phantom\n")
    print(table({"phantom": counts}))
    if args.mismatches:
        _print_mismatches(ref.totals(counts).mismatched, values, reference)

    image, mask = read_pair(SHARED / "ibsi_1_ct_radiomics_phantom", "phantom.nii.gz")
    print("\n## CT radiomics phantom\n")
    rows = {}
    for config in "ABCDE":
        reference = ref.load_reference(references / f"ibsi_1_chest_config_{config.lower()}.csv")
        for mode, label in MODE_LABELS.items():
            values = ref.config_values(config, image, mask, mode=mode)
            rows[f"{config}, {label}"] = counts = ref.compare(values, reference)
            if args.mismatches and mode != "ibsi_grid":
                print(f"\n{config}, {label}:")
                _print_mismatches(ref.totals(counts).mismatched, values, reference)
    print(table(rows))


def _print_mismatches(tags, values, reference) -> None:
    for tag in sorted(tags):
        value, (expected, tolerance) = values[tag], reference[tag]
        print(f"  {tag:32s} {value:12.5g}  reference {expected:10.4g} +- {tolerance:.3g}")


if __name__ == "__main__":
    main()
