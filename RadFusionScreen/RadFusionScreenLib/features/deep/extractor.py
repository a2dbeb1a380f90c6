"""A network that turns (image, mask) into one fixed-length feature vector: the torch device,
torch settings scoped to one forward pass, the pooled conv trunk (Grad-CAM's hook point) and
the extractor base classes (2D CNNs on 2.5D ROI crops, see :mod:`.preprocessing`)."""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from RadFusionScreenLib.core.errors import InputError
from RadFusionScreenLib.features.deep.preprocessing import (IMAGENET_MEAN, IMAGENET_STD, PreparedInput,
                                                            RoiPreprocessing, prepare_roi_slices, to_network_input)


# ----------------------------------------------------------------------------- device


def select_device(device: str | torch.device | None = None) -> torch.device:
    """Torch device for inference: None/"auto" → CUDA when available, else CPU.

    An explicit "cuda"/"cuda:N" without a usable GPU raises :class:`InputError` (no silent
    fallback: the caller asked for a GPU).
    """
    if device is None or str(device).strip().lower() in ("", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(str(device).strip().lower())
    except RuntimeError as exc:
        raise InputError(f"unknown torch device {device!r}: use 'auto', 'cpu' or 'cuda'") from exc
    if chosen.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(
                f"device {device!r} requested but CUDA is not available (no GPU, no driver, or a "
                "CPU-only torch build): use device='cpu' or 'auto'"
            )
        if chosen.index is not None and chosen.index >= torch.cuda.device_count():
            raise InputError(f"device {device!r} requested but only {torch.cuda.device_count()} GPU(s) are visible")
    elif chosen.type != "cpu":
        raise InputError(f"unsupported torch device {device!r}: use 'auto', 'cpu' or 'cuda'")
    return chosen


@contextlib.contextmanager
def _torch_runtime(device: torch.device, num_threads: int | None) -> Iterator[None]:
    """Scoped torch settings for one forward pass; the process-wide values are restored after."""
    threads = torch.get_num_threads()
    cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    try:
        if num_threads and num_threads != threads:
            torch.set_num_threads(num_threads)
        if device.type == "cuda":  # cuDNN may pick non-deterministic kernels otherwise
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
        with torch.inference_mode():
            yield
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn


# -------------------------------------------------------------------------- extractors


class PooledBackbone(torch.nn.Module):
    """A conv trunk → ``feature_map`` (identity: Grad-CAM's hook point) → global average pool → (N, C).

    ``network`` is the complete classification network; ``trunk`` names its method that
    returns the last conv feature map (N, C, h, w).
    """

    def __init__(self, network: torch.nn.Module, trunk: str) -> None:
        super().__init__()
        self.network = network
        self.trunk = trunk
        self.feature_map = torch.nn.Identity()
        self.pool = torch.nn.AdaptiveAvgPool2d(1)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        feature_map = self.feature_map(getattr(self.network, self.trunk)(inputs))
        return self.pool(feature_map).flatten(1)


class DeepFeatureExtractor(ABC):
    """A network that turns (image, mask) into one fixed-length feature vector.

    Subclasses set ``name`` (registry key), ``feature_prefix`` (starts with ``deep_``) and
    ``n_features``; they build the network once, in ``__init__``. ``prepare`` produces the
    exact batch the network consumes (also used by Grad-CAM); ``features_from_inputs`` runs
    it; ``extract`` mean-pools the rows (slices, patches...) into one vector.
    """

    name: str = ""
    feature_prefix: str = "deep_"
    n_features: int = 0
    target_layer_name: str = ""
    device: torch.device
    num_threads: int | None = None
    fine_tuning: dict[str, Any] | None = None  # set on a fine-tuned copy (see .fine_tuning)

    def feature_names(self) -> list[str]:
        """Column names, e.g. ``deep_effnetl0_0000`` … ``deep_effnetl0_1279``."""
        width = max(4, len(str(self.n_features - 1)))
        return [f"{self.feature_prefix}{i:0{width}d}" for i in range(self.n_features)]

    @property
    @abstractmethod
    def model(self) -> torch.nn.Module:
        """The module mapping ``prepare_inputs`` output to (N, n_features) features."""

    @property
    @abstractmethod
    def target_layer(self) -> torch.nn.Module:
        """The module whose output is the last conv feature map before pooling (Grad-CAM)."""

    @abstractmethod
    def prepare(self, image: sitk.Image, mask: sitk.Image) -> PreparedInput:
        """The network batch for this case and its crop geometry."""

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """JSON-able description for a model bundle (network, weights hash, preprocessing)."""

    def prepare_inputs(self, image: sitk.Image, mask: sitk.Image) -> torch.Tensor:
        """The network batch for this case (for 2D backbones (N, 3, H, W), one row per slice)."""
        return self.prepare(image, mask).tensor

    def features_from_inputs(self, inputs: torch.Tensor) -> np.ndarray:
        """One float32 feature row per batch row (inference mode, scoped thread count)."""
        with _torch_runtime(self.device, self.num_threads):
            features = self.model(inputs.to(self.device))
        return features.float().cpu().numpy()

    def extract(self, image: sitk.Image, mask: sitk.Image) -> np.ndarray:
        """Feature vector (n_features,) float32: the mean over the rows of the batch."""
        rows = self.features_from_inputs(self.prepare_inputs(image, mask))
        return rows.mean(axis=0, dtype=np.float64).astype(np.float32)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, n_features={self.n_features}, device={self.device})"


class Cnn2dExtractor(DeepFeatureExtractor):
    """A 2D ImageNet-style CNN applied to 2.5D ROI crops (see :mod:`.preprocessing`).

    ``device``: see :func:`select_device`. ``num_threads``: torch CPU threads during a
    forward pass (torch's setting is process-wide: it is set for the call and restored,
    so extractors with different counts should not run concurrently); None keeps torch's.
    Default 1: multi-threaded CPU convolutions sum in a thread-count-dependent order
    (float32 differences ~1e-7), so one thread makes features bit-identical whatever the
    machine's core count or the cohort's worker count; the 2D network costs tens of ms.
    Other options are :class:`RoiPreprocessing` fields.
    """

    def __init__(
        self, *, device: str | torch.device | None = None, num_threads: int | None = 1, **options: Any
    ) -> None:
        self.preprocessing = RoiPreprocessing.from_options(options)
        if num_threads is not None and (not isinstance(num_threads, int) or num_threads < 1):
            raise InputError(f"num_threads={num_threads!r} must be a positive integer or None")
        self.num_threads = num_threads
        self.device = select_device(device)
        self._model = self._build_model().to(self.device).eval()

    @abstractmethod
    def _build_model(self) -> PooledBackbone:
        """Build the network and load its weights (called once)."""

    def _weights_options(self) -> dict[str, Any]:
        """Options that pin the weights (e.g. their SHA-256) for ``settings()['options']``."""
        return {}

    @property
    def model(self) -> PooledBackbone:
        return self._model

    @property
    def target_layer(self) -> torch.nn.Module:
        return self._model.feature_map

    def prepare(self, image: sitk.Image, mask: sitk.Image) -> PreparedInput:
        crops, crop = prepare_roi_slices(image, mask, self.preprocessing)
        return PreparedInput(to_network_input(crops).to(self.device), crop)

    def _preprocessing_settings(self) -> dict[str, Any]:
        return {
            "options": {**self.preprocessing.options(), **self._weights_options()},
            "intensity": self.preprocessing.intensity_range(),
            "pad_value": 0.0,
            "channels": "grey replicated to 3",
            "normalisation": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
            "resize": "bilinear, antialiased when downsampling",
            "slice_pooling": "mean",
            "orientation": "axial volumes reordered to LPS; other planes as stored",
            **self._views_settings(),
        }

    def _views_settings(self) -> dict[str, Any]:
        """How a 3D image becomes rows of the batch (2.5D slices or orthogonal views)."""
        if self.preprocessing.views != "orthogonal":
            return {"views": "2.5d: largest ROI cross-section and its neighbours, axial slices"}
        spacing = self.preprocessing.iso_spacing_mm
        return {"views": "orthogonal: axial, coronal, sagittal planes (LPS, radiological display) through the "
                         "ROI centroid, linear interpolation on isotropic pixels of "
                         f"{'the finest image spacing' if spacing is None else f'{spacing} mm'}; "
                         "2D / one-slice images: 2.5d",
                "view_pooling": "mean"}
