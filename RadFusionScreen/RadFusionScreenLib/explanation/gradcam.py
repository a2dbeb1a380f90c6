"""Grad-CAM of the deep-score: where in the ROI crop the network saw what drove the decision.

**Target layer.** The extractor's documented ``target_layer`` (for the 2D backbones the
``feature_map`` identity of :class:`~RadFusionScreenLib.features.deep.PooledBackbone`: the last
convolutional feature map, 1280×7×7 for EfficientNet-Lite0 at 224). It is the layer with
the highest-level features that still has a spatial layout, and its global average pool
*is* the deep feature vector ``f`` that the model consumes, so a map over it explains
exactly the features the fused model saw, with nothing between the map and ``f`` but
pooling.

**The decision.** Not an ImageNet class: the *deep-score* of the fused model,
``s = head(f) + bias``. In the fused model it is the linear predictor
``s = b + Σ_j w_j f_j`` over the raw deep features (imputation, ComBat, scaling and LASSO
are affine per feature, so the caller folds them into one weight per raw feature and
passes ``w`` as a numpy vector and ``b`` as ``bias``). Any differentiable scalar head of the
pooled vector can be given instead. ``f`` is pooled exactly as
:meth:`~RadFusionScreenLib.features.deep.DeepFeatureExtractor.extract` pools it (spatial mean, then
the mean over the prepared slices), so ``score`` equals ``b + w·extract(image, mask)``.

**The map.** Selvaraju et al. (2017): for each prepared slice n,
``M_n = ReLU(Σ_k α_nk A_nk)`` with ``α_nk`` the spatial mean of ``∂s/∂A_nk``. For a linear
head this is Zhou et al.'s CAM, ``ReLU(Σ_k w_k A_nk)/(N·h·w)``, the same weighting on every
slice: the slices share one scale, so a slice that contributes little shows little. Each
7×7 map is resized (bilinear) onto its slice's crop box and pasted into the input image's
geometry; voxels outside the box or on slices that were not used are 0. The volume is
then divided by its maximum over the whole case (so the hottest voxel is 1); a map that
is zero everywhere (no location raises the score) stays zero and ``warning`` says so.

**Known limits.** The map has the feature map's resolution: 7×7 cells over the crop (each
cell ≈ 1/7 of the box side, i.e. the ROI plus its context margin), upsampled smoothly, so
it localises to about a cell, not to edges. ReLU keeps only evidence *for* a higher score;
evidence against it is not shown. Linear heads make the map a weighted feature-energy
map; it is as faithful as the features are, and ImageNet features are not lesion
detectors. Padding outside the image is part of the network input but not of the pasted
map.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import torch

from RadFusionScreenLib.features.deep import DeepFeatureExtractor, RoiCrop, ViewCrop
from RadFusionScreenLib.core.errors import InputError

Head = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class GradCamResult:
    """One case's Grad-CAM.

    ``image``: float32 map in [0, 1] on the input image's grid. ``score``: the explained
    deep-score ``head(f) + bias``. ``raw_max``: the map's maximum before normalisation (its
    scale: score units per feature-map activation, after the spatial/slice means).
    ``target_layer``: the hooked module's name in ``extractor.model`` (``feature_map``);
    ``target_layer_description``: the extractor's words for it.
    ``slice_maps``: the unnormalised (N, h, w) maps on the feature-map grid. ``slices``:
    the prepared slices (indices of the extractor's working grid, i.e. of the input unless
    an axial volume was reordered to LPS; orthogonal views: 0 axial, 1 coronal, 2 sagittal, each
    map laid on its plane through the ROI centroid); ``slice_centres``: the physical point (the
    input's x, y, z) at the centre of each slice's crop box. ``warning``: set when the map is
    all zero.
    """

    image: sitk.Image
    score: float
    raw_max: float
    target_layer: str
    target_layer_description: str
    slices: tuple[int, ...]
    slice_centres: tuple[tuple[float, ...], ...]
    slice_maps: np.ndarray
    crop: RoiCrop | ViewCrop
    seconds: float
    warning: str | None = None

    @property
    def is_empty(self) -> bool:
        """True when no location raises the score (the map is all zero)."""
        return self.warning is not None


def grad_cam(
    extractor: DeepFeatureExtractor,
    image: sitk.Image,
    mask: sitk.Image,
    head: Head | np.ndarray,
    bias: float = 0.0,
) -> GradCamResult:
    """Grad-CAM of ``head(f) + bias`` for one case, in the input image's geometry.

    ``head`` is a weight vector (length ``extractor.n_features``: the linear deep-score
    head) or a callable taking the pooled float32 feature vector ``(n_features,)`` to a
    one-element tensor. One forward pass with autograd on the prepared batch; the model's
    mode, ``requires_grad`` flags and torch's thread count are restored afterwards.
    """
    started = time.perf_counter()
    head_fn = _as_head(head, extractor)
    prepared = extractor.prepare(image, mask)
    activations, gradients, score = _activations_and_gradients(extractor, prepared.tensor, head_fn)
    slice_maps = _cam(activations, gradients)
    volume, raw_max = _normalised_volume(prepared.crop, slice_maps)
    warning = None
    if raw_max <= 0:
        warning = "Grad-CAM is zero everywhere: no location in the crop raises the deep-score"
    return GradCamResult(
        image=volume,
        score=score + float(bias),
        raw_max=raw_max,
        target_layer=_layer_name(extractor),
        target_layer_description=extractor.target_layer_name,
        slices=tuple(prepared.crop.slices),
        slice_centres=_slice_centres(prepared.crop),
        slice_maps=slice_maps,
        crop=prepared.crop,
        seconds=time.perf_counter() - started,
        warning=warning,
    )


def _as_head(head: Head | np.ndarray, extractor: DeepFeatureExtractor) -> Head:
    """A callable head; a weight vector becomes the linear head ``w·f`` (in float64)."""
    if callable(head):
        return head
    weights = np.asarray(head, dtype=np.float64)
    if weights.shape != (extractor.n_features,) or not np.all(np.isfinite(weights)):
        raise InputError(
            f"Grad-CAM head weights must be {extractor.n_features} finite numbers (one per deep feature "
            f"of {extractor.name}), got shape {weights.shape}"
        )
    w = torch.from_numpy(weights).to(extractor.device)
    return lambda features: (w * features.double()).sum()


def _activations_and_gradients(
    extractor: DeepFeatureExtractor, inputs: torch.Tensor, head: Head
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Target-layer activations A, ∂s/∂A (both (N, C, h, w), float64, CPU) and head(f).

    The forward hook hands the rest of the network a detached copy of A that requires
    grad, so autograd records only pooling and head: the trunk runs like inference (no
    parameter gradients, no stored graph) and the backward pass is a few small ops.
    """
    captured: list[torch.Tensor] = []

    def keep_as_leaf(_module: torch.nn.Module, _inputs: object, output: torch.Tensor) -> torch.Tensor:
        leaf = output.detach().requires_grad_(True)
        captured.append(leaf)
        return leaf

    handle = extractor.target_layer.register_forward_hook(keep_as_leaf)
    try:
        with _grad_runtime(extractor):
            rows = extractor.model(inputs.to(extractor.device))
            if len(captured) != 1 or captured[0].ndim != 4:
                raise InputError(f"{extractor.name}: the target layer must run once and give (N, C, h, w) maps")
            features = rows.double().mean(dim=0).float()  # as extract(): float32 rows, float64 mean
            output = head(features)
            if not isinstance(output, torch.Tensor) or output.numel() != 1:
                raise InputError("the Grad-CAM head must return a one-element tensor (the deep-score)")
            gradient = _gradient(output, captured[0])
    finally:
        handle.remove()
    activation = captured[0].detach().double().cpu()
    return activation, gradient.double().cpu(), float(output.detach().double().cpu())


def _gradient(output: torch.Tensor, activation: torch.Tensor) -> torch.Tensor:
    """∂output/∂activation; zeros when the head does not depend on the features."""
    if not output.requires_grad:
        return torch.zeros_like(activation)
    (gradient,) = torch.autograd.grad(output.sum(), activation, allow_unused=True)
    return torch.zeros_like(activation) if gradient is None else gradient


@contextlib.contextmanager
def _grad_runtime(extractor: DeepFeatureExtractor) -> Iterator[None]:
    """Eval mode, frozen parameters, the extractor's thread count and deterministic cuDNN,
    with autograd on; every one of these is put back as it was, even on error."""
    model = extractor.model
    modes = [(module, module.training) for module in model.modules()]
    flags = [(parameter, parameter.requires_grad) for parameter in model.parameters()]
    threads = torch.get_num_threads()
    cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    try:
        model.eval()
        for parameter, _ in flags:
            parameter.requires_grad_(False)
        if extractor.num_threads and extractor.num_threads != threads:
            torch.set_num_threads(extractor.num_threads)
        if extractor.device.type == "cuda":
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
        with torch.inference_mode(False), torch.enable_grad():
            yield
    finally:
        for module, training in modes:
            module.train(training)
        for parameter, requires_grad in flags:
            parameter.requires_grad_(requires_grad)
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn


def _cam(activations: torch.Tensor, gradients: torch.Tensor) -> np.ndarray:
    """ReLU(Σ_k α_k A_k) per slice, α_k = spatial mean of the gradient: (N, h, w) float64."""
    alpha = gradients.mean(dim=(2, 3))
    return torch.relu(torch.einsum("nc,nchw->nhw", alpha, activations)).numpy()


def _normalised_volume(crop: RoiCrop | ViewCrop, slice_maps: np.ndarray) -> tuple[sitk.Image, float]:
    """The maps pasted into the input's grid, divided by their maximum over the case."""
    raw_max = crop.pasted_max(slice_maps)
    return crop.to_volume(slice_maps, divide_by=raw_max if raw_max > 0 else 1.0), raw_max


def _layer_name(extractor: DeepFeatureExtractor) -> str:
    """Qualified name of the target layer inside the extractor's model."""
    for name, module in extractor.model.named_modules():
        if module is extractor.target_layer:
            return name
    return type(extractor.target_layer).__name__


def _slice_centres(crop: RoiCrop | ViewCrop) -> tuple[tuple[float, ...], ...]:
    """Physical point at the centre of the crop box on each prepared slice (orthogonal views: the ROI centroid)."""
    if isinstance(crop, ViewCrop):
        return crop.centres()
    grid = crop.working
    direction = np.asarray(grid.direction).reshape(len(grid.size), len(grid.size))
    (r0, c0), (h, w) = crop.start, crop.shape
    centres = []
    for k in crop.slices:
        index = [c0 + (w - 1) / 2, r0 + (h - 1) / 2, float(k)][: len(grid.size)]
        point = np.asarray(grid.origin) + direction @ (np.asarray(index) * np.asarray(grid.spacing))
        centres.append(tuple(float(v) for v in point))
    return tuple(centres)
