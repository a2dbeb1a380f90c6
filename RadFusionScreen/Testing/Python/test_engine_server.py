"""The warm engine's protocol (``radfusion serve``): the same answers as ``radfusion screen``,
models loaded once, a failing request answered without ending the server."""

from __future__ import annotations

import io
import json

import SimpleITK as sitk

from RadFusionScreenLib.app import cli
from RadFusionScreenLib.app.engine_server import ScreenerCache, serve
from RadFusionScreenLib.serving.engine_protocol import decode_response, encode_request
from RadFusionScreenLib.inputs.phantoms import synthetic_ultrasound


def _case(folder):
    image, mask = synthetic_ultrasound()
    paths = folder / "image.nrrd", folder / "mask.nrrd"
    sitk.WriteImage(image, str(paths[0]))
    sitk.WriteImage(mask, str(paths[1]))
    return [str(p) for p in paths]


def _serve(lines: list[bytes | str]) -> list[dict]:
    requests = io.StringIO("".join(line.decode() if isinstance(line, bytes) else line for line in lines))
    responses = io.StringIO()
    assert serve(requests, responses) == 0
    return [decode_response(line) for line in responses.getvalue().splitlines()]


def test_answers_as_the_screen_command_and_keeps_the_model_loaded(tmp_path, capsys, monkeypatch):
    image, mask = _case(tmp_path)
    screen = ["screen", image, mask, "--json", "--device", "cpu"]
    assert cli.main(screen) == 0
    expected = json.loads(capsys.readouterr().out)

    from RadFusionScreenLib.serving import screening

    loads = []

    class CountingScreener(screening.Screener):
        def __init__(self, *args, **kwargs):
            loads.append(args)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(screening, "Screener", CountingScreener)
    responses = _serve([encode_request(1, screen), "not json\n", encode_request(2, screen),
                        encode_request(3, ["screen", str(tmp_path / "missing.png"), mask, "--device", "cpu"]),
                        encode_request(4, ["train", "x.csv"]), json.dumps({"command": "stop"}) + "\n",
                        encode_request(5, screen)])
    assert [r["id"] for r in responses] == [1, 2, 3, 4], "stop ends the server; the bad line is skipped"
    for response in responses[:2]:
        assert response["exit_code"] == 0
        result = json.loads(response["stdout"])
        assert result["probability"] == expected["probability"]
        assert result["features"] == expected["features"]
    assert responses[2]["exit_code"] == cli.EXIT_INPUT_ERROR
    assert responses[2]["stderr"].strip().splitlines()[-1].startswith("radfusion screen: error: file or folder not found")
    assert responses[3]["exit_code"] == cli.EXIT_INPUT_ERROR and "screen command only" in responses[3]["stderr"]
    assert len(loads) == 1, "the bundle is loaded once for all requests"


def test_cache_keeps_the_most_recently_used_models():
    cache = ScreenerCache(size=1)
    first = cache.get(None, None)
    assert cache.get(None, None) is first
    other = cache.get(None, "cpu")  # another (model, device): the older one is dropped
    assert other is not first and len(cache._loaded) == 1
    assert cache.get(None, None) is not first
