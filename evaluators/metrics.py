"""Metrics: ``metric(logits, targets) -> float`` on numpy arrays, higher is better, so that
one metric scores torch and OpenVINO outputs alike. No torch, no openvino."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

Metric = Callable[[np.ndarray, np.ndarray], float]


def top1_accuracy(logits: np.ndarray, targets: np.ndarray) -> float:
    """Fraction in [0, 1] of rows whose argmax equals the target."""
    logits = np.asarray(logits)
    targets = np.asarray(targets).reshape(-1)
    if len(targets) == 0:
        raise ValueError("top1_accuracy: no samples")
    return float((logits.reshape(len(targets), -1).argmax(axis=1) == targets).mean())


def score(metric: Metric | None, logits: np.ndarray, targets: np.ndarray, what: str = "the model") -> float:
    """``metric`` (default top-1) of ``logits``; a clear error when it is not a finite number."""
    value = float((metric or top1_accuracy)(logits, targets))
    if not math.isfinite(value):
        raise ValueError(
            f"the metric returned {value} for {what}; it must return a finite number (higher is better)"
        )
    return value


def paired_bootstrap(
    metric: Metric | None,
    first: np.ndarray,
    second: np.ndarray,
    targets: np.ndarray,
    resamples: int = 2000,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """The metric of two models' outputs on the SAME bootstrap resamples of the samples:
    two arrays of ``resamples`` scores whose differences estimate the spread of the
    difference (pairing removes the samples' common difficulty from it, so a paired
    interval is several times narrower than two separate ones)."""
    targets = np.asarray(targets).reshape(-1)
    n = len(targets)
    if n == 0:
        raise ValueError("paired_bootstrap: no samples")
    rows = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    if metric is None or metric is top1_accuracy:  # per-sample correctness: one gather, not 2000 calls
        hits = [
            (np.asarray(x).reshape(n, -1).argmax(axis=1) == targets).astype(np.float64)
            for x in (first, second)
        ]
        return hits[0][rows].mean(axis=1), hits[1][rows].mean(axis=1)
    first, second = np.asarray(first), np.asarray(second)
    scores = np.array([[metric(first[r], targets[r]), metric(second[r], targets[r])] for r in rows])
    return scores[:, 0], scores[:, 1]


def to_jsonable(value):
    """``value`` with numpy scalars and arrays as Python numbers and lists, non-finite floats
    as None and other objects as their str: what JSON, Optuna and Tune can store."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
