#!/usr/bin/env bash
# Rebuilds the shipped model models/busi-ultrasound from ../shared/data/busi (about 30 min on
# 2 cores: nested 5 x 5 CV over the full grids of seven classifier families, three feature sets).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p out
.venv/bin/radfusion train ../shared/data/busi/manifest.csv --groups duplicate_group --jobs 2 \
    --features out/busi_features.csv --cache out/.radfusion_cache \
    --card-notes docs/busi-model-notes.md \
    --out models/busi-ultrasound --report out/busi-report.html --json > out/busi-summary.json
# The shipped bundle's new digest is pinned in the engine, then the bundle is signed with the
# project key (kept outside the repository; RADFUSION_SIGNING_KEY points at its PEM file).
.venv/bin/python scripts/pin_shipped_bundles.py
.venv/bin/radfusion bundle sign models/busi-ultrasound --key "${RADFUSION_SIGNING_KEY:?path of the project signing key}" \
    --signer radfusionscreen-project
