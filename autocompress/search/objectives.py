"""What a search optimises (objectives) and what it must respect (the accuracy constraint).

Objective values are ratios to the uncompressed baseline measured on the same target, so
that a weighted mix of latency and size is meaningful and a number reads the same on any
machine: latency 0.25 = 4x faster; throughput 4.0 = 4x more samples per second; size 0.3
= an IR whose weights take 30% of the baseline's bytes.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from collections.abc import Callable, Mapping
from typing import Any, Literal

Direction = Literal["minimize", "maximize"]
MEASURES: dict[str, tuple[str, Direction]] = {
    "latency": ("latency_ratio", "minimize"),
    "throughput": ("throughput_ratio", "maximize"),
    "size": ("size_ratio", "minimize"),
}


@dataclasses.dataclass(frozen=True)
class Objective:
    """One objective: a name, a direction and how to read it from a trial's measurements."""

    name: str
    direction: Direction
    read: Callable[[Any], float] = dataclasses.field(compare=False, repr=False)  # Measurements -> value

    def __call__(self, measurements: Any) -> float:
        value = float(self.read(measurements))
        if not math.isfinite(value):
            raise ValueError(
                f"objective {self.name!r} is {value} for this trial; objectives must be finite numbers"
            )
        return value


def _measure(name: str) -> Objective:
    key, direction = MEASURES[name]
    return Objective(name, direction, operator.attrgetter(key))


def _weighted(weights: Mapping[str, float]) -> Objective:
    bad = [k for k in weights if k not in MEASURES]
    if bad or not weights:
        raise ValueError(f"weighted objective {dict(weights)!r}: keys must be among {', '.join(MEASURES)}")
    if any(not isinstance(w, (int, float)) or w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ValueError(f"weighted objective {dict(weights)!r}: weights must be >= 0 and not all 0")
    # Every term as a ratio where lower is better (throughput -> its inverse, i.e. latency).
    terms = {
        k: (lambda m: 1.0 / m.throughput_ratio) if k == "throughput" else operator.attrgetter(MEASURES[k][0])
        for k in weights
    }
    name = "weighted(" + ",".join(f"{k}={w:g}" for k, w in weights.items()) + ")"
    return Objective(name, "minimize", lambda m: sum(w * terms[k](m) for k, w in weights.items()))


def parse_objectives(spec: Any) -> list[Objective]:
    """``"latency" | "throughput" | "size"``, a {measure: weight} mix, a callable
    ``f(measurements) -> float`` (minimised; it gets a search.Measurements), or a list of
    these (a Pareto search)."""
    if isinstance(spec, (list, tuple)):
        if not spec:
            raise ValueError("objective list is empty; give at least one objective")
        objectives = [o for item in spec for o in parse_objectives(item)]
        names = [o.name for o in objectives]
        if len(set(names)) != len(names):
            raise ValueError(f"objectives repeat: {names}")
        return objectives
    if isinstance(spec, Objective):
        return [spec]
    if isinstance(spec, str):
        if spec not in MEASURES:
            raise ValueError(
                f"unknown objective {spec!r}; use one of {', '.join(MEASURES)}, a {{measure: weight}} dict, "
                "a callable(measurements) -> float to minimise, or a list of these"
            )
        return [_measure(spec)]
    if isinstance(spec, Mapping):
        return [_weighted(spec)]
    if callable(spec):
        return [Objective(getattr(spec, "__name__", "custom"), "minimize", spec)]
    raise ValueError(
        f"objective must be a name, a dict of weights, a callable or a list; got {type(spec).__name__}"
    )


def describe_objectives(spec: Any) -> Any:
    """A JSON-able description of an objective spec (callables by name), stored with the study."""
    if isinstance(spec, (list, tuple)):
        return [describe_objectives(s) for s in spec]
    if isinstance(spec, (str, Mapping)):
        return spec if isinstance(spec, str) else dict(spec)
    return {"callable": getattr(spec, "__qualname__", getattr(spec, "name", repr(spec)))}


@dataclasses.dataclass(frozen=True)
class AccuracyConstraint:
    """Accuracy may drop at most ``max_drop`` below the baseline's: absolute (0.01 = 1
    point of top-1) or, with ``relative``, a fraction of the baseline (0.01 = 1%)."""

    max_drop: float = 0.01
    relative: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.max_drop, (int, float)) or not 0 <= self.max_drop < 1:
            raise ValueError(f"max_accuracy_drop must be in [0, 1) (0.01 = 1 point), got {self.max_drop!r}")

    def floor(self, baseline: float) -> float:
        return baseline * (1 - self.max_drop) if self.relative else baseline - self.max_drop

    def violation(self, accuracy: float, baseline: float) -> float:
        """<= 0 when feasible: how far below the floor the accuracy is."""
        return self.floor(baseline) - accuracy

    def describe(self, baseline: float) -> str:
        kind = f"{self.max_drop:.1%} relative" if self.relative else f"{100 * self.max_drop:.2g} pt"
        return f"accuracy >= {self.floor(baseline):.4f} (baseline {baseline:.4f} - {kind})"
