"""Determinism on CPU: the same case screened twice, and in another process, gives
bit-identical features and probability. (Worker-count independence of cohort extraction:
test_cohort.py, 1 vs 2 local workers and a 2-worker Dask cluster.)"""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO_ROOT, shared_path
from RadFusionScreenLib.serving.screening import Screener

SHIPPED = REPO_ROOT / "models" / "busi-ultrasound"


def _numbers(result) -> dict:
    data = result.to_dict()
    return {"probability": data["probability"], "rad_score": data["rad_score"], "deep_score": data["deep_score"],
            "features": data["features"], "nomogram": data["nomogram"]}


def test_screening_is_bit_identical_across_calls_and_processes():
    busi = shared_path("busi")
    image, mask = busi / "images" / "benign_10.png", busi / "masks" / "benign_10.png"
    screener = Screener(SHIPPED)
    first = _numbers(screener.screen(image, mask, heatmap=False))
    second = _numbers(screener.screen(image, mask, heatmap=False))
    assert first == second
    code = ("import json, sys; from RadFusionScreenLib.serving.screening import Screener; "
            f"r = Screener({str(SHIPPED)!r}).screen({str(image)!r}, {str(mask)!r}, heatmap=False).to_dict(); "
            "print(json.dumps({k: r[k] for k in ('probability', 'rad_score', 'deep_score', 'features', 'nomogram')}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    other_process = json.loads(done.stdout.strip().splitlines()[-1])
    # JSON keeps doubles exactly (shortest round-trip repr), so equality here is bit equality
    assert json.loads(json.dumps(first)) == other_process
