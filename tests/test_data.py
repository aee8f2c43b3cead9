"""Tests for autocompress.data: fixed splits, stratification, normalisation, loaders."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from autocompress.data import DATASETS, DatasetSplits, load_dataset, make_loaders

EXPECTED = {
    # name: (train, val, test, input_shape)
    "mnist5k": (3000, 1000, 1000, (1, 28, 28)),
    "digits": (1257, 180, 360, (1, 8, 8)),
}


def test_datasets_constant() -> None:
    assert set(DATASETS) == set(EXPECTED)


@pytest.mark.parametrize("name", DATASETS)
def test_split_sizes_shapes_dtypes(name: str) -> None:
    s = load_dataset(name)
    n_train, n_val, n_test, shape = EXPECTED[name]
    assert isinstance(s, DatasetSplits)
    assert s.name == name and s.num_classes == 10 and s.input_shape == shape
    for ds, n in ((s.train, n_train), (s.val, n_val), (s.test, n_test)):
        x, y = ds.tensors
        assert x.shape == (n, *shape)
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert y.shape == (n,)
        assert int(y.min()) >= 0 and int(y.max()) < 10


@pytest.mark.parametrize("name", DATASETS)
def test_splits_disjoint_and_stratified(name: str) -> None:
    s = load_dataset(name)
    # Disjointness: no image appears in two splits (rows hashed as bytes).
    seen: set[bytes] = set()
    total = 0
    for ds in (s.train, s.val, s.test):
        rows = {r.tobytes() for r in ds.tensors[0].reshape(len(ds), -1).numpy()}
        seen |= rows
        total += len(rows)
    assert len(seen) == total
    # Stratification: each split's class proportions match the train split's within 1 sample/class.
    train_frac = np.bincount(s.train.tensors[1].numpy(), minlength=10) / len(s.train)
    for ds in (s.val, s.test):
        counts = np.bincount(ds.tensors[1].numpy(), minlength=10)
        assert np.all(np.abs(counts - train_frac * len(ds)) <= 1.5), counts


@pytest.mark.parametrize("name", DATASETS)
def test_normalised_with_train_stats(name: str) -> None:
    s = load_dataset(name)
    x = s.train.tensors[0]
    assert abs(float(x.mean())) < 1e-4
    assert abs(float(x.std()) - 1.0) < 1e-3
    # Val/test use the train statistics, so they are close to but not exactly standardised.
    assert abs(float(s.test.tensors[0].mean())) < 0.1


def test_deterministic_and_cached() -> None:
    a = load_dataset("digits")
    assert load_dataset("digits") is a  # in-process cache
    load_dataset.cache_clear()
    try:
        b = load_dataset("digits")
        assert b is not a
        for da, db in ((a.train, b.train), (a.val, b.val), (a.test, b.test)):
            assert torch.equal(da.tensors[0], db.tensors[0])
            assert torch.equal(da.tensors[1], db.tensors[1])
    finally:
        load_dataset.cache_clear()


def test_splits_frozen() -> None:
    s = load_dataset("digits")
    with pytest.raises(AttributeError):
        s.name = "other"  # type: ignore[misc]


def test_unknown_name_message() -> None:
    with pytest.raises(ValueError) as exc:
        load_dataset("cifar10")
    msg = str(exc.value)
    assert "cifar10" in msg
    for name in DATASETS:
        assert name in msg
    with pytest.raises(ValueError, match="cifar10"):
        make_loaders("cifar10")


def test_make_loaders() -> None:
    train, val, test = make_loaders("digits", batch_size=100, seed=3)
    assert train.batch_size == val.batch_size == test.batch_size == 100
    assert len(train) == 13 and len(val) == 2 and len(test) == 4
    # Val/test keep dataset order; train is shuffled.
    s = load_dataset("digits")
    assert torch.equal(next(iter(val))[1], s.val.tensors[1][:100])
    first = next(iter(train))[1]
    assert not torch.equal(first, s.train.tensors[1][:100])


def test_make_loaders_seeded_shuffle() -> None:
    splits = load_dataset("digits")

    def order(seed: int) -> torch.Tensor:
        train, _, _ = make_loaders(splits, batch_size=64, seed=seed)
        return torch.cat([y for _, y in train])

    assert torch.equal(order(0), order(0))
    assert not torch.equal(order(0), order(1))
    # All samples exactly once per epoch.
    assert torch.equal(order(0).sort().values, splits.train.tensors[1].sort().values)


def test_make_loaders_bad_batch_size() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        make_loaders("digits", batch_size=0)
