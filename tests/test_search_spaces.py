"""Search spaces as data: presets built from real models, JSON round trips, narrowing and
widening, values -> Policy, and the Optuna translation. No OpenVINO and no fine-tuning
(the session fixtures train the two models once)."""

from __future__ import annotations

import dataclasses

import optuna
import pytest
import torch
from optuna.distributions import CategoricalDistribution, FloatDistribution

from autocompress.core import check_policy
from autocompress.distillation import build_student
from autocompress.graph import compressible_layers
from autocompress.policies import Policy, Sparsity, Student
from autocompress.pruning import pruning_groups
from autocompress.search_spaces import (
    KNOBS,
    PRESETS,
    Dimension,
    Knob,
    SearchSpace,
    SpaceError,
    build_space,
    register_knob,
    to_optuna,
)
from autocompress.search_spaces.knobs import knob, start_point

MODELS = ("cnn", "resnet")


@pytest.fixture(scope="module")
def example(digits_loaders):
    inputs, _ = next(iter(digits_loaders[0]))
    assert tuple(inputs.shape[1:]) == (1, 8, 8)  # digits: 8x8 grey images
    return torch.zeros(1, *inputs.shape[1:])


@pytest.fixture(scope="module")
def spaces(request, example):
    """{(model fixture name, preset): space}, built once per module."""
    built = {}
    for name in MODELS:
        model = request.getfixturevalue(name)
        for preset in PRESETS:
            built[name, preset] = build_space(model, preset, example_input=example)
    return built


@pytest.fixture
def compact(spaces):
    return spaces["cnn", "compact"]


@pytest.fixture
def quantization(spaces):
    return spaces["cnn", "quantization"]


def all_eight(space: SearchSpace) -> dict:
    return {d.name: 8 for d in space.searched}


# -- presets --------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_builds_round_trips_and_starts_with_valid_policies(request, spaces, name, preset):
    model = request.getfixturevalue(name)
    space = spaces[name, preset]
    assert space.preset == preset
    assert space.layers == tuple(compressible_layers(model))
    assert space.searched, "a preset searches something"
    assert all(d.knob in KNOBS for d in space.dimensions)

    again = SearchSpace.from_json(space.to_json())
    assert again == space
    assert again.to_dict() == space.to_dict()

    assert space.start_points, "every preset has a start point"
    for point in space.start_points:
        policy = space.policy(point)
        assert isinstance(policy, Policy)
        resolved = check_policy(model, policy)
        assert set(resolved) == set(space.layers)
        # The start points are uniform INT8 (where quantization is searched).
        if any(d.knob == "weight_bits" for d in space.dimensions) and policy.student is None:
            assert all(
                lp.quantization is not None and lp.quantization.weights.bits == 8 for lp in resolved.values()
            )


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("preset", ("pruning", "joint"))
def test_pruning_dimensions_cover_whole_coupled_groups(request, spaces, example, name, preset):
    model = request.getfixturevalue(name)
    space = spaces[name, preset]
    prunable = {g.name: tuple(g.layers) for g in pruning_groups(model, example) if g.prunable}
    assert space.groups == prunable
    ratio_dims = [d for d in space.dimensions if d.knob == "pruning_ratio"]
    # One dimension per prunable group, covering exactly that group's layers.
    assert sorted(d.layers for d in ratio_dims) == sorted(prunable.values())
    assert len({layer for d in ratio_dims for layer in d.layers}) == sum(len(v) for v in prunable.values())
    if name == "resnet":  # residual adds couple layers: some groups hold several
        assert any(len(d.layers) > 1 for d in ratio_dims)

    # Every layer of a group gets the group's ratio; the output layer is never pruned.
    group = max(ratio_dims, key=lambda d: len(d.layers))
    values = {**space.start_points[0], group.name: 0.5}
    resolved = check_policy(model, space.policy(values))
    for layer in group.layers:
        assert resolved[layer].pruning is not None and resolved[layer].pruning.ratio == 0.5
    others = {layer for d in ratio_dims if d is not group for layer in d.layers}
    assert all(resolved[layer].pruning is None for layer in others)
    assert resolved[space.layers[-1]].pruning is None


def test_a_pruning_dimension_over_part_of_a_group_is_rejected(spaces):
    space = spaces["resnet", "pruning"]
    group = next(layers for layers in space.groups.values() if len(layers) > 1)
    with pytest.raises(SpaceError, match="whole group"):
        space.exclude("pruning_ratio:*").extend(
            Dimension("pruning_ratio", layers=group[:1], low=0.0, high=0.5)
        )


def test_unknown_preset_is_a_space_error(cnn, example):
    with pytest.raises(SpaceError, match="unknown search space preset 'nope'"):
        build_space(cnn, "nope", example_input=example)


# -- fix / exclude / extend -----------------------------------------------------------


def test_fix_keeps_values_out_of_the_search_and_in_the_policy(compact):
    fixed = compact.fix(weight_bits=4, pruning_criterion="l1")
    assert fixed.fixed == {"weight_bits": 4, "pruning_criterion": "l1"}
    assert "weight_bits" not in fixed.names() and "pruning_criterion" not in fixed.names()
    assert set(fixed.names()) == {"activation_bits", "pruning_ratio"}
    assert set(to_optuna.distributions(fixed)) == {"activation_bits", "pruning_ratio"}
    policy = fixed.policy({"activation_bits": 8, "pruning_ratio": 0.25})
    assert policy.default.quantization.weights.bits == 4
    assert policy.default.pruning.criterion == "l1"
    assert compact.fixed == {}  # a copy; the original is unchanged


def test_fixed_values_override_the_start_points(cnn, compact):
    # compact's start points differ only in the pruning ratio: fixing it leaves one.
    assert len(compact.start_points) == 3
    fixed = compact.fix(pruning_ratio=0.25)
    assert fixed.start_points == ({"pruning_criterion": "l2", "weight_bits": 8, "activation_bits": 8},)
    resolved = check_policy(cnn, fixed.policy(fixed.start_points[0]))
    assert {lp.pruning.ratio for layer, lp in resolved.items() if layer != "fc"} == {0.25}
    assert SearchSpace.from_json(fixed.to_json()) == fixed


def test_fix_rejects_values_outside_the_choices_or_range_naming_the_dimension(compact, quantization):
    with pytest.raises(SpaceError, match="weight_bits=5"):
        compact.fix(weight_bits=5)
    with pytest.raises(SpaceError, match=r"pruning_ratio=0\.9 is outside"):
        compact.fix(pruning_ratio=0.9)
    with pytest.raises(SpaceError, match=r"weight_bits:conv2=3"):
        quantization.fix(**{"weight_bits:conv2": 3})
    with pytest.raises(SpaceError, match="unknown dimension 'nope'"):
        compact.fix(nope=1)


def test_exclude_drops_matching_dimensions_and_their_fixed_and_start_values(quantization):
    narrowed = quantization.fix(**{"activation_bits:fc": None}).exclude("activation_bits:*")
    assert [d.knob for d in narrowed.dimensions] == ["weight_bits"] * len(quantization.layers)
    assert narrowed.fixed == {}
    assert all(set(p) == set(narrowed.names()) for p in narrowed.start_points)
    # The excluded knob falls back to the base (no quantization of activations).
    policy = narrowed.policy(all_eight(narrowed))
    for lp in policy.resolve(narrowed.layers).values():
        assert lp.quantization.weights.bits == 8 and lp.quantization.activations.bits is None


def test_exclude_with_no_match_is_an_error(compact):
    with pytest.raises(SpaceError, match="no dimension matches"):
        compact.exclude("sparsity*")


def test_extend_adds_validated_dimensions(quantization):
    wider = quantization.extend(Dimension("sparsity", layers=("fc",), low=0.0, high=0.5, step=0.25))
    assert "sparsity:fc" in wider.names()
    assert all(p["sparsity:fc"] == 0.0 for p in wider.start_points)  # start points stay complete
    policy = wider.policy({**all_eight(quantization), "sparsity:fc": 0.5})
    assert policy.for_layer("fc").sparsity.level == 0.5
    assert policy.for_layer("conv1").sparsity is None
    with pytest.raises(SpaceError, match="duplicate dimensions: weight_bits:conv1"):
        quantization.extend(Dimension("weight_bits", layers=("conv1",), choices=(8,)))
    with pytest.raises(SpaceError, match="both set weight_bits of layer"):
        quantization.extend(Dimension("weight_bits", choices=(8, 4)))
    with pytest.raises(SpaceError, match="unknown layers"):
        quantization.extend(Dimension("sparsity", layers=("nope",), low=0.0, high=0.5))


def test_student_dimensions_with_per_layer_or_pruning_dims_need_each_students_layout(spaces):
    # The distillation preset reads no student's layers: it cannot map the model's layers onto
    # its students (joint can: tests/test_joint_students.py).
    distillation = spaces["cnn", "distillation"]
    with pytest.raises(
        SpaceError, match=r"sparsity:conv1 set the model's layers.*'mnist_cnn' student \{'width': 0.25\}"
    ):
        distillation.extend(Dimension("sparsity", layers=("conv1",), low=0.0, high=0.5))
    with pytest.raises(SpaceError, match="pruning_ratio set the model's layers and groups.*no StudentLayout"):
        distillation.extend(Dimension("pruning_ratio", low=0.0, high=0.5))
    with pytest.raises(SpaceError, match="student_family"):
        dataclasses.replace(distillation, student_family=None)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(knob="pruning_ratio", choices=(0.25,), low=0.0, high=0.5), "either choices or low and high"),
        (dict(knob="pruning_ratio"), "either choices or low and high"),
        (dict(knob="pruning_ratio", low=0.5, high=0.25), "low <= high"),
        (dict(knob="weight_bits", low=4, high=8), "takes choices, not a range"),
        (dict(knob="weight_bits", choices=()), "must not be empty"),
        (dict(knob="weight_bits", choices=(8, 9)), "value 9 is not allowed"),
        (dict(knob="pruning_ratio", low=0.0, high=1.0), "value 1.0 is not allowed"),
        (dict(knob="pruning_criterion", layers=("conv1",), choices=("l1",)), "is global"),
        (dict(knob="sparsity", low=0.0, high=0.5, step=0.1, log=True), "step and log"),
        (dict(knob="bits", choices=(8,)), "invalid Dimension"),
    ],
)
def test_invalid_dimensions_are_space_errors(kwargs, match):
    with pytest.raises(SpaceError, match=match):
        Dimension(**kwargs)


def test_invalid_json_is_a_space_error(compact):
    data = compact.to_dict()
    with pytest.raises(SpaceError, match="weight_bits=3"):
        SearchSpace.from_dict({**data, "fixed": {"weight_bits": 3}})
    with pytest.raises(SpaceError, match="invalid search space"):
        SearchSpace.from_dict({**data, "surprise": 1})
    with pytest.raises(SpaceError, match="not valid JSON"):
        SearchSpace.from_json("{")


# -- values -> policy -----------------------------------------------------------------


def test_per_layer_bits_give_each_layer_its_own_policy(cnn, quantization):
    values = all_eight(quantization)
    values["weight_bits:conv1"] = None  # conv1: float weights, INT8 activations
    values["weight_bits:conv2"] = None  # conv2: both float -> no quantization at all
    values["activation_bits:conv2"] = None
    values["weight_bits:fc"] = 4  # narrow: MSE range and a learned scale
    resolved = check_policy(cnn, quantization.policy(values))

    conv1 = resolved["conv1"].quantization
    assert conv1.weights.bits is None and conv1.activations.bits == 8
    assert resolved["conv2"].quantization is None
    conv3 = resolved["conv3"].quantization
    assert conv3.weights.bits == 8 and conv3.activations.bits == 8
    assert conv3.weights.range_init == "minmax" and not conv3.weights.learn_scale
    fc = resolved["fc"].quantization
    assert fc.weights.bits == 4 and fc.activations.bits == 8
    assert fc.weights.range_init == "mse" and fc.weights.learn_scale
    assert all(lp.pruning is None and lp.sparsity is None for lp in resolved.values())


def test_policy_needs_every_searched_value_and_checks_them(quantization, compact):
    values = all_eight(quantization)
    del values["activation_bits:fc"]
    with pytest.raises(SpaceError, match="no value for dimensions"):
        quantization.policy(values)
    with pytest.raises(SpaceError, match="unknown dimensions"):
        quantization.policy({**all_eight(quantization), "bogus": 1})
    with pytest.raises(SpaceError, match=r"pruning_ratio=0\.9 is outside \[0\.0, 0\.75\]"):
        compact.policy(
            {"weight_bits": 8, "activation_bits": 8, "pruning_ratio": 0.9, "pruning_criterion": "l1"}
        )
    with pytest.raises(SpaceError, match="activation_bits=4 is not one of the choices"):
        compact.policy(
            {"weight_bits": 8, "activation_bits": 4, "pruning_ratio": 0.0, "pruning_criterion": "l1"}
        )


def test_pruning_ratio_zero_means_no_pruning(cnn, compact):
    none = compact.policy(
        {"weight_bits": 8, "activation_bits": 8, "pruning_ratio": 0.0, "pruning_criterion": "taylor"}
    )
    assert all(lp.pruning is None for lp in check_policy(cnn, none).values())
    assert none == Policy.quantize(8, 8)

    half = check_policy(
        cnn,
        compact.policy(
            {
                "weight_bits": None,
                "activation_bits": None,
                "pruning_ratio": 0.5,
                "pruning_criterion": "taylor",
            }
        ),
    )
    assert {layer for layer, lp in half.items() if lp.pruning} == {
        "conv1",
        "conv2",
        "conv3",
    }  # never the output layer
    assert all(
        lp.pruning.ratio == 0.5 and lp.pruning.criterion == "taylor" for lp in half.values() if lp.pruning
    )
    assert all(lp.quantization is None for lp in half.values())


@pytest.mark.parametrize("name, family", [("cnn", "mnist_cnn"), ("resnet", "resnet")])
def test_distillation_preset_gives_a_student_that_builds(request, spaces, example, name, family):
    model = request.getfixturevalue(name)
    space = spaces[name, "distillation"]
    assert space.student_family == family
    values = {**space.start_points[0], "student_width": 0.25, "weight_bits": None}
    policy = space.policy(values)
    assert isinstance(policy.student, Student)
    assert space.layers_of(values) == ()  # one default policy for all the student's layers
    assert policy.student.family == family and policy.student.params["width"] == 0.25
    assert (
        policy.default.quantization.weights.bits is None and policy.default.quantization.activations.bits == 8
    )
    if "student_blocks" in values:
        assert policy.student.params["blocks"] == values["student_blocks"]
    student = build_student(model, policy.student, example_input=example)
    teacher_params = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in student.parameters()) < teacher_params
    with torch.no_grad():
        assert student.eval()(example).shape == model(example).shape
    check_policy(model, policy)


# -- Optuna ---------------------------------------------------------------------------


@pytest.mark.parametrize("preset", PRESETS)
def test_optuna_distributions_match_the_dimensions(spaces, preset):
    space = spaces["resnet", preset]
    dists = to_optuna.distributions(space)
    assert list(dists) == space.names()
    for dim in space.searched:
        dist = dists[dim.name]
        if dim.choices is not None:
            assert isinstance(dist, CategoricalDistribution)
            assert tuple(dist.choices) == tuple(dim.choices)
        else:
            assert isinstance(dist, FloatDistribution)
            assert (dist.low, dist.high, dist.step, dist.log) == (dim.low, dim.high, dim.step, dim.log)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("preset", PRESETS)
def test_random_optuna_trials_give_policies_the_model_accepts(request, spaces, name, preset):
    model = request.getfixturevalue(name)
    space = spaces[name, preset]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=len(preset)))
    seen = set()
    for _ in range(5):
        trial = study.ask()
        values = to_optuna.suggest(trial, space)
        assert set(values) == set(space.names())
        assert trial.params == values
        for dim in space.searched:
            assert dim.check(values[dim.name]) == values[dim.name]
        check_policy(model, space.policy(values))
        seen.add(tuple(sorted(values.items(), key=lambda kv: kv[0])))
    assert len(seen) > 1  # the sampler does explore


def test_suggest_skips_fixed_dimensions(compact):
    space = compact.fix(pruning_ratio=0.25)
    trial = optuna.create_study().ask()
    values = to_optuna.suggest(trial, space)
    assert "pruning_ratio" not in values and "pruning_ratio" not in trial.params
    assert space.policy(values).default.pruning.ratio == 0.25


# -- the knob registry ----------------------------------------------------------------


def test_knobs_are_looked_up_in_the_registry_with_a_clear_error():
    assert list(KNOBS)[:7] == [
        "weight_bits",
        "activation_bits",
        "pruning_ratio",
        "pruning_criterion",
        "sparsity",
        "student_width",
        "student_blocks",
    ]
    assert (
        knob("sparsity").scope == "layer"
        and knob("pruning_ratio").scope == "group"
        and knob("student_width").scope == "global"
    )
    with pytest.raises(
        SpaceError, match=r"unknown knob 'bits'; known knobs: weight_bits, activation_bits, .*keep_float"
    ):
        knob("bits")
    with pytest.raises(
        SpaceError, match=r"invalid Dimension at knob: unknown knob 'bits'; known knobs: weight_bits"
    ):
        Dimension("bits", choices=(8,))
    with pytest.raises(SpaceError, match="knob 'weight_bits' is already registered; pass replace=True"):
        register_knob(KNOBS["weight_bits"])
    register_knob(KNOBS["weight_bits"], replace=True)  # a replaced knob keeps its place in the order
    assert list(KNOBS)[0] == "weight_bits"
    with pytest.raises(SpaceError, match="apply_layer or apply_student"):
        Knob("nothing", "layer", "anything", lambda v: True, starts_at=0)


def test_start_points_come_from_the_knobs_fitted_to_each_dimension():
    dims = [
        Dimension("pruning_ratio", low=0.0, high=0.2),
        Dimension("weight_bits", choices=(4, None)),
        Dimension("pruning_criterion", choices=("l1", "l2")),
        Dimension("sparsity", layers=("fc",), low=0.0, high=0.9),
    ]
    assert start_point(dims, 0.0) == {
        "pruning_ratio": 0.0,
        "weight_bits": 4,
        "pruning_criterion": "l2",
        "sparsity:fc": 0.0,
    }
    assert start_point(dims, 0.5) == {
        "pruning_ratio": 0.2,
        "weight_bits": 4,
        "pruning_criterion": "l2",
        "sparsity:fc": 0.5,
    }


def test_keep_float_leaves_its_layers_unquantized(cnn, compact):
    layers = compact.layers
    space = SearchSpace(
        dimensions=(
            Dimension("weight_bits", choices=(8,)),
            Dimension("keep_float", layers=("conv2",), choices=(False, True)),
        ),
        layers=layers,
    )
    assert start_point(space.dimensions, 0.0) == {"weight_bits": 8, "keep_float:conv2": False}
    kept = check_policy(cnn, space.policy({"weight_bits": 8, "keep_float:conv2": True}))
    assert kept["conv2"].quantization is None  # applied after the bits: it overrides them
    assert all(
        lp.quantization is not None and lp.quantization.weights.bits == 8
        for layer, lp in kept.items()
        if layer != "conv2"
    )
    quantized = check_policy(cnn, space.policy({"weight_bits": 8, "keep_float:conv2": False}))
    assert all(lp.quantization is not None and lp.quantization.weights.bits == 8 for lp in quantized.values())
    assert SearchSpace.from_json(space.to_json()) == space
    assert KNOBS["keep_float"].summarize([True, False, True]) == "keep float x2"
    assert KNOBS["keep_float"].summarize([False]) is None
    with pytest.raises(SpaceError, match=r"value 1 is not allowed; keep_float takes True"):
        Dimension("keep_float", choices=(False, 1))
    with pytest.raises(SpaceError, match="takes choices, not a range"):
        Dimension("keep_float", low=0, high=1)


def test_student_kernel_sets_the_resnet_students_kernel_size(resnet, example):
    space = SearchSpace(
        dimensions=(Dimension("student_width", choices=(0.5,)), Dimension("student_kernel", choices=(3, 5))),
        layers=tuple(compressible_layers(resnet)),
        student_family="resnet",
    )
    policy = space.policy({"student_width": 0.5, "student_kernel": 5})
    assert policy.student.family == "resnet" and policy.student.params == {"width": 0.5, "kernel_size": 5}
    student = build_student(resnet, policy.student, example_input=example)
    assert student.layer1[0].conv1.kernel_size == (5, 5)
    with torch.no_grad():
        assert student.eval()(example).shape == resnet(example).shape
    assert start_point(space.dimensions, 0.5) == {"student_width": 0.5, "student_kernel": 3}
    for bad in (4, True, "3"):
        with pytest.raises(SpaceError, match=r"student_kernel takes one of 1, 3, 5, 7"):
            Dimension("student_kernel", choices=(3, bad))
    with pytest.raises(SpaceError, match="student_kernel is global"):
        Dimension("student_kernel", layers=("conv1",), choices=(3,))
    with pytest.raises(SpaceError, match="need student_family"):
        dataclasses.replace(space, student_family=None)


@pytest.fixture
def toy_knob():
    """A knob registered by a test, as a user would: nothing else is touched."""
    toy = register_knob(
        Knob(
            "toy_sparsity",
            "layer",
            "a number in [0, 0.5]",
            lambda v: isinstance(v, float) and 0 <= v <= 0.5,
            starts_at=lambda level: min(level, 0.5),
            ranged=True,
            apply_layer=lambda lp, level, prunable: (
                dataclasses.replace(lp, sparsity=Sparsity(level=level, schedule="constant")) if level else lp
            ),
            label="toy",
            digest=lambda label, values, params: f"{label} {max(values):g}",
            column="toy sparsity",
            read=lambda lp: lp.sparsity.level if lp.sparsity else 0.0,
        )
    )
    yield toy
    KNOBS.pop(toy.name)


def test_a_registered_knob_works_in_dimensions_policies_and_optuna(cnn, quantization, toy_knob):
    wider = quantization.extend(Dimension("toy_sparsity", layers=("fc",), low=0.0, high=0.5))
    assert "toy_sparsity:fc" in wider.names() and list(KNOBS)[-1] == "toy_sparsity"
    assert isinstance(to_optuna.distributions(wider)["toy_sparsity:fc"], FloatDistribution)
    resolved = check_policy(cnn, wider.policy({**all_eight(quantization), "toy_sparsity:fc": 0.25}))
    assert resolved["fc"].sparsity == Sparsity(level=0.25, schedule="constant")
    assert resolved["fc"].quantization.weights.bits == 8  # the other knobs still apply
    assert resolved["conv1"].sparsity is None
    assert SearchSpace.from_json(wider.to_json()) == wider
    assert start_point(wider.dimensions, 0.25)["toy_sparsity:fc"] == 0.25
    assert toy_knob.summarize([0.25, 0.5]) == "toy 0.5"
    with pytest.raises(SpaceError, match="toy_sparsity takes a number in"):
        Dimension("toy_sparsity", low=0.0, high=0.75)


def test_the_digest_and_the_report_read_the_registry(toy_knob):
    from autocompress.search.report import knob_columns
    from autocompress.search.result import summarize_policy

    params = {
        "weight_bits:conv1": 8,
        "weight_bits:conv2": 8,
        "weight_bits:fc": None,
        "activation_bits": 8,
        "pruning_ratio:conv1": 0.25,
        "pruning_ratio:conv2": 0.5,
        "pruning_criterion": "l2",
        "sparsity:fc": 0.5,
    }
    assert summarize_policy(params) == "W8x2 Wfx1 | A8x1 | prune 0.25-0.5 (l2) | sparsity 0.5-0.5"
    assert (
        summarize_policy({"student_width": 0.5, "student_blocks": 2, "student_kernel": 5})
        == "student w0.5 b2 | student kernel 5"
    )
    assert summarize_policy({"keep_float:fc": True, "toy_sparsity:fc": 0.25}) == "keep float x1 | toy 0.25"
    assert summarize_policy({}) == "-"
    assert knob_columns() == ("weight bits", "activation bits", "pruning ratio", "toy sparsity")
