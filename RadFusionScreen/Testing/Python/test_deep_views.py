"""Orthogonal views of a 3D ROI (features.deep.views): planes through the ROI centroid, patient
orientation, isotropic pixels, determinism, and the option's round trip through the extractor's
settings (what a bundle records) and screening's rebuild of it.

The synthetic lesion is an ellipsoid with three different semi-axes on an anisotropic grid
(0.5 × 0.5 × 2.5 mm), with three markers outside the mask, one along each patient axis, each
with its own intensity: where each marker lands in each view tells the view's orientation.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from conftest import shared_path
from RadFusionScreenLib.core.errors import InputError, MaskError
from RadFusionScreenLib.features.deep import RoiPreprocessing, get_deep_extractor, prepare_roi_slices
from RadFusionScreenLib.features.deep.views import VIEW_NAMES, ViewCrop, sample_orthogonal_views

SPACING = (0.5, 0.5, 2.5)  # x, y, z mm
SHAPE = (21, 90, 100)  # z, y, x voxels
CENTRE = (22.0, 20.0, 25.0)  # x, y, z mm, on voxel centres (index 44, 40, 10)
SEMI_AXES = (6.0, 4.0, 9.0)  # x, y, z mm
MARKERS = {"x": (9.0, 300.0), "y": (7.0, 500.0), "z": (12.5, 700.0)}  # axis: (offset mm, HU)


def ellipsoid_case(direction_flip: bool = False) -> tuple[sitk.Image, sitk.Image]:
    """A -800 HU background, a 100 HU ellipsoid (the mask) and three markers outside it."""
    z, y, x = np.meshgrid(*(np.arange(n) * s for n, s in zip(SHAPE, SPACING[::-1])), indexing="ij")
    inside = sum(((v - c) / a) ** 2 for v, c, a in zip((x, y, z), CENTRE, SEMI_AXES)) <= 1
    pixels = np.where(inside, 100.0, -800.0).astype(np.float32)
    for axis, (offset, value) in MARKERS.items():
        k = "xyz".index(axis)
        target = list(CENTRE)
        target[k] += offset
        near = np.ones(SHAPE, dtype=bool)
        for v, c, half in zip((x, y, z), target, (1.0, 1.0, 1.3)):
            near &= np.abs(v - c) <= half
        pixels[near] = value
    image = sitk.GetImageFromArray(pixels)
    image.SetSpacing(SPACING)
    mask = sitk.GetImageFromArray(inside.astype(np.uint8))
    mask.CopyInformation(image)
    if direction_flip:  # the same patient stored with x and y reversed (RAS-like rows and columns)
        image, mask = (sitk.Flip(im, [True, True, False], flipAboutOrigin=False) for im in (image, mask))
    return image, mask


def views_of(image: sitk.Image, mask: sitk.Image, **options) -> tuple[np.ndarray, ViewCrop]:
    settings = RoiPreprocessing(modality="CT", views="orthogonal", **options)
    return sample_orthogonal_views(image, mask, settings, _grid(image))


def _grid(image: sitk.Image):
    from RadFusionScreenLib.features.deep.preprocessing import _Grid

    return _Grid.of(image)


def centre_of(plane: np.ndarray) -> np.ndarray:
    return np.argwhere(plane).mean(axis=0)  # (row, col)


def centre_component(inside: np.ndarray) -> np.ndarray:
    """The connected part of ``inside`` holding the view's centre pixel (the lesion, not a marker)."""
    labels, _ = ndimage.label(inside)
    middle = (inside.shape[0] // 2, inside.shape[1] // 2)
    assert labels[middle] > 0
    return labels == labels[middle]


def extent_mm(plane: np.ndarray, spacing: float) -> tuple[float, float]:
    rows, cols = np.flatnonzero(plane.any(axis=1)), np.flatnonzero(plane.any(axis=0))
    return (rows[-1] - rows[0] + 1) * spacing, (cols[-1] - cols[0] + 1) * spacing


def test_views_pass_through_the_roi_centre_with_isotropic_pixels():
    views, crop = views_of(*ellipsoid_case(), margin_pixels=0)
    assert np.allclose(crop.centre, CENTRE, atol=1e-6)  # the centroid of a symmetric ROI
    assert crop.spacing == 0.5 and views.shape == (3, crop.pixels, crop.pixels)  # square, finest spacing
    # one box for the three views: the largest extent (z: 2·9 mm rounded to slices, + a slice) · 1.4
    assert crop.pixels == round((2 * 3 + 1) * 2.5 * 1.4 / 0.5)
    middle = (crop.pixels - 1) / 2
    lesion = np.stack([centre_component(plane > -350) for plane in views])  # halfway between 100 and -800 HU
    expected = {"axial": (8.0, 12.0), "coronal": (18.0, 12.0), "sagittal": (18.0, 8.0)}  # (rows, cols) mm
    for name, plane in zip(VIEW_NAMES, lesion):
        assert np.allclose(centre_of(plane), middle, atol=0.5), name
        rows, cols = extent_mm(plane, crop.spacing)
        tolerance_rows = 2.5 if name != "axial" else 0.6  # along z the mask is made of 2.5 mm slices
        assert abs(rows - expected[name][0]) <= tolerance_rows and abs(cols - expected[name][1]) <= 0.6, name


def test_views_are_in_radiological_orientation():
    views, crop = views_of(*ellipsoid_case(), margin_fraction=0.5)  # a box wide enough for the markers
    middle = (crop.pixels - 1) / 2
    found = {name: {axis: centre_of(np.isclose(plane, value)) for axis, (_, value) in MARKERS.items()
                    if np.isclose(plane, value).any()} for name, plane in zip(VIEW_NAMES, views)}
    step = {axis: offset / crop.spacing for axis, (offset, _) in MARKERS.items()}
    # (row, col) offsets from the centre: +x (patient left) to the right, +y (posterior) down in the
    # axial view and to the right in the sagittal view, +z (superior) at the top
    expected = {"axial": {"x": (0, step["x"]), "y": (step["y"], 0)},
                "coronal": {"x": (0, step["x"]), "z": (-step["z"], 0)},
                "sagittal": {"y": (0, step["y"]), "z": (-step["z"], 0)}}
    for name in VIEW_NAMES:
        assert set(found[name]) == set(expected[name]), name  # each plane shows its two markers only
        for axis, offset in expected[name].items():
            assert np.allclose(found[name][axis] - middle, offset, atol=1.0), (name, axis)


def test_stored_orientation_does_not_change_the_views():
    straight, _ = views_of(*ellipsoid_case())
    flipped, _ = views_of(*ellipsoid_case(direction_flip=True))
    assert np.allclose(np.nan_to_num(straight, nan=-1), np.nan_to_num(flipped, nan=-1), atol=1e-3)


def test_views_of_a_whole_volume_equal_those_of_a_crop_of_it():
    image, mask = ellipsoid_case()
    region = ((30, 20, 3), (50, 45, 15))  # (x, y, z) start and size around the lesion
    cropped = [sitk.RegionOfInterest(im, region[1], region[0]) for im in (image, mask)]
    whole, _ = views_of(image, mask, margin_fraction=0.6)
    part, _ = views_of(*cropped, margin_fraction=0.6)
    inside = ~np.isnan(part)
    assert inside.mean() > 0.4 and np.array_equal(whole[inside], part[inside])  # no NaN where the crop has voxels


def test_view_maps_go_back_onto_the_planes():
    image, mask = ellipsoid_case()
    _, crop = views_of(image, mask)
    back = sitk.GetArrayFromImage(crop.to_volume(np.ones((3, 7, 7), dtype=np.float32)))
    assert back.shape == SHAPE and back.max() == pytest.approx(1.0)
    centre = (10, 40, 44)  # (z, y, x) index of the centroid
    assert back[centre] == pytest.approx(1.0)
    assert back[centre[0], :, centre[2]].max() == pytest.approx(1.0)  # the coronal/sagittal planes' lines
    assert back[3, 10, 10] == 0 and back[0, 0, 0] == 0  # off every plane, outside the views' box
    hot = np.zeros((3, 7, 7), dtype=np.float32)
    hot[0, 3, 6] = 1.0  # axial view, right edge: patient left (+x) of the centre, same slice
    where = np.unravel_index(np.argmax(sitk.GetArrayFromImage(crop.to_volume(hot))), SHAPE)
    assert where[0] == centre[0] and abs(where[1] - centre[1]) <= 2 and where[2] > centre[2] + 10
    assert crop.pasted_max(hot * 3) == pytest.approx(3.0, rel=1e-5)
    with pytest.raises(InputError, match="shape"):
        crop.to_volume(np.ones((2, 7, 7)))


def test_orthogonal_features_deterministic_and_recorded():
    image, mask = ellipsoid_case()
    views = get_deep_extractor(modality="CT", views="orthogonal", input_size=64)
    prepared = views.prepare(image, mask)
    assert isinstance(prepared.crop, ViewCrop) and tuple(prepared.tensor.shape) == (3, 3, 64, 64)
    first = views.extract(image, mask)
    assert first.shape == (1280,) and np.array_equal(first, views.extract(image, mask))
    slices = get_deep_extractor(modality="CT", views="2.5d", input_size=64)
    assert not np.allclose(first, slices.extract(image, mask), atol=1e-3)  # another input, other features
    settings = views.settings()
    assert settings["options"]["views"] == "orthogonal" and settings["options"]["iso_spacing_mm"] is None
    assert settings["views"].startswith("orthogonal") and settings["view_pooling"] == "mean"
    rebuilt = get_deep_extractor(settings["backbone"], **settings["options"])
    assert rebuilt.settings() == settings and np.array_equal(rebuilt.extract(image, mask), first)
    assert get_deep_extractor(modality="CT", views="2.5d").settings()["options"]["views"] == "2.5d"


def test_screening_rebuilds_the_recorded_views():
    from RadFusionScreenLib.serving.screening import _deep_extractor

    image, mask = ellipsoid_case()
    views = get_deep_extractor(modality="CT", views="orthogonal", input_size=64, iso_spacing_mm=0.8)
    served = _deep_extractor({"deep": views.settings()}, device="cpu")  # as a bundle's manifest records it
    assert served.preprocessing == views.preprocessing
    assert np.array_equal(served.extract(image, mask), views.extract(image, mask))


def test_extraction_config_selects_the_views_and_the_bundle_records_them():
    import pandas as pd

    from RadFusionScreenLib.app.train_command import extraction_record
    from RadFusionScreenLib.features.case_features import CaseFeatureExtractor, ExtractionConfig

    image, mask = ellipsoid_case()
    config = ExtractionConfig(modality="CT", deep_options={"views": "orthogonal", "input_size": 64})
    deep = CaseFeatureExtractor(config)._deep_extractor("CT")
    assert deep.preprocessing.views == "orthogonal" and deep.preprocessing.modality == "CT"
    reference = get_deep_extractor(modality="CT", views="orthogonal", input_size=64)
    assert np.array_equal(deep.extract(image, mask), reference.extract(image, mask))
    assert config.fingerprint() != ExtractionConfig(modality="CT").fingerprint()  # cached rows are not reused
    assert "deep_options" not in ExtractionConfig(modality="CT").fingerprint()  # default caches stay valid
    record = extraction_record(config, pd.DataFrame({"modality": ["CT"]}))
    assert record["deep"] == reference.settings()  # what the bundle manifest holds and screening rebuilds
    for bad in ("orthogonal", {"modality": "US"}, {"device": "cuda"}):
        with pytest.raises(InputError):
            ExtractionConfig(deep_options=bad)


def test_grad_cam_of_orthogonal_views_lies_on_the_planes():
    from RadFusionScreenLib.explanation.gradcam import grad_cam

    image, mask = ellipsoid_case()
    views = get_deep_extractor(modality="CT", views="orthogonal", input_size=64)
    head = views.extract(image, mask).astype(np.float64)  # w = f ≥ 0 on activations ≥ 0 (ReLU6): a map > 0
    result = grad_cam(views, image, mask, head, bias=0.5)
    assert result.score == pytest.approx(0.5 + head @ views.extract(image, mask).astype(np.float64), rel=1e-5)
    assert result.slices == (0, 1, 2) and result.slice_maps.shape[0] == 3
    assert np.allclose(result.slice_centres, [CENTRE] * 3, atol=1e-6)
    values = sitk.GetArrayFromImage(result.image)
    assert values.shape == SHAPE and values.max() == pytest.approx(1.0, abs=1e-6) and values.min() >= 0
    on_planes = np.zeros(SHAPE, dtype=bool)
    on_planes[10], on_planes[:, 40], on_planes[:, :, 44] = True, True, True  # z, y, x planes of the centroid
    near_planes = ndimage.binary_dilation(on_planes)  # linear interpolation reaches the next voxel
    assert values[on_planes].max() == pytest.approx(1.0, abs=1e-6) and np.all(values[~near_planes] == 0)


def test_2d_pictures_keep_the_2d_path_and_bad_options_are_refused():
    rng = np.random.default_rng(0)
    picture = sitk.GetImageFromArray(rng.integers(0, 255, (1, 80, 80)).astype(np.float32))
    inside = np.zeros((1, 80, 80), dtype=np.uint8)
    inside[0, 30:50, 25:45] = 1
    mask = sitk.GetImageFromArray(inside)
    mask.CopyInformation(picture)
    crops_views, crop = prepare_roi_slices(picture, mask, RoiPreprocessing(modality="US", views="orthogonal"))
    crops_slices, _ = prepare_roi_slices(picture, mask, RoiPreprocessing(modality="US", views="2.5d"))
    assert not isinstance(crop, ViewCrop) and np.array_equal(crops_views, crops_slices)
    assert RoiPreprocessing(modality="US").views == "2.5d"
    for bad in ({"views": "axial"}, {"iso_spacing_mm": 0}, {"iso_spacing_mm": -1.0}):
        with pytest.raises(InputError):
            RoiPreprocessing.from_options(bad)
    image, _ = ellipsoid_case()
    empty = sitk.Image(image.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(image)
    with pytest.raises(MaskError, match="empty"):
        prepare_roi_slices(image, empty, RoiPreprocessing(modality="CT", views="orthogonal"))


def test_real_lidc_nodule_is_centred_in_each_view():
    manifest = shared_path("lidc", "manifest.csv")
    case = "LIDC-IDRI-0010_R_3"  # 6 slices of 2.5 mm
    image = sitk.ReadImage(str(manifest.parent / "images" / f"{case}.nii.gz"))
    mask = sitk.ReadImage(str(manifest.parent / "masks" / f"{case}.nii.gz"))
    mask_views, crop = views_of(sitk.Cast(mask, sitk.sitkFloat32), mask)  # the mask itself, sampled as the image
    assert crop.spacing == pytest.approx(min(image.GetSpacing()))
    middle = (crop.pixels - 1) / 2
    for name, plane in zip(VIEW_NAMES, np.nan_to_num(mask_views) >= 0.5):
        assert plane.any() and np.allclose(centre_of(plane), middle, atol=1.5), name
    crops, _ = prepare_roi_slices(image, mask, RoiPreprocessing(modality="CT", views="orthogonal"))
    assert crops.shape == (3, 224, 224) and np.isfinite(crops).all() and 0 <= crops.min() < crops.max() <= 1
