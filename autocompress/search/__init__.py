"""Constrained search over compression policies (Optuna, or Ray Tune on a cluster).

    result = autocompress.search(model, train_loader, val_loader, test_loader=test_loader,
                                 objective="latency", max_accuracy_drop=0.01, n_trials=30)
    print(result.pareto_table()); result.deploy("deploy/")

    from autocompress.search import Ray
    result = autocompress.search(..., backend=Ray(address="auto", target_resource="ov_target"))
    result = autocompress.resume("/shared/autocompress-search/ray/autocompress-joint")

Layers, one way: settings (SearchSettings) -> trial (the trial function, Measurements) ->
backend (the Backend protocol) -> optuna_backend / ray_backend -> driver (search, resume).
Ray is imported only when a search runs on it.
"""

from autocompress.search.driver import resume, search
from autocompress.search.objectives import AccuracyConstraint, Objective, parse_objectives
from autocompress.search.report import write_report
from autocompress.search.result import SearchResult, TrialRecord
from autocompress.search.settings import SEARCH_FINETUNE, Ray, SearchSettings
from autocompress.search.trial import Baseline, Measurements, TrialOutcome

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
