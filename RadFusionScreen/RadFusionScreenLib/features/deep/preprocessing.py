"""The ROI of an image made into the batch a 2D ImageNet-style CNN consumes, and the crop's
geometry, so that a map over the network input can be put back on the image (Grad-CAM).

Preprocessing of 2D backbones (each parameter is recorded in ``settings()`` for the bundle):

1. Orientation: a volume whose slice normal is closest to the patient z axis is reordered
   to LPS (axis permutation/flips only, no interpolation), so an axial slice reaches the
   network in radiological display order however the file stored it. Other acquisition
   planes (sagittal, coronal) are used as stored. One-slice images are used as they are.
2. Slices (2.5D): the slice with the largest ROI cross-section (first one on ties) plus
   ``neighbours`` slices on each side, one slice apart or ``slice_step_mm`` apart (nearest
   slice); neighbours outside the volume or beyond the ROI's first/last slice are skipped.
   Each slice is a 2D image; the features are the mean over the slices. A one-slice image
   (e.g. a PNG) is simply that slice.
3. Crop: the in-plane bounding box of the ROI on the chosen slices, made square in mm
   around its centre, its side enlarged by ``margin_fraction`` on each side plus
   ``margin_pixels`` pixels (of the finest in-plane spacing). The box is cut on whole
   pixels (so shifting image and lesion together by whole pixels gives the same input);
   parts outside the image are padded (step 5).
4. Intensity to [0, 1], from the pixels of the crop that lie inside the image:
   ``window`` (CT default: soft tissue level 40 / width 400 HU; ``lung`` -600/1500,
   ``bone`` 400/1800, or any (level, width)), ``percentiles`` (MR and unknown modalities:
   1st..99th percentile of the crop), ``fixed`` (US default: 0..255, 8-bit images).
   Values are clipped to the range. A constant crop maps to 0.
5. Padding: pixels of the box outside the image get 0 (the bottom of the range: black).
6. Resize: the box (square in mm, possibly not in pixels) is resampled to
   ``input_size``×``input_size`` with bilinear interpolation (antialiased when
   downsampling). This single step also makes the pixels square for anisotropic in-plane
   spacing, instead of interpolating twice.
7. Channels: the grey image is replicated to 3 channels and normalised with the ImageNet
   mean and standard deviation.

``views`` chooses the input of a 3D image: ``"2.5d"`` (steps 1-3 above) or ``"orthogonal"``
(axial, coronal and sagittal planes through the ROI centroid on isotropic pixels of
``iso_spacing_mm``, :mod:`.views`; steps 4-7 as above). None picks by modality
(:data:`DEFAULT_VIEWS`). 2D pictures and one-slice volumes always take the 2.5D path (one
slice): they have no other plane.

Axes: SimpleITK (x, y, z) is numpy (z, y, x) from ``GetArrayFromImage``; a "slice" below is
one index of numpy axis 0, "rows" are y and "columns" are x.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, NamedTuple

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from RadFusionScreenLib.core.errors import InputError, MaskError
from RadFusionScreenLib.features.deep.views import ViewCrop, sample_orthogonal_views

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CT_WINDOWS = {"soft_tissue": (40.0, 400.0), "lung": (-600.0, 1500.0), "bone": (400.0, 1800.0)}
INTENSITY_METHODS = ("window", "percentiles", "fixed")
_DEFAULT_INTENSITY = {"CT": "window", "MR": "percentiles", "US": "fixed"}
VIEW_METHODS = ("2.5d", "orthogonal")
# The input of 3D images by modality when ``views`` is None (resolved when the settings are made,
# so a bundle records the concrete choice); other modalities: 2.5D.
DEFAULT_VIEWS: dict[str, str] = {}


@dataclass(frozen=True)
class RoiPreprocessing:
    """How the ROI becomes network input (see the module docstring); JSON-able options."""

    modality: str | None = None  # CT / MR / US / other: picks the default intensity method
    intensity: str | None = None  # window | percentiles | fixed; None → by modality
    window: str | Sequence[float] = "soft_tissue"  # CT window name or (level, width) in HU
    percentiles: Sequence[float] = (1.0, 99.0)
    fixed_range: Sequence[float] = (0.0, 255.0)
    margin_fraction: float = 0.2  # context added on each side, as a fraction of the ROI's side
    margin_pixels: int = 4  # plus this many pixels on each side
    neighbours: int = 1  # slices on each side of the largest cross-section (3D only)
    slice_step_mm: float | None = None  # neighbour distance in mm; None → adjacent slices
    input_size: int = 224
    views: str | None = None  # 3D input: 2.5d | orthogonal; None → by modality (DEFAULT_VIEWS)
    iso_spacing_mm: float | None = None  # pixel size of the orthogonal views; None → finest spacing

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen dataclass: normalise the values once
        set_(self, "modality", self.modality.upper() if self.modality else None)
        views = self.views.strip().lower() if isinstance(self.views, str) else self.views
        set_(self, "views", views if views is not None else DEFAULT_VIEWS.get(self.modality or "", "2.5d"))
        set_(self, "window", self.window if isinstance(self.window, str) else tuple(map(float, self.window)))
        set_(self, "percentiles", tuple(map(float, self.percentiles)))
        set_(self, "fixed_range", tuple(map(float, self.fixed_range)))
        self._validate()

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> RoiPreprocessing:
        """From keyword options; unknown names raise :class:`InputError` listing the known ones."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise InputError(f"unknown deep-feature option(s) {unknown}; known: {sorted(known)}")
        return cls(**options)

    def _validate(self) -> None:
        if self.intensity is not None and self.intensity not in INTENSITY_METHODS:
            raise InputError(f"intensity={self.intensity!r}: use one of {INTENSITY_METHODS}")
        if isinstance(self.window, str) and self.window not in CT_WINDOWS:
            raise InputError(f"window={self.window!r}: use one of {sorted(CT_WINDOWS)} or (level, width)")
        if not isinstance(self.window, str) and (len(self.window) != 2 or self.window[1] <= 0):
            raise InputError(f"window={self.window!r}: give (level, width) with width > 0")
        low, high = self.percentiles if len(self.percentiles) == 2 else (1.0, 0.0)
        if not 0 <= low < high <= 100:
            raise InputError(f"percentiles={self.percentiles!r}: give (low, high) with 0 <= low < high <= 100")
        if len(self.fixed_range) != 2 or self.fixed_range[1] <= self.fixed_range[0]:
            raise InputError(f"fixed_range={self.fixed_range!r}: give (low, high) with low < high")
        if self.margin_fraction < 0 or self.margin_pixels < 0 or self.neighbours < 0:
            raise InputError("margin_fraction, margin_pixels and neighbours must be >= 0")
        if self.slice_step_mm is not None and self.slice_step_mm <= 0:
            raise InputError(f"slice_step_mm={self.slice_step_mm!r} must be > 0 (or None for adjacent slices)")
        if self.input_size < 32:
            raise InputError(f"input_size={self.input_size!r} is too small for a CNN (>= 32)")
        if self.views not in VIEW_METHODS:
            raise InputError(f"views={self.views!r}: use one of {VIEW_METHODS} (or None for the modality's default)")
        if self.iso_spacing_mm is not None and not self.iso_spacing_mm > 0:
            raise InputError(f"iso_spacing_mm={self.iso_spacing_mm!r} must be > 0 (or None for the finest spacing)")

    def options(self) -> dict[str, Any]:
        """The constructor options as plain JSON values (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def intensity_range(self) -> dict[str, Any]:
        """The resolved intensity mapping, e.g. {"method": "window", "level": 40, "width": 400}."""
        method = self.intensity or _DEFAULT_INTENSITY.get(self.modality or "", "percentiles")
        if method == "window":
            level, width = CT_WINDOWS[self.window] if isinstance(self.window, str) else self.window
            return {"method": method, "level": level, "width": width}
        if method == "percentiles":
            return {"method": method, "low": self.percentiles[0], "high": self.percentiles[1]}
        return {"method": method, "low": self.fixed_range[0], "high": self.fixed_range[1]}


class _Grid(NamedTuple):
    """Geometry of an image without its pixels."""

    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]

    @classmethod
    def of(cls, image: sitk.Image) -> _Grid:
        return cls(image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection())

    def image_from_array(self, array: np.ndarray) -> sitk.Image:
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image


@dataclass(frozen=True)
class RoiCrop:
    """Where the network input came from, so a map over it can be put back (Grad-CAM).

    ``slices`` are indices of numpy axis 0 of the working grid (the oriented volume) in
    batch order; ``start`` (row, col) may be negative and ``shape`` may exceed the image:
    that part was padding.
    """

    slices: tuple[int, ...]
    start: tuple[int, int]
    shape: tuple[int, int]
    working: _Grid
    source: _Grid  # the caller's image (2D or 3D)

    def to_volume(self, maps: np.ndarray | torch.Tensor, divide_by: float = 1.0) -> sitk.Image:
        """Per-slice maps (N, h, w) → float32 image on the caller's grid (values / ``divide_by``).

        Each map is resized to the crop box (bilinear, any map size) and written into its
        slice; everything outside the box and the chosen slices is 0. Dividing happens on the
        small boxes, so a normalised map of a large volume costs one volume-sized array.
        """
        boxes = self._pasted_boxes(maps) / np.float32(divide_by)  # x / max(x) is exactly 1 at the max
        size = self.working.size
        volume = np.zeros(size[::-1] if len(size) == 3 else (1, *size[::-1]), dtype=np.float32)
        inside_r, inside_c = self._inside(volume.shape[1:])
        for k, box in zip(self.slices, boxes):
            volume[k, inside_r, inside_c] = box
        if len(self.source.size) == 2:
            return self.source.image_from_array(volume[0])
        return self._on_source_grid(volume)

    def pasted_max(self, maps: np.ndarray | torch.Tensor) -> float:
        """The largest value :meth:`to_volume` would write (its maximum over the case)."""
        boxes = self._pasted_boxes(maps)
        return float(boxes.max()) if boxes.size else 0.0

    def _pasted_boxes(self, maps: np.ndarray | torch.Tensor) -> np.ndarray:
        """The resized maps, cut to the part of the crop box inside the image."""
        maps = torch.as_tensor(maps, dtype=torch.float32).detach().cpu()
        if maps.ndim != 3 or maps.shape[0] != len(self.slices):
            raise InputError(f"expected maps of shape ({len(self.slices)}, S, S), got {tuple(maps.shape)}")
        boxes = _resize(maps[:, None], self.shape)[:, 0].numpy()
        size = self.working.size
        rows, cols = size[1], size[0]
        inside_r, inside_c = self._inside((rows, cols))
        (r0, c0) = self.start
        return boxes[:, inside_r.start - r0:inside_r.stop - r0, inside_c.start - c0:inside_c.stop - c0]

    def _inside(self, plane: tuple[int, int]) -> tuple[slice, slice]:
        (r0, c0), (h, w) = self.start, self.shape
        return slice(max(r0, 0), min(r0 + h, plane[0])), slice(max(c0, 0), min(c0 + w, plane[1]))

    def _on_source_grid(self, volume: np.ndarray) -> sitk.Image:
        image = self.working.image_from_array(volume)
        if self.working != self.source:  # undo the reorientation (a pure permutation/flip)
            reference = self.source.image_from_array(np.zeros(self.source.size[::-1], dtype=np.float32))
            image = sitk.Resample(image, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0.0)
        return image


@dataclass(frozen=True)
class PreparedInput:
    """The network batch (N, 3, S, S) on the extractor's device, and where it came from."""

    tensor: torch.Tensor
    crop: RoiCrop | ViewCrop


def prepare_roi_slices(
    image: sitk.Image, mask: sitk.Image, settings: RoiPreprocessing
) -> tuple[np.ndarray, RoiCrop | ViewCrop]:
    """Crops in [0, 1], shape (N, S, S) float32, and their crop geometry (steps 1-6 of the module doc).

    N is the number of 2.5D slices, or 3 (axial, coronal, sagittal) for orthogonal views of
    a volume (:class:`~.views.ViewCrop`).
    """
    if settings.views == "orthogonal" and image.GetDimension() == 3 and image.GetSize()[2] > 1:
        _check_inputs(image, mask)
        crops, crop = sample_orthogonal_views(image, mask, settings, _Grid.of(image))
    else:
        pixels, inside, spacing, working, source = _volume_arrays(image, mask)
        slices = select_slices(inside, spacing[2], settings.neighbours, settings.slice_step_mm)
        start, shape = square_crop_box(inside[list(slices)].any(axis=0), spacing[:2], settings)
        crops = _cut_box(pixels, slices, start, shape)
        crop = RoiCrop(slices, start, shape, working, source)
    scaled = scale_intensity(crops, settings.intensity_range())
    resized = _resize(torch.from_numpy(scaled)[:, None], (settings.input_size,) * 2)[:, 0]
    return resized.numpy(), crop


def to_network_input(crops: np.ndarray) -> torch.Tensor:
    """(N, S, S) grey values in [0, 1] → (N, 3, S, S) ImageNet-normalised float32."""
    grey = torch.as_tensor(crops, dtype=torch.float32)[:, None].expand(-1, 3, -1, -1)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1)
    return ((grey - mean) / std).contiguous()


def _volume_arrays(
    image: sitk.Image, mask: sitk.Image
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float], _Grid, _Grid]:
    """Image and mask as (Z, Y, X) arrays of the working grid, its spacing (x, y, z) and both grids."""
    _check_inputs(image, mask)
    source = _Grid.of(image)
    if image.GetDimension() == 2:
        spacing = (*image.GetSpacing(), 1.0)
        pixels = sitk.GetArrayViewFromImage(image)[None]
        inside = sitk.GetArrayViewFromImage(mask)[None] != 0
        return pixels, inside, spacing, source, source
    oriented, oriented_mask = _axial_to_lps(image), _axial_to_lps(mask)
    inside = sitk.GetArrayViewFromImage(oriented_mask) != 0
    # A view does not keep its image alive: a reoriented image is freed when this returns, and
    # its view would then read reused memory (other CNN inputs on every run). Copy that one.
    pixels = sitk.GetArrayViewFromImage(image) if oriented is image else sitk.GetArrayFromImage(oriented)
    return pixels, inside, oriented.GetSpacing(), _Grid.of(oriented), source


def _check_inputs(image: sitk.Image, mask: sitk.Image) -> None:
    """A scalar 2D/3D image and a mask on its grid, else :class:`InputError`."""
    from RadFusionScreenLib.inputs.images import check_geometry

    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError("deep features need a scalar (grey) image; convert colour images to luminance first")
    if image.GetDimension() not in (2, 3):
        raise InputError(f"deep features need a 2D or 3D image, got {image.GetDimension()}D")
    check_geometry(image, mask)


def _axial_to_lps(image: sitk.Image) -> sitk.Image:
    """Reorder an axial-ish volume to LPS (permutation/flips only); other planes as stored."""
    normal = np.abs(np.asarray(image.GetDirection()).reshape(3, 3)[:, 2])
    if image.GetSize()[2] == 1 or normal.argmax() != 2:
        return image
    orientation = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection())
    return image if orientation == "LPS" else sitk.DICOMOrient(image, "LPS")


def select_slices(inside: np.ndarray, slice_spacing: float, neighbours: int, step_mm: float | None) -> tuple[int, ...]:
    """Slice of largest ROI cross-section and its neighbours within the ROI's slice range."""
    areas = inside.reshape(inside.shape[0], -1).sum(axis=1)
    occupied = np.flatnonzero(areas)
    if occupied.size == 0:
        raise MaskError("mask is empty (no non-zero voxel): no region for deep features")
    centre = int(areas.argmax())
    offsets = [0]
    for j in range(1, neighbours + 1):
        step = j if step_mm is None else max(j, round(j * step_mm / slice_spacing))
        offsets += [-step, step]
    chosen = sorted({centre + o for o in offsets if occupied[0] <= centre + o <= occupied[-1]})
    return tuple(chosen)


def square_crop_box(
    inside: np.ndarray, spacing_xy: Sequence[float], settings: RoiPreprocessing
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Start (row, col) and shape (rows, cols) of the square-in-mm context box around a 2D ROI."""
    sx, sy = float(spacing_xy[0]), float(spacing_xy[1])
    rows, cols = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
    extent_mm = max((rows[-1] - rows[0] + 1) * sy, (cols[-1] - cols[0] + 1) * sx)
    side_mm = extent_mm * (1 + 2 * settings.margin_fraction) + 2 * settings.margin_pixels * min(sx, sy)
    shape = (max(1, round(side_mm / sy)), max(1, round(side_mm / sx)))
    centre = ((rows[0] + rows[-1]) / 2, (cols[0] + cols[-1]) / 2)
    # floor(x + 0.5), not round(): banker's rounding would break whole-pixel shift invariance
    start = tuple(math.floor(c - (n - 1) / 2 + 0.5) for c, n in zip(centre, shape))
    return (start[0], start[1]), shape


def _cut_box(pixels: np.ndarray, slices: Sequence[int], start: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
    """The box on each slice as float32; pixels outside the image are NaN (filled after scaling)."""
    out = np.full((len(slices), *shape), np.nan, dtype=np.float32)
    rows, cols = pixels.shape[1:]
    (r0, c0), (h, w) = start, shape
    r_lo, r_hi, c_lo, c_hi = max(r0, 0), min(r0 + h, rows), max(c0, 0), min(c0 + w, cols)
    if r_lo < r_hi and c_lo < c_hi:
        for i, k in enumerate(slices):
            out[i, r_lo - r0 : r_hi - r0, c_lo - c0 : c_hi - c0] = pixels[k, r_lo:r_hi, c_lo:c_hi]
    return out


def scale_intensity(crops: np.ndarray, mapping: Mapping[str, Any]) -> np.ndarray:
    """Map intensities to [0, 1] (clipped) by window / crop percentiles / fixed range; NaN → 0."""
    real = crops[~np.isnan(crops)]
    if mapping["method"] == "window":
        low = mapping["level"] - mapping["width"] / 2
        high = mapping["level"] + mapping["width"] / 2
    elif mapping["method"] == "percentiles":
        low, high = np.percentile(real, [mapping["low"], mapping["high"]]) if real.size else (0.0, 0.0)
    else:
        low, high = mapping["low"], mapping["high"]
    if not high > low:  # a constant crop carries no contrast to show
        return np.zeros_like(crops)
    scaled = np.clip((crops - np.float32(low)) / np.float32(high - low), 0.0, 1.0)
    return np.nan_to_num(scaled, nan=0.0).astype(np.float32)


def _resize(batch: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize of (N, C, H, W) to ``size``, antialiased when either axis shrinks."""
    size = (int(size[0]), int(size[1]))
    if tuple(batch.shape[-2:]) == size:
        return batch.clone()
    shrink = batch.shape[-2] > size[0] or batch.shape[-1] > size[1]
    return F.interpolate(batch, size=size, mode="bilinear", align_corners=False, antialias=shrink)
