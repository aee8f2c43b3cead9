"""Export to ONNX / OpenVINO IR and measurement with the real runtimes."""

import onnx
import pytest
from torch import nn

import autocompress
from autocompress import Finetune, LatencyConfig, ModelError, Target, apply_policy, evaluate, export
from autocompress.evaluators.runtime import OpenVINOAccuracy
from autocompress.evaluators.size import ModelSize
from autocompress.policies import LayerPolicy, LayerQuant, Policy, TensorQuant
from autocompress.training import evaluate_torch

QUICK = LatencyConfig(warmup_iterations=5, rounds=3, min_iterations=20, min_seconds=0.02)


@pytest.fixture(scope="module")
def w8a8_resnet(resnet, digits_loaders):
    return apply_policy(resnet, Policy.quantize(8, 8), digits_loaders[0], finetune=Finetune(epochs=0.5))


def test_onnx_has_qdq_pairs_a_symbolic_batch_and_the_ir_a_static_shape(w8a8_resnet, tmp_path):
    import openvino as ov

    exported = export(w8a8_resnet, tmp_path)
    graph = onnx.load(str(exported.onnx_path)).graph
    ops = [node.op_type for node in graph.node]
    convs = ops.count("Conv") + ops.count("Gemm")
    assert ops.count("QuantizeLinear") == ops.count("DequantizeLinear") >= 2 * convs - 1
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 1, 8, 8]
    assert exported.ir_path.exists() and exported.ir_bin_path.exists()
    ir = ov.Core().read_model(str(exported.ir_path))
    assert ir.inputs[0].get_partial_shape().to_shape() == [1, 1, 8, 8]  # static: dynamic shapes cost latency


def test_every_conv_and_linear_runs_int8_in_openvino(w8a8_resnet, digits_loaders, tmp_path):
    report = evaluate({"int8": w8a8_resnet}, digits_loaders[2], latency=QUICK)
    precisions = report["int8"]["runtime_precision"]
    compute = {
        layer: kinds
        for layer, kinds in precisions.items()
        if layer in ("Convolution", "FullyConnected", "MatMul")
    }
    assert compute, precisions
    for layer, kinds in compute.items():
        assert set(kinds) <= {"u8", "i8"}, f"{layer} runs {kinds}"


def test_deployed_accuracy_matches_torch_and_int8_weights_shrink_the_ir(resnet, w8a8_resnet, digits_loaders):
    test = digits_loaders[2]
    report = evaluate(
        {"fp32": resnet, "int8": w8a8_resnet}, test, target=Target(precision_hint="f32"), latency=QUICK
    )
    fp32, int8 = report["fp32"], report["int8"]
    assert fp32["accuracy"] == pytest.approx(fp32["torch_accuracy"], abs=0.003)
    assert int8["accuracy"] == pytest.approx(int8["torch_accuracy"], abs=0.006)
    assert int8["accuracy"] >= fp32["accuracy"] - 0.02
    assert fp32["ir_weights_bytes"] > 3.5 * int8["ir_weights_bytes"]
    assert int8["bits_weighted_bytes"] < 0.3 * fp32["bits_weighted_bytes"]
    assert fp32["latency_ms"] > 0 and int8["latency_ratio"] > 0
    assert len(int8["latency_rounds_ms"]) == QUICK.rounds


def test_sub_8_bit_policies_export_and_keep_their_numerics(cnn, digits_loaders, tmp_path):
    train, _, test = digits_loaders
    four = LayerQuant(
        weights=TensorQuant(bits=4, per_channel=True), activations=TensorQuant(bits=6, symmetric=False)
    )
    compressed = apply_policy(
        cnn, Policy(default=LayerPolicy(quantization=four)), train, finetune=Finetune(epochs=0.5)
    )
    exported = export(compressed, tmp_path)
    deployed = OpenVINOAccuracy(test, target=Target(precision_hint="f32"))(exported)["accuracy"]
    assert deployed == pytest.approx(evaluate_torch(compressed.module, test), abs=0.006)


def test_binarized_policy_exports_and_runs(cnn, digits_loaders, tmp_path):
    train, _, test = digits_loaders
    binary = LayerQuant(
        weights=TensorQuant(bits=1, binarize="xnor"),
        activations=TensorQuant(bits=1, binarize="scale_threshold"),
    )
    policy = Policy(
        default=Policy.quantize(8, 8).default, overrides={"conv2": LayerPolicy(quantization=binary)}
    )
    compressed = apply_policy(cnn, policy, train, finetune=Finetune(epochs=0.5, lr=1e-3))
    exported = export(compressed, tmp_path)
    deployed = OpenVINOAccuracy(test, target=Target(precision_hint="f32"))(exported)["accuracy"]
    assert deployed == pytest.approx(evaluate_torch(compressed.module, test), abs=0.01)
    assert deployed > 0.5


def test_size_counts_quantized_weights_at_their_bits(cnn, digits_loaders, tmp_path):
    train = digits_loaders[0]
    four = LayerPolicy(quantization=LayerQuant(weights=TensorQuant(bits=4, per_channel=True)))
    w4 = apply_policy(cnn, Policy(default=four), train, finetune=None)
    w8 = apply_policy(cnn, Policy.quantize(8, 8), train, finetune=None)
    size4 = ModelSize()(export(w4, tmp_path / "w4"))
    size8 = ModelSize()(export(w8, tmp_path / "w8"))
    assert size4["parameters"] == size8["parameters"]
    weights = sum(m.weight.numel() for m in cnn.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    assert size8["bits_weighted_bytes"] - size4["bits_weighted_bytes"] == weights * 4 // 8


def test_onnxruntime_latency_is_measured_too(cnn, digits_loaders):
    report = evaluate(cnn, digits_loaders[2], latency=QUICK, onnxruntime=True)
    assert report["model"]["onnxruntime_latency_ms"] > 0


def test_unexportable_model_gets_a_clear_error(tmp_path):
    class TwoInputs(nn.Module):
        def forward(self, x, y):
            return x + y

    with pytest.raises(ModelError, match="cannot export TwoInputs to ONNX"):
        export(TwoInputs(), tmp_path, input_shape=(3,))
    with pytest.raises(ValueError, match="input_shape is required"):
        export(nn.Linear(2, 2), tmp_path)


def test_public_api_is_importable():
    for name in autocompress.__all__:
        assert hasattr(autocompress, name), name


def test_flops_follow_width_squared():
    from autocompress.evaluators.size import count_flops
    from autocompress.zoo import ResNet20

    narrow = count_flops(ResNet20(in_channels=1, width=1.0), (1, 1, 28, 28))
    wide = count_flops(ResNet20(in_channels=1, width=2.0), (1, 1, 28, 28))
    assert 3.6 < wide / narrow < 4.1  # convs scale with width^2; the stem and fc less
