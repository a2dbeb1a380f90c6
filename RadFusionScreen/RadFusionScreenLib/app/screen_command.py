"""``radfusion screen``: its options and its run, shared by the command line (:mod:`.cli`) and
the warm engine (:mod:`.engine_server`), which answers each request with exactly this command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from RadFusionScreenLib.core.errors import RadFusionError

EXIT_INPUT_ERROR = 2  # the exit code of a refused input (bad image, mask, bundle, option value)


def screen_parser() -> argparse.ArgumentParser:
    """A ``radfusion`` parser that knows the ``screen`` command only (the warm engine's requests)."""
    parser = argparse.ArgumentParser(prog="radfusion")
    add_screen_command(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    return parser


def add_segment_option(parser: argparse.ArgumentParser, per_case: bool = False) -> None:
    extra = " (a manifest's segment column overrides it per case)" if per_case else ""
    parser.add_argument(
        "--segment", metavar="NAME|NUMBER",
        help="segment of a DICOM SEG / ROI of an RTSTRUCT mask, by name or number "
        f"(needed when it holds several; the error lists them){extra}",
    )


def add_screen_command(commands) -> None:
    parser = commands.add_parser(
        "screen", help="screen one case (IMAGE MASK) or a manifest (MANIFEST.csv -o PREDICTIONS.csv) with a model",
        description="One case: prints probability, risk class and the nomogram table (or --json). "
        "A manifest (case_id,image,mask[,mask_label,site,clinical...]): one prediction row per case, "
        "the model loaded once; a failing case gets its message in the error column.",
    )
    parser.add_argument("inputs", nargs="+", metavar="IMAGE MASK | MANIFEST", help="image and mask, or a manifest CSV")
    parser.add_argument("--model", help="model bundle folder or name in models/ (default: the shipped bundle of the "
                        "image's modality: CT lidc-ct-nodule, US busi-ultrasound)")
    parser.add_argument("--clinical", nargs="*", default=[], metavar="KEY=VALUE", help="clinical values the model needs")
    parser.add_argument("--site", help="the case's site, when the model harmonises by site (ComBat)")
    parser.add_argument("--label", type=int, help="mask label value (default: the single non-zero label)")
    parser.add_argument("--heatmap", help="write the Grad-CAM map in the image's geometry (e.g. OUT.nii.gz)")
    parser.add_argument("--device", default="auto", help="CNN device: auto (CUDA when present), cpu or cuda")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--report", metavar="OUT.html",
                        help="write the case report (slice views, probability, nomogram, reasons) as one HTML file")
    parser.add_argument("-o", "--output", help="manifest mode: predictions CSV to write")
    add_segment_option(parser, per_case=True)
    parser.set_defaults(run=run_screen)


def run_screen(args: argparse.Namespace, screener=None) -> int:
    """``screener(model, device)``: where the Screener comes from (default: loaded here; the
    warm engine passes its cache)."""
    import json

    import os

    from RadFusionScreenLib.serving.screening import Screener

    device = None if args.device == "auto" else args.device
    processes = os.cpu_count() or 1  # safe here: the console script's main module is guarded
    if screener is None:
        def screener(model, device):
            return Screener(model, device, processes)
    if len(args.inputs) == 1:
        if args.report:
            raise RadFusionError("--report writes one case's report: give IMAGE MASK, not a manifest")
        if not args.output:
            raise RadFusionError("a manifest needs -o PREDICTIONS.csv (or give IMAGE MASK to screen one case)")
        from RadFusionScreenLib.serving.screening import screen_manifest

        if not args.model:  # the bundle trained on the modality of the manifest's first image
            args.model = str(_model_for_manifest(args.inputs[0]))
        table = screen_manifest(args.inputs[0], args.output, screener(args.model, device), segment=args.segment)
        failed = int((table["error"] != "").sum())
        print(f"{len(table) - failed} of {len(table)} cases screened -> {args.output}", file=sys.stderr)
        return 0
    if len(args.inputs) != 2:
        raise RadFusionError("give IMAGE MASK (one case) or MANIFEST.csv -o PREDICTIONS.csv")
    clinical = key_values(args.clinical)
    if not args.model:  # the bundle trained on this image's modality
        from RadFusionScreenLib.serving.model_choice import model_for_case

        args.model = str(model_for_case(args.inputs[0]))
    loaded = screener(args.model, device)
    result = loaded.screen(args.inputs[0], args.inputs[1], clinical=clinical, site=args.site, label=args.label,
                           heatmap=True, segment=args.segment)
    if args.heatmap and result.heatmap is not None:
        from RadFusionScreenLib.serving.screening import write_image_atomic

        write_image_atomic(result.heatmap, args.heatmap)
    if args.report:
        _write_report(result, args, loaded.modality)
    print(json.dumps(result.to_dict(), indent=2, allow_nan=False) if args.json else result.summary_text())
    return 0


def _model_for_manifest(manifest: str) -> Path:
    """The default bundle for the modality of the manifest's first case (paths resolved as
    ``screen_manifest`` resolves them)."""
    from RadFusionScreenLib.features.cohort import manifest_tasks, read_manifest
    from RadFusionScreenLib.serving.model_choice import model_for_case

    tasks = manifest_tasks(read_manifest(manifest), Path(manifest).parent, default_label=None)
    if not tasks:
        raise RadFusionError(f"{manifest}: no case with an image column to choose a model by; give --model")
    return model_for_case(tasks[0].image)


def _write_report(result, args: argparse.Namespace, modality: str) -> None:
    from RadFusionScreenLib.app.case_report_page import write_case_report
    from RadFusionScreenLib.serving.screening import case_images

    image, mask, _ = case_images(args.inputs[0], args.inputs[1], args.label, None, args.segment)
    path = write_case_report(result, image, mask, modality, args.report,
                             description=f"{Path(args.inputs[0]).name} / {Path(args.inputs[1]).name}")
    print(f"case report written: {path}", file=sys.stderr)


def key_values(items: list[str]) -> dict[str, str]:
    values = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise RadFusionError(f"--clinical takes KEY=VALUE pairs, got {item!r}")
        values[key.strip()] = value.strip()
    return values
