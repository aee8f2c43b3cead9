"""Export: a (compressed) torch model to ONNX (QDQ) and a static-shape OpenVINO IR.

The ONNX export runs here (torch); the IR conversion runs in the OpenVINO child process
(see autocompress.evaluators.child). torch.onnx.export(dynamo=False) -> openvino read_model is the
cheapest path per candidate (0.1-0.3 s here, against ~1 s for openvino.convert_model).
"""

from __future__ import annotations

import contextlib
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from autocompress.core import CompressedModel, ModelError
from autocompress.evaluators.artifact import ExportedModel
from autocompress.evaluators.child import ConvertToIR, Infer, run_jobs, unwrap
from autocompress.evaluators.torch_side import module_logits
from autocompress.graph import trace

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


def export_onnx(
    module: nn.Module, input_shape: tuple[int, ...], path: Path, *, symbolic_batch: bool = True
) -> Path:
    """ONNX (batch dimension symbolic unless ``symbolic_batch=False``, which
    benchmarks/export.py compares with); fake quantizers become QuantizeLinear/DequantizeLinear pairs."""
    was_training = module.training
    module.eval()
    try:
        with warnings.catch_warnings(), torch.no_grad(), _no_fused_fast_paths():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(
                module,
                (torch.zeros(input_shape),),
                str(path),
                dynamo=False,
                opset_version=OPSET,
                input_names=["input"],
                output_names=["output"],
                # The batch stays symbolic in ONNX: computations on it (a class token expanded to
                # the batch) stay computations, so the IR, static at ``input_shape``, can be
                # reshaped to the accuracy pass's batch; OpenVINO folds them when it compiles.
                dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}} if symbolic_batch else None,
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


@contextlib.contextmanager
def _no_fused_fast_paths():
    """Under no_grad in eval mode, nn.TransformerEncoderLayer and nn.MultiheadAttention run
    torch's fused kernels (aten::_transformer_encoder_layer_fwd, ...), which ONNX cannot
    express; switched off, the same module exports as plain MatMul/Softmax ops."""
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)


def _module_and_shape(model: nn.Module | CompressedModel, input_shape: tuple[int, ...] | None):
    if isinstance(model, CompressedModel):
        return model.module, tuple(input_shape or model.input_shape)
    if not isinstance(model, nn.Module):
        raise TypeError(f"export takes a torch.nn.Module or a CompressedModel, got {type(model).__name__}")
    if input_shape is None:
        raise ValueError("input_shape is required for a plain nn.Module, e.g. input_shape=(1, 28, 28)")
    return model, tuple(input_shape)


def check_model(model: nn.Module, example_input: torch.Tensor) -> nn.Module:
    """Fail before any work when the compression core cannot take ``model``: it must trace
    (torch.fx), export to ONNX, and run in OpenVINO at another batch size than it was
    exported at, agreeing with torch. Returns the model; raises ModelError naming the step."""
    trace(model)
    sample = example_input[:1]
    batch = torch.cat([sample, torch.randn_like(sample)]).numpy()
    with tempfile.TemporaryDirectory(prefix="autocompress-check-") as tmp:
        try:
            exported = export(model, tmp, input_shape=tuple(sample.shape[1:]))
        except RuntimeError as error:  # the conversion, in the OpenVINO worker
            raise _openvino_error("convert the ONNX model to OpenVINO", error) from None
        inputs, outputs = Path(tmp) / "inputs.npy", Path(tmp) / "outputs.npy"
        np.save(inputs, batch)
        inferred = run_jobs(
            [Infer(str(exported.ir_path), str(inputs), str(outputs), {"precision_hint": "f32"}, batch_size=2)]
        )[0]
        if "error" in inferred:
            raise _openvino_error("run it in OpenVINO", inferred["error"])
        openvino_out = np.load(outputs)
    torch_out = module_logits(model, batch)
    if openvino_out.shape != torch_out.shape or not np.allclose(
        openvino_out, torch_out, rtol=1e-2, atol=1e-3
    ):
        raise ModelError(
            f"OpenVINO and torch disagree on {type(model).__name__} at batch 2 (shapes {list(openvino_out.shape)} "
            f"and {list(torch_out.shape)}, largest difference "
            f"{np.max(np.abs(openvino_out - torch_out)) if openvino_out.shape == torch_out.shape else 'n/a'}): "
            "a value computed from the batch size may have been frozen at export; compute it from the input"
        )
    return model


def _openvino_error(step: str, error: object) -> ModelError:
    return ModelError(
        f"cannot {step} ({str(error).splitlines()[0][:300]}); the model's ONNX export "
        "holds an operation or a shape OpenVINO does not take"
    )
