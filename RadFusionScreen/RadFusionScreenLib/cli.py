"""`radfusion` command line: feature extraction for one case or a cohort.

Heavy libraries (pyradiomics, torch, pandas) are imported inside the commands so that
`radfusion --help` answers at once.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from . import __version__
from .errors import RadFusionError

EXIT_INPUT_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="radfusion",
        description="RadFusionScreen: deep-learning radiomics (pyradiomics + CNN features) for screening.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_features_command(commands)
    _add_extract_command(commands)
    return parser


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
    parser.add_argument("mask", help="mask label image in the image's geometry")
    parser.add_argument("-o", "--output", required=True, help="output CSV")
    parser.add_argument("--case-id", help="case_id column (default: a hash of the image content, never a name)")
    _add_extraction_options(parser)
    parser.set_defaults(run=run_features)


def _add_extract_command(commands) -> None:
    parser = commands.add_parser("extract", help="features of a cohort manifest (case_id,image,mask,...) into a CSV")
    parser.add_argument("manifest", help="CSV with case_id, image, mask and any columns to pass through")
    parser.add_argument("-o", "--output", required=True, help="output feature table (CSV)")
    parser.add_argument("--workers", type=int, default=1, help="parallel worker processes (default 1)")
    parser.add_argument("--cache", help=f"cache folder (default: {'<output folder>'}/.radfusion_cache)")
    parser.add_argument("--no-cache", action="store_true", help="recompute every case")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_extraction_options(parser)
    parser.set_defaults(run=run_extract)


def _config(args: argparse.Namespace):
    from .features import ExtractionConfig

    return ExtractionConfig(
        params=args.params,
        modality=args.modality,
        deep=None if args.no_deep else "efficientnet-lite0",
        device=None if args.device == "auto" else args.device,
        label=args.label,
        series_uid=args.series_uid,
        names=args.names,
    )


def run_features(args: argparse.Namespace) -> int:
    import pandas as pd

    from .cohort import write_csv_atomic
    from .features import CaseFeatureExtractor, hash_inputs

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
    from .cohort import extract_cohort

    if args.workers < 1:
        raise RadFusionError("--workers must be at least 1")
    cache = None if args.no_cache else (args.cache or "auto")
    start = time.perf_counter()
    table = extract_cohort(
        args.manifest, args.output, _config(args), workers=args.workers, cache_dir=cache, progress=not args.quiet
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
