"""The `radfusion` command: features for one case, errors, lazy imports, module entry point."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from conftest import shared_path
from RadFusionScreenLib.app.cli import main
from synthetic import lesion_case


def test_help_is_instant_no_heavy_imports():
    code = ("import sys, RadFusionScreenLib.app.cli as c; c.build_parser(); "
            "print(sorted(m for m in ('torch', 'radiomics', 'pandas', 'SimpleITK') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_module_entry_point_version():
    out = subprocess.run([sys.executable, "-m", "RadFusionScreenLib", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and "radfusion" in out.stdout


def test_features_on_a_real_ultrasound_case(tmp_path):
    image = shared_path("busi", "images", "malignant_1.png")
    mask = shared_path("busi", "masks", "malignant_1.png")
    output = tmp_path / "one.csv"
    assert main(["features", str(image), str(mask), "-o", str(output)]) == 0
    row = pd.read_csv(output)
    assert len(row) == 1
    assert list(row.columns[:2]) == ["case_id", "modality"] and row.loc[0, "modality"] == "US"
    deep = [c for c in row.columns if c.startswith("deep_")]
    assert len(deep) == 1280 and np.isfinite(row[deep].to_numpy()).all()
    assert "original_shape2D_PixelSurface" in row.columns  # 2D shape for a one-slice volume
    assert row.loc[0, "original_shape2D_PixelSurface"] == pytest.approx(row.loc[0, "roi_voxels"], rel=0.02)
    assert "malignant" not in str(row.loc[0, "case_id"])  # case_id is a content hash, not a file name


def test_features_ibsi_names(tmp_path):
    image, mask = lesion_case(tmp_path, "ct")
    output = tmp_path / "ibsi.csv"
    assert main(["features", str(image), str(mask), "--names", "ibsi", "-o", str(output)]) == 0
    row = pd.read_csv(output)
    features = [c for c in row.columns if "_" in c and c.split("_")[0] in
                {"morph", "stat", "ih", "cm", "rlm", "szm", "ngl", "ngt"}]
    assert "stat_kurt" in features and "morph_volume" in features
    assert not [c for c in row.columns if c.startswith(("original_", "wavelet", "log-", "deep_"))]


def test_geometry_mismatch_is_a_clear_error_and_writes_nothing(tmp_path, capsys):
    image, mask = lesion_case(tmp_path, "ct")
    shifted = sitk.ReadImage(str(mask))
    shifted.SetOrigin((0.0, 0.0, 0.0))
    sitk.WriteImage(shifted, str(tmp_path / "shifted.nii.gz"))
    output = tmp_path / "never.csv"
    code = main(["features", str(image), str(tmp_path / "shifted.nii.gz"), "--no-deep", "-o", str(output)])
    assert code == 2
    message = capsys.readouterr().err
    assert "origin" in message.lower() and "error" in message
    assert not output.exists() and not list(tmp_path.glob("*.tmp"))


def test_deep_views_option_changes_only_the_cnn_input(tmp_path):
    """--deep-views orthogonal: other deep features (the CNN sees the three planes), the same
    radiomic features; an unknown choice is refused by the parser."""
    image, mask = lesion_case(tmp_path, "ct")
    tables = {}
    for views in ("2.5d", "orthogonal"):
        out = tmp_path / f"{views}.csv"
        assert main(["features", str(image), str(mask), "-o", str(out), "--deep-views", views]) == 0
        tables[views] = pd.read_csv(out)
    deep = [c for c in tables["2.5d"] if c.startswith("deep_")]
    radiomic = [c for c in tables["2.5d"] if c.startswith("original_")]
    assert len(deep) == 1280 and not np.allclose(tables["2.5d"][deep], tables["orthogonal"][deep])
    pd.testing.assert_frame_equal(tables["2.5d"][radiomic], tables["orthogonal"][radiomic])
    with pytest.raises(SystemExit):
        main(["features", str(image), str(mask), "-o", str(tmp_path / "x.csv"), "--deep-views", "sideways"])
