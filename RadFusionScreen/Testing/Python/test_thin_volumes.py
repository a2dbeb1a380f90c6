"""Thin volumes give the same features on every run, in every mode; one case never ends a batch.

The cause (radiomic/extractor.py's module doc): ITK's B-spline interpolator mirrors an out-of-range
support index once, which for a cubic spline needs 3 voxels on an axis; on a 2-slice CT crop
it read memory outside the image, so LoG / wavelet / texture features changed from run to
run and pyradiomics sometimes failed ("Calculation of GLCM Failed"). The engine extends such
an axis by ITK's own mirror first. Checked here against an independent implementation of the
same spline (scipy.ndimage, whole-sample mirror), across fresh processes and workers, and for
the LoG images a one-slice volume cannot have.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from scipy import ndimage

from conftest import REPO_ROOT, SHARED_DATA, shared_path
from RadFusionScreenLib.app.cli import main
from RadFusionScreenLib.features.cohort import CaseTask, collect_outcomes, extract_cohort
from RadFusionScreenLib.features.case_features import CaseFeatureExtractor, ExtractionConfig
from RadFusionScreenLib.features.radiomic import RadiomicExtractor
from RadFusionScreenLib.features.radiomic.input_checks import _label_bbox

CT_RADIOMICS = ExtractionConfig(deep=None, modality="CT")
RESAMPLING_ONLY = {
    "imageType": {"Original": {}},
    "featureClass": {"firstorder": []},
    "setting": {"resampledPixelSpacing": [1, 1, 1], "interpolator": "sitkBSpline", "padDistance": 10,
                "label": 1, "binWidth": 25},
}
LIDC_THIN = ("LIDC-IDRI-0272_R_1", "LIDC-IDRI-0012_R_2")  # 2 and 3 slices of 2.5 mm


def thin_case(slices: int, seed: int = 3, dtype=np.int16, z_spacing: float = 2.5) -> tuple[sitk.Image, sitk.Image]:
    """A CT-like crop of ``slices`` 2.5 mm slices with a disk-shaped lesion through all of them."""
    rng = np.random.default_rng(seed)
    voxels = rng.normal(-700, 150, size=(slices, 48, 48))
    yy, xx = np.mgrid[:48, :48]
    disk = (yy - 24) ** 2 + (xx - 22) ** 2 < 81
    voxels[:, disk] += 700 + 40 * np.arange(slices)[:, None]  # differs per slice: z interpolation matters
    image = sitk.GetImageFromArray(voxels.astype(dtype))
    image.SetSpacing((0.7, 0.7, z_spacing))
    image.SetOrigin((-10.0, 5.0, 30.0))
    mask = sitk.GetImageFromArray(np.repeat(disk[None].astype(np.uint8), slices, axis=0))
    mask.CopyInformation(image)
    return image, mask


def write_case(folder: Path, name: str, image: sitk.Image, mask: sitk.Image) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = folder / f"{name}_image.nii.gz", folder / f"{name}_mask.nii.gz"
    sitk.WriteImage(image, str(paths[0]))
    sitk.WriteImage(mask, str(paths[1]))
    return paths


# ------------------------------------------------------------ the exact condition
@pytest.mark.parametrize("slices, z_spacing", [(2, 2.5), (2, 2.7), (3, 2.5), (4, 2.5)])
def test_resampled_thin_volume_equals_the_mirror_spline_of_scipy(slices, z_spacing):
    """The image pyradiomics' features see after resampling = cubic B-spline with whole-sample
    mirror boundaries (ITK's rule), computed independently by scipy.ndimage, and 0 (ITK's
    default) where the grid leaves the image. Without the engine's extension the 2-slice case
    reads memory outside the image and differs."""
    image, mask = thin_case(slices, dtype=np.float32, z_spacing=z_spacing)
    notes: list[str] = []
    resampled, _, _ = RadiomicExtractor(RESAMPLING_ONLY)._preprocess(image, mask, _label_bbox(mask, 1), notes)
    assert resampled.GetSize()[2] == int(np.ceil(z_spacing * slices))  # the image's z extent (rounded up)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in resampled.GetSize()], indexing="ij"), -1).reshape(-1, 3)
    points = [resampled.TransformIndexToPhysicalPoint([int(v) for v in index]) for index in grid]
    continuous = np.array([image.TransformPhysicalPointToContinuousIndex(p) for p in points])
    expected = ndimage.map_coordinates(sitk.GetArrayFromImage(image).astype(float), continuous[:, ::-1].T,
                                       order=3, mode="mirror")
    outside = (continuous < -0.5) | (continuous >= np.array(image.GetSize()) - 0.5)
    expected[outside.any(axis=1)] = 0.0
    actual = sitk.GetArrayFromImage(resampled).transpose(2, 1, 0).reshape(-1)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-3 * np.abs(expected).max())
    assert bool(notes) == (slices == 2), notes


def test_the_mirror_extension_changes_nothing_where_itk_is_right():
    """On 3 slices ITK's own interpolation and the extended image's are bit-identical: the
    extension defines the value ITK intends, it does not change the method."""
    from RadFusionScreenLib.features.radiomic.roi_crop import _IIR_INTERPOLATOR_MARGIN

    image, mask = thin_case(3, dtype=np.float32)
    padded = sitk.GetImageFromArray(np.pad(sitk.GetArrayFromImage(image), ((_IIR_INTERPOLATOR_MARGIN,) * 2, (0, 0), (0, 0)),
                                           mode="reflect"))
    padded.SetSpacing(image.GetSpacing())
    padded.SetOrigin(image.TransformContinuousIndexToPhysicalPoint((0, 0, -_IIR_INTERPOLATOR_MARGIN)))
    reference = sitk.Image([20, 20, 7], sitk.sitkFloat32)
    reference.SetOrigin(image.TransformContinuousIndexToPhysicalPoint((8, 8, -0.45)))
    plain, extended = (sitk.GetArrayFromImage(sitk.Resample(source, reference, sitk.Transform(), sitk.sitkBSpline,
                                                            0.0, sitk.sitkFloat32)) for source in (image, padded))
    assert np.array_equal(plain, extended)


# ------------------------------------------------------------------ determinism
_RUN_CASES = """
import json, sys
import numpy as np
from RadFusionScreenLib.features.case_features import CaseFeatureExtractor, ExtractionConfig
extractor = CaseFeatureExtractor(ExtractionConfig(deep=None, modality="CT"))
out = {}
for case_id, image, mask in json.loads(sys.argv[1]):
    out[case_id] = extractor.extract_paths(image, mask).radiomic
print(json.dumps(out))
"""


def _thin_cases(tmp_path: Path) -> list[tuple[str, str, str]]:
    cases = [("synthetic_2", *map(str, write_case(tmp_path / "data", "synthetic_2", *thin_case(2))))]
    lidc = SHARED_DATA / "lidc"
    if lidc.is_dir():  # the real crops when the shared data is present (CI has them)
        cases += [(c, str(lidc / "images" / f"{c}.nii.gz"), str(lidc / "masks" / f"{c}.nii.gz")) for c in LIDC_THIN]
    return cases


@pytest.mark.slow
def test_thin_volumes_are_bit_identical_in_fresh_processes_and_workers(tmp_path):
    cases = _thin_cases(tmp_path)
    runs = []
    for _ in range(3):  # fresh processes: a read outside the image sees other memory each time
        done = subprocess.run([sys.executable, "-c", _RUN_CASES, json.dumps(cases)], capture_output=True, text=True,
                              check=True, cwd=REPO_ROOT)
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    assert runs[0] == runs[1] == runs[2]  # JSON keeps doubles exactly: this is bit equality
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame(cases, columns=["case_id", "image", "mask"]).to_csv(manifest, index=False)
    for workers in (1, 2):
        table = extract_cohort(manifest, tmp_path / f"w{workers}.csv", CT_RADIOMICS, workers=workers,
                               cache_dir=None, progress=False).set_index("case_id")
        assert (table["error"] == "").all(), table["error"].to_dict()
        for case_id, features in runs[0].items():
            assert table.loc[case_id, list(features)].astype(float).tolist() == list(features.values()), case_id
    notes = table["radiomics_notes"].to_dict()
    assert "B-spline" in notes["synthetic_2"]
    if "LIDC-IDRI-0012_R_2" in notes:
        assert "B-spline" in notes["LIDC-IDRI-0272_R_1"] and notes["LIDC-IDRI-0012_R_2"] == ""


def test_a_one_slice_volume_gets_empty_log_features_with_the_reason(tmp_path):
    """pyradiomics' own rule (ceil(sigma / spacing) + 1 voxels per axis) skips every LoG sigma on a
    one-slice volume and its columns would be missing from this row only; here they are NaN, in
    pyradiomics' column order, with a note."""
    extractor = CaseFeatureExtractor(CT_RADIOMICS)
    one = extractor.extract(*thin_case(1))
    three = extractor.extract(*thin_case(3))
    assert list(one.radiomic) == list(three.radiomic)
    log_columns = [c for c in one.radiomic if c.startswith("log-sigma-")]
    assert len(log_columns) == 3 * 93
    assert all(np.isnan(one.radiomic[c]) for c in log_columns)
    assert not any(np.isnan(v) for c, v in one.radiomic.items() if c not in log_columns)
    assert one.metadata["radiomics_notes"].count("is smaller than this sigma needs") == 3
    image, mask = write_case(tmp_path, "one", *thin_case(1))
    out = tmp_path / "one.csv"
    assert main(["features", str(image), str(mask), "--no-deep", "--modality", "CT", "-o", str(out)]) == 0
    row = pd.read_csv(out).iloc[0]
    assert "log-sigma-3-0-mm-3D: the image on the extraction grid (" in row["radiomics_notes"]
    assert np.isnan(row["log-sigma-1-0-mm-3D_firstorder_Mean"])


# ------------------------------------------------------- one case, never the batch
def _outcome_or_crash(case_id: str) -> dict:
    """Run in a spawned worker: a normal outcome, a library exception, or a dying process."""
    if case_id == "raises":
        raise IndexError("Calculation of GLCM Failed.")
    if case_id == "dies":
        os._exit(3)  # a crash in compiled code ends the worker process without a Python exception
    return {"row": {"case_id": case_id}, "error": "", "key": None}


def test_a_dead_or_raising_worker_becomes_that_cases_error():
    tasks = [CaseTask(case_id=c, image="", mask="", label=None, segment=None, passthrough={})
             for c in ("fine", "raises", "dies")]
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(_outcome_or_crash, task.case_id): task for task in tasks}
        outcomes = dict(collect_outcomes(as_completed(futures), futures))
    assert set(outcomes) == {"fine", "raises", "dies"}
    assert "IndexError while extracting case raises: Calculation of GLCM Failed." in outcomes["raises"]["error"]
    assert "BrokenProcessPool while extracting case dies" in outcomes["dies"]["error"]
    assert outcomes["fine"]["error"] in ("", outcomes["dies"]["error"].replace("dies", "fine"))


def test_batch_screening_goes_on_after_a_library_error(tmp_path, monkeypatch):
    busi = shared_path("busi")
    from RadFusionScreenLib.serving import screening

    cases = pd.read_csv(busi / "manifest.csv").head(3)
    manifest = tmp_path / "cases.csv"
    cases.assign(image=[str(busi / p) for p in cases["image"]], mask=[str(busi / p) for p in cases["mask"]])[
        ["case_id", "image", "mask"]].to_csv(manifest, index=False)
    failing = Path(cases["image"].iloc[1]).name
    real_screen = screening.Screener.screen

    def screen_or_fail(self, image, *args, **kwargs):
        if Path(image).name == failing:  # what the radiomics worker's future re-raised before the fix
            raise IndexError("Calculation of GLCM Failed.")
        return real_screen(self, image, *args, **kwargs)

    monkeypatch.setattr(screening.Screener, "screen", screen_or_fail)
    out = tmp_path / "predictions.csv"
    assert main(["screen", str(manifest), "-o", str(out)]) == 0
    table = pd.read_csv(out, keep_default_na=False)
    assert table["error"].iloc[1] == f"IndexError in {cases['case_id'].iloc[1]}: Calculation of GLCM Failed."
    assert table["error"].iloc[[0, 2]].tolist() == ["", ""]
    assert table["probability"].iloc[[0, 2]].astype(float).between(0, 1).all()
