"""Preset search spaces, built from the compression core's analysis of one model.

    quantization  per layer: weight bits {8, 6, 4, float}, activation bits {8, 6, float}
    sparsity      per layer: unstructured sparsity 0..0.9 (no speed-up on CPUs; size in non-zeros)
    pruning       per group of coupled layers: channel ratio 0..0.75; global criterion
    distillation  student width and depth; INT8 or float
    joint         quantization + pruning, per layer / per group; where a student family fits
                  the model, also whether to distill into a student and its width (and depth),
                  one candidate pipeline: distill -> prune -> QAT
    compact       the joint knobs as global values: 4 dimensions, for small budgets

Per-layer knobs come from ``compressible_layers``; pruning ratios are per group from
``pruning_groups`` (coupled layers share one ratio, so every sampled policy is valid). In
``joint``, a point with a student applies its per-layer and per-group values to the
student's layers of the same name (``SearchSpace.policy``); the preset builds every student
it offers to read their layers and groups, and offers only widths whose students keep a
channel in every group at the highest pruning ratio.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from autocompress.distillation import Ensemble, build_student, student_families
from autocompress.graph import ModelError, compressible_layers
from autocompress.policies import Policy, Student
from autocompress.pruning import pruning_groups
from autocompress.search_spaces.knobs import start_point
from autocompress.search_spaces.space import (
    Dimension,
    SearchSpace,
    SpaceError,
    StudentLayout,
    student_choices,
)

PRESETS = ("quantization", "sparsity", "pruning", "distillation", "joint", "compact")

WEIGHT_BITS = (8, 6, 4, None)
ACTIVATION_BITS = (8, 6, None)
SEARCHED_CRITERIA = ("l1", "l2", "geometric_median", "taylor")
MAX_PRUNING_RATIO = 0.75
PRUNING_STEP = 0.125
STUDENT_WIDTHS = (0.25, 0.5, 0.75)
STUDENT_BLOCKS = (1, 2, 3)


def build_space(
    model: nn.Module,
    preset: str = "joint",
    *,
    example_input: torch.Tensor,
    base: Policy | None = None,
) -> SearchSpace:
    """The ``preset`` space for ``model``; ``base`` holds what every candidate keeps
    (e.g. pinned layers), and its pinned layers are left out of the pruning dimensions."""
    if preset not in PRESETS:
        raise SpaceError(f"unknown search space preset {preset!r}; presets: {', '.join(PRESETS)}")
    base = base or Policy()
    layers = tuple(compressible_layers(model))
    if not layers:
        raise ModelError(f"{type(model).__name__} has no Conv or Linear layer to compress")
    groups: dict[str, tuple[str, ...]] = {}
    if preset in ("pruning", "joint", "compact"):
        groups = {
            g.name: tuple(g.layers) for g in pruning_groups(model, example_input, base.pinned) if g.prunable
        }
    ratio = dict(low=0.0, high=MAX_PRUNING_RATIO, step=PRUNING_STEP)
    dims: list[Dimension] = []
    family = None
    students: tuple[StudentLayout, ...] = ()

    if preset in ("quantization", "joint"):
        for layer in layers:
            dims.append(Dimension("weight_bits", layers=(layer,), choices=WEIGHT_BITS))
            dims.append(Dimension("activation_bits", layers=(layer,), choices=ACTIVATION_BITS))
    if preset in ("pruning", "joint"):
        dims += [Dimension("pruning_ratio", layers=members, **ratio) for members in groups.values()]
    if preset in ("pruning", "joint", "compact"):
        dims.append(Dimension("pruning_criterion", choices=SEARCHED_CRITERIA))
    if preset == "compact":
        dims += [
            Dimension("weight_bits", choices=WEIGHT_BITS),
            Dimension("activation_bits", choices=ACTIVATION_BITS),
            Dimension("pruning_ratio", **ratio),
        ]
    if preset == "sparsity":
        dims += [Dimension("sparsity", layers=(layer,), low=0.0, high=0.9, step=0.1) for layer in layers]
    if preset == "distillation":
        family = _student_family(model, example_input)
        depth = _depth(model, family, example_input)
        dims += [Dimension("student_width", choices=_student_widths(depth))]
        dims += depth
        dims += [Dimension("weight_bits", choices=(8, None)), Dimension("activation_bits", choices=(8, None))]
    if preset == "joint":  # the first family whose students the knobs can build, if any
        for candidate in student_families():
            try:
                student_dims, found = _joint_students(model, candidate, example_input, base)
            except (
                Exception
            ):  # e.g. a user's family without a width param, or one that cannot take this model
                continue
            if student_dims:
                dims += student_dims
                family, students = candidate, found
                break

    # Start where an engineer would: uniform INT8, then uniform pruning (or sparsity) on top
    # of it, without a student; knobs that ignore the level give the same point, kept once.
    starts: list[dict] = []
    for level in (0.0, 0.25, 0.5):
        point = start_point(dims, level)
        if point and point not in starts:
            starts.append(point)
    if students and starts:
        starts += _student_starts(dims, starts[0])
    return SearchSpace(
        dimensions=tuple(dims),
        layers=layers,
        groups=groups,
        base=base,
        start_points=tuple(starts),
        student_family=family,
        students=students,
        preset=preset,
    )


def _student_starts(dims: list[Dimension], int8: dict) -> list[dict]:
    """Uniform INT8 distilled into a mid-size student: the offered width nearest half the
    teacher's and the middle depth; where the family has a depth, also the middle depth at
    the teacher's width. Measured on the zoo ResNet-20 (width 2, MNIST-5k, the search's
    per-trial fine-tune, side by side): a half-width two-block student ran 9.2x faster than
    FP32 at a -0.2 pt drop, where the rule's best (uniform INT8 + 62.5% pruning) ran 8.3x at
    a 1.0 pt drop: on small inputs a shallower net saves the per-layer cost that pruning
    cannot, and without a start the sampler rarely meets a student in 16 trials. On the
    zoo's depthwise net (benchmarks/depthwise.py) only depth moved latency: the full-width
    student without its first block ran INT8 1.41x faster than INT8 alone, while its
    half-width two-block student was stopped at 71% validation accuracy (the teacher's 96%)
    after the per-trial distillation (benchmarks/search.py)."""
    options = {d.name: d.choices for d in dims if d.name in ("student_width", "student_blocks")}
    point = {**int8, "student": True}
    point["student_width"] = min(options["student_width"], key=lambda w: abs(w - 0.5))
    if "student_blocks" not in options:
        return [point]
    blocks = options["student_blocks"]
    point["student_blocks"] = blocks[(len(blocks) - 1) // 2]
    wide = {**point, "student_width": max(options["student_width"])}
    return [point] if wide == point else [point, wide]


def _joint_students(
    model: nn.Module, family: str, example_input: torch.Tensor, base: Policy
) -> tuple[list[Dimension], tuple[StudentLayout, ...]]:
    """joint's student dimensions (``student``: whether to distill, then width and, where the
    family has a depth, blocks) and every offered student's layout. A width is offered only if
    each of its students keeps at least one channel of every prunable group at the highest
    pruning ratio, so that every point of the space is a policy that applies; no width
    left: no student dimensions."""
    depth = _depth(model, family, example_input)
    widths, layouts = [], []
    for width in _student_widths(depth):
        dims = [Dimension("student_width", choices=(width,)), *depth]
        built = [
            _layout(model, student, example_input, base)
            for student in student_choices(dims, family, base.student)
        ]
        if all(fits for _, fits in built):
            widths.append(width)
            layouts += [layout for layout, _ in built]
    if not widths:
        return [], ()
    dims = [
        Dimension("student", choices=(False, True)),
        Dimension("student_width", choices=tuple(widths)),
        *depth,
    ]
    return dims, tuple(layouts)


def _student_widths(depth: list[Dimension]) -> tuple[float, ...]:
    """With a depth to search, the teacher's width is a student too (a shallower net of the
    same width: the depthwise net's only lever, see ``_student_starts``)."""
    return STUDENT_WIDTHS + ((1.0,) if depth else ())


def _depth(model: nn.Module, family: str, example_input: torch.Tensor) -> list[Dimension]:
    """``student_blocks`` where the family builds a student of ``model`` at every offered depth
    (its ``blocks`` param: blocks per stage for resnet, blocks kept for mobilenet_cat)."""
    for blocks in STUDENT_BLOCKS:
        try:
            build_student(
                model, Student(family=family, params={"blocks": blocks}), example_input=example_input
            )
        except Exception:  # no depth param, or not these values: the family is searched by width only
            return []
    return [Dimension("student_blocks", choices=STUDENT_BLOCKS)]


def _layout(
    model: nn.Module, student: Student, example_input: torch.Tensor, base: Policy
) -> tuple[StudentLayout, bool]:
    """The student's layers and prunable groups (as ``apply_policy`` will build it), and
    whether every group keeps a channel at the highest pruning ratio."""
    members = [build_student(model, student, example_input=example_input) for _ in range(student.ensemble)]
    built = members[0] if len(members) == 1 else Ensemble(members)  # as apply_policy builds it
    layers = tuple(compressible_layers(built))
    pinned = StudentLayout(params=student.params, layers=layers).pinned(base.pinned)
    groups = [g for g in pruning_groups(built, example_input, pinned) if g.prunable]
    fits = all(g.removed(MAX_PRUNING_RATIO) < g.channels for g in groups)
    return StudentLayout(student.params, layers, {g.name: tuple(g.layers) for g in groups}), fits


def _student_family(
    model: nn.Module,
    example_input: torch.Tensor,
    families: Iterable[str] | None = None,
) -> str:
    """The first registered student family that can derive a student from ``model``."""
    tried = []
    for family in families or student_families():
        try:
            build_student(model, Student(family=family), example_input=example_input)
        except Exception as error:  # a family's builder (maybe the user's) that cannot take this model
            tried.append(f"{family}: {type(error).__name__}: {error}")
            continue
        return family
    raise SpaceError(
        f"no registered student family fits {type(model).__name__} ({'; '.join(tried) or 'none registered'}); "
        "register one with autocompress.distillation.register_student_family"
    )
