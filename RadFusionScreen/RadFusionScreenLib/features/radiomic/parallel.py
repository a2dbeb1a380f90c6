"""One case's filtered images computed side by side: in worker processes (``processes`` > 1,
one part of :func:`.params.split_params` per task) or in threads of this process (a large 3D
grid, :func:`RadFusionScreenLib.features.radiomic.scoped_classes.execute_in_threads`)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import SimpleITK as sitk

from RadFusionScreenLib.features.radiomic.quiet_logs import quiet_pyradiomics

# Below this many voxels on the extraction grid (a 30 x 30 x 15 nodule crop has ~13k) the work is
# mostly pyradiomics' per-call Python, which holds the GIL: threads would only add their set-up.
_THREADED_MIN_VOXELS = 100_000


def _worth_threads(image: sitk.Image) -> bool:
    return image.GetSize()[2] > 1 and image.GetNumberOfPixels() >= _THREADED_MIN_VOXELS


def _part_cost(part: Mapping[str, Any]) -> int:
    """Rough relative cost: the wavelet bank computes 8 (3D) sub-band images."""
    return 8 if "Wavelet" in part["imageType"] else 1


_PART_EXTRACTORS: dict[str, Any] = {}


def _execute_part(params_json: str, image: sitk.Image, mask: sitk.Image) -> dict[str, Any]:
    """Worker side: one part's extractor (built once per process), then its features."""
    with quiet_pyradiomics():
        if params_json not in _PART_EXTRACTORS:
            from RadFusionScreenLib.features.radiomic.scoped_classes import ScopedFeatureExtractor

            _PART_EXTRACTORS[params_json] = ScopedFeatureExtractor(json.loads(params_json))
        return dict(_PART_EXTRACTORS[params_json].execute(image, mask))
