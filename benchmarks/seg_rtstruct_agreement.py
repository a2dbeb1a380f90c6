"""Agreement of our DICOM mask readers with independent references.

Run:  .venv/bin/python benchmarks/seg_rtstruct_agreement.py [--json OUT.json]

RTSTRUCT: every STS series in ../shared/data/dicom/sts_rtstruct (3 patients x CT, MR T1,
PET): the GTV_Mass ROI rasterised by `read_dicom_mask` onto the DICOM image series, against
the NIfTI voxel mask shipped beside it (made by MIRP from the same contours, on the same
grid). Reported: voxel counts, Dice, voxels only in one mask, and the rasterisation time.

SEG: the multi-segment QIN-HEADNECK PET SEG, each segment against pydicom's own decoding
of its frames placed by ImagePositionPatient (an independent reading of the same file),
and the bit-packing phantom against its image (1 inside the round region) plus its four
corner pixels per slice.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "RadFusionScreen"))
SHARED = REPO.parent / "shared" / "data" / "dicom"

from RadFusionScreenLib.inputs.dicom_seg import list_segments, read_dicom_mask  # noqa: E402
from RadFusionScreenLib.inputs.images import check_geometry, read_image  # noqa: E402


def _voxels(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image).astype(bool)


def _compare(ours: np.ndarray, truth: np.ndarray) -> dict:
    both = int(np.count_nonzero(ours & truth))
    total = int(ours.sum() + truth.sum())
    return {"ours_voxels": int(ours.sum()), "reference_voxels": int(truth.sum()),
            "dice": 2.0 * both / total if total else 1.0,
            "only_ours": int(np.count_nonzero(ours & ~truth)), "only_reference": int(np.count_nonzero(truth & ~ours))}


def rtstruct_rows() -> list[dict]:
    rows = []
    for case in sorted(p.name for p in (SHARED / "sts_rtstruct").glob("STS_*")):
        for modality in ("CT", "MR_T1", "PET"):
            base = SHARED / "sts_rtstruct" / case / modality
            reference = read_image(base / "dicom" / "image")
            rtstruct = base / "dicom" / "mask" / "RS.dcm"
            start = time.perf_counter()
            ours = read_dicom_mask(rtstruct, reference)  # one ROI per file: no choice needed
            seconds = time.perf_counter() - start
            truth = sitk.ReadImage(str(base / "nifti" / "mask" / "mask.nii.gz"))
            check_geometry(reference, truth)
            row = {"case": case, "modality": modality, "roi": list_segments(rtstruct)[0][1],
                   **_compare(_voxels(ours), _voxels(truth)), "seconds": seconds}
            row["volume_ml"] = row["ours_voxels"] * float(np.prod(reference.GetSpacing())) / 1000
            rows.append(row)
    return rows


def seg_rows() -> list[dict]:
    path = SHARED / "seg_multisegment" / "mask" / "mask.dcm"
    reference = read_image(SHARED / "seg_multisegment" / "image")
    dataset = pydicom.dcmread(path)
    frames = dataset.pixel_array.astype(bool)
    rows = []
    for number, name in list_segments(path):
        start = time.perf_counter()
        ours = _voxels(read_dicom_mask(path, reference, number))
        seconds = time.perf_counter() - start
        expected = np.zeros_like(ours)
        for item, frame in zip(dataset.PerFrameFunctionalGroupsSequence, frames):
            if int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber) == number:
                position = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
                expected[reference.TransformPhysicalPointToIndex(position)[2]] |= frame
        slices = np.flatnonzero(ours.any(axis=(1, 2)))
        rows.append({"segment": number, "name": name, **_compare(ours, expected),
                     "slices": f"{slices.min()}-{slices.max()}", "seconds": seconds})
    return rows


def bitpacking_row() -> dict:
    reference = read_image(SHARED / "seg_bitpacking" / "image")
    ours = _voxels(read_dicom_mask(SHARED / "seg_bitpacking" / "mask" / "mask.dcm", reference))
    expected = _voxels(reference)
    expected[:, [0, 0, -1, -1], [0, -1, 0, -1]] = True
    return {"size": reference.GetSize(), "per_slice": ours.sum(axis=(1, 2)).tolist(), **_compare(ours, expected)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the numbers as JSON")
    args = parser.parse_args()
    results = {"rtstruct_vs_nifti": rtstruct_rows(), "seg_vs_pydicom": seg_rows(), "seg_bitpacking": bitpacking_row()}
    print("RTSTRUCT GTV_Mass vs shipped NIfTI mask")
    print(f"{'case':8} {'series':6} {'ours':>7} {'nifti':>7} {'dice':>7} {'only_ours':>9} {'only_nifti':>10} "
          f"{'ml':>7} {'s':>6}")
    for r in results["rtstruct_vs_nifti"]:
        print(f"{r['case']:8} {r['modality']:6} {r['ours_voxels']:7d} {r['reference_voxels']:7d} {r['dice']:7.4f} "
              f"{r['only_ours']:9d} {r['only_reference']:10d} {r['volume_ml']:7.1f} {r['seconds']:6.3f}")
    print("\nSEG (QIN-HEADNECK PET, 11 segments) vs pydicom-decoded frames placed by position")
    for r in results["seg_vs_pydicom"]:
        print(f"  {r['segment']:2d} {r['name']:20} voxels {r['ours_voxels']:5d} (expected {r['reference_voxels']:5d}) "
              f"dice {r['dice']:.4f} slices {r['slices']} {r['seconds']:.3f} s")
    b = results["seg_bitpacking"]
    print(f"\nSEG bit packing {b['size']}: per slice {b['per_slice']}, dice vs image+corners {b['dice']:.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
