"""Grad-CAM of the deep-score: real EfficientNet-Lite0, synthetic US and CT lesions, no mocks.

The lesion head ``w = f(lesion crop) - f(background crop)`` weights the deep features that
respond to the lesion more than to the background: its Grad-CAM must sit on the lesion
and follow it. Random heads are the control.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage

from RadFusionScreenLib.features.deep import get_deep_extractor
from RadFusionScreenLib.core.errors import InputError
from RadFusionScreenLib.explanation.gradcam import GradCamResult, grad_cam

SIDE = 300  # ultrasound frame, pixels
CT_SHAPE = (24, 128, 128)  # (z, y, x)
CT_LESION = (80, 52, 12)  # (x, y, z) voxel centre, off-centre so a mirrored paste would show


# ------------------------------------------------------------------------ synthetic data


def speckle(seed: int, shape: tuple[int, int] = (SIDE, SIDE), mean: float = 1.0) -> np.ndarray:
    """Smoothed Rayleigh speckle (the grain of B-mode ultrasound) with the given mean."""
    grain = ndimage.gaussian_filter(np.random.default_rng(seed).rayleigh(1.0, shape), 1.2)
    return mean * grain / grain.mean()


def ellipse(cx: float, cy: float, a: float = 30, b: float = 20, shape: tuple[int, int] = (SIDE, SIDE)) -> np.ndarray:
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]]
    return ((x - cx) / a) ** 2 + ((y - cy) / b) ** 2 < 1


def us_case(cx: float, cy: float, roi: np.ndarray | None = None) -> tuple[sitk.Image, sitk.Image, np.ndarray]:
    """1×300×300 uint8 B-mode-like frame: fixed speckle, a dark textured lesion at (cx, cy).

    The background does not move with the lesion. The mask is the lesion unless ``roi``.
    """
    lesion = ellipse(cx, cy)
    pixels = np.where(lesion, speckle(1, mean=25.0), speckle(0, mean=110.0))
    pixels = ndimage.gaussian_filter(pixels, 0.7).clip(0, 255).astype(np.uint8)
    image = sitk.GetImageFromArray(pixels[None])
    image.SetSpacing((0.1, 0.1, 1.0))
    mask = sitk.GetImageFromArray((lesion if roi is None else roi).astype(np.uint8)[None])
    mask.CopyInformation(image)
    return image, mask, lesion


def mask_like(image: sitk.Image, inside: np.ndarray) -> sitk.Image:
    mask = sitk.GetImageFromArray(inside.astype(np.uint8).reshape(sitk.GetArrayViewFromImage(image).shape))
    mask.CopyInformation(image)
    return mask


def ct_case() -> tuple[sitk.Image, sitk.Image, np.ndarray]:
    """int16 CT-like volume stored RAS-wise (the extractor reorders it to LPS), hyperdense lesion."""
    rng = np.random.default_rng(3)
    z, y, x = np.mgrid[0 : CT_SHAPE[0], 0 : CT_SHAPE[1], 0 : CT_SHAPE[2]]
    body = ((x - 64) / 58) ** 2 + ((y - 64) / 50) ** 2 < 1
    cx, cy, cz = CT_LESION
    lesion = ((x - cx) / 14) ** 2 + ((y - cy) / 11) ** 2 + ((z - cz) / 3.2) ** 2 < 1
    texture = ndimage.gaussian_filter(rng.normal(0, 40, CT_SHAPE), 1.0)
    hu = np.where(body, 35.0, -1000.0) + rng.normal(0, 12, CT_SHAPE) + np.where(lesion, 90.0 + texture, 0.0)
    image = sitk.GetImageFromArray(hu.astype(np.int16))
    image.SetSpacing((0.7, 0.7, 2.5))
    image.SetOrigin((120.0, 95.0, -40.0))
    image.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))
    return image, mask_like(image, lesion), lesion


def lesion_head(extractor, image: sitk.Image, mask: sitk.Image, background: sitk.Image) -> np.ndarray:
    """Weights of the features that respond more to the lesion crop than to a background crop."""
    return (extractor.extract(image, mask) - extractor.extract(image, background)).astype(np.float64)


# ------------------------------------------------------------------------------ helpers


def array(result: GradCamResult) -> np.ndarray:
    return sitk.GetArrayFromImage(result.image)


def centre_of_mass(values: np.ndarray) -> np.ndarray:
    """(x, y[, z]) index of the weighted centre (SimpleITK axis order)."""
    return np.asarray(ndimage.center_of_mass(values))[::-1]


def crop_box(result: GradCamResult, shape: tuple[int, ...]) -> np.ndarray:
    """Boolean (z, y, x) mask of the crop box on the prepared slices."""
    box = np.zeros(shape, dtype=bool)
    (r0, c0), (h, w) = result.crop.start, result.crop.shape
    box[list(result.slices), max(r0, 0) : r0 + h, max(c0, 0) : c0 + w] = True
    return box


def same_geometry(a: sitk.Image, b: sitk.Image) -> bool:
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetSpacing(), b.GetSpacing())
        and np.allclose(a.GetOrigin(), b.GetOrigin())
        and np.allclose(a.GetDirection(), b.GetDirection())
    )


def mass_fraction(values: np.ndarray, region: np.ndarray) -> float:
    total = float(values.sum())
    return float(values[region].sum()) / total if total > 0 else 0.0


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def us():
    return get_deep_extractor(modality="US", device="cpu")


@pytest.fixture(scope="module")
def ct():
    return get_deep_extractor(modality="CT", device="cpu")


@pytest.fixture(scope="module")
def us_head(us) -> np.ndarray:
    image, mask, _ = us_case(150, 150)
    return lesion_head(us, image, mask, mask_like(image, ellipse(70, 70)))


@pytest.fixture(scope="module")
def ct_data(ct):
    image, mask, lesion = ct_case()
    background = np.roll(lesion, (0, 30, -45), axis=(0, 1, 2))  # same shape, in the body
    return image, mask, lesion, lesion_head(ct, image, mask, mask_like(image, background))


# -------------------------------------------------------------------------------- tests


def test_2d_map_in_input_geometry_and_score(us, us_head):
    image, mask, lesion = us_case(150, 150)
    result = grad_cam(us, image, mask, us_head, bias=-0.75)
    values = array(result)
    assert same_geometry(result.image, image) and result.image.GetPixelID() == sitk.sitkFloat32
    assert values.min() >= 0 and values.max() == 1.0 and result.raw_max > 0 and not result.is_empty
    assert np.all(values[~crop_box(result, values.shape)] == 0)
    expected = -0.75 + us_head @ us.extract(image, mask).astype(np.float64)
    assert result.score == pytest.approx(expected, rel=1e-5)
    assert result.slices == (0,) and result.slice_maps.shape == (1, 7, 7)
    assert result.target_layer == "feature_map" and "last conv" in result.target_layer_description
    assert result.seconds > 0
    # the map sits on the lesion: far more of its mass than the lesion's share of the box
    near = ndimage.binary_dilation(lesion, iterations=5)[None]
    box = crop_box(result, values.shape)
    assert mass_fraction(values, near) > 1.8 * (near & box).sum() / box.sum()
    np.testing.assert_allclose(result.slice_centres[0][:2], (15.0, 15.0), atol=0.1)  # lesion centre, mm


def test_plain_2d_image(us, us_head):
    image3, mask3, _ = us_case(150, 150)
    image, mask = image3[:, :, 0], mask3[:, :, 0]
    result = grad_cam(us, image, mask, us_head)
    assert result.image.GetDimension() == 2 and same_geometry(result.image, image)
    np.testing.assert_array_equal(array(result), array(grad_cam(us, image3, mask3, us_head))[0])


@pytest.mark.parametrize("shift", [(12, -7), (-10, 8)])
def test_map_moves_with_the_lesion(us, us_head, shift):
    """Lesion and mask move over a fixed speckle background; the map's centre follows."""
    dx, dy = shift
    before = array(grad_cam(us, *us_case(150, 150)[:2], us_head))
    after = array(grad_cam(us, *us_case(150 + dx, 150 + dy)[:2], us_head))
    moved = centre_of_mass(after[0]) - centre_of_mass(before[0])
    np.testing.assert_allclose(moved, (dx, dy), atol=4.0)


LARGE_ROI = np.zeros((SIDE, SIDE), dtype=bool)
LARGE_ROI[80:220, 80:220] = True  # 140×140 pixels around the frame's centre


def lesion_in_large_roi(extractor, head, centre) -> tuple[float, float, float]:
    """Map-centre distance to the lesion, map mass near it, and that region's share of the crop.

    The ROI (hence the crop) is fixed: only the lesion can tell the map where to go.
    An all-zero map counts as infinitely far and with no mass there.
    """
    image, mask, lesion = us_case(*centre, roi=LARGE_ROI)
    result = grad_cam(extractor, image, mask, head)
    values = array(result)[0]
    near = ndimage.binary_dilation(lesion, iterations=5)
    share = float(near[crop_box(result, (1, SIDE, SIDE))[0]].mean())  # what a uniform map would put there
    if result.is_empty:
        return np.inf, 0.0, share
    return float(np.linalg.norm(centre_of_mass(values) - centre)), mass_fraction(values, near), share


@pytest.mark.parametrize("centre", [(112, 115), (186, 185), (115, 186)])
def test_map_finds_the_lesion_inside_a_large_roi(us, us_head, centre):
    """The lesion head's map centres on the lesion (lesion 60×40 in a 140 ROI) and piles its
    mass there; the opposite head (background features) puts none there."""
    distance, mass, share = lesion_in_large_roi(us, us_head, centre)
    assert distance < 12 and mass > 2.5 * share
    _, opposite_mass, _ = lesion_in_large_roi(us, -us_head, centre)
    assert opposite_mass < share


def test_random_heads_do_not_find_the_lesion(us, us_head):
    """Control: heads with random weights (same crop, same network) mostly look elsewhere."""
    centre = (186, 185)
    distance, mass, _ = lesion_in_large_roi(us, us_head, centre)
    rng = np.random.default_rng(11)
    random = np.array([lesion_in_large_roi(us, rng.normal(size=1280), centre)[:2] for _ in range(8)])
    assert np.median(random[:, 0]) > 4 * distance and np.median(random[:, 1]) < 0.5 * mass


def test_3d_ct_map_geometry_score_and_place(ct, ct_data):
    image, mask, lesion, head = ct_data
    result = grad_cam(ct, image, mask, head, bias=1.5)
    values = array(result)
    assert same_geometry(result.image, image)
    assert values.min() >= 0 and values.max() == 1.0
    assert len(result.slices) == 3 and result.slice_maps.shape == (3, 7, 7)
    # direction flips x and y only (RAS → LPS), so slice indices and the box are the input's after flipping
    flipped = crop_box(result, values.shape)[:, ::-1, ::-1]
    assert np.all(values[~flipped] == 0)
    assert set(np.flatnonzero(values.reshape(values.shape[0], -1).max(axis=1))) <= set(result.slices)
    assert result.score == pytest.approx(1.5 + head @ ct.extract(image, mask).astype(np.float64), rel=1e-5)
    centre = image.TransformContinuousIndexToPhysicalPoint(centre_of_mass(values).tolist())
    lesion_centre = image.TransformContinuousIndexToPhysicalPoint([float(c) for c in CT_LESION])
    assert np.linalg.norm(np.subtract(centre, lesion_centre)) < 5.0  # mm; a mirrored paste is ~60 mm off
    assert np.linalg.norm(np.subtract(result.slice_centres[1], lesion_centre)) < 1.0


def test_gradients_give_cam_for_a_linear_head(ct, ct_data):
    """For s = w·f the gradient is w/(N·h·w) everywhere: Grad-CAM = ReLU(Σ w_k A_k)/(N·49) (CAM)."""
    image, mask, _, head = ct_data
    result = grad_cam(ct, image, mask, head)
    inputs = ct.prepare(image, mask).tensor
    with torch.no_grad():
        maps = ct.model.network.extract_features(inputs).double()
    cam = torch.relu(torch.einsum("c,nchw->nhw", torch.from_numpy(head), maps)) / (maps.shape[0] * 49)
    np.testing.assert_allclose(result.slice_maps, cam.numpy(), rtol=1e-5, atol=1e-9 * result.raw_max)


def test_callable_head_explains_its_own_output(us, us_head):
    """A monotone head (sigmoid of the linear score) has the same map, and its own score."""
    image, mask, _ = us_case(150, 150)
    linear = grad_cam(us, image, mask, us_head, bias=0.1)
    weights = torch.from_numpy(us_head)
    result = grad_cam(us, image, mask, lambda f: torch.sigmoid(0.01 * ((weights * f.double()).sum() + 0.1)))
    assert result.score == pytest.approx(1 / (1 + np.exp(-0.01 * linear.score)), rel=1e-6)
    np.testing.assert_allclose(array(result), array(linear), atol=1e-5)


def test_nothing_raises_the_score_gives_zeros_and_a_warning(us):
    image, mask, _ = us_case(150, 150)
    # the feature map is after ReLU6 (>= 0): all-negative weights lower the score everywhere
    for head in (-np.ones(1280), np.zeros(1280), lambda f: torch.tensor(3.0)):
        result = grad_cam(us, image, mask, head, bias=0.5)
        assert result.is_empty and "zero" in result.warning
        assert result.raw_max == 0 and not array(result).any()
        assert same_geometry(result.image, image)


def failing_head(features: torch.Tensor) -> torch.Tensor:
    raise RuntimeError("head failed")


def test_state_restored_hooks_removed_and_repeatable(us_head):
    extractor = get_deep_extractor(modality="US", device="cpu", num_threads=1)
    model, layer = extractor.model, extractor.target_layer
    image, mask, _ = us_case(150, 150)
    first = grad_cam(extractor, image, mask, us_head)
    model.train()
    frozen = next(iter(model.parameters()))
    frozen.requires_grad_(False)
    modes = {name: m.training for name, m in model.named_modules()}
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    running = [b.clone() for b in model.buffers()]
    threads = torch.get_num_threads()
    second = grad_cam(extractor, image, mask, us_head)  # evaluated in eval mode regardless
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags
    assert all(torch.equal(a, b) for a, b in zip(running, model.buffers()))  # BN statistics untouched
    assert torch.get_num_threads() == threads
    assert not layer._forward_hooks and not layer._backward_hooks
    assert second.score == first.score
    np.testing.assert_array_equal(array(second), array(first))
    with pytest.raises(RuntimeError, match="head failed"):
        grad_cam(extractor, image, mask, failing_head)
    assert not layer._forward_hooks and {n: m.training for n, m in model.named_modules()} == modes
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags


def test_bad_heads_are_refused(us):
    image, mask, _ = us_case(150, 150)
    with pytest.raises(InputError, match="1280"):
        grad_cam(us, image, mask, np.ones(10))
    with pytest.raises(InputError, match="one-element"):
        grad_cam(us, image, mask, lambda f: f)
    assert not us.target_layer._forward_hooks


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu(us, us_head):
    image, mask, _ = us_case(150, 150)
    gpu = grad_cam(get_deep_extractor(modality="US", device="cuda"), image, mask, us_head)
    cpu = grad_cam(us, image, mask, us_head)
    assert gpu.score == pytest.approx(cpu.score, rel=1e-3)
    np.testing.assert_allclose(array(gpu), array(cpu), atol=0.02)
