"""Built-in models, a name registry and cached "pretrained" weights trained locally.

Every model here is traceable with ``torch.fx.symbolic_trace`` (no control flow
on tensor values) and exports with ``torch.onnx.export(dynamo=False)``, because
the compression passes rewrite FX graphs and the OpenVINO path goes via ONNX.
Weights are never downloaded: :func:`pretrained` trains on a bundled dataset
once and caches the state_dict on disk.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autocompress.data import load_dataset, make_loaders
from autocompress.models import BasicBlock, ConcatBlock, InvertedResidual, MnistCNN, MobileNetCat, ResNet20
from autocompress.training import train

__all__ = [
    "MnistCNN",
    "BasicBlock",
    "ResNet20",
    "InvertedResidual",
    "ConcatBlock",
    "MobileNetCat",
    "MODELS",
    "build_model",
    "parse_model_spec",
    "pretrained",
    "default_cache_dir",
]

log = logging.getLogger(__name__)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "mnist_cnn": MnistCNN,
    "resnet20": ResNet20,
    "mobilenet_cat": MobileNetCat,
}


def _check_name(name: str) -> None:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; allowed: {', '.join(sorted(MODELS))}")


def build_model(name: str, input_shape: tuple[int, int, int], num_classes: int, **kwargs: Any) -> nn.Module:
    """Instantiate zoo model ``name`` for (C, H, W) inputs and ``num_classes`` outputs."""
    _check_name(name)
    if len(input_shape) != 3:
        raise ValueError(f"input_shape must be (C, H, W), got {tuple(input_shape)!r}")
    try:
        return MODELS[name](in_channels=int(input_shape[0]), num_classes=int(num_classes), **kwargs)
    except TypeError as exc:  # unknown kwarg: say which model and what it was given
        raise ValueError(f"bad arguments for model {name!r}: {kwargs!r} ({exc})") from exc


_SPEC_SYNTAX = "zoo:NAME[:key=value,...] (e.g. zoo:resnet20:width=2)"
_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _parse_value(text: str) -> int | float | str:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_model_spec(spec: str) -> tuple[str, dict[str, int | float | str]]:
    """Parse ``zoo:NAME[:key=value,...]`` into (name, kwargs).

    Values become int if possible, else float, else stay str.
    """
    parts = spec.split(":", 2)
    if len(parts) < 2 or parts[0] != "zoo" or not parts[1]:
        raise ValueError(f"bad model spec {spec!r}; expected {_SPEC_SYNTAX}")
    name = parts[1]
    _check_name(name)
    kwargs: dict[str, int | float | str] = {}
    if len(parts) == 3:
        for item in parts[2].split(","):
            key, sep, value = item.partition("=")
            key, value = key.strip(), value.strip()
            if not sep or not _KEY_RE.match(key) or not value:
                raise ValueError(f"bad model spec {spec!r} near {item!r}; expected {_SPEC_SYNTAX}")
            if key in kwargs:
                raise ValueError(f"bad model spec {spec!r}: {key!r} given twice")
            kwargs[key] = _parse_value(value)
    return name, kwargs


# Bump when the training recipe below or a data split changes, so stale cached weights are
# not reused (3: mnist5k's validation split grew from 500 to 1000 images, taken from training).
_RECIPE_VERSION = 3
# Adam at 1e-2 with cosine decay: best accuracy per step of {1e-3, 3e-3, 5e-3, 1e-2}
# for both zoo models at these tiny epoch budgets (MnistCNN gains the most).
_PRETRAIN_LR = 1e-2
_PRETRAIN_BATCH = 64


def default_cache_dir() -> Path:
    """``$AUTOCOMPRESS_CACHE`` if set, else ``~/.cache/autocompress``."""
    env = os.environ.get("AUTOCOMPRESS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "autocompress"


def _cache_path(
    cache_dir: Path, name: str, dataset: str, epochs: int, seed: int, model_kwargs: dict[str, Any]
) -> Path:
    key = {
        "recipe": _RECIPE_VERSION,
        "name": name,
        "dataset": dataset,
        "epochs": epochs,
        "seed": seed,
        "kwargs": model_kwargs,
    }
    canonical = json.dumps(key, sort_keys=True, default=repr)
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:10]
    kw = "-".join(f"{k}={model_kwargs[k]!r}" for k in sorted(model_kwargs)) or "default"
    # Readable prefix for humans; the digest guarantees distinct configs never collide
    # even after unsafe characters are squashed.
    readable = re.sub(r"[^A-Za-z0-9_.=-]+", "_", f"{name}-{dataset}-{kw}-e{epochs}-s{seed}")
    return cache_dir / f"{readable}-r{_RECIPE_VERSION}-{digest}.pt"


def _atomic_save(state: dict[str, torch.Tensor], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(state, fh)
        os.replace(tmp, path)  # atomic on POSIX/Windows: readers never see half a file
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def pretrained(
    name: str,
    dataset: str = "mnist5k",
    *,
    epochs: int = 8,
    cache_dir: str | Path | None = None,
    seed: int = 0,
    **model_kwargs: Any,
) -> nn.Module:
    """Return zoo model ``name`` trained on ``dataset``'s train split, in eval mode.

    Weights are cached on disk keyed by (name, dataset, kwargs, epochs, seed);
    a cache hit loads instead of training. Deterministic for a given seed.
    """
    _check_name(name)
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    splits = load_dataset(dataset)
    path = _cache_path(
        Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir(),
        name,
        dataset,
        epochs,
        seed,
        model_kwargs,
    )

    torch.manual_seed(seed)
    model = build_model(name, splits.input_shape, splits.num_classes, **model_kwargs)

    if path.is_file():
        try:
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            log.info("pretrained %s/%s: loaded cached weights from %s", name, dataset, path)
            return model.eval()
        except Exception as exc:  # corrupt or incompatible file: retrain and overwrite
            log.warning("pretrained: ignoring unreadable cache file %s (%s); retraining", path, exc)

    train_loader, _, _ = make_loaders(splits, batch_size=_PRETRAIN_BATCH, seed=seed)
    stats = train(model, train_loader, epochs=epochs, lr=_PRETRAIN_LR, optimizer="adam", seed=seed)
    log.info(
        "pretrained %s/%s: trained %d steps in %.1fs (final loss %.4f); caching to %s",
        name,
        dataset,
        stats["steps"],
        stats["seconds"],
        stats["final_loss"],
        path,
    )
    _atomic_save(model.state_dict(), path)
    return model.eval()
