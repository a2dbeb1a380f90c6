"""The case report in headless Chromium (scripts/check_case_report.py): it renders, the page
makes no external request, every image decodes, it prints, and a whole-page screenshot is written.
Skips when Chromium is not installed (Debian: apt-get install -y chromium; CI installs it)."""

from __future__ import annotations

import importlib.util
import json

import pytest

from conftest import REPO_ROOT

spec = importlib.util.spec_from_file_location("check_case_report", REPO_ROOT / "scripts" / "check_case_report.py")
check_case_report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check_case_report)

pytestmark = pytest.mark.skipif(check_case_report.chromium_binary() is None,
                                reason="chromium is not installed (Debian: apt-get install -y chromium)")


def test_demo_report_renders_in_chromium_with_no_external_request(tmp_path):
    from RadFusionScreenLib.app import demo

    demo.run_demo(tmp_path / "demo", model=str(REPO_ROOT / "models" / "busi-ultrasound"))
    report = tmp_path / "demo" / "report.html"
    result = check_case_report.check(report, tmp_path / "report.png", tmp_path / "report.pdf")
    assert result["problems"] == []
    assert result["images"] == result["decoded_by_pillow"] == result["decoded_by_chromium"] == 4
    assert result["external_requests"] == [] and result["requests"] == 0
    assert result["pdf_pages"] >= 1
    width, height = result["screenshot_size"]
    assert width == check_case_report.WIDTH and height == result["page_height"] > 1500
    answer = json.loads((tmp_path / "demo" / "result.json").read_text())["probability"]
    assert f"probability {answer:.3f}" in report.read_text()


def test_the_check_catches_an_external_image(tmp_path):
    page = tmp_path / "page.html"
    page.write_text('<!DOCTYPE html><html><body><p>x</p><img src="https://example.invalid/x.png"></body></html>')
    result = check_case_report.check(page, tmp_path / "page.png")
    assert "external request: https://example.invalid/x.png" in result["problems"]
    assert any("not an embedded PNG" in p for p in result["problems"])
