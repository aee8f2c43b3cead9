"""A search space over compression policies, as plain data.

A ``SearchSpace`` is a list of ``Dimension``s (what may vary, and over which values) and
the model's layers it was built for; ``space.policy(values)`` turns one choice of values
into a ``Policy``. Spaces validate on construction, round-trip through JSON, and can be
narrowed (``fix``, ``exclude``) or widened (``extend``) before a search. A space that
searches students together with per-layer or per-group knobs holds each student's layers
and groups (``StudentLayout``) and maps the knobs onto the chosen student's layers. Backends
(Optuna, Ray Tune) translate dimensions into their own distributions; the space knows
nothing of them. What each knob takes and does lives in its registry
(autocompress.search_spaces.knobs).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import itertools
import json
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass

from autocompress.policies import LayerPolicy, Policy, Student
from autocompress.search_spaces.knobs import KNOBS, Knob, SpaceError, knob

__all__ = [
    "KNOBS",
    "SPACE_FORMAT",
    "SPACE_VERSION",
    "Dimension",
    "SearchSpace",
    "SpaceError",
    "StudentLayout",
    "student_choices",
]

SPACE_FORMAT = "autocompress.search_space"
SPACE_VERSION = 1

_STRICT = ConfigDict(extra="forbid")


def _raises_space_error(cls):
    """Pydantic wraps errors raised while validating (``__post_init__``) in a
    ValidationError; let the constructor raise the SpaceError itself."""
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        try:
            init(self, *args, **kwargs)
        except ValidationError as error:
            first = error.errors()[0]
            original = (first.get("ctx") or {}).get("error")
            if isinstance(original, SpaceError):
                raise original from None
            where = ".".join(str(p) for p in first["loc"]) or "(top level)"
            raise SpaceError(f"invalid {cls.__name__} at {where}: {first['msg']}") from None

    cls.__init__ = __init__
    return cls


@_raises_space_error
@dataclass(frozen=True, config=_STRICT)
class Dimension:
    """One searched knob: over ``choices``, or over [low, high] (optionally on a ``step``
    grid or a log scale).

    ``layers``: the layers the value applies to; empty means every layer the knob can
    apply to (a global dimension). A ``pruning_ratio`` dimension covers one group of
    coupled layers (they must share a ratio). ``knob``: a registered knob's name
    (autocompress.search_spaces.knobs).
    """

    knob: str
    layers: tuple[str, ...] = ()
    choices: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False

    def __post_init__(self) -> None:
        try:
            spec = knob(self.knob)
        except SpaceError as error:
            raise SpaceError(f"invalid Dimension at knob: {error}") from None
        ranged = self.low is not None or self.high is not None
        if (self.choices is None) == (not ranged):
            raise SpaceError(
                f"dimension {self.name!r}: give either choices or low and high, not both or neither"
            )
        if ranged:
            if self.low is None or self.high is None or not self.low <= self.high:
                raise SpaceError(
                    f"dimension {self.name!r}: needs low <= high, got low={self.low}, high={self.high}"
                )
            if not spec.ranged:
                raise SpaceError(f"dimension {self.name!r}: {self.knob} takes choices, not a range")
            if self.step is not None and self.log:
                raise SpaceError(f"dimension {self.name!r}: step and log cannot be combined")
        elif not self.choices:
            raise SpaceError(f"dimension {self.name!r}: choices must not be empty")
        if spec.scope == "global" and self.layers:
            raise SpaceError(f"dimension {self.name!r}: {self.knob} is global; leave layers empty")
        for value in self.choices or (self.low, self.high):
            spec.check(value, self.name)

    @property
    def spec(self) -> Knob:
        """The registered knob this dimension varies."""
        return knob(self.knob)

    @property
    def name(self) -> str:
        """``knob`` for a global dimension, ``knob:first_layer`` otherwise."""
        return self.knob if not self.layers else f"{self.knob}:{self.layers[0]}"

    @property
    def is_global(self) -> bool:
        return not self.layers

    def check(self, value: Any) -> Any:
        """The value if this dimension can take it; SpaceError otherwise."""
        if self.choices is not None:
            if value not in self.choices:
                raise SpaceError(f"{self.name}={value!r} is not one of the choices {list(self.choices)}")
            return value
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not self.low <= value <= self.high
        ):
            raise SpaceError(f"{self.name}={value!r} is outside [{self.low}, {self.high}]")
        return float(value)

    def describe(self) -> str:
        if self.choices is not None:
            values = "{" + ", ".join("float" if c is None else str(c) for c in self.choices) + "}"
        else:
            values = (
                f"[{self.low}, {self.high}]"
                + (f" step {self.step}" if self.step else "")
                + (" log" if self.log else "")
            )
        scope = "all layers" if self.is_global else ", ".join(self.layers)
        return f"{self.name:<40} {values:<28} {scope}"


@_raises_space_error
@dataclass(frozen=True, config=_STRICT)
class StudentLayout:
    """One student's compressible layers and prunable groups (leader -> coupled layers), for
    its family's ``params``: what a space maps the model's per-layer and per-group choices
    onto when a point chooses this student. ``build_space`` builds each student to read them.
    """

    params: dict[str, Any]
    layers: tuple[str, ...]
    groups: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        stray = sorted({layer for layers in self.groups.values() for layer in layers} - set(self.layers))
        if stray:
            raise SpaceError(
                f"student layout {self.params}: its groups name layers the student does not have: {stray}"
            )

    def pinned(self, pinned: Iterable[str]) -> tuple[str, ...]:
        """The pinned names or patterns that match a layer of this student (a student without
        the pinned layer, e.g. one that dropped its block, has nothing to keep there)."""
        return tuple(p for p in pinned if any(_matches(layer, p) for layer in self.layers))


def _listed(names: list[str], shown: int = 3) -> str:
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def _matches(layer: str, pattern: str) -> bool:
    return layer == pattern or fnmatch.fnmatchcase(layer, pattern)


def student_choices(
    dimensions: Iterable[Dimension],
    family: str | None,
    base: Student | None = None,
    fixed: Mapping[str, Any] | None = None,
) -> list[Student]:
    """Every distinct student a point over ``dimensions`` can choose (no student: not listed),
    from the choices of the student dimensions (or their ``fixed`` values); without student
    dimensions, ``base`` (the space's base student), if any."""
    fixed = fixed or {}
    dims = [d for d in dimensions if d.spec.for_student]
    options = []
    for dim in dims:
        if dim.name in fixed:
            options.append((fixed[dim.name],))
        elif dim.choices is not None:
            options.append(dim.choices)
        else:
            raise SpaceError(
                f"dimension {dim.name!r}: a student dimension searched over a range cannot be combined with "
                "per-layer or pruning dimensions (each student's layers must be known in advance); give choices"
            )
    found: list[Student] = []
    for combo in itertools.product(*options):
        student = _student_of({d.knob: v for d, v in zip(dims, combo)}, family, base)
        if student is not None and student not in found:
            found.append(student)
    return found


def _student_of(chosen: Mapping[str, Any], family: str | None, base: Student | None) -> Student | None:
    """The student for the student knobs' values ``chosen`` ({knob: value}), applied in
    registry order to the params of ``base`` (the space's base student); a knob that says
    "no student" ends it."""
    knobs = [k for k in KNOBS.values() if k.for_student and k.name in chosen]
    if not knobs:
        return base
    params: dict[str, Any] | None = dict(base.params) if base else {}
    for k in knobs:
        params = k.apply_student(params, chosen[k.name])
        if params is None:
            return None
    return dataclasses.replace(base or Student(family=family), family=family, params=params)


@_raises_space_error
@dataclass(frozen=True, config=_STRICT)
class SearchSpace:
    """Dimensions over the compressible ``layers`` of one model, plus what stays fixed.

    groups: the model's prunable groups of coupled layers (leader -> layers).
    base: the policy every candidate starts from (pinned layers, distillation settings,
        the quantizer settings that are not searched).
    fixed: dimension name -> value, kept out of the search.
    start_points: values to try first (e.g. uniform INT8), as {dimension name: value}.
    student_family: the registered student family, for student_* dimensions.
    students: the layers and groups of each student a point can choose, needed where the
        space also has per-layer or per-group dimensions (see ``policy``).
    """

    dimensions: tuple[Dimension, ...]
    layers: tuple[str, ...]
    groups: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    base: Policy = Policy()
    fixed: dict[str, Any] = dataclasses.field(default_factory=dict)
    start_points: tuple[dict[str, Any], ...] = ()
    student_family: str | None = None
    students: tuple[StudentLayout, ...] = ()
    preset: str | None = None
    format: Literal["autocompress.search_space"] = SPACE_FORMAT
    version: Literal[1] = SPACE_VERSION

    def __post_init__(self) -> None:
        names = [d.name for d in self.dimensions]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise SpaceError(f"duplicate dimensions: {', '.join(duplicated)}")
        known = set(self.layers)
        grouped = {layer for layers in self.groups.values() for layer in layers}
        covered: dict[tuple[str, str], str] = {}
        for dim in self.dimensions:
            unknown = [layer for layer in dim.layers if layer not in known]
            if unknown:
                raise SpaceError(
                    f"dimension {dim.name!r} names unknown layers {unknown}; "
                    f"the model's layers: {', '.join(self.layers)}"
                )
            scope = dim.spec.scope
            if (
                scope == "group"
                and dim.layers
                and tuple(dim.layers) not in {tuple(v) for v in self.groups.values()}
            ):
                raise SpaceError(
                    f"dimension {dim.name!r}: a {dim.knob} covers one whole group of coupled layers; groups: "
                    + "; ".join(", ".join(v) for v in self.groups.values())
                )
            scope = dim.layers or {"layer": self.layers, "group": tuple(grouped), "global": ("*",)}[scope]
            for layer in scope:
                other = covered.setdefault((dim.knob, layer), dim.name)
                if other != dim.name:
                    raise SpaceError(
                        f"dimensions {other!r} and {dim.name!r} both set {dim.knob} of layer {layer!r}; keep one"
                    )
        students = [d.name for d in self.dimensions if d.spec.for_student]
        if students and self.student_family is None:
            raise SpaceError(
                f"student dimensions ({', '.join(students)}) need student_family "
                "(a registered family, e.g. 'resnet')"
            )
        layouts = [layout.params for layout in self.students]
        if any(layouts.count(params) > 1 for params in layouts):
            raise SpaceError("students: two layouts for the same student params; keep one")
        mapped = self._mapped()
        if mapped and (students or self.base.student is not None):
            for student in student_choices(
                self.dimensions, self.student_family, self.base.student, self.fixed
            ):
                if self._layout(student.params) is None:
                    raise SpaceError(
                        f"dimensions {_listed(mapped)} set the model's layers and groups; a point with the "
                        f"{student.family!r} student {student.params} maps them onto that student's layers, "
                        "but the space has no StudentLayout for it. Build the space with "
                        "build_space(model, 'joint', example_input=...), which reads every student's layers, "
                        "or add the layout to students=."
                    )
        by_name = {d.name: d for d in self.dimensions}
        for name, value in self.fixed.items():
            if name not in by_name:
                raise SpaceError(
                    f"fixed value for unknown dimension {name!r}; dimensions: {', '.join(by_name)}"
                )
            by_name[name].check(value)
        for point in self.start_points:
            self._complete(point)

    # -- views ----------------------------------------------------------------------------
    @property
    def searched(self) -> tuple[Dimension, ...]:
        """The dimensions a search samples (not fixed)."""
        return tuple(d for d in self.dimensions if d.name not in self.fixed)

    def names(self) -> list[str]:
        return [d.name for d in self.searched]

    def describe(self) -> str:
        lines = [
            f"search space{f' {self.preset!r}' if self.preset else ''}: "
            f"{len(self.searched)} searched dimensions over {len(self.layers)} layers"
        ]
        lines += ["  " + d.describe() for d in self.searched]
        lines += [f"  {name} = {value!r} (fixed)" for name, value in self.fixed.items()]
        if self.students:
            lines.append(
                f"  per-layer and per-group values map onto each of {len(self.students)} "
                f"{self.student_family} students' layers of the same name"
            )
        return "\n".join(lines)

    # -- narrowing / widening -------------------------------------------------------------
    def fix(self, **values: Any) -> SearchSpace:
        """A copy with these dimensions (by name) fixed to these values (and taken out of
        the start points, which would otherwise override them)."""
        points: list[dict[str, Any]] = []
        for point in self.start_points:
            point = {k: v for k, v in point.items() if k not in values}
            if point not in points:
                points.append(point)
        return dataclasses.replace(self, fixed={**self.fixed, **values}, start_points=tuple(points))

    def exclude(self, *patterns: str) -> SearchSpace:
        """A copy without the dimensions whose names match these fnmatch patterns; the
        excluded knobs fall back to ``base``."""
        kept = tuple(d for d in self.dimensions if not any(fnmatch.fnmatchcase(d.name, p) for p in patterns))
        if len(kept) == len(self.dimensions):
            raise SpaceError(
                f"exclude{patterns}: no dimension matches; dimensions: {', '.join(d.name for d in self.dimensions)}"
            )
        names = {d.name for d in kept}
        return dataclasses.replace(
            self,
            dimensions=kept,
            fixed={k: v for k, v in self.fixed.items() if k in names},
            start_points=tuple({k: v for k, v in p.items() if k in names} for p in self.start_points),
        )

    def extend(self, *dimensions: Dimension) -> SearchSpace:
        """A copy with more dimensions (validated against the existing ones); the start
        points take each new dimension's first choice (or its low end)."""
        added = {d.name: (d.choices or (d.low,))[0] for d in dimensions}
        return dataclasses.replace(
            self,
            dimensions=self.dimensions + tuple(dimensions),
            start_points=tuple({**p, **added} for p in self.start_points),
        )

    # -- values -> policy -----------------------------------------------------------------
    def _complete(self, values: Mapping[str, Any]) -> dict[str, Any]:
        by_name = {d.name: d for d in self.dimensions}
        unknown = sorted(set(values) - set(by_name))
        if unknown:
            raise SpaceError(f"values for unknown dimensions {unknown}; dimensions: {', '.join(by_name)}")
        merged = {**self.fixed, **values}
        missing = [d.name for d in self.dimensions if d.name not in merged]
        if missing:
            raise SpaceError(f"no value for dimensions {missing}")
        return {name: by_name[name].check(value) for name, value in merged.items()}

    def policy(self, values: Mapping[str, Any]) -> Policy:
        """The policy for one choice of values (every searched dimension needs one).

        With a student and per-layer or per-group dimensions, the knobs apply to the
        student's layers (``_onto_student``); the policy's overrides and pinned layers then
        name the student's layers, as ``apply_policy`` expects (it prunes and quantizes the
        student after distilling into it).
        """
        values = self._complete(values)
        student = self._student(values)
        if student is not None and not self._mapped():  # all knobs are global: one default layer policy
            knob_of = self._by_layer(values, ("*",))
            default = self._layer_policy(self.base.default, _getter(knob_of, "*"), prunable=False)
            return _compact(self.base, {"*": default}, student)
        if student is None:
            layers, groups, pinned = self.layers, self.groups, self.base.pinned
            knob_of = self._by_layer(values, self.layers)
        else:
            layout = self._layout(student.params)
            if layout is None:  # validated on construction; only an unvalidated copy gets here
                raise SpaceError(f"no StudentLayout for the {student.family!r} student {student.params}")
            layers, groups, pinned = layout.layers, layout.groups, layout.pinned(self.base.pinned)
            knob_of = self._onto_student(values, layout)
        grouped = {layer for members in groups.values() for layer in members}
        layer_policies = {
            layer: self._layer_policy(
                self.base.for_layer(layer), _getter(knob_of, layer), prunable=layer in grouped
            )
            for layer in layers
        }
        return dataclasses.replace(_compact(self.base, layer_policies, student), pinned=pinned)

    def layers_of(self, values: Mapping[str, Any]) -> tuple[str, ...]:
        """The compressible layers that the policy for ``values`` applies to, to resolve it
        per layer (e.g. a report's per-layer table): the model's without a student, the
        student's with one; empty for a student whose layers the space does not hold (the
        distillation preset's: its policy is one default for every layer)."""
        student = self._student(self._complete(values))
        if student is None:
            return self.layers
        layout = self._layout(student.params)
        return layout.layers if layout is not None else ()

    def _student(self, values: Mapping[str, Any]) -> Student | None:
        chosen = {d.knob: values[d.name] for d in self.dimensions if d.spec.for_student}
        return _student_of(chosen, self.student_family, self.base.student)

    def _by_layer(self, values: Mapping[str, Any], layers: Iterable[str]) -> dict[tuple[str, str], Any]:
        """{(knob, layer or "*"): value} for the dimensions' ``layers`` among ``layers``; a
        global dimension's value under "*"."""
        layers = set(layers)
        knob_of: dict[tuple[str, str], Any] = {}
        for dim in self.dimensions:
            if dim.is_global:
                knob_of[(dim.knob, "*")] = values[dim.name]
            for layer in dim.layers:
                if layer in layers:
                    knob_of[(dim.knob, layer)] = values[dim.name]
        return knob_of

    def _mapped(self) -> list[str]:
        """The dimensions that set the model's own layers or groups (per-layer, per-group, or a
        global pruning ratio, which needs the groups): with a student they need its layout."""
        return [d.name for d in self.dimensions if not d.is_global or d.spec.scope == "group"]

    def _layout(self, params: Mapping[str, Any]) -> StudentLayout | None:
        return next((layout for layout in self.students if layout.params == params), None)

    def _onto_student(self, values: Mapping[str, Any], layout: StudentLayout) -> dict[tuple[str, str], Any]:
        """{(knob, student layer or "*"): value}: one point's choices for the model, on a student.

        A global dimension applies to every student layer. A per-layer or per-group value
        applies to the student's layer of the same name (the built-in families name a
        student's layers as the model's: a narrower student keeps every name, a shallower
        one the first blocks of each stage, and each of its groups lies in one of the model's).
        A student layer the model does not have takes the value most of that knob's
        dimensions took, or for a per-group knob (a pruning ratio) their mean. Coupled layers
        of the student share one group value: where they took different ones (the student
        couples layers that the model keeps apart), their mean.
        """
        knob_of = self._by_layer(values, layout.layers)
        per_layer = [d for d in self.dimensions if not d.is_global]
        for name in dict.fromkeys(d.knob for d in per_layer):
            taken = [values[d.name] for d in per_layer if d.knob == name]
            per_group = knob(name).scope == "group"
            fallback = sum(taken) / len(taken) if per_group else Counter(taken).most_common(1)[0][0]
            for layer in layout.layers:
                if layer not in self.layers:
                    knob_of[(name, layer)] = fallback
            if not per_group:
                continue
            for members in layout.groups.values():
                found = [knob_of[(name, layer)] for layer in members if (name, layer) in knob_of]
                if found:
                    shared = found[0] if len(set(found)) == 1 else sum(found) / len(found)
                    knob_of.update({(name, layer): shared for layer in members})
        return knob_of

    @staticmethod
    def _layer_policy(base: LayerPolicy, get, prunable: bool) -> LayerPolicy:
        policy = base
        for k in KNOBS.values():  # registration order: later knobs override earlier ones
            has, value = get(k.name)
            if has and k.apply_layer is not None:
                policy = k.apply_layer(policy, value, prunable)
        quant = policy.quantization
        if (
            quant is not base.quantization
            and quant is not None
            and not (quant.weights.enabled or quant.activations.enabled)
        ):
            policy = dataclasses.replace(
                policy, quantization=None
            )  # knobs made both sides float: no quantization
        return policy

    # -- serialisation --------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return _ADAPTER.dump_python(self, mode="json")

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchSpace:
        try:
            return _ADAPTER.validate_python(dict(data))
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "(top level)"
            raise SpaceError(f"invalid search space at {where}: {first['msg']}") from None

    @classmethod
    def from_json(cls, text: str) -> SearchSpace:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise SpaceError(f"search space is not valid JSON: {error}") from None
        return cls.from_dict(data)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(self.to_json() + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> SearchSpace:
        return cls.from_json(Path(path).read_text())


def _getter(knob_of: Mapping[tuple[str, str], Any], layer: str) -> Callable[[str], tuple[bool, Any]]:
    """knob name -> (set?, value) for ``layer``: its own value, else the global one."""

    def get(name: str) -> tuple[bool, Any]:
        for key in ((name, layer), (name, "*")):
            if key in knob_of:
                return True, knob_of[key]
        return False, None

    return get


def _compact(base: Policy, layer_policies: Mapping[str, LayerPolicy], student: Student | None) -> Policy:
    """The most common layer policy becomes the default; the rest are exact-name overrides."""
    if "*" in layer_policies:
        return dataclasses.replace(base, default=layer_policies["*"], overrides={}, student=student)
    default, _ = Counter(layer_policies.values()).most_common(1)[0]
    overrides = {layer: lp for layer, lp in layer_policies.items() if lp != default}
    return dataclasses.replace(base, default=default, overrides=overrides, student=student)


_ADAPTER = TypeAdapter(SearchSpace)
