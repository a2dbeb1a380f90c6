"""Model bundles: a folder a person can read that serves a fitted model without pickle.

:mod:`.layout` names a bundle's files and format; :mod:`.export` turns a fitted scikit-learn
pipeline into a JSON spec, arrays and booster files; :mod:`.inference` predicts from those
with numpy alone (:class:`BundleModel`); :mod:`.trust` has the digest, the lock against edits,
the shipped pins and signature verification; :mod:`.loading` reads and verifies a bundle
(:func:`load_bundle`, :class:`Bundle`), never importing scikit-learn; :mod:`.writing` writes a
comparison's models as a bundle and adds the model card; :mod:`.signing` makes key pairs and
signs a verified bundle. Each module imports only those listed before it.
"""

from RadFusionScreenLib.core.errors import BundleError
from RadFusionScreenLib.model.bundle.export import ExportedModel, export_pipeline
from RadFusionScreenLib.model.bundle.inference import BundleModel
from RadFusionScreenLib.model.bundle.layout import ENGINE_FILES, FORMAT, FORMAT_VERSION, LOCK, MANIFEST, MODEL_CARD, \
    PICKLE_SUFFIXES, SIGNATURE, WEIGHTS
from RadFusionScreenLib.model.bundle.loading import Bundle, load_bundle, recorded_predictions
from RadFusionScreenLib.model.bundle.signing import generate_key, sign_bundle
from RadFusionScreenLib.model.bundle.trust import KEYS_DIR, PROJECT_SIGNER, SHIPPED_PINS, Provenance, bundle_digest, \
    canonical_json, check_lock, check_pinned, environment_warnings, file_sha256, key_id, lock_bytes, lock_record, \
    shipped_pins, trusted_keys, user_keys_dirs, verify_signature
from RadFusionScreenLib.model.bundle.writing import write_bundle, write_model_card

__all__ = [
    "ENGINE_FILES", "FORMAT", "FORMAT_VERSION", "KEYS_DIR", "LOCK", "MANIFEST", "MODEL_CARD", "PICKLE_SUFFIXES",
    "PROJECT_SIGNER", "SHIPPED_PINS", "SIGNATURE", "WEIGHTS",
    "Bundle", "BundleError", "BundleModel", "ExportedModel", "Provenance",
    "bundle_digest", "canonical_json", "check_lock", "check_pinned", "environment_warnings", "export_pipeline",
    "file_sha256", "generate_key", "key_id", "load_bundle", "lock_bytes", "lock_record", "recorded_predictions",
    "shipped_pins",
    "sign_bundle", "trusted_keys", "user_keys_dirs", "verify_signature", "write_bundle", "write_model_card",
]
