"""Check a case report (HTML) in headless Chromium: it renders, makes no external request,
every image decodes, and a whole-page screenshot (and a printed PDF) is written.

    .venv/bin/python scripts/check_case_report.py demo_output/report.html [--screenshot docs/figures/case-report.png]

Checks, each a failure with its reason:
- every ``<img>`` has a ``data:`` PNG that pillow decodes, and Chromium reports it loaded with a
  non-zero natural size (a copy of the page with a small checking script appended is rendered;
  the report itself has no scripts);
- Chromium's network log (``--log-net-log``) holds no request of the page other than its own
  ``file://`` URL and ``data:`` URLs (all host names are also mapped to nothing, so a request
  would fail rather than leak; Chromium's own background requests are not the page's);
- the page prints to a PDF (printable), and the screenshot is a PNG of the whole page.
Prints one JSON line with the numbers. Exit status 0 when everything holds. Needs ``chromium``
(Debian: ``apt-get install -y chromium``); exit status 2 when it is missing.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CHECK_SCRIPT = """<script>
window.addEventListener('load', () => {
  const images = Array.from(document.images).map(i => ({id: i.id || i.alt, complete: i.complete,
    width: i.naturalWidth, height: i.naturalHeight, data: i.src.startsWith('data:image/png;base64,')}));
  const out = document.createElement('pre');
  out.id = 'radfusion-check';
  out.textContent = 'RADFUSION-CHECK ' + JSON.stringify({images: images,
    height: Math.ceil(document.documentElement.scrollHeight), width: document.documentElement.scrollWidth,
    scripts: document.scripts.length - 1, links: document.querySelectorAll('link[href]').length});
  document.body.appendChild(out);
});
</script>"""
WIDTH = 1100


def chromium_binary() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _run(binary: str, arguments: list[str], timeout: int = 120) -> subprocess.CompletedProcess:
    common = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              "--host-resolver-rules=MAP * ~NOTFOUND", "--hide-scrollbars"]
    return subprocess.run([binary, *common, *arguments], capture_output=True, text=True, timeout=timeout)


def check(report: Path, screenshot: Path, pdf: Path | None = None) -> dict:
    from PIL import Image

    binary = chromium_binary()
    if binary is None:
        raise FileNotFoundError("chromium is not installed (Debian: apt-get install -y chromium)")
    text = report.read_text(encoding="utf-8")
    problems = []
    sources = re.findall(r'<img[^>]*\ssrc="([^"]*)"', text)
    decoded = []
    for source in sources:
        if not source.startswith("data:image/png;base64,"):
            problems.append(f"an image is not an embedded PNG: {source[:60]}")
            continue
        picture = Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1])))
        picture.load()
        decoded.append(picture.size)
    if re.search(r"<script|<link[^>]+href|@import|url\(\s*['\"]?(https?:)?//", text, re.IGNORECASE):
        problems.append("the page has a script, a linked resource or an external url()")
    with tempfile.TemporaryDirectory(prefix="radfusion-report-") as folder:
        folder = Path(folder)
        checked = folder / "checked.html"
        checked.write_text(text.replace("</body>", CHECK_SCRIPT + "</body>"), encoding="utf-8")
        net_log = folder / "net.json"
        dom = _run(binary, [f"--log-net-log={net_log}", "--virtual-time-budget=10000", "--dump-dom",
                            checked.as_uri()])
        found = re.search(r"RADFUSION-CHECK (\{.*\})", dom.stdout)
        if not found:
            raise RuntimeError(f"chromium did not render the page: {dom.stderr[-800:]}")
        rendered = json.loads(found.group(1).replace("&quot;", '"'))
        for image in rendered["images"]:
            if not (image["complete"] and image["width"] > 0 and image["height"] > 0 and image["data"]):
                problems.append(f"chromium could not decode image {image['id']!r}")
        requests = _requested_urls(net_log)
        external = sorted(u for u in requests if not (u.startswith("data:") or u == checked.as_uri()))
        problems += [f"external request: {u}" for u in external]
        height = max(int(rendered["height"]), 200)
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        shot = _run(binary, [f"--screenshot={screenshot.resolve()}", f"--window-size={WIDTH},{height}",
                             report.resolve().as_uri()])
        if shot.returncode != 0 or not screenshot.is_file():
            raise RuntimeError(f"chromium wrote no screenshot: {shot.stderr[-800:]}")
        with Image.open(screenshot) as picture:
            screenshot_size = picture.size
        pdf = pdf or folder / "report.pdf"
        printed = _run(binary, [f"--print-to-pdf={pdf.resolve()}", "--no-pdf-header-footer", report.resolve().as_uri()])
        pages = len(re.findall(rb"/Type\s*/Page[^s]", pdf.read_bytes())) if pdf.is_file() else 0
        if printed.returncode != 0 or pages == 0:
            problems.append("the page did not print to a PDF")
    return {"report": str(report), "images": len(sources), "decoded_by_pillow": len(decoded),
            "decoded_by_chromium": sum(1 for i in rendered["images"] if i["width"] > 0),
            "requests": len(requests), "external_requests": external, "page_height": height,
            "screenshot": str(screenshot), "screenshot_size": screenshot_size, "pdf_pages": pages,
            "problems": problems}


def _requested_urls(net_log: Path) -> set[str]:
    """URLs the page asked for, from a Chromium net log (``--log-net-log``): URL requests whose
    network isolation key is the page's (``file://``) or that have an initiator. Chromium's own
    background traffic (time service, dictionaries; initiator "not an origin", another isolation
    key) is not the page's and is left out."""
    text = net_log.read_text(encoding="utf-8", errors="replace").rstrip().rstrip(",")
    if not text.endswith("}"):
        text += "]}"  # a log cut short at exit
    log = json.loads(text)
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    urls = set()
    for event in log.get("events", []):
        params = event.get("params") or {}
        if event.get("type") != start_job or "url" not in params:
            continue
        if str(params.get("network_isolation_key", "")).startswith("file://") or \
                params.get("initiator") not in (None, "not an origin"):
            urls.add(params["url"])
    return urls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("--screenshot", type=Path, default=None, help="PNG to write (default: next to the report)")
    parser.add_argument("--pdf", type=Path, default=None, help="also keep the printed PDF here")
    args = parser.parse_args(argv)
    if chromium_binary() is None:
        print("chromium is not installed (Debian: apt-get install -y chromium): report not checked", file=sys.stderr)
        return 2
    result = check(args.report, args.screenshot or args.report.with_suffix(".png"), args.pdf)
    print(json.dumps(result))
    return 1 if result["problems"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
