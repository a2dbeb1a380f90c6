"""`radfusion` command line: feature extraction for one case or a cohort, model building.

Heavy libraries (pyradiomics, torch, pandas) are imported inside the commands so that
`radfusion --help` answers at once.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from RadFusionScreenLib.core.version import __version__
from RadFusionScreenLib.app.screen_command import EXIT_INPUT_ERROR, add_screen_command, add_segment_option
from RadFusionScreenLib.core.errors import RadFusionError



def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="radfusion",
        description="RadFusionScreen: deep-learning radiomics (pyradiomics + CNN features) for screening.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_features_command(commands)
    _add_extract_command(commands)
    _add_train_command(commands)
    add_screen_command(commands)
    _add_serve_command(commands)
    _add_demo_command(commands)
    _add_bundle_command(commands)
    return parser


def _field_of_view(text: str):
    from RadFusionScreenLib.core.errors import InputError
    from RadFusionScreenLib.features.field_of_view import FieldOfView

    try:
        return FieldOfView.parse(text)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_extraction_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--label", type=int, help="mask label value (default: the single non-zero label)")
    parser.add_argument("--params", help="pyradiomics params YAML (default: shipped params for the modality)")
    parser.add_argument(
        "--modality",
        choices=["CT", "MR", "US"],
        type=str.upper,
        help="image modality (default: DICOM tag; one-slice images: US; else CT if air (< -500) is present, else MR)",
    )
    parser.add_argument("--no-deep", action="store_true", help="radiomic features only (no CNN)")
    parser.add_argument("--deep-views", choices=["2.5d", "orthogonal"],
                        help="CNN input of a 3D volume: the largest cross-section and its neighbours (2.5d), or "
                        "axial/coronal/sagittal planes through the ROI centre on isotropic pixels (orthogonal); "
                        "default by modality; recorded in the features and bundles (docs/deep-features.md)")
    parser.add_argument("--field-of-view", type=_field_of_view, metavar="SLICES[,IN_PLANE[,MARGIN]]",
                        help="cut every image to the ROI's slices plus SLICES on each side and an in-plane window "
                        "of at least IN_PLANE voxels (default 44) and MARGIN voxels beside the ROI (default 5), so "
                        "a crop and a whole scan give the same features; recorded in the features and bundles, "
                        "applied at screening (docs/radiomics.md)")
    parser.add_argument("--device", default="auto", help="CNN device: auto (CUDA when present), cpu or cuda")
    parser.add_argument(
        "--names",
        choices=["pyradiomics", "ibsi"],
        default="pyradiomics",
        help="column names: pyradiomics names, or IBSI tags (only IBSI-mapped radiomic features are written)",
    )
    parser.add_argument("--series-uid", help="SeriesInstanceUID to read when a DICOM folder holds several series")


def _add_features_command(commands) -> None:
    parser = commands.add_parser("features", help="features of one case (image + mask) into a one-row CSV")
    parser.add_argument("image", help="image: NRRD, NIfTI, MHA, PNG/JPEG, or a DICOM series folder")
    parser.add_argument("mask", help="mask: label image in the image's geometry, or a DICOM SEG / RTSTRUCT file")
    parser.add_argument("-o", "--output", required=True, help="output CSV")
    parser.add_argument("--case-id", help="case_id column (default: a hash of the image content, never a name)")
    _add_extraction_options(parser)
    add_segment_option(parser)
    parser.set_defaults(run=run_features)


def _add_extract_command(commands) -> None:
    parser = commands.add_parser("extract", help="features of a cohort manifest (case_id,image,mask,...) into a CSV")
    parser.add_argument("manifest", help="CSV with case_id, image, mask and any columns to pass through")
    parser.add_argument("-o", "--output", required=True, help="output feature table (CSV)")
    parser.add_argument("--workers", type=int, default=1, help="parallel worker processes (default 1)")
    parser.add_argument("--cache", help=f"cache folder (default: {'<output folder>'}/.radfusion_cache)")
    parser.add_argument("--no-cache", action="store_true", help="recompute every case")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--backend", choices=["local", "dask"], default="local",
                        help="local worker processes, or a Dask cluster (optional dask[distributed])")
    parser.add_argument("--scheduler", help="dask backend: scheduler address, e.g. tcp://10.0.0.5:8786 "
                        "(default: a local cluster of --workers processes)")
    _add_extraction_options(parser)
    add_segment_option(parser, per_case=True)
    parser.set_defaults(run=run_extract)


def _add_train_command(commands) -> None:
    parser = commands.add_parser(
        "train", help="build and compare models from a cohort; write a report and a model bundle",
        description="INPUT is a cohort manifest (features are extracted, cached) or a feature table "
        "(case_id, label, optional site / group / clinical columns; other numeric columns are features, "
        "deep ones when named deep_*).",
    )
    parser.add_argument("input", help="manifest CSV (case_id,image,mask,label,...) or feature table CSV")
    parser.add_argument("--out", help="model bundle folder to write, e.g. models/NAME")
    parser.add_argument("--report", help="self-contained HTML report to write")
    parser.add_argument("--json", action="store_true", help="print the summary numbers as JSON on stdout")
    parser.add_argument("--label-column", default="label", help="0/1 outcome column (default: label)")
    parser.add_argument("--clinical", help="clinical predictor columns, comma-separated")
    parser.add_argument("--categorical", help="which of the clinical columns are categorical")
    parser.add_argument("--site-column", default="site", help="site/scanner column for ComBat and external tests")
    parser.add_argument("--groups", help="column whose rows are never split, e.g. duplicate_group")
    parser.add_argument("--test-size", type=float, default=0.3, help="share of cases (groups) in the random test set")
    parser.add_argument("--external-site", help="external validation: test set = the cases of this site")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--feature-sets", default=",".join(FEATURE_SETS_DEFAULT),
                        help="feature sets to compare (clinical,radiomic,deep,fused)")
    parser.add_argument("--classifiers", default=",".join(CLASSIFIERS_DEFAULT),
                        help="classifier families (lr,svm,rf,extratrees,xgboost,lightgbm,mlp)")
    parser.add_argument("--grid", choices=["full", "quick"], default="full", help="hyper-parameter grid size")
    parser.add_argument("--folds", type=int, default=5, help="outer and inner cross-validation folds")
    parser.add_argument("--reduction", choices=["lasso", "pca", "none"], default="lasso")
    parser.add_argument("--univariate", choices=["mannwhitney", "welch"], default="mannwhitney",
                        help="univariate filter test (p < 0.05 kept), fitted inside the training folds")
    parser.add_argument("--correlation", type=float, default=0.9,
                        help="prune one of each feature pair with |Pearson r| above this (1 = no pruning)")
    parser.add_argument("--no-combat", action="store_true", help="no ComBat harmonisation even with several sites")
    parser.add_argument("--icc-type", choices=["A1", "C1"], default="A1",
                        help="ICC(A,1) absolute agreement or ICC(C,1) consistency, from <feature>__repeat columns")
    parser.add_argument("--icc-threshold", type=float, default=0.75)
    parser.add_argument("--jobs", type=int, help="processes for the outer CV folds and the final grid search "
                        "(default: every core; results do not depend on it)")
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap replicates for the AUC interval")
    parser.add_argument("--card-notes", help="markdown for the bundle's model card: data source, citation, limitations")
    parser.add_argument("--refit-all", action="store_true",
                        help="bundle the shipped model's configuration refitted on every case (TRIPOD); the test "
                        "split then validates the configuration, and the card says so")
    parser.add_argument("--features", help="manifest input: where to write the extracted feature table")
    parser.add_argument("--workers", type=int, default=1, help="manifest input: extraction worker processes")
    parser.add_argument("--cache", help="manifest input: feature cache folder")
    _add_extraction_options(parser)
    parser.set_defaults(run=run_train)


def _add_serve_command(commands) -> None:
    parser = commands.add_parser(
        "serve", help="a warm engine: screen cases sent as JSON lines on stdin (the Slicer module's Analyze)",
        description="Keeps model bundles loaded. Each stdin line {\"id\": N, \"arguments\": [\"screen\", IMAGE, "
        "MASK, ...]} (a screen command line) is answered on stdout by {\"id\": N, \"exit_code\": ..., \"stdout\": ..., "
        "\"stderr\": ...}; {\"command\": \"stop\"} or the end of stdin ends it.",
    )
    parser.add_argument("--model", help="bundle to load before the first request")
    parser.add_argument("--device", default="auto", help="CNN device of that bundle: auto, cpu or cuda")
    parser.set_defaults(run=run_serve)


def _add_demo_command(commands) -> None:
    parser = commands.add_parser("demo", help="screen an example case with the shipped model: summary, overlay PNG, HTML")
    parser.add_argument("-o", "--output", default="demo_output", help="folder for the demo's files (default demo_output)")
    parser.add_argument("--model", help="model bundle (default: the shipped busi-ultrasound)")
    parser.set_defaults(run=run_demo)


def _add_bundle_command(commands) -> None:
    parser = commands.add_parser("bundle", help="check, sign or make keys for model bundles (integrity, provenance)")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    verify = actions.add_parser("verify", help="check a bundle: digest, lock, files, pins, signature, environment")
    verify.add_argument("bundle", help="model bundle folder")
    verify.add_argument("--json", action="store_true", help="print the result as JSON")
    sign = actions.add_parser("sign", help="sign a bundle's digest with an Ed25519 private key (bundle.sig.json)")
    sign.add_argument("bundle", help="model bundle folder")
    sign.add_argument("--key", required=True, help="Ed25519 private key, unencrypted PEM (radfusion bundle keygen)")
    sign.add_argument("--signer", help="signer's name recorded in the signature (default: the key file's name)")
    keygen = actions.add_parser("keygen", help="make an Ed25519 key pair: NAME.pem (private) and NAME.pub (share)")
    keygen.add_argument("private_key", help="path of the private key to create, e.g. ~/keys/my-lab.pem")
    parser.set_defaults(run=run_bundle)


FEATURE_SETS_DEFAULT = ("clinical", "radiomic", "deep", "fused")
CLASSIFIERS_DEFAULT = ("lr", "svm", "rf", "extratrees", "xgboost", "lightgbm", "mlp")


def _config(args: argparse.Namespace):
    from RadFusionScreenLib.features.case_features import ExtractionConfig

    return ExtractionConfig(
        params=args.params,
        modality=args.modality,
        deep=None if args.no_deep else "efficientnet-lite0",
        device=None if args.device == "auto" else args.device,
        label=args.label,
        series_uid=args.series_uid,
        names=args.names,
        segment=getattr(args, "segment", None),
        deep_options={"views": args.deep_views} if getattr(args, "deep_views", None) else None,
        field_of_view=args.field_of_view.record() if getattr(args, "field_of_view", None) else None,
    )


def run_features(args: argparse.Namespace) -> int:
    import pandas as pd

    from RadFusionScreenLib.features.cohort import write_csv_atomic
    from RadFusionScreenLib.features.case_features import CaseFeatureExtractor, hash_inputs

    extractor = CaseFeatureExtractor(_config(args))
    start = time.perf_counter()
    features = extractor.extract_paths(args.image, args.mask)
    case_id = args.case_id or hash_inputs([Path(args.image)], {})[:12]
    row = {"case_id": case_id, **features.row()}
    write_csv_atomic(pd.DataFrame([row]), Path(args.output))
    print(
        f"{len(features.radiomic)} radiomic + {len(features.deep)} deep features "
        f"in {time.perf_counter() - start:.1f} s -> {args.output}",
        file=sys.stderr,
    )
    return 0


def run_extract(args: argparse.Namespace) -> int:
    from RadFusionScreenLib.features.cohort import extract_cohort

    if args.workers < 1:
        raise RadFusionError("--workers must be at least 1")
    cache = None if args.no_cache else (args.cache or "auto")
    start = time.perf_counter()
    table = extract_cohort(
        args.manifest, args.output, _config(args), workers=args.workers, cache_dir=cache, progress=not args.quiet,
        backend=args.backend, scheduler=args.scheduler,
    )
    failed = table[table["error"].astype(str) != ""]
    print(
        f"{len(table) - len(failed)} of {len(table)} cases extracted in {time.perf_counter() - start:.1f} s "
        f"-> {args.output}",
        file=sys.stderr,
    )
    for case_id, error in zip(failed["case_id"], failed["error"]):
        print(f"  {case_id}: {error}", file=sys.stderr)
    return 0


def run_train(args: argparse.Namespace) -> int:
    import json

    from RadFusionScreenLib.app.train_command import TrainOptions, build_model, parse_list

    if args.out is None and args.report is None and not args.json:
        raise RadFusionError("nothing to write: give --out, --report and/or --json")
    options = TrainOptions(
        label_column=args.label_column, clinical=parse_list(args.clinical), categorical=parse_list(args.categorical),
        site_column=args.site_column, group_column=args.groups, test_size=args.test_size, seed=args.seed,
        external_site=args.external_site,
        feature_sets=parse_list(args.feature_sets, FEATURE_SETS_DEFAULT, "feature set"),
        classifiers=parse_list(args.classifiers, CLASSIFIERS_DEFAULT, "classifier"),
        grid=args.grid, outer_folds=args.folds, inner_folds=args.folds, n_boot=args.bootstrap,
        reduction=args.reduction, univariate_test=args.univariate,
        correlation_threshold=None if args.correlation >= 1 else args.correlation, harmonize=not args.no_combat, icc_type=args.icc_type,
        icc_threshold=args.icc_threshold, workers=args.workers, jobs=args.jobs, cache=args.cache or "auto",
        features_path=args.features, card_notes=args.card_notes, refit_all=args.refit_all,
        extraction=_config(args).__dict__,
    )
    start = time.perf_counter()
    result = build_model(args.input, args.out, options, report_path=args.report,
                         progress=lambda line: print(line, file=sys.stderr))
    print(f"best model: {result.summary['best_model']} ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    if args.json:
        print(json.dumps(result.summary, indent=2, allow_nan=False))
    return 0


def run_serve(args: argparse.Namespace) -> int:
    from RadFusionScreenLib.app.engine_server import main as serve

    return serve(args.model, None if args.device == "auto" else args.device)


def run_demo(args: argparse.Namespace) -> int:
    from RadFusionScreenLib.app.demo import run_demo as demo

    for line in demo(args.output, args.model):
        print(line)
    return 0


def run_bundle(args: argparse.Namespace) -> int:
    import json

    from RadFusionScreenLib.model import bundle as trust  # the bundle package: trust and signing
    from RadFusionScreenLib.model.bundle import load_bundle

    if args.action == "keygen":
        private, public = trust.generate_key(Path(args.private_key).expanduser())
        print(f"private key {private} (keep it secret; sign with: radfusion bundle sign BUNDLE --key {private})")
        print(f"public key  {public} (give it to users: they put it in {trust.user_keys_dirs()[0]})")
        return 0
    if args.action == "sign":
        target = trust.sign_bundle(args.bundle, Path(args.key).expanduser(), args.signer)
        print(f"signed: {target}")
    bundle = load_bundle(args.bundle)
    record = {"bundle": str(bundle.path), "name": bundle.manifest.get("name"), "digest": bundle.digest,
              "provenance": bundle.provenance.to_dict(), "warnings": bundle.warnings,
              "shipped": trust.shipped_pins().get(str(bundle.manifest.get("name"))) == bundle.digest}
    if getattr(args, "json", False):
        print(json.dumps(record, indent=1))
    else:
        print(f"{record['name']}: digest {bundle.digest}\n{bundle.provenance.describe()}"
              + ("\nshipped with RadFusionScreen (pinned digest)" if record["shipped"] else "")
              + "".join(f"\nwarning: {w}" for w in bundle.warnings))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except RadFusionError as error:
        print(f"radfusion {args.command}: error: {error}", file=sys.stderr)
        return EXIT_INPUT_ERROR


if __name__ == "__main__":
    raise SystemExit(main())
