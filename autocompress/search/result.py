"""What a search returns: the best feasible policy, the Pareto front, every trial."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

from autocompress.policies import Policy


@dataclasses.dataclass(frozen=True)
class TrialRecord:
    """One finished trial: its policy, what was measured and whether it met the constraint."""

    number: int
    state: str  # COMPLETE, PRUNED, FAIL
    params: dict[str, Any]
    policy: Policy | None
    measurements: dict[str, Any]
    values: tuple[float, ...] | None  # objective values (ratios to the baseline)
    violation: float | None  # accuracy floor - accuracy; <= 0 is feasible
    seconds: float | None
    error: str | None = None

    @property
    def feasible(self) -> bool:
        return self.state == "COMPLETE" and self.violation is not None and self.violation <= 0

    def row(self) -> dict[str, Any]:
        m = self.measurements
        return {
            "trial": self.number,
            "state": self.state,
            "feasible": self.feasible,
            "accuracy": m.get("accuracy"),
            "speedup": m.get("speedup"),
            "size_ratio": m.get("size_ratio"),
            "values": list(self.values) if self.values else None,
            "seconds": self.seconds,
            "latency_cached": m.get("latency_cached"),
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
    trials: every trial, finished or not, in order.
    baseline: the uncompressed model as measured on the target.
    test: the best policy re-checked on the test data (exported IR on OpenVINO), with a
        full latency measurement against the baseline; None without a test_loader.
    floor: the validation accuracy a trial needs to be feasible (baseline minus the
        allowed drop).
    layers: the model's compressible layers the search space was built over.
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

    @property
    def best_policy(self) -> Policy | None:
        return self.best.policy if self.best else None

    def trials_table(self) -> list[dict[str, Any]]:
        return [t.row() for t in self.trials]

    def to_dict(self) -> dict[str, Any]:
        def record(t: TrialRecord | None):
            return None if t is None else {**t.row(), "policy": t.policy.to_dict() if t.policy else None, "measurements": t.measurements}

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
            "test": self.test,
            "trials": self.trials_table(),
            "seconds": self.seconds,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)

    def pareto_table(self) -> str:
        """The Pareto front (feasible trials) as a text table, best first."""
        header = ["trial", "val acc", "Δ pt", "speedup", "latency ms", "IR size", "params", "policy"]
        lines = [header]
        base = self.baseline["accuracy"]
        for t in self.pareto:
            m = t.measurements
            lines.append([
                str(t.number), f"{100 * m['accuracy']:.2f}%", f"{100 * (m['accuracy'] - base):+.2f}",
                f"{m['speedup']:.2f}x", f"{m['latency_ms']:.4f}", f"{m['size_ratio']:.0%}", f"{m['parameters']:,}",
                summarize_policy(t.params),
            ])
        widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
        out = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in lines]
        out.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(out)

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for t in self.trials:
            counts[t.state] = counts.get(t.state, 0) + 1
        lines = [
            f"study {self.study_name!r}: {len(self.trials)} trials ({', '.join(f'{n} {s.lower()}' for s, n in counts.items())}) "
            f"in {self.seconds:.0f} s; {sum(t.feasible for t in self.trials)} feasible; {self.constraint}",
            self.message,
        ]
        if self.test:
            t = self.test
            lines.append(
                f"test set: baseline {100 * t['baseline_accuracy']:.2f}%, best {100 * t['accuracy']:.2f}% "
                f"({100 * t['drop']:+.2f} pt drop); speedup {t['speedup']:.2f}x "
                f"({t['baseline_latency_ms']:.4f} -> {t['latency_ms']:.4f} ms, {t['rounds']} alternating rounds)"
            )
        return "\n".join(lines)

    def deploy(self, directory: str | Path) -> Path:
        """Copy the best model's IR, ONNX and policy, with a manifest of what was measured."""
        if self.best is None or "ir_path" not in self.best.measurements:
            raise ValueError(f"no trial to deploy: {self.message}")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        source = Path(self.best.measurements["ir_path"])
        for suffix in (".xml", ".bin", ".onnx"):
            if source.with_suffix(suffix).exists():
                shutil.copy2(source.with_suffix(suffix), directory / f"model{suffix}")
        self.best.policy.save(directory / "policy.json")
        manifest = {
            "policy": "policy.json",
            "openvino_ir": "model.xml",
            "onnx": "model.onnx",
            "trial": self.best.number,
            "feasible": self.feasible,
            "constraint": self.constraint,
            "validation": {k: v for k, v in self.best.measurements.items() if not k.endswith("_path")},
            "baseline": self.baseline,
            "test": self.test,
            "study": {"name": self.study_name, "storage": self.storage, "objectives": self.objectives},
        }
        (directory / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str) + "\n")
        return directory


def summarize_policy(params: dict[str, Any]) -> str:
    """A one-line digest of a trial's choices, e.g. 'W8x20 float x2 | A8x22 | prune 0.25-0.5 (l2)'."""
    parts = []
    for knob, label in (("weight_bits", "W"), ("activation_bits", "A")):
        values = [v for k, v in params.items() if k.split(":")[0] == knob]
        if values:
            counts: dict[Any, int] = {}
            for v in values:
                counts[v] = counts.get(v, 0) + 1
            parts.append(" ".join(f"{label}{'f' if v is None else v}x{n}" for v, n in sorted(counts.items(), key=lambda kv: -kv[1])))
    ratios = [v for k, v in params.items() if k.split(":")[0] == "pruning_ratio"]
    if ratios:
        lo, hi = min(ratios), max(ratios)
        crit = params.get("pruning_criterion", "")
        parts.append(f"prune {lo:g}" + (f"-{hi:g}" if hi != lo else "") + (f" ({crit})" if crit else ""))
    levels = [v for k, v in params.items() if k.split(":")[0] == "sparsity"]
    if levels:
        parts.append(f"sparsity {min(levels):g}-{max(levels):g}")
    if "student_width" in params:
        parts.append(f"student w{params['student_width']:g}" + (f" b{params['student_blocks']}" if "student_blocks" in params else ""))
    return " | ".join(parts) or "-"
