"""The part of the image the features see: the same around a lesion in a crop or a whole scan.

Radiomic filters (LoG, wavelet) and the CNN's views read the voxels around the ROI, so a model
trained on small crops sees other values when a radiologist screens the whole scan: the crop
ended at the nodule's first or last slice, the scan has lung above and below it. A field of view
cuts every input, in training and at screening, to one rule relative to the ROI:

- slices (the image's third axis): the ROI's first to last slice, plus ``slice_margin`` on each side;
- in-plane: a window of at least ``in_plane_voxels`` voxels, and of the ROI's extent plus
  ``in_plane_margin`` on each side, centred on the ROI's bounding box;

each clipped to the image. The crop keeps the physical geometry (origin, spacing, direction), so
the ROI is the same voxels and the features' physical meaning is unchanged. The rule is a model
setting: it is part of the extraction settings (cache key, bundle manifest) and screening
applies the bundle's rule, so a model never sees more or less context than it was trained on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

import numpy as np
import SimpleITK as sitk

from RadFusionScreenLib.core.errors import InputError


@dataclass(frozen=True)
class FieldOfView:
    """Voxels kept around the ROI (module doc); the default is the LIDC nodule crops' shape."""

    slice_margin: int = 0
    in_plane_voxels: int = 44
    in_plane_margin: int = 5

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise InputError(f"field of view: {name} must be a whole number >= 0, got {value!r}")

    @classmethod
    def from_record(cls, record: Mapping[str, Any] | None) -> "FieldOfView | None":
        """The rule of a settings record (ExtractionConfig, bundle manifest); None when there is none."""
        if record is None:
            return None
        if not isinstance(record, Mapping) or set(record) - set(cls.__dataclass_fields__):
            raise InputError(f"field of view: expected a mapping with {', '.join(cls.__dataclass_fields__)}, "
                             f"got {record!r}")
        return cls(**record)

    @classmethod
    def parse(cls, text: str) -> "FieldOfView":
        """``SLICES[,IN_PLANE[,MARGIN]]`` as typed on the command line, e.g. ``0`` or ``0,44,5``."""
        try:
            numbers = [int(part) for part in text.split(",")]
        except ValueError:
            numbers = []
        if not 1 <= len(numbers) <= 3:
            raise InputError(f"--field-of-view takes SLICES[,IN_PLANE[,MARGIN]] (whole numbers), got {text!r}")
        return cls(*numbers)

    def record(self) -> dict[str, int]:
        return {name: int(value) for name, value in asdict(self).items()}


def field_of_view_region(mask: sitk.Image, rule: FieldOfView) -> tuple[list[int], list[int]]:
    """Start index and size (x, y[, z]) of the region ``rule`` keeps around the mask's ROI."""
    occupied = np.argwhere(sitk.GetArrayViewFromImage(mask) > 0)  # (z,) y, x rows
    if occupied.size == 0:
        raise InputError("the mask is empty: there is no ROI to place the field of view around")
    low, high = occupied.min(axis=0)[::-1], occupied.max(axis=0)[::-1]  # x, y(, z)
    size = np.array(mask.GetSize())
    start, stop = np.zeros(size.size, dtype=int), size.copy()
    for axis in (0, 1):
        extent = int(high[axis] - low[axis] + 1)
        width = max(rule.in_plane_voxels, extent + 2 * rule.in_plane_margin)
        first = int(low[axis]) - (width - extent) // 2
        start[axis], stop[axis] = max(first, 0), min(first + width, size[axis])
    if size.size == 3:
        start[2] = max(int(low[2]) - rule.slice_margin, 0)
        stop[2] = min(int(high[2]) + rule.slice_margin + 1, size[2])
    return start.tolist(), (stop - start).tolist()


def crop_to_field_of_view(image: sitk.Image, mask: sitk.Image, rule: FieldOfView) -> tuple[sitk.Image, sitk.Image]:
    """``image`` and ``mask`` (same grid) cut to ``rule``'s region; physical geometry kept."""
    start, size = field_of_view_region(mask, rule)
    return sitk.RegionOfInterest(image, size, start), sitk.RegionOfInterest(mask, size, start)


def paste_into(reference: sitk.Image, part: sitk.Image) -> sitk.Image:
    """``part`` (a region of ``reference``'s grid) on ``reference``'s whole grid, zero elsewhere."""
    whole = sitk.Image(reference.GetSize(), part.GetPixelID(), part.GetNumberOfComponentsPerPixel())
    whole.CopyInformation(reference)
    start = reference.TransformPhysicalPointToIndex(part.GetOrigin())
    return sitk.Paste(whole, part, part.GetSize(), [0] * part.GetDimension(), start)
