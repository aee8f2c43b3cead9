"""The Optuna backend: trials one after another in this process, the study in an Optuna storage.

Every trial samples a policy from the space, runs the trial function and reports the
objective values and the accuracy constraint (``trial.set_constraint``), so the samplers
model feasibility. Everything a trial produced is in the storage, with the search's own
settings: a second run of the same search continues it, and no finished trial is ever
run twice. The "condensa" strategy runs here too: a GP level-set search for the highest
uniform INT8 pruning level meeting the constraint, then the space capped at that level.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from autocompress.policies import Policy
from autocompress.search.backend import SearchJob
from autocompress.search.lock import DriverLock
from autocompress.search.progress import ProgressBar
from autocompress.search.result import TrialRecord
from autocompress.search.settings import SearchSettings
from autocompress.search.storage import (
    create_or_load_study,
    has_heartbeat,
    open_storage,
    reading,
    recover_interrupted,
    storage_url,
)
from autocompress.search.trial import Baseline, LatencyCache, LocalMeasure, Measurements, Trial, TrialOutcome
from autocompress.search_spaces import Dimension, SearchSpace
from autocompress.search_spaces.knobs import start_point
from autocompress.search_spaces.to_optuna import suggest

log = logging.getLogger(__name__)

SETTINGS_KEY = "autocompress.settings"
BASELINE_KEY = "autocompress.baseline"
LEVEL_KNOB = "pruning_ratio"


class TrialFailed(Exception):
    """A trial that raised; Optuna records it as FAIL (the error is in its user attributes)."""


def load_settings(where: Any, study_name: str, /, **replace: Any) -> SearchSettings:
    """The settings a search stored with its study in storage ``where`` (resume reads them back).
    The study's trials are read through here too: resume calls this before the model is built
    and the baseline trains, so a damaged storage file is said before anything runs."""
    url = storage_url(where, Path.cwd())
    opened = open_storage(url, heartbeat_interval=None)
    with reading(url):
        names = [s.study_name for s in optuna.get_all_study_summaries(opened, include_best_trial=False)]
    if study_name not in names:
        raise ValueError(f"no study {study_name!r} in {url}; studies there: {', '.join(names) or '(none)'}")
    with reading(url):
        study = optuna.load_study(study_name=study_name, storage=opened)
        stored = study.user_attrs.get(SETTINGS_KEY)
        study.get_trials(deepcopy=False)
    if stored is None:
        raise ValueError(
            f"study {study_name!r} in {url} was not created by autocompress.search (it has no {SETTINGS_KEY!r})"
        )
    try:
        return SearchSettings.from_dict(stored, **replace)
    except (TypeError, ValueError) as error:
        raise ValueError(f"study {study_name!r} in {url}: {error}") from None


def stored_baseline(where: Any, study_name: str) -> dict | None:
    """The baseline a study measured (as stored), or None."""
    url = storage_url(where, Path.cwd())
    opened = open_storage(url, heartbeat_interval=None)
    with reading(url):
        return optuna.load_study(study_name=study_name, storage=opened).user_attrs.get(BASELINE_KEY)


@dataclasses.dataclass
class OptunaBackend:
    """Trials in this process. sampler: an Optuna sampler instance (default: the settings'
    sampler by name); pruner: an Optuna pruner on the accuracy checks (single objective),
    or one by name (see make_pruner): multi-fidelity, a candidate stopped at a check costs
    only the fine-tuning it ran;
    heartbeat_interval: RDB heartbeats, so trials of a killed worker are retried;
    storage: an optuna storage object to use instead of the settings' storage URL."""

    sampler: optuna.samplers.BaseSampler | None = None
    pruner: optuna.pruners.BasePruner | str | None = None
    heartbeat_interval: int | None = 30
    storage: optuna.storages.BaseStorage | None = None

    def __post_init__(self) -> None:
        self.pruner = make_pruner(self.pruner)

    @contextlib.contextmanager
    def open(self, job: SearchJob) -> Iterator[OptunaSession]:
        with quiet_optuna():
            session = OptunaSession(job, self)
            try:
                yield session
            finally:
                session.measure.close()


class OptunaSession:
    def __init__(self, job: SearchJob, backend: OptunaBackend) -> None:
        self.job, self.backend = job, backend
        self.settings = job.settings
        url = backend.storage or storage_url(job.settings.storage, job.workdir)
        self.url = url
        self.location = url if isinstance(url, str) else type(url).__name__
        self.storage = open_storage(url, heartbeat_interval=backend.heartbeat_interval)
        self.measure = LocalMeasure(job.setup.val.inputs_file(), job.setup.target)
        self.latency_cache = LatencyCache(job.workdir / "latency-cache")
        self.owner = DriverLock(job.workdir).owner
        # A trial claimed by no driver for this long is an orphan: creating one and claiming it
        # takes milliseconds; a heartbeat grace period (3 intervals) is far beyond that.
        self._grace = 3 * (backend.heartbeat_interval or 10)
        condensa = self.settings.strategy == "condensa"
        # Condensa's second stage starts from the level it finds, not from the preset's points.
        created_with = dataclasses.replace(job.space, start_points=()) if condensa else job.space
        self.study = self._study(
            job.study_name, self._directions(), self.settings, created_with, job.resuming
        )

    def _directions(self) -> list[str]:
        return [o.direction for o in self.job.setup.objectives]

    # -- study ----------------------------------------------------------------------------
    def _study(
        self, name: str, directions: list[str], settings: SearchSettings, space: SearchSpace, resuming: bool
    ) -> optuna.Study:
        sampler = self.backend.sampler or make_sampler(
            settings.sampler, len(directions), settings.seed, settings.n_trials
        )
        with reading(self.url):  # a damaged storage file: one error now, not a traceback mid-search
            existing = {
                s.study_name for s in optuna.get_all_study_summaries(self.storage, include_best_trial=False)
            }
        if resuming and name not in existing:
            raise ValueError(f"no study {name!r} to resume in {self.location}")
        with reading(self.url):
            study = create_or_load_study(
                self.storage,
                name,
                directions=directions,
                sampler=sampler,
                pruner=self.backend.pruner or optuna.pruners.NopPruner(),
            )
            stored = study.user_attrs.get(SETTINGS_KEY)
            study.get_trials(deepcopy=False)  # every trial decoded once, before the first one runs
        if stored is None:
            study.set_user_attr(SETTINGS_KEY, settings.to_dict())
            for point in space.start_points:
                study.enqueue_trial(point, skip_if_exists=True)
        else:
            differing = settings.differing(stored)
            if differing:
                raise ValueError(
                    f"study {name!r} in {self.location} holds a search with different settings "
                    f"({', '.join(differing)}); "
                    "continue it with autocompress.resume(...) or start a new one with another study_name"
                )
        # We hold the workdir's driver lock: trials an earlier driver of it left RUNNING are
        # orphans, retried now rather than after a heartbeat grace period.
        recovered = recover_interrupted(
            study, None if not has_heartbeat(self.storage) else self.owner, unowned_after=self._grace
        )
        if recovered:
            log.warning(
                "study %s: %d trial(s) left running by an interrupted search are queued again",
                name,
                recovered,
            )
        return study

    def stored_baseline(self) -> Baseline | None:
        stored = self.study.user_attrs.get(BASELINE_KEY)
        if stored is not None and Path(stored["ir_path"]).exists():
            return Baseline.from_dict(stored)
        return None

    def save_baseline(self, baseline: Baseline) -> None:
        self.study.set_user_attr(BASELINE_KEY, baseline.to_dict())

    # -- trials ---------------------------------------------------------------------------
    def run(self, trial: Trial) -> list[TrialRecord]:
        deadline = None if self.settings.timeout is None else time.monotonic() + self.settings.timeout
        space, budget = self.job.space, self.settings.n_trials
        if self.settings.strategy == "condensa":
            space = self._condensa_level(trial, deadline)
            budget -= level_budget(self.settings.n_trials)
        self._optimize(self.study, space, trial, max(1, budget), deadline, "search")
        # A trial a killed driver had only just created (no owner yet) is let go now that it
        # is stale; until then a live worker might still have been claiming it.
        recover_interrupted(self.study, self.owner, unowned_after=self._grace)
        return [record(t) for t in self.study.trials if t.state != TrialState.WAITING]

    def _optimize(
        self,
        study: optuna.Study,
        space: SearchSpace,
        trial: Trial,
        n_trials: int,
        deadline: float | None,
        label: str,
        values_of: Callable[[dict, TrialOutcome], tuple[float, ...]] | None = None,
    ) -> None:
        remaining = n_trials - counted(study)
        if remaining <= 0:
            return
        bar = ProgressBar(n_trials, done=counted(study), label=label, enabled=self.job.progress)
        trial_root = self.job.workdir / "trials" / study.study_name.replace("/", "_").replace(":", "_")
        single = len(study.directions) == 1

        def objective(ot: optuna.Trial):
            ot.set_user_attr("driver", self.owner)  # first: a resume knows whose trial it is
            try:
                params = suggest(ot, space)
                policy = space.policy(params)
            except Exception as error:  # a bad sample fails its trial, never the search
                ot.set_user_attr("error", f"{type(error).__name__}: {error}"[:2000])
                raise TrialFailed(str(error)) from None
            ot.set_user_attr("policy", policy.to_dict())
            ot.set_user_attr(FLOOR_KEY, trial.setup.constraint.floor(trial.baseline.accuracy))

            def on_check(stage: str, accuracy: float) -> None:
                ot.set_user_attr(f"accuracy_{stage}_check", accuracy)
                if single:  # Optuna pruners see single-objective intermediate values only
                    ot.report(intermediate_value(accuracy, study.direction), CHECK_STEPS[stage])

            outcome = trial(
                policy,
                trial_root / f"trial_{ot.number:04d}",
                measure=self.measure,
                latency_cache=self.latency_cache,
                on_check=on_check,
                should_stop=ot.should_prune if single and self.backend.pruner else None,
            )
            if outcome.steps is not None:
                ot.set_user_attr("steps", outcome.steps)
            if outcome.measurements is not None:
                ot.set_user_attr("measurements", outcome.measurements.to_dict())
            if outcome.state == "PRUNED":
                ot.set_user_attr("pruned_reason", outcome.error)
                raise optuna.TrialPruned(outcome.error)
            if outcome.state == "FAIL":
                ot.set_user_attr("error", outcome.error)
                raise TrialFailed(outcome.error)
            ot.set_constraint("accuracy", outcome.violation)
            values = values_of(params, outcome) if values_of else outcome.values
            return values[0] if single else list(values)

        recalibration = self.job.hardware if label == "search" else None

        def on_trial(study: optuna.Study, frozen: optuna.trial.FrozenTrial) -> None:
            if (
                frozen.state != TrialState.FAIL or "error" in frozen.user_attrs
            ):  # a lost worker's trial is retried, not counted
                bar.update(record(frozen))
            if recalibration is not None and counted(study) < n_trials:
                _propose_next(study, frozen, recalibration, space)

        try:
            timeout = None if deadline is None else max(1.0, deadline - time.monotonic())
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.optimize(
                    objective, n_trials=remaining, timeout=timeout, catch=(TrialFailed,), callbacks=[on_trial]
                )
        finally:
            bar.close()

    # -- Condensa: the highest uniform level meeting the constraint, then the space below it --
    def _condensa_level(self, trial: Trial, deadline: float | None) -> SearchSpace:
        base = self.job.space
        level_space = SearchSpace(
            dimensions=(Dimension(LEVEL_KNOB, low=0.0, high=0.875, step=0.0625),),
            layers=base.layers,
            groups=base.groups,
            base=Policy.quantize(8, 8),
            start_points=({LEVEL_KNOB: 0.25}, {LEVEL_KNOB: 0.5}),
            preset="condensa-level",
        )
        budget = level_budget(self.settings.n_trials)
        level_settings = dataclasses.replace(
            self.settings, space=level_space.to_dict(), objective="latency", sampler="gp", n_trials=budget
        )
        level_study = self._study(
            f"{self.study.study_name}:level", ["maximize"], level_settings, level_space, False
        )
        self._optimize(
            level_study,
            level_space,
            trial,
            budget,
            deadline,
            "level set",
            values_of=lambda params, _: (params[LEVEL_KNOB],),
        )
        feasible = [
            t
            for t in level_study.trials
            if t.state == TrialState.COMPLETE and (violation(t) or 0) <= 0 and violation(t) is not None
        ]
        level = max((t.params[LEVEL_KNOB] for t in feasible), default=0.0)
        self.study.set_user_attr("condensa_level", level)
        if self.job.progress:
            print(
                f"condensa: highest uniform INT8 pruning level meeting the constraint: {level:g} "
                f"({len(feasible)}/{len(level_study.trials)} level trials feasible)",
                flush=True,
            )
        capped = tuple(
            dataclasses.replace(d, high=min(d.high, level))
            if d.knob == LEVEL_KNOB and d.choices is None
            else d
            for d in base.dimensions
        )
        start = {k: v for k, v in start_point([d for d in capped if d.name not in base.fixed], level).items()}
        uniform_int8 = {
            **start,
            **{d.name: 0.0 for d in capped if d.knob == LEVEL_KNOB and d.choices is None},
        }
        points = (start, uniform_int8) if level > 0 else (uniform_int8,)
        space = dataclasses.replace(base, dimensions=capped, start_points=points)
        # Stage 2 runs in the main study; its distributions must not change between runs.
        for point in space.start_points:
            self.study.enqueue_trial(point, skip_if_exists=True)
        return space


RECALIBRATED = "recalibrated"


def _propose_next(
    study: optuna.Study, last: optuna.trial.FrozenTrial, recalibration: Any, space: SearchSpace
) -> None:
    """Refit the hardware plan on the trials so far and, once the queued points are used up,
    queue its next proposal, alternating with the sampler (every other trial is sampled, so
    the sampler goes on exploring where the predictors are wrong). The proposal is brought
    inside ``space``, which may be narrower than the plan's (Condensa's cap on the ratios)."""
    try:
        trials = study.get_trials(deepcopy=False)
        recalibration.observe(record(t) for t in trials if t.state == TrialState.COMPLETE)
        if last.user_attrs.get("proposal") == RECALIBRATED or any(
            t.state == TrialState.WAITING for t in trials
        ):
            return
        stopped = [t.params for t in trials if t.state == TrialState.PRUNED]  # for accuracy
        point = recalibration.next_point((t.params for t in trials if t.params), stopped)
        point = _inside(space, point) if point is not None else None
        if point is not None:
            study.enqueue_trial(point, user_attrs={"proposal": RECALIBRATED}, skip_if_exists=True)
    except Exception as error:  # the predictors are advice: a failure costs a proposal, never the search
        log.warning("recalibrated proposal skipped: %s: %s", type(error).__name__, error)


def _inside(space: SearchSpace, point: dict[str, Any]) -> dict[str, Any] | None:
    """``point`` with each ranged value clipped into its dimension's range (None when a
    categorical value is not among the choices). Measured: unclipped, every recalibrated
    proposal of a Condensa search whose level came out 0 failed as out of range."""
    inside = dict(point)
    for dimension in space.dimensions:
        value = inside.get(dimension.name)
        if value is None or dimension.name in space.fixed:
            continue
        if dimension.choices is not None:
            if value not in dimension.choices:
                return None
        else:
            inside[dimension.name] = min(max(value, dimension.low), dimension.high)
    return inside


def make_sampler(name: str, n_objectives: int, seed: int, n_trials: int) -> optuna.samplers.BaseSampler:
    """The sampler a search uses by name ("auto": TPE, or NSGA-II for several objectives)."""
    startup = max(4, min(10, n_trials // 3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if name == "gp":
            return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup)
        if name == "nsga2" or (name == "auto" and n_objectives > 1):
            return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(8, min(50, n_trials // 4)))
        return optuna.samplers.TPESampler(
            seed=seed, multivariate=True, n_startup_trials=startup, constant_liar=True
        )


def level_budget(n_trials: int) -> int:
    """Condensa's first stage gets a third of the trials (at least 2), the second the rest."""
    return max(2, n_trials // 3) if n_trials > 2 else 1


def counted(study: optuna.Study) -> int:
    """Finished trials that count against the budget (a trial failed by a lost worker is retried, not counted)."""
    count = 0
    for t in study.get_trials(deepcopy=False):
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
            t.state == TrialState.FAIL and "error" in t.user_attrs
        ):
            count += 1
    return count


def violation(trial: optuna.trial.FrozenTrial) -> float | None:
    values = trial.constraints
    return values.get("accuracy") if values else None


def record(t: optuna.trial.FrozenTrial) -> TrialRecord:
    policy = t.user_attrs.get("policy")
    measurements = t.user_attrs.get("measurements")
    seconds = (
        (t.datetime_complete - t.datetime_start).total_seconds()
        if t.datetime_complete and t.datetime_start
        else None
    )
    return TrialRecord(
        number=t.number,
        state=t.state.name,
        params=dict(t.params),
        policy=Policy.from_dict(policy) if policy else None,
        measurements=Measurements.from_dict(measurements) if measurements else None,
        values=tuple(t.values)
        if t.values and t.state == TrialState.COMPLETE
        else None,  # a PRUNED trial's value is an intermediate accuracy
        violation=violation(t),
        seconds=seconds,
        error=t.user_attrs.get("error") or t.user_attrs.get("pruned_reason"),
        steps=t.user_attrs.get("steps"),
    )


# The fidelity ladder a pruner sees: every trial's checks at the same stage share a step, so a
# successive-halving rung compares like with like (end of pruning recovery, then half-way
# through quantization-aware fine-tuning), whatever else a policy trains.
CHECK_STEPS = {"recovery": 1, "finetune": 2}
PRUNERS = ("feasibility", "halving", "hyperband", "median")
FLOOR_KEY = "accuracy_floor"


class FeasibilityPruner(optuna.pruners.BasePruner):
    """Multi-fidelity for a constrained search: a trial goes on past a check only while it can
    still end feasible. What fine-tuning adds after each check is learned from the trials that
    ran to the end (their final validation accuracy minus their accuracy at that check); a
    trial is stopped when its accuracy there plus the ``quantile`` of those gains is below the
    floor. Until ``n_startup`` trials ran to the end nothing is stopped here (the fixed
    early_stop_margin still applies). Unlike successive halving, which keeps the most accurate
    third, it never stops a fast candidate that can still meet the constraint."""

    def __init__(self, quantile: float = 0.9, n_startup: int = 3) -> None:
        if not 0 < quantile <= 1 or n_startup < 1:
            raise ValueError(f"quantile must be in (0, 1] and n_startup >= 1, got {quantile}, {n_startup}")
        self.quantile, self.n_startup = quantile, n_startup

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        stage = next((s for s, step in CHECK_STEPS.items() if step == trial.last_step), None)
        floor = trial.user_attrs.get(FLOOR_KEY)
        accuracy = trial.user_attrs.get(f"accuracy_{stage}_check")
        if stage is None or floor is None or accuracy is None:
            return False
        gains = [
            t.user_attrs["measurements"]["accuracy"] - t.user_attrs[f"accuracy_{stage}_check"]
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if f"accuracy_{stage}_check" in t.user_attrs and "measurements" in t.user_attrs
        ]
        if len(gains) < self.n_startup:
            return False
        return accuracy + float(np.quantile(gains, self.quantile)) < floor


def intermediate_value(accuracy: float, direction: optuna.study.StudyDirection) -> float:
    """What a pruner compares: the accuracy, negated in a minimising study (pruners read
    intermediate values in the study's direction: a latency search minimises, and the raw
    accuracy would have stopped the most accurate trials)."""
    return -accuracy if direction == optuna.study.StudyDirection.MINIMIZE else accuracy


def make_pruner(pruner: str | optuna.pruners.BasePruner | None) -> optuna.pruners.BasePruner | None:
    """An Optuna pruner, or one by name: "feasibility" (stopped when it can no longer end
    feasible, see FeasibilityPruner), "halving" (asynchronous successive halving: a trial goes
    on past a check only in the most accurate third there), "hyperband" (several halving
    brackets), "median" (below the median of earlier trials at the same check). The last three
    rank by accuracy alone, which in a constrained search favours gentle, slow policies."""
    if pruner is None or isinstance(pruner, optuna.pruners.BasePruner):
        return pruner
    if pruner == "feasibility":
        return FeasibilityPruner()
    if pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)
    if pruner == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    if pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(CHECK_STEPS.values()))
    raise ValueError(
        f"pruner must be an optuna.pruners.BasePruner or one of {', '.join(PRUNERS)}; got {pruner!r}"
    )


@contextlib.contextmanager
def quiet_optuna():
    """Optuna's INFO lines (one per trial) and experimental-feature warnings off, for a while."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        previous = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        try:
            yield
        finally:
            optuna.logging.set_verbosity(previous)
