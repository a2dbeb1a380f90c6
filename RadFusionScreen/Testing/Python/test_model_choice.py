"""The bundle a case gets when the user names none: the one trained on the case's modality
(core.locations.default_model, serving.model_choice, the Slicer Logic and panel)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from RadFusionScreenLib.core.errors import InputError
from RadFusionScreenLib.core.locations import default_model, models_directory, resolve_model_path
from RadFusionScreenLib.serving.model_choice import image_modality, model_for_case


def _bundle(folder, name, modality):
    """A folder that reads as a bundle of ``modality`` for choosing (choice reads the manifest only)."""
    path = folder / name
    path.mkdir(parents=True)
    (path / "manifest.json").write_text(json.dumps({"name": name, "extraction": {"modality": modality}}))
    return path


@pytest.fixture()
def models(tmp_path, monkeypatch):
    folder = tmp_path / "models"
    folder.mkdir()
    monkeypatch.setenv("RADFUSION_MODELS", str(folder))  # read when asked, not at import
    return folder


def _ct_volume():
    volume = np.full((8, 32, 32), -850, np.int16)  # lung parenchyma in HU
    volume[3:5, 12:20, 12:20] = 30
    return sitk.GetImageFromArray(volume)


def _ultrasound_picture():
    return sitk.GetImageFromArray(np.random.default_rng(0).integers(0, 255, (1, 40, 40)).astype(np.uint8))


def test_each_modality_gets_its_shipped_bundle(models):
    us, ct = _bundle(models, "busi-ultrasound", "US"), _bundle(models, "lidc-ct-nodule", "CT")
    _bundle(models, "my-ct-model", "CT")  # another CT bundle: the shipped one still wins
    assert models_directory() == models
    assert default_model("CT") == ct and default_model("us") == us
    assert model_for_case(_ct_volume()) == ct and model_for_case(_ultrasound_picture()) == us
    assert resolve_model_path(None, "CT") == ct and resolve_model_path("my-ct-model", "US") == models / "my-ct-model"


def test_without_the_shipped_bundle_the_only_bundle_of_that_modality_is_used(models):
    mine = _bundle(models, "my-ct-model", "CT")
    _bundle(models, "busi-ultrasound", "US")
    assert default_model("CT") == mine


def test_no_bundle_of_the_modality_is_a_clear_error_naming_the_others(models):
    _bundle(models, "busi-ultrasound", "US")
    with pytest.raises(InputError, match=r"no model bundles for CT images .*busi-ultrasound \(US\).*--model"):
        model_for_case(_ct_volume())
    _bundle(models, "ct-a", "CT")
    _bundle(models, "ct-b", "CT")
    with pytest.raises(InputError, match="several model bundles for CT images"):
        default_model("CT")


def test_modality_follows_the_engines_rule():
    assert image_modality(_ct_volume()) == "CT" and image_modality(_ultrasound_picture()) == "US"
    mr = sitk.GetImageFromArray(np.full((6, 20, 20), 300, np.int16))
    assert image_modality(mr) == "MR" and image_modality(mr, declared="CT") == "CT"


def test_screen_command_without_model_uses_the_images_modality(models, tmp_path, capsys):
    """`radfusion screen IMAGE MASK` on a CT volume with only an ultrasound bundle present: the
    CT default is looked for and its absence said, not the ultrasound model's modality refusal."""
    from RadFusionScreenLib.app.cli import main

    _bundle(models, "busi-ultrasound", "US")
    image, mask = tmp_path / "ct.nii.gz", tmp_path / "mask.nii.gz"
    sitk.WriteImage(_ct_volume(), str(image))
    sitk.WriteImage(sitk.Cast(_ct_volume() > 0, sitk.sitkUInt8), str(mask))
    assert main(["screen", str(image), str(mask)]) == 2
    assert "no model bundles for CT images" in capsys.readouterr().err


def test_python_api_without_model_uses_the_images_modality(models):
    from RadFusionScreenLib import screen

    _bundle(models, "busi-ultrasound", "US")
    ct = _ct_volume()
    with pytest.raises(InputError, match="no model bundles for CT images"):
        screen(ct, sitk.Cast(ct > 0, sitk.sitkUInt8))


def test_screen_command_on_a_manifest_uses_its_first_cases_modality(models, tmp_path, capsys):
    from RadFusionScreenLib.app.cli import main

    _bundle(models, "busi-ultrasound", "US")
    cases = tmp_path / "cases"
    cases.mkdir()
    sitk.WriteImage(_ct_volume(), str(cases / "ct.nii.gz"))
    sitk.WriteImage(sitk.Cast(_ct_volume() > 0, sitk.sitkUInt8), str(cases / "mask.nii.gz"))
    (cases / "manifest.csv").write_text("case_id,image,mask\nc1,ct.nii.gz,mask.nii.gz\n")  # relative to the manifest
    assert main(["screen", str(cases / "manifest.csv"), "-o", str(tmp_path / "p.csv")]) == 2
    assert "no model bundles for CT images" in capsys.readouterr().err and not (tmp_path / "p.csv").exists()
