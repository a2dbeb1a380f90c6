"""Small synthetic CT-like cases written to disk for CLI and cohort tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk


def lesion_case(folder: Path, name: str, radius: float = 6.0, seed: int = 0, contrast: float = 60.0) -> tuple[Path, Path]:
    """A 40×40×16 CT-like volume (HU, air around a soft-tissue body) with a spherical lesion."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[0:16, 0:40, 0:40]
    body = (x - 20) ** 2 + (y - 20) ** 2 < 18**2
    lesion = (x - 21) ** 2 + (y - 19) ** 2 + ((z - 8) * 2.5) ** 2 < radius**2
    voxels = np.where(body, 30.0, -1000.0) + np.where(lesion, contrast, 0.0) + rng.normal(0, 15, body.shape)
    image = sitk.GetImageFromArray(voxels.astype(np.int16))
    image.SetSpacing((0.8, 0.8, 2.0))
    image.SetOrigin((-16.0, -16.0, 40.0))
    mask = sitk.GetImageFromArray(lesion.astype(np.uint8))
    mask.CopyInformation(image)
    folder.mkdir(parents=True, exist_ok=True)
    image_path, mask_path = folder / f"{name}_image.nii.gz", folder / f"{name}_mask.nii.gz"
    sitk.WriteImage(image, str(image_path))
    sitk.WriteImage(mask, str(mask_path))
    return image_path, mask_path
