"""The bad-input catalogue, through the command line a user runs: each bad input gives exit
status 2, one clear message (what, which file, what to do) and leaves no output file behind.

README.md lists the same catalogue. Deeper checks of each reader live in test_io.py,
test_dicom.py, test_cohort.py, test_bundle.py and test_screen.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from conftest import REPO_ROOT
from RadFusionScreenLib.app.cli import main
from RadFusionScreenLib.inputs.images import read_image
from test_dicom import stored_values, write_series

SHIPPED = REPO_ROOT / "models" / "busi-ultrasound"


def volume(tmp: Path, name: str, array: np.ndarray, origin=(0.0, 0.0, 0.0)) -> Path:
    image = sitk.GetImageFromArray(array)
    image.SetOrigin(origin)
    path = tmp / name
    sitk.WriteImage(image, str(path))
    return path


def ct(shape=(12, 40, 40), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    array = rng.normal(40, 20, shape)
    array[:, :, :5] = -1000
    return array.astype(np.int16)


def box(shape=(12, 40, 40), value=1) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    mask[3:9, 10:30, 12:28] = value
    return mask


def case_files(tmp: Path, image=None, mask=None, image_name="image.nrrd") -> tuple[Path, Path]:
    return (volume(tmp, image_name, ct() if image is None else image),
            volume(tmp, "mask.nrrd", box() if mask is None else mask))


def dicom_case(tmp: Path, damage: str) -> list[str]:
    folder = tmp / "series"
    series = write_series(folder, stored_values())
    if damage == "two series":
        write_series(folder, stored_values(2)[:5], prefix="B", seed=4)
    elif damage == "missing slice":
        series["files"][4].unlink()
    elif damage == "truncated":
        damaged = series["files"][6]
        damaged.write_bytes(damaged.read_bytes()[:-100])
    return [str(folder), str(tmp / "any_mask.nrrd")]


def features(tmp: Path, setup) -> list[str]:
    image, mask = setup(tmp)
    return ["features", str(image), str(mask), "--no-deep", "--modality", "CT"]


def bundle_copy(tmp: Path, damage: str) -> Path:
    bundle = tmp / "bundle"
    shutil.copytree(SHIPPED, bundle)
    if damage == "tampered":
        weights = bundle / "weights.safetensors"
        data = bytearray(weights.read_bytes())
        data[100] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif damage == "missing file":
        (bundle / "weights.safetensors").unlink()
    elif damage == "newer format":
        manifest = json.loads((bundle / "manifest.json").read_text())
        manifest["format_version"] = "2"
        (bundle / "manifest.json").write_text(json.dumps(manifest))
    elif damage == "pickle inside":
        (bundle / "model.pkl").write_bytes(b"\x80\x04N.")
    return bundle


def screen_with(tmp: Path, damage: str) -> list[str]:
    image, mask = case_files(tmp, image=(ct()[:1] + 1000).astype(np.uint8), mask=box()[4:5])
    return ["screen", str(image), str(mask), "--model", str(bundle_copy(tmp, damage))]


def manifest(tmp: Path, problem: str) -> list[str]:
    image, mask = case_files(tmp)
    rows = [{"case_id": "a", "image": image.name, "mask": mask.name},
            {"case_id": "a" if problem == "duplicate case_id" else "b", "image": image.name, "mask": mask.name}]
    path = tmp / "manifest.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return ["extract", str(path), "--no-deep", "--modality", "CT", "--quiet"]


# input → (argv builder, message fragment); "works" entries must succeed.
CATALOGUE = {
    "empty mask": (lambda t: features(t, lambda d: case_files(d, mask=box() * 0)), "empty (no non-zero voxel)"),
    "one-voxel mask": (lambda t: features(t, lambda d: case_files(d, mask=np.pad(np.ones((1, 1, 1), np.uint8),
                                                                               ((5, 6), (20, 19), (20, 19))))),
                       "single voxel"),
    "mask label absent": (lambda t: [*features(t, case_files), "--label", "7"], "label 7 is not in"),
    "non-binary mask, no label chosen": (lambda t: features(t, lambda d: case_files(d, mask=box() + box(value=1) *
                                                                                  (np.indices(box().shape)[2] > 20))),
                                         "several labels"),
    "mask/image geometry mismatch": (lambda t: features(t, lambda d: (volume(d, "image.nrrd", ct()),
                                                                       volume(d, "mask.nrrd", box(), origin=(0, 0, 5.0)))),
                                     "origin"),
    "2D mask for a 3D image": (lambda t: features(t, lambda d: (volume(d, "image.nrrd", ct()),
                                                                 volume(d, "mask.nrrd", box()[5]))),
                               "2D slice vs 3D volume"),
    "NaN in the image": (lambda t: features(t, lambda d: case_files(d, image=np.where(ct() > 50, np.nan, ct()).astype(
        np.float32))), "NaN or infinite"),
    "Inf in the image": (lambda t: features(t, lambda d: case_files(d, image=np.where(ct() > 50, np.inf, ct()).astype(
        np.float32))), "NaN or infinite"),
    "constant image (normalising params)": (lambda t: ["features", *map(str, case_files(t, image=np.full(
        (12, 40, 40), 7, np.int16))), "--no-deep", "--modality", "MR"], "image is constant"),
    "huge ROI (memory guard)": (lambda t: features(t, case_files), "memory guard"),
    "image file missing": (lambda t: ["features", str(t / "nope.nrrd"), str(t / "mask.nrrd"), "--no-deep"],
                           "not found"),
    "DICOM folder with two series": (lambda t: ["features", *dicom_case(t, "two series"), "--no-deep"], "series_uid"),
    "DICOM series with a missing slice": (lambda t: ["features", *dicom_case(t, "missing slice"), "--no-deep"],
                                          "missing slice"),
    "truncated DICOM file": (lambda t: ["features", *dicom_case(t, "truncated"), "--no-deep"], "truncated"),
    "manifest with duplicate case_ids": (lambda t: [*manifest(t, "duplicate case_id"), "-o", str(t / "out.csv")],
                                         "duplicate case_id"),
    "model bundle tampered": (lambda t: screen_with(t, "tampered"), "modified"),
    "model bundle with a missing file": (lambda t: screen_with(t, "missing file"), "missing"),
    "model bundle of a newer format": (lambda t: screen_with(t, "newer format"), "newer"),
    "model bundle with a pickle inside": (lambda t: screen_with(t, "pickle inside"), "pickle"),
}


@pytest.mark.parametrize("name", list(CATALOGUE))
def test_bad_input_gives_a_clear_error_and_no_output(name, tmp_path, capsys, monkeypatch):
    build, fragment = CATALOGUE[name]
    if name == "huge ROI (memory guard)":
        monkeypatch.setenv("RADFUSION_MAX_ROI_VOXELS", "1000")
    work = tmp_path / "work"
    work.mkdir()
    argv = build(work)
    output = tmp_path / "out" / "result.csv"
    if "-o" not in argv and argv[0] != "screen":
        argv += ["-o", str(output)]
    before = set(tmp_path.rglob("*"))
    assert main(argv) == 2, f"{name}: expected a refused input"
    message = capsys.readouterr().err
    assert fragment.lower() in message.lower(), f"{name}: {message!r}"
    assert message.count("error:") == 1 and "Traceback" not in message
    assert set(tmp_path.rglob("*")) == before, f"{name}: files left behind {set(tmp_path.rglob('*')) - before}"


def test_manifest_case_with_a_missing_file_is_reported_in_its_row(tmp_path, capsys):
    argv = manifest(tmp_path, "ok")
    listed = pd.read_csv(argv[1])
    listed.loc[1, "image"] = "absent.nrrd"
    listed.to_csv(argv[1], index=False)
    assert main([*argv, "-o", str(tmp_path / "features.csv")]) == 0
    table = pd.read_csv(tmp_path / "features.csv", keep_default_na=False)
    assert table.loc[0, "error"] == "" and "not found" in table.loc[1, "error"]


@pytest.mark.parametrize("mask", ["full", "disconnected"])
def test_full_and_disconnected_masks_are_extracted(mask, tmp_path):
    """Not errors: a full mask is the whole image; a disconnected ROI is measured as one ROI."""
    roi = np.ones((12, 40, 40), np.uint8) if mask == "full" else box()
    if mask == "disconnected":
        roi[3:9, 32:38, 32:38] = 1
    image, mask_path = case_files(tmp_path, mask=roi)
    assert main(["features", str(image), str(mask_path), "--no-deep", "--modality", "CT",
                 "-o", str(tmp_path / "f.csv")]) == 0
    row = pd.read_csv(tmp_path / "f.csv").iloc[0]
    assert row["roi_voxels"] == int(roi.sum())


def test_dicom_reader_output_keeps_no_patient_identifiers(tmp_path):
    """Privacy: a case read from DICOM and written as features carries no name, ID or birth date."""
    folder = tmp_path / "series"
    write_series(folder, stored_values())
    image = read_image(folder)
    mask = np.zeros(sitk.GetArrayFromImage(image).shape, np.uint8)
    mask[2:6, 3:7, 3:7] = 1
    mask_image = sitk.GetImageFromArray(mask)
    mask_image.CopyInformation(image)
    sitk.WriteImage(mask_image, str(tmp_path / "mask.nrrd"))
    out = tmp_path / "features.csv"
    assert main(["features", str(folder), str(tmp_path / "mask.nrrd"), "--no-deep", "--modality", "CT",
                 "-o", str(out)]) == 0
    text = out.read_text()
    import pydicom

    header = pydicom.dcmread(next(folder.iterdir()))
    for tag in ("PatientName", "PatientID", "PatientBirthDate"):
        value = str(getattr(header, tag, "") or "")
        if value:
            assert value not in text, f"{tag} leaked into the feature table"
