"""Render the extension's screenshot (docs/screenshot.png, CMake's EXTENSION_SCREENSHOTURLS).

A real BUSI case (the first malignant case of ../shared/data/busi/manifest.csv that lies in the
shipped model's internal test split, as recorded in its bundle) is screened with
models/busi-ultrasound through the module's own Logic on a headless slicer-core scene, exactly
as RadFusionScreen/Testing/Python/test_slicer_logic.py does; the axial slice view is then drawn
by Slicer's slice pipeline (slicer_glue.slice_views): the image with its window/level, the
Grad-CAM map in PET-Heat, the lesion as Slicer's label outline, and a caption strip.

    .venv/bin/python scripts/render_screenshot.py [--case malignant_1] [--output docs/screenshot.png]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "RadFusionScreen"), str(ROOT / "RadFusionScreen" / "Testing" / "Python")]

DEFAULT_DATA = Path(os.environ.get("RADFUSION_SHARED_DATA", ROOT.parent / "shared" / "data")) / "busi"
DEFAULT_MODEL = ROOT / "models" / "busi-ultrasound"
SEGMENT_COLOR = (0.0, 1.0, 0.4)  # a green outline reads well over grey and heat colours
OUTLINE_THICKNESS = 2  # segmentation display node's slice-intersection thickness (Slicer's default: 1)


def test_split(model: Path) -> set[str]:
    """Case IDs of the bundle's internal test split (the bundle records their predictions)."""
    manifest = json.loads((model / "manifest.json").read_text(encoding="utf-8"))
    reference = manifest.get("training", {}).get("reference", {})
    return set(reference.get("test_predictions") or reference.get("refit_predictions") or {})


def pick_case(data: Path, model: Path) -> str:
    """The first malignant case (manifest order) in the bundle's internal test split; the first
    malignant case when the bundle records no split."""
    test_cases = test_split(model)
    with open(data / "manifest.csv", newline="", encoding="utf-8") as handle:
        malignant = [row["case_id"] for row in csv.DictReader(handle) if row["label"] == "1"]
    in_test = [case for case in malignant if case in test_cases]
    if not (in_test or malignant):
        raise SystemExit(f"no malignant case in {data / 'manifest.csv'}")
    return (in_test or malignant)[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="BUSI folder with manifest.csv")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="model bundle folder")
    parser.add_argument("--case", help="case_id (default: first malignant case of the test split)")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "screenshot.png")
    parser.add_argument("--height", type=int, default=440, help="slice view height in pixels")
    args = parser.parse_args(argv)

    from mrml_scene import headless_scene, import_module_file, slicer  # the tests' headless Slicer set-up
    from RadFusionScreenLib.inputs.images import read_image, read_mask
    from RadFusionScreenLib.slicer_glue import mrml, slice_views

    case = args.case or pick_case(args.data, args.model)
    image = read_image(args.data / "images" / f"{case}.png")
    mask = read_mask(args.data / "masks" / f"{case}.png", reference=image)
    module = import_module_file()
    with headless_scene() as scene:
        volume = mrml.sitk_to_volume_node(image, case, scene)
        volume.CreateDefaultDisplayNodes()
        labelmap = mrml.sitk_to_volume_node(mask, f"{case} mask", scene, class_name="vtkMRMLLabelMapVolumeNode")
        segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{case} lesion")
        if not slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(labelmap, segmentation):
            raise SystemExit("the lesion mask could not be imported as a segment")
        mrml.remove_node(scene, labelmap)
        segment_id = segmentation.GetSegmentation().GetNthSegmentID(0)
        segmentation.GetSegmentation().GetSegment(segment_id).SetColor(*SEGMENT_COLOR)
        segmentation.GetDisplayNode().SetSliceIntersectionThickness(OUTLINE_THICKNESS)

        logic = module.RadFusionScreenLogic(scene)
        result = logic.screen(volume, segmentation, segment_id, modelPath=str(args.model))
        heatmap = logic.getParameterNode().heatmapVolume
        width, height = image.GetSize()[:2]
        size = (round(width * args.height / height), args.height)
        started = time.perf_counter()
        plain = slice_views.render_slice_views(scene, volume, None, segmentation, segment_id, size=size)
        with_heat = slice_views.render_slice_views(scene, volume, heatmap, segmentation, segment_id, size=size)
        render_seconds = time.perf_counter() - started
        timings = {**{f"{k} lesion": v for k, v in plain.seconds.items()},
                   **{f"{k} Grad-CAM": v for k, v in with_heat.seconds.items()}}
    views = {f"{name}: lesion": view for name, view in plain.items()}
    views.update({f"{name}: Grad-CAM": view for name, view in with_heat.items()})

    model = result.model.get("name") or args.model.name
    split = " (internal test split)" if case in test_split(args.model) else ""
    caption = [
        f"BUSI {case}{split}: probability {result.probability:.3f}, {result.risk_class} risk "
        f"(decision threshold {result.threshold:.3f})",
        f"Model: {model}. Grad-CAM in PET-Heat (below {slice_views.HEATMAP_THRESHOLD_FRACTION:.0%} of its maximum "
        "hidden), lesion outline.",
        "Research use only - not for clinical use.",
    ]
    picture = slice_views.compose_views(views, caption)
    slice_views.write_png(args.output, picture)
    print(f"{case}: probability {result.probability:.4f} ({result.risk_class}); "
          f"screening {logic.lastScreenSeconds:.1f} s; "
          f"render {render_seconds * 1000:.0f} ms in all (pipeline per view: "
          + ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in timings.items())
          + f"); {args.output} {picture.shape[1]}x{picture.shape[0]}, {args.output.stat().st_size / 1024:.0f} KB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
