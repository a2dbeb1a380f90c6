"""Render the figures of docs/figures/ (issue 19's closing note) from real data:

- ``case-report.png``: the whole case report of ``radfusion demo`` (BUSI test case, shipped
  model) as headless Chromium shows it (scripts/check_case_report.py, which also checks it);
- ``views-busi.png``: that case's slice view (a picture has one: axial) as the report shows it;
- ``views-lidc-3d.png``: axial, coronal and sagittal views through a LIDC-IDRI nodule drawn by
  the same code (slicer_glue.slice_views, Slicer's slice pipeline), lung window, nodule
  outlined; no Grad-CAM because no CT model ships yet.

    .venv/bin/python scripts/render_doc_figures.py [--output docs/figures]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "RadFusionScreen"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "figures")
    args = parser.parse_args(argv)
    from RadFusionScreenLib.app import demo
    from RadFusionScreenLib.app.case_report_page import GREY_WINDOWS
    from RadFusionScreenLib.inputs.images import read_image, read_mask
    from RadFusionScreenLib.slicer_glue import slice_views

    args.output.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        lines = demo.run_demo(folder)
        print("\n".join(lines[:3]))
        shutil.copyfile(Path(folder) / "overlay.png", args.output / "views-busi.png")
        checked = subprocess.run([sys.executable, str(ROOT / "scripts" / "check_case_report.py"),
                                  str(Path(folder) / "report.html"), "--screenshot", str(args.output / "case-report.png")],
                                 capture_output=True, text=True)
        print(checked.stdout.strip() or checked.stderr.strip())
    lidc = demo.LIDC / "manifest.csv"
    if lidc.is_file():
        import csv

        with open(lidc, newline="") as handle:
            case = next(csv.DictReader(handle))
        image = read_image(demo.LIDC / case["image"])
        mask = read_mask(demo.LIDC / case["mask"], reference=image)
        views = slice_views.render_images(image, mask, None, height=360, grey_window=GREY_WINDOWS["CT"])
        caption = [f"LIDC-IDRI {case['case_id']}: Slicer's slice pipeline (headless), lung window W1500 L-600, "
                   "nodule outlined; patient's left on the right.", "No Grad-CAM: no CT model ships yet."]
        slice_views.write_png(args.output / "views-lidc-3d.png", slice_views.compose_views(views, caption))
        print(json.dumps({"lidc_case": case["case_id"], "views": {k: list(v.shape) for k, v in views.items()}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
