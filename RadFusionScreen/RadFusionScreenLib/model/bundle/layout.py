"""What a model bundle holds: a folder a person can read that serves a fitted model without pickle.

A bundle (``models/NAME/``) holds

- ``manifest.json``: format version, task, input extraction settings, for each model
  (primary, rad-score, deep-score) a *spec* (the raw columns it needs, then its steps:
  imputation, ComBat, scaling, PCA, classifier, each naming its arrays), the nomogram,
  the decision threshold, the training summary and metrics, package versions, and the
  SHA-256 of every other file;
- ``weights.safetensors``: every numeric array (a format that cannot run code);
- XGBoost / LightGBM boosters in their own text formats (``*.xgboost.json``,
  ``*.lightgbm.txt``);
- ``bundle.lock.json`` (the digest the engine wrote), optionally ``bundle.sig.json`` (a
  signature) and ``README.md`` (the model card).
"""

from __future__ import annotations

FORMAT = "RadFusionScreen.ModelBundle"
FORMAT_VERSION = "1"
MANIFEST = "manifest.json"
WEIGHTS = "weights.safetensors"
MODEL_CARD = "README.md"
LOCK = "bundle.lock.json"
SIGNATURE = "bundle.sig.json"
ENGINE_FILES = frozenset({MANIFEST, LOCK, SIGNATURE})  # written by the engine, not listed in the manifest
PICKLE_SUFFIXES = frozenset({".pkl", ".pickle", ".joblib", ".pt", ".pth", ".ckpt", ".dill"})
