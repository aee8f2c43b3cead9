"""Model size: bytes on disk (IR, ONNX), parameters, non-zeros and bits-weighted size."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.utils.flop_counter import FlopCounterMode

from autocompress.evaluators.artifact import ExportedModel, Measurement

FLOAT_BITS = 32


class ModelSize:
    """Size of an exported model, and its FLOPs per sample.

    Disk sizes come from the files. With the torch module attached, it also counts
    parameters, non-zeros (after masks) and bits-weighted bytes: a weight whose
    parametrization declares ``bits`` (a fake quantizer) counts at that width, every
    other parameter at 32 bits. Quantizers' own scales are not counted.
    """

    name = "size"

    def __call__(self, model: ExportedModel) -> Measurement:
        weights = model.ir_bin_path.stat().st_size
        result: Measurement = {
            "ir_bytes": weights + model.ir_path.stat().st_size,
            "ir_weights_bytes": weights,  # the .bin alone: what quantization shrinks
            "onnx_bytes": model.onnx_path.stat().st_size,
        }
        if model.module is not None:
            result.update(parameter_stats(model.module))
            result["flops"] = count_flops(model.module, (1, *model.input_shape[1:]))
        return result


def count_flops(module: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Floating-point operations of one forward pass (torch's FlopCounterMode; a MAC counts 2)."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            module(torch.zeros(input_shape))
    finally:
        module.train(was_training)
    return int(counter.get_total_flops())


def parameter_stats(module: nn.Module) -> Measurement:
    parameters = nonzero = bits = 0
    for owner in module.modules():
        if _is_quantizer_state(owner):
            continue
        for parameter in owner.parameters(recurse=False):
            parameters += parameter.numel()
            nonzero += int((parameter != 0).sum())
            bits += parameter.numel() * FLOAT_BITS
        if parametrize.is_parametrized(owner):
            for name, chain in owner.parametrizations.items():
                value = getattr(owner, name)  # effective tensor, masks and quantization applied
                width = min((getattr(p, "bits", FLOAT_BITS) or FLOAT_BITS) for p in chain)
                parameters += value.numel()
                nonzero += int((value != 0).sum())
                bits += value.numel() * width
    return {
        "parameters": parameters,
        "nonzero_parameters": nonzero,
        "bits_weighted_bytes": bits // 8,
    }


def _is_quantizer_state(owner: nn.Module) -> bool:
    # Parametrization containers hold the original tensor and the quantizer's scales;
    # the effective tensor is counted on the owning layer instead.
    return isinstance(owner, parametrize.ParametrizationList) or hasattr(owner, "bits")
