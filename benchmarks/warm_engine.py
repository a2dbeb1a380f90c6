"""Click-to-result of the Slicer module's Analyze, through the protocol the widget uses.

Run:  .venv/bin/python benchmarks/warm_engine.py [--clicks 5]   ->  benchmarks/results/warm_engine.json

For each case the panel's request (``screen IMAGE MASK --json --heatmap H --model M --device
auto``) is sent as the widget sends it:

- ``before``: a fresh ``python -m RadFusionScreenLib screen ...`` per click (what Analyze ran
  until the warm engine): imports, bundle and CNN loading on every click;
- ``warm engine``: ``python -m RadFusionScreenLib serve --model M`` started at the first click,
  the request written on its stdin as a JSON line (``engine_protocol.encode_request``); first
  click (start + load + case) and later clicks (median);
- ``Screener.screen``: the warm in-process time of the same case, with the same radiomics
  worker processes as the engine (one per core), the goal's reference: later clicks within 10%.

Every click includes what the widget does with the answer: parse the JSON and read the
heat-map file. Cases: a BUSI picture (shipped model), a LIDC nodule crop and the STS_001 CT
(a CT bundle trained here on generated phantoms: the stages cost the same as a real CT model's).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from bench_speed import BUSI, SHARED, STS, ct_model  # noqa: E402

from RadFusionScreenLib.serving.engine_protocol import decode_response, encode_request  # noqa: E402

MODULE_DIR = REPO / "RadFusionScreen"
LIDC = SHARED / "lidc"


def cases() -> dict[str, tuple[Path, Path, str]]:
    found = {}
    if BUSI.is_dir():
        found["busi_2d"] = (BUSI / "images" / "malignant_99.png", BUSI / "masks" / "malignant_99.png",
                            str(REPO / "models" / "busi-ultrasound"))
    if LIDC.is_dir():
        found["lidc_nodule"] = (LIDC / "images" / "LIDC-IDRI-0001_R_1.nii.gz", LIDC / "masks" / "LIDC-IDRI-0001_R_1.nii.gz",
                                str(ct_model()))
    masks = sorted((STS / "nifti" / "mask").glob("*.nii.gz")) if STS.is_dir() else []
    if masks:
        found["sts001_ct"] = (STS / "dicom" / "image", masks[0], str(ct_model()))
    return found


def _environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(MODULE_DIR), os.environ.get("PYTHONPATH")) if p)}


def _request(image: Path, mask: Path, model: str, heatmap: Path) -> list[str]:
    return ["screen", str(image), str(mask), "--json", "--heatmap", str(heatmap), "--model", model, "--device", "auto"]


def _use(stdout: str, heatmap: Path) -> float:
    """What the widget does with an answer: the probability (and the heat map read back)."""
    result = json.loads(stdout[stdout.find("{"):])
    sitk.ReadImage(str(heatmap))
    return result["probability"]


def fresh_process_clicks(image: Path, mask: Path, model: str, clicks: int, folder: Path) -> list[float]:
    times = []
    for _ in range(clicks):
        heatmap = folder / "heatmap_cold.nrrd"
        started = time.perf_counter()
        run = subprocess.run([sys.executable, "-m", "RadFusionScreenLib", *_request(image, mask, model, heatmap)],
                             capture_output=True, text=True, env=_environment(), cwd=tempfile.gettempdir(), check=True)
        _use(run.stdout, heatmap)
        times.append(time.perf_counter() - started)
    return times


def warm_engine_clicks(image: Path, mask: Path, model: str, clicks: int, folder: Path) -> tuple[list[float], float]:
    heatmap = folder / "heatmap_warm.nrrd"
    started = time.perf_counter()
    engine = subprocess.Popen([sys.executable, "-m", "RadFusionScreenLib", "serve", "--model", model],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              env=_environment(), cwd=tempfile.gettempdir())
    times, probability = [], None
    try:
        for click in range(clicks + 1):
            if click:
                started = time.perf_counter()
            engine.stdin.write(encode_request(click, _request(image, mask, model, heatmap)))
            engine.stdin.flush()
            response = decode_response(engine.stdout.readline())
            assert response and response["exit_code"] == 0, response
            probability = _use(response["stdout"], heatmap)
            times.append(time.perf_counter() - started)
    finally:
        engine.stdin.close()
        engine.wait(timeout=60)
    return times, probability


def in_process(image: Path, mask: Path, model: str, clicks: int) -> tuple[list[float], float]:
    from RadFusionScreenLib.serving.screening import Screener

    screener = Screener(model, None, os.cpu_count() or 1)
    screener.screen(image, mask)  # warm-up
    times, probability = [], None
    for _ in range(clicks):
        started = time.perf_counter()
        probability = screener.screen(image, mask).probability
        times.append(time.perf_counter() - started)
    return times, probability


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clicks", type=int, default=5)
    args = parser.parse_args()
    table = {}
    with tempfile.TemporaryDirectory() as folder:
        for name, (image, mask, model) in cases().items():
            cold = fresh_process_clicks(image, mask, model, max(2, args.clicks // 2), Path(folder))
            warm, warm_probability = warm_engine_clicks(image, mask, model, args.clicks, Path(folder))
            direct, direct_probability = in_process(image, mask, model, args.clicks)
            assert abs(warm_probability - direct_probability) < 1e-9, (warm_probability, direct_probability)
            later, reference = statistics.median(warm[1:]), statistics.median(direct)
            table[name] = {
                "before_fresh_process_per_click_s": statistics.median(cold),
                "warm_engine_first_click_s": warm[0],
                "warm_engine_later_clicks_median_s": later,
                "screener_screen_warm_median_s": reference,
                "later_click_over_screener": later / reference,
                "speed_up_later_click_vs_before": statistics.median(cold) / later,
                "clicks": args.clicks,
            }
            row = table[name]
            print(f"{name:12s} before {row['before_fresh_process_per_click_s']:6.2f} s | warm engine: first "
                  f"{row['warm_engine_first_click_s']:6.2f} s, later {later:6.3f} s | Screener.screen {reference:6.3f} s"
                  f" | later/Screener {row['later_click_over_screener']:.3f} | x{row['speed_up_later_click_vs_before']:.1f}")
    out = REPO / "benchmarks" / "results" / "warm_engine.json"
    out.write_text(json.dumps({"cpu_count": os.cpu_count(), "gpu": "not measured (no CUDA on this machine)",
                               "cases": table}, indent=2) + "\n")
    print(f"-> {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
