"""Where the compression core trains: the device and autocast precision of its torch passes.

Fine-tuning, distillation, quantizer calibration and the search's sensitivity passes take
``device=`` and ``autocast=``; export and measurement stay on the CPU / the target. Each
pass moves its module to the device for its duration and back afterwards, so what the
core returns lives where the model came from (the CPU) and exports unchanged.

device: "auto" (CUDA when ``torch.cuda.is_available()``, else the CPU), "cpu", "cuda",
    "cuda:N", or a torch.device of those types.
autocast: None (float32), "bf16" or "fp16": the forward pass and the loss run under
    ``torch.autocast`` on the device's type; parameters stay float32. fp16 needs CUDA (the
    built-in loop then scales the loss with torch.amp.GradScaler); on the CPU use bf16.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["AUTOCAST", "Accelerator", "to_device"]

AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")
_ALLOWED_DEVICES = '"auto", "cpu", "cuda", "cuda:N" or a torch.device'


@dataclasses.dataclass(frozen=True)
class Accelerator:
    """A validated (device, autocast) pair, as the public functions' ``device=`` and
    ``autocast=`` give it (see the module docstring). Built from bad values it raises a
    ValueError naming the parameter; the device is looked up (is CUDA visible?) only by
    :attr:`torch_device`, where the pass runs: a Ray driver without a GPU may ship "cuda"
    to its workers."""

    device: str = "auto"
    autocast: str | None = None

    def __post_init__(self) -> None:
        device = self.device
        if isinstance(device, torch.device):
            device = str(device)
        if not isinstance(device, str) or not _DEVICE.fullmatch(device):
            raise ValueError(f"device={self.device!r} is not a device; allowed: {_ALLOWED_DEVICES}")
        object.__setattr__(self, "device", device)
        if self.autocast is not None and (
            not isinstance(self.autocast, str) or self.autocast not in AUTOCAST
        ):
            raise ValueError(f"autocast={self.autocast!r} is not a precision; allowed: None, 'bf16', 'fp16'")
        if self.autocast == "fp16" and device == "cpu":
            raise ValueError(_FP16_ON_CPU)

    @property
    def torch_device(self) -> torch.device:
        """The device, resolved on this machine: ValueError when it asks for a CUDA device
        that is not visible here, or for fp16 where it would run on the CPU."""
        if self.device == "auto":
            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        else:
            device = torch.device(self.device)
            if device.type == "cuda":
                visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
                if visible == 0:
                    raise ValueError(
                        f'device="{self.device}": no CUDA device is visible on this machine; '
                        'use device="cpu" or device="auto" (CUDA when there is one)'
                    )
                if device.index is not None and device.index >= visible:
                    raise ValueError(
                        f'device="{self.device}": only {visible} CUDA device(s) are visible '
                        f'(cuda:0..cuda:{visible - 1}); use one of those, or device="auto"'
                    )
        if self.autocast == "fp16" and device.type == "cpu":
            raise ValueError(_FP16_ON_CPU)
        return device

    def autocast_context(self, device: torch.device | None = None) -> contextlib.AbstractContextManager:
        """``torch.autocast`` for this precision on ``device`` (default: :attr:`torch_device`),
        or a no-op context when autocast is None."""
        if self.autocast is None:
            return contextlib.nullcontext()
        device = device or self.torch_device
        return torch.autocast(device.type, dtype=AUTOCAST[self.autocast])

    def grad_scaler(self, device: torch.device | None = None) -> torch.amp.GradScaler | None:
        """A GradScaler for fp16 on CUDA (fp16 gradients underflow without one), else None."""
        device = device or self.torch_device
        if self.autocast == "fp16" and device.type == "cuda":
            return torch.amp.GradScaler("cuda")
        return None


_FP16_ON_CPU = (
    "autocast='fp16' runs on CUDA only and the device here is the CPU; "
    "on the CPU use autocast='bf16' (or None for float32)"
)


def to_device(batch: Any, device: torch.device) -> Any:
    """``batch`` with every tensor in it moved to ``device``: a tensor, or tuples, lists
    and dicts of them (nested); anything else is returned as it is."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=device.type == "cuda")
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # a namedtuple
        return type(batch)(*(to_device(item, device) for item in batch))
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(item, device) for item in batch)
    if isinstance(batch, Mapping):
        return {key: to_device(value, device) for key, value in batch.items()}
    return batch


def _device_of(module: nn.Module) -> torch.device | None:
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return None


@contextlib.contextmanager
def placed(device: torch.device, *modules: nn.Module | None) -> Iterator[None]:
    """Move ``modules`` (None entries skipped) to ``device`` for the block, and each back to
    the device it was on afterwards, also when the block raises."""
    moved: list[tuple[nn.Module, torch.device]] = []
    try:
        for module in modules:
            if module is None:
                continue
            original = _device_of(module)
            if original is not None and original != device:
                moved.append((module, original))
                module.to(device)
        yield
    finally:
        for module, original in reversed(moved):
            module.to(original)
