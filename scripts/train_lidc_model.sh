#!/usr/bin/env bash
# Builds the shipped model models/lidc-ct-nodule from ../shared/data/lidc: 473 CT nodule crops
# of 311 patients, benign vs malignant from the readers' ratings. Every split and every
# cross-validation fold is grouped by patient_id (several nodules per patient). The nodule
# diameter from the annotations (nodules.csv) is the one clinical predictor: the nomogram's
# size term, and alone the "diameter-only" baseline the other models are compared with. The CNN
# sees orthogonal views through the nodule (benchmarks/lidc_deep_variants.py: best shippable
# variant on the same patient-grouped folds).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p out
LIDC=../shared/data/lidc
# The manifest with diameter_mm joined in; image paths relative to out/ (where it is written).
.venv/bin/python - "$LIDC" out/lidc_manifest.csv <<'PY'
import os, sys
import pandas as pd
lidc, target = sys.argv[1], sys.argv[2]
cases = pd.read_csv(os.path.join(lidc, "manifest.csv"))
nodules = pd.read_csv(os.path.join(lidc, "nodules.csv"))[["case_id", "diameter_mm"]]
cases = cases.merge(nodules, on="case_id", how="left", validate="one_to_one")
assert cases["diameter_mm"].notna().all(), "every nodule has a diameter in nodules.csv"
base = os.path.relpath(lidc, os.path.dirname(target))
for column in ("image", "mask"):
    cases[column] = [os.path.join(base, path) for path in cases[column]]
cases.to_csv(target, index=False)
PY
.venv/bin/radfusion train out/lidc_manifest.csv --groups patient_id --clinical diameter_mm --jobs 2 \
    --deep-views orthogonal --refit-all \
    --features out/lidc_features.csv --cache out/.radfusion_cache \
    --card-notes docs/lidc-model-notes.md \
    --out models/lidc-ct-nodule --report out/lidc-report.html --json > out/lidc-summary.json
# Pin the new digest in the engine, then sign with the project key (kept outside the repository).
.venv/bin/python scripts/pin_shipped_bundles.py
.venv/bin/radfusion bundle sign models/lidc-ct-nodule --key "${RADFUSION_SIGNING_KEY:?path of the project signing key}" \
    --signer radfusionscreen-project
