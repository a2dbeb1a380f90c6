"""A small 3D CNN trained from scratch on LIDC nodules, on the folds of lidc_deep_variants.py.

Run:  .venv/bin/python benchmarks/lidc_cnn3d.py [--epochs 30] [--seeds 0,1,2] [--threads 2]
      -> prints a table, writes benchmarks/results/lidc_cnn3d.json (about 10 min a seed on 2 CPU cores)

Question: is the ImageNet 2D backbone (frozen or fine-tuned, lidc_deep_variants.py) what keeps the
deep features below the nodule's diameter, and would a CNN that sees the nodule in 3D lift the
fused model towards issue 14's goal (test AUC >= 0.94)?

Variant d (a research check, not an engine feature): a 6-conv 3D CNN (16-32-64 channels, batch
norm, global average pooling, dropout 0.3; 0.2 M weights) on a 32 x 32 x 16 mm patch at 1 mm,
centred on the ROI centroid (linear resampling, -1000 HU outside the crop), two channels: HU
clipped to [-1000, 400] scaled to [0, 1], and the resampled mask. Trained from random weights on
the outer fold's training cases only (AdamW, weight decay 1e-2, one-cycle LR to 3e-3, batch 32,
random flips on every axis and in-plane 90-degree turns), scored on the test fold as the mean
probability over the four in-plane turns. One full run of the folds per seed.

Same outer folds as lidc_deep_variants.py (StratifiedGroupKFold(5, shuffle=True,
random_state=0) by patient_id), so the pooled out-of-fold scores pair case by case with its
saved scores: paired DeLong against (b), the orthogonal-view features the CT bundle ships, and
against the diameter.

References on the same folds:
  shipped          the CT bundle's configuration (fused radiomic + orthogonal-view deep + diameter,
                   LASSO logistic regression, grid and calibrator chosen inside each training fold:
                   lidc_configuration.build_configuration) on out/lidc_features.csv (written by
                   scripts/train_lidc_model.sh; skipped when absent)
  shipped + d      logit of its probability + logit of d's, unweighted (nothing fitted on them)
  readers          an L1 logistic regression (C by inner grouped CV, lidc_deep_variants.l1_logistic)
                   on diameter + the readers' eight semantic ratings of nodules.csv (calcification,
                   internal structure, lobulation, margin, sphericity, spiculation, subtlety,
                   texture): what the same readers' descriptions of the nodule carry about their
                   own malignancy rating, the label. Not a model for new patients (no reader
                   ratings there), a ceiling for image features.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
import torch
from torch import nn

BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS))

from lidc_deep_variants import LIDC, RESULTS, fixed_features_oof, load_cohort, outer_folds, summarise  # noqa: E402

PATCH_XYZ = (32, 32, 16)  # mm at 1 mm spacing: in-plane covers the largest nodule (32 mm)
HU_RANGE = (-1000.0, 400.0)
READER_RATINGS = ["calcification", "internal_structure", "lobulation", "margin", "sphericity", "spiculation",
                  "subtlety", "texture"]


def centred_patch(image: sitk.Image, mask: sitk.Image) -> np.ndarray:
    """(2, z, y, x) float32: HU scaled to [0, 1] and the mask, on a 1 mm grid centred on the ROI."""
    binary = sitk.Cast(mask > 0, sitk.sitkFloat32)
    centroid_index = np.argwhere(sitk.GetArrayViewFromImage(binary) > 0).mean(axis=0)[::-1]
    centre = np.array(binary.TransformContinuousIndexToPhysicalPoint(centroid_index.tolist()))
    direction = np.array(image.GetDirection()).reshape(3, 3)
    grid = sitk.Image(PATCH_XYZ, sitk.sitkFloat32)
    grid.SetSpacing((1.0, 1.0, 1.0))
    grid.SetDirection(image.GetDirection())
    grid.SetOrigin((centre - direction @ ((np.array(PATCH_XYZ) - 1) / 2)).tolist())
    hu = sitk.Resample(sitk.Cast(image, sitk.sitkFloat32), grid, sitk.Transform(), sitk.sitkLinear, HU_RANGE[0])
    roi = sitk.Resample(binary, grid, sitk.Transform(), sitk.sitkLinear, 0.0)
    scaled = (np.clip(sitk.GetArrayFromImage(hu), *HU_RANGE) - HU_RANGE[0]) / (HU_RANGE[1] - HU_RANGE[0])
    return np.stack([scaled, sitk.GetArrayFromImage(roi)]).astype(np.float32)


def small_3d_cnn() -> nn.Module:
    def block(inputs: int, outputs: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv3d(inputs, outputs, 3, padding=1), nn.BatchNorm3d(outputs), nn.ReLU(),
                             nn.Conv3d(outputs, outputs, 3, padding=1), nn.BatchNorm3d(outputs), nn.ReLU())

    return nn.Sequential(block(2, 16), nn.MaxPool3d(2), block(16, 32), nn.MaxPool3d(2), block(32, 64),
                         nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Dropout(0.3), nn.Linear(64, 1))


def augment(batch: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    for axis in (-1, -2, -3):
        if rng.random() < 0.5:
            batch = batch.flip(axis)
    return torch.rot90(batch, int(rng.integers(4)), (-2, -1))


def train_and_score(patches: np.ndarray, labels: np.ndarray, train: np.ndarray, test: np.ndarray, seed: int,
                    epochs: int, device: torch.device) -> np.ndarray:
    """Train on ``train`` rows only; probabilities of the ``test`` rows (mean over 4 in-plane turns)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = small_3d_cnn().to(device)
    batch_size = 32
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=3e-3,
                                                   total_steps=epochs * int(np.ceil(len(train) / batch_size)))
    inputs = torch.from_numpy(patches[train]).to(device)
    targets = torch.from_numpy(labels[train].astype(np.float32)).to(device)
    for _ in range(epochs):
        model.train()
        order = torch.from_numpy(rng.permutation(len(train))).to(device)
        for start in range(0, len(train), batch_size):
            rows = order[start:start + batch_size]
            loss = nn.functional.binary_cross_entropy_with_logits(model(augment(inputs[rows], rng)).squeeze(1),
                                                                  targets[rows])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
    model.eval()
    with torch.no_grad():
        held_out = torch.from_numpy(patches[test]).to(device)
        turns = [torch.sigmoid(model(torch.rot90(held_out, k, (-2, -1))).squeeze(1)) for k in range(4)]
    return torch.stack(turns).mean(dim=0).cpu().numpy().astype(np.float64)


def shipped_configuration_oof(case_ids: pd.Series, folds) -> np.ndarray | None:
    """Out-of-fold probabilities of the CT bundle's configuration (lidc_configuration.build_configuration)."""
    from lidc_configuration import DEFAULT_TABLE, build_configuration, fused_columns, read_feature_table, shipped_options

    table = read_feature_table(DEFAULT_TABLE)
    if table is None or set(case_ids) - set(table["case_id"]):
        print("the shipped-configuration references are skipped", file=sys.stderr)
        return None
    table = table.set_index("case_id").reindex(case_ids).reset_index()
    options = shipped_options()
    columns = fused_columns(table, options)
    probability = np.full(len(table), np.nan)
    for train, test in folds:
        probability[test] = build_configuration(table.iloc[train], columns, options).probability(table.iloc[test])
    return probability


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=RESULTS / "lidc_cnn3d.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    table, images = load_cohort(limit=None)
    started = time.perf_counter()
    patches = np.stack([centred_patch(image, mask) for image, mask in images])
    patch_seconds = time.perf_counter() - started
    y, folds = table["label"].to_numpy(int), outer_folds(table)
    saved = json.loads((RESULTS / "lidc_deep_variants.json").read_text())["oof_scores"]
    assert saved["case_id"] == table["case_id"].tolist(), "lidc_deep_variants.json scored other cases"
    against = {"b": np.asarray(saved["b"]), "diameter": table["diameter_mm"].to_numpy(float)}

    results, scores, fold_seconds = [], {}, []
    for seed in (int(s) for s in args.seeds.split(",")):
        oof = np.full(len(table), np.nan)
        for train, test in folds:
            fold_started = time.perf_counter()
            oof[test] = train_and_score(patches, y, train, test, seed, args.epochs, device)
            fold_seconds.append(time.perf_counter() - fold_started)
        scores[f"d_seed{seed}"] = oof
        results.append(summarise(f"d_seed{seed}", y, oof, against))
        print(results[-1], flush=True)

    nodules = pd.read_csv(LIDC / "nodules.csv").set_index("case_id").reindex(table["case_id"])
    readers = nodules[["diameter_mm", *READER_RATINGS]].to_numpy(float)
    scores["readers"], _ = fixed_features_oof(readers, table, folds)
    results.append(summarise("readers (diameter + 8 ratings)", y, scores["readers"], against))
    shipped = shipped_configuration_oof(table["case_id"], folds)
    if shipped is not None:
        scores["shipped"] = shipped
        results.append(summarise("shipped configuration (fused)", y, shipped, against))
        for key in [k for k in scores if k.startswith("d_seed")]:
            combined = logit(shipped) + logit(scores[key])
            results.append(summarise(f"shipped + {key}", y, combined, {"shipped": shipped, **against}))

    report = {
        "cohort": {"n": len(table), "patients": int(table["patient_id"].nunique()), "malignant": int(y.sum())},
        "protocol": {"outer": "StratifiedGroupKFold(5, shuffle=True, random_state=0) by patient_id (= lidc_deep_variants)",
                     "patch_mm": PATCH_XYZ, "epochs": args.epochs, "device": str(device), "threads": args.threads},
        "results": results,
        "costs_s": {"patches_473": patch_seconds, "train_fold_median": float(np.median(fold_seconds)),
                    "train_fold_max": float(np.max(fold_seconds))},
        "machine": {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__},
        "oof_scores": {"case_id": table["case_id"].tolist(), **{k: v.tolist() for k, v in scores.items()}},
    }
    args.json.write_text(json.dumps(report, indent=1))
    print(f"\n{'variant':34s} {'AUC':>6s}  95% CI          vs b (p)          vs diameter (p)")
    for row in results:
        print(f"{row['variant']:34s} {row['auc']:.3f}  {row['ci_lower']:.3f}-{row['ci_upper']:.3f}  "
              f"{row['delta_vs_b']:+.3f} ({row['p_vs_b']:.3f})  {row['delta_vs_diameter']:+.3f} ({row['p_vs_diameter']:.3f})"
              + (f"  vs shipped {row['delta_vs_shipped']:+.3f} ({row['p_vs_shipped']:.3f})" if "delta_vs_shipped" in row else ""))
    print(f"patches {patch_seconds:.1f} s; training a fold: median {np.median(fold_seconds):.0f} s on {device}")


if __name__ == "__main__":
    main()
