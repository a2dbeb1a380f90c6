"""Trust in a model bundle: every edit made outside the engine is refused, naming what changed.

One test per row of README's table (edit -> what happens), on copies of the shipped bundle,
plus the shipped bundle's own pin and project signature (checked in CI).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import REPO_ROOT
from RadFusionScreenLib.model import bundle as trust  # the bundle package: trust and signing
from RadFusionScreenLib.model.bundle import MANIFEST, WEIGHTS, load_bundle
from RadFusionScreenLib.app.cli import main
from RadFusionScreenLib.core.errors import BundleError
from RadFusionScreenLib.serving.screening import Screener

SHIPPED = REPO_ROOT / "models" / "busi-ultrasound"


@pytest.fixture
def copy(tmp_path) -> Path:
    """A byte-for-byte copy of the shipped bundle in another folder (it still claims its name)."""
    return Path(shutil.copytree(SHIPPED, tmp_path / "copy"))


def edit_manifest(folder: Path, change) -> dict:
    manifest = json.loads((folder / MANIFEST).read_text())
    change(manifest)
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


# ------------------------------------------------------------- the shipped bundle
def test_shipped_bundle_is_pinned_and_signed_by_the_project_key():
    bundle = load_bundle(SHIPPED)
    assert trust.shipped_pins()["busi-ultrasound"] == bundle.digest
    assert bundle.provenance.status == "verified" and bundle.provenance.signer == trust.PROJECT_SIGNER
    assert (trust.KEYS_DIR / f"{trust.PROJECT_SIGNER}.pub").is_file()
    assert not list(trust.KEYS_DIR.glob("*.pem")), "no private key may be in the repository"
    info = Screener(SHIPPED).model_info()
    assert info["digest"] == bundle.digest and info["provenance"].startswith("verified: signed by")


# --------------------------------------------------------------- edits (the table)
def test_threshold_edit_is_refused_naming_it(copy):
    """The issue's case: a copied bundle with decision_threshold 0.9999 screened 'negative'."""
    edit_manifest(copy, lambda m: m.update(decision_threshold=0.9999))
    with pytest.raises(BundleError, match=r"edited outside RadFusionScreen \(changed: decision_threshold\)"):
        load_bundle(copy)


def test_intercept_edit_is_refused_naming_the_model(copy):
    def shift(manifest):
        classifier = manifest["models"]["rad_score"]["spec"]["classifier"]
        classifier["intercept"] = classifier["intercept"] + 1.0

    edit_manifest(copy, shift)
    with pytest.raises(BundleError, match=r"changed: models\.rad_score\.spec"):
        load_bundle(copy)


def test_feature_name_edit_is_refused(copy):
    def rename(manifest):
        columns = manifest["models"]["primary"]["spec"]["input_columns"]
        columns[0] = columns[0] + "_renamed"

    edit_manifest(copy, rename)
    with pytest.raises(BundleError, match=r"changed: models\.primary\.spec"):
        load_bundle(copy)


def test_weight_file_edit_is_refused_naming_the_file(copy):
    data = bytearray((copy / WEIGHTS).read_bytes())
    data[-2] ^= 0x01
    (copy / WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(BundleError, match=f"'{WEIGHTS}' has been modified"):
        load_bundle(copy)


def test_added_file_is_refused(copy):
    (copy / "notes.txt").write_text("a file nobody exported")
    with pytest.raises(BundleError, match="holds 'notes.txt', a file its manifest does not list"):
        load_bundle(copy)


def test_removed_file_is_refused(copy):
    (copy / "README.md").unlink()
    with pytest.raises(BundleError, match="'README.md' is missing"):
        load_bundle(copy)


def test_reformatted_manifest_only_is_accepted_with_the_same_digest(copy):
    manifest = json.loads((copy / MANIFEST).read_text())
    (copy / MANIFEST).write_text(json.dumps(dict(reversed(list(manifest.items()))), indent=7))
    bundle = load_bundle(copy)
    assert bundle.digest == load_bundle(SHIPPED).digest
    assert bundle.provenance.status == "verified"  # the signature is over the digest, not the layout


def test_removed_lock_is_refused(copy):
    (copy / trust.LOCK).unlink()
    with pytest.raises(BundleError, match="has no bundle.lock.json"):
        load_bundle(copy)


def test_edit_with_a_recomputed_lock_cannot_pass_as_the_shipped_model(copy):
    """Someone who also recomputes the lock gets past the lock, not past the pin (nor the signature)."""
    manifest = edit_manifest(copy, lambda m: m.update(decision_threshold=0.9999))
    (copy / trust.LOCK).write_bytes(trust.lock_bytes(manifest))
    with pytest.raises(BundleError, match="calls itself 'busi-ultrasound', a bundle shipped with RadFusionScreen"):
        load_bundle(copy)


def test_edit_with_a_recomputed_lock_and_a_new_name_breaks_the_signature(copy):
    def rename(manifest):
        manifest.update(name="my-busi", decision_threshold=0.9999)

    renamed = copy.parent / "my-busi"
    copy.rename(renamed)
    manifest = edit_manifest(renamed, rename)
    (renamed / trust.LOCK).write_bytes(trust.lock_bytes(manifest))
    with pytest.raises(BundleError, match="signature invalid: it signs digest"):
        load_bundle(renamed)
    (renamed / trust.SIGNATURE).unlink()  # without the signature it is somebody's unsigned bundle
    assert load_bundle(renamed).provenance.status == "unsigned"


# ------------------------------------------------------------------ signatures
def test_signature_from_an_unknown_key_loads_as_untrusted_then_verified_once_trusted(copy, tmp_path, monkeypatch):
    user_keys = tmp_path / "trusted"
    monkeypatch.setenv("RADFUSION_TRUSTED_KEYS", str(user_keys))
    private, public = trust.generate_key(tmp_path / "keys" / "our-lab.pem")
    assert main(["bundle", "sign", str(copy), "--key", str(private), "--signer", "Our Lab"]) == 0
    provenance = load_bundle(copy).provenance
    assert provenance.status == "untrusted" and provenance.signer == "Our Lab"
    assert "signed by an unknown key" in provenance.describe()
    user_keys.mkdir()
    shutil.copy(public, user_keys)
    provenance = load_bundle(copy).provenance
    assert (provenance.status, provenance.signer) == ("verified", "our-lab")  # the name is the user's key file


def test_forged_signature_bytes_are_refused(copy):
    record = json.loads((copy / trust.SIGNATURE).read_text())
    signature = bytearray(__import__("base64").b64decode(record["signature"]))
    signature[0] ^= 0x01
    record["signature"] = __import__("base64").b64encode(bytes(signature)).decode()
    (copy / trust.SIGNATURE).write_text(json.dumps(record))
    with pytest.raises(BundleError, match="signature invalid: it does not verify"):
        load_bundle(copy)


def test_a_tampered_bundle_is_never_signed(copy, tmp_path):
    edit_manifest(copy, lambda m: m.update(decision_threshold=0.5))
    private, _ = trust.generate_key(tmp_path / "k.pem")
    with pytest.raises(BundleError, match="edited outside RadFusionScreen"):
        trust.sign_bundle(copy, private)


# ------------------------------------------------------------------ environment
def test_other_pyradiomics_version_warns_on_load_and_in_the_result(monkeypatch):
    import radiomics

    monkeypatch.setattr(radiomics, "__version__", "9.9.9")
    bundle = load_bundle(SHIPPED)
    assert any("pyradiomics v3.1.4; 9.9.9 is installed" in w for w in bundle.warnings)
    assert Screener(SHIPPED).model_info()["warnings"] == bundle.warnings


def test_cli_verify_reports_digest_provenance_and_pin(capsys):
    assert main(["bundle", "verify", str(SHIPPED), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["shipped"] is True and record["provenance"]["status"] == "verified"
    assert record["digest"] == trust.shipped_pins()["busi-ultrasound"]


def test_bundle_from_a_newer_engine_warns(monkeypatch):
    from RadFusionScreenLib.core import version

    monkeypatch.setattr(version, "__version__", "0.0.1")
    assert any("made by RadFusionScreen 0.1.0, newer than this 0.0.1" in w for w in load_bundle(SHIPPED).warnings)


def test_other_cnn_weights_or_radiomics_defaults_are_refused(monkeypatch):
    """What would change the features themselves is refused, not warned (checked where loaded)."""
    from RadFusionScreenLib.features.deep import backbones as deep
    from RadFusionScreenLib.features.radiomic import extractor as radiomic
    from RadFusionScreenLib.core.errors import InputError

    with monkeypatch.context() as patch:
        patch.setattr(deep, "sha256_file", lambda path: "0" * 64)
        with pytest.raises(InputError, match="network weights .* have SHA-256 0000"):
            Screener(SHIPPED)
    with monkeypatch.context() as patch:
        patch.setattr(radiomic, "_canonical_json", lambda value: "other pyradiomics defaults")
        with pytest.raises(InputError, match="do not reproduce its recorded params hash"):
            Screener(SHIPPED)
