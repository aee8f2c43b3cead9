"""A live progress bar for a search, fed with TrialRecords by any backend."""

from __future__ import annotations

import statistics

from autocompress.search.result import TrialRecord, summarize_policy


class ProgressBar:
    """Trial n/N, the best feasible trial so far (by speedup), an ETA (tqdm), and the
    fine-tuning budget: steps run, and the share that trials stopped early saved (each
    stopped trial against the median steps of the trials that ran to the end)."""

    def __init__(self, total: int, *, done: int = 0, label: str = "search", enabled: bool = True) -> None:
        self.bar = None
        self.best: TrialRecord | None = None
        self.budget = StepBudget()
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=total, initial=min(total, done), desc=label, unit="trial", dynamic_ncols=True
            )

    def update(self, record: TrialRecord) -> None:
        if self.bar is None:
            return
        self.bar.update(1)
        self.budget.add(record)
        if record.feasible and (
            self.best is None or record.measurements.speedup > self.best.measurements.speedup
        ):
            self.best = record
        if self.best is None:
            status = "no feasible trial yet"
        else:
            m = self.best.measurements
            digest = summarize_policy(self.best.params)[:40]
            status = f"best #{self.best.number}: {m.speedup:.2f}x, acc {m.accuracy:.4f}, {digest}"
        self.bar.set_postfix_str(f"{status}; {self.budget.describe()}", refresh=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class StepBudget:
    """Fine-tuning steps run by the trials, and what the early-stopped ones saved."""

    def __init__(self) -> None:
        self.full: list[int] = []  # steps of trials that ran to the end
        self.stopped: list[int] = []  # steps of trials stopped early (PRUNED)

    def add(self, record: TrialRecord) -> None:
        if record.steps is None:
            return
        (self.stopped if record.state == "PRUNED" else self.full).append(record.steps)

    @property
    def spent(self) -> int:
        return sum(self.full) + sum(self.stopped)

    def saved_share(self) -> float | None:
        """Steps the stopped trials did not run, as a share of running every trial to the end."""
        if not self.stopped or not self.full:
            return None
        typical = statistics.median(self.full)
        saved = sum(max(0.0, typical - s) for s in self.stopped)
        return saved / (self.spent + saved)

    def describe(self) -> str:
        text = f"{self.spent} fine-tune steps"
        share = self.saved_share()
        if share is not None:
            text += f", {len(self.stopped)} stopped early saved ~{share:.0%}"
        return text
