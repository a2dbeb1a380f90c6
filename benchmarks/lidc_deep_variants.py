"""Deep features of small 3D lung nodules (LIDC): 2.5D crop vs orthogonal views vs fine-tuned CNN.

Run:  .venv/bin/python benchmarks/lidc_deep_variants.py [--epochs 6] [--seeds 0,1,2] [--threads 1] [--limit N]
      -> prints a table, writes benchmarks/results/lidc_deep_variants.json

Cohort: ../shared/data/lidc (473 nodules, 311 patients; label from the readers' ratings).
Every variant is scored on the SAME outer folds: StratifiedGroupKFold(5, shuffle=True,
random_state=0) grouped by patient_id, so no patient's nodules straddle training and test.
Inside each outer fold, an L1 logistic regression (standardised features, liblinear, tol 1e-6,
random_state 0: converged and repeatable) has its C (0.001..10) chosen by an inner
StratifiedGroupKFold(5, random_state=1) grouped by patient (ROC AUC), is refitted on the
training fold and scores the test fold; the out-of-fold scores of the five folds are pooled
into one AUC with its DeLong 95% CI, and each variant is compared with (a) by the paired
DeLong test on those pooled scores.

Variants (EfficientNet-Lite0, ImageNet weights, 1280 pooled features, input 224):
  a               today's 2.5D input: largest axial ROI cross-section and one slice each side
  b               orthogonal views: axial/coronal/sagittal planes through the ROI centroid on
                  isotropic pixels (the finest spacing), features averaged over the views
  b_concat        the same three views, features concatenated (3 x 1280) instead of averaged
  c_2.5d_seedS    (a)'s input, CNN fine-tuned on the training fold only (last 2 blocks + head
                  conv, 6 epochs, flips, seed S), then used as the extractor for that fold's
                  cases; one full run of the folds per seed, since the seed moves the AUC
  c_orthogonal_seedS  (b)'s input, fine-tuned the same way
  diameter        the nodule's diameter (nodules.csv), no fitting: the anchor to beat

Costs (wall time, this machine, ``--threads`` torch threads; the 1-minute load average at the
start of each stage is recorded beside it, since other jobs may share the cores): the engine path
``extractor.extract(image, mask)`` over the cohort for (a) and (b) (images already in
memory), the frozen part's output under 4 flips for the fine-tuning inputs (once per cohort:
ImageNet layers, no label, shared by the folds), and the fine-tuning of each fold.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "RadFusionScreen"))

from RadFusionScreenLib.features.deep import get_deep_extractor, prepare_roi_slices  # noqa: E402
from RadFusionScreenLib.features.deep.fine_tuning import (FineTuning, features_from_activations,  # noqa: E402
                                                          fine_tune, frozen_activations)
from RadFusionScreenLib.stats.roc import auc_ci_delong, delong_test  # noqa: E402

LIDC = REPO.parent / "shared" / "data" / "lidc"
RESULTS = REPO / "benchmarks" / "results"
C_GRID = np.logspace(-3, 1, 9)  # 0.001 .. 10
INPUTS = {"2.5d": {"views": "2.5d"}, "orthogonal": {"views": "orthogonal"}}


def engine_code_digest() -> str:
    """SHA-256 of the deep-feature code: kept stages are reused only with the code that made them."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted((REPO / "RadFusionScreen" / "RadFusionScreenLib" / "features" / "deep").glob("*.py")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def load_cohort(limit: int | None) -> tuple[pd.DataFrame, list[tuple[sitk.Image, sitk.Image]]]:
    manifest = pd.read_csv(LIDC / "manifest.csv")
    nodules = pd.read_csv(LIDC / "nodules.csv")[["case_id", "diameter_mm"]]
    table = manifest.merge(nodules, on="case_id", how="left", validate="one_to_one")
    if limit:
        table = table.sample(n=limit, random_state=0).reset_index(drop=True)
    images = [(sitk.ReadImage(str(LIDC / row.image)), sitk.ReadImage(str(LIDC / row.mask)))
              for row in table.itertuples()]
    return table, images


def outer_folds(table: pd.DataFrame) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import StratifiedGroupKFold

    splitter = StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=0)
    folds = list(splitter.split(np.zeros(len(table)), table["label"], table["patient_id"]))
    for train, test in folds:  # no patient on both sides
        assert not set(table["patient_id"].iloc[train]) & set(table["patient_id"].iloc[test])
    return folds


def l1_logistic(x_train: np.ndarray, y_train: np.ndarray, g_train: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, float]:
    """Inner grouped CV for C on the training fold, refit, decision values of the test fold."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedGroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(l1_ratio=1.0, solver="liblinear", tol=1e-6,
                                                                max_iter=5000, random_state=0))
    search = GridSearchCV(model, {"logisticregression__C": C_GRID}, scoring="roc_auc",
                          cv=StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=1), n_jobs=1)
    search.fit(x_train, y_train, groups=g_train)
    return search.decision_function(x_test), float(search.best_params_["logisticregression__C"])


def fixed_features_oof(features: np.ndarray, table: pd.DataFrame, folds) -> tuple[np.ndarray, list[float]]:
    y, groups = table["label"].to_numpy(), table["patient_id"].to_numpy()
    scores, chosen = np.full(len(table), np.nan), []
    for train, test in folds:
        scores[test], c = l1_logistic(features[train], y[train], groups[train], features[test])
        chosen.append(c)
    return scores, chosen


def engine_extraction(images, views: str, threads: int) -> tuple[np.ndarray, list[np.ndarray], float]:
    """The engine's own path, extractor.extract(image, mask), per case: (mean, per-row features, seconds)."""
    extractor = get_deep_extractor(modality="CT", views=views, num_threads=threads)
    started = time.perf_counter()
    rows, means = [], []
    for image, mask in images:
        prepared = extractor.prepare(image, mask)
        per_row = extractor.features_from_inputs(prepared.tensor)
        rows.append(per_row)
        means.append(per_row.mean(axis=0, dtype=np.float64).astype(np.float32))
    seconds = time.perf_counter() - started
    return np.stack(means), rows, seconds


def summarise(name: str, y: np.ndarray, scores: np.ndarray, against: dict[str, np.ndarray]) -> dict:
    """AUC with its DeLong CI, and the paired DeLong difference and p against each named reference."""
    auc = auc_ci_delong(y, scores)
    row = {"variant": name, "auc": auc.auc, "ci_lower": auc.ci_lower, "ci_upper": auc.ci_upper}
    for other, reference in against.items():
        test = delong_test(y, scores, reference)
        row[f"delta_vs_{other}"], row[f"p_vs_{other}"] = test.auc_difference, test.p_value
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=6, help="fine-tuning epochs (default 6)")
    parser.add_argument("--seeds", default="0,1,2", help="fine-tuning seeds, each a full run of the folds "
                        "(default 0,1,2: the spread between seeds is part of the answer)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: the engine's "
                        "extraction default, and no oversubscription when other jobs share the cores)")
    parser.add_argument("--limit", type=int, default=None, help="a random subset of cases (smoke runs)")
    parser.add_argument("--fine-tune-on", default="2.5d,orthogonal", help="inputs to fine-tune on (comma list)")
    parser.add_argument("--json", type=Path, default=RESULTS / "lidc_deep_variants.json")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/radfusion_lidc_deep_cache"),
                        help="where finished stages are kept, so an interrupted run resumes (not in the repo)")
    args = parser.parse_args()
    if not (LIDC / "manifest.csv").is_file():
        raise SystemExit(f"LIDC data not found at {LIDC}")
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    table, images = load_cohort(args.limit)
    y = table["label"].to_numpy()
    folds = outer_folds(table)
    print(f"{len(table)} nodules, {table['patient_id'].nunique()} patients, {int(y.sum())} malignant; "
          f"5 outer folds by patient_id; torch {torch.__version__}, {args.threads} threads", flush=True)
    costs: dict[str, float] = {}
    features: dict[str, np.ndarray] = {}
    row_features: dict[str, list[np.ndarray]] = {}
    cache_dir = args.cache / f"n{len(table)}_{engine_code_digest()[:12]}"  # a code change starts afresh
    cache_dir.mkdir(parents=True, exist_ok=True)
    for name, options in INPUTS.items():
        stored = cache_dir / f"extract_{name}.npz"
        if not stored.is_file():
            means, rows, seconds = engine_extraction(images, options["views"], args.threads)
            np.savez(stored, means=means, rows=np.concatenate(rows), counts=[len(r) for r in rows], seconds=seconds,
                     load=os.getloadavg()[0])
        saved = np.load(stored)
        features[name], costs[f"extract_{name}_s"] = saved["means"], float(saved["seconds"])
        costs[f"extract_{name}_load_average"] = float(saved["load"])
        row_features[name] = np.split(saved["rows"], np.cumsum(saved["counts"])[:-1])
        print(f"extraction {name}: {costs[f'extract_{name}_s']:.1f} s for {len(table)} cases", flush=True)
    scores: dict[str, np.ndarray] = {}
    chosen_c: dict[str, list[float]] = {}
    scores["a"], chosen_c["a"] = fixed_features_oof(features["2.5d"], table, folds)
    scores["b"], chosen_c["b"] = fixed_features_oof(features["orthogonal"], table, folds)
    concat = np.stack([np.concatenate(list(r)) for r in row_features["orthogonal"]])
    scores["b_concat"], chosen_c["b_concat"] = fixed_features_oof(concat, table, folds)
    print(f"fixed-feature CV done at {time.perf_counter() - started:.0f} s", flush=True)

    seeds = [int(v) for v in args.seeds.split(",") if v.strip()]
    settings = FineTuning(epochs=args.epochs)
    fine_tuning_log: dict[str, list[dict]] = {}
    for name in [n.strip() for n in args.fine_tune_on.split(",") if n.strip()]:
        extractor = get_deep_extractor(modality="CT", num_threads=args.threads, **INPUTS[name])
        stored_folds = {(seed, k): cache_dir / f"fine_tuned_{name}_e{settings.epochs}_s{seed}_fold{k}.npz"
                        for seed in seeds for k in range(len(folds))}
        stored_costs = cache_dir / f"frozen_{name}_costs.json"
        cache = crops = None
        if not all(path.is_file() for path in stored_folds.values()):
            clock = time.perf_counter()
            crops = [prepare_roi_slices(image, mask, extractor.preprocessing)[0] for image, mask in images]
            crops_s = time.perf_counter() - clock
            clock, load = time.perf_counter(), os.getloadavg()[0]
            cache = frozen_activations(extractor, crops, settings.trainable_blocks, num_threads=args.threads)
            frozen_s = time.perf_counter() - clock
            check = features_from_activations(extractor, cache, range(min(5, len(table))))
            stored_costs.write_text(json.dumps({
                f"crops_{name}_s": crops_s, f"frozen_4_flips_{name}_s": frozen_s,
                f"frozen_4_flips_{name}_load_average": load,
                f"cache_vs_engine_max_abs_{name}": float(np.abs(check - features[name][: len(check)]).max())}))
        if stored_costs.is_file():
            costs.update(json.loads(stored_costs.read_text()))
        for seed in seeds:
            tuning = FineTuning(epochs=args.epochs, seed=seed)
            oof, log = np.full(len(table), np.nan), []
            for k, (train, test) in enumerate(folds):
                stored = stored_folds[(seed, k)]
                if not stored.is_file():
                    clock, load = time.perf_counter(), os.getloadavg()[0]
                    tuned = fine_tune(extractor, crops, y, train, test_index=test, settings=tuning,
                                      activations=cache, num_threads=args.threads)
                    tuning_s = time.perf_counter() - clock
                    fold_features = features_from_activations(tuned, cache, range(len(table)), num_threads=args.threads)
                    np.savez(stored, features=fold_features, seconds=tuning_s, load=load,
                             losses=tuned.fine_tuning["loss_per_epoch"], digest=tuned.weights_sha256)
                saved = np.load(stored)
                fold_features, tuning_s = saved["features"], float(saved["seconds"])
                oof[test], c = l1_logistic(fold_features[train], y[train], table["patient_id"].to_numpy()[train],
                                           fold_features[test])
                log.append({"seed": seed, "fold": k, "fine_tuning_s": round(tuning_s, 1), "C": c,
                            "load_average": round(float(saved["load"]), 2), "loss_per_epoch": saved["losses"].tolist(),
                            "weights_sha256": str(saved["digest"])})
                print(f"fine-tuned {name} seed {seed} fold {k}: {tuning_s:.0f} s, losses {log[-1]['loss_per_epoch']}",
                      flush=True)
            scores[f"c_{name}_seed{seed}"] = oof
            chosen_c[f"c_{name}_seed{seed}"] = [entry["C"] for entry in log]
            fine_tuning_log.setdefault(name, []).extend(log)
        cache = crops = None

    rows = [summarise("a", y, scores["a"], {})]
    rows += [summarise(name, y, value, {"a": scores["a"]}) for name, value in scores.items() if name != "a"]
    rows.append(summarise("diameter", y, table["diameter_mm"].to_numpy(), {"a": scores["a"]}))
    over_seeds = {}
    for name in fine_tuning_log:
        aucs = [row["auc"] for row in rows if row["variant"].startswith(f"c_{name}_seed")]
        over_seeds[f"c_{name}"] = {"seeds": seeds, "auc_mean": float(np.mean(aucs)), "auc_sd": float(np.std(aucs, ddof=1))
                                   if len(aucs) > 1 else None, "auc_min": min(aucs), "auc_max": max(aucs)}
    total = time.perf_counter() - started
    print(f"\n{'variant':<22}{'AUC':>7}  {'95% CI (DeLong)':<17}{'vs a':>8}{'p':>8}")
    for row in rows:
        delta = f"{row['delta_vs_a']:+.3f}" if "delta_vs_a" in row else ""
        p = f"{row['p_vs_a']:.3f}" if "p_vs_a" in row else ""
        print(f"{row['variant']:<22}{row['auc']:>7.3f}  [{row['ci_lower']:.3f}, {row['ci_upper']:.3f}]  {delta:>8}{p:>8}")
    for name, summary in over_seeds.items():
        print(f"{name} over seeds {seeds}: mean AUC {summary['auc_mean']:.3f} (SD {summary['auc_sd'] or 0:.3f}, "
              f"range {summary['auc_min']:.3f}-{summary['auc_max']:.3f})")
    print("costs (s):", {k: round(v, 3) for k, v in costs.items()})
    for name, log in fine_tuning_log.items():
        print(f"fine-tuning {name} per fold (s):", [entry["fine_tuning_s"] for entry in log])
    print(f"total {total:.0f} s (stages kept in {cache_dir} were not recomputed)")
    record = {
        "cohort": {"n": len(table), "patients": int(table["patient_id"].nunique()), "malignant": int(y.sum()),
                   "limit": args.limit},
        "protocol": {"outer": "StratifiedGroupKFold(5, shuffle=True, random_state=0) by patient_id",
                     "inner": "StratifiedGroupKFold(5, shuffle=True, random_state=1) by patient_id, ROC AUC",
                     "model": "StandardScaler + LogisticRegression(l1_ratio=1 (lasso), liblinear, tol 1e-6, "
                              "random_state 0)", "C_grid": C_GRID.tolist(),
                     "auc": "pooled out-of-fold decision values, DeLong 95% CI; paired DeLong vs a"},
        "fine_tuning": {"settings": {k: v for k, v in settings.__dict__.items() if k != "seed"}, "seeds": seeds,
                        "over_seeds": over_seeds, "folds": fine_tuning_log},
        "results": rows, "chosen_C": chosen_c, "costs_s": costs, "total_s": total,
        "machine": {"cpus": os.cpu_count(), "threads": args.threads, "torch": torch.__version__,
                    "cuda": torch.cuda.is_available(), "python": platform.python_version()},
        "oof_scores": {"case_id": table["case_id"].tolist(), **{k: v.tolist() for k, v in scores.items()}},
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(record, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
