"""Shared pytest fixtures: where the read-only shared data lives, and skips when absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]
SHARED_DATA = Path(os.environ.get("RADFUSION_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def shared_path(*parts: str) -> Path:
    """Path under ../shared/data; the calling test is skipped with a reason when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not available: {path} (tests read public data from ../shared/data)")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip(f"shared data folder not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def ct_bundle(tmp_path_factory) -> Path:
    """A small CT model bundle trained on 24 generated CT phantoms (quick grid, LR only).

    For tests that need a CT model (Slicer Logic on a DICOM CT, 3D screening); it says
    nothing about real CT performance.
    """
    pytest.importorskip("sklearn", reason="building a bundle is training (scikit-learn, the `train` extra); "
                        "the Slicer-like environment serves only")
    from RadFusionScreenLib.app.train_command import TrainOptions, build_model
    from RadFusionScreenLib.inputs.phantoms import write_ct_cohort

    folder = tmp_path_factory.mktemp("ct_model")
    manifest = write_ct_cohort(folder / "cohort", n_cases=24)
    options = TrainOptions(feature_sets=("radiomic", "fused"), classifiers=("lr",), grid="quick",
                           outer_folds=3, inner_folds=3, n_boot=100, extraction={"modality": "CT"})
    build_model(manifest, folder / "ct-phantom-model", options)
    return folder / "ct-phantom-model"
