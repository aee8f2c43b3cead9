"""apply_policy end to end with pruning, sparsity and quantization together (prune -> QAT)."""

import math

import onnx
import pytest
from torch import nn

from autocompress import Finetune, LatencyConfig, Target, apply_policy, evaluate, export
from autocompress.policies import LayerPolicy, Policy, PolicyError, Pruning, Sparsity

QUICK = LatencyConfig(warmup_iterations=5, rounds=3, min_iterations=20, min_seconds=0.02)


def conv_widths(module: nn.Module) -> dict[str, int]:
    return {name: m.out_channels for name, m in module.named_modules() if isinstance(m, nn.Conv2d)}


def prune_all(ratio: float, criterion: str = "l1", quantize: bool = False) -> Policy:
    quant = Policy.quantize(8, 8).default.quantization if quantize else None
    return Policy(
        default=LayerPolicy(quantization=quant, pruning=Pruning(ratio=ratio, criterion=criterion)),
        overrides={"fc": LayerPolicy(quantization=quant)},
    )


def test_pruned_then_quantized_resnet_is_narrower_int8_and_accurate(resnet, digits_loaders, tmp_path):
    train, _, test = digits_loaders
    # Recover the thinned float model first (at a rewound lr), then calibrate and QAT.
    finetune = Finetune(epochs=1, lr=1e-3, recovery_epochs=3, rewind_lr=1e-2)
    compressed = apply_policy(resnet, prune_all(0.5, quantize=True), train, finetune=finetune)
    before, after = conv_widths(resnet), conv_widths(compressed.module)
    for name, width in before.items():
        assert after[name] == max(1, round(width * 0.5)), name
    assert compressed.module.fc.out_features == resnet.fc.out_features
    assert resnet.conv1.out_channels == before["conv1"]  # the user's model is untouched

    exported = export(compressed, tmp_path)
    shapes = {init.name: list(init.dims) for init in onnx.load(str(exported.onnx_path)).graph.initializer}
    assert shapes["conv1.parametrizations.weight.original"][0] == after["conv1"]

    report = evaluate(
        {"dense": resnet, "pruned int8": compressed}, test, target=Target(precision_hint="f32"), latency=QUICK
    )
    row = report["pruned int8"]
    assert set(row["runtime_precision"]["Convolution"]) <= {"u8", "i8"}
    assert row["accuracy"] == pytest.approx(row["torch_accuracy"], abs=0.006)
    assert row["accuracy"] >= report["dense"]["accuracy"] - 0.03
    assert row["parameters"] < 0.35 * report["dense"]["parameters"]


def test_iterative_pruning_reaches_the_same_widths(resnet, digits_loaders):
    train = digits_loaders[0]
    finetune = Finetune(epochs=0.2, prune_steps=3, recovery_epochs=0.2, rewind_lr=1e-2)
    iterative = apply_policy(resnet, prune_all(0.5), train, finetune=finetune)
    one_shot = apply_policy(resnet, prune_all(0.5), train, finetune=None)
    assert conv_widths(iterative.module) == conv_widths(one_shot.module)
    assert iterative.history["pruning"]["conv1"] == {
        "channels": resnet.conv1.out_channels,
        "kept": round(resnet.conv1.out_channels / 2),
    }


def test_taylor_pruning_uses_the_training_data(cnn, digits_loaders):
    compressed = apply_policy(cnn, prune_all(0.25, "taylor"), digits_loaders[0], finetune=None)
    assert compressed.module.conv2.out_channels == round(cnn.conv2.out_channels * 0.75)


def test_pinned_layers_keep_their_channels(cnn, digits_loaders):
    policy = Policy(
        default=prune_all(0.5).default,
        overrides={"fc": LayerPolicy(), "conv2": LayerPolicy()},
        pinned=("conv2",),
    )
    compressed = apply_policy(cnn, policy, digits_loaders[0], finetune=None)
    assert compressed.module.conv2.out_channels == cnn.conv2.out_channels
    assert compressed.module.conv1.out_channels == cnn.conv1.out_channels // 2


def test_the_default_prunes_what_can_be_pruned_and_an_override_naming_the_rest_is_refused(
    cnn, digits_loaders
):
    train = digits_loaders[0]
    half = Pruning(ratio=0.5)
    compressed = apply_policy(
        cnn, Policy(default=LayerPolicy(pruning=half), pinned=("conv2",)), train, finetune=None
    )
    assert compressed.module.conv1.out_channels == cnn.conv1.out_channels // 2
    assert compressed.module.conv2.out_channels == cnn.conv2.out_channels  # pinned
    assert compressed.module.fc.out_features == cnn.fc.out_features  # the output layer
    skipped = compressed.history["pruning_skipped"]
    assert (
        "output layer 'fc'" in skipped["fc"]["reason"] and "'conv2' is pinned" in skipped["conv2"]["reason"]
    )
    assert compressed.layers["fc"].pruning is None  # says what was done, not what was asked
    described = compressed.describe()
    assert "not pruned: fc: it holds the model's output layer" in described
    assert (
        f"conv1: float, prune 50% l1 ({cnn.conv1.out_channels // 2}/{cnn.conv1.out_channels} channels)"
        in described
    )

    with pytest.raises(PolicyError, match="layer 'fc' asks for pruning .* output layer"):
        apply_policy(cnn, Policy(overrides={"fc": LayerPolicy(pruning=half)}), train, finetune=None)
    with pytest.raises(PolicyError, match="layer 'conv2' asks for pruning .* pinned"):
        apply_policy(cnn, Policy(overrides={"conv*": LayerPolicy(pruning=half)}, pinned=("conv2",)), train)


def test_coupled_layers_must_agree_on_one_ratio(resnet, digits_loaders):
    policy = Policy(
        default=prune_all(0.5).default,
        overrides={"fc": LayerPolicy(), "layer1.0.conv2": LayerPolicy(pruning=Pruning(ratio=0.25))},
    )
    with pytest.raises(PolicyError, match="layer1.0.conv2"):
        apply_policy(resnet, policy, digits_loaders[0], finetune=None)


def test_sparsity_with_quantization_keeps_exact_zeros_and_exports(cnn, digits_loaders, tmp_path):
    train, _, test = digits_loaders
    sparse_int8 = LayerPolicy(
        quantization=Policy.quantize(8, 8).default.quantization, sparsity=Sparsity(level=0.6)
    )
    policy = Policy(default=sparse_int8, overrides={"fc": LayerPolicy(quantization=sparse_int8.quantization)})
    compressed = apply_policy(cnn, policy, train, finetune=Finetune(epochs=1, lr=1e-3))
    for name in ("conv1", "conv2", "conv3"):
        weight = getattr(compressed.module, name).weight
        assert (weight == 0).float().mean().item() == pytest.approx(0.6, abs=0.01), name
    report = evaluate({"sparse int8": compressed}, test, latency=QUICK)
    row = report["sparse int8"]
    assert row["accuracy"] == pytest.approx(row["torch_accuracy"], abs=0.006)
    assert row["nonzero_parameters"] < 0.5 * row["parameters"]
    assert compressed.history["sparsity"]["conv2"] == pytest.approx(0.6, abs=0.01)


def test_finetune_settings_are_validated():
    with pytest.raises(ValueError, match="prune_steps must be >= 1"):
        Finetune(prune_steps=0)
    with pytest.raises(ValueError, match="learning rates must be > 0"):
        Finetune(lr=0)
    with pytest.raises(ValueError, match="epochs must be >= 0"):
        Finetune(epochs=-1)
    for value in (-1, 2.5, True, "300"):
        with pytest.raises(ValueError, match="distill_min_steps must be an int >= 0"):
            Finetune(distill_min_steps=value)
    # NaN passes every bound (it compares False); infinite epochs never end.
    for field in ("epochs", "lr", "distill_epochs", "recovery_epochs", "rewind_lr", "weight_decay"):
        for value in (math.nan, math.inf):
            with pytest.raises(ValueError, match=f"Finetune {field}={value}: must be a finite number"):
                Finetune(**{field: value})


def test_student_policy_distills_then_prunes_then_quantizes(resnet, digits_loaders, tmp_path):
    from autocompress.policies import Student

    train, _, test = digits_loaders
    int8 = Policy.quantize(8, 8).default.quantization
    policy = Policy(
        student=Student(family="resnet", params={"width": 0.5, "blocks": [1, 1, 1]}),
        default=LayerPolicy(quantization=int8, pruning=Pruning(ratio=0.25)),
        overrides={"fc": LayerPolicy(quantization=int8)},
    )
    finetune = Finetune(epochs=0.5, lr=1e-3, distill_epochs=1, recovery_epochs=0.5, rewind_lr=1e-2)
    compressed = apply_policy(resnet, policy, train, finetune=finetune)
    assert {"init_from_teacher", "distillation", "pruning", "finetune"} <= set(compressed.history)
    student_stem = round(resnet.conv1.out_channels * 0.5)
    assert compressed.module.conv1.out_channels == round(student_stem * 0.75)
    assert "layer1.1.conv1" not in compressed.layers  # one block per stage
    report = evaluate({"kd-prune-int8": compressed}, test, latency=QUICK)
    assert set(report["kd-prune-int8"]["runtime_precision"]["Convolution"]) <= {"u8", "i8"}


def test_a_student_is_distilled_for_at_least_its_minimum_steps(cnn, digits_loaders):
    """On a small dataset an epoch is a few dozen steps: the floor, not the epochs, sets
    the distillation's length; a larger epoch budget still wins."""
    from autocompress.policies import Student

    train, _, _ = digits_loaders
    policy = Policy(student=Student(family="mnist_cnn", params={"width": 0.5}))
    for epochs, floor, expected in ((0.1, 3 * len(train) + 1, 3 * len(train) + 1), (2.0, 5, 2 * len(train))):
        finetune = Finetune(epochs=0, distill_epochs=epochs, distill_min_steps=floor)
        compressed = apply_policy(cnn, policy, train, finetune=finetune)
        assert compressed.history["distillation"]["steps"] == expected


def test_student_family_must_fit_the_teacher(cnn, digits_loaders):
    from autocompress.policies import Student

    with pytest.raises(Exception, match="ResNet20"):
        apply_policy(cnn, Policy(student=Student(family="resnet")), digits_loaders[0], finetune=None)
