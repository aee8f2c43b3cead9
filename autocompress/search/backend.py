"""The Backend protocol: where and how a search's trials run.

``search()`` and ``resume()`` validate the settings, build the space and the trial
setup, and hand a Backend a SearchJob. The backend opens a session (a study in an Optuna
storage; a Ray Tune experiment), says where exported models are measured, keeps the
baseline with the search's state, and runs the trial function (autocompress.search.trial)
for the budget, returning one TrialRecord per trial. Summarising, the final test-split
check and the files are the driver's, the same for every backend.

Two backends: OptunaBackend (autocompress.search.optuna_backend: trials one after another
in this process) and RayBackend (autocompress.search.ray_backend: a Tune experiment on a
cluster, measurements on the target's nodes).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

from autocompress.evaluators.runtime import Dataset
from autocompress.search.result import TrialRecord
from autocompress.search.settings import SearchSettings
from autocompress.search.trial import Baseline, LatencyCache, Measure, Trial, TrialSetup
from autocompress.search_spaces import SearchSpace


@dataclasses.dataclass
class SearchJob:
    """One search as a backend sees it: validated settings, the space and the shared
    trial setup, under a study name; ``resuming`` when it continues an earlier run."""

    settings: SearchSettings
    space: SearchSpace
    setup: TrialSetup
    resuming: bool = False
    progress: bool = True
    test_loader: Iterable | None = None
    confirm: Dataset | None = None  # held back from the search: the best candidates are confirmed on it
    hardware: Any = None  # a new search's plan, refitted on its trials (proposals.Recalibration)

    @property
    def study_name(self) -> str:
        return self.settings.study_name

    @property
    def workdir(self) -> Path:
        return Path(self.settings.workdir)


class BackendSession(Protocol):
    """An open search on one backend."""

    location: str  # where the search's state lives: a storage URL, an experiment path
    measure: Measure  # where the baseline, the candidates and the final check are measured
    latency_cache: LatencyCache  # latencies by graph fingerprint, shared by every measurement of the search

    def stored_baseline(self) -> Baseline | None:
        """The baseline an earlier run of this search measured (None: measure it)."""

    def save_baseline(self, baseline: Baseline) -> None: ...

    def run(self, trial: Trial) -> list[TrialRecord]:
        """Run the trial function until the study holds the budget (or the time is up);
        every trial of the search, in order."""


class Backend(Protocol):
    def open(self, job: SearchJob) -> AbstractContextManager[BackendSession]: ...
