"""Which bundle screens a case when the user names none: the one trained on the case's modality
(CT -> the lung-nodule CT model, US -> the breast-ultrasound model; ``core.locations``)."""

from __future__ import annotations

import os
from pathlib import Path

import SimpleITK as sitk

from RadFusionScreenLib.core.locations import resolve_model_path


def image_modality(image: str | os.PathLike | sitk.Image, declared: str | None = None) -> str:
    """The case's modality as the engine reads it: the declared or DICOM tag, else one-slice
    pictures are US, volumes holding air (HU) CT, others MR (``case_features.resolve_modality``)."""
    from RadFusionScreenLib.features.case_features import resolve_modality

    if not isinstance(image, sitk.Image):
        from RadFusionScreenLib.inputs.images import read_image_with_metadata

        image, info = read_image_with_metadata(image)
        declared = declared or info.get("modality")
    return resolve_modality(declared, image)


def model_for_case(image: str | os.PathLike | sitk.Image, model: str | os.PathLike | None = None,
                   declared_modality: str | None = None) -> Path:
    """``model`` when given, else the default bundle for the image's modality."""
    if model:
        return resolve_model_path(model)
    return resolve_model_path(None, image_modality(image, declared_modality))
