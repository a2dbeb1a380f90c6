"""Handcrafted radiomic features: pyradiomics driven by a params YAML, cropped to the ROI first.

:mod:`.extractor` holds :class:`RadiomicExtractor` (checks, normalisation / resampling /
cropping around the ROI, then pyradiomics; its module doc says how the cropped features equal
an uncropped run's); :mod:`.params` the shipped params of each modality, loading, the canonical
JSON behind the params hash and the split into one part per filtered image; :mod:`.roi_crop`
the margin each filter needs around the ROI; :mod:`.thin_volumes` the thin-volume
treatments (B-spline mirror extension, LoG on axes of < 4 voxels, LoG sigmas too wide for the
grid); :mod:`.input_checks` the input checks (ROI on both grids, NaN voxels, grey-level guard) and
pyradiomics' errors in the engine's types; :mod:`.parallel` the worker
processes and threads; :mod:`.quiet_logs` pyradiomics' logging silenced during our calls only.
:mod:`.scoped_classes` holds pyradiomics' feature classes at a lower fixed cost (same values, bit
for bit) and :mod:`.native_calls` its C functions called without the GIL.
"""

from RadFusionScreenLib.features.radiomic.extractor import RadiomicExtractor
from RadFusionScreenLib.features.radiomic.input_checks import max_gray_levels, max_roi_voxels
from RadFusionScreenLib.features.radiomic.params import MODALITY_PARAMS, PARAMS_DIR, default_params_path, split_params
from RadFusionScreenLib.features.radiomic.quiet_logs import quiet_pyradiomics
from RadFusionScreenLib.features.radiomic.roi_crop import LOG_MARGIN_SIGMAS, crop_margin
from RadFusionScreenLib.features.radiomic.thin_volumes import log_image_name, log_images, skipped_log_images

__all__ = [
    "LOG_MARGIN_SIGMAS",
    "MODALITY_PARAMS",
    "PARAMS_DIR",
    "RadiomicExtractor",
    "crop_margin",
    "default_params_path",
    "log_image_name",
    "log_images",
    "max_gray_levels",
    "max_roi_voxels",
    "quiet_pyradiomics",
    "skipped_log_images",
    "split_params",
]
