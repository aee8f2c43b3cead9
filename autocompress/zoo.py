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
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from autocompress.data import load_dataset, make_loaders
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


def _ch(base: int, width: float) -> int:
    """Channel count for a width multiplier; at least 1 so tiny widths still build."""
    if width <= 0:
        raise ValueError(f"width must be > 0, got {width}")
    return max(1, int(round(base * width)))


def _kaiming_init(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.kaiming_uniform_(m.weight, nonlinearity="linear")
            nn.init.zeros_(m.bias)


class MnistCNN(nn.Module):
    """Small 3-conv CNN for 1-channel digit images (works for 8x8 and 28x28)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: float = 1.0) -> None:
        super().__init__()
        c1, c2, c3 = _ch(32, width), _ch(64, width), _ch(64, width)
        # Conv bias is redundant before BN; omitting it keeps conv-BN folding exact.
        self.conv1 = nn.Conv2d(in_channels, c1, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c2)
        self.relu2 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(c2, c3, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(c3)
        self.relu3 = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c3, num_classes)
        _kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        x = self.pool(x)
        x = self.relu3(self.bn3(self.conv3(x)))
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)


class BasicBlock(nn.Module):
    """Two KxK convs (3x3 by default) plus shortcut (torchvision layout, so pruning
    tools recognise it). ``kernel_size`` must be odd; padding keeps the spatial size."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, kernel_size: int = 3) -> None:
        super().__init__()
        _check_kernel_size(kernel_size)
        pad = kernel_size // 2
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size, stride=stride, padding=pad, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        # Separate ReLU modules (not one reused) so quantization observers and
        # FX graph nodes map one-to-one onto call sites.
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, kernel_size, stride=1, padding=pad, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Branching on a module attribute (not a tensor) is resolved at trace time.
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + identity  # plain `+` so FX shows an add node that passes can find
        return self.relu2(out)


RESNET_KERNEL_SIZES = (1, 3, 5, 7)


def _check_kernel_size(kernel_size: int) -> None:
    if isinstance(kernel_size, bool) or kernel_size not in RESNET_KERNEL_SIZES:
        raise ValueError(f"kernel_size must be one of {RESNET_KERNEL_SIZES} (odd), got {kernel_size!r}")


def _stage_widths(width: float | tuple[float, float, float]) -> tuple[float, float, float]:
    """A width multiplier for each of the 3 stages: one number for all, or 3 numbers."""
    if isinstance(width, (int, float)) and not isinstance(width, bool):
        return (width, width, width)
    try:
        widths = tuple(width)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"width must be a number or 3 per-stage numbers, got {width!r}") from None
    if len(widths) != 3 or not all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in widths):
        raise ValueError(f"width must be a number or 3 per-stage numbers, got {width!r}")
    return widths  # type: ignore[return-value]


class ResNet20(nn.Module):
    """CIFAR-style ResNet-20 (He et al. 2016, section 4.2) with a width multiplier.

    width: one multiplier, or 3 per-stage multipliers (the stem follows stage 1).
    blocks_per_stage: BasicBlocks per stage ((3, 3, 3) is ResNet-20).
    kernel_size: of the convs inside the blocks (odd: 1, 3, 5, 7); the stem stays 3x3
        and the downsample shortcuts 1x1.
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        width: float | tuple[float, float, float] = 1.0,
        blocks_per_stage: tuple[int, int, int] = (3, 3, 3),
        kernel_size: int = 3,
    ) -> None:
        super().__init__()
        if len(blocks_per_stage) != 3 or any(int(n) < 1 for n in blocks_per_stage):
            raise ValueError(f"blocks_per_stage must be 3 positive ints, got {blocks_per_stage!r}")
        _check_kernel_size(kernel_size)
        w1, w2, w3 = _stage_widths(width)
        c1, c2, c3 = _ch(16, w1), _ch(32, w2), _ch(64, w3)
        self.conv1 = nn.Conv2d(in_channels, c1, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c1)
        self.relu = nn.ReLU()
        self.layer1 = self._make_stage(c1, c1, int(blocks_per_stage[0]), stride=1, kernel_size=kernel_size)
        self.layer2 = self._make_stage(c1, c2, int(blocks_per_stage[1]), stride=2, kernel_size=kernel_size)
        self.layer3 = self._make_stage(c2, c3, int(blocks_per_stage[2]), stride=2, kernel_size=kernel_size)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c3, num_classes)
        _kaiming_init(self)

    @staticmethod
    def _make_stage(in_planes: int, planes: int, blocks: int, stride: int, kernel_size: int = 3) -> nn.Sequential:
        layers = [BasicBlock(in_planes, planes, stride, kernel_size)]
        layers += [BasicBlock(planes, planes, 1, kernel_size) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, depthwise 3x3 (groups=channels), linear 1x1 project.

    The residual add is used when stride is 1 and the width is kept, as in MobileNetV2.
    """

    def __init__(self, in_planes: int, out_planes: int, expand: int = 2, stride: int = 1) -> None:
        super().__init__()
        hidden = in_planes * expand
        self.expand = nn.Conv2d(in_planes, hidden, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.relu1 = nn.ReLU6()
        self.depthwise = nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False)
        self.bn2 = nn.BatchNorm2d(hidden)
        self.relu2 = nn.ReLU6()
        self.project = nn.Conv2d(hidden, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)  # linear bottleneck: no activation
        self.use_residual = stride == 1 and in_planes == out_planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.expand(x)))
        out = self.relu2(self.bn2(self.depthwise(out)))
        out = self.bn3(self.project(out))
        # A Python bool attribute, resolved at trace time.
        return out + x if self.use_residual else out


class ConcatBlock(nn.Module):
    """Two parallel branches joined with ``torch.cat`` along channels (Inception style):
    a 1x1 conv, and a 1x1 conv followed by a depthwise 3x3 conv."""

    def __init__(self, in_planes: int, left: int, right: int) -> None:
        super().__init__()
        self.left = nn.Conv2d(in_planes, left, 1, bias=False)
        self.bn_left = nn.BatchNorm2d(left)
        self.relu_left = nn.ReLU6()
        self.right = nn.Conv2d(in_planes, right, 1, bias=False)
        self.bn_right = nn.BatchNorm2d(right)
        self.relu_right = nn.ReLU6()
        self.right_dw = nn.Conv2d(right, right, 3, padding=1, groups=right, bias=False)
        self.bn_right_dw = nn.BatchNorm2d(right)
        self.relu_right_dw = nn.ReLU6()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = self.relu_left(self.bn_left(self.left(x)))
        right = self.relu_right(self.bn_right(self.right(x)))
        right = self.relu_right_dw(self.bn_right_dw(self.right_dw(right)))
        return torch.cat([left, right], dim=1)


class MobileNetCat(nn.Module):
    """A small MobileNetV2-style net with depthwise convs, residual adds and a concat.

    stem conv-BN-ReLU6, three inverted residual blocks (the 1st and 3rd with a residual
    add), a two-branch block joined by ``torch.cat``, a 1x1 head conv, avgpool, fc.
    Its coupled channels (residual adds, depthwise convs, concat offsets) exercise
    structured pruning; ~10k parameters at width 1.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: float = 1.0) -> None:
        super().__init__()
        c1, c2, half, head = _ch(16, width), _ch(24, width), _ch(16, width), _ch(64, width)
        self.conv1 = nn.Conv2d(in_channels, c1, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c1)
        self.relu = nn.ReLU6()
        self.block1 = InvertedResidual(c1, c1, expand=2, stride=1)
        self.block2 = InvertedResidual(c1, c2, expand=2, stride=2)
        self.block3 = InvertedResidual(c2, c2, expand=2, stride=1)
        self.mix = ConcatBlock(c2, half, half)
        self.head = nn.Conv2d(2 * half, head, 1, bias=False)
        self.bn_head = nn.BatchNorm2d(head)
        self.relu_head = nn.ReLU6()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(head, num_classes)
        _kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.block3(self.block2(self.block1(x)))
        x = self.mix(x)
        x = self.relu_head(self.bn_head(self.head(x)))
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)


MODELS: dict[str, Callable[..., nn.Module]] = {"mnist_cnn": MnistCNN, "resnet20": ResNet20, "mobilenet_cat": MobileNetCat}


def _check_name(name: str) -> None:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; allowed: {', '.join(sorted(MODELS))}")


def build_model(
    name: str, input_shape: tuple[int, int, int], num_classes: int, **kwargs: Any
) -> nn.Module:
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


# Bump when the training recipe below changes, so stale cached weights are not reused.
_RECIPE_VERSION = 2
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
        name, dataset, epochs, seed, model_kwargs,
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
        name, dataset, stats["steps"], stats["seconds"], stats["final_loss"], path,
    )
    _atomic_save(model.state_dict(), path)
    return model.eval()
