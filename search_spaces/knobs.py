"""The knobs a search space can vary: one ``Knob`` each, in one registry.

A knob says which values it takes, where it applies (each layer, each group of coupled
layers, or the whole model), where an engineer would start it, how a value changes a
layer's policy or the student, and how the policy digest and the search report show it.
``Dimension``, ``SearchSpace.policy``, the presets' start points, ``summarize_policy``
and the report's per-layer table all read the registry, so a new knob is one
``register_knob(Knob(...))``, here or in user code.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

from autocompress.models import RESNET_KERNEL_SIZES
from autocompress.policies import (
    DEFAULT_ACTIVATIONS,
    DEFAULT_WEIGHTS,
    LayerPolicy,
    LayerQuant,
    Pruning,
    Sparsity,
)
from autocompress.policies.schema import Criterion

__all__ = ["CRITERIA", "KNOBS", "Knob", "SpaceError", "knob", "register_knob", "start_point"]

Scope = Literal["layer", "group", "global"]
CRITERIA: tuple[str, ...] = typing.get_args(Criterion)


class SpaceError(ValueError):
    """A search space (or a choice of values for it) that is not valid; the message says why."""


# -- how a knob shows in the one-line digest: (label, the values its dimensions took, all params)
def _counts(label: str, values: list[Any], params: Mapping[str, Any]) -> str:
    """'W8x20 Wfx2': each value with how many dimensions took it, most common first."""
    counts: dict[Any, int] = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    return " ".join(
        f"{label}{'f' if v is None else v}x{n}" for v, n in sorted(counts.items(), key=lambda kv: -kv[1])
    )


def _span(label: str, values: list[Any], params: Mapping[str, Any]) -> str:
    return f"{label} {min(values):g}-{max(values):g}"


def _value(label: str, values: list[Any], params: Mapping[str, Any]) -> str:
    return f"{label} {values[0]}"


@dataclasses.dataclass(frozen=True)
class Knob:
    """One searchable knob.

    scope: "layer" (a dimension sets the layers it names, or every layer), "group" (one
        value per pruning group of coupled layers, or one for all) or "global" (one value).
    allowed, valid: what it takes (for errors: "<name> takes <allowed>") and the test.
    starts_at: the value an engineer starts from, or a function of the level (0, 0.25,
        0.5: how hard the start point compresses) for knobs that are a level themselves.
    ranged: may be searched over [low, high]; otherwise choices only.
    apply_layer: (layer policy, value, prunable) -> layer policy, for layer/group knobs and
        global ones that act per layer. apply_student: (student params, value) -> params, or
        None for no student (the model keeps its own architecture; the other student knobs
        are then ignored). Knobs apply in registration order, so a later knob overrides an
        earlier one.
    label, digest: the knob's part of the one-line digest; digest None: another knob's
        digest shows it (pruning_criterion, inside pruning_ratio's).
    column, read: the report's per-layer column and how to read it back from a layer's
        resolved policy; None: no column.
    """

    name: str
    scope: Scope
    allowed: str
    valid: Callable[[Any], bool]
    starts_at: Any
    ranged: bool = False
    apply_layer: Callable[[LayerPolicy, Any, bool], LayerPolicy] | None = None
    apply_student: Callable[[dict[str, Any], Any], dict[str, Any] | None] | None = None
    label: str = ""
    digest: Callable[[str, list[Any], Mapping[str, Any]], str] | None = _counts
    column: str | None = None
    read: Callable[[LayerPolicy], Any] | None = None

    def __post_init__(self) -> None:
        if self.scope not in typing.get_args(Scope):
            raise SpaceError(
                f"knob {self.name!r}: scope must be one of {', '.join(typing.get_args(Scope))}, got {self.scope!r}"
            )
        if (self.apply_layer is None) == (self.apply_student is None):
            raise SpaceError(f"knob {self.name!r}: give apply_layer or apply_student (exactly one)")
        if self.apply_student is not None and self.scope != "global":
            raise SpaceError(
                f"knob {self.name!r}: a student knob is global (the student's layers are not the model's)"
            )
        if (self.column is None) != (self.read is None):
            raise SpaceError(f"knob {self.name!r}: a report column needs both column and read")

    @property
    def for_student(self) -> bool:
        return self.apply_student is not None

    def check(self, value: Any, dimension: str | None = None) -> None:
        """SpaceError naming what the knob takes, unless it takes ``value``."""
        if not self.valid(value):
            where = f"dimension {dimension!r}: " if dimension else ""
            raise SpaceError(f"{where}value {value!r} is not allowed; {self.name} takes {self.allowed}")

    def start(self, level: float) -> Any:
        return self.starts_at(level) if callable(self.starts_at) else self.starts_at

    def summarize(self, values: Iterable[Any], params: Mapping[str, Any] | None = None) -> str | None:
        """This knob's part of the digest of ``params`` (``values``: what its dimensions took)."""
        values = list(values)
        if self.digest is None or not values:
            return None
        return self.digest(self.label or self.name, values, params or {}) or None


# -- the registry -------------------------------------------------------------------------
KNOBS: dict[str, Knob] = {}  # name -> knob, in application order


def register_knob(knob: Knob, *, replace: bool = False) -> Knob:
    """Add ``knob`` (last in the application order; a replaced knob keeps its place)."""
    if knob.name in KNOBS and not replace:
        raise SpaceError(f"knob {knob.name!r} is already registered; pass replace=True to replace it")
    KNOBS[knob.name] = knob
    return knob


def knob(name: str) -> Knob:
    try:
        return KNOBS[name]
    except KeyError:
        raise SpaceError(f"unknown knob {name!r}; known knobs: {', '.join(KNOBS)}") from None


def start_point(dimensions: Iterable[Any], level: float) -> dict[str, Any]:
    """{dimension name: its knob's start at ``level``}, fitted to the dimension (the
    nearer end of its range, or its first choice) so that the point is always valid."""
    point = {}
    for dim in dimensions:
        value = knob(dim.knob).start(level)
        if dim.choices is not None:
            point[dim.name] = value if value in dim.choices else dim.choices[0]
        else:
            point[dim.name] = min(max(value, dim.low), dim.high)
    return point


# -- the built-in knobs ---------------------------------------------------------------------
def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _with_bits(spec, bits: int | None):
    if bits is None:
        return dataclasses.replace(spec, bits=None)
    if bits < 8:  # narrow ranges need a good clip and a learned scale to hold accuracy
        return dataclasses.replace(spec, bits=bits, range_init="mse", learn_scale=True)
    return dataclasses.replace(spec, bits=bits)


_FLOAT = LayerQuant(
    weights=dataclasses.replace(DEFAULT_WEIGHTS, bits=None),
    activations=dataclasses.replace(DEFAULT_ACTIVATIONS, bits=None),
)


def _set_bits(side: str, default):
    """Set one side's bits on the layer's spec (the default spec where that side was float).
    Both sides float is left as such, not dropped here, so the other side's knob still sees
    this side's spec; SearchSpace drops it once all knobs have applied."""

    def apply(policy: LayerPolicy, bits: int | None, prunable: bool) -> LayerPolicy:
        current = policy.quantization or _FLOAT
        spec = getattr(current, side)
        return dataclasses.replace(
            policy,
            quantization=dataclasses.replace(
                current, **{side: _with_bits(spec if spec.bits else default, bits)}
            ),
        )

    return apply


def _prune(
    policy: LayerPolicy, prunable: bool, ratio: float | None = None, criterion: str | None = None
) -> LayerPolicy:
    # Ratio and criterion each keep the other's current value; ratio 0 or a layer outside
    # every prunable group means no pruning.
    ratio = ratio if ratio is not None else (policy.pruning.ratio if policy.pruning else 0.0)
    criterion = criterion or (policy.pruning.criterion if policy.pruning else "l2")
    return dataclasses.replace(
        policy, pruning=Pruning(ratio=ratio, criterion=criterion) if ratio > 0 and prunable else None
    )


def _sparsify(policy: LayerPolicy, level: float, prunable: bool) -> LayerPolicy:
    return dataclasses.replace(
        policy,
        sparsity=dataclasses.replace(policy.sparsity or Sparsity(level=level), level=level)
        if level > 0
        else None,
    )


def _pruning_digest(label: str, values: list[Any], params: Mapping[str, Any]) -> str:
    lo, hi = min(values), max(values)
    crit = params.get("pruning_criterion", "")
    return f"{label} {lo:g}" + (f"-{hi:g}" if hi != lo else "") + (f" ({crit})" if crit else "")


def _if_student(digest: Callable[[str, list[Any], Mapping[str, Any]], str]):
    """A student knob's digest, empty where the point chose no student (knob ``student`` False)."""

    def part(label: str, values: list[Any], params: Mapping[str, Any]) -> str:
        return digest(label, values, params) if params.get("student", True) else ""

    return part


def student_shape(width: float | None, blocks: int | None = None) -> str:
    """A student's shape as the digests and the hardware plan name it: "w0.5 b2"."""
    return " ".join(
        part
        for part in (f"w{width:g}" if width is not None else "", f"b{blocks}" if blocks is not None else "")
        if part
    )


@_if_student
def _student_digest(label: str, values: list[Any], params: Mapping[str, Any]) -> str:
    return f"{label} {student_shape(values[0], params.get('student_blocks'))}"


@_if_student
def _student_flag_digest(label: str, values: list[Any], params: Mapping[str, Any]) -> str:
    return "" if "student_width" in params else label  # student_width's part names the student


_BITS = "None (float) or an int in 2..8"
_FRACTION = "a number in [0, 1)"

# Registration order is application order: the pruning criterion after the ratio (it keeps
# the ratio it finds), keep_float after the bits (it overrides them).
for _knob in (
    Knob(
        "weight_bits",
        "layer",
        _BITS,
        lambda v: v is None or (_is_int(v) and 2 <= v <= 8),
        starts_at=8,
        apply_layer=_set_bits("weights", DEFAULT_WEIGHTS),
        label="W",
        column="weight bits",
        read=lambda lp: lp.quantization.weights.bits if lp.quantization else None,
    ),
    Knob(
        "activation_bits",
        "layer",
        _BITS,
        lambda v: v is None or (_is_int(v) and 2 <= v <= 8),
        starts_at=8,
        apply_layer=_set_bits("activations", DEFAULT_ACTIVATIONS),
        label="A",
        column="activation bits",
        read=lambda lp: lp.quantization.activations.bits if lp.quantization else None,
    ),
    Knob(
        "pruning_ratio",
        "group",
        _FRACTION,
        lambda v: _is_number(v) and 0 <= v < 1,
        starts_at=lambda level: level,
        ranged=True,
        apply_layer=lambda lp, ratio, prunable: _prune(lp, prunable, ratio=ratio),
        label="prune",
        digest=_pruning_digest,
        column="pruning ratio",
        read=lambda lp: lp.pruning.ratio if lp.pruning else 0.0,
    ),
    Knob(
        "pruning_criterion",
        "global",
        f"one of {', '.join(CRITERIA)}",
        lambda v: v in CRITERIA,
        starts_at="l2",
        apply_layer=lambda lp, criterion, prunable: _prune(lp, prunable, criterion=criterion),
        digest=None,
    ),
    Knob(
        "sparsity",
        "layer",
        _FRACTION,
        lambda v: _is_number(v) and 0 <= v < 1,
        starts_at=lambda level: level,
        ranged=True,
        apply_layer=_sparsify,
        label="sparsity",
        digest=_span,
    ),
    Knob(
        "student_width",
        "global",
        "a width multiplier in (0, 1]",
        lambda v: _is_number(v) and 0 < v <= 1,
        starts_at=0.5,
        ranged=True,
        apply_student=lambda params, width: {**params, "width": width},
        label="student",
        digest=_student_digest,
    ),
    Knob(
        "student_blocks",
        "global",
        "an int >= 1 (the family's depth: blocks per stage for resnet, blocks kept for mobilenet_cat)",
        lambda v: _is_int(v) and v >= 1,
        starts_at=3,
        apply_student=lambda params, blocks: {**params, "blocks": blocks},
        digest=None,
    ),
    Knob(
        "keep_float",
        "layer",
        "True (keep the layer in float) or False",
        lambda v: isinstance(v, bool),
        starts_at=False,
        apply_layer=lambda lp, keep, prunable: dataclasses.replace(lp, quantization=None) if keep else lp,
        label="keep float",
        digest=lambda label, values, params: f"{label} x{sum(values)}" if any(values) else "",
    ),
    Knob(
        "student_kernel",
        "global",
        f"one of {', '.join(map(str, RESNET_KERNEL_SIZES))} (the resnet family's kernel sizes)",
        lambda v: _is_int(v) and v in RESNET_KERNEL_SIZES,
        starts_at=3,
        apply_student=lambda params, size: {**params, "kernel_size": size},
        label="student kernel",
        digest=_if_student(_value),
    ),
    # Whether to distill at all, so that one fixed set of dimensions (what Optuna's samplers
    # need) can hold both the model's own architecture and its students; an engineer starts
    # without a student.
    Knob(
        "student",
        "global",
        "True (distill into a student of the space's family) or False (keep the model's architecture)",
        lambda v: isinstance(v, bool),
        starts_at=False,
        apply_student=lambda params, on: params if on else None,
        label="student",
        digest=_student_flag_digest,
    ),
):
    register_knob(_knob)
del _knob
