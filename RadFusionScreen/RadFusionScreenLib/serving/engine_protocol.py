"""The warm engine's wire protocol (JSON lines), shared by the server (:mod:`..app.engine_server`)
and its client in Slicer (:mod:`..slicer_glue.engine_process`).

- request (stdin): ``{"id": 1, "arguments": ["screen", IMAGE, MASK, "--json", ...]}``: exactly
  the command line of ``radfusion screen`` for one case;
- response (stdout): ``{"id": 1, "exit_code": 0, "stdout": "...", "stderr": "...",
  "seconds": 0.31}``: what that command would have printed and returned, so a client handles
  both the same way. Nothing else is written to stdout (library output goes to stderr);
- ``{"command": "stop"}`` or the end of stdin ends the server.
"""

from __future__ import annotations

import json
from typing import Any

STOP = {"command": "stop"}


def encode_request(request_id: int, arguments: list[str]) -> bytes:
    return (json.dumps({"id": request_id, "arguments": [str(a) for a in arguments]}) + "\n").encode()


def decode_response(line: str | bytes) -> dict[str, Any] | None:
    """A response line as a dict; None for a line that is not a response."""
    try:
        response = json.loads(line)
    except ValueError:
        return None
    return response if isinstance(response, dict) and "id" in response and "exit_code" in response else None

