"""`radfusion train`: feature table or manifest in; JSON summary, HTML report and bundle out."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import SimpleITK as sitk

from conftest import shared_path
from RadFusionScreenLib.app.train_command import TrainOptions, icc_filtered_columns
from RadFusionScreenLib.app.cli import main
from RadFusionScreenLib.model.train import FeatureColumns

QUICK = ["--grid", "quick", "--folds", "3", "--bootstrap", "200"]


def feature_table(n: int = 160, seed: int = 1) -> pd.DataFrame:
    """Radiomic + deep features with a planted signal, one clinical value, two sites, pairs of duplicates."""
    rng = np.random.default_rng(seed)
    groups = np.arange(n) // 2
    label = rng.integers(0, 2, n // 2)[groups]
    radiomic = rng.normal(size=(n, 25))
    radiomic[:, :3] += 1.2 * label[:, None]
    deep = rng.normal(size=(n, 15))
    deep[:, :2] += 0.8 * label[:, None]
    table = pd.DataFrame(radiomic, columns=[f"original_firstorder_f{j}" for j in range(25)])
    table = table.join(pd.DataFrame(deep, columns=[f"deep_effnetl0_{j:04d}" for j in range(15)]))
    table.insert(0, "case_id", [f"c{i:03d}" for i in range(n)])
    table.insert(1, "label", label)
    table.insert(2, "site", np.where(rng.random(n // 2) < 0.5, "A", "B")[groups])
    table.insert(3, "duplicate_group", [f"g{g}" for g in groups])
    table["age"] = 60 + 8 * label + rng.normal(scale=8, size=n)
    return table


def test_train_on_a_feature_table_writes_json_report_and_bundle(tmp_path, capsys):
    table_path = tmp_path / "features.csv"
    feature_table().to_csv(table_path, index=False)
    bundle, report = tmp_path / "models" / "demo", tmp_path / "report.html"
    code = main(["train", str(table_path), "--out", str(bundle), "--report", str(report), "--json",
                 "--clinical", "age", "--groups", "duplicate_group", "--classifiers", "lr,rf", *QUICK])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    models = summary["models"]
    assert {"clinical/lr", "radiomic/lr", "deep/lr", "fused/lr", "fused/rf", "nomogram/logistic"} <= set(models)
    for name, numbers in models.items():
        for key in ("cv_auc", "test_auc", "test_auc_ci"):
            assert key in numbers, f"{name} lacks {key}"
        low, high = numbers["test_auc_ci"]
        assert low <= numbers["test_auc"] <= high
    assert summary["best_model"] in models
    assert models["fused/lr"]["test_auc"] > 0.75  # the planted signal is found
    assert (bundle / "manifest.json").is_file()
    text = report.read_text()
    assert "<img" in text and "not for clinical use" in text.lower()


def test_train_refuses_bad_tables_with_a_named_column(tmp_path, capsys):
    table = feature_table(40)
    table.loc[3, "label"] = 2
    path = tmp_path / "bad.csv"
    table.to_csv(path, index=False)
    assert main(["train", str(path), "--json", *QUICK]) == 2
    assert "'label' must hold 0/1" in capsys.readouterr().err
    assert main(["train", str(path), "--json", "--classifiers", "lr,knn"]) == 2
    assert "unknown classifier(s) ['knn']" in capsys.readouterr().err


def test_icc_filter_drops_unreliable_features_using_training_rows_only():
    rng = np.random.default_rng(0)
    truth = rng.normal(size=(60, 2))
    train = pd.DataFrame({"original_a": truth[:, 0], "original_b": truth[:, 1]})
    train["original_a__repeat"] = truth[:, 0] + rng.normal(scale=0.1, size=60)  # reliable
    train["original_b__repeat"] = rng.normal(size=60)  # unrelated: ICC about 0
    columns = FeatureColumns(radiomic=("original_a", "original_b"))
    kept, note = icc_filtered_columns(train, columns, TrainOptions(icc_threshold=0.75))
    assert kept.radiomic == ("original_a",)
    assert "1 of 2 features below 0.75 dropped" in note


def test_train_from_a_manifest_extracts_and_applies_icc(tmp_path, capsys):
    """A 36-case BUSI manifest with a second, eroded segmentation for ICC: extraction → train."""
    busi = shared_path("busi")  # skips when ../shared/data is absent
    manifest = pd.read_csv(busi / "manifest.csv")
    manifest = pd.concat([manifest[manifest.label == 0].head(18), manifest[manifest.label == 1].head(18)])
    repeat_masks = []
    for mask_file in manifest["mask"]:
        mask = sitk.ReadImage(str(busi / mask_file)) > 0
        eroded = sitk.BinaryErode(mask, (2, 2))
        out = tmp_path / f"repeat_{len(repeat_masks)}.nrrd"
        sitk.WriteImage(sitk.Cast(eroded, sitk.sitkUInt8), str(out))
        repeat_masks.append(str(out))
    manifest = manifest.assign(image=[str(busi / p) for p in manifest["image"]],
                               mask=[str(busi / p) for p in manifest["mask"]], mask_repeat=repeat_masks)
    manifest_path = tmp_path / "manifest.csv"
    manifest.to_csv(manifest_path, index=False)
    code = main(["train", str(manifest_path), "--out", str(tmp_path / "bundle"), "--json",
                 "--groups", "duplicate_group", "--feature-sets", "radiomic,fused", "--classifiers", "lr",
                 "--no-deep", *QUICK])
    assert code == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert any("ICC(A,1) filter" in note for note in summary["notes"])
    assert (tmp_path / "manifest_features.csv").is_file()
    bundle = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert "params_yaml" in json.dumps(bundle)
