"""Model bundle tests (bundle.py): exported models predict as the fitted pipelines, and
loading refuses tampered, incomplete, too-new or pickle-carrying bundles.

Every classifier family is fitted through ``train.build_pipeline`` (with and without ComBat,
with LASSO and with PCA) and its numpy re-implementation from the exported spec is compared
with scikit-learn's ``predict_proba`` on held-out rows, some with missing values.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from threadpoolctl import threadpool_limits

from RadFusionScreenLib.model.bundle import (
    MANIFEST,
    WEIGHTS,
    BundleError,
    BundleModel,
    export_pipeline,
    load_bundle,
    write_bundle,
)
from RadFusionScreenLib.core.errors import InputError
from RadFusionScreenLib.model.bundle import LOCK, lock_bytes
from RadFusionScreenLib.model.harmonize import ComBatHarmonizer
from RadFusionScreenLib.model.train import CLASSIFIERS, FeatureColumns, ModelSettings, build_pipeline, compare_models

N_FEATURES = 40
N_SIGNAL = 4
EXACT, TREES = 1e-9, 1e-6
TREE_FAMILIES = {"rf", "extratrees", "xgboost", "lightgbm"}
# PCA sees every feature (no univariate / correlation cut), so ComBat and scaling are cut to all
PCA_SETTINGS = dict(reduction="pca", univariate_alpha=None, correlation_threshold=None, pca_variance=0.8)


@pytest.fixture(scope="module", autouse=True)
def single_threaded_blas():
    """Tiny matrices: BLAS threads only add contention on a shared machine (16 s vs 0.5 s for an MLP)."""
    with threadpool_limits(limits=1):
        yield


# ------------------------------------------------------------------------ data
def make_cohort(n_cases: int = 120, n_features: int = N_FEATURES, seed: int = 0, n_deep: int = 0) -> pd.DataFrame:
    """Gaussian radiomic (+ deep) features with a site offset, a planted signal, clinical columns."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n_cases)
    sites = rng.integers(0, 2, n_cases)
    features = rng.normal(size=(n_cases, n_features)) + rng.normal(scale=0.5, size=(2, n_features))[sites]
    features[:, :N_SIGNAL] += 1.5 * labels[:, None]
    table = pd.DataFrame(features, columns=[f"original_firstorder_f{j:02d}" for j in range(n_features)])
    for j in range(n_deep):
        table[f"deep_{j:02d}"] = rng.normal(size=n_cases) + (1.0 * labels if j < 2 else 0.0)
    table.insert(0, "label", labels)
    table.insert(1, "site", [f"site{s}" for s in sites])
    table["age"] = rng.normal(60, 10, n_cases) + 4 * labels
    table["sex"] = rng.choice(["F", "M"], n_cases)
    table["smoker"] = rng.choice([0, 1, 2], n_cases).astype(float)
    table.index = [f"case{seed}_{i:03d}" for i in range(n_cases)]
    return table


def radiomic(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if c.startswith("original_")]


def with_missing(table: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Held-out rows with gaps: one missing feature per row in turn, one row missing them all."""
    table = table.copy()
    for i, row in enumerate(table.index[:-1]):
        table.loc[row, columns[i % len(columns)]] = np.nan
    table.loc[table.index[-1], columns] = np.nan
    return table


@pytest.fixture(scope="module")
def cohort() -> tuple[pd.DataFrame, pd.DataFrame]:
    table = make_cohort()
    train, test = table.iloc[:90].copy(), table.iloc[90:].copy()
    train.iloc[:6, 1 + 2] = np.nan  # training gaps in a signal feature: medians must be used
    return train, test


def fit(columns: list[str], classifier: str, train: pd.DataFrame, **kwargs):
    settings = kwargs.pop("settings", ModelSettings())
    pipeline = build_pipeline(columns, classifier, settings, **kwargs)
    if classifier in TREE_FAMILIES:  # fewer trees: same code paths, faster tests
        pipeline.set_params(classifier__n_estimators=40)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pipeline.fit(train, train["label"].to_numpy())


def assert_same_probability(pipeline, frame: pd.DataFrame, classifier: str) -> BundleModel:
    spec, arrays, files = export_pipeline(pipeline, "model")
    json.dumps(spec)  # the spec is plain JSON
    model = BundleModel(spec, arrays, files)
    expected = pipeline.predict_proba(frame)[:, 1]
    got = model.predict_proba(frame[model.required_columns])  # the required columns are enough
    tolerance = TREES if classifier in TREE_FAMILIES else EXACT
    np.testing.assert_allclose(got, expected, rtol=0, atol=tolerance)
    return model


# ------------------------------------------------------- pipeline equivalence
@pytest.mark.parametrize("harmonize", [True, False], ids=["combat", "no-combat"])
@pytest.mark.parametrize("reduction", ["lasso", "pca"])
@pytest.mark.parametrize("classifier", CLASSIFIERS)
def test_exported_pipeline_predicts_as_sklearn(cohort, classifier, reduction, harmonize):
    train, test = cohort
    extra = PCA_SETTINGS if reduction == "pca" else {}
    settings = ModelSettings(harmonize=harmonize, **extra)
    pipeline = fit(radiomic(train), classifier, train, settings=settings)
    features = pipeline[:-1].get_feature_names_out() if reduction == "lasso" else None
    model = assert_same_probability(pipeline, with_missing(test, radiomic(train)), classifier)
    assert ("site" in model.required_columns) == harmonize
    if reduction == "lasso":
        assert model.features == [str(f) for f in features]  # only the LASSO-selected columns are read
        assert len(model.required_columns) == len(features) + harmonize < N_FEATURES
    else:
        assert len(model.features) == N_FEATURES


def test_combat_with_covariate_mean_only_and_no_reduction(cohort):
    train, test = cohort
    settings = ModelSettings(covariate_columns=("age",), harmonizer=ComBatHarmonizer(mean_only=True),
                             reduction="none")
    pipeline = fit(radiomic(train), "lr", train, settings=settings)
    model = assert_same_probability(pipeline, with_missing(test, radiomic(train)), "lr")
    assert {"site", "age"} <= set(model.required_columns)
    combat = next(op for op in model.spec["steps"] if op["op"] == "combat")
    assert combat["covariate_columns"] == ["age"] and combat["mean_only"]


@pytest.mark.filterwarnings("ignore:Skipping features without any observed values")
def test_training_column_without_values_is_not_required(cohort):
    train, test = cohort
    train = train.assign(original_firstorder_empty=np.nan)
    pipeline = fit(radiomic(train), "lr", train, settings=ModelSettings(reduction="none", univariate_alpha=None,
                                                                        correlation_threshold=None))
    frame = with_missing(test, radiomic(test)).assign(original_firstorder_empty=np.nan)
    model = assert_same_probability(pipeline, frame, "lr")
    assert "original_firstorder_empty" not in model.required_columns


def test_transform_gives_each_stage_per_feature(cohort):
    train, test = cohort
    pipeline = fit(radiomic(train), "lr", train)
    spec, arrays, files = export_pipeline(pipeline)
    model = BundleModel(spec, arrays, files)
    frame = with_missing(test, radiomic(train))
    stages = model.transform(frame)
    assert list(stages) == ["raw", "imputed", "harmonised", "scaled"]
    features = model.features
    assert stages["raw"][features].isna().any().any() and not stages["imputed"].isna().any().any()
    harmonised = pipeline[:2].transform(frame)[features]  # columns + ComBat
    scaled = pipeline.named_steps["scale"].transform(pipeline[:5].transform(frame))[features]
    np.testing.assert_allclose(stages["harmonised"].to_numpy(), harmonised.to_numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(stages["scaled"].to_numpy(), scaled.to_numpy(), rtol=0, atol=1e-12)
    logit = pipeline.decision_function(frame)
    np.testing.assert_allclose(model.linear_predictor(frame), logit, rtol=0, atol=EXACT)
    coefficients = model.coefficients  # per-feature contributions: scaled value x coefficient
    assert list(coefficients.index) == features
    contributions = stages["scaled"] @ coefficients + model.intercept
    np.testing.assert_allclose(contributions, logit, rtol=0, atol=EXACT)


@pytest.mark.parametrize("classifier", ["lr", "rf", "mlp"])
def test_clinical_pipeline_with_categorical_columns(cohort, classifier):
    train, test = cohort
    columns = ["age", "sex", "smoker"]
    pipeline = fit(columns, classifier, train, clinical=True, categorical_columns=["sex", "smoker"])
    test = test.copy()
    test.loc[test.index[0], "sex"] = None  # most frequent level fills it
    test.loc[test.index[1], "smoker"] = np.nan
    test.loc[test.index[2], "age"] = np.nan  # median fills it
    test.loc[test.index[3], "sex"] = "unknown"  # unseen level: all one-hot columns zero
    test["smoker"] = test["smoker"].astype(object)
    test.loc[test.index[4], "smoker"] = 1  # an int matches the float level 1.0, as in scikit-learn
    model = assert_same_probability(pipeline, test, classifier)
    assert model.required_columns == columns
    encoding = next(op for op in model.spec["steps"] if op["op"] == "columns")
    assert [block["categories"] for block in encoding["categorical"]] == [["F", "M"], [0.0, 1.0, 2.0]]


# ------------------------------------------------------- input refusals
@pytest.fixture(scope="module")
def combat_model(cohort) -> BundleModel:
    train, _ = cohort
    spec, arrays, files = export_pipeline(fit(radiomic(train), "lr", train))
    return BundleModel(spec, arrays, files)


def test_unseen_site_is_refused_naming_it_and_the_known_sites(cohort, combat_model):
    _, test = cohort
    frame = test.assign(site=["site0"] * (len(test) - 1) + ["scannerX"])
    with pytest.raises(InputError, match=r"'scannerX'.*known sites: 'site0', 'site1'"):
        combat_model.predict_proba(frame)
    with pytest.raises(InputError, match="site column 'site' has a missing value"):
        combat_model.predict_proba(test.assign(site=None))
    with pytest.raises(InputError, match=r"\['site'\]"):
        combat_model.predict_proba(test.drop(columns="site"))


def test_missing_feature_column_is_refused_naming_it(cohort, combat_model):
    _, test = cohort
    gone = combat_model.features[0]
    with pytest.raises(InputError, match=gone):
        combat_model.predict_proba(test.drop(columns=gone))
    with pytest.raises(InputError, match=f"{gone}.*non-numeric"):
        combat_model.predict_proba(test.assign(**{gone: "high"}))


# ------------------------------------------------------- whole comparison -> bundle
@pytest.fixture(scope="module")
def comparison_and_test():
    table = make_cohort(120, n_features=20, seed=3, n_deep=10)
    train, test = table.iloc[:80], table.iloc[80:]
    columns = FeatureColumns(radiomic=tuple(radiomic(table)),
                             deep=tuple(c for c in table.columns if c.startswith("deep_")), clinical=("age", "sex"))
    # radiomic/lr serves as rad-score; deep has no lr model, so deep/lasso-lr is built for the deep-score
    comparison = compare_models(train, test, columns=columns, feature_sets=("radiomic", "fused"),
                                classifiers=("lr", "xgboost"), categorical_columns=("sex",),
                                settings=ModelSettings(lasso_folds=3), grid="quick", outer_folds=3,
                                inner_folds=2, n_boot=20)
    return comparison, test


@pytest.fixture(scope="module")
def bundle_dir(comparison_and_test, tmp_path_factory) -> Path:
    comparison, _ = comparison_and_test
    extraction = {"modality": "CT", "params_yaml": "imageType:\n  Original: {}\n", "deep": {"backbone": "test"}}
    return write_bundle(tmp_path_factory.mktemp("models") / "screen", comparison, name="screen",
                        extraction=extraction, training_summary={"n_cases": 80})


@pytest.mark.parametrize("classifier", [None, "xgboost"], ids=["best", "xgboost"])
def test_bundle_reproduces_the_comparison(comparison_and_test, tmp_path, classifier):
    comparison, test = comparison_and_test
    folder = write_bundle(tmp_path / "b", comparison, name="b", extraction={"modality": "CT"},
                          training_summary={}, classifier=classifier)
    bundle = load_bundle(folder)
    result = comparison.results[bundle.manifest["models"]["primary"]["result"]]
    assert result.feature_set == "fused" and (classifier is None or result.classifier == classifier)
    if classifier is None:
        best = max((r for r in comparison.results.values() if r.feature_set == "fused"), key=lambda r: r.cv_auc_mean)
        assert result is best
    predicted = bundle.predict(test[bundle.required_columns])
    tolerance = TREES if result.classifier in TREE_FAMILIES else EXACT
    np.testing.assert_allclose(predicted["probability"], result.test_probability, rtol=0, atol=tolerance)
    assert bundle.threshold == result.threshold
    assert (predicted["decision"] == (result.test_probability >= result.threshold)).all()
    for score in ("rad_score", "deep_score"):
        np.testing.assert_allclose(predicted[score], comparison.scores_test[score], rtol=0, atol=EXACT)
    points = comparison.nomogram.points(comparison.scores_test.join(test[["age", "sex"]]))
    np.testing.assert_allclose(predicted["nomogram_total_points"], points["total_points"], rtol=0, atol=1e-8)
    np.testing.assert_allclose(predicted["nomogram_points_age"], points["age"], rtol=0, atol=1e-8)
    np.testing.assert_allclose(predicted["nomogram_probability"], points["probability"], rtol=0, atol=EXACT)
    files = bundle.manifest["files"]
    on_disk = sorted(p.name for p in folder.iterdir() if p.name not in (MANIFEST, LOCK))
    assert sorted(files) == on_disk and (classifier != "xgboost" or "primary.xgboost.json" in files)
    for name, digest in files.items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest


def test_manifest_is_readable(bundle_dir, comparison_and_test):
    comparison, _ = comparison_and_test
    manifest = json.loads((bundle_dir / MANIFEST).read_text())
    assert manifest["format_version"] == "1" and manifest["name"] == "screen"
    assert manifest["extraction"]["params_yaml"].startswith("imageType")
    assert set(manifest["models"]) == {"primary", "rad_score", "deep_score"}
    assert manifest["models"]["rad_score"]["result"] == "radiomic/lr"
    assert manifest["models"]["deep_score"]["result"] == "deep/lasso-lr"
    assert manifest["nomogram"]["model"] == json.loads(json.dumps(comparison.nomogram.to_dict()))
    assert manifest["nomogram"]["clinical_fill"]["sex"] in ("F", "M")
    assert manifest["input"]["combat"]["known_sites"] == ["site0", "site1"]
    assert {"numpy", "scikit-learn", "safetensors"} <= set(manifest["packages"])
    assert not list(bundle_dir.parent.glob(".screen.*")), "no staging folder may be left behind"


# ------------------------------------------------------- bundle refusals
@pytest.fixture
def bundle_copy(bundle_dir, tmp_path) -> Path:
    return Path(shutil.copytree(bundle_dir, tmp_path / "copy"))


def test_modified_byte_is_refused_naming_the_file(bundle_copy):
    weights = bundle_copy / WEIGHTS
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=f"'{WEIGHTS}' has been modified"):
        load_bundle(bundle_copy)


def test_missing_file_is_refused_naming_it(bundle_copy):
    (bundle_copy / WEIGHTS).unlink()
    with pytest.raises(BundleError, match=f"'{WEIGHTS}' is missing"):
        load_bundle(bundle_copy)
    (bundle_copy / MANIFEST).unlink()
    with pytest.raises(BundleError, match=f"no {MANIFEST}"):
        load_bundle(bundle_copy)


def test_newer_format_version_is_refused_naming_both(bundle_copy):
    manifest = json.loads((bundle_copy / MANIFEST).read_text())
    manifest["format_version"] = "2"
    (bundle_copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"format version 2, newer than version 1"):
        load_bundle(bundle_copy)


def test_unlisted_pickle_file_is_refused_naming_it(bundle_copy):
    (bundle_copy / "model.pkl").write_bytes(pickle.dumps({"harmless": True}))
    with pytest.raises(BundleError, match="'model.pkl'"):
        load_bundle(bundle_copy)


def test_manifest_naming_an_absent_array_is_refused(bundle_copy):
    """As a faulty exporter would write it: the manifest and its lock agree, the array is absent."""
    manifest = json.loads((bundle_copy / MANIFEST).read_text())
    manifest["models"]["primary"]["spec"]["steps"][0]["fill"] = "primary.nothing"
    (bundle_copy / MANIFEST).write_text(json.dumps(manifest))
    (bundle_copy / LOCK).write_bytes(lock_bytes(manifest))
    with pytest.raises(BundleError, match="'primary.nothing'"):
        load_bundle(bundle_copy)


def test_loading_never_unpickles(bundle_dir, comparison_and_test, monkeypatch):
    _, test = comparison_and_test

    def forbidden(*args, **kwargs):
        raise AssertionError("a bundle load must never unpickle")

    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(np, "load", forbidden)
    bundle = load_bundle(bundle_dir)
    assert len(bundle.predict(test)) == len(test)


# ------------------------------------------------------- writing
def test_writing_refuses_a_folder_that_is_not_a_bundle(comparison_and_test, tmp_path):
    comparison, _ = comparison_and_test
    target = tmp_path / "results"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(BundleError, match="not a model bundle"):
        write_bundle(target, comparison, name="x", extraction={}, training_summary={})
    assert [p.name for p in target.iterdir()] == ["notes.txt"]


def test_rewriting_replaces_a_bundle_and_failures_leave_nothing(comparison_and_test, tmp_path):
    comparison, _ = comparison_and_test
    target = tmp_path / "b"
    write_bundle(target, comparison, name="first", extraction={}, training_summary={})
    write_bundle(target, comparison, name="second", extraction={}, training_summary={})
    assert load_bundle(target).manifest["name"] == "second"
    with pytest.raises(BundleError, match="cannot write a object"):
        write_bundle(target, comparison, name="third", extraction={"bad": object()}, training_summary={})
    assert load_bundle(target).manifest["name"] == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_model_card_is_listed_and_protected(bundle_copy):
    """write_model_card adds README.md with its SHA-256; editing it afterwards is detected."""
    from RadFusionScreenLib.model.bundle import write_model_card

    bundle = bundle_copy
    write_model_card(bundle, "# Model card\nintended use: research\n")
    loaded = load_bundle(bundle)
    assert "README.md" in loaded.manifest["files"]
    (bundle / "README.md").write_text("# Model card\nintended use: anything\n")
    with pytest.raises(BundleError, match="README.md"):
        load_bundle(bundle)
