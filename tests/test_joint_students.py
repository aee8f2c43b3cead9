"""Students in the joint space: where a student family fits the model, ``joint`` also searches
whether to distill into a student and its width/depth, and a point with a student maps the
per-layer bits and per-group pruning ratios onto the student's layers (distill -> prune ->
QAT in one candidate). Real models trained on digits (conftest), tiny fine-tunes."""

from __future__ import annotations

import dataclasses
import itertools

import optuna
import pytest
import torch
from torch import nn

from autocompress.core import Finetune, apply_policy, check_policy
from autocompress.distillation import build_student
from autocompress.policies import Policy, PolicyError, Student
from autocompress.pruning import pruning_groups
from autocompress.search.result import summarize_policy
from autocompress.search_spaces import Dimension, SearchSpace, SpaceError, build_space, to_optuna
from autocompress.search_spaces.knobs import start_point
from autocompress.search_spaces.space import StudentLayout
from autocompress.zoo import MobileNetCat

# A few steps of each stage: distillation, pruning (one step), calibration and QAT.
TINY = Finetune(epochs=0.05, max_steps=2, distill_epochs=0.05, distill_lr=1e-3)


@pytest.fixture(scope="module")
def example(digits_loaders):
    return torch.zeros(1, *next(iter(digits_loaders[0]))[0].shape[1:])


@pytest.fixture(scope="module")
def data(digits_loaders):
    """Three training batches of 32: enough to calibrate and take a few steps, quickly."""
    inputs, targets = next(iter(digits_loaders[0]))
    return [(inputs[i : i + 32], targets[i : i + 32]) for i in (0, 16, 32)]


@pytest.fixture(scope="module")
def depthwise():
    return MobileNetCat(in_channels=1, num_classes=10)  # depthwise convs, residual adds and a concat


@pytest.fixture(scope="module")
def joint(resnet, example):
    return build_space(resnet, "joint", example_input=example)


def dimension(space: SearchSpace, name: str) -> Dimension:
    return next(d for d in space.dimensions if d.name == name)


def uniform(space: SearchSpace, **values) -> dict:
    """A point of ``space``: its first start point (uniform INT8, no pruning) with ``values``
    for every dimension of each named knob (``pruning_ratio=0.5`` sets every group)."""
    point = dict(space.start_points[0])
    for dim in space.dimensions:
        if dim.knob in values:
            point[dim.name] = values[dim.knob]
    return point


def params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# -- the space ------------------------------------------------------------------------


def test_joint_on_a_resnet_searches_students_from_the_models_own_architecture(resnet, joint, example):
    assert joint.student_family == "resnet"
    assert dimension(joint, "student").choices == (False, True)
    # The half-width teacher's stem has 8 channels: a quarter-width student keeps 2, and
    # pruning 75% of 2 channels would leave none, so that width is not offered.
    # With a depth to search, the teacher's width is offered too (a shallower student).
    assert dimension(joint, "student_width").choices == (0.5, 0.75, 1.0)
    assert dimension(joint, "student_blocks").choices == (1, 2, 3)
    assert any(d.knob == "weight_bits" and d.layers for d in joint.dimensions)
    assert any(d.knob == "pruning_ratio" and d.layers for d in joint.dimensions)
    assert [layout.params for layout in joint.students] == [
        {"width": w, "blocks": b} for w, b in itertools.product((0.5, 0.75, 1.0), (1, 2, 3))
    ]
    # Start points: where an engineer starts (uniform INT8, + uniform pruning, no student),
    # then uniform INT8 distilled into the half-width student of middle depth, and into the
    # full-width one of middle depth.
    *engineer, student, shallow = joint.start_points
    assert engineer and all(point["student"] is False for point in engineer)
    assert all(joint.policy(point).student is None for point in engineer)
    assert student == {**engineer[0], "student": True, "student_width": 0.5, "student_blocks": 2}
    assert shallow == {**student, "student_width": 1.0}
    assert joint.policy(student).student.params == {"width": 0.5, "blocks": 2}
    assert start_point(joint.dimensions, 0.5)["student"] is False  # condensa's start, too
    assert SearchSpace.from_json(joint.to_json()) == joint
    assert "map onto each of 9 resnet students" in joint.describe()

    # The built-in resnet students name their layers as the teacher (a shallower one keeps
    # the first blocks of each stage) and each of their groups lies in one of the teacher's,
    # with the same leader: the mapping by name is exact.
    teacher_groups = {g.name: set(g.layers) for g in pruning_groups(resnet, example) if g.prunable}
    for layout in joint.students:
        assert set(layout.layers) <= set(joint.layers)
        for leader, members in layout.groups.items():
            assert set(members) <= teacher_groups[leader]


def test_a_model_no_student_family_fits_keeps_the_old_joint_space(example):
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    space = build_space(mlp, "joint", example_input=example)
    assert space.student_family is None and space.students == ()
    assert [d.name for d in space.dimensions] == [
        "weight_bits:1",
        "activation_bits:1",
        "weight_bits:3",
        "activation_bits:3",
        "pruning_ratio:1",
        "pruning_criterion",
    ]


def test_the_depthwise_net_is_searched_with_shallower_students(depthwise, example):
    """Its lever is depth (benchmarks/depthwise.py): the joint space offers students that keep
    1-3 of its inverted residual blocks, and their layouts lack the dropped blocks' layers."""
    space = build_space(depthwise, "joint", example_input=example)
    assert space.student_family == "mobilenet_cat"
    assert dimension(space, "student_blocks").choices == (1, 2, 3)
    widths = dimension(space, "student_width").choices
    assert widths and {layout.params["blocks"] for layout in space.students} == {1, 2, 3}
    shallow = space.policy(uniform(space, student=True, student_width=widths[-1], student_blocks=2))
    assert shallow.student == Student("mobilenet_cat", {"width": widths[-1], "blocks": 2})
    layout = next(layout for layout in space.students if layout.params == shallow.student.params)
    assert not any(layer.startswith("block1.") for layer in layout.layers)
    assert any(layer.startswith("block3.") for layer in layout.layers)


def test_the_digest_shows_a_student_only_where_the_point_chose_one():
    point = {"weight_bits:conv1": 8, "student_width": 0.5, "student_blocks": 2, "pruning_ratio:conv1": 0.25}
    assert summarize_policy({**point, "student": True}) == "W8x1 | prune 0.25 | student w0.5 b2"
    assert summarize_policy({**point, "student": False}) == "W8x1 | prune 0.25"
    assert summarize_policy({"student": True}) == "student"
    assert summarize_policy({"student": False, "student_kernel": 5}) == "-"


# -- values -> a policy for the student -------------------------------------------------


def test_a_student_point_maps_the_models_choices_onto_the_students_layers(resnet, joint, example):
    values = uniform(joint, student=True, student_width=0.5, student_blocks=1)
    values["weight_bits:layer2.0.conv1"] = 4
    values["weight_bits:layer2.2.conv1"] = None  # a layer the one-block student does not have
    values["pruning_ratio:layer2.0.downsample.0"] = 0.25  # stage 2's residual group
    values["pruning_ratio:layer3.0.conv1"] = 0.5
    policy = joint.policy(values)
    assert policy.student == Student(family="resnet", params={"width": 0.5, "blocks": 1})
    assert Policy.from_json(policy.to_json()) == policy
    student = build_student(resnet, policy.student, example_input=example)
    resolved = check_policy(student, policy)  # every override names a layer of the student
    assert joint.layers_of(values) == tuple(resolved) and joint.layers_of(uniform(joint)) == joint.layers
    assert "layer2.2.conv1" not in policy.overrides
    assert resolved["layer2.0.conv1"].quantization.weights.bits == 4
    assert all(lp.quantization.weights.bits == 8 for name, lp in resolved.items() if name != "layer2.0.conv1")
    # The teacher's group {layer2.0.downsample.0, layer2.*.conv2} is the student's
    # {layer2.0.downsample.0, layer2.0.conv2}: both take the group's ratio.
    pruned = {name: lp.pruning.ratio for name, lp in resolved.items() if lp.pruning}
    assert pruned == {"layer2.0.downsample.0": 0.25, "layer2.0.conv2": 0.25, "layer3.0.conv1": 0.5}

    # No student: the same values give the teacher's policy, as before.
    teacher_policy = joint.policy({**values, "student": False})
    assert teacher_policy.student is None
    assert check_policy(resnet, teacher_policy)["layer2.2.conv1"].quantization.weights.bits is None


def test_pinned_layers_the_student_lacks_are_left_out_of_its_policy(resnet, example):
    base = Policy(pinned=("layer3.2.conv1", "layer1.0.conv1"))
    space = build_space(resnet, "joint", example_input=example, base=base)
    assert "pruning_ratio:layer3.2.conv1" not in {d.name for d in space.dimensions}
    shallow = space.policy(uniform(space, student=True, student_width=0.75, student_blocks=2))
    assert shallow.pinned == ("layer1.0.conv1",)
    assert space.policy(uniform(space, student=False)).pinned == base.pinned


def test_student_layers_and_groups_the_model_lacks_follow_a_documented_rule():
    """A student layer the model does not have takes the most common value of that knob
    (a pruning ratio: the mean); a student group coupling layers the model keeps apart
    takes the mean of their ratios."""
    layers = ("a", "b", "c", "fc")
    dims = [Dimension("weight_bits", layers=(layer,), choices=(8, 4, None)) for layer in layers]
    dims += [Dimension("pruning_ratio", layers=(layer,), low=0.0, high=0.75) for layer in ("a", "b", "c")]
    dims += [Dimension("student", choices=(False, True)), Dimension("student_width", choices=(0.5,))]
    layout = StudentLayout(
        params={"width": 0.5}, layers=("a", "b", "x", "fc"), groups={"a": ("a", "b"), "x": ("x",)}
    )
    space = SearchSpace(
        dimensions=tuple(dims),
        layers=layers,
        groups={"a": ("a",), "b": ("b",), "c": ("c",)},
        student_family="mnist_cnn",
        students=(layout,),
    )
    values = {
        "weight_bits:a": 4,
        "weight_bits:b": 8,
        "weight_bits:c": 4,
        "weight_bits:fc": None,
        "pruning_ratio:a": 0.25,
        "pruning_ratio:b": 0.75,
        "pruning_ratio:c": 0.5,
        "student": True,
        "student_width": 0.5,
    }
    resolved = space.policy(values).resolve(layout.layers)
    assert [
        resolved[n].quantization.weights.bits if resolved[n].quantization else None for n in layout.layers
    ] == [
        4,
        8,
        4,  # x: the most common of 4, 8, 4, float
        None,
    ]
    assert resolved["a"].pruning.ratio == resolved["b"].pruning.ratio == 0.5  # the mean of 0.25, 0.75
    assert resolved["x"].pruning.ratio == 0.5  # the mean of all ratios
    assert resolved["fc"].pruning is None  # in no group of the student
    assert SearchSpace.from_json(space.to_json()) == space


def test_a_space_mapping_onto_students_needs_each_students_layout(joint):
    missing = (
        r"weight_bits:conv1, activation_bits:conv1, weight_bits:layer1.0.conv1 and \d+ more set the model's "
        r"layers and groups; a point with the 'resnet' student \{'width': 0.5, 'blocks': 1\}.*"
        r"no StudentLayout"
    )
    with pytest.raises(SpaceError, match=missing):
        dataclasses.replace(joint, students=joint.students[1:])
    with pytest.raises(SpaceError, match="two layouts for the same student params"):
        dataclasses.replace(joint, students=joint.students + joint.students[:1])
    ranged = Dimension("student_width", low=0.5, high=0.75)
    with pytest.raises(SpaceError, match="searched over a range cannot be combined with per-layer"):
        dataclasses.replace(
            joint, dimensions=tuple(ranged if d.name == "student_width" else d for d in joint.dimensions)
        )
    with pytest.raises(SpaceError, match=r"groups name layers the student does not have: \['y'\]"):
        StudentLayout(params={}, layers=("x",), groups={"x": ("x", "y")})
    # Narrowing needs no new layout; without a student, the layouts are not needed.
    narrowed = joint.fix(student_width=0.75, student_blocks=2)
    assert narrowed.policy(uniform(narrowed, student=True)).student.params == {
        "width": 0.75,
        "blocks": 2,
    }
    no_students = dataclasses.replace(joint.exclude("student*"), students=())
    assert no_students.policy(no_students.start_points[0]).student is None


def test_apply_policy_names_a_student_layer_mismatch_before_distilling(resnet, data):
    policy = Policy(
        student=Student(family="resnet", params={"width": 0.5, "blocks": [1, 1, 1]}),
        overrides={"layer3.2.conv1": Policy.quantize(4, 8).default},
    )
    with pytest.raises(PolicyError, match=r"student .* does not have: 'layer3.2.conv1'.*SearchSpace.policy"):
        apply_policy(resnet, policy, data, finetune=TINY)


# -- every point applies ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet", "cnn", "depthwise"])
def test_every_sampled_point_is_a_policy_that_applies(request, name, example, data):
    """20 points of Optuna's RandomSampler, with and without a student: each gives a plain-data
    policy that apply_policy applies (post-training here: build, warm-start, prune, quantize,
    calibrate) into a model with the teacher's output shape."""
    model = request.getfixturevalue(name)
    space = build_space(model, "joint", example_input=example)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    batch = data[0][0]
    students = 0
    for _ in range(20):
        trial = study.ask()
        policy = space.policy(to_optuna.suggest(trial, space))
        assert Policy.from_json(policy.to_json()) == policy
        students += policy.student is not None
        compressed = apply_policy(model, policy, data, finetune=None, calibration_batches=1)
        with torch.no_grad():
            assert compressed(batch).shape == (len(batch), 10)
        study.tell(trial, 0.0)
    assert 0 < students < 20


def test_sampled_student_points_apply_end_to_end(resnet, joint, data):
    """Distill -> prune -> QAT on a few points with a student (and one without), tiny budgets."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    points = []
    while len(points) < 3:
        values = to_optuna.suggest(study.ask(), joint)
        if values["student"]:
            points.append(values)
    points.append({**points[0], "student": False})
    batch = data[0][0]
    for values in points:
        compressed = apply_policy(resnet, joint.policy(values), data, finetune=TINY, calibration_batches=1)
        with torch.no_grad():
            assert compressed(batch).shape == (len(batch), 10)
        assert ("distillation" in compressed.history) == values["student"]


def test_a_student_with_pruning_is_narrower_than_the_student_alone(resnet, joint, data):
    chosen = dict(student=True, student_width=0.75, student_blocks=2)
    student, pruned = (
        apply_policy(resnet, joint.policy(values), data, finetune=None, calibration_batches=1).module
        for values in (uniform(joint, **chosen), uniform(joint, **chosen, pruning_ratio=0.5))
    )
    assert params(pruned) < 0.5 * params(student) < params(resnet)
    # measured: teacher 68,642 parameters, student 25,093, student + pruning 6,484
    for layer in ("conv1", "layer2.0.conv1", "layer3.1.conv1"):
        width = student.get_submodule(layer).out_channels
        assert pruned.get_submodule(layer).out_channels == width - round(0.5 * width)
    assert student.conv1.out_channels == 6  # 0.75 of the teacher's 8
    assert "layer3.2" not in dict(pruned.named_modules())  # the student's depth: 2 blocks
