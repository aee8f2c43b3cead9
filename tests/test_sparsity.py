"""Unstructured and block sparsity (autocompress.sparsity) on MnistCNN trained on digits.

Every fine-tune is one epoch (20 steps of 64 images) on a deep copy of the ``cnn``
fixture, with a freshly seeded train loader so results do not depend on test order.
"""

import copy

import pytest
import torch
from torch.nn.utils import parametrize

from autocompress.data import make_loaders
from autocompress.evaluators.size import parameter_stats
from autocompress.policies import Sparsity, TensorQuant
from autocompress.quantization import FakeQuantizer
from autocompress.sparsity import (
    L0Gate,
    MagnitudeMask,
    SparsityController,
    SparsityError,
    scheduled_level,
)
from autocompress.training import evaluate_torch, train

LAYERS = ("conv1", "conv2", "conv3", "fc")


@pytest.fixture
def train_loader(digits):
    # Same data as digits_loaders' train split, but a fresh seeded shuffle per test.
    return make_loaders(digits, batch_size=64, seed=0)[0]


@pytest.fixture(scope="module")
def dense_accuracy(cnn, digits_loaders):
    return evaluate_torch(cnn, digits_loaders[2])


def _zeros(module, name):
    return int((module.get_submodule(name).weight == 0).sum())


def _numel(module, name):
    return module.get_submodule(name).weight.numel()


def _fine_tune(model, controller, loader, record=None):
    def on_step(step, total):
        controller.on_step(step, total)
        if record is not None:
            record.append((step, total, controller.levels(), controller.expected_densities()))

    return train(model, loader, epochs=1, extra_loss=controller.extra_loss, on_step=on_step)


# -- schedules ---------------------------------------------------------------------


@pytest.mark.parametrize("schedule", ["constant", "polynomial", "exponential"])
def test_every_schedule_reaches_the_target_exactly(cnn, train_loader, schedule):
    model = copy.deepcopy(cnn)
    levels = {"conv1": 0.3, "conv2": 0.75, "conv3": 0.6, "fc": 0.5}
    controller = SparsityController(
        model, {n: Sparsity(lv, schedule=schedule) for n, lv in levels.items()}
    ).attach()
    record = []
    _fine_tune(model, controller, train_loader, record)
    achieved = controller.finalize()
    model.eval()
    for name, level in levels.items():
        expected = round(level * _numel(model, name))
        assert _zeros(model, name) == expected, name
        assert achieved[name] == pytest.approx(expected / _numel(model, name))
    # the schedule is at the target by the end of its ramp and holds it
    assert all(abs(rec[2]["conv2"] - 0.75) < 1e-4 for rec in record[-5:])


def test_constant_is_at_target_from_step_0_and_polynomial_ramps(cnn, train_loader):
    model = copy.deepcopy(cnn)
    controller = SparsityController(
        model, {"conv2": Sparsity(0.8, schedule="constant"), "conv3": Sparsity(0.8, schedule="polynomial")}
    ).attach()
    record = []
    _fine_tune(model, controller, train_loader, record)
    total = record[0][1]
    assert record[0][2]["conv2"] == pytest.approx(0.8, abs=1e-4)
    assert record[0][2]["conv3"] == 0.0
    middle = record[total // 2][2]["conv3"]
    assert 0.0 < middle < 0.8 - 1e-3
    ramp = [rec[2]["conv3"] for rec in record]
    assert ramp == sorted(ramp)  # monotone ramp, then hold
    assert ramp[-1] == pytest.approx(0.8, abs=1e-4)


def test_schedule_shapes():
    assert scheduled_level(0.8, "constant", 0.0) == 0.8
    assert scheduled_level(0.8, "polynomial", 0.0) == 0.0
    assert scheduled_level(0.8, "polynomial", 0.5) == pytest.approx(0.8 * (1 - 0.5**3))
    assert scheduled_level(0.8, "exponential", 0.5) == pytest.approx(1 - 0.2**0.5)
    for schedule in ("constant", "polynomial", "exponential"):
        assert scheduled_level(0.8, schedule, 1.0) == 0.8
        assert scheduled_level(0.8, schedule, 3.0) == 0.8
    with pytest.raises(ValueError, match="linear.*allowed: constant, polynomial, exponential"):
        scheduled_level(0.5, "linear", 0.5)


# -- one-shot magnitude pruning ------------------------------------------------------


def test_one_shot_zeroes_exactly_the_smallest_magnitudes(cnn):
    model = copy.deepcopy(cnn)
    before = {name: model.get_submodule(name).weight.detach().clone() for name in LAYERS}
    controller = SparsityController(model, {n: Sparsity(0.6) for n in LAYERS}).attach()
    achieved = controller.finalize()  # no training: one-shot
    for name in LAYERS:
        weight = model.get_submodule(name).weight.detach()
        magnitude = before[name].abs()
        zeroed = weight == 0
        assert int(zeroed.sum()) == round(0.6 * weight.numel())
        assert magnitude[zeroed].max() <= magnitude[~zeroed].min()
        torch.testing.assert_close(weight[~zeroed], before[name][~zeroed])  # survivors untouched
        assert achieved[name] == pytest.approx(0.6, abs=1 / weight.numel())
    # the fixture model is never modified
    assert not parametrize.is_parametrized(cnn.conv2)


def test_fifty_percent_magnitude_with_one_epoch_keeps_accuracy(
    cnn, train_loader, digits_loaders, dense_accuracy
):
    model = copy.deepcopy(cnn)
    controller = SparsityController(model, {n: Sparsity(0.5) for n in LAYERS}).attach()
    _fine_tune(model, controller, train_loader)
    controller.finalize()
    accuracy = evaluate_torch(model, digits_loaders[2])
    # measured: dense 98.9%, 50% polynomial 97.5-98.9% over five shuffles
    assert accuracy >= dense_accuracy - 0.03, (accuracy, dense_accuracy)


# -- L0 gates --------------------------------------------------------------------------


def test_l0_gates_learn_the_density_and_finalize_exactly(cnn, train_loader, digits_loaders, dense_accuracy):
    model = copy.deepcopy(cnn)
    controller = SparsityController(model, {n: Sparsity(0.5, method="l0") for n in LAYERS}).attach()
    gates = dict(controller.masks)
    assert all(isinstance(g, L0Gate) for g in gates.values())
    expected_before = {n: float(g.expected_density().detach()) for n, g in gates.items()}
    penalty = controller.extra_loss(None, None)
    assert penalty.item() > 0 and penalty.requires_grad

    record = []
    _fine_tune(model, controller, train_loader, record)
    live = [rec for rec in record if rec[3]]  # before the gates were frozen at the end of the ramp
    assert 0 < len(live) < len(record)
    last_levels, last_expected = live[-1][2], live[-1][3]
    for name in LAYERS:
        assert last_expected[name] < expected_before[name] - 0.2
        # measured: eval-gate sparsity 0.50-0.52 and E[density] 0.46-0.47 after 14 steps
        assert abs(last_levels[name] - 0.5) <= 0.04, (name, last_levels[name])
        assert abs(last_expected[name] - (1 - 0.5)) <= 0.06, (name, last_expected[name])

    achieved = controller.finalize()
    model.eval()
    for name in LAYERS:
        assert _zeros(model, name) == round(0.5 * _numel(model, name))
        assert isinstance(model.get_submodule(name).parametrizations.weight[0], MagnitudeMask)
        assert achieved[name] == pytest.approx(0.5, abs=1e-3)
    assert controller.extra_loss(None, None).item() == 0.0
    accuracy = evaluate_torch(model, digits_loaders[2])
    assert accuracy >= dense_accuracy - 0.03, (accuracy, dense_accuracy)  # measured 97.2-98.1%


def test_l0_gate_is_stochastic_in_training_and_binary_in_eval():
    torch.manual_seed(0)
    weight = torch.randn(32, 16)
    gate = L0Gate(weight, level=0.5)
    gate.train()
    sample = gate.sample()
    assert ((sample > 0) & (sample < 1)).any() and (sample == 1).any()
    gate.eval()
    hard = gate.hard_gate()
    assert set(hard.unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(gate(weight), weight * hard)
    density = gate.expected_density()
    density.backward()
    assert gate.log_alpha.grad is not None and gate.log_alpha.grad.abs().sum() > 0
    assert gate.gate_step(0.1) and gate.log_alpha.grad is None
    # magnitude-ordered init: without training, top-k by log_alpha is magnitude pruning
    order = torch.argsort(weight.abs().flatten())
    assert torch.all(gate.log_alpha.detach().flatten()[order].diff() >= 0)


def test_magnitude_only_has_no_extra_loss(cnn):
    controller = SparsityController(copy.deepcopy(cnn), {"fc": Sparsity(0.5)}).attach()
    assert controller.extra_loss(torch.zeros(1), torch.zeros(1)).item() == 0.0


# -- block sparsity --------------------------------------------------------------------


def test_block_mode_zeroes_whole_blocks_with_the_smallest_norms(cnn, train_loader):
    model = copy.deepcopy(cnn)
    original = model.fc.weight.detach().clone()  # [10, 64]
    controller = SparsityController(model, {"fc": Sparsity(0.5, block=(2, 8))}).attach()
    controller.finalize()
    blocks = model.fc.weight.detach().reshape(5, 2, 8, 8).permute(0, 2, 1, 3).reshape(40, 16)
    zero_blocks = (blocks == 0).all(dim=1)
    assert int(zero_blocks.sum()) == 20
    assert ((blocks != 0).all(dim=1) | zero_blocks).all()  # no partially zeroed block
    norms = original.reshape(5, 2, 8, 8).permute(0, 2, 1, 3).reshape(40, 16).norm(dim=1)
    assert norms[zero_blocks].max() <= norms[~zero_blocks].min()

    # with a schedule during fine-tuning too
    model = copy.deepcopy(cnn)
    controller = SparsityController(model, {"fc": Sparsity(0.75, block=(5, 4))}).attach()
    _fine_tune(model, controller, train_loader)
    assert controller.finalize()["fc"] == pytest.approx(0.75)
    mask = model.fc.parametrizations.weight[0].mask.reshape(2, 5, 16, 4)
    assert ((mask == 0).all(dim=(1, 3)) | (mask == 1).all(dim=(1, 3))).all()
    assert int((model.fc.weight == 0).sum()) == round(0.75 * 32) * 20


# -- errors ----------------------------------------------------------------------------


def test_errors_name_the_layer_and_what_is_allowed(cnn):
    model = copy.deepcopy(cnn)
    with pytest.raises(SparsityError, match=r"unknown layer 'conv9'.*conv1, bn1, conv2"):
        SparsityController(model, {"conv9": Sparsity(0.5)})
    with pytest.raises(SparsityError, match=r"'relu1' is a ReLU without a 'weight'"):
        SparsityController(model, {"relu1": Sparsity(0.5)})
    with pytest.raises(SparsityError, match=r"'conv2' is a Conv2d: block sparsity 2x2 applies to nn.Linear"):
        SparsityController(model, {"conv2": Sparsity(0.5, block=(2, 2))})
    with pytest.raises(SparsityError, match=r"'fc': weight shape \(10, 64\).*not divisible by block 3x8"):
        SparsityController(model, {"fc": Sparsity(0.5, block=(3, 8))})
    with pytest.raises(TypeError, match="autocompress.policies.Sparsity"):
        SparsityController(model, {"fc": 0.5})
    fc_weights = model.fc.weight.numel()  # 10 output channels: at most 1 - 10/n of the weights may go
    with pytest.raises(
        SparsityError, match=rf"'fc': sparsity level 0.9999 keeps 0 of its {fc_weights} weights.*at most 0.98"
    ):
        SparsityController(model, {"fc": Sparsity(0.9999)})
    SparsityController(model, {"fc": Sparsity(1 - 10 / fc_weights)})  # one weight per channel: allowed
    with pytest.raises(RuntimeError, match="attach"):
        SparsityController(model, {"fc": Sparsity(0.5)}).finalize()
    with pytest.raises(ValueError, match=r"layer 'w'.*shape \(10, 63\).*block 2x8"):
        MagnitudeMask(torch.zeros(10, 63), block=(2, 8), name="w")
    # a quantizer registered first would break quantize(mask(w)): refused, nothing attached
    quantizer = FakeQuantizer(TensorQuant(bits=8, symmetric=True, per_channel=True), "weight", 10)
    quantizer.init_from_weight(model.fc.weight)
    parametrize.register_parametrization(model.fc, "weight", quantizer)
    with pytest.raises(
        SparsityError, match=r"'fc'.*already parametrized \(FakeQuantizer\).*before weight quantizers"
    ):
        SparsityController(model, {"conv2": Sparsity(0.5), "fc": Sparsity(0.5)}).attach()
    assert not parametrize.is_parametrized(model.conv2)


# -- with quantization and the size evaluator --------------------------------------------


def _add_weight_quantizer(layer):
    quantizer = FakeQuantizer(
        TensorQuant(bits=8, symmetric=True, per_channel=True), "weight", layer.weight.shape[0]
    )
    quantizer.init_from_weight(layer.weight)
    parametrize.register_parametrization(layer, "weight", quantizer)
    return quantizer


@pytest.mark.parametrize("method", ["magnitude", "l0"])
def test_zeros_survive_fake_quantization_and_are_counted(cnn, train_loader, digits_loaders, method):
    model = copy.deepcopy(cnn)
    dense = parameter_stats(model)
    levels = {"conv2": 0.5, "conv3": 0.7, "fc": 0.4}
    controller = SparsityController(
        model, {n: Sparsity(lv, method=method) for n, lv in levels.items()}
    ).attach()
    for name in levels:  # sparsity first, then the quantizer: quantize(mask(w))
        _add_weight_quantizer(model.get_submodule(name))
    _fine_tune(model, controller, train_loader)
    controller.finalize()
    model.eval()
    for name in levels:
        layer = model.get_submodule(name)
        chain = layer.parametrizations.weight
        assert [type(p).__name__ for p in chain] == ["MagnitudeMask", "FakeQuantizer"]
        assert int(chain[1].zero_point.abs().sum()) == 0  # symmetric weights
        masked = chain[0].mask == 0
        assert int(masked.sum()) == round(levels[name] * layer.weight.numel())
        assert (layer.weight[masked] == 0).all()  # zeros stay zeros after fake quantization
    outputs = model(next(iter(digits_loaders[2]))[0])
    assert outputs.shape[1] == 10 and torch.isfinite(outputs).all()
    assert evaluate_torch(model, digits_loaders[2]) > 0.9

    pruned = sum(round(lv * _numel(model, n)) for n, lv in levels.items())
    stats = parameter_stats(model)
    assert stats["parameters"] == dense["parameters"]
    # 8-bit rounding may zero a few more tiny survivors, never fewer
    assert stats["nonzero_parameters"] <= dense["nonzero_parameters"] - pruned


def test_nonzero_count_drops_by_exactly_the_pruned_weights(cnn):
    model = copy.deepcopy(cnn)
    dense = parameter_stats(model)
    levels = {"conv1": 0.25, "conv2": 0.5, "conv3": 0.9, "fc": 0.5}
    spec = {n: Sparsity(lv) for n, lv in levels.items()}
    spec["fc"] = Sparsity(0.5, block=(5, 8))
    SparsityController(model, spec).attach().finalize()
    stats = parameter_stats(model)
    pruned = sum(round(lv * _numel(model, n)) for n, lv in levels.items())
    assert stats["parameters"] == dense["parameters"]
    assert stats["nonzero_parameters"] == dense["nonzero_parameters"] - pruned
