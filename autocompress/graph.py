"""Model graph basics shared by the compression passes: what can be compressed, tracing, batches."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import fx, nn

COMPRESSIBLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


class ModelError(ValueError):
    """The model cannot be compressed as given (untraceable, nothing to compress, ...)."""


def trace(model: nn.Module) -> fx.GraphModule:
    """Symbolic trace of a copy of ``model``; a clear error when it cannot be traced."""
    try:
        return fx.symbolic_trace(copy.deepcopy(model))
    except Exception as error:  # fx raises many types (TraceError, TypeError, ...)
        raise ModelError(
            f"cannot trace {type(model).__name__} with torch.fx ({type(error).__name__}: {error}). "
            "Remove Python control flow that depends on tensor values from forward(), "
            "or wrap that part in a leaf module."
        ) from error


def compressible_layers(model: nn.Module) -> list[str]:
    """Names of the layers a policy can address (Conv and Linear modules), in order."""
    return [name for name, module in model.named_modules() if isinstance(module, COMPRESSIBLE)]


def inputs_of(batch: Any) -> torch.Tensor:
    inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(
            f"loader batches must be tensors or (inputs, targets) pairs, got {type(inputs).__name__}"
        )
    return inputs
