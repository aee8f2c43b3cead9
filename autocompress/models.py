"""Model architectures defined in code: the zoo's demo models and the built-in students' families.

Every model here is traceable with ``torch.fx.symbolic_trace`` (no control flow on tensor
values) and exports with ``torch.onnx.export(dynamo=False)``: the compression passes
rewrite FX graphs and the OpenVINO path goes through ONNX. Plain torch: no data, no
training, so the compression core can build students from them.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "MnistCNN",
    "BasicBlock",
    "ResNet20",
    "RESNET_KERNEL_SIZES",
    "InvertedResidual",
    "ConcatBlock",
    "MobileNetCat",
]


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
    def _make_stage(
        in_planes: int, planes: int, blocks: int, stride: int, kernel_size: int = 3
    ) -> nn.Sequential:
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

    ``blocks`` (1-3) inverted residual blocks are kept: 2 drops the first (the one at full
    resolution), 1 also the third; a dropped block is an identity, so the remaining
    modules keep their names (and a shallower net can take a deeper one's weights).
    """

    def __init__(
        self, in_channels: int = 3, num_classes: int = 10, width: float = 1.0, blocks: int = 3
    ) -> None:
        super().__init__()
        if isinstance(blocks, bool) or blocks not in (1, 2, 3):
            raise ValueError(f"blocks must be 1, 2 or 3 (inverted residual blocks kept), got {blocks!r}")
        c1, c2, half, head = _ch(16, width), _ch(24, width), _ch(16, width), _ch(64, width)
        self.conv1 = nn.Conv2d(in_channels, c1, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c1)
        self.relu = nn.ReLU6()
        # Only the residual blocks (stride 1, width kept) can go without changing shapes.
        self.block1 = InvertedResidual(c1, c1, expand=2, stride=1) if blocks == 3 else nn.Identity()
        self.block2 = InvertedResidual(c1, c2, expand=2, stride=2)
        self.block3 = InvertedResidual(c2, c2, expand=2, stride=1) if blocks >= 2 else nn.Identity()
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
