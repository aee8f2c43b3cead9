"""Tests for autocompress.training: metrics, predict/evaluate, and the train loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from autocompress.data import load_dataset, make_loaders
from autocompress.training import evaluate_torch, predict, top1_accuracy, train
from autocompress.zoo import MnistCNN


def _tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return MnistCNN(in_channels=1, num_classes=10, width=0.25)


@pytest.fixture(scope="module")
def loaders() -> tuple[DataLoader, DataLoader, DataLoader]:
    return make_loaders("digits", batch_size=64, seed=0)


def test_top1_accuracy() -> None:
    logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    assert top1_accuracy(logits, np.array([1, 0, 0, 0])) == pytest.approx(0.75)
    assert top1_accuracy(logits, np.array([1, 0, 1, 0])) == 1.0
    assert top1_accuracy(logits, np.array([0, 1, 0, 1])) == 0.0
    with pytest.raises(ValueError):
        top1_accuracy(np.zeros((0, 2)), np.zeros(0, dtype=np.int64))


def test_predict_shapes_and_restores_mode(loaders) -> None:
    _, val, _ = loaders
    model = _tiny_model()
    model.train()
    logits, targets = predict(model, val)
    assert model.training  # previous flag restored
    assert logits.shape == (180, 10) and logits.dtype == np.float32
    assert np.array_equal(targets, load_dataset("digits").val.tensors[1].numpy())
    model.eval()
    predict(model, val)
    assert not model.training
    acc = evaluate_torch(model, val)
    assert 0.0 <= acc <= 1.0
    assert evaluate_torch(model, val, metric=lambda lg, t: float(len(t))) == 180.0


def test_train_lowers_loss_and_improves_accuracy(loaders) -> None:
    train_loader, val, _ = loaders
    model = _tiny_model()
    before = evaluate_torch(model, val)
    first = train(model, train_loader, epochs=1, lr=1e-2, max_steps=3)["final_loss"]
    stats = train(model, train_loader, epochs=2, lr=1e-2)
    assert stats["final_loss"] < first
    assert not model.training  # left in eval mode
    assert set(stats) == {"steps", "final_loss", "seconds"}
    assert stats["seconds"] > 0
    assert evaluate_torch(model, val) > max(before + 0.3, 0.6)


def test_fractional_epochs_and_max_steps(loaders) -> None:
    train_loader, _, _ = loaders  # 1257 samples / 64 = 20 batches
    assert len(train_loader) == 20
    model = _tiny_model()
    assert train(model, train_loader, epochs=0.5)["steps"] == 10
    assert train(model, train_loader, epochs=1.5)["steps"] == 30  # spans an epoch boundary
    assert train(model, train_loader, epochs=2, max_steps=7)["steps"] == 7
    assert train(model, train_loader, epochs=0.01)["steps"] == 1  # never zero steps
    assert train(model, train_loader, epochs=1, optimizer="sgd", weight_decay=1e-4)["steps"] == 20


def test_train_deterministic(loaders) -> None:
    train_loader, val, _ = loaders
    outs = []
    for _ in range(2):
        model = _tiny_model()
        # Fresh loaders so the shuffle generator restarts too.
        tl, _, _ = make_loaders("digits", batch_size=64, seed=0)
        train(model, tl, epochs=0.5, seed=0)
        outs.append(predict(model, val)[0])
    np.testing.assert_array_equal(outs[0], outs[1])


def test_custom_loss_and_extra_loss(loaders) -> None:
    train_loader, _, _ = loaders
    model = _tiny_model()
    calls = {"loss": 0, "extra": 0}

    def loss_fn(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        calls["loss"] += 1
        return nn.functional.cross_entropy(outputs, targets)

    def extra(inputs: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
        calls["extra"] += 1
        assert inputs.shape[1:] == (1, 8, 8) and outputs.shape == (len(inputs), 10)
        return 1e-4 * sum(p.abs().sum() for p in model.parameters())

    base = train(model, train_loader, max_steps=4, loss_fn=loss_fn)
    assert calls["loss"] == 4
    stats = train(model, train_loader, max_steps=4, extra_loss=lambda i, o: torch.tensor(100.0))
    assert stats["final_loss"] > 100 > base["final_loss"]
    train(model, train_loader, max_steps=2, extra_loss=extra)
    assert calls["extra"] == 2


def test_nan_loss_raises_with_step(loaders) -> None:
    train_loader, _, _ = loaders
    model = _tiny_model()
    state = {"n": 0}

    def flaky_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        state["n"] += 1
        loss = nn.functional.cross_entropy(outputs, targets)
        return loss * math.nan if state["n"] == 3 else loss

    with pytest.raises(ValueError, match=r"nan at step 3"):
        train(model, train_loader, epochs=1, loss_fn=flaky_loss)
    assert not model.training
    with pytest.raises(ValueError, match="inf"):
        train(model, train_loader, max_steps=2, extra_loss=lambda i, o: torch.tensor(math.inf))


def test_bad_arguments() -> None:
    model = _tiny_model()
    empty = DataLoader(TensorDataset(torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long)))
    with pytest.raises(ValueError, match="empty"):
        train(model, empty)
    loader = DataLoader(TensorDataset(torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.long)))
    with pytest.raises(ValueError, match="optimizer"):
        train(model, loader, optimizer="lion")
    with pytest.raises(ValueError, match="epochs"):
        train(model, loader, epochs=0)
    with pytest.raises(ValueError, match="max_steps"):
        train(model, loader, max_steps=0)
    with pytest.raises(ValueError, match="no batches"):
        predict(model, empty)
