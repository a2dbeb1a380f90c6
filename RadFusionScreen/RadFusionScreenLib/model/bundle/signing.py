"""Signing bundles: an Ed25519 key pair (``radfusion bundle keygen``) and a signature over a
verified bundle's digest (``bundle.sig.json``, ``radfusion bundle sign``).

Signing sits above loading: a bundle is loaded, so fully verified, before it is signed.
Verifying a signature is :func:`.trust.verify_signature`'s job, when a bundle is loaded.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

from RadFusionScreenLib.core.errors import BundleError
from RadFusionScreenLib.core.files import write_text_atomically
from RadFusionScreenLib.model.bundle.layout import SIGNATURE
from RadFusionScreenLib.model.bundle.loading import load_bundle
from RadFusionScreenLib.model.bundle.trust import SIGNATURE_FORMAT, SIGNED_MESSAGE, key_id


def sign_bundle(folder: str | os.PathLike, private_key: str | os.PathLike, signer: str | None = None) -> Path:
    """Sign a verified bundle's digest with an Ed25519 private key (PEM); writes ``bundle.sig.json``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    bundle = load_bundle(folder)  # refuses a tampered bundle: never sign what does not verify
    key_file = Path(private_key)
    try:
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise BundleError(f"{key_file} is not a readable unencrypted PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise BundleError(f"{key_file} is not an Ed25519 key (make one with: radfusion bundle keygen)")
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    record = {"format": SIGNATURE_FORMAT, "format_version": 1, "digest": bundle.digest,
              "signer": signer or key_file.stem, "key_id": key_id(raw),
              "public_key": base64.b64encode(raw).decode(),
              "signature": base64.b64encode(key.sign(SIGNED_MESSAGE + bundle.digest.encode())).decode()}
    return write_text_atomically(Path(folder) / SIGNATURE, json.dumps(record, indent=1) + "\n")


def generate_key(private_path: str | os.PathLike) -> tuple[Path, Path]:
    """A new Ed25519 key pair: ``NAME.pem`` (private, mode 600) and ``NAME.pub`` (share this one)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private = Path(private_path)
    if private.exists():
        raise BundleError(f"{private} exists: refusing to overwrite a key")
    key = Ed25519PrivateKey.generate()
    private.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    public = private.with_suffix(".pub")
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public
