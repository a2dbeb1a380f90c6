#!/usr/bin/env python
"""Every shipped model bundle screens a real case of its modality, in this Python environment.

For each folder under ``models/`` with a ``manifest.json``: one real case of the bundle's
modality from ``../shared/data`` is screened

- through the engine's public API (``Screener(path, device="cpu").screen(image, mask, ...)``),
  as the module's Logic and the Slicer Python console do, and
- through the command line exactly as Slicer's widget starts it: ``python -m RadFusionScreenLib
  screen IMAGE MASK --json --heatmap H --model PATH --device cpu [--clinical k=v ...] [--site S]``
  with the module folder on ``PYTHONPATH`` and another working directory (the arguments of
  ``slicer_glue.scene_logic.screenArguments``),

and a table is printed (bundle, modality, case, path, probability, seconds). The case is one of
the bundle's recorded internal test cases when it records them (then the probability must
reproduce the recorded one), else the first positive case of the data set. Exit 1 when any
bundle cannot screen its case (no data set for its modality, a refusal, an error, API and CLI
disagreeing, a recorded probability not reproduced); exit 0 with a message when
``../shared/data`` (or ``RADFUSION_SHARED_DATA``) is absent. ``RADFUSION_MODELS``: another bundle folder.

Modality -> data set (see ``../shared/data/README.md``): US -> BUSI (``busi``), CT -> LIDC-IDRI
nodules (``lidc``, with ``nodules.csv``'s reader ratings as possible clinical values),
MR -> TCGA-LGG FLAIR (``lgg``, with age / sex_code / site).
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "RadFusionScreen"
MODELS = Path(os.environ.get("RADFUSION_MODELS", ROOT / "models"))  # as the engine: RADFUSION_MODELS, else models/
SHARED_DATA = Path(os.environ.get("RADFUSION_SHARED_DATA", ROOT.parent / "shared" / "data"))
# modality -> (data set folder, extra per-case table joined on case_id or None)
DATASETS = {"US": ("busi", None), "CT": ("lidc", "nodules.csv"), "MR": ("lgg", None)}
AGREE = 1e-6  # API vs CLI, and vs the bundle's recorded test prediction
if str(MODULE_DIR) not in sys.path:  # as in Slicer: the module folder is on the path
    sys.path.insert(0, str(MODULE_DIR))


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def pick_case(modality: str, recorded: dict[str, float]) -> dict[str, str]:
    """A case of the data set for ``modality``: image and mask as absolute paths, plus its other columns."""
    if modality not in DATASETS:
        raise LookupError(f"no real data set is mapped to modality {modality!r} "
                          f"(known: {', '.join(DATASETS)}): add it to DATASETS in {Path(__file__).name}")
    folder, extra = DATASETS[modality]
    data = SHARED_DATA / folder
    rows = _rows(data / "manifest.csv")
    if extra and (data / extra).is_file():
        more = {row["case_id"]: row for row in _rows(data / extra)}
        rows = [{**more.get(row["case_id"], {}), **row} for row in rows]
    held_out = [row for row in rows if row["case_id"] in recorded]
    candidates = held_out or rows
    case = next((row for row in candidates if row.get("label") == "1"), candidates[0])
    return {**case, "image": str(data / case["image"]), "mask": str(data / case["mask"])}


def case_inputs(screener, case: dict[str, str]) -> tuple[dict[str, str], str | None]:
    """The clinical values and site the bundle needs, from the case's columns."""
    missing = [name for name in screener.clinical_predictors if not case.get(name)]
    if missing:
        raise LookupError(f"the case has no value for the bundle's clinical predictor(s) {missing}")
    clinical = {name: case[name] for name in screener.clinical_predictors}
    site = case.get(screener.site_column) if screener.site_column else None
    return clinical, site


def screen_with_cli(bundle: Path, case: dict[str, str], clinical: dict[str, str], site: str | None) -> tuple[float, float]:
    """Probability and wall seconds of ``python -m RadFusionScreenLib screen`` as the widget starts it."""
    with tempfile.TemporaryDirectory(prefix="radfusion-cli-") as work:
        heatmap = Path(work) / "heatmap.nrrd"
        arguments = ["screen", case["image"], case["mask"], "--json", "--heatmap", str(heatmap),
                     "--model", str(bundle), "--device", "cpu"]
        if clinical:
            arguments += ["--clinical", *(f"{k}={v}" for k, v in clinical.items())]
        if site:
            arguments += ["--site", str(site)]
        environment = dict(os.environ)
        environment["PYTHONPATH"] = os.pathsep.join(p for p in (str(MODULE_DIR), os.environ.get("PYTHONPATH")) if p)
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "RadFusionScreenLib", *arguments], cwd=work, env=environment,
                              capture_output=True, text=True, timeout=600)
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(f"the CLI exited with {done.returncode}: {done.stderr.strip()[-800:]}")
        start = done.stdout.find("{")  # as the widget reads it (scene_logic.resultFromOutput)
        if start < 0:
            raise RuntimeError(f"the CLI printed no JSON result: {done.stdout[-500:]!r}")
        result = json.loads(done.stdout[start:])
        if not heatmap.is_file():
            raise RuntimeError("the CLI wrote no --heatmap file")
        return float(result["probability"]), seconds


def screen_bundle(bundle: Path) -> list[list[str]]:
    """Table rows (API, CLI) for one bundle; raises when it cannot screen its case."""
    from RadFusionScreenLib.model.bundle import recorded_predictions
    from RadFusionScreenLib.serving.screening import Screener

    manifest = json.loads((bundle / "manifest.json").read_text())
    modality = str((manifest.get("extraction") or {}).get("modality", "?"))
    recorded, in_sample = recorded_predictions(manifest)
    case = pick_case(modality, recorded)
    started = time.perf_counter()
    screener = Screener(bundle, device="cpu")
    clinical, site = case_inputs(screener, case)
    result = screener.screen(case["image"], case["mask"], clinical=clinical or None, site=site, heatmap=True)
    api_seconds = time.perf_counter() - started
    api = float(result.probability)
    if not (math.isfinite(api) and 0.0 <= api <= 1.0):
        raise RuntimeError(f"probability {api} is not in [0, 1]")
    if result.heatmap is None and "deep_score" in screener.bundle.score_models:
        raise RuntimeError("no Grad-CAM heat map")
    cli, cli_seconds = screen_with_cli(bundle, case, clinical, site)
    if abs(api - cli) > AGREE:
        raise RuntimeError(f"API probability {api:.9f} and CLI probability {cli:.9f} differ")
    reference = recorded.get(case["case_id"])
    if reference is not None and abs(api - float(reference)) > AGREE:
        raise RuntimeError(f"probability {api:.9f} does not reproduce the bundle's recorded {float(reference):.9f}")
    note = "" if reference is None else f"recorded {float(reference):.6f}" + (" (in-sample: refitted on every case)"
                                                                             if in_sample else "")
    note += "".join(f"; {w}" for w in result.warnings)
    return [[bundle.name, modality, case["case_id"], "API", f"{api:.6f}", f"{api_seconds:.1f}", note],
            [bundle.name, modality, case["case_id"], "CLI", f"{cli:.6f}", f"{cli_seconds:.1f}", ""]]


def main() -> int:
    if not SHARED_DATA.is_dir():
        print(f"screen_shipped_bundles: SKIPPED: no real data at {SHARED_DATA} (set RADFUSION_SHARED_DATA)")
        return 0
    bundles = sorted(p.parent for p in MODELS.glob("*/manifest.json"))
    if not bundles:
        print(f"screen_shipped_bundles: no bundle folder (with manifest.json) under {MODELS}", file=sys.stderr)
        return 1
    rows, failures = [], []
    for bundle in bundles:
        try:
            rows += screen_bundle(bundle)
        except Exception as error:  # every bundle is tried; each failure is named
            failures.append(f"{bundle.name}: {type(error).__name__}: {error}")
    header = ["bundle", "modality", "case", "via", "probability", "seconds", "notes"]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths)) + "  " + row[-1])
    sys.stdout.flush()
    for failure in failures:
        print(f"FAILED {failure}", file=sys.stderr)
    print(f"screen_shipped_bundles: {len(bundles) - len(failures)} of {len(bundles)} bundle(s) screened a real case"
          f" (Python {sys.version.split()[0]})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
