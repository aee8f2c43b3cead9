"""The quantization core on real data and small real models (no runtime here; see test_export)."""

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from autocompress import Finetune, ModelError, apply_policy
from autocompress.core import quantizers
from autocompress.policies import LayerPolicy, LayerQuant, Policy, PolicyError, TensorQuant
from autocompress.quantization import FakeQuantizer
from autocompress.training import evaluate_torch


def _calibrated(spec: TensorQuant, data: torch.Tensor) -> FakeQuantizer:
    quantizer = FakeQuantizer(spec, "activation")
    quantizer.observe()
    quantizer(data)
    quantizer.finish_calibration()
    return quantizer


def test_asymmetric_activation_matches_the_affine_formula():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 5, 5) * 2 + 0.5
    q = _calibrated(TensorQuant(bits=8, symmetric=False), x)
    scale, zp = q.scale.item(), int(q.zero_point.item())
    assert (q.qmin, q.qmax) == (0, 255)
    assert scale == pytest.approx((x.max() - x.min()).item() / 255, rel=1e-5)
    expected = (torch.clamp(torch.round(x / scale) + zp, 0, 255) - zp) * scale
    torch.testing.assert_close(q(x), expected)


def test_symmetric_activation_picks_unsigned_range_after_relu():
    x = torch.relu(torch.randn(1000))
    q = _calibrated(TensorQuant(bits=8, symmetric=True), x)
    assert (q.qmin, q.qmax) == (0, 255) and int(q.zero_point) == 0
    signed = _calibrated(TensorQuant(bits=8, symmetric=True), torch.randn(1000))
    assert (signed.qmin, signed.qmax) == (-128, 127)


@pytest.mark.parametrize("bits", [2, 3, 4, 6, 8])
def test_weight_bits_bound_the_distinct_levels_per_channel(bits):
    torch.manual_seed(0)
    weight = torch.randn(6, 4, 3, 3)
    q = FakeQuantizer(TensorQuant(bits=bits, symmetric=True, per_channel=True), "weight", 6)
    q.init_from_weight(weight)
    out = q(weight)
    assert (q.qmin, q.qmax) == (-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1)  # narrow range
    for channel in range(6):
        levels = torch.unique(torch.round(out[channel] / q.scale[channel])).numel()
        assert levels <= 2**bits - 1
    assert torch.allclose(out.abs().amax(dim=(1, 2, 3)), weight.abs().amax(dim=(1, 2, 3)), rtol=1e-5)


def test_percentile_and_mse_clip_outliers_that_minmax_keeps():
    torch.manual_seed(0)
    x = torch.randn(20000)
    x[:5] = 60.0  # a few huge outliers
    minmax = _calibrated(TensorQuant(bits=4, symmetric=False), x)
    percentile = _calibrated(
        TensorQuant(bits=4, symmetric=False, range_init="percentile", percentile=99.9), x
    )
    mse = _calibrated(TensorQuant(bits=4, symmetric=False, range_init="mse"), x)
    assert percentile.scale.item() < 0.2 * minmax.scale.item()
    body = x[5:]
    error = {name: (q(body) - body).pow(2).mean().item() for name, q in [("minmax", minmax), ("mse", mse)]}
    assert error["mse"] < 0.5 * error["minmax"]


def test_learned_scale_forward_matches_eval_and_gets_gradients():
    torch.manual_seed(0)
    x = torch.randn(8, 3, 4, 4)
    q = _calibrated(TensorQuant(bits=4, symmetric=False, learn_scale=True), x)
    q.train()
    y = q(x)
    q.eval()
    torch.testing.assert_close(y, q(x))
    q.train()
    q(x).pow(2).sum().backward()
    assert q.scale.grad is not None and q.scale.grad.abs().sum() > 0


def test_binary_weights_xnor_and_dorefa():
    weight = torch.randn(5, 3, 3, 3, requires_grad=True)
    xnor = FakeQuantizer(TensorQuant(bits=1, binarize="xnor"), "weight", 5)
    out = xnor(weight)
    for channel in range(5):
        magnitudes = out[channel].abs()
        assert (magnitudes.max() - magnitudes.min()).item() < 1e-6
        assert out[channel].abs()[0, 0, 0].item() == pytest.approx(
            weight[channel].abs().mean().item(), rel=1e-5
        )
    dorefa = FakeQuantizer(TensorQuant(bits=1, binarize="dorefa"), "weight", 5)
    magnitudes = dorefa(weight).abs()
    assert (magnitudes.max() - magnitudes.min()).item() < 1e-6
    out.sum().backward()
    assert weight.grad is not None  # straight-through


def test_scale_threshold_activation_binarization_learns_both_parameters():
    torch.manual_seed(0)
    x = torch.relu(torch.randn(16, 4, 5, 5))
    q = _calibrated(TensorQuant(bits=1, binarize="scale_threshold"), x)
    y = q(x)
    values = torch.unique(y.detach())
    assert values.numel() == 2 and values[0] == 0 and values[1].item() == pytest.approx(q.scale.item())
    assert q.threshold.shape == (4,)
    y.sum().backward()
    assert q.scale.grad.abs().sum() > 0 and q.threshold.grad.abs().sum() > 0


def test_apply_policy_never_modifies_the_users_model(cnn, digits_loaders):
    train, _, _ = digits_loaders
    before = copy.deepcopy(cnn.state_dict())
    compressed = apply_policy(cnn, Policy.quantize(8, 8), train, finetune=Finetune(epochs=0.2))
    assert not any(parametrize.is_parametrized(m) for m in cnn.modules())
    assert not any(isinstance(m, FakeQuantizer) for m in cnn.modules())
    for key, value in cnn.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert any(isinstance(m, FakeQuantizer) for m in compressed.module.modules())


def test_w8a8_keeps_accuracy_and_folds_batchnorm(cnn, digits_loaders):
    train, _, test = digits_loaders
    baseline = evaluate_torch(cnn, test)
    compressed = apply_policy(cnn, Policy.quantize(8, 8), train, finetune=Finetune(epochs=1))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in compressed.module.modules())
    assert evaluate_torch(compressed.module, test) >= baseline - 0.01
    roles = [q.role for _, q in quantizers(compressed.module)]
    assert roles.count("weight") == 4  # 3 convs + fc
    assert compressed.input_shape == (1, 8, 8)


def test_residual_add_and_pool_inputs_are_quantized(resnet, digits_loaders):
    train, _, _ = digits_loaders
    compressed = apply_policy(resnet, Policy.quantize(8, 8), train, finetune=None)
    graph = compressed.module.graph
    adds = [n for n in graph.nodes if n.op == "call_function" and "add" in str(n.target)]
    assert len(adds) == 9  # 3 stages x 3 blocks
    for node in adds:
        for arg in node.args[:2]:
            assert arg.op == "call_module" and arg.target.startswith("activation_quantizers."), node
    pool = next(n for n in graph.nodes if n.target == "avgpool")
    assert pool.args[0].target.startswith("activation_quantizers.")


def test_one_quantizer_per_tensor_is_shared_by_its_consumers(resnet, digits_loaders):
    train, _, _ = digits_loaders
    compressed = apply_policy(resnet, Policy.quantize(8, 8), train, finetune=None)
    graph = compressed.module.graph
    quantized_inputs = [
        n.args[0].name
        for n in graph.nodes
        if n.op == "call_module" and n.target.startswith("activation_quantizers.")
    ]
    assert len(quantized_inputs) == len(set(quantized_inputs))


def test_overrides_keep_layers_float_and_set_bits(cnn, digits_loaders):
    train, _, _ = digits_loaders
    four = LayerPolicy(quantization=LayerQuant(weights=TensorQuant(bits=4, per_channel=True)))
    policy = Policy(default=Policy.quantize(8, 8).default, overrides={"fc": LayerPolicy(), "conv2": four})
    module = apply_policy(cnn, policy, train, finetune=None).module
    assert not parametrize.is_parametrized(module.fc)
    assert module.conv2.parametrizations.weight[0].bits == 4
    assert module.conv1.parametrizations.weight[0].bits == 8


def test_bad_policies_and_models_get_clear_errors(cnn, digits_loaders):
    train, _, _ = digits_loaders
    with pytest.raises(PolicyError, match="'conv9' matches no compressible layer"):
        apply_policy(cnn, Policy.quantize(overrides={"conv9": LayerPolicy()}), train)
    with pytest.raises(PolicyError, match="'bn1' names a BatchNorm2d"):
        apply_policy(cnn, Policy.quantize(overrides={"bn1": LayerPolicy()}), train)
    with pytest.raises(TypeError, match="Policy.load"):
        apply_policy(cnn, {"default": {}}, train)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="calibrat"):
        apply_policy(cnn, Policy.quantize(8, 8), None)

    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(x) if x.sum() > 0 else -self.fc(x)

    with pytest.raises(ModelError, match="cannot trace Branchy with torch.fx"):
        apply_policy(Branchy(), Policy.quantize(8, 8), [(torch.randn(2, 4), torch.zeros(2))])
    with pytest.raises(ModelError, match="no Conv or Linear"):
        apply_policy(nn.ReLU(), Policy.quantize(8, 8), train)


def test_learned_scales_move_during_finetuning(cnn, digits_loaders):
    train, _, _ = digits_loaders
    learned = LayerQuant(
        weights=TensorQuant(bits=4, per_channel=True, learn_scale=True),
        activations=TensorQuant(bits=8, symmetric=False, learn_scale=True),
    )
    policy = Policy(default=LayerPolicy(quantization=learned))
    ptq = apply_policy(cnn, policy, train, finetune=None)
    qat = apply_policy(cnn, policy, train, finetune=Finetune(epochs=1, lr=1e-3))
    before = ptq.module.conv2.parametrizations.weight[0].scale
    after = qat.module.conv2.parametrizations.weight[0].scale
    assert not torch.allclose(before, after)


def test_quantizers_sit_above_max_pool_and_flatten(cnn, digits_loaders):
    # Quantization commutes with max-pool and reshapes; placing it above them lets
    # OpenVINO run the pooling in INT8 (the placement NNCF picks).
    compressed = apply_policy(cnn, Policy.quantize(8, 8), digits_loaders[0], finetune=None)
    graph = compressed.module.graph
    pool = next(n for n in graph.nodes if n.target == "pool")
    flatten = next(n for n in graph.nodes if n.op == "call_function" and n.target is torch.flatten)
    assert pool.args[0].target.startswith("activation_quantizers.")
    assert flatten.args[0].target.startswith("activation_quantizers.")
    fc = next(n for n in graph.nodes if n.target == "fc")
    assert fc.args[0] is flatten
