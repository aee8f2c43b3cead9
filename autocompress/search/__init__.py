"""Constrained search over compression policies (Optuna, or Ray Tune on a cluster).

    result = autocompress.search(model, train_loader, val_loader, test_loader=test_loader,
                                 objective="latency", max_accuracy_drop=0.01, n_trials=30)
    print(result.pareto_table()); result.deploy("deploy/")

    from autocompress.search import Ray
    result = autocompress.search(..., backend=Ray(address="auto", target_resource="ov_target"))
    result = autocompress.resume("/shared/autocompress-search/ray/autocompress-joint")

Layers, one way: settings (SearchSettings) -> trial (the trial function, Measurements) ->
backend (the Backend protocol) -> optuna_backend / ray_backend -> driver (search, resume).
The names below load on first use, like the top-level package's.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "search": "autocompress.search.driver",
    "resume": "autocompress.search.driver",
    "AccuracyConstraint": "autocompress.search.objectives",
    "Objective": "autocompress.search.objectives",
    "parse_objectives": "autocompress.search.objectives",
    "write_report": "autocompress.search.report",
    "SearchResult": "autocompress.search.result",
    "TrialRecord": "autocompress.search.result",
    "SEARCH_FINETUNE": "autocompress.search.settings",
    "Ray": "autocompress.search.settings",
    "SearchSettings": "autocompress.search.settings",
    "Baseline": "autocompress.search.trial",
    "Measurements": "autocompress.search.trial",
    "TrialOutcome": "autocompress.search.trial",
}

__all__ = [
    "SEARCH_FINETUNE",
    "AccuracyConstraint",
    "Baseline",
    "Measurements",
    "Objective",
    "Ray",
    "SearchResult",
    "SearchSettings",
    "TrialOutcome",
    "TrialRecord",
    "parse_objectives",
    "resume",
    "search",
    "write_report",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'autocompress.search' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:
    from autocompress.search.driver import resume, search
    from autocompress.search.objectives import AccuracyConstraint, Objective, parse_objectives
    from autocompress.search.report import write_report
    from autocompress.search.result import SearchResult, TrialRecord
    from autocompress.search.settings import SEARCH_FINETUNE, Ray, SearchSettings
    from autocompress.search.trial import Baseline, Measurements, TrialOutcome
