"""Deep CNN features of the ROI crop, with a small registry of backbones.

:mod:`.preprocessing` turns the ROI into the network batch (orientation, 2.5D slices, square
crop, intensity range, resize, ImageNet normalisation; its module doc lists the steps) and
keeps the crop's geometry for Grad-CAM (:class:`RoiCrop`); :mod:`.extractor` holds the torch
device choice, the scoped torch settings of a forward pass, the pooled conv trunk and the
extractor base classes; :mod:`.backbones` loads network weights safely and holds the default
EfficientNet-Lite0 backbone and the registry behind :func:`get_deep_extractor`; :mod:`.views`
samples orthogonal views (axial, coronal, sagittal through the ROI centroid, isotropic pixels)
of a volume, the ``views="orthogonal"`` option; :mod:`.fine_tuning` fine-tunes the last blocks
on training cases (deep transfer learning) and saves the result as safetensors.
"""

from RadFusionScreenLib.features.deep.backbones import (DEFAULT_BACKBONE, EFFICIENTNET_LITE0_SHA256,
                                                        EfficientNetLite0Extractor, available_backbones,
                                                        get_deep_extractor, load_state_dict_safely,
                                                        register_backbone, sha256_file)
from RadFusionScreenLib.features.deep.extractor import (Cnn2dExtractor, DeepFeatureExtractor, PooledBackbone,
                                                        select_device)
from RadFusionScreenLib.features.deep.preprocessing import (CT_WINDOWS, IMAGENET_MEAN, IMAGENET_STD,
                                                            INTENSITY_METHODS, PreparedInput, RoiCrop,
                                                            RoiPreprocessing, prepare_roi_slices, scale_intensity,
                                                            select_slices, square_crop_box, to_network_input)
from RadFusionScreenLib.features.deep.views import VIEW_NAMES, ViewCrop

__all__ = [
    "CT_WINDOWS",
    "Cnn2dExtractor",
    "DEFAULT_BACKBONE",
    "DeepFeatureExtractor",
    "EFFICIENTNET_LITE0_SHA256",
    "EfficientNetLite0Extractor",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "INTENSITY_METHODS",
    "PooledBackbone",
    "PreparedInput",
    "RoiCrop",
    "RoiPreprocessing",
    "VIEW_NAMES",
    "ViewCrop",
    "available_backbones",
    "get_deep_extractor",
    "load_state_dict_safely",
    "prepare_roi_slices",
    "register_backbone",
    "scale_intensity",
    "select_device",
    "select_slices",
    "sha256_file",
    "square_crop_box",
    "to_network_input",
]
