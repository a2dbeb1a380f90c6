"""`radfusion train`: from a cohort (manifest or feature table) to a report and a model bundle.

One function, :func:`build_model`, strings the stages together in the only order that keeps
the test set clean:

1. features: a feature table as given, or a manifest extracted through the cached cohort
   extractor (a ``mask_repeat`` manifest column extracts a second segmentation for ICC);
2. split: stratified random by group (``duplicate_group``), or external by site;
3. ICC filter: reproducibility from the repeated measurements of the *training* cases only;
4. :func:`~.train.compare_models`: nested CV of every feature set x classifier, then the
   test set once;
5. summary (JSON numbers), HTML report, model bundle;
6. optionally (``refit_all``, ``--refit-all``): the shipped model's configuration built again on
   every case, as TRIPOD recommends for a final model (Collins et al. 2015, item 10b; Steyerberg,
   *Clinical Prediction Models*, ch. 17). The split above has then validated the *configuration*
   (feature set, classifier family, its grid, calibration selection, nomogram): the bundle serves
   the refitted model and reports the split's figures as that configuration's internal test.
   Nothing of step 6 feeds back into steps 2-5, whose figures are those of a run without it.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd

from RadFusionScreenLib.core.errors import InputError
from RadFusionScreenLib.core.jsonable import to_jsonable
from RadFusionScreenLib.model.bundle.trust import bundle_digest
from RadFusionScreenLib.model.train import (
    CLASSIFIERS,
    FEATURE_SETS,
    FeatureColumns,
    ModelSettings,
    compare_models,
    infer_feature_columns,
    split_cohort,
)

REPEAT_SUFFIX = "__repeat"  # column suffix of the second measurement of a feature (ICC)
ICC_TYPES = {"A1": "ICC2", "C1": "ICC3"}  # McGraw & Wong name -> psych name
MANIFEST_COLUMNS = ("image", "mask")


@dataclass
class TrainOptions:
    """Everything `radfusion train` can be told; defaults are the published workflow's."""

    label_column: str = "label"
    clinical: tuple[str, ...] = ()
    categorical: tuple[str, ...] = ()
    site_column: str | None = "site"
    group_column: str | None = None
    test_size: float = 0.3
    seed: int = 0
    external_site: str | None = None
    feature_sets: tuple[str, ...] = FEATURE_SETS
    classifiers: tuple[str, ...] = CLASSIFIERS
    grid: str = "full"
    outer_folds: int = 5
    inner_folds: int = 5
    n_boot: int = 2000
    reduction: str = "lasso"
    univariate_test: str = "mannwhitney"
    correlation_threshold: float | None = 0.9
    harmonize: bool = True
    icc_type: str = "A1"
    icc_threshold: float = 0.75
    workers: int = 1
    jobs: int | None = None  # processes for the fitting tasks (None: every core)
    cache: str | None = "auto"
    features_path: str | None = None  # where a manifest's features are written
    card_notes: str | None = None  # markdown file: data source, citation, limitations (model card)
    refit_all: bool = False  # ship the chosen configuration refitted on every case (step 6 above)
    extraction: dict[str, Any] = field(default_factory=dict)  # ExtractionConfig fields

    def settings(self) -> ModelSettings:
        return ModelSettings(site_column=self.site_column, harmonize=self.harmonize, reduction=self.reduction,
                             univariate_test=self.univariate_test, correlation_threshold=self.correlation_threshold,
                             random_state=self.seed)


@dataclass
class BuildResult:
    summary: dict[str, Any]
    comparison: Any
    bundle_path: Path | None
    report_path: Path | None


def build_model(
    input_path: str | Path,
    out_dir: str | Path | None,
    options: TrainOptions = TrainOptions(),
    report_path: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> BuildResult:
    """Train, compare, report and bundle (see module doc). ``out_dir`` None: no bundle."""
    from RadFusionScreenLib.model.bundle import write_bundle
    from RadFusionScreenLib.model.evaluation import comparison_summary
    from RadFusionScreenLib.presentation.model_report import write_report

    log = progress or (lambda message: None)
    if options.refit_all and options.external_site is not None:
        raise InputError(f"--refit-all with --external-site {options.external_site!r}: an external validation "
                         "keeps its site out of the model; use one or the other")
    table, extraction = load_training_table(Path(input_path), options, out_dir, log)
    # a table without the site column: no ComBat, no site columns (a copy: the caller's options stay)
    options = replace(options, site_column=options.site_column if options.site_column in table.columns else None)
    split = split_cohort(table, options.test_size, options.seed, stratify=options.label_column,
                         groups=options.group_column, external_site=options.external_site,
                         site_column=options.site_column or "site")
    log(f"split: {split.description}: {len(split.train)} training, {len(split.test)} test cases")
    columns = infer_feature_columns(table, options.clinical)
    columns, icc_note = icc_filtered_columns(split.train, columns, options)
    comparison = compare_models(
        split.train, split.test, columns=columns, label_column=options.label_column,
        group_column=options.group_column, feature_sets=options.feature_sets, classifiers=options.classifiers,
        categorical_columns=options.categorical, settings=options.settings(), grid=options.grid,
        outer_folds=options.outer_folds, inner_folds=options.inner_folds, n_boot=options.n_boot, n_jobs=options.jobs, progress=log,
    )
    if icc_note:
        comparison.notes.insert(0, icc_note)
    cohort = cohort_description(table, split, options, columns)
    summary = comparison_summary(comparison, cohort=cohort, settings=_settings_record(options))
    shipped_comparison, validation, reference_cases = comparison, None, split.train
    if options.refit_all:
        reference_cases = pd.concat([split.train, split.test])
        shipped_comparison, validation = refit_on_all_cases(reference_cases, split, columns, comparison, options, log)
        summary["refit"] = refit_summary(shipped_comparison, reference_cases, options)
    report = None
    if report_path is not None:
        report = Path(report_path)
        shipped = shipped_model_name(comparison)
        shap = _shap_of(comparison, shipped, split.test if len(split.test) else split.train)
        write_report(report, comparison, summary, shap, shipped)
        log(f"report -> {report}")
    bundle = None
    if out_dir is not None:
        bundle = Path(out_dir)
        shipped = shipped_model_name(shipped_comparison)
        training = {"cohort": cohort, "metrics": summary, "settings": _settings_record(options),
                    "reference": reference_record(shipped_comparison, shipped, reference_cases, split.test)}
        write_bundle(bundle, shipped_comparison, name=bundle.name, extraction=extraction,
                     feature_set=shipped_comparison.results[shipped].feature_set,
                     classifier=shipped_comparison.results[shipped].classifier,
                     training_summary=training, validation=validation)
        write_card(bundle, options, dict(zip(split.test["case_id"].astype(str), split.test[options.label_column])))
        digest = bundle_digest(json.loads((bundle / "manifest.json").read_text(encoding="utf-8")))
        summary["bundle"] = {"path": str(bundle), "digest": digest}
        log(f"model bundle -> {bundle} (digest {digest}; unsigned: radfusion bundle sign {bundle} --key KEY.pem)")
    return BuildResult(summary, comparison, bundle, report)


# ===================================================================== inputs
def load_training_table(path: Path, options: TrainOptions, out_dir: str | Path | None,
                        log: Callable[[str], None]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """A feature table (read as is) or a manifest (extracted, cached); plus the extraction record."""
    if not path.is_file():
        raise InputError(f"training input not found: {path}")
    head = pd.read_csv(path, nrows=0)
    if all(column in head.columns for column in MANIFEST_COLUMNS):
        table, extraction = _extract_manifest(path, options, out_dir, log)
    else:
        table = pd.read_csv(path, dtype={"case_id": str})
        extraction = {"source": "feature table", "path": path.name,
                      "note": "features were given, not extracted: this bundle cannot screen images by itself"}
    return _checked_table(table, path, options), extraction


def _extract_manifest(path: Path, options: TrainOptions, out_dir: str | Path | None,
                      log: Callable[[str], None]) -> tuple[pd.DataFrame, dict[str, Any]]:
    from RadFusionScreenLib.features.cohort import extract_cohort, read_manifest
    from RadFusionScreenLib.features.case_features import ExtractionConfig

    config = ExtractionConfig(**options.extraction)
    features_path = Path(options.features_path or _default_features_path(path, out_dir))
    log(f"extracting features of {path} -> {features_path}")
    table = extract_cohort(path, features_path, config, workers=options.workers, cache_dir=options.cache,
                           progress=False)
    manifest = read_manifest(path)
    if "mask_repeat" in manifest.columns:
        table = _with_repeat_features(path, manifest, table, features_path, config, options)
    return _without_failed_cases(table, log), extraction_record(config, table)


def _default_features_path(manifest: Path, out_dir: str | Path | None) -> Path:
    folder = Path(out_dir).parent if out_dir is not None else Path.cwd()
    return folder / f"{manifest.stem}_features.csv"


def _with_repeat_features(path: Path, manifest: pd.DataFrame, table: pd.DataFrame, features_path: Path,
                          config: Any, options: TrainOptions) -> pd.DataFrame:
    """Extract the ``mask_repeat`` segmentations and add their features as ``<name>__repeat``."""
    from RadFusionScreenLib.features.cohort import extract_cohort

    repeat = manifest[manifest["mask_repeat"].notna()]
    repeat = repeat.assign(mask=repeat["mask_repeat"])[["case_id", "image", "mask"]]
    with tempfile.TemporaryDirectory() as folder:
        # image/mask paths stay relative to the original manifest's folder
        repeat = repeat.assign(image=[str((path.parent / p).resolve()) for p in repeat["image"]],
                               mask=[str((path.parent / p).resolve()) for p in repeat["mask"]])
        repeat_manifest = Path(folder) / "repeat_manifest.csv"
        repeat.to_csv(repeat_manifest, index=False)
        repeat_table = extract_cohort(repeat_manifest, features_path.with_name(features_path.stem + "_repeat.csv"),
                                      config, workers=options.workers, cache_dir=options.cache, progress=False)
    feature_names = [c for c in repeat_table.columns if c in infer_feature_columns(repeat_table).for_set("fused")]
    renamed = repeat_table.set_index("case_id")[feature_names].add_suffix(REPEAT_SUFFIX)
    return table.join(renamed, on="case_id")


def _without_failed_cases(table: pd.DataFrame, log: Callable[[str], None]) -> pd.DataFrame:
    if "error" not in table.columns:
        return table
    failed = table["error"].fillna("").astype(str) != ""
    for case_id, error in zip(table.loc[failed, "case_id"], table.loc[failed, "error"]):
        log(f"case {case_id} left out: {error}")
    return table[~failed].drop(columns="error")


def _checked_table(table: pd.DataFrame, path: Path, options: TrainOptions) -> pd.DataFrame:
    for column in ("case_id", options.label_column):
        if column not in table.columns:
            raise InputError(f"{path}: column {column!r} is missing (found: {', '.join(map(str, table.columns[:12]))}, ...)")
    if table["case_id"].duplicated().any():
        raise InputError(f"{path}: duplicate case_id(s) {table['case_id'][table['case_id'].duplicated()].tolist()[:5]}")
    labels = pd.to_numeric(table[options.label_column], errors="coerce")
    if labels.isna().any() or not labels.isin([0, 1]).all():
        raise InputError(f"{path}: column {options.label_column!r} must hold 0/1 labels for every case")
    if labels.nunique() < 2:
        raise InputError(f"{path}: every case has the same label; a model needs both classes")
    for column in options.clinical:
        if column not in table.columns:
            raise InputError(f"{path}: clinical column {column!r} is not in the table")
    return table.set_index("case_id", drop=False).rename_axis(None)


def extraction_record(config: Any, table: pd.DataFrame) -> dict[str, Any]:
    """How the features were made: what a bundle needs to compute them again for a new case."""
    from RadFusionScreenLib.features.radiomic import RadiomicExtractor, default_params_path

    modalities = sorted(set(table.get("modality", pd.Series(dtype=str)).dropna().astype(str)))
    if len(modalities) != 1:
        raise InputError(f"a model needs one modality; the cohort holds {modalities or 'none'}")
    modality = modalities[0]
    params_path = config.params or str(default_params_path(modality))
    radiomic = RadiomicExtractor(params_path)
    record: dict[str, Any] = {
        "modality": modality, "params_yaml": Path(params_path).read_text(), "params_sha256": radiomic.params_hash,
        "pyradiomics_version": radiomic.pyradiomics_version, "label": config.label,
        "segment": getattr(config, "segment", None),
    }
    if getattr(config, "field_of_view", None):  # only when set: bundles without it screen the whole input
        record["field_of_view"] = dict(config.field_of_view)
    if config.deep is not None:
        from RadFusionScreenLib.features.deep import get_deep_extractor

        options = getattr(config, "deep_options", None) or {}  # the features' own preprocessing (views, ...)
        record["deep"] = get_deep_extractor(config.deep, modality=modality, device="cpu", **options).settings()
    return record


def write_card(bundle: Path, options: TrainOptions, test_labels: dict[str, Any]) -> None:
    """The bundle's README.md model card, from its manifest plus the trainer's notes."""
    from RadFusionScreenLib.model.bundle import write_model_card
    from RadFusionScreenLib.presentation.card import model_card_text

    notes = Path(options.card_notes).read_text() if options.card_notes else ""
    manifest = json.loads((bundle / "manifest.json").read_text())
    write_model_card(bundle, model_card_text(manifest, notes, {k: int(v) for k, v in test_labels.items()}))


# ======================================================================= ICC
def icc_filtered_columns(train: pd.DataFrame, columns: FeatureColumns,
                         options: TrainOptions) -> tuple[FeatureColumns, str | None]:
    """Drop features whose ICC over the training cases' repeated measurements is below threshold.

    Features without a ``__repeat`` column are kept (no reliability study for them). The ICC
    uses no labels; computing it on training cases only keeps the test set untouched anyway.
    """
    from RadFusionScreenLib.model.feature_selection import ICCFilter

    repeated = [c for c in columns.for_set("fused") if f"{c}{REPEAT_SUFFIX}" in train.columns]
    if not repeated:
        return columns, None
    if options.icc_type not in ICC_TYPES:
        raise InputError(f"ICC type must be one of {', '.join(ICC_TYPES)}, got {options.icc_type!r}")
    rows = train[[f"{c}{REPEAT_SUFFIX}" for c in repeated]].notna().all(axis=1)
    if rows.sum() < 3:
        raise InputError("the ICC filter needs repeated measurements of at least 3 training cases")
    first = train.loc[rows, repeated]
    second = train.loc[rows, [f"{c}{REPEAT_SUFFIX}" for c in repeated]].set_axis(repeated, axis=1)
    icc = ICCFilter.icc_values([first, second], ICC_TYPES[options.icc_type])
    dropped = {c for c in repeated if not (icc.get(c, float("nan")) >= options.icc_threshold)}
    kept = FeatureColumns(radiomic=tuple(c for c in columns.radiomic if c not in dropped),
                          deep=tuple(c for c in columns.deep if c not in dropped), clinical=columns.clinical)
    note = (f"ICC({options.icc_type[0]},1) filter on {int(rows.sum())} training cases with a second "
            f"measurement: {len(dropped)} of {len(repeated)} features below {options.icc_threshold:g} dropped")
    return kept, note


# ==================================================================== records
def reference_record(comparison: Any, shipped: str, cases: pd.DataFrame, test: pd.DataFrame) -> dict[str, Any]:
    """What screening a new case is checked against: the ranges of the features the shipped model
    uses over the ``cases`` it was fitted on, and recorded predictions (so a re-screened case can
    be compared with the bundle's own number): ``test_predictions`` of the internal test cases, or,
    for a model refitted on every case, ``refit_predictions`` of the same cases (in-sample)."""
    from RadFusionScreenLib.model.train import predict_probability, selected_feature_names

    numeric = [c for c in cases.columns if pd.api.types.is_numeric_dtype(cases[c])]
    result = comparison.results[shipped]
    used = [c for c in selected_feature_names(result.model) if c in numeric]
    ranges = {c: [float(cases[c].quantile(q)) for q in (0.0, 0.01, 0.99, 1.0)] for c in used}
    record: dict[str, Any] = {"feature_ranges_min_p1_p99_max": ranges}
    if "roi_voxels" in numeric:
        record["roi_voxels_min_max"] = [int(cases["roi_voxels"].min()), int(cases["roi_voxels"].max())]
    if result.test_probability is not None:
        record["test_predictions"] = {str(case): float(p) for case, p in zip(test["case_id"], result.test_probability)}
    elif len(test) and result.calibration is not None:
        probability = result.calibration.apply(predict_probability(result.model, test))
        record["refit_predictions"] = {str(case): float(p) for case, p in zip(test["case_id"], probability)}
    return record


# ====================================================================== refit
def refit_on_all_cases(cases: pd.DataFrame, split: Any, columns: FeatureColumns, comparison: Any,
                       options: TrainOptions, log: Callable[[str], None]) -> tuple[Any, dict[str, Any]]:
    """The shipped model's configuration built again on every case (module doc, step 6).

    The same :func:`compare_models` runs on all cases with only the shipped feature set and
    classifier (plus the rad/deep-score models and the nomogram): its grid search, calibration
    selection and Youden threshold are refitted by the same nested rules, grouped as before.
    Returns that comparison (no test set) and the validation record of the configuration: the
    split's figures of the model it replaces."""
    validated = comparison.shipped_result()
    log(f"refit: {validated.name}'s configuration on all {len(cases)} cases")
    refit = compare_models(
        cases, None, columns=columns, label_column=options.label_column, group_column=options.group_column,
        feature_sets=(validated.feature_set,), classifiers=(validated.classifier,),
        categorical_columns=options.categorical, settings=options.settings(), grid=options.grid,
        outer_folds=options.outer_folds, inner_folds=options.inner_folds, n_boot=options.n_boot,
        n_jobs=options.jobs, progress=log)
    return refit, validation_record(comparison, validated, split)


def validation_record(comparison: Any, validated: Any, split: Any) -> dict[str, Any]:
    """The split's figures of the configuration a refitted model keeps: its model developed on the
    training part, its threshold, test metrics and test calibration (before / after its calibrator)."""
    from RadFusionScreenLib.model.bundle.writing import calibration_on_test_set

    return {
        "what": "the same configuration developed on the training part only and tested once on the internal "
                "test part; the shipped model is that configuration refitted on every case",
        "result": validated.name, "threshold": validated.threshold, "metrics": validated.row(),
        "split": split.description,
        "calibrator": None if validated.calibration is None else validated.calibration.calibrator.describe(),
        "calibration_test_set": calibration_on_test_set(validated, comparison.y_test),
    }


def refit_summary(refit: Any, cases: pd.DataFrame, options: TrainOptions) -> dict[str, Any]:
    """The refitted model: what it was fitted on and its nested-CV figures over every case."""
    result = refit.shipped_result()
    y = cases[options.label_column].astype(int)
    info: dict[str, Any] = {"n": int(len(cases)), "n_positive": int(y.sum()), "prevalence": float(y.mean()),
                            "model": result.name, "best_params": to_jsonable(result.best_params),
                            "cv_auc_mean": result.cv_auc_mean, "cv_auc_sd": result.cv_auc_sd,
                            "cv_auc_pooled": result.cv_auc_pooled, "threshold": result.threshold,
                            "calibration": None if result.calibration is None else result.calibration.to_dict(),
                            "n_features": len(result.selected_features)}
    if options.group_column:
        info["n_groups"] = int(cases[options.group_column].nunique())
    return info


def cohort_description(table: pd.DataFrame, split: Any, options: TrainOptions, columns: FeatureColumns) -> dict[str, Any]:
    """Sizes, prevalence and sites of the cohort and its split (no patient identifiers)."""
    def part(frame: pd.DataFrame) -> dict[str, Any]:
        y = frame[options.label_column].astype(int)
        info: dict[str, Any] = {"n": int(len(frame)), "n_positive": int(y.sum()),
                                "prevalence": float(y.mean()) if len(frame) else None}
        if options.site_column:
            info["sites"] = {str(k): int(v) for k, v in frame[options.site_column].astype(str).value_counts().items()}
        if options.group_column:
            info["n_groups"] = int(frame[options.group_column].nunique())
        return info

    return {"split": split.description, "train": part(split.train), "test": part(split.test),
            "n_radiomic_features": len(columns.radiomic), "n_deep_features": len(columns.deep),
            "clinical": list(columns.clinical), "label_column": options.label_column,
            "group_column": options.group_column, "site_column": options.site_column}


def _settings_record(options: TrainOptions) -> dict[str, Any]:
    keep = ("test_size", "seed", "external_site", "feature_sets", "classifiers", "grid", "outer_folds",
            "inner_folds", "n_boot", "reduction", "univariate_test", "correlation_threshold", "harmonize", "icc_type", "icc_threshold",
            "refit_all")
    return {name: to_jsonable(getattr(options, name)) for name in keep}


SHAP_MAX_CASES = 200  # model-agnostic SHAP (SVM, MLP) costs grow with cases x features


def _shap_of(comparison: Any, name: str, cases: pd.DataFrame) -> Any:
    """SHAP values of the model the bundle ships, on (up to 200 of) the test cases."""
    from RadFusionScreenLib.explanation.shap_values import shap_values

    result = comparison.results[name]
    if result.feature_set == "nomogram":
        return None
    cases = cases.sample(SHAP_MAX_CASES, random_state=0) if len(cases) > SHAP_MAX_CASES else cases
    return shap_values(result.model, cases)


def shipped_model_name(comparison: Any) -> str:
    """The model a bundle serves (``ModelComparison.shipped_result``)."""
    return comparison.shipped_result().name


def parse_list(text: str | None, allowed: Sequence[str] | None = None, what: str = "value") -> tuple[str, ...]:
    """Comma-separated option value → tuple, checked against ``allowed``."""
    if not text:
        return ()
    items = tuple(item.strip() for item in text.split(",") if item.strip())
    if allowed is not None:
        unknown = [item for item in items if item not in allowed]
        if unknown:
            raise InputError(f"unknown {what}(s) {unknown}: use {', '.join(allowed)}")
    return items
