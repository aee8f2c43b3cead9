"""Structured channel pruning: coupled groups, importance criteria, physical thinning."""

from __future__ import annotations

import itertools

import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from autocompress import compressible_layers
from autocompress.evaluators.runtime import OpenVINOAccuracy
from autocompress.evaluators.target import Target
from autocompress.export import export
from autocompress.policies import LayerPolicy, Policy, PolicyError, Pruning
from autocompress.pruning import (
    CRITERIA,
    channel_importance,
    masked_twin,
    prune,
    pruning_groups,
    resolve_group_ratios,
)
from autocompress.training import evaluate_torch
from autocompress.zoo import pretrained

X = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="session")
def mobilenet(_isolated_cache):
    """Depthwise convs, residual adds and a torch.cat, trained briefly on digits."""
    return pretrained("mobilenet_cat", "digits", epochs=2)


@pytest.fixture
def models(cnn, resnet, mobilenet):
    return {"mnist_cnn": cnn, "resnet": resnet, "mobilenet_cat": mobilenet}


def _by_name(groups):
    return {g.name: g for g in groups}


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


# Per model: ratios per prunable group (one differs, to check groups are independent)
# and the channel counts the thinned model must have.
RATIOS = {
    "mnist_cnn": {"conv1": 0.5, "conv2": 0.25, "conv3": 0.5},
    "resnet": {"layer2.0.downsample.0": 0.25},  # the rest: 0.5
    "mobilenet_cat": {"mix.left": 0.25},  # the rest: 0.5
}


def _check_shapes(name: str, m: nn.Module) -> None:
    get = m.get_submodule
    if name == "mnist_cnn":  # 32, 64, 64 -> 16, 48, 32
        assert (get("conv1").out_channels, get("conv2").in_channels) == (16, 16)
        assert (get("conv2").out_channels, get("conv3").in_channels, get("bn2").num_features) == (48, 48, 48)
        assert (get("conv3").out_channels, get("fc").in_features, get("fc").out_features) == (32, 32, 10)
    elif name == "resnet":  # width 0.5: 8, 16, 32 -> 4, 12, 16
        assert get("conv1").out_channels == 4 and get("bn1").num_features == 4
        for i in range(3):
            block = get(f"layer1.{i}")
            assert (
                block.conv1.in_channels,
                block.conv1.out_channels,
                block.conv2.in_channels,
                block.conv2.out_channels,
            ) == (4, 4, 4, 4)
            block = get(f"layer2.{i}")
            assert (
                block.conv1.out_channels,
                block.conv2.in_channels,
                block.conv2.out_channels,
                block.bn2.num_features,
            ) == (8, 8, 12, 12)
            assert block.conv1.in_channels == (4 if i == 0 else 12)
            block = get(f"layer3.{i}")
            assert (block.conv1.out_channels, block.conv2.out_channels) == (16, 16)
            assert block.conv1.in_channels == (12 if i == 0 else 16)
        assert [c.weight.shape[:2] for c in (get("layer2.0.downsample.0"), get("layer3.0.downsample.0"))] == [
            (12, 4),
            (16, 12),
        ]
        assert get("layer2.0.downsample.1").num_features == 12 and get("fc").in_features == 16
    else:  # mobilenet_cat: 16 -> 8, expand 32 -> 16, 24 -> 12, 48 -> 24, cat 16+16 -> 12+8, head 64 -> 32
        assert get("conv1").out_channels == 8 and get("block1.project").out_channels == 8
        for block, hidden, (cin, cout) in (
            ("block1", 16, (8, 8)),
            ("block2", 16, (8, 12)),
            ("block3", 24, (12, 12)),
        ):
            dw = get(f"{block}.depthwise")
            assert (dw.in_channels, dw.out_channels, dw.groups, tuple(dw.weight.shape[:2])) == (
                hidden,
                hidden,
                hidden,
                (hidden, 1),
            )
            assert get(f"{block}.expand").weight.shape[:2] == (hidden, cin)
            assert get(f"{block}.project").weight.shape[:2] == (cout, hidden)
        assert get("mix.left").weight.shape[:2] == (12, 12) and get("mix.right").weight.shape[:2] == (8, 12)
        assert get("mix.right_dw").groups == 8 and get("mix.bn_right_dw").num_features == 8
        assert get("head").weight.shape[:2] == (32, 20)  # concat of 12 + 8 channels
        assert get("fc").in_features == 32


def test_groups_follow_residual_adds_depthwise_convs_and_concats(cnn, resnet, mobilenet):
    groups = _by_name(pruning_groups(resnet, X))
    assert len(groups) == 13
    assert groups["conv1"].layers == ("conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2")
    stage2 = groups["layer2.0.downsample.0"]  # runs first in BasicBlock.forward
    assert set(stage2.layers) == {
        "layer2.0.downsample.0",
        "layer2.0.conv2",
        "layer2.1.conv2",
        "layer2.2.conv2",
    }
    assert stage2.channels == 16 and stage2.prunable
    assert groups["layer3.1.conv1"].layers == ("layer3.1.conv1",)
    assert not groups["fc"].prunable and "output layer 'fc'" in groups["fc"].reason
    assert [g.name for g in pruning_groups(cnn, X)] == ["conv1", "conv2", "conv3", "fc"]

    groups = _by_name(pruning_groups(mobilenet, X))
    assert len(groups) == 9
    assert groups["conv1"].layers == ("conv1", "block1.project")  # residual add
    assert groups["block1.expand"].layers == ("block1.expand", "block1.depthwise")  # depthwise
    assert groups["block2.project"].layers == ("block2.project", "block3.project")
    assert groups["mix.left"].layers == ("mix.left",) and groups["mix.right"].layers == (
        "mix.right",
        "mix.right_dw",
    )
    assert [g.name for g in groups.values() if not g.prunable] == ["fc"]


@pytest.mark.parametrize("criterion", CRITERIA)
@pytest.mark.parametrize("name", ["mnist_cnn", "resnet", "mobilenet_cat"])
def test_prune_thins_and_matches_masked_twin(name, criterion, models, digits_loaders):
    model = models[name]
    groups = pruning_groups(model, X)
    ratios = {g.name: (RATIOS[name].get(g.name, 0.5), criterion) for g in groups if g.prunable}
    before, was_training = _snapshot(model), model.training
    # The same batches for both calls (a shuffling loader would give taylor other batches).
    data = dict(data=list(itertools.islice(digits_loaders[0], 2))) if criterion == "taylor" else {}

    thinned = prune(model, ratios, X, **data)
    twin = masked_twin(model, ratios, X, **data)

    _check_shapes(name, thinned)
    assert sum(p.numel() for p in thinned.parameters()) < 0.5 * sum(p.numel() for p in model.parameters())
    # The user's model is untouched.
    assert model.training == was_training and thinned is not model
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    # Thinning is exact: the narrower model computes what the zero-masked one does.
    inputs = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        thin_out, twin_out, full_out = thinned.eval()(inputs), twin.eval()(inputs), model(inputs)
    torch.testing.assert_close(thin_out, twin_out, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(twin_out, full_out, atol=1e-3)  # something was actually removed
    torch.fx.symbolic_trace(thinned)  # still traceable by the compression core


def test_output_and_pinned_layers_are_not_prunable(resnet):
    pinned = ("layer2.*.conv2",)
    groups = _by_name(pruning_groups(resnet, X, pinned=pinned))
    assert not groups["layer2.0.downsample.0"].prunable
    assert "pinned" in groups["layer2.0.downsample.0"].reason
    assert groups["layer3.0.downsample.0"].prunable
    with pytest.raises(PolicyError, match="'layer2.0.downsample.0' cannot be pruned.*pinned"):
        prune(resnet, {"layer2.0.downsample.0": (0.5, "l1")}, X, pinned=pinned)
    with pytest.raises(PolicyError, match="'fc' cannot be pruned.*output layer"):
        prune(resnet, {"fc": (0.2, "l1")}, X)
    with pytest.raises(PolicyError, match="pinned 'nope' matches no Conv/Linear layer"):
        pruning_groups(resnet, X, pinned=["nope"])


def test_bad_requests_raise_clear_errors(resnet):
    with pytest.raises(ValueError, match="criterion 'taylor' needs data: pass train_loader"):
        prune(resnet, {"conv1": (0.5, "taylor")}, X)
    with pytest.raises(PolicyError, match="unknown pruning criterion 'l3'.*geometric_median"):
        prune(resnet, {"conv1": (0.5, "l3")}, X)
    with pytest.raises(ValueError, match="unknown pruning group 'layer1.0.conv2'.*of group 'conv1'"):
        prune(resnet, {"layer1.0.conv2": (0.5, "l1")}, X)
    with pytest.raises(
        PolicyError, match=r"\(8 channels\) at ratio 0.95 would remove .* 8 channels, leaving none"
    ):
        prune(resnet, {"conv1": (0.95, "l1")}, X)
    with pytest.raises(PolicyError, match=r"must be in \[0, 1\)"):
        prune(resnet, {"conv1": (1.0, "l1")}, X)
    group = _by_name(pruning_groups(resnet, X))["conv1"]
    with pytest.raises(ValueError, match="criterion 'taylor' needs data"):
        channel_importance(resnet, group, "taylor")
    with pytest.raises(ValueError, match="does not belong to this model"):
        channel_importance(nn.Sequential(nn.Conv2d(1, 2, 1)), group, "l1")


def test_resolve_group_ratios_from_a_policy(resnet):
    groups = pruning_groups(resnet, X)
    layers = compressible_layers(resnet)

    def resolve(overrides, pinned=()):
        policy = Policy(overrides={k: LayerPolicy(pruning=v) for k, v in overrides.items()}, pinned=pinned)
        return resolve_group_ratios(groups, policy.resolve(layers), policy.pinned)

    assert resolve({"layer1.*.conv2": Pruning(0.5, "l2"), "layer3.2.conv1": Pruning(0.25, "taylor")}) == {
        "conv1": (0.5, "l2"),
        "layer3.2.conv1": (0.25, "taylor"),
    }
    with pytest.raises(
        PolicyError, match="layer1.0.conv2.*layer1.1.conv2.*coupled.*residual add.*one pruning ratio"
    ):
        resolve({"layer1.0.conv2": Pruning(0.5), "layer1.1.conv2": Pruning(0.25)})
    with pytest.raises(PolicyError, match="layer 'fc' asks for pruning.*output layer"):
        resolve({"fc": Pruning(0.5)})
    with pytest.raises(
        PolicyError, match="layer 'layer2.1.conv2' asks for pruning.*'layer2.1.conv2' is pinned"
    ):
        resolve({"layer2.1.conv2": Pruning(0.5)}, pinned=("layer2.1.conv2",))
    with pytest.raises(PolicyError, match="leaving none"):
        resolve({"conv1": Pruning(0.95)})


def test_l1_keeps_the_largest_filters_and_criteria_disagree(resnet, digits_loaders):
    conv = nn.Conv2d(1, 4, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, -4.0, 0.5, 3.0]).view(4, 1, 1, 1))
    model = nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    group = _by_name(pruning_groups(model, X))["0"]
    assert channel_importance(model, group, "l1").argsort().tolist() == [2, 0, 3, 1]
    thinned = prune(model, {"0": (0.5, "l1")}, X)
    assert thinned[0].weight.flatten().tolist() == [-4.0, 3.0]  # the two largest |w|, in order
    assert thinned[4].weight.tolist() == model[4].weight[:, [1, 3]].tolist()

    group = _by_name(pruning_groups(resnet, X))["layer3.0.downsample.0"]
    ranks = {
        c: channel_importance(resnet, group, c, data=digits_loaders[0], batches=2).argsort().tolist()
        for c in CRITERIA
    }
    assert all(len(r) == 32 for r in ranks.values())
    assert len({tuple(r) for r in ranks.values()}) >= 2


def _onnx_conv_shapes(path) -> list[tuple[int, ...]]:
    graph = onnx.load(str(path)).graph
    weights = {init.name: tuple(numpy_helper.to_array(init).shape) for init in graph.initializer}
    return [weights[node.input[1]] for node in graph.node if node.op_type == "Conv"]


@pytest.mark.parametrize("name", ["resnet", "mobilenet_cat"])
def test_thinned_model_exports_and_runs_in_openvino(name, models, digits_loaders, tmp_path):
    model = models[name]
    groups = pruning_groups(model, X)
    thinned = prune(model, {g.name: (RATIOS[name].get(g.name, 0.5), "l1") for g in groups if g.prunable}, X)
    exported = export(thinned, tmp_path, input_shape=(1, 8, 8))
    convs = [tuple(m.weight.shape) for m in thinned.modules() if isinstance(m, nn.Conv2d)]
    assert sorted(_onnx_conv_shapes(exported.onnx_path)) == sorted(
        convs
    )  # the IR's convolutions are the narrow ones
    test = digits_loaders[2]
    deployed = OpenVINOAccuracy(test, target=Target(precision_hint="f32"))(exported)["accuracy"]
    assert deployed == pytest.approx(evaluate_torch(thinned, test), abs=0.005)
