"""Constrained search over compression policies (Optuna, or Ray Tune on a cluster).

    result = autocompress.search(model, train_loader, val_loader, test_loader=test_loader,
                                 objective="latency", max_accuracy_drop=0.01, n_trials=30)
    print(result.pareto_table()); result.deploy("deploy/")

    result = autocompress.search(..., backend=Ray(address="auto", target_resource="ov_target"))
    result = autocompress.resume("/shared/autocompress-search/ray/autocompress-joint")
"""

from autocompress.search.backend import Ray
from autocompress.search.driver import SEARCH_FINETUNE, resume, search
from autocompress.search.objectives import AccuracyConstraint, Objective, parse_objectives
from autocompress.search.report import write_report
from autocompress.search.result import SearchResult, TrialRecord

__all__ = [
    "SEARCH_FINETUNE", "AccuracyConstraint", "Objective", "Ray", "SearchResult", "TrialRecord", "parse_objectives", "resume", "search",
    "write_report",
]
