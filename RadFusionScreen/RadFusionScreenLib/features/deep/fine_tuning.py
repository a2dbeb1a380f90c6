"""Deep transfer learning: the CNN's last blocks fine-tuned on labelled training crops, then used
as the feature extractor.

Why: ImageNet features describe photographs; a few epochs on the cohort's own crops can move
the last, most task-specific layers towards what separates the classes, while the early
layers (edges, textures) stay as they are. Only training cases may be used: a network tuned
on a test case has seen its label, so :func:`fine_tune` takes the training indices (and,
when given, the test indices, which must not overlap them) and reads nothing else.

What is trained: the last ``trainable_blocks`` MBConv blocks of EfficientNet, the 1×1 head
conv and its batch norm, plus a new linear head (features → one logit) that is dropped
afterwards; the feature vector stays the global average pool of the head's feature map
(1280 values), averaged over the case's rows (2.5D slices or orthogonal views) exactly as
:meth:`~.extractor.DeepFeatureExtractor.extract` does, so the training objective sees the
same vector the downstream model will. Batch norms keep their ImageNet running statistics
(eval mode; their scale and shift are trained): batches of a few dozen small crops give
noisy statistics. Loss: binary cross-entropy, AdamW, fixed seeds.

Cost: the frozen part (stem and early blocks, ~80% of the network's operations) never
changes, so its output is computed once per case and augmentation (the four flips: none,
left-right, up-down, both), not once per epoch: :func:`frozen_activations`. The epochs then
run the small tail only. The frozen part holds ImageNet weights and no label, so computing
it for a whole cohort (test cases included) once and sharing it between folds leaks nothing;
:func:`fine_tune` still only reads the training rows of it.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from RadFusionScreenLib.core.errors import InputError
from RadFusionScreenLib.features.deep.extractor import Cnn2dExtractor, select_device
from RadFusionScreenLib.features.deep.preprocessing import to_network_input

FLIPS = ("none", "left-right", "up-down", "both")


@dataclass(frozen=True)
class FineTuning:
    """Fine-tuning settings (JSON-able, recorded in the fine-tuned extractor's settings)."""

    trainable_blocks: int = 2  # last MBConv blocks trained, plus the head conv and its batch norm
    epochs: int = 8
    batch_size: int = 32  # cases per step
    learning_rate: float = 3e-4  # the network's trained layers
    head_learning_rate: float = 1e-3  # the temporary linear head
    weight_decay: float = 1e-4
    augment: bool = True  # a random flip (FLIPS) per case and epoch
    seed: int = 0

    def __post_init__(self) -> None:
        if self.trainable_blocks < 0 or self.epochs < 1 or self.batch_size < 1:
            raise InputError("fine-tuning needs trainable_blocks >= 0, epochs >= 1 and batch_size >= 1")
        if not (self.learning_rate > 0 and self.head_learning_rate > 0 and self.weight_decay >= 0):
            raise InputError("fine-tuning learning rates must be > 0 and weight_decay >= 0")


@dataclass
class FrozenActivations:
    """Output of the frozen part for each case and flip: ``rows[i]`` is (flips, N_i, C, h, w) float32."""

    rows: Sequence[torch.Tensor | None]
    trainable_blocks: int
    flips: tuple[str, ...]


# ------------------------------------------------------------------------ the network


def _network(extractor: Cnn2dExtractor) -> torch.nn.Module:
    network = getattr(extractor.model, "network", None)
    if network is None or not hasattr(network, "_blocks") or not hasattr(network, "_conv_head"):
        raise InputError(f"fine-tuning supports EfficientNet-style backbones (blocks + head conv), not {extractor.name!r}")
    return network


def _check_blocks(network: torch.nn.Module, trainable_blocks: int) -> int:
    n_blocks = len(network._blocks)
    if trainable_blocks > n_blocks:
        raise InputError(f"trainable_blocks={trainable_blocks}: the network has {n_blocks} blocks")
    return n_blocks - trainable_blocks


def _frozen_forward(network: torch.nn.Module, inputs: torch.Tensor, split: int) -> torch.Tensor:
    """Stem and blocks[:split] (what ``extract_features`` runs first; drop-connect is off in eval mode)."""
    x = network._swish(network._bn0(network._conv_stem(inputs)))
    for block in network._blocks[:split]:
        x = block(x)
    return x


def _tail_forward(network: torch.nn.Module, activations: torch.Tensor, split: int) -> torch.Tensor:
    """blocks[split:] and the head → pooled features (N, C)."""
    x = activations
    for block in network._blocks[split:]:
        x = block(x)
    x = network._swish(network._bn1(network._conv_head(x)))
    return x.mean(dim=(2, 3))


def _flip(inputs: torch.Tensor, flip: str) -> torch.Tensor:
    dims = {"none": (), "left-right": (-1,), "up-down": (-2,), "both": (-2, -1)}[flip]
    return inputs.flip(dims) if dims else inputs


@contextlib.contextmanager
def _threads(num_threads: int | None) -> Iterator[None]:
    before = torch.get_num_threads()
    try:
        if num_threads:
            torch.set_num_threads(num_threads)
        yield
    finally:
        torch.set_num_threads(before)


def frozen_activations(
    extractor: Cnn2dExtractor,
    crops: Sequence[np.ndarray | None],
    trainable_blocks: int = FineTuning.trainable_blocks,
    flips: Sequence[str] = FLIPS,
    indices: Sequence[int] | None = None,
    num_threads: int | None = None,
) -> FrozenActivations:
    """The frozen part's output for each case's crops ((N_i, S, S) in [0, 1], as
    :func:`~.preprocessing.prepare_roi_slices` gives) under each flip; only ``indices`` (default
    all) are computed, the other rows are None. ``num_threads``: None → the extractor's."""
    network = _network(extractor)
    num_threads = num_threads or extractor.num_threads
    split = _check_blocks(network, trainable_blocks)
    unknown = sorted(set(flips) - set(FLIPS))
    if unknown or not flips or flips[0] != "none":
        raise InputError(f"flips must start with 'none' and be among {FLIPS}, got {list(flips)}")
    wanted = range(len(crops)) if indices is None else indices
    rows: list[torch.Tensor | None] = [None] * len(crops)
    with _threads(num_threads), torch.inference_mode():
        for i in wanted:
            inputs = to_network_input(crops[i]).to(extractor.device)
            rows[i] = torch.stack([_frozen_forward(network, _flip(inputs, f), split) for f in flips]).float().cpu()
    return FrozenActivations(rows, trainable_blocks, tuple(flips))


def features_from_activations(
    extractor: Cnn2dExtractor, activations: FrozenActivations, indices: Sequence[int], num_threads: int | None = None
) -> np.ndarray:
    """(len(indices), n_features) float32: the tail on the unflipped activations, mean over each
    case's rows: what ``extractor.extract`` gives on those cases, without rerunning the frozen part."""
    network = _network(extractor)
    num_threads = num_threads or extractor.num_threads
    split = _check_blocks(network, activations.trainable_blocks)
    out = np.empty((len(indices), extractor.n_features), dtype=np.float32)
    with _threads(num_threads), torch.inference_mode():
        for k, i in enumerate(indices):
            rows = _tail_forward(network, activations.rows[i][0].to(extractor.device), split).float().cpu().numpy()
            out[k] = rows.mean(axis=0, dtype=np.float64)
    return out


# ------------------------------------------------------------------------ fine-tuning


def state_digest(module: torch.nn.Module) -> str:
    """SHA-256 over the module's state (names, dtypes, shapes, bytes, in name order): pins fine-tuned weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{value.dtype}|{tuple(value.shape)}|".encode())
        digest.update(value.numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


def fine_tune(
    extractor: Cnn2dExtractor,
    crops: Sequence[np.ndarray | None],
    labels: Sequence[int],
    train_index: Sequence[int],
    *,
    test_index: Sequence[int] | None = None,
    settings: FineTuning | None = None,
    activations: FrozenActivations | None = None,
    device: str | torch.device | None = None,
    num_threads: int | None = None,
) -> Cnn2dExtractor:
    """A copy of ``extractor`` whose last blocks are fine-tuned on the training cases only.

    ``crops[i]``: case i's network crops ((N_i, S, S) in [0, 1]) and ``labels[i]`` its 0/1
    label; only ``i in train_index`` are read (``crops`` may hold None elsewhere).
    ``test_index``: the held-out cases, checked to be disjoint from ``train_index``.
    ``activations``: the frozen part's output (:func:`frozen_activations`, same
    ``trainable_blocks``) to reuse instead of recomputing it from the crops. ``device``:
    None/auto → CUDA when available, else CPU. ``num_threads``: torch CPU threads while
    training (None: the extractor's, 1 by default; more threads than free cores slow torch's
    many small operations down several-fold). The input extractor is not changed; the copy
    carries ``fine_tuning`` (settings, training cases, loss per epoch, seconds, weights digest).
    """
    settings = settings or FineTuning()
    train = [int(i) for i in train_index]
    if len(set(train)) != len(train) or not train:
        raise InputError("train_index must list distinct case indices (at least one)")
    if test_index is not None and set(train) & {int(i) for i in test_index}:
        raise InputError("fine-tuning refused: train_index and test_index share cases (the test fold would leak)")
    y = torch.tensor([float(labels[i]) for i in train])
    if not set(y.tolist()) <= {0.0, 1.0} or len(set(y.tolist())) < 2:
        raise InputError("fine-tuning needs labels 0/1 with both classes among the training cases")
    started = time.perf_counter()
    num_threads = num_threads or extractor.num_threads
    chosen = select_device(device)
    tuned = copy.deepcopy(extractor)
    tuned._model = tuned._model.to(chosen)
    tuned.device = chosen
    network = _network(tuned)
    split = _check_blocks(network, settings.trainable_blocks)
    flips = FLIPS if settings.augment else ("none",)
    if activations is None:
        activations = frozen_activations(tuned, crops, settings.trainable_blocks, flips, train, num_threads)
    elif activations.trainable_blocks != settings.trainable_blocks or not set(flips) <= set(activations.flips):
        raise InputError("the given frozen activations were made for other trainable_blocks or flips")
    losses = _train(network, split, activations, train, y, settings, chosen, num_threads)
    tuned._model.eval()
    tuned.fine_tuning = {
        **asdict(settings), "n_train_cases": len(train), "n_positive": int(y.sum()),
        "loss_per_epoch": losses, "device": chosen.type, "seconds": round(time.perf_counter() - started, 2),
    }
    tuned.weights_sha256 = state_digest(tuned._model.network)
    return tuned


def _train(network: torch.nn.Module, split: int, activations: FrozenActivations, train: list[int], y: torch.Tensor,
           settings: FineTuning, device: torch.device, num_threads: int | None) -> list[float]:
    """The epochs; returns the mean training loss of each."""
    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    tail = [*network._blocks[split:], network._conv_head, network._bn1]
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    trained = [p for module in tail for p in module.parameters()]
    for parameter in trained:
        parameter.requires_grad_(True)
    head = torch.nn.Linear(network._conv_head.out_channels, 1).to(device)
    optimiser = torch.optim.AdamW([{"params": trained, "lr": settings.learning_rate},
                                   {"params": head.parameters(), "lr": settings.head_learning_rate}],
                                  weight_decay=settings.weight_decay)
    flip_choices = [activations.flips.index(f) for f in (FLIPS if settings.augment else ("none",))]
    network.eval()  # batch norms keep their running statistics; drop-connect stays off
    losses = []
    with _threads(num_threads), torch.inference_mode(False), torch.enable_grad():
        for _ in range(settings.epochs):
            order = torch.randperm(len(train), generator=generator).tolist()
            flips = torch.randint(len(flip_choices), (len(train),), generator=generator).tolist()
            total = 0.0
            for start in range(0, len(order), settings.batch_size):
                batch = order[start:start + settings.batch_size]
                rows = [activations.rows[train[b]][flip_choices[flips[b]]] for b in batch]
                owner = torch.cat([torch.full((len(r),), k) for k, r in enumerate(rows)]).to(device)
                pooled = _tail_forward(network, torch.cat(rows).to(device), split)
                per_case = torch.zeros(len(batch), pooled.shape[1], device=device).index_add_(0, owner, pooled)
                per_case = per_case / torch.bincount(owner, minlength=len(batch))[:, None]
                loss = torch.nn.functional.binary_cross_entropy_with_logits(head(per_case)[:, 0], y[batch].to(device))
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                total += loss.item() * len(batch)
            losses.append(round(total / len(train), 5))
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    return losses


def save_fine_tuned_weights(extractor: Cnn2dExtractor, path: str | Path) -> str:
    """Write a fine-tuned extractor's network as safetensors (tensors only, its ``fine_tuning``
    record in the metadata) and point the extractor at the file; returns the file's SHA-256.

    Afterwards ``extractor.settings()`` records that SHA-256, and
    ``get_deep_extractor(s["backbone"], weights_path=path, **s["options"])`` rebuilds the same
    extractor (the digest is checked before the file is read): what a model bundle needs to
    ship fine-tuned deep features.
    """
    from safetensors.torch import save_file

    from RadFusionScreenLib.core.files import write_atomically
    from RadFusionScreenLib.features.deep.backbones import sha256_file

    if not extractor.fine_tuning:
        raise InputError("only a fine-tuned extractor (fine_tune's result) has weights of its own to save")
    path = Path(path)
    if path.suffix != ".safetensors":
        raise InputError(f"fine-tuned weights are written as .safetensors, not {path.name}")
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in _network(extractor).state_dict().items()}
    metadata = {"fine_tuning": json.dumps(extractor.fine_tuning, sort_keys=True), "backbone": extractor.name}
    write_atomically(path, lambda temporary: save_file(state, str(temporary), metadata=metadata))
    extractor.weights_path, extractor.weights_sha256 = path, sha256_file(path)
    return extractor.weights_sha256

