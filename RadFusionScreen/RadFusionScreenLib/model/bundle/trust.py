"""Trust in a model bundle: one digest over everything, a lock against edits, pins, signatures.

- **Digest**: SHA-256 of the canonical manifest (JSON, sorted keys, no whitespace). The
  manifest lists the SHA-256 of every other file, so the digest changes with any value of the
  manifest (threshold, intercepts, feature names, nomogram terms) and any byte of any file,
  but not with the manifest's layout (re-indenting it changes nothing).
- **Lock** (``bundle.lock.json``): written by the engine whenever it writes a bundle: the
  digest, and one hash per manifest section. On load the recomputed digest must equal it, so
  an edit made outside the engine is refused with the sections it changed. Re-exporting
  through the engine (``radfusion train``, the model-card writer) is the way to change a
  bundle. (Files the manifest does not list are refused by :func:`.loading.load_bundle`.)
- **Pins**: the digests of the bundles shipped with the engine (``keys/shipped_bundles.json``).
  A bundle that claims a shipped name (manifest ``name`` or folder name) with another digest
  is refused: it is not the shipped model.
- **Signatures** (``bundle.sig.json``): Ed25519 over the digest (``cryptography``, bundled with
  Slicer). A signature that does not verify is refused; a valid one by a key in a trusted-keys
  folder reads "verified: signed by NAME"; a valid one by another key "signed by an unknown
  key"; none "unsigned". The trusted keys are the project's public key (``keys/``) and the
  PEM public keys in ``$RADFUSION_TRUSTED_KEYS`` (folders, ``os.pathsep``-separated) or else
  ``~/.config/radfusion/trusted_keys``. Keys are made and bundles signed by :mod:`.signing`.

What this protects: integrity (nothing in a bundle changes unnoticed) and, for signed
bundles, provenance (who exported it). It does not protect confidentiality (a bundle is
readable by whoever has the folder), and a signer is trusted for the numbers it signed: a
signature says who made the model, not that the model is good. Loading never runs code: JSON,
safetensors and PEM keys are data.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from RadFusionScreenLib.core.errors import BundleError
from RadFusionScreenLib.core.locations import PACKAGE_DIR
from RadFusionScreenLib.model.bundle.layout import LOCK, MANIFEST, SIGNATURE

LOCK_FORMAT = "RadFusionScreen.BundleLock"
SIGNATURE_FORMAT = "RadFusionScreen.BundleSignature"
KEYS_DIR = PACKAGE_DIR / "keys"
SHIPPED_PINS = KEYS_DIR / "shipped_bundles.json"
PROJECT_SIGNER = "radfusionscreen-project"
SIGNED_MESSAGE = b"RadFusionScreen.BundleSignature v1\n"
_SECTION_DEPTH = 3


def canonical_json(value: Any) -> bytes:
    """The manifest as the digest sees it: sorted keys, no whitespace, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def file_sha256(data: bytes) -> str:
    """A file's SHA-256, as the manifest lists it."""
    return hashlib.sha256(data).hexdigest()


def bundle_digest(manifest: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical manifest (which lists every other file's SHA-256)."""
    return hashlib.sha256(canonical_json(manifest)).hexdigest()


def lock_record(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """What ``bundle.lock.json`` holds for a manifest."""
    return {"format": LOCK_FORMAT, "format_version": 1, "digest": bundle_digest(manifest),
            "sections": _section_hashes(manifest)}


def lock_bytes(manifest: Mapping[str, Any]) -> bytes:
    return (json.dumps(lock_record(manifest), indent=1, sort_keys=True) + "\n").encode()


def _section_hashes(value: Any, path: str = "", depth: int = _SECTION_DEPTH) -> dict[str, str]:
    """One hash per manifest entry down to ``depth`` levels (``models.primary.spec``), to name edits."""
    if not isinstance(value, Mapping) or depth == 0 or not value:
        return {path or "(manifest)": hashlib.sha256(canonical_json(value)).hexdigest()}
    hashes: dict[str, str] = {}
    for key, item in value.items():
        hashes.update(_section_hashes(item, f"{path}.{key}" if path else str(key), depth - 1))
    return hashes


def check_lock(folder: Path, manifest: Mapping[str, Any]) -> str:
    """The bundle's digest, after checking it against the lock the engine wrote."""
    lock_file = folder / LOCK
    if not lock_file.is_file():
        raise BundleError(f"{folder} has no {LOCK}: it was not written by this engine, or its lock was removed; "
                          "re-export it (radfusion train --out ...) so that its integrity can be checked")
    try:
        lock = json.loads(lock_file.read_text(encoding="utf-8"))
        recorded, sections = str(lock["digest"]), dict(lock["sections"])
        if lock.get("format") != LOCK_FORMAT:
            raise ValueError(f"format {lock.get('format')!r}")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"{lock_file} cannot be read ({exc}); re-export the bundle") from None
    digest = bundle_digest(manifest)
    if digest == recorded:
        return digest
    now = _section_hashes(manifest)
    changed = sorted(k for k in set(now) | set(sections) if now.get(k) != sections.get(k))
    what = f"changed: {', '.join(changed[:8])}{' ...' if len(changed) > 8 else ''}" if changed else \
        f"{LOCK} itself was edited"
    raise BundleError(f"{folder / MANIFEST} was edited outside RadFusionScreen ({what}): the bundle is refused. "
                      "A bundle is changed by re-exporting it through RadFusionScreen, never by hand")


# ------------------------------------------------------------------- shipped pins
def shipped_pins() -> dict[str, str]:
    """Name -> digest of every bundle shipped with this engine."""
    if not SHIPPED_PINS.is_file():
        return {}
    return {name: str(entry["digest"]) for name, entry in json.loads(SHIPPED_PINS.read_text()).items()}


def check_pinned(folder: Path, manifest: Mapping[str, Any], digest: str) -> None:
    """A bundle named like a shipped one must be that one."""
    pins = shipped_pins()
    for claim in {str(manifest.get("name")), folder.name}:
        if claim in pins and pins[claim] != digest:
            raise BundleError(f"{folder} calls itself {claim!r}, a bundle shipped with RadFusionScreen, but its digest "
                              f"{digest[:16]}... differs from the shipped one ({pins[claim][:16]}...): it is not the "
                              "shipped model. Give a retrained model another name")


# ---------------------------------------------------------------------- signatures
@dataclass(frozen=True)
class Provenance:
    """Who attests a bundle: status "verified", "untrusted" (valid signature, unknown key) or "unsigned"."""

    status: str
    signer: str | None = None
    key_id: str | None = None

    def describe(self) -> str:
        if self.status == "verified":
            return f"verified: signed by {self.signer} (key {self.key_id})"
        if self.status == "untrusted":
            return (f"signed by an unknown key {self.key_id} (it calls itself {self.signer!r}): not verified; add its "
                    f"public key to a trusted-keys folder ({user_keys_dirs()[0]}) to trust it")
        return "unsigned: its integrity is checked, its origin is not attested"

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "signer": self.signer, "key_id": self.key_id, "text": self.describe()}


def user_keys_dirs() -> list[Path]:
    """Folders of trusted public keys the user controls."""
    configured = os.environ.get("RADFUSION_TRUSTED_KEYS")
    if configured:
        return [Path(p) for p in configured.split(os.pathsep) if p]
    config_home = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return [config_home / "radfusion" / "trusted_keys"]


def trusted_keys() -> dict[str, tuple[str, bytes]]:
    """key id -> (name, raw Ed25519 public key) of the project key and the user's trusted keys."""
    keys: dict[str, tuple[str, bytes]] = {}
    for folder in [KEYS_DIR, *user_keys_dirs()]:
        for file in sorted(folder.glob("*.pub")) + sorted(folder.glob("*.pem")):
            raw = _public_raw(file.read_bytes(), file)
            if raw is not None:
                keys.setdefault(key_id(raw), (file.stem, raw))
    return keys


def key_id(raw_public_key: bytes) -> str:
    return hashlib.sha256(raw_public_key).hexdigest()[:16]


def verify_signature(folder: Path, digest: str) -> Provenance:
    """The bundle's provenance; a signature that does not verify is refused."""
    file = folder / SIGNATURE
    if not file.is_file():
        return Provenance("unsigned")
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        record = json.loads(file.read_text(encoding="utf-8"))
        raw = base64.b64decode(record["public_key"], validate=True)
        signature = base64.b64decode(record["signature"], validate=True)
        signed_digest, declared = str(record["digest"]), str(record.get("signer") or "")
        public = Ed25519PublicKey.from_public_bytes(raw)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"{file}: signature invalid (unreadable: {exc}); the bundle is refused") from None
    if signed_digest != digest:
        raise BundleError(f"{file}: signature invalid: it signs digest {signed_digest[:16]}..., the bundle's is "
                          f"{digest[:16]}... (the bundle changed after it was signed); the bundle is refused")
    try:
        public.verify(signature, SIGNED_MESSAGE + digest.encode())
    except InvalidSignature:
        raise BundleError(f"{file}: signature invalid: it does not verify with its key; the bundle is refused") from None
    identity = key_id(raw)
    trusted = trusted_keys().get(identity)
    if trusted is None:
        return Provenance("untrusted", declared or None, identity)
    return Provenance("verified", trusted[0], identity)


def _public_raw(pem: bytes, source: Path) -> bytes | None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError:
        return None  # not a public key (e.g. a private key left in the folder): ignored
    if not isinstance(key, Ed25519PublicKey):
        return None
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


# ----------------------------------------------------------------- environment
def environment_warnings(manifest: Mapping[str, Any]) -> list[str]:
    """Differences between the bundle's recorded software and this installation that can change
    its inputs (refusals, e.g. other CNN weights or params, happen where those are loaded)."""
    from RadFusionScreenLib.core.version import __version__

    warnings = []
    recorded = str((manifest.get("extraction") or {}).get("pyradiomics_version") or "")
    try:
        from radiomics import __version__ as installed
    except ImportError:  # pragma: no cover - pyradiomics is a dependency
        installed = ""
    if recorded and installed and recorded != str(installed):
        warnings.append(f"the bundle's radiomic features were computed with pyradiomics {recorded}; {installed} is "
                        "installed: feature values can differ, so check the bundle's recorded test predictions "
                        "before trusting its probabilities here")
    made_by = str((manifest.get("packages") or {}).get("radfusionscreen") or "")
    if made_by and _version_tuple(made_by) > _version_tuple(__version__):
        warnings.append(f"the bundle was made by RadFusionScreen {made_by}, newer than this {__version__}: "
                        "update RadFusionScreen")
    return warnings


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("."):
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)
