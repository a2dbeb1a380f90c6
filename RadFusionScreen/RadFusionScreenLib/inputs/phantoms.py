"""Synthetic images the project generates itself (demo, tests, benchmarks): never patient data.

- :func:`synthetic_ultrasound`: an 8-bit B-mode-like picture with a dark irregular lesion.
- :func:`synthetic_ct`: a CT-like volume in HU (air, body, a lesion whose heterogeneity and
  margin irregularity grow with ``malignancy``), on a chosen grid.
- :func:`write_ct_cohort`: a labelled cohort of such volumes with a manifest, for building
  a CT model bundle where no labelled CT cohort is at hand.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk


def synthetic_ultrasound(size: int = 360, seed: int = 7) -> tuple[sitk.Image, sitk.Image]:
    """8-bit B-mode-like picture: speckled tissue, a dark irregular lesion, posterior shadowing."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(float)
    tissue = 90 + 30 * np.sin(y / 23.0) + 20 * np.cos(x / 31.0)
    speckle = rng.rayleigh(1.0, (size, size))
    cy, cx = size * 0.45, size * 0.5
    angle = np.arctan2(y - cy, x - cx)
    radius = 55 * (1 + 0.18 * np.sin(5 * angle) + 0.08 * np.sin(11 * angle))
    lesion = np.hypot(y - cy, x - cx) < radius
    picture = tissue * speckle
    picture[lesion] = 35 * speckle[lesion]
    shadow = (y > cy) & (np.abs(x - cx) < 40)
    picture[shadow & ~lesion] *= 0.55
    pixels = np.clip(picture, 0, 255).astype(np.uint8)
    return sitk.GetImageFromArray(pixels), sitk.GetImageFromArray(lesion.astype(np.uint8))


def synthetic_ct(
    shape: tuple[int, int, int] = (32, 96, 96),
    spacing: tuple[float, float, float] = (0.8, 0.8, 2.0),
    radius_mm: float = 12.0,
    malignancy: float = 0.0,
    centre: tuple[float, float, float] | None = None,
    seed: int = 0,
) -> tuple[sitk.Image, sitk.Image]:
    """CT-like int16 volume (numpy order z, y, x; ``spacing`` in SimpleITK x, y, z order).

    The lesion (about 40 HU over soft tissue) gets more texture (noise SD 10 → 45 HU) and a
    lobulated margin as ``malignancy`` goes from 0 to 1. ``centre`` is in voxels (z, y, x).
    """
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape).astype(float)
    cz, cy, cx = centre if centre is not None else (shape[0] / 2, shape[1] / 2, shape[2] / 2)
    body = ((x - shape[2] / 2) / (0.45 * shape[2])) ** 2 + ((y - shape[1] / 2) / (0.4 * shape[1])) ** 2 < 1
    voxels = np.where(body, 35.0, -1000.0) + rng.normal(0, 12, shape)
    dz, dy, dx = (z - cz) * spacing[2], (y - cy) * spacing[1], (x - cx) * spacing[0]
    angle = np.arctan2(dy, dx)
    lobes = 1 + 0.25 * malignancy * np.sin(6 * angle + rng.uniform(0, 2 * np.pi))
    lesion = np.sqrt(dx**2 + dy**2 + dz**2) < radius_mm * lobes
    texture = rng.normal(0, 10 + 35 * malignancy, shape)
    voxels[lesion] = 75 + texture[lesion]
    image = sitk.GetImageFromArray(np.round(voxels).astype(np.int16))
    image.SetSpacing(spacing)
    image.SetOrigin((-0.5 * shape[2] * spacing[0], -0.5 * shape[1] * spacing[1], 100.0))
    mask = sitk.GetImageFromArray(lesion.astype(np.uint8))
    mask.CopyInformation(image)
    return image, mask


def write_ct_cohort(folder: str | Path, n_cases: int = 24, seed: int = 0,
                    shape: tuple[int, int, int] = (24, 64, 64)) -> Path:
    """``n_cases`` labelled synthetic CT cases (NIfTI) and ``manifest.csv``; returns the manifest.

    Labels alternate; the malignancy of a case is drawn around 0.3 (label 0) or 0.7 (label 1)
    with overlap, so that models separate the classes well but not perfectly.
    """
    import pandas as pd

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_cases):
        label = i % 2
        malignancy = float(np.clip(rng.normal(0.3 + 0.4 * label, 0.2), 0, 1))
        image, mask = synthetic_ct(shape=shape, radius_mm=float(rng.uniform(7, 11)), malignancy=malignancy,
                                   seed=seed * 1000 + i)
        image_path, mask_path = folder / f"ct{i:03d}.nii.gz", folder / f"ct{i:03d}_mask.nii.gz"
        sitk.WriteImage(image, str(image_path))
        sitk.WriteImage(mask, str(mask_path))
        rows.append({"case_id": f"ct{i:03d}", "image": image_path.name, "mask": mask_path.name, "label": label})
    manifest = folder / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest
