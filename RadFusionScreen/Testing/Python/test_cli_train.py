"""`radfusion train`: feature table or manifest in; JSON summary, HTML report and bundle out."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
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


def _without_timings(value):
    """A summary with its run times (which differ between runs) left out."""
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if k not in ("seconds", "created")}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def test_refit_all_ships_the_configuration_refitted_on_every_case(tmp_path):
    """--refit-all: the split's figures are those of a run without it, and they validate the
    configuration; the bundle serves that configuration fitted on every case (its imputer's medians
    are the whole cohort's), records in-sample predictions under their own name, and its card and
    operating point say whose figures they are."""
    from RadFusionScreenLib.app.train_command import build_model
    from RadFusionScreenLib.core.errors import InputError
    from RadFusionScreenLib.explanation.reasons import operating_point
    from RadFusionScreenLib.model.bundle import load_bundle, recorded_predictions
    from safetensors.numpy import load_file

    table = feature_table(120, seed=3).drop(columns="site")
    table.loc[table.index[::7], "original_firstorder_f0"] = np.nan  # medians are what the imputer learns
    path = tmp_path / "features.csv"
    table.to_csv(path, index=False)
    options = TrainOptions(clinical=("age",), group_column="duplicate_group", feature_sets=("radiomic", "fused"),
                           classifiers=("lr",), grid="quick", outer_folds=3, inner_folds=3, n_boot=200, jobs=1)
    split_only = build_model(path, tmp_path / "split", options)
    refit = build_model(path, tmp_path / "refit", replace(options, refit_all=True), report_path=tmp_path / "r.html")

    def split_figures(summary):  # everything but the bundle, the refit record and the settings (refit_all)
        return {k: v for k, v in _without_timings(summary).items() if k not in ("bundle", "refit", "settings")}

    assert split_figures(split_only.summary) == split_figures(refit.summary)  # the split's figures are untouched
    refit_record = refit.summary["refit"]
    assert (refit_record["n"], refit_record["n_positive"]) == (len(table), int(table["label"].sum()))

    split_manifest = json.loads((tmp_path / "split" / "manifest.json").read_text())
    manifest = json.loads((tmp_path / "refit" / "manifest.json").read_text())
    validation = manifest["models"]["primary"]["validation"]
    assert validation["metrics"]["test_auc"] == split_manifest["models"]["primary"]["metrics"]["test_auc"]
    assert validation["threshold"] == split_manifest["decision_threshold"]
    assert "test_auc" not in manifest["models"]["primary"]["metrics"]  # the refitted model has no test of its own

    def imputer_median(folder):  # the primary model's fill value of f0 (a planted-signal feature it keeps)
        columns = json.loads((folder / "manifest.json").read_text())["models"]["primary"]["spec"]["steps"][0]
        fill = load_file(str(folder / "weights.safetensors"))[columns["fill"]]
        return fill[columns["numeric"].index("original_firstorder_f0")]

    test_cases = set(split_manifest["training"]["reference"]["test_predictions"])
    training = table[~table["case_id"].isin(test_cases)]
    assert imputer_median(tmp_path / "split") == pytest.approx(training["original_firstorder_f0"].median())
    assert imputer_median(tmp_path / "refit") == pytest.approx(table["original_firstorder_f0"].median())

    recorded, in_sample = recorded_predictions(manifest)
    assert in_sample and set(recorded) == test_cases and "test_predictions" not in manifest["training"]["reference"]
    bundle = load_bundle(tmp_path / "refit")
    rows = table.set_index("case_id").loc[sorted(test_cases)]
    served = bundle.predict(rows[bundle.required_columns])["probability"]
    np.testing.assert_allclose(served, [recorded[c] for c in sorted(test_cases)], rtol=0, atol=1e-9)

    card = (tmp_path / "refit" / "README.md").read_text()
    assert f"refitted on all {len(table)} cases" in card and "## The shipped model, refitted on every case" in card
    assert "the shipped model's calibration cannot be checked on cases it has seen" in card
    assert "| after: its calibrated probability |" in card and "calibrated (shown)" not in card
    assert f"configuration refitted on all {len(table)} cases" in (tmp_path / "r.html").read_text()
    point, split_point = operating_point(manifest), operating_point(split_manifest)
    assert point["sensitivity"] == split_point["sensitivity"] and point["threshold"] == manifest["decision_threshold"]
    assert f"at its own threshold {split_point['threshold']:.3f}" in point["source"]
    assert "refitted on every case" in point["source"]

    with pytest.raises(InputError, match="external validation keeps its site out"):
        build_model(path, None, replace(options, refit_all=True, site_column="site", external_site="A"))
