"""The search driver: ``search`` and ``resume``, with Optuna as the backend.

Every trial samples a policy from the search space, hands it to a CandidateRunner
(compress -> fine-tune -> export -> measure on the target) and reports the objective
values and the accuracy constraint (``trial.set_constraint``), so the samplers model
feasibility. Everything a trial produced is in the Optuna storage, with the search's
own settings: ``resume`` reopens the study and finishes it, and no finished trial is
ever run twice.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, MutableMapping

import numpy as np
import optuna
from optuna.trial import TrialState
from torch import nn

from autocompress.core import Finetune
from autocompress.graph import inputs_of
from autocompress.search.backend import Ray
from autocompress.search.candidate import Baseline, CandidateRunner
from autocompress.search.objectives import AccuracyConstraint, Objective, describe_objectives, parse_objectives
from autocompress.search.result import SearchResult, TrialRecord, summarize_policy
from autocompress.search.storage import has_heartbeat, open_storage, recover_interrupted, storage_url
from autocompress.training import Metric, top1_accuracy
from autocompress.evaluators.child import run_jobs, unwrap
from autocompress.evaluators.runtime import Dataset
from autocompress.evaluators.target import LatencyConfig, Target
from autocompress.policies import Policy
from autocompress.search_spaces import SearchSpace, build_space
from autocompress.search_spaces.space import Dimension
from autocompress.search_spaces.to_optuna import suggest

log = logging.getLogger(__name__)

# Pruned candidates need a float recovery before QAT (see the pruning benchmark): 1 epoch
# at the training lr, then a short QAT at a small lr.
SEARCH_FINETUNE = Finetune(epochs=0.5, lr=1e-4, recovery_epochs=1.0, rewind_lr=1e-3)
SAMPLERS = ("auto", "tpe", "nsga2", "gp", "random")
STRATEGIES = ("direct", "condensa")
CONFIG_KEY = "autocompress.config"
BASELINE_KEY = "autocompress.baseline"
LATENCY_PREFIX = "latency:"


@dataclasses.dataclass(frozen=True)
class _Settings:
    """Everything that defines a search, stored with the study (JSON) so resume() can rebuild it."""

    space: dict[str, Any]
    objectives: Any
    max_accuracy_drop: float
    relative_drop: bool
    target: dict[str, Any]
    finetune: dict[str, Any]
    sampler: str
    strategy: str
    seed: int
    n_trials: int
    early_stop_margin: float | None
    workdir: str

    def comparable(self) -> dict[str, Any]:
        """The settings that must match to continue a study (budget and workdir may change)."""
        d = dataclasses.asdict(self)
        for key in ("n_trials", "workdir"):
            d.pop(key)
        return json.loads(json.dumps(d, default=str))


def search(
    model: nn.Module,
    train_loader: Iterable,
    val_loader: Iterable,
    *,
    test_loader: Iterable | None = None,
    metric: Metric | None = None,
    loss_fn: Callable | None = None,
    objective: Any = "latency",
    max_accuracy_drop: float = 0.01,
    relative_drop: bool = False,
    target: Target = Target(),
    space: str | SearchSpace = "joint",
    n_trials: int = 30,
    timeout: float | None = None,
    storage: Any = None,
    study_name: str | None = None,
    workdir: str | Path = "autocompress-search",
    finetune: Finetune = SEARCH_FINETUNE,
    sampler: str | optuna.samplers.BaseSampler = "auto",
    strategy: str = "direct",
    pruner: optuna.pruners.BasePruner | None = None,
    early_stop_margin: float | None = 0.05,
    seed: int = 0,
    heartbeat_interval: int | None = 30,
    progress: bool = True,
    backend: Any = "optuna",
) -> SearchResult:
    """Search compression policies for ``model``: maximise ``objective`` subject to
    accuracy >= baseline - ``max_accuracy_drop`` on ``val_loader``.

    objective: "latency", "throughput", "size" (ratios to the baseline on ``target``), a
        {name: weight} mix, a callable(measurements) -> float to minimise, or a list of
        these for a Pareto search (NSGA-II).
    space: a preset name (see autocompress.search_spaces.PRESETS) or a SearchSpace.
    n_trials: finished trials the study should hold (a resumed study only runs the rest);
        timeout: seconds after which no new trial starts (the best so far is returned).
    storage: None (SQLite in ``workdir``), a path, an RDB URL or a journal file (see
        autocompress.search.storage). An existing study of the same name and settings
        is continued; with different settings it is an error.
    strategy: "direct", or "condensa": first the highest uniform pruning level (INT8)
        meeting the accuracy constraint (a GP level-set search over one knob, a third of
        the trials, in study ``<name>:level``), then the space with every pruning ratio
        capped at that level (the remaining trials).
    early_stop_margin: a trial whose validation accuracy (torch) at the end of pruning
        recovery or half-way through the final fine-tuning is more than this below the
        accuracy floor is stopped (PRUNED); ``pruner`` adds an Optuna pruner on those
        checkpoints (single-objective searches).
    backend: "optuna" (trials one after another in this process) or "ray" /
        autocompress.search.Ray(address=..., storage_path=..., target_resource=...): trials
        as a Ray Tune experiment on a cluster, resumable with ``resume(path)``.
    The best policy is re-checked on ``test_loader`` (exported IR on OpenVINO) with a
    full latency measurement; results, the best IR and a manifest go to ``workdir``.
    """
    backend = _check_backend(backend, strategy, pruner)
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")
    if n_trials is None or not isinstance(n_trials, int) or n_trials < 1:
        raise ValueError(f"n_trials must be an int >= 1, got {n_trials!r}")
    if early_stop_margin is not None and early_stop_margin < 0:
        raise ValueError(f"early_stop_margin must be >= 0 or None, got {early_stop_margin}")
    objectives = parse_objectives(objective)
    constraint = AccuracyConstraint(max_accuracy_drop, relative_drop)
    sampler_name = _check_sampler(sampler)
    _check_loader(train_loader, "train_loader")
    val = _dataset(val_loader, "val_loader")
    example = inputs_of(next(iter(train_loader)))[:1]
    workdir = Path(workdir).resolve()
    if isinstance(space, str):
        space = build_space(model, space, example_input=example)
    elif not isinstance(space, SearchSpace):
        raise TypeError(f"space must be a preset name or a autocompress.search_spaces.SearchSpace, got {type(space).__name__}")
    settings = _Settings(
        space=space.to_dict(),
        objectives=describe_objectives(objective),
        max_accuracy_drop=max_accuracy_drop,
        relative_drop=relative_drop,
        target=target.to_dict(),
        finetune=dataclasses.asdict(finetune),
        sampler=sampler_name,
        strategy=strategy,
        seed=seed,
        n_trials=n_trials,
        early_stop_margin=early_stop_margin,
        workdir=str(workdir),
    )
    study_name = study_name or f"autocompress-{space.preset or 'custom'}"
    if backend != "optuna":
        from autocompress.search.ray_backend import search_with_ray

        return search_with_ray(
            backend, model=model, train_loader=train_loader, val_loader=val_loader, val=val, test_loader=test_loader,
            metric=metric, loss_fn=loss_fn, objectives=objectives,
            constraint=constraint, space=space, target=target, finetune=finetune, settings=dataclasses.asdict(settings),
            n_trials=n_trials, timeout=timeout, storage=storage, study_name=study_name, sampler=sampler, progress=progress,
        )
    url = storage_url(storage, workdir)
    run = _Search(
        model, train_loader, val, test_loader, metric, loss_fn, objectives, constraint, space, target, finetune,
        settings, url, study_name, sampler, pruner, heartbeat_interval, progress,
    )
    return run.execute(timeout)


def resume(
    model: nn.Module | str | os.PathLike,
    train_loader: Iterable | None = None,
    val_loader: Iterable | None = None,
    *,
    storage: Any = None,
    study_name: str | None = None,
    test_loader: Iterable | None = None,
    metric: Metric | None = None,
    loss_fn: Callable | None = None,
    objective: Any = None,
    n_trials: int | None = None,
    timeout: float | None = None,
    sampler: optuna.samplers.BaseSampler | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
    heartbeat_interval: int | None = 30,
    progress: bool = True,
    address: str | None = None,
) -> SearchResult:
    """Continue a search.

    resume(path): a Ray search, from its experiment directory (it holds everything:
        settings, baseline, model and loaders), on the cluster it ran on; ``address``
        names another one ("local": a fresh Ray on this machine).
    resume(model, train_loader, val_loader, storage=..., study_name=...): an Optuna
        search, from its storage: its settings (space, objectives, constraint, target,
        fine-tuning, seed) are read back from the study; trials a killed run left RUNNING
        are retried; ``n_trials`` (default: the original budget) is the total to reach.
        Pass ``objective`` again only if it was a callable (code is not stored).
    """
    if isinstance(model, (str, os.PathLike)):
        from autocompress.search.ray_backend import resume_ray

        return resume_ray(model, address=address, timeout=timeout, progress=progress)
    if train_loader is None or val_loader is None or storage is None or study_name is None:
        raise ValueError("resume(model, train_loader, val_loader, storage=..., study_name=...) continues an Optuna search; "
                         "resume(path) a Ray one")
    url = storage_url(storage, Path.cwd())
    opened = open_storage(url, heartbeat_interval=heartbeat_interval)
    try:
        study = optuna.load_study(study_name=study_name, storage=opened)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(opened, include_best_trial=False)]
        raise ValueError(f"no study {study_name!r} in {url}; studies there: {', '.join(names) or '(none)'}") from None
    stored = study.user_attrs.get(CONFIG_KEY)
    if stored is None:
        raise ValueError(f"study {study_name!r} was not created by autocompress.search (it has no {CONFIG_KEY!r})")
    settings = _Settings(**stored)
    if n_trials is not None:
        settings = dataclasses.replace(settings, n_trials=n_trials)
    spec = objective if objective is not None else settings.objectives
    if _has_callable(spec):
        raise ValueError(f"study {study_name!r} optimised a callable objective ({settings.objectives}); pass it again as objective=")
    space = SearchSpace.from_dict(settings.space)
    run = _Search(
        model, train_loader, _dataset(val_loader, "val_loader"), test_loader, metric, loss_fn, parse_objectives(spec),
        AccuracyConstraint(settings.max_accuracy_drop, settings.relative_drop), space, Target.from_dict(settings.target),
        Finetune(**settings.finetune), settings, url, study_name, sampler or settings.sampler, pruner, heartbeat_interval, progress,
    )
    return run.execute(timeout, resuming=True)


def _check_backend(backend: Any, strategy: str, pruner: Any) -> Any:
    """"optuna", or a Ray backend (the string "ray" means Ray() with its defaults)."""
    if backend == "optuna":
        return backend
    if backend == "ray" or isinstance(backend, Ray):
        backend = Ray() if backend == "ray" else backend
        if strategy != "direct":
            raise ValueError(f"strategy={strategy!r} runs on the Optuna backend only; use backend='optuna' or strategy='direct'")
        if pruner is not None:
            raise ValueError("Optuna pruners run on the Optuna backend only; with Ray use Ray(scheduler='asha')")
        return backend
    raise ValueError(f"unknown backend {backend!r}; use 'optuna', 'ray' or autocompress.search.Ray(...)")


def _has_callable(spec: Any) -> bool:
    if isinstance(spec, (list, tuple)):
        return any(_has_callable(s) for s in spec)
    return isinstance(spec, dict) and "callable" in spec


def _check_sampler(sampler: Any) -> str:
    if isinstance(sampler, optuna.samplers.BaseSampler):
        return type(sampler).__name__
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; use one of {', '.join(SAMPLERS)} or an optuna sampler instance")
    return sampler


def _check_loader(loader: Any, name: str) -> None:
    try:
        batch = next(iter(loader))
    except StopIteration:
        raise ValueError(f"{name} is empty (yields no batch); pass a loader over a non-empty dataset") from None
    except TypeError:
        raise TypeError(f"{name} must be an iterable of (inputs, targets) batches, got {type(loader).__name__}") from None
    inputs_of(batch)


def _dataset(loader: Any, name: str) -> Dataset:
    try:
        return Dataset(loader)
    except ValueError as error:
        raise ValueError(f"{name}: {error}") from None


def _make_sampler(name: str, n_objectives: int, seed: int, n_trials: int) -> optuna.samplers.BaseSampler:
    startup = max(4, min(10, n_trials // 3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if name == "gp":
            return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup)
        if name == "nsga2" or (name == "auto" and n_objectives > 1):
            return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(8, min(50, n_trials // 4)))
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=startup, constant_liar=True)


class _StudyLatencyCache(MutableMapping):
    """Latency per graph fingerprint, kept in the study (shared by workers, kept on resume)."""

    def __init__(self, study: optuna.Study) -> None:
        self.study = study

    def __getitem__(self, key: str) -> dict:
        return self.study.user_attrs[LATENCY_PREFIX + key]

    def get(self, key: str, default=None):
        return self.study.user_attrs.get(LATENCY_PREFIX + key, default)

    def __setitem__(self, key: str, value: dict) -> None:
        self.study.set_user_attr(LATENCY_PREFIX + key, value)

    def __delitem__(self, key: str) -> None:
        raise NotImplementedError("the latency cache is append-only")

    def __iter__(self) -> Iterator[str]:
        return (k.removeprefix(LATENCY_PREFIX) for k in self.study.user_attrs if k.startswith(LATENCY_PREFIX))

    def __len__(self) -> int:
        return sum(1 for _ in self)


class EarlyStop:
    """Watches validation accuracy at the end of pruning recovery and half-way through the
    final fine-tuning; stops (optuna.TrialPruned) a trial hopelessly below the accuracy floor.

    record(stage, accuracy, index) publishes each check (to the Optuna trial, or to Ray
    Tune); should_prune() lets a scheduler or pruner stop the trial on it."""

    def __init__(
        self, runner: CandidateRunner, floor: float, margin: float | None,
        record: Callable[[str, float, int], None] | None = None, should_prune: Callable[[], bool] | None = None,
    ) -> None:
        self.runner, self.floor, self.margin, self.record, self.should_prune = runner, floor, margin, record, should_prune
        self.checks = 0

    def __call__(self, stage: str, step: int, total: int, module: nn.Module) -> None:
        if self.margin is None and self.record is None:
            return
        # Mid-recovery accuracy says little (the lr is still high); its last step says a lot.
        checkpoint = total - 1 if stage == "recovery" else total // 2
        if total < 4 or step != checkpoint:
            return
        accuracy = self.runner.torch_accuracy(module)
        if self.record is not None:
            self.record(stage, accuracy, self.checks)
        self.checks += 1
        if self.margin is not None and accuracy < self.floor - self.margin:
            raise optuna.TrialPruned(f"{stage}: validation accuracy {accuracy:.4f} is below the floor {self.floor:.4f} by more than {self.margin}")
        if self.should_prune is not None and self.should_prune():
            raise optuna.TrialPruned(f"{stage}: pruned by the search's scheduler at accuracy {accuracy:.4f}")


class _Search:
    def __init__(
        self, model, train_loader, val: Dataset, test_loader, metric, loss_fn, objectives: list[Objective],
        constraint: AccuracyConstraint, space: SearchSpace, target: Target, finetune: Finetune, settings: _Settings,
        url, study_name: str, sampler, pruner, heartbeat_interval, progress: bool,
    ) -> None:
        self.model, self.train_loader, self.val, self.test_loader = model, train_loader, val, test_loader
        self.metric, self.objectives, self.constraint, self.space = metric, objectives, constraint, space
        self.target, self.settings, self.url, self.study_name = target, settings, url, study_name
        self.sampler, self.pruner, self.progress = sampler, pruner, progress
        self.workdir = Path(settings.workdir)
        self.storage = open_storage(url, heartbeat_interval=heartbeat_interval)
        self.runner = CandidateRunner(model, train_loader, val, metric=metric, loss_fn=loss_fn, finetune=finetune, target=target)

    # -- study ----------------------------------------------------------------------------
    def _study(self, name: str, directions: list[str], settings: _Settings, resuming: bool, space: SearchSpace) -> optuna.Study:
        sampler = self.sampler if isinstance(self.sampler, optuna.samplers.BaseSampler) else _make_sampler(
            settings.sampler, len(directions), settings.seed, settings.n_trials
        )
        existing = {s.study_name for s in optuna.get_all_study_summaries(self.storage, include_best_trial=False)}
        if resuming and name not in existing:
            raise ValueError(f"no study {name!r} to resume in {self.url}")
        # Created here, once, before any trial: several workers creating one study at once race.
        study = optuna.create_study(
            storage=self.storage, study_name=name, directions=directions, sampler=sampler,
            pruner=self.pruner or optuna.pruners.NopPruner(), load_if_exists=True,
        )
        stored = study.user_attrs.get(CONFIG_KEY)
        if stored is None:
            study.set_user_attr(CONFIG_KEY, dataclasses.asdict(settings))
            for point in space.start_points:
                study.enqueue_trial(point, skip_if_exists=True)
        elif _Settings(**stored).comparable() != settings.comparable():
            differing = [k for k, v in settings.comparable().items() if _Settings(**stored).comparable().get(k) != v]
            raise ValueError(
                f"study {name!r} in {self.url} holds a search with different settings ({', '.join(differing)}); "
                "continue it with autocompress.resume(...) or start a new one with another study_name"
            )
        if not has_heartbeat(self.storage):
            recovered = recover_interrupted(study)
            if recovered:
                log.warning("study %s: %d trial(s) left running by an interrupted search are queued again", name, recovered)
        return study

    def _baseline(self, study: optuna.Study) -> Baseline:
        stored = study.user_attrs.get(BASELINE_KEY)
        if stored is not None and Path(stored["ir_path"]).exists():
            return Baseline.from_dict(stored)
        baseline = self.runner.measure_baseline(self.workdir)
        study.set_user_attr(BASELINE_KEY, baseline.to_dict())
        return baseline

    # -- one trial ------------------------------------------------------------------------
    def _objective(self, study: optuna.Study, space: SearchSpace, objectives: list[Objective], baseline: Baseline, trial_root: Path):
        floor = self.constraint.floor(baseline.accuracy)
        cache = _StudyLatencyCache(study)
        single = len(objectives) == 1

        def run_trial(trial: optuna.Trial) -> list[float] | float:
            params = suggest(trial, space)
            policy = space.policy(params)
            trial.set_user_attr("policy", policy.to_dict())
            def record(stage: str, accuracy: float, index: int) -> None:
                trial.set_user_attr(f"accuracy_{stage}_check", accuracy)
                if single:  # Optuna pruners see single-objective intermediate values only
                    trial.report(accuracy, index)

            stop = EarlyStop(self.runner, floor, self.settings.early_stop_margin, record, trial.should_prune if single else None)
            try:
                measured = self.runner.run(policy, trial_root / f"trial_{trial.number:04d}", baseline, latency_cache=cache, on_finetune_step=stop)
                measured["params"] = dict(params)
                values = [o(measured) for o in objectives]
            except optuna.TrialPruned as pruned:
                trial.set_user_attr("pruned_reason", str(pruned))
                raise
            except Exception as error:
                trial.set_user_attr("error", f"{type(error).__name__}: {error}"[:2000])
                log.warning("trial %d failed: %s: %s", trial.number, type(error).__name__, error)
                raise
            measured.pop("params")
            trial.set_user_attr("measurements", _jsonable(measured))
            trial.set_constraint("accuracy", self.constraint.violation(measured["accuracy"], baseline.accuracy))
            return values[0] if single else values

        return run_trial

    # -- the loop -------------------------------------------------------------------------
    def _optimize(self, study: optuna.Study, space: SearchSpace, objectives, baseline: Baseline, n_trials: int, deadline: float | None, label: str) -> None:
        trial_root = self.workdir / "trials" / study.study_name.replace("/", "_").replace(":", "_")
        remaining = n_trials - _done(study)
        if remaining <= 0:
            return
        bar = _Progress(study, n_trials, objectives, self.constraint, baseline, label, self.progress)
        try:
            timeout = None if deadline is None else max(1.0, deadline - time.monotonic())
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.optimize(
                    self._objective(study, space, objectives, baseline, trial_root),
                    n_trials=remaining, timeout=timeout, catch=(Exception,), callbacks=[bar.update],
                )
        finally:
            bar.close()

    def execute(self, timeout: float | None, resuming: bool = False) -> SearchResult:
        started = time.monotonic()
        deadline = None if timeout is None else started + timeout
        self.workdir.mkdir(parents=True, exist_ok=True)
        directions = [o.direction for o in self.objectives]
        with _quiet_optuna():
            # Condensa's second stage starts from the level it finds, not from the preset's points.
            condensa = self.settings.strategy == "condensa"
            created_with = dataclasses.replace(self.space, start_points=()) if condensa else self.space
            study = self._study(self.study_name, directions, self.settings, resuming, created_with)
            baseline = self._baseline(study)
            if self.progress:
                print(f"baseline: accuracy {baseline.accuracy:.4f}, latency {baseline.latency_ms:.4f} ms; "
                      f"{self.constraint.describe(baseline.accuracy)}; {len(self.space.searched)} dimensions", flush=True)
            space = self.space
            if condensa:
                space = self._condensa_level(study, baseline, deadline)
            budget = self.settings.n_trials - (_level_budget(self.settings.n_trials) if condensa else 0)
            self._optimize(study, space, self.objectives, baseline, max(1, budget), deadline, "search")
            result = self._result(study, baseline)
        result.seconds = time.monotonic() - started
        self._finish(result)
        return result

    # -- Condensa: the highest uniform level meeting the constraint, then the space below it --
    def _condensa_level(self, study: optuna.Study, baseline: Baseline, deadline: float | None) -> SearchSpace:
        level_space = SearchSpace(
            dimensions=(Dimension("pruning_ratio", low=0.0, high=0.875, step=0.0625),),
            layers=self.space.layers,
            groups=self.space.groups,
            base=Policy.quantize(8, 8),
            start_points=({"pruning_ratio": 0.25}, {"pruning_ratio": 0.5}),
            preset="condensa-level",
        )
        level_budget = _level_budget(self.settings.n_trials)
        level_settings = dataclasses.replace(self.settings, space=level_space.to_dict(), objectives="level", sampler="gp", n_trials=level_budget)
        level_study = self._study(f"{self.study_name}:level", ["maximize"], level_settings, False, level_space)
        level_objective = Objective("level", "maximize", lambda m: m["params"]["pruning_ratio"])
        self._optimize(level_study, level_space, [level_objective], baseline, level_budget, deadline, "level set")
        feasible = [t for t in level_study.trials if t.state == TrialState.COMPLETE and _violation(t) is not None and _violation(t) <= 0]
        level = max((t.params["pruning_ratio"] for t in feasible), default=0.0)
        study.set_user_attr("condensa_level", level)
        if self.progress:
            print(f"condensa: highest uniform INT8 pruning level meeting the constraint: {level:g} "
                  f"({len(feasible)}/{len(level_study.trials)} level trials feasible)", flush=True)
        capped = []
        for dim in self.space.dimensions:
            if dim.knob == "pruning_ratio" and dim.choices is None:
                dim = dataclasses.replace(dim, high=min(dim.high, level))
            capped.append(dim)
        start = {}
        for dim in capped:
            if dim.knob == "pruning_ratio":
                start[dim.name] = level if dim.choices is None else dim.choices[0]
            elif dim.knob in ("weight_bits", "activation_bits"):
                start[dim.name] = 8 if 8 in (dim.choices or ()) else dim.choices[0]
            elif dim.knob == "pruning_criterion" and "l2" in dim.choices:
                start[dim.name] = "l2"  # what the level search used
            elif dim.name not in self.space.fixed:
                start[dim.name] = (dim.choices or (dim.low,))[0]
        uniform_int8 = {**start, **{d.name: 0.0 for d in capped if d.knob == "pruning_ratio" and d.choices is None}}
        points = (start, uniform_int8) if level > 0 else (uniform_int8,)
        space = dataclasses.replace(self.space, dimensions=tuple(capped), start_points=points)
        # Stage 2 runs in the main study; its distributions must not change between runs.
        for point in space.start_points:
            study.enqueue_trial(point, skip_if_exists=True)
        return space

    # -- results --------------------------------------------------------------------------
    def _result(self, study: optuna.Study, baseline: Baseline) -> SearchResult:
        return summarize_trials(
            [_record(t) for t in study.trials if t.state != TrialState.WAITING],
            objectives=self.objectives, constraint=self.constraint, baseline=baseline, space=self.space,
            name=study.study_name, storage=self.url if isinstance(self.url, str) else type(self.url).__name__,
            workdir=self.workdir, strategy=self.settings.strategy,
        )

    def _finish(self, result: SearchResult) -> None:
        finish_search(result, self.workdir, self.test_loader, self.metric, self.target, self.progress)


def summarize_trials(
    records: list[TrialRecord], *, objectives: list[Objective], constraint: AccuracyConstraint, baseline: Baseline,
    space: SearchSpace, name: str, storage: str, workdir: Path, strategy: str,
) -> SearchResult:
    """A SearchResult from the trials of a search (any backend): best, Pareto front, message."""
    finished = [r for r in records if r.state == "COMPLETE"]
    feasible = [r for r in finished if r.feasible]
    pareto = _pareto(feasible, objectives)
    if feasible:
        best = pareto[0]
        values = ", ".join(f"{o.name} {v:.4g}" for o, v in zip(objectives, best.values or ()))
        message = f"best feasible trial {best.number}: {values}, validation accuracy {best.measurements['accuracy']:.4f}"
    elif finished:
        best = min(finished, key=lambda r: r.violation)
        message = (f"INFEASIBLE: no trial met {constraint.describe(baseline.accuracy)}; the closest, trial "
                   f"{best.number}, reached {best.measurements['accuracy']:.4f}. Allow a larger drop, a longer "
                   "fine-tune, or a gentler space.")
    else:
        best = None
        errors = {r.error for r in records if r.error}
        message = "no trial finished" + (f"; errors: {'; '.join(sorted(errors))[:1000]}" if errors else "")
    return SearchResult(
        study_name=name,
        storage=storage,
        objectives=[{"name": o.name, "direction": o.direction} for o in objectives],
        constraint=constraint.describe(baseline.accuracy),
        baseline=baseline.to_dict(),
        trials=records,
        best=best,
        pareto=pareto,
        feasible=bool(feasible),
        message=message,
        workdir=str(workdir),
        strategy=strategy,
        floor=constraint.floor(baseline.accuracy),
        layers=tuple(space.layers),
    )


def finish_search(
    result: SearchResult, workdir: Path, test_loader, metric: Metric | None, target: Target, progress: bool, test_check=None
) -> None:
    """Re-check the best policy on the test split (``test_check``: where the IRs run, see
    run_test_check); write result.json, the best model and the report."""
    if result.best is not None and "ir_path" in result.best.measurements and test_loader is not None:
        result.test = _recheck(result, test_loader, metric, target, test_check or run_test_check)
    (workdir / "result.json").write_text(result.to_json() + "\n")
    written = [workdir / "result.json"]
    if result.best is not None and "ir_path" in result.best.measurements:
        written.append(result.deploy(workdir / "best"))
    try:  # plots are a convenience: an error there must never lose the result
        from autocompress.search.report import write_report

        report = write_report(result, workdir)
        written += [report["html"], report["png"]]
    except Exception as error:
        log.warning("could not write the search report: %s: %s", type(error).__name__, error)
    if progress:
        print(result.summary(), flush=True)
        print("wrote " + ", ".join(str(p) + ("/" if p.is_dir() else "") for p in written), flush=True)


def run_test_check(ir_paths: list[str], inputs_file: Path, target: Target, config: LatencyConfig) -> tuple[list[np.ndarray], dict]:
    """Logits of each IR on the test inputs, and their latencies in alternating rounds (the
    first IR is the reference), in one OpenVINO child process on this machine."""
    with tempfile.TemporaryDirectory(prefix="autocompress-test-") as tmp:
        jobs = [
            {"op": "infer", "args": {"xml_path": p, "inputs_npy": str(inputs_file), "outputs_npy": f"{tmp}/{i}.npy", "target": target.to_dict()}}
            for i, p in enumerate(ir_paths)
        ]
        jobs.append({"op": "measure_latency", "args": {"xml_paths": list(ir_paths), "target": target.to_dict(), "config": config.to_dict()}})
        results = [unwrap(r) for r in run_jobs(jobs)]
        logits = [np.load(f"{tmp}/{i}.npy") for i in range(len(ir_paths))]
    return logits, results[-1]


def _recheck(result: SearchResult, test_loader: Iterable, metric: Metric | None, target: Target, test_check) -> dict[str, Any]:
    """Test accuracy of the best IR and the baseline IR, and a full latency comparison."""
    data = _dataset(test_loader, "test_loader")
    metric = metric or top1_accuracy
    config = LatencyConfig()
    logits, latency = test_check([result.baseline["ir_path"], result.best.measurements["ir_path"]], data.inputs_file(), target, config)
    scores = [float(metric(x, data.targets)) for x in logits]
    ratio = latency["ratios_to_first"][1]
    return {
        "baseline_accuracy": scores[0],
        "accuracy": scores[1],
        "drop": scores[0] - scores[1],
        "samples": len(data.targets),
        "baseline_latency_ms": latency["models"][0]["median_ms"],
        "latency_ms": latency["models"][1]["median_ms"],
        "speedup": 1.0 / ratio,
        "rounds": config.rounds,
        "node": latency.get("node"),  # where it ran, when not on this machine (Ray)
    }


def _level_budget(n_trials: int) -> int:
    """Condensa's first stage gets a third of the trials (at least 2), the second the rest."""
    return max(2, n_trials // 3) if n_trials > 2 else 1


def _done(study: optuna.Study) -> int:
    """Finished trials that count against the budget (a trial failed by a lost worker is retried, not counted)."""
    count = 0
    for t in study.get_trials(deepcopy=False):
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
            count += 1
        elif t.state == TrialState.FAIL and "error" in t.user_attrs:
            count += 1
    return count


def _violation(trial: optuna.trial.FrozenTrial) -> float | None:
    values = trial.constraints if hasattr(trial, "constraints") else {}
    return values.get("accuracy") if values else None


def _record(t: optuna.trial.FrozenTrial) -> TrialRecord:
    policy = t.user_attrs.get("policy")
    seconds = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start else None
    return TrialRecord(
        number=t.number,
        state=t.state.name,
        params=dict(t.params),
        policy=Policy.from_dict(policy) if policy else None,
        measurements=dict(t.user_attrs.get("measurements", {})),
        values=tuple(t.values) if t.values and t.state == TrialState.COMPLETE else None,  # a PRUNED trial's value is an intermediate accuracy
        violation=_violation(t),
        seconds=seconds,
        error=t.user_attrs.get("error") or t.user_attrs.get("pruned_reason"),
    )


def _pareto(records: list[TrialRecord], objectives: list[Objective]) -> list[TrialRecord]:
    """Non-dominated records over the objectives and accuracy; sorted by the first objective."""
    signs = [1 if o.direction == "minimize" else -1 for o in objectives]

    def key(r: TrialRecord) -> list[float]:  # all minimised
        return [s * v for s, v in zip(signs, r.values)] + [-r.measurements["accuracy"]]

    keys = {r.number: key(r) for r in records}
    front = [
        r for r in records
        if not any(all(a <= b for a, b in zip(keys[o.number], keys[r.number])) and keys[o.number] != keys[r.number] for o in records)
    ]
    unique: dict[tuple, TrialRecord] = {}
    for r in sorted(front, key=lambda r: (keys[r.number], r.number)):
        unique.setdefault(tuple(keys[r.number]), r)  # equal measurements: keep the first trial
    return list(unique.values())


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


@contextlib.contextmanager
def _quiet_optuna():
    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(previous)


class _Progress:
    """A live progress bar: trial n/N, best feasible so far, ETA (tqdm)."""

    def __init__(self, study, total: int, objectives, constraint, baseline: Baseline, label: str, enabled: bool) -> None:
        self.objectives, self.constraint, self.baseline = objectives, constraint, baseline
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=min(total, _done(study)), desc=label, unit="trial", dynamic_ncols=True)

    def update(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if self.bar is None:
            return
        if trial.state == TrialState.FAIL and "error" not in trial.user_attrs:
            return
        self.bar.update(1)
        best = None
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            v = _violation(t)
            if v is not None and v <= 0 and "measurements" in t.user_attrs:
                score = t.values[0] if self.objectives[0].direction == "minimize" else -t.values[0]
                if best is None or score < best[0]:
                    best = (score, t)
        if best is None:
            self.bar.set_postfix_str("no feasible trial yet", refresh=True)
        else:
            t = best[1]
            m = t.user_attrs["measurements"]
            self.bar.set_postfix_str(
                f"best #{t.number}: {m['speedup']:.2f}x, acc {m['accuracy']:.4f}, {summarize_policy(t.params)[:40]}", refresh=True
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
