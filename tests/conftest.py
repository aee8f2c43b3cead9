"""Shared fixtures: real data (scikit-learn digits) and small models trained once per session."""

from __future__ import annotations

import os

import pytest
import torch

from autocompress.data import load_dataset, make_loaders
from autocompress.zoo import pretrained


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    # Keep runtime/tool caches out of $HOME and baseline checkpoints out of the user's cache.
    os.environ.setdefault("AUTOCOMPRESS_CACHE", str(tmp_path_factory.mktemp("autocompress-cache")))
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="session")
def digits_loaders(digits):
    return make_loaders(digits, batch_size=64)


@pytest.fixture(scope="session")
def cnn(_isolated_cache):
    """MnistCNN trained on digits (~97% test accuracy)."""
    return pretrained("mnist_cnn", "digits", epochs=2)


@pytest.fixture(scope="session")
def resnet(_isolated_cache):
    """A half-width ResNet-20 trained on digits: residual adds, downsample shortcuts."""
    return pretrained("resnet20", "digits", epochs=2, width=0.5)


ENTRY_POINTS = """
from autocompress.data import load_dataset, make_loaders
from autocompress.zoo import pretrained


def model():
    return pretrained("mnist_cnn", "digits", epochs=2)


def loaders():
    return make_loaders(load_dataset("digits"), batch_size=64)
"""


@pytest.fixture
def entry_points(tmp_path, monkeypatch) -> str:
    """An importable module with model() and loaders() entry points for search configs; its name."""
    (tmp_path / "autocompress_test_entry_points.py").write_text(ENTRY_POINTS)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "autocompress_test_entry_points"
