"""Fine-tuning the CNN on training cases (features.deep.fine_tuning): it changes the trained layers
and nothing else, reads only the training cases, refuses an overlap with the test cases, is
reproducible, runs on CPU in seconds, picks CUDA when present, and its fine-tuned weights can
never pass for the ImageNet ones.

The tiny synthetic set: 64×64 grey crops of noise, the positives with a bright square; a
network that learns anything lowers its training loss on it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import pytest
import torch

from RadFusionScreenLib.core.errors import InputError
from RadFusionScreenLib.features.deep import get_deep_extractor, sha256_file, to_network_input
from RadFusionScreenLib.features.deep.fine_tuning import (FineTuning, features_from_activations, fine_tune,
                                                          frozen_activations, save_fine_tuned_weights, state_digest)

N_CASES = 16
SIZE = 64


@pytest.fixture(scope="module")
def extractor():
    return get_deep_extractor(modality="CT", input_size=SIZE, device="cpu")


def tiny_set() -> tuple[list[np.ndarray], list[int]]:
    rng = np.random.default_rng(0)
    labels = [i % 2 for i in range(N_CASES)]
    crops = []
    for i, label in enumerate(labels):
        rows = 1 + i % 3  # cases with 1, 2 or 3 rows (slices/views), as at the edges of a volume
        crop = rng.random((rows, SIZE, SIZE)).astype(np.float32) * 0.5
        if label:
            crop[:, 20:44, 20:44] = 1.0
        crops.append(crop)
    return crops, labels


class Recording(Sequence):
    """A sequence that records which items were read."""

    def __init__(self, items: list) -> None:
        self.items, self.read = items, set()

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index):
        self.read.add(int(index))
        return self.items[index]


QUICK = FineTuning(epochs=2, batch_size=4)


def test_fine_tuning_changes_the_last_blocks_only(extractor):
    crops, labels = tiny_set()
    before = state_digest(extractor.model.network)
    started = time.perf_counter()
    tuned = fine_tune(extractor, crops, labels, range(12), test_index=range(12, 16), settings=QUICK, device="cpu")
    assert time.perf_counter() - started < 30  # seconds on a 2-core CPU (about 3 s when it is idle)
    assert state_digest(extractor.model.network) == before  # the input extractor is untouched
    original, changed = extractor.model.network.state_dict(), tuned.model.network.state_dict()
    moved = {name for name in original if not torch.equal(original[name], changed[name])}
    split = len(extractor.model.network._blocks) - QUICK.trainable_blocks
    trained = tuple(f"_blocks.{k}." for k in range(split, split + QUICK.trainable_blocks)) + ("_conv_head", "_bn1.")
    assert moved and all(name.startswith(trained) for name in moved)
    assert any(name.startswith("_conv_head") for name in moved)
    assert tuned.weights_sha256 == state_digest(tuned.model.network) != extractor.weights_sha256
    record = tuned.fine_tuning
    assert record["n_train_cases"] == 12 and record["device"] == "cpu" and len(record["loss_per_epoch"]) == 2
    settings = tuned.settings()
    assert settings["fine_tuning"]["epochs"] == 2 and settings["weights"].startswith("fine-tuned")
    assert "fine_tuning" not in extractor.settings()


def test_training_loss_falls_and_runs_are_reproducible(extractor):
    crops, labels = tiny_set()
    settings = FineTuning(epochs=4, batch_size=4, seed=3)
    first = fine_tune(extractor, crops, labels, range(N_CASES), settings=settings, device="cpu")
    losses = first.fine_tuning["loss_per_epoch"]
    assert losses[-1] < losses[0]
    again = fine_tune(extractor, crops, labels, range(N_CASES), settings=settings, device="cpu")
    assert again.weights_sha256 == first.weights_sha256
    other_seed = fine_tune(extractor, crops, labels, range(N_CASES),  # device None: CUDA if present, else CPU
                           settings=FineTuning(epochs=4, batch_size=4, seed=4))
    assert other_seed.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert other_seed.weights_sha256 != first.weights_sha256


def test_only_training_cases_are_read_and_overlap_is_refused(extractor):
    crops, labels = tiny_set()
    train, test = [0, 1, 2, 3, 5, 6, 8, 9], [4, 7, 10, 11, 12, 13, 14, 15]
    seen_crops, seen_labels = Recording(crops), Recording(labels)
    fine_tune(extractor, seen_crops, seen_labels, train, test_index=test, settings=QUICK, device="cpu")
    assert seen_crops.read == set(train) and seen_labels.read == set(train)
    with pytest.raises(InputError, match="share cases"):
        fine_tune(extractor, crops, labels, train, test_index=[9, 12], settings=QUICK, device="cpu")
    with pytest.raises(InputError, match="both classes"):
        fine_tune(extractor, crops, labels, [0, 2, 4], settings=QUICK, device="cpu")
    # a shared frozen cache of the whole cohort: still only the training rows are read
    cache = frozen_activations(extractor, crops, QUICK.trainable_blocks)
    cache.rows = Recording(list(cache.rows))
    fine_tune(extractor, [None] * N_CASES, labels, train, test_index=test, settings=QUICK, activations=cache,
              device="cpu")
    assert cache.rows.read == set(train)


def test_cached_activations_give_the_extractor_features(extractor):
    crops, labels = tiny_set()
    cache = frozen_activations(extractor, crops, QUICK.trainable_blocks)
    direct = np.stack([extractor.features_from_inputs(to_network_input(c)).mean(axis=0) for c in crops[:4]])
    np.testing.assert_allclose(features_from_activations(extractor, cache, range(4)), direct, rtol=1e-4, atol=1e-5)
    tuned = fine_tune(extractor, crops, labels, range(12), settings=QUICK, activations=cache, device="cpu")
    tuned_direct = tuned.features_from_inputs(to_network_input(crops[13])).mean(axis=0)
    np.testing.assert_allclose(features_from_activations(tuned, cache, [13])[0], tuned_direct, rtol=1e-4, atol=1e-5)
    assert not np.allclose(tuned_direct, direct[0][: len(tuned_direct)], atol=1e-3)


def test_fine_tuned_weights_cannot_be_rebuilt_from_the_imagenet_file(extractor):
    crops, labels = tiny_set()
    tuned = fine_tune(extractor, crops, labels, range(N_CASES), settings=QUICK, device="cpu")
    settings = tuned.settings()
    with pytest.raises(InputError, match="SHA-256"):
        get_deep_extractor(settings["backbone"], **settings["options"])


def test_saved_fine_tuned_weights_rebuild_the_same_extractor(extractor, tmp_path):
    crops, labels = tiny_set()
    tuned = fine_tune(extractor, crops, labels, range(N_CASES), settings=QUICK, device="cpu")
    with pytest.raises(InputError, match="safetensors"):
        save_fine_tuned_weights(tuned, tmp_path / "deep.pt")
    with pytest.raises(InputError, match="fine-tuned"):
        save_fine_tuned_weights(extractor, tmp_path / "deep.safetensors")
    path = tmp_path / "deep.safetensors"
    digest = save_fine_tuned_weights(tuned, path)
    assert digest == sha256_file(path) == tuned.settings()["weights_sha256"]
    settings = tuned.settings()
    rebuilt = get_deep_extractor(settings["backbone"], weights_path=path, device="cpu", **settings["options"])
    assert rebuilt.settings() == settings and rebuilt.fine_tuning == tuned.fine_tuning
    inputs = to_network_input(crops[3])
    assert np.array_equal(rebuilt.features_from_inputs(inputs), tuned.features_from_inputs(inputs))
    path.write_bytes(path.read_bytes()[:-8] + b"\0" * 8)  # the file changed after the bundle recorded it
    with pytest.raises(InputError, match="SHA-256"):
        get_deep_extractor(settings["backbone"], weights_path=path, device="cpu", **settings["options"])


def test_bad_fine_tuning_settings():
    for bad in ({"epochs": 0}, {"batch_size": 0}, {"trainable_blocks": -1}, {"learning_rate": 0}):
        with pytest.raises(InputError):
            FineTuning(**bad)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fine_tuning_picks_cuda_when_available(extractor):
    crops, labels = tiny_set()
    tuned = fine_tune(extractor, crops, labels, range(N_CASES), settings=QUICK)  # device None: auto
    assert tuned.device.type == "cuda" and tuned.fine_tuning["device"] == "cuda"
    assert next(tuned.model.parameters()).device.type == "cuda"
    assert np.isfinite(tuned.features_from_inputs(to_network_input(crops[0]))).all()
