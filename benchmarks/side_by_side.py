"""Shared by the benchmarks that compare delivered models: every IR scored on the test split
and timed against the others in alternating rounds, in ONE run (ratios measured side by
side are what the benchmarks quote; figures from separate runs drift by 2-16% here)."""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import DataLoader

from autocompress import LatencyConfig, Target
from autocompress.evaluators.runtime import Dataset
from autocompress.search.objectives import AccuracyConstraint, DropEstimate
from autocompress.search.trial import compare_irs

TEST_CONSTRAINT = AccuracyConstraint(0.01, confidence=0.9)  # 1 pt; drops with 90% bounds


def score_and_time(
    irs: dict[str, Path], test: DataLoader, target: Target, rounds: int
) -> tuple[dict[str, float], dict[str, DropEstimate]]:
    """Median latency (ms) of each IR, and its test drop paired with the FIRST one's (the
    reference, e.g. FP32) with 90% bounds, from one alternating run over ``irs``."""
    data = Dataset(test)
    names = list(irs)
    logits, latency = compare_irs(
        [str(irs[n]) for n in names],
        data.inputs_file(),
        target,
        LatencyConfig(rounds=rounds, min_iterations=200, min_seconds=0.5),
    )
    ms = {n: latency["models"][i]["median_ms"] for i, n in enumerate(names)}
    drops = {n: TEST_CONSTRAINT.assess(None, logits[0], logits[i], data.targets) for i, n in enumerate(names)}
    return ms, drops
