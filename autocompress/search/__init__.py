"""Constrained search over compression policies (Optuna backend).

    result = autocompress.search(model, train_loader, val_loader, test_loader=test_loader,
                                 objective="latency", max_accuracy_drop=0.01, n_trials=30)
    print(result.pareto_table()); result.deploy("deploy/")
"""

from autocompress.search.driver import SEARCH_FINETUNE, resume, search
from autocompress.search.objectives import AccuracyConstraint, Objective, parse_objectives
from autocompress.search.report import write_report
from autocompress.search.result import SearchResult, TrialRecord

__all__ = [
    "SEARCH_FINETUNE", "AccuracyConstraint", "Objective", "SearchResult", "TrialRecord", "parse_objectives", "resume", "search",
    "write_report",
]
