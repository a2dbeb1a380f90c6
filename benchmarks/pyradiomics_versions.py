"""Compare two pyradiomics builds feature by feature (e.g. pyradiomics 3.0.1 vs pyradiomics-bhklab).

    # in each environment (any Python with radiomics, SimpleITK, numpy, pyyaml):
    PYTHON benchmarks/pyradiomics_versions.py dump /tmp/features_<name>.json
    .venv/bin/python benchmarks/pyradiomics_versions.py compare /tmp/features_a.json /tmp/features_b.json

Cases: the IBSI digital phantom (4 shipped variants), the CT phantom (configurations A-E),
STS_001 CT and MR with the shipped CT / MR defaults (LoG + wavelet), a synthetic CT volume.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "RadFusionScreen"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from RadFusionScreenLib.features.radiomic import PARAMS_DIR, RadiomicExtractor, default_params_path  # noqa: E402

SHARED = Path(os.environ.get("RADFUSION_SHARED_DATA", ROOT.parent / "shared" / "data"))


def _pair(folder: Path, image: str) -> tuple[sitk.Image, sitk.Image]:
    mask = next((folder / "mask").glob("*.nii.gz"))
    return sitk.ReadImage(str(folder / "image" / image)), sitk.ReadImage(str(mask))


def dump(path: Path) -> None:
    import radiomics
    from radiomic_crop import ct_volume

    phantom = _pair(SHARED / "ibsi" / "ibsi_1_digital_phantom" / "nifti", "phantom.nii.gz")
    ct = _pair(SHARED / "ibsi" / "ibsi_1_ct_radiomics_phantom" / "nifti", "phantom.nii.gz")
    sts = SHARED / "dicom" / "sts_rtstruct" / "STS_001"
    cases = {f"phantom_{v}": (PARAMS_DIR / "ibsi" / f"phantom_{v}.yaml", phantom)
             for v in ("3D", "2_5D", "3D_comb", "2_5D_comb")}
    cases.update({f"ct_config_{c}": (PARAMS_DIR / "ibsi" / f"ct_config_{c}.yaml", ct) for c in "ABCDE"})
    cases["sts_ct_default"] = (default_params_path("CT"), _pair(sts / "CT" / "nifti", "image.nii.gz"))
    cases["sts_mr_default"] = (default_params_path("MR"), _pair(sts / "MR_T1" / "nifti", "image.nii.gz"))
    cases["synthetic_ct_default"] = (default_params_path("CT"), ct_volume((160, 160, 48)))
    start = time.perf_counter()
    features = {name: RadiomicExtractor(params).execute(*images) for name, (params, images) in cases.items()}
    result = {"pyradiomics": radiomics.__version__, "python": sys.version.split()[0],
              "seconds": time.perf_counter() - start, "features": features}
    path.write_text(json.dumps(result))
    print(f"pyradiomics {result['pyradiomics']} (Python {result['python']}): "
          f"{sum(map(len, features.values()))} features in {result['seconds']:.1f} s -> {path}")


def compare(path_a: Path, path_b: Path) -> None:
    a, b = json.loads(path_a.read_text()), json.loads(path_b.read_text())
    for label, dump_ in (("A", a), ("B", b)):
        print(f"{label}: pyradiomics {dump_['pyradiomics']} (Python {dump_['python']})")
    total = differing = 0
    worst = (0.0, "")
    for case, features_a in a["features"].items():
        features_b = b["features"][case]
        if features_a.keys() != features_b.keys():
            print(f"{case}: feature names differ: {sorted(set(features_a) ^ set(features_b))[:5]}")
        for name in features_a.keys() & features_b.keys():
            x, y = features_a[name], features_b[name]
            total += 1
            if x != y and not (math.isnan(x) and math.isnan(y)):
                differing += 1
                rel = abs(x - y) / max(abs(x), 1e-300)
                worst = max(worst, (rel, f"{case}:{name}"))
    print(f"{total} features compared, {differing} differ; largest relative difference {worst[0]:.1e} {worst[1]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("dump").add_argument("out", type=Path)
    cmp_parser = sub.add_parser("compare")
    cmp_parser.add_argument("a", type=Path)
    cmp_parser.add_argument("b", type=Path)
    args = parser.parse_args()
    if args.command == "dump":
        dump(args.out)
    else:
        compare(args.a, args.b)


if __name__ == "__main__":
    main()
