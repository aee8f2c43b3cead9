"""A live progress bar for a search, fed with TrialRecords by any backend."""

from __future__ import annotations

from autocompress.search.result import TrialRecord, summarize_policy


class ProgressBar:
    """Trial n/N, the best feasible trial so far (by speedup) and an ETA (tqdm)."""

    def __init__(self, total: int, *, done: int = 0, label: str = "search", enabled: bool = True) -> None:
        self.bar = None
        self.best: TrialRecord | None = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=total, initial=min(total, done), desc=label, unit="trial", dynamic_ncols=True
            )

    def update(self, record: TrialRecord) -> None:
        if self.bar is None:
            return
        self.bar.update(1)
        if record.feasible and (
            self.best is None or record.measurements.speedup > self.best.measurements.speedup
        ):
            self.best = record
        if self.best is None:
            self.bar.set_postfix_str("no feasible trial yet", refresh=True)
        else:
            m = self.best.measurements
            digest = summarize_policy(self.best.params)[:40]
            self.bar.set_postfix_str(
                f"best #{self.best.number}: {m.speedup:.2f}x, acc {m.accuracy:.4f}, {digest}", refresh=True
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
