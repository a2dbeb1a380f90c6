"""Cohort extraction: pass-through columns, per-case errors, content-hash cache, workers."""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import pandas as pd
import pytest
import SimpleITK as sitk

from RadFusionScreenLib.features import case_features as features_module
from RadFusionScreenLib.features.cohort import THREAD_ENV_VARS, _worker_thread_env, extract_cohort, read_manifest
from RadFusionScreenLib.core.errors import InputError
from RadFusionScreenLib.features.case_features import ExtractionConfig
from synthetic import lesion_case

RADIOMIC_ONLY = ExtractionConfig(deep=None, modality="CT")


@pytest.fixture()
def cohort(tmp_path):
    rows = []
    for i in range(3):
        image, mask = lesion_case(tmp_path / "data", f"case{i}", radius=5 + i, seed=i)
        rows.append({"case_id": f"c{i}", "image": f"data/{image.name}", "mask": f"data/{mask.name}",
                     "label": i % 2, "site": "A", "age": 50 + i})
    empty = sitk.Image(sitk.ReadImage(str(tmp_path / "data" / "case0_mask.nii.gz")))
    empty = empty * 0
    sitk.WriteImage(empty, str(tmp_path / "data" / "empty_mask.nii.gz"))
    rows.append({"case_id": "bad_mask", "image": rows[0]["image"], "mask": "data/empty_mask.nii.gz",
                 "label": 0, "site": "B", "age": 61})
    rows.append({"case_id": "missing", "image": "data/nope.nii.gz", "mask": rows[0]["mask"],
                 "label": 1, "site": "B", "age": 62})
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest


class ExtractionSpy:
    """Counts real extractions (the real method still runs)."""

    def __init__(self, monkeypatch):
        self.case_ids = 0
        original = features_module.CaseFeatureExtractor.extract_paths

        def counting(extractor, *args, **kwargs):
            self.case_ids += 1
            return original(extractor, *args, **kwargs)

        monkeypatch.setattr(features_module.CaseFeatureExtractor, "extract_paths", counting)


def test_cohort_rows_errors_and_passthrough(cohort, tmp_path):
    output = tmp_path / "out" / "features.csv"
    table = extract_cohort(cohort, output, RADIOMIC_ONLY, cache_dir=None, progress=False)
    on_disk = pd.read_csv(output, keep_default_na=False)
    assert list(on_disk["case_id"]) == ["c0", "c1", "c2", "bad_mask", "missing"]
    assert list(on_disk.columns[:5]) == ["case_id", "label", "site", "age", "error"]
    errors = dict(zip(on_disk["case_id"], on_disk["error"]))
    assert errors["c0"] == errors["c1"] == errors["c2"] == ""
    assert "empty" in errors["bad_mask"].lower()
    assert "nope.nii.gz" in errors["missing"]
    volumes = table.set_index("case_id")["original_shape_VoxelVolume"]
    assert volumes["c0"] < volumes["c1"] < volumes["c2"]  # radius 5 < 6 < 7
    # the table records what it was computed with
    assert set(table["params_sha256"].dropna()) and (table["modality"].dropna() == "CT").all()


def test_cache_recomputes_only_what_changed(cohort, tmp_path, monkeypatch):
    spy = ExtractionSpy(monkeypatch)
    output = tmp_path / "features.csv"
    first = extract_cohort(cohort, output, RADIOMIC_ONLY, progress=False)
    assert spy.case_ids == 5  # 3 good + 2 failing cases (failures are not cached)
    second = extract_cohort(cohort, output, RADIOMIC_ONLY, progress=False)
    assert spy.case_ids == 5 + 2  # only the two failing cases are retried
    pd.testing.assert_frame_equal(first, second)

    # change one mask's content: exactly that case is recomputed, with new values
    mask_path = tmp_path / "data" / "case1_mask.nii.gz"
    mask = sitk.ReadImage(str(mask_path))
    array = sitk.GetArrayFromImage(mask)
    array[8, 19, 21 - 6 : 21 + 6] = 1
    changed = sitk.GetImageFromArray(array)
    changed.CopyInformation(mask)
    sitk.WriteImage(changed, str(mask_path))
    third = extract_cohort(cohort, output, RADIOMIC_ONLY, progress=False)
    assert spy.case_ids == 7 + 3
    before, after = first.set_index("case_id"), third.set_index("case_id")
    assert after.loc["c1", "original_shape_VoxelVolume"] > before.loc["c1", "original_shape_VoxelVolume"]
    assert after.loc["c0", "original_shape_VoxelVolume"] == before.loc["c0", "original_shape_VoxelVolume"]


def test_two_workers_give_the_same_table(cohort, tmp_path):
    one = extract_cohort(cohort, tmp_path / "one.csv", RADIOMIC_ONLY, workers=1, cache_dir=None, progress=False)
    two = extract_cohort(cohort, tmp_path / "two.csv", RADIOMIC_ONLY, workers=2, cache_dir=None, progress=False)
    pd.testing.assert_frame_equal(one, two)


def _thread_pools() -> tuple[int, int, int]:
    """Run in a spawned worker: the BLAS pool size numpy got at load, ITK's and torch's defaults."""
    import SimpleITK
    import threadpoolctl
    import torch

    blas = [pool["num_threads"] for pool in threadpoolctl.threadpool_info() if pool["user_api"] == "blas"]
    return max(blas), SimpleITK.ProcessObject.GetGlobalDefaultNumberOfThreads(), torch.get_num_threads()


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs 2 cores to tell 1 thread from the default")
def test_spawned_workers_start_with_their_share_of_threads(monkeypatch):
    """OpenBLAS, ITK and torch size their pools when they load, before any code of ours in the worker
    could: the limits must be in the worker's environment from its start, the caller's restored."""
    pytest.importorskip("threadpoolctl", reason="threadpoolctl (reads the BLAS pool size) comes with scikit-learn, "
                        "the `train` extra; the Slicer-like environment serves only")
    for name in THREAD_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MKL_NUM_THREADS", "7")
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        with _worker_thread_env(1):
            future = pool.submit(_thread_pools)
        assert future.result(timeout=120) == (1, 1, 1)
    assert os.environ["MKL_NUM_THREADS"] == "7"
    assert "OMP_NUM_THREADS" not in os.environ and "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS" not in os.environ


def test_manifest_validation(tmp_path):
    manifest = tmp_path / "m.csv"
    pd.DataFrame({"case_id": ["a", "a"], "image": ["x", "y"], "mask": ["x", "y"]}).to_csv(manifest, index=False)
    with pytest.raises(InputError, match="duplicate case_id"):
        read_manifest(manifest)
    pd.DataFrame({"case_id": ["a"], "image": ["x"]}).to_csv(manifest, index=False)
    with pytest.raises(InputError, match="mask"):
        read_manifest(manifest)
    with pytest.raises(InputError, match="not found"):
        read_manifest(tmp_path / "absent.csv")
    assert not list(tmp_path.glob("*.tmp"))


def test_settings_change_within_one_process_rebuilds_the_extractor(cohort, tmp_path):
    """The in-process extractor is per settings: a --no-deep run after a deep one has no deep columns."""
    with_deep = extract_cohort(cohort, tmp_path / "a.csv", ExtractionConfig(modality="CT"), cache_dir=None,
                               progress=False)
    without = extract_cohort(cohort, tmp_path / "b.csv", RADIOMIC_ONLY, cache_dir=None, progress=False)
    assert any(c.startswith("deep_") for c in with_deep.columns)
    assert not any(c.startswith("deep_") for c in without.columns)


def test_dask_local_cluster_gives_the_local_table(cohort, tmp_path):
    """`--backend dask` on a LocalCluster of 2 worker processes = the local backend, value for value."""
    pytest.importorskip("distributed", reason="dask[distributed] is an optional dependency")
    config = ExtractionConfig(modality="CT")  # deep features too: each Dask worker loads the CNN once
    local = extract_cohort(cohort, tmp_path / "local.csv", config, cache_dir=None, progress=False)
    dask = extract_cohort(cohort, tmp_path / "dask.csv", config, workers=2, cache_dir=None, progress=False,
                          backend="dask")
    pd.testing.assert_frame_equal(local, dask)
    assert (tmp_path / "dask.csv").read_bytes() == (tmp_path / "local.csv").read_bytes()


def test_unknown_backend_is_refused(cohort, tmp_path):
    with pytest.raises(InputError, match="unknown backend 'spark'"):
        extract_cohort(cohort, tmp_path / "x.csv", RADIOMIC_ONLY, backend="spark")
