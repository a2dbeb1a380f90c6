"""A warm engine: one process that keeps model bundles loaded and screens cases on request.

The Slicer module starts it once (``python -m RadFusionScreenLib serve``) instead of a fresh
``radfusion screen`` per Analyze click, which paid the imports and the bundle / CNN loading
every time. It speaks :mod:`..serving.engine_protocol` on stdin / stdout.

Loaded bundles are kept per (model, device), at most :data:`LOADED_MODELS` of them (the
least recently used is dropped). A failing request (bad input, a broken bundle) is answered
with its exit code and message; the server goes on.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import time
import traceback
from collections import OrderedDict
from typing import Any, TextIO

from RadFusionScreenLib.app.screen_command import EXIT_INPUT_ERROR, run_screen, screen_parser
from RadFusionScreenLib.core.errors import RadFusionError
from RadFusionScreenLib.serving.engine_protocol import STOP

LOADED_MODELS = 2


class ScreenerCache:
    """Screeners by (resolved model path, device); the least recently used is dropped."""

    def __init__(self, size: int = LOADED_MODELS, processes: int | None = None) -> None:
        self.size = size
        self.processes = processes or os.cpu_count() or 1
        self._loaded: OrderedDict[tuple[str, str | None], Any] = OrderedDict()

    def get(self, model: str | None, device: str | None):
        from RadFusionScreenLib.core.locations import resolve_model_path
        from RadFusionScreenLib.serving.screening import Screener

        key = (str(resolve_model_path(model)), device)
        if key in self._loaded:
            self._loaded.move_to_end(key)
        else:
            self._loaded[key] = Screener(key[0], device, self.processes)
            while len(self._loaded) > self.size:
                self._loaded.popitem(last=False)
        return self._loaded[key]


def handle(request: dict[str, Any], cache: ScreenerCache) -> dict[str, Any]:
    """Run one ``screen`` request as the CLI would; its response."""

    started = time.perf_counter()
    stdout, stderr = io.StringIO(), io.StringIO()
    live = _Tee(stderr, sys.stderr)  # messages also stream out as progress while the case runs
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(live):
        try:
            command_line = [str(a) for a in request.get("arguments") or []]
            if command_line[:1] != ["screen"]:
                raise RadFusionError(f"the engine serves the screen command only, not {' '.join(command_line[:1])!r}")
            arguments = screen_parser().parse_args(command_line)
            exit_code = run_screen(arguments, screener=cache.get)
        except RadFusionError as error:
            print(f"radfusion screen: error: {error}", file=sys.stderr)
            exit_code = EXIT_INPUT_ERROR
        except SystemExit as exit_:  # argparse refusing the arguments
            exit_code = exit_.code if isinstance(exit_.code, int) else 2
        except Exception:  # the server survives any one request
            traceback.print_exc()
            exit_code = 1
    return {"id": request.get("id"), "exit_code": exit_code, "stdout": stdout.getvalue(),
            "stderr": stderr.getvalue(), "seconds": round(time.perf_counter() - started, 4)}


class _Tee(io.TextIOBase):
    def __init__(self, *streams: TextIO) -> None:
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()


def serve(requests: TextIO, responses: TextIO, model: str | None = None, device: str | None = None) -> int:
    """Answer requests until stop / end of input. ``model``: a bundle to load before the first request."""
    cache = ScreenerCache()
    if model:
        try:
            cache.get(model, device)
        except Exception as error:  # reported again, with its exit code, by the request that needs it
            print(f"radfusion serve: could not preload {model}: {error}", file=sys.stderr)
    print("radfusion serve: ready", file=sys.stderr, flush=True)
    for line in requests:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
        except ValueError:
            print(f"radfusion serve: not a JSON request: {line[:200]!r}", file=sys.stderr, flush=True)
            continue
        if request.get("command") == STOP["command"]:
            break
        responses.write(json.dumps(handle(request, cache)) + "\n")
        responses.flush()
    return 0


def main(model: str | None = None, device: str | None = None) -> int:
    """The ``serve`` command: protocol on the real stdout; everything else printed goes to stderr."""
    protocol = sys.stdout
    sys.stdout = sys.stderr
    try:
        return serve(sys.stdin, protocol, model, device)
    finally:
        sys.stdout = protocol
