"""Export: a (compressed) torch model to ONNX (QDQ) and a static-shape OpenVINO IR.

The ONNX export runs here (torch); the IR conversion runs in the OpenVINO child process
(see autocompress.evaluators.child). torch.onnx.export(dynamo=False) -> openvino read_model is the
cheapest path per candidate (0.1-0.3 s here, against ~1 s for openvino.convert_model).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from autocompress.core import CompressedModel, ModelError
from autocompress.evaluators.artifact import ExportedModel
from autocompress.evaluators.child import ConvertToIR, run_jobs, unwrap

OPSET = 17


def export(
    model: nn.Module | CompressedModel,
    directory: str | Path,
    *,
    input_shape: tuple[int, ...] | None = None,
    batch: int = 1,
    name: str = "model",
    compress_to_fp16: bool = False,
) -> ExportedModel:
    """Write ``name``.onnx and ``name``.xml/.bin into ``directory``.

    input_shape is one sample's shape (C, H, W); taken from a CompressedModel when
    omitted. The IR has a static batch of ``batch``: dynamic shapes cost INT8 models
    20-50% on this CPU. compress_to_fp16 stores float weights as fp16 (quantized weights
    are stored as int8 either way).
    """
    module, shape = _module_and_shape(model, input_shape)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    onnx_path = directory / f"{name}.onnx"
    ir_path = directory / f"{name}.xml"
    full_shape = (batch, *shape)
    export_onnx(module, full_shape, onnx_path)
    unwrap(run_jobs([ConvertToIR(str(onnx_path), str(ir_path), list(full_shape), compress_to_fp16)])[0])
    return ExportedModel(onnx_path=onnx_path, ir_path=ir_path, input_shape=full_shape, module=module)


def export_onnx(module: nn.Module, input_shape: tuple[int, ...], path: Path) -> Path:
    """ONNX with static shapes; fake quantizers become QuantizeLinear/DequantizeLinear pairs."""
    was_training = module.training
    module.eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(
                module,
                (torch.zeros(input_shape),),
                str(path),
                dynamo=False,
                opset_version=OPSET,
                input_names=["input"],
                output_names=["output"],
                do_constant_folding=True,
            )
    except Exception as error:
        raise ModelError(
            f"cannot export {type(module).__name__} to ONNX at input shape {list(input_shape)} "
            f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}). "
            "Check that forward() takes one tensor and uses ONNX-exportable operations."
        ) from error
    finally:
        module.train(was_training)
    return path


def _module_and_shape(model: nn.Module | CompressedModel, input_shape: tuple[int, ...] | None):
    if isinstance(model, CompressedModel):
        return model.module, tuple(input_shape or model.input_shape)
    if not isinstance(model, nn.Module):
        raise TypeError(f"export takes a torch.nn.Module or a CompressedModel, got {type(model).__name__}")
    if input_shape is None:
        raise ValueError("input_shape is required for a plain nn.Module, e.g. input_shape=(1, 28, 28)")
    return model, tuple(input_shape)
