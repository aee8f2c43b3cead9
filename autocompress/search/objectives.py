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

import numpy as np

from autocompress.evaluators.metrics import Metric, paired_bootstrap, score

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
    baseline: float | None = None  # its value for the uncompressed model (None: a callable's, unknown)

    def __call__(self, measurements: Any) -> float:
        value = float(self.read(measurements))
        if not math.isfinite(value):
            raise ValueError(
                f"objective {self.name!r} is {value} for this trial; objectives must be finite numbers"
            )
        return value


def _measure(name: str) -> Objective:
    key, direction = MEASURES[name]
    return Objective(name, direction, operator.attrgetter(key), baseline=1.0)  # ratios to the baseline


def _weighted(weights: Mapping[str, float]) -> Objective:
    bad = [k for k in weights if k not in MEASURES]
    if bad or not weights:
        raise ValueError(f"weighted objective {dict(weights)!r}: keys must be among {', '.join(MEASURES)}")
    if (
        any(
            isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= w < math.inf
            for w in weights.values()
        )
        or sum(weights.values()) <= 0
    ):  # a NaN or infinite weight would make every trial's objective NaN or inf, silently
        raise ValueError(f"weighted objective {dict(weights)!r}: weights must be finite, >= 0 and not all 0")
    # Every term as a ratio where lower is better (throughput -> its inverse, i.e. latency).
    terms = {
        k: (lambda m: 1.0 / m.throughput_ratio) if k == "throughput" else operator.attrgetter(MEASURES[k][0])
        for k in weights
    }
    name = "weighted(" + ",".join(f"{k}={w:g}" for k, w in weights.items()) + ")"
    return Objective(
        name,
        "minimize",
        lambda m: sum(w * terms[k](m) for k, w in weights.items()),
        baseline=float(sum(weights.values())),  # every term is a ratio, 1 for the baseline
    )


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


# Drops are reported with one-sided bounds at this level when the constraint itself uses
# point estimates (confidence=None).
REPORT_CONFIDENCE = 0.9


@dataclasses.dataclass(frozen=True)
class DropEstimate:
    """How much a candidate's metric drops below the baseline's on the same samples, with
    one-sided bounds at ``confidence`` from a paired bootstrap (2000 resamples)."""

    drop: float  # baseline - candidate (0.01 = 1 point of top-1)
    low: float
    high: float
    confidence: float
    samples: int
    baseline: float
    accuracy: float
    violation: float  # of the constraint: at the upper bound when it decides with confidence

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DropEstimate:
        return cls(**data)

    def describe(self) -> str:
        """'0.40 pt (90%: -0.20..1.10, 1000 samples)'."""
        return (
            f"{100 * self.drop:.2f} pt ({self.confidence:.0%}: {100 * self.low:.2f}..{100 * self.high:.2f}, "
            f"{self.samples} samples)"
        )


@dataclasses.dataclass(frozen=True)
class AccuracyConstraint:
    """Accuracy may drop at most ``max_drop`` below the baseline's: absolute (0.01 = 1
    point of top-1) or, with ``relative``, a fraction of the baseline (0.01 = 1%).

    confidence: None decides on the measured drop; 0.9 on its one-sided 90% upper bound
    (paired with the baseline on the same samples), so that a candidate passes only when
    the data show it keeps the promise, not when it was lucky on these samples."""

    max_drop: float = 0.01
    relative: bool = False
    confidence: float | None = None

    def __post_init__(self) -> None:
        if (
            isinstance(self.max_drop, bool)
            or not isinstance(self.max_drop, (int, float))
            or not 0 <= self.max_drop < 1
        ):
            raise ValueError(f"max_accuracy_drop must be in [0, 1) (0.01 = 1 point), got {self.max_drop!r}")
        if not isinstance(self.relative, bool):  # 1 or "yes" would be taken as True, 2 too
            raise ValueError(
                "relative_drop must be True (max_accuracy_drop is a fraction of the baseline's accuracy) "
                f"or False (points of the metric), got {self.relative!r}"
            )
        if self.confidence is not None and (
            isinstance(self.confidence, bool)
            or not isinstance(self.confidence, (int, float))
            or not 0.5 <= self.confidence < 1
        ):
            raise ValueError(
                f"confidence must be None (decide on the measured drop) or in [0.5, 1), e.g. 0.9; "
                f"got {self.confidence!r}"
            )

    def floor(self, baseline):
        """The accuracy a candidate needs (works on numbers and numpy arrays)."""
        return baseline * (1 - self.max_drop) if self.relative else baseline - self.max_drop

    def violation(self, accuracy: float, baseline: float) -> float:
        """<= 0 when feasible: how far below the floor the (point) accuracy is."""
        return self.floor(baseline) - accuracy

    def allowed_drop(self, baseline: float) -> float:
        return baseline - self.floor(baseline)

    def assess(
        self,
        metric: Metric | None,
        baseline_logits: np.ndarray,
        logits: np.ndarray,
        targets: np.ndarray,
        what: str = "a candidate",
    ) -> DropEstimate:
        """The candidate's drop against the baseline on the same samples, and the verdict."""
        baseline = score(metric, baseline_logits, targets, "the uncompressed model")
        accuracy = score(metric, logits, targets, what)
        level = self.confidence or REPORT_CONFIDENCE
        base_b, cand_b = paired_bootstrap(metric, baseline_logits, logits, targets)
        drops = base_b - cand_b
        if self.confidence is None:
            violation = self.violation(accuracy, baseline)
        else:
            violation = float(np.quantile(self.floor(base_b) - cand_b, self.confidence))
        return DropEstimate(
            drop=baseline - accuracy,
            low=float(np.quantile(drops, 1 - level)),
            high=float(np.quantile(drops, level)),
            confidence=level,
            samples=len(np.asarray(targets).reshape(-1)),
            baseline=baseline,
            accuracy=accuracy,
            violation=violation,
        )

    def describe(self, baseline: float) -> str:
        kind = f"{self.max_drop:.1%} relative" if self.relative else f"{100 * self.max_drop:.2g} pt"
        sure = f", at {self.confidence:.0%} confidence" if self.confidence is not None else ""
        return f"accuracy >= {self.floor(baseline):.4f} (baseline {baseline:.4f} - {kind}{sure})"
