"""What a search returns: the best feasible policy, the Pareto front, every trial."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from autocompress.policies import Policy
from autocompress.search.trial import Measurements, TrialOutcome
from autocompress.search_spaces.knobs import KNOBS


@dataclasses.dataclass(frozen=True)
class TrialRecord:
    """One finished trial: its policy, what was measured and whether it met the constraint."""

    number: int
    state: str  # COMPLETE, PRUNED, FAIL
    params: dict[str, Any]
    policy: Policy | None
    measurements: Measurements | None
    values: tuple[float, ...] | None  # objective values (ratios to the baseline)
    violation: float | None  # accuracy floor - accuracy; <= 0 is feasible
    seconds: float | None
    error: str | None = None
    steps: int | None = None  # fine-tuning steps it ran (None: not recorded)

    @classmethod
    def from_outcome(
        cls,
        number: int,
        params: dict[str, Any],
        policy: Policy | None,
        outcome: TrialOutcome,
        seconds: float | None,
    ) -> TrialRecord:
        return cls(
            number,
            outcome.state,
            dict(params),
            policy,
            outcome.measurements,
            outcome.values,
            outcome.violation,
            seconds,
            outcome.error,
            outcome.steps,
        )

    @property
    def feasible(self) -> bool:
        return self.state == "COMPLETE" and self.violation is not None and self.violation <= 0

    def row(self) -> dict[str, Any]:
        m = self.measurements
        return {
            "trial": self.number,
            "state": self.state,
            "feasible": self.feasible,
            "accuracy": m.accuracy if m else None,
            "drop": m.drop.drop if m else None,
            "drop_high": m.drop.high if m else None,
            "speedup": m.speedup if m else None,
            "size_ratio": m.size_ratio if m else None,
            "values": list(self.values) if self.values else None,
            "seconds": self.seconds,
            "steps": self.steps,
            "latency_cached": m.latency_cached if m else None,
            "error": self.error,
            "params": self.params,
        }


@dataclasses.dataclass
class SearchResult:
    """The outcome of a search.

    best: the best feasible trial (on the first objective), or, when no trial met the
        constraint, the closest one (``feasible`` is then False and ``message`` says so).
    pareto: the feasible trials no other feasible trial beats on every objective and on
        accuracy, best first.
    trials: every trial, finished or not, in order (those in ``remeasured`` with their
        side-by-side figures).
    baseline: the uncompressed model as measured on the target.
    confirmation: the candidates as confirmed on data the search did not select on, in
        order, until one passed (None: no confirmation data). Candidates are the trials whose
        measured drop is within the allowed one, fastest first, so they may miss the bound
        and sit off the front; ``best`` is then the confirmed model (re-fine-tuned at the
        final budget).
    test: the best policy re-checked on the test data (exported IR on OpenVINO), with a
        full latency measurement against the baseline, its drop with bounds, and whether
        the promise held (``held``); None without a test_loader.
    warnings: what the user should know to trust the result (e.g. too few validation
        samples to resolve the constraint).
    remeasured: the best candidates whose latency intervals overlapped, re-timed side by
        side before the pick (trial: speedup in the search, speedup side by side).
    floor: the validation accuracy a trial needs to be feasible (baseline minus the
        allowed drop).
    layers: the compressible layers the best policy applies to: the model's, or its
        student's when the best policy distils into one.
    """

    study_name: str
    storage: str
    objectives: list[dict[str, str]]
    constraint: str
    baseline: dict[str, Any]
    trials: list[TrialRecord]
    best: TrialRecord | None
    pareto: list[TrialRecord]
    feasible: bool
    message: str
    workdir: str
    test: dict[str, Any] | None = None
    strategy: str = "direct"
    seconds: float = 0.0
    floor: float | None = None
    layers: tuple[str, ...] = ()
    confirmation: list[Any] | None = None  # autocompress.search.confirm.Confirmation, in the order tried
    warnings: list[str] = dataclasses.field(default_factory=list)
    hardware: dict[str, Any] | None = None  # the plan, and its latency model's error on the trials
    remeasured: list[dict[str, Any]] | None = None

    @property
    def best_policy(self) -> Policy | None:
        return self.best.policy if self.best else None

    def trials_table(self) -> list[dict[str, Any]]:
        return [t.row() for t in self.trials]

    def to_dict(self) -> dict[str, Any]:
        def record(t: TrialRecord | None):
            if t is None:
                return None
            measurements = t.measurements.to_dict() if t.measurements else None
            return {
                **t.row(),
                "policy": t.policy.to_dict() if t.policy else None,
                "measurements": measurements,
            }

        return {
            "study_name": self.study_name,
            "storage": self.storage,
            "strategy": self.strategy,
            "objectives": self.objectives,
            "constraint": self.constraint,
            "floor": self.floor,
            "feasible": self.feasible,
            "message": self.message,
            "baseline": self.baseline,
            "best": record(self.best),
            "pareto": [record(t) for t in self.pareto],
            "confirmation": [c.to_dict() for c in self.confirmation]
            if self.confirmation is not None
            else None,
            "test": self.test,
            "warnings": self.warnings,
            "hardware": self.hardware,
            "remeasured": self.remeasured,
            "trials": self.trials_table(),
            "seconds": self.seconds,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)

    def pareto_table(self) -> str:
        """The Pareto front (feasible trials) as a text table, best first."""
        header = [
            "trial",
            "val acc",
            "drop pt (bounds)",
            "speedup",
            "latency ms",
            "IR size",
            "params",
            "policy",
        ]
        lines = [header]
        base = self.baseline["accuracy"]
        for t in self.pareto:
            m = t.measurements
            lines.append(
                [
                    str(t.number),
                    f"{100 * m.accuracy:.2f}%",
                    f"{100 * (base - m.accuracy):.2f}"
                    + f" ({100 * m.drop.low:.2f}..{100 * m.drop.high:.2f})",
                    f"{m.speedup:.2f}x",
                    f"{m.latency_ms:.4f}",
                    f"{m.size_ratio:.0%}",
                    f"{m.parameters:,}",
                    summarize_policy(t.params),
                ]
            )
        widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
        out = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in lines]
        out.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(out)

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for t in self.trials:
            counts[t.state] = counts.get(t.state, 0) + 1
        lines = [
            f"study {self.study_name!r}: {len(self.trials)} trials "
            f"({', '.join(f'{n} {s.lower()}' for s, n in counts.items())}) "
            f"in {self.seconds:.0f} s; {sum(t.feasible for t in self.trials)} feasible; {self.constraint}",
            self.message,
        ]
        if self.test:
            t = self.test
            lines.append(
                f"test set: baseline {100 * t['baseline_accuracy']:.2f}%, best {100 * t['accuracy']:.2f}% "
                f"(drop {100 * t['drop']:.2f} pt, {t['confidence']:.0%} bounds {100 * t['drop_low']:.2f}.."
                f"{100 * t['drop_high']:.2f}, {t['samples']} samples); speedup {t['speedup']:.2f}x "
                f"({t['baseline_latency_ms']:.4f} -> {t['latency_ms']:.4f} ms, {t['rounds']} alternating rounds)"
            )
            if t.get("selected_speedup_interval"):
                low, high = t["selected_speedup_interval"]
                agrees = "within" if t.get("speedup_agrees") else "OUTSIDE"
                lines.append(
                    f"the search measured {t['selected_speedup']:.2f}x ({t['selected_speedup_confidence'] or 0:.0%} "
                    f"interval {low:.2f}..{high:.2f}x); this re-check is {agrees} it"
                )
            lines.append(
                f"the promise held on the test split: a drop of {100 * t['drop']:.2f} pt, at most "
                f"{100 * t['allowed_drop']:.2f} pt allowed"
                if t["held"]
                else f"THE PROMISE DID NOT HOLD on the test split: the delivered policy dropped "
                f"{100 * t['drop']:.2f} pt there, more than the {100 * t['allowed_drop']:.2f} pt allowed"
            )
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)

    def deploy(self, directory: str | Path) -> Path:
        """Copy the best model's IR, ONNX and policy, with a manifest of what was measured."""
        if self.best is None or self.best.measurements is None:
            raise ValueError(f"no trial to deploy: {self.message}")
        directory = Path(directory)
        if directory.exists() and any(directory.iterdir()) and not (directory / "manifest.json").exists():
            raise ValueError(
                f"{directory} holds other files; deploy into a new or empty folder, or a previous deployment"
            )
        directory.parent.mkdir(parents=True, exist_ok=True)
        # Built beside it, then swapped in: the folder is never half old, half new.
        staging = directory.with_name(f".{directory.name}.staging-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        source = Path(self.best.measurements.ir_path)
        for suffix in (".xml", ".bin", ".onnx"):
            if source.with_suffix(suffix).exists():
                shutil.copy2(source.with_suffix(suffix), staging / f"model{suffix}")
        self.best.policy.save(staging / "policy.json")
        manifest = {
            "policy": "policy.json",
            "openvino_ir": "model.xml",
            "onnx": "model.onnx",
            "trial": self.best.number,
            "feasible": self.feasible,
            "constraint": self.constraint,
            "validation": {
                k: v for k, v in self.best.measurements.to_dict().items() if not k.endswith("_path")
            },
            "baseline": self.baseline,
            "confirmation": next(
                (c.to_dict()["drop"] for c in self.confirmation or () if c.trial == self.best.number), None
            ),
            "test": self.test,
            "study": {"name": self.study_name, "storage": self.storage, "objectives": self.objectives},
        }
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str) + "\n")
        previous = directory.with_name(f".{directory.name}.previous-{os.getpid()}")
        if directory.exists():
            directory.rename(previous)
        staging.rename(directory)
        shutil.rmtree(previous, ignore_errors=True)
        return directory


def summarize_policy(params: dict[str, Any]) -> str:
    """A one-line digest of a trial's choices, e.g. 'W8x20 Wfx2 | A8x22 | prune 0.25-0.5 (l2)':
    each registered knob's part, from the values of its dimensions (``knob`` or ``knob:layer``)."""
    parts = []
    for knob in KNOBS.values():
        part = knob.summarize([v for k, v in params.items() if k.split(":")[0] == knob.name], params)
        if part:
            parts.append(part)
    return " | ".join(parts) or "-"


def summarize_trials(
    records: list[TrialRecord],
    *,
    objectives: list,
    constraint,
    baseline,
    layers: tuple[str, ...],
    name: str,
    storage: str,
    workdir: Path,
    strategy: str,
    unavailable: Mapping[int, str] | None = None,
) -> SearchResult:
    """A SearchResult from the trials of a search (any backend): best, Pareto front, message.
    ``unavailable``: trials (number: why) left out of the selection, e.g. their model is gone."""
    unavailable = unavailable or {}
    finished = [r for r in records if r.state == "COMPLETE" and r.number not in unavailable]
    feasible = [r for r in finished if r.feasible]
    pareto = pareto_front(feasible, objectives)
    if feasible:
        best = pareto[0]
        message = best_message(best, objectives)
    elif finished:
        best = min(finished, key=lambda r: r.violation)
        message = (
            f"INFEASIBLE: no trial met {constraint.describe(baseline.accuracy)}; the closest, trial "
            f"{best.number}, reached {best.measurements.accuracy:.4f}. Allow a larger drop, a longer "
            "fine-tune, or a gentler space."
        )
    else:
        best = None
        errors = {r.error for r in records if r.error}
        message = "no trial finished" + (f"; errors: {'; '.join(sorted(errors))[:1000]}" if errors else "")
    return SearchResult(
        study_name=name,
        storage=storage,
        objectives=[{"name": o.name, "direction": o.direction} for o in objectives],
        constraint=constraint.describe(baseline.accuracy),
        baseline=baseline.to_dict(),
        trials=records,
        best=best,
        pareto=pareto,
        feasible=bool(feasible),
        message=message,
        workdir=str(workdir),
        strategy=strategy,
        floor=constraint.floor(baseline.accuracy),
        layers=tuple(layers),
        warnings=[f"trial {number} left out of the selection: {why}" for number, why in unavailable.items()],
    )


def best_message(best: TrialRecord, objectives: list) -> str:
    values = ", ".join(f"{o.name} {v:.4g}" for o, v in zip(objectives, best.values or ()))
    return (
        f"best feasible trial {best.number}: {values}, validation accuracy {best.measurements.accuracy:.4f}"
    )


def pareto_front(records: list[TrialRecord], objectives: list) -> list[TrialRecord]:
    """Non-dominated records over the objectives and accuracy; sorted by the first objective."""
    signs = [1 if o.direction == "minimize" else -1 for o in objectives]

    def key(r: TrialRecord) -> list[float]:  # all minimised
        return [s * v for s, v in zip(signs, r.values)] + [-r.measurements.accuracy]

    keys = {r.number: key(r) for r in records}
    front = [
        r
        for r in records
        if not any(
            all(a <= b for a, b in zip(keys[o.number], keys[r.number])) and keys[o.number] != keys[r.number]
            for o in records
        )
    ]
    unique: dict[tuple, TrialRecord] = {}
    for r in sorted(front, key=lambda r: (keys[r.number], r.number)):
        unique.setdefault(tuple(keys[r.number]), r)  # equal measurements: keep the first trial
    return list(unique.values())
