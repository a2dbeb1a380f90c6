"""Orthogonal views of a 3D ROI: axial, coronal and sagittal planes through the ROI centroid,
sampled on isotropic pixels (the classic multi-view input for small lung nodules).

Why: a CT nodule is often a few millimetres across and spans a few thick slices (LIDC median
ROI ~540 voxels over ~6 slices of 2.5 mm). The 2.5D input (:mod:`.preprocessing`) shows the
network only axial slices; the coronal and sagittal planes add the nodule's extent and shape
along z, which the axial slices cannot show, at the cost of interpolating between slices.

Steps (the options are :class:`~.preprocessing.RoiPreprocessing` fields):

1. Centre: the ROI centroid (mean physical position of the ROI voxels).
2. Box: one square side for the three views, in mm: the ROI's largest extent along the
   patient axes (its bounding box in LPS, voxel footprints included) enlarged by
   ``margin_fraction`` on each side plus ``margin_pixels`` isotropic pixels, rounded to an
   odd number of pixels so that the centre pixel of every view samples the centroid.
3. Planes, in patient (LPS) coordinates, so the stored orientation of the file does not
   matter; each plane is shown in radiological display order:

   ========  ===========================  ============================
   view      columns (left → right)       rows (top → bottom)
   ========  ===========================  ============================
   axial     +x (patient right → left)    +y (anterior → posterior)
   coronal   +x (patient right → left)    -z (superior → inferior)
   sagittal  +y (anterior → posterior)    -z (superior → inferior)
   ========  ===========================  ============================

4. Sampling: each plane is sampled with linear interpolation on a square grid of
   ``iso_spacing_mm`` pixels (None: the image's finest spacing), so all views have square,
   equal-sized pixels whatever the slice thickness; points outside the image are padding
   (0 after intensity scaling, as in the 2.5D path).
5. Then as the 2.5D path: intensity to [0, 1], bilinear resize to ``input_size``, grey to
   3 channels, ImageNet normalisation; the features are the mean over the three views
   (one vector of the backbone's width, like the mean over 2.5D slices).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from RadFusionScreenLib.core.errors import InputError, MaskError

VIEW_NAMES = ("axial", "coronal", "sagittal")
# (column direction, row direction) of each view in LPS patient space.
VIEW_AXES = {
    "axial": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    "coronal": ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0)),
    "sagittal": ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0)),
}


@dataclass(frozen=True)
class ViewCrop:
    """Where the three view images came from, so a map over them can be put back (Grad-CAM).

    ``centre``: the ROI centroid (x, y, z) in mm; ``pixels``: the side of each view in
    isotropic pixels of ``spacing`` mm; ``source``: the caller's image grid (size, spacing,
    origin, direction). ``slices`` numbers the views (0 axial, 1 coronal, 2 sagittal), one
    per row of the network batch.
    """

    centre: tuple[float, float, float]
    pixels: int
    spacing: float
    source: Any  # preprocessing._Grid of the caller's image
    views: tuple[str, ...] = VIEW_NAMES

    @property
    def slices(self) -> tuple[int, ...]:
        return tuple(range(len(self.views)))

    def plane_geometry(self, view: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Origin (the centre of pixel (0, 0)) and the 3×3 direction (columns: col, row, normal)."""
        col, row = (np.asarray(v) for v in VIEW_AXES[view])
        normal = np.cross(col, row)
        half = (self.pixels - 1) / 2 * self.spacing
        origin = np.asarray(self.centre) - half * col - half * row
        direction = np.column_stack([col, row, normal])
        return tuple(float(v) for v in origin), tuple(float(v) for v in direction.ravel())

    def centres(self) -> tuple[tuple[float, ...], ...]:
        """The physical point at the centre of each view (the ROI centroid, for every view)."""
        return tuple(tuple(self.centre) for _ in self.views)

    def to_volume(self, maps: np.ndarray | torch.Tensor, divide_by: float = 1.0) -> sitk.Image:
        """Per-view maps (3, h, w) → float32 image on the caller's grid (values / ``divide_by``).

        Each map covers its view's square (cell centres where a bilinear resize to the view's
        pixels puts them) and is laid on its plane as a slab one source voxel thick (the
        voxels the plane passes through), interpolated linearly onto the source grid; where
        views cross, the larger value is kept. Everything off the three planes is 0. Only the
        source region around the views is resampled, so a whole CT costs no more than a crop.
        """
        maps = torch.as_tensor(maps, dtype=torch.float32).detach().cpu().numpy()
        if maps.ndim != 3 or maps.shape[0] != len(self.views):
            raise InputError(f"expected maps of shape ({len(self.views)}, S, S), got {tuple(maps.shape)}")
        volume = np.zeros(self.source.size[::-1], dtype=np.float32)
        region = self._source_region()
        if region is None:
            return self.source.image_from_array(volume)
        start, size = region
        reference = sitk.Image(size, sitk.sitkFloat32)
        reference.SetSpacing(self.source.spacing)
        reference.SetDirection(self.source.direction)
        reference.SetOrigin(self._index_to_point(start))
        box = tuple(slice(s, s + n) for s, n in zip(start[::-1], size[::-1]))
        for view, plane in zip(self.views, maps):
            slab = sitk.Resample(self._slab(view, plane / np.float32(divide_by)), reference, sitk.Transform(),
                                 sitk.sitkLinear, 0.0, sitk.sitkFloat32)
            np.maximum(volume[box], sitk.GetArrayViewFromImage(slab), out=volume[box])
        return self.source.image_from_array(volume)

    def pasted_max(self, maps: np.ndarray | torch.Tensor) -> float:
        """The largest value :meth:`to_volume` would write."""
        volume = self.to_volume(maps)  # held: an array view does not keep its image alive
        return float(sitk.GetArrayViewFromImage(volume).max())

    def _slab(self, view: str, plane: np.ndarray) -> sitk.Image:
        """A (h, w) map as a one-voxel-thick image on the view's plane."""
        origin, direction = self.plane_geometry(view)
        axes = np.asarray(direction).reshape(3, 3)
        h, w = plane.shape
        cell = (self.pixels * self.spacing / w, self.pixels * self.spacing / h)  # mm per map cell (col, row)
        shift = (cell[0] - self.spacing) / 2 * axes[:, 0] + (cell[1] - self.spacing) / 2 * axes[:, 1]
        thickness = float(np.abs(axes[:, 2]) @ self._footprint())
        slab = sitk.GetImageFromArray(np.ascontiguousarray(plane, dtype=np.float32)[None])
        slab.SetSpacing((cell[0], cell[1], thickness))
        slab.SetOrigin(tuple(float(v) for v in np.asarray(origin) + shift))
        slab.SetDirection(direction)
        return slab

    def _footprint(self) -> np.ndarray:
        """A source voxel's size along the patient x, y, z axes (mm)."""
        return np.abs(np.asarray(self.source.direction).reshape(3, 3)) @ np.asarray(self.source.spacing)

    def _index_to_point(self, index: tuple[int, ...]) -> tuple[float, ...]:
        direction = np.asarray(self.source.direction).reshape(3, 3)
        point = np.asarray(self.source.origin) + direction @ (np.asarray(index) * np.asarray(self.source.spacing))
        return tuple(float(v) for v in point)

    def _source_region(self) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
        """Start index and size of the source voxels the views' cube can touch (None: outside)."""
        direction = np.asarray(self.source.direction).reshape(3, 3)
        half = self.pixels * self.spacing / 2 + self._footprint()  # the cube plus one voxel
        corners = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)]) * half
        index = ((np.asarray(self.centre) + corners - np.asarray(self.source.origin)) @ direction) / np.asarray(
            self.source.spacing)
        low = np.maximum(np.floor(index.min(axis=0)).astype(int), 0)
        high = np.minimum(np.ceil(index.max(axis=0)).astype(int) + 1, np.asarray(self.source.size))
        if np.any(high <= low):
            return None
        return tuple(int(v) for v in low), tuple(int(v) for v in high - low)


def roi_centre_and_extent(mask: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """ROI centroid (x, y, z) in mm and its bounding-box extent along the patient axes, in mm."""
    indices = np.argwhere(sitk.GetArrayViewFromImage(mask) != 0)[:, ::-1].astype(np.float64)  # (x, y, z)
    if indices.size == 0:
        raise MaskError("mask is empty (no non-zero voxel): no region for deep features")
    direction = np.asarray(mask.GetDirection()).reshape(3, 3)
    points = np.asarray(mask.GetOrigin()) + (indices * np.asarray(mask.GetSpacing())) @ direction.T
    footprint = np.abs(direction) @ np.asarray(mask.GetSpacing())
    extent = points.max(axis=0) - points.min(axis=0) + footprint
    return points.mean(axis=0), extent


def sample_orthogonal_views(image: sitk.Image, mask: sitk.Image, settings: Any, source: Any) -> tuple[np.ndarray, ViewCrop]:
    """Raw intensities of the three views, (3, n, n) float32 with NaN outside the image, and their crop.

    ``settings`` is a :class:`~.preprocessing.RoiPreprocessing`; ``source`` the image's grid.
    """
    centre, extent = roi_centre_and_extent(mask)
    spacing = float(settings.iso_spacing_mm or min(image.GetSpacing()))
    side_mm = float(extent.max()) * (1 + 2 * settings.margin_fraction) + 2 * settings.margin_pixels * spacing
    pixels = 2 * max(0, int(round((side_mm / spacing - 1) / 2))) + 1  # odd: the centre pixel is the centroid
    crop = ViewCrop(tuple(float(c) for c in centre), pixels, spacing, source)
    region = crop._source_region()  # the voxels the planes' interpolation can reach: a whole CT is not copied
    if region is not None:
        image = sitk.RegionOfInterest(image, region[1], region[0])
    floating = sitk.Cast(image, sitk.sitkFloat32)
    planes = []
    for view in crop.views:
        origin, direction = crop.plane_geometry(view)
        plane = sitk.Resample(floating, (pixels, pixels, 1), sitk.Transform(), sitk.sitkLinear, origin,
                              (spacing,) * 3, direction, float("nan"), sitk.sitkFloat32)
        planes.append(sitk.GetArrayFromImage(plane)[0])
    return np.stack(planes), crop
