"""The search driver: ``search`` and ``resume``.

Both validate one SearchSettings, build the space and the trial setup, and hand a
Backend (Optuna in this process, or Ray Tune on a cluster) the trial function; then, in
one place for every backend, the trials are summarised, the best policy is re-checked on
the test split, and result.json, the best model and the report are written.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
from torch import nn

from autocompress.core import Finetune
from autocompress.devices import Accelerator
from autocompress.evaluators.metrics import Metric, score
from autocompress.evaluators.runtime import Dataset
from autocompress.evaluators.target import LatencyConfig, Target
from autocompress.evaluators.torch_side import module_logits
from autocompress.export import check_model
from autocompress.graph import OutputSelector, capture, inputs_of
from autocompress.search import optuna_backend, proposals
from autocompress.search.backend import Backend, SearchJob
from autocompress.search.confirm import (
    apply_confirmation,
    best_not_compressing,
    confirm_candidates,
    ranked,
    remeasure_ties,
)
from autocompress.search.lock import DriverLock
from autocompress.search.objectives import DropEstimate, parse_objectives
from autocompress.search.result import SearchResult, best_message, pareto_front, summarize_trials
from autocompress.search.settings import FINAL_FINETUNE, SEARCH_FINETUNE, SearchSettings
from autocompress.search.trial import Measure, Trial, TrialSetup
from autocompress.search_spaces import SearchSpace, SpaceError, build_space
from autocompress.training import TrainFn

log = logging.getLogger(__name__)


def search(
    model: nn.Module,
    train_loader: Iterable,
    val_loader: Iterable,
    *,
    test_loader: Iterable | None = None,
    confirm_loader: Iterable | None = None,
    metric: Metric | None = None,
    loss_fn: Callable | None = None,
    train_fn: TrainFn | None = None,
    output: OutputSelector = None,
    objective: Any = "latency",
    max_accuracy_drop: float = 0.01,
    relative_drop: bool = False,
    confidence: float | None = 0.9,
    confirm_fraction: float = SearchSettings.confirm_fraction,
    top_k: int = 3,
    final_finetune: Finetune | None = FINAL_FINETUNE,
    hardware_proposals: bool = True,
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
    pruner: optuna.pruners.BasePruner | str | None = None,
    early_stop_margin: float | None = 0.05,
    seed: int = 0,
    heartbeat_interval: int | None = 30,
    progress: bool = True,
    backend: Any = "optuna",
    device: str | torch.device = "auto",
    autocast: str | None = None,
) -> SearchResult:
    """Search compression policies for ``model``: maximise ``objective`` subject to
    accuracy >= baseline - ``max_accuracy_drop`` on ``val_loader``.

    confidence: the constraint must hold for the one-sided upper bound of the drop at this
        confidence (paired with the baseline on the same samples), in every trial and in
        the confirmation; None decides on the measured drop. It costs speed: with 1000
        validation samples and 2% of them classified differently than by the baseline,
        the 90% bound sits about 0.6 pt above the measured drop, so the search delivers
        policies that measure about that much gentler.
    confirm_loader / confirm_fraction: data the search does not select on (default: half of
        ``val_loader``, held back). Up to ``top_k`` feasible trials, best first, are
        fine-tuned again with ``final_finetune`` (None: kept as they are) and scored
        there; the first that keeps the constraint is delivered (selection without the
        winner's curse). After a failure, only candidates that dropped less on the
        selection data than every failed one are tried. confirm_fraction=0 and no
        confirm_loader: the search's best as is.
    hardware_proposals: a new latency (or throughput) search over per-layer or per-group
        knobs first profiles the model on ``target``, leaves out knob values that measured
        no faster there, and starts from the fastest policies predicted under several drop
        budgets (autocompress.search.proposals; about a minute for a ResNet-20 on 2 cores).

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
        checkpoints (single-objective searches): multi-fidelity, "feasibility" (stopped
        when it can no longer end feasible, learned from the finished trials), "halving"
        (successive halving: past each check go on only the most accurate third there),
        "hyperband", "median", or an optuna.pruners object. The progress bar counts the fine-tuning steps run and
        what the stopped trials saved.
    backend: "optuna" (trials one after another in this process) or "ray" /
        autocompress.search.Ray(address=..., storage_path=..., target_resource=...): trials
        as a Ray Tune experiment on a cluster, resumable with ``resume(path)``.
    train_fn: your training loop for every fine-tune of every trial and confirmation
        (see autocompress.apply_policy and autocompress.training.TrainStage); on Ray it is
        shipped to the workers, so it must pickle.
    output: which part of what the model returns is the logits, for a model that returns
        more than a tensor (a key or attribute such as "logits", an index, or a function of
        the outputs); by default a tensor as it is, else ``logits``, else the first tensor.
    device, autocast: where the trials' and the confirmation's fine-tunes, calibrations and
        the hardware plan's sensitivity passes run, and in what autocast precision (see
        autocompress.apply_policy); export and measurement stay on the CPU / the target.
        Not part of the search's identity: a search started on one machine resumes on
        another with its own device. On Ray, "auto" is the GPU Ray reserved for the trial
        (``resources_per_trial={"gpu": 1}``), else the CPU.
    The best policy is re-checked on ``test_loader`` (exported IR on OpenVINO) with a
    full latency measurement; results, the best IR and a manifest go to ``workdir``.
    """
    accelerator = _accelerator(device, autocast)  # before any work
    settings = SearchSettings(
        objective=objective,
        max_accuracy_drop=max_accuracy_drop,
        relative_drop=relative_drop,
        space=space.to_dict() if isinstance(space, SearchSpace) else space,
        n_trials=n_trials,
        timeout=timeout,
        workdir=str(Path(workdir).resolve()),
        study_name=study_name,
        storage=_storage_setting(storage),
        target=target,
        finetune=finetune,
        sampler=sampler,
        strategy=strategy,
        early_stop_margin=early_stop_margin,
        seed=seed,
        backend=backend,
        confidence=confidence,
        confirm_fraction=confirm_fraction,
        top_k=top_k,
        final_finetune=final_finetune,
        hardware_proposals=hardware_proposals,
    )
    backend_impl = make_backend(
        settings,
        sampler=_instance(sampler),
        pruner=pruner,
        heartbeat_interval=heartbeat_interval,
        storage=_storage_object(storage),
    )
    data = Loaders(train_loader, val_loader, test_loader, confirm_loader)
    return run_search(
        settings,
        model,
        data,
        metric,
        loss_fn,
        backend_impl,
        progress,
        output=output,
        train_fn=train_fn,
        accelerator=accelerator,
    )


def resume(
    model: nn.Module | str | os.PathLike,
    train_loader: Iterable | None = None,
    val_loader: Iterable | None = None,
    *,
    storage: Any = None,
    study_name: str | None = None,
    test_loader: Iterable | None = None,
    confirm_loader: Iterable | None = None,
    metric: Metric | None = None,
    loss_fn: Callable | None = None,
    train_fn: TrainFn | None = None,
    output: OutputSelector = None,
    objective: Any = None,
    n_trials: int | None = None,
    timeout: float | None = None,
    sampler: optuna.samplers.BaseSampler | None = None,
    pruner: optuna.pruners.BasePruner | str | None = None,
    heartbeat_interval: int | None = 30,
    progress: bool = True,
    address: str | None = None,
    device: str | torch.device = "auto",
    autocast: str | None = None,
) -> SearchResult:
    """Continue a search.

    resume(path): a Ray search, from its experiment directory (it holds everything:
        settings, baseline, model and loaders), on the cluster it ran on; ``address``
        names another one ("local": a fresh Ray on this machine).
    resume(model, train_loader, val_loader, storage=..., study_name=...): an Optuna
        search, from its storage: its settings (space, objectives, constraint, target,
        fine-tuning, seed) are read back from the study; trials a killed run left RUNNING
        are retried; ``n_trials`` (default: the original budget) is the total to reach.
        Pass ``objective`` again only if it was a callable (code is not stored), and the
        ``confirm_loader`` and ``output`` the search had, if it had them.
    ``device``, ``autocast``: as in ``search``, for the rest of the search on this machine
        (they are not stored: a search started on a CPU machine may resume on a GPU one).
    """
    accelerator = _accelerator(device, autocast)
    if isinstance(model, (str, os.PathLike)):
        from autocompress.search.ray_backend import load_experiment

        settings, setup, test_loader, confirm, backend = load_experiment(
            model, address=address, timeout=timeout
        )
        setup = dataclasses.replace(setup, device=accelerator.device, autocast=accelerator.autocast)
        space = SearchSpace.from_dict(settings.space)
        job = SearchJob(settings, space, setup, True, progress, test_loader, confirm)
        return run_job(job, backend)
    if train_loader is None or val_loader is None or storage is None or study_name is None:
        raise ValueError(
            "resume(model, train_loader, val_loader, storage=..., study_name=...) continues an Optuna search; "
            "resume(path) a Ray one"
        )
    replace: dict[str, Any] = {
        "storage": _storage_setting(storage),
        "study_name": study_name,
        "timeout": timeout,
    }
    if n_trials is not None:
        replace["n_trials"] = n_trials
    if objective is not None:
        replace["objective"] = objective
    settings = optuna_backend.load_settings(storage, study_name, **replace)
    backend = optuna_backend.OptunaBackend(
        sampler=sampler,
        pruner=pruner,
        heartbeat_interval=heartbeat_interval,
        storage=_storage_object(storage),
    )
    data = Loaders(train_loader, val_loader, test_loader, confirm_loader)
    return run_search(
        settings,
        model,
        data,
        metric,
        loss_fn,
        backend,
        progress,
        resuming=True,
        output=output,
        train_fn=train_fn,
        accelerator=accelerator,
    )


@dataclasses.dataclass(frozen=True)
class Loaders:
    """The user's data: training, validation (selection), test and confirmation loaders."""

    train: Iterable
    val: Iterable
    test: Iterable | None = None
    confirm: Iterable | None = None


def run_search(
    settings: SearchSettings,
    model: nn.Module,
    data: Loaders,
    metric: Metric | None,
    loss_fn: Callable | None,
    backend: Backend,
    progress: bool,
    resuming: bool = False,
    output: OutputSelector = None,
    train_fn: TrainFn | None = None,
    accelerator: Accelerator = Accelerator(),
) -> SearchResult:
    """Check the inputs, build the space and the trial setup, and run ``settings`` on ``backend``
    (``accelerator``: where the torch passes run)."""
    example = _first_inputs(data.train, "train_loader")[:1]
    model = check_model(capture(model, example, output), example)
    val, confirm = split_validation(_dataset(data.val, "val_loader"), data.confirm, settings)
    hardware = None
    if isinstance(settings.space, str):
        space = build_space(model, settings.space, example_input=example)
        hardware = _hardware_plan(settings, space, model, data.train, val, example, metric, accelerator)
        if hardware is not None:  # the predicted fastest policies first, then the engineer's start points
            points = [*hardware.points, *hardware.space.start_points]  # (fitted to the fitted space)
            unique = [p for i, p in enumerate(points) if p not in points[:i]]
            space = dataclasses.replace(hardware.space, start_points=tuple(unique))
        settings = dataclasses.replace(settings, space=space.to_dict())
    else:
        space = SearchSpace.from_dict(settings.space)
    study_name = settings.study_name or f"autocompress-{space.preset or 'custom'}"
    settings = dataclasses.replace(settings, study_name=study_name)
    setup = TrialSetup(
        model=model,
        train_loader=data.train,
        val=val,
        objectives=parse_objectives(settings.objective),
        constraint=settings.constraint,
        finetune=settings.finetune,
        target=settings.target,
        metric=metric,
        loss_fn=loss_fn,
        train_fn=train_fn,
        early_stop_margin=settings.early_stop_margin,
        device=accelerator.device,
        autocast=accelerator.autocast,
    )
    recalibration = proposals.Recalibration(hardware) if hardware is not None else None
    job = SearchJob(settings, space, setup, resuming, progress, data.test, confirm, recalibration)
    return run_job(job, backend)


def _hardware_plan(
    settings: SearchSettings,
    space: SearchSpace,
    model: nn.Module,
    train_loader: Iterable,
    val: Dataset,
    example,
    metric: Metric | None,
    accelerator: Accelerator = Accelerator(),
):
    """The hardware-aware plan for a new latency search over per-layer or per-group knobs
    (None otherwise). A plan that fails costs its proposals, never the search."""
    per_layer = any(d.layers for d in space.searched)
    if not (settings.hardware_proposals and per_layer and proposals.has_latency(settings.objective)):
        return None
    started = time.monotonic()
    try:
        allowed = settings.max_accuracy_drop
        if settings.relative_drop:  # the plan works in metric units: scale by the model's own score
            allowed *= score(metric, module_logits(model, val.inputs, 500), val.targets, "the model")
        plan = proposals.plan(
            model,
            space,
            train_loader=train_loader,
            val=val,
            example_input=example,
            target=settings.target,
            metric=metric,
            max_drop=allowed,
            objectives=settings.objective,
            workdir=settings.workdir,
            device=accelerator.torch_device,
        )
    except Exception as error:
        log.warning(
            "hardware-aware proposals skipped: %s: %s",
            type(error).__name__,
            error,
            exc_info=log.isEnabledFor(logging.DEBUG),
        )
        return None
    log.info("hardware-aware plan in %.0f s: %d proposals", time.monotonic() - started, len(plan.points))
    return plan


def split_validation(
    val: Dataset, confirm_loader: Iterable | None, settings: SearchSettings
) -> tuple[Dataset, Dataset | None]:
    """(selection data, confirmation data): the user's confirm_loader, or a fixed share of
    the validation data held back (the same samples on every resume of the search)."""
    if confirm_loader is not None:
        return val, _dataset(confirm_loader, "confirm_loader")
    held = round(settings.confirm_fraction * len(val.targets))
    if held == 0:
        return val, None
    if len(val.targets) - held < 1:
        raise ValueError(
            f"val_loader has {len(val.targets)} samples: too few to hold back confirm_fraction="
            f"{settings.confirm_fraction} of them; pass more validation data or confirm_fraction=0"
        )
    order = np.random.default_rng(settings.seed).permutation(len(val.targets))
    kept, confirm = np.sort(order[held:]), np.sort(order[:held])
    return (
        Dataset([(val.inputs[kept], val.targets[kept])]),
        Dataset([(val.inputs[confirm], val.targets[confirm])]),
    )


def run_job(job: SearchJob, backend: Backend) -> SearchResult:
    """The part every backend shares: baseline, trials, summary, final check, files."""
    started = time.monotonic()
    job.workdir.mkdir(parents=True, exist_ok=True)
    setup = job.setup
    with DriverLock(job.workdir), backend.open(job) as session:
        baseline = session.stored_baseline()
        logits = baseline.logits() if baseline is not None else None
        if logits is None or len(logits) != len(setup.val.targets):  # new, or its outputs are gone
            baseline = setup.measure_baseline(job.workdir / "baseline", session.measure)
            session.save_baseline(baseline)
            logits = baseline.logits()
        if job.progress:
            confirm = f"{len(job.confirm.targets)} held back to confirm" if job.confirm else "none held back"
            print(
                f"baseline: accuracy {baseline.accuracy:.4f}, latency {baseline.latency_ms:.4f} ms; "
                f"{setup.constraint.describe(baseline.accuracy)}; validation samples: {len(setup.val.targets)} "
                f"to select on, {confirm}; {len(job.space.searched)} dimensions; state in {session.location}",
                flush=True,
            )
        trial = Trial(setup, baseline, logits)
        records = session.run(trial)
        unavailable = _missing_models(records, job)
        result = summarize_trials(
            records,
            objectives=setup.objectives,
            constraint=setup.constraint,
            baseline=baseline,
            layers=job.space.layers,
            name=job.study_name,
            storage=session.location,
            workdir=job.workdir,
            strategy=job.settings.strategy,
            unavailable=unavailable,
        )
        allowed = setup.constraint.allowed_drop(baseline.accuracy)
        estimates = [t.measurements.drop for t in records if t.measurements]
        result.warnings += resolution_warning(estimates, allowed, "validation data the search selects on")
        within = allowed if job.confirm is not None else None  # the confirmation then decides
        candidates = [
            c for c in ranked(result, setup.objectives[0].baseline, within) if c.number not in unavailable
        ]
        if len(setup.objectives) == 1:
            candidates, result.remeasured = remeasure_ties(
                candidates,
                setup.objectives,
                session.measure,
                baseline.ir_path,
                setup.val.inputs_file(),
                session.latency_cache,
                store=job.workdir / "confirm" / "retimed.json",
            )
            if result.remeasured:
                retimed = ", ".join(
                    f"trial {r['trial']} {r['speedup_side_by_side']:.2f}x" for r in result.remeasured
                )
                # The side-by-side figures replace the re-timed trials' own everywhere (trials,
                # front, best), so that what the result reports is one consistent set.
                by_number = {
                    c.number: c for c in candidates if c.number in {r["trial"] for r in result.remeasured}
                }
                result.trials = [by_number.get(t.number, t) for t in result.trials]
                result.pareto = pareto_front(
                    [t for t in result.trials if t.feasible and t.number not in unavailable], setup.objectives
                )
                if job.confirm is None and result.feasible:  # no confirmation to pick from them
                    result.best = result.pareto[0]
                    result.message = (
                        f"{best_message(result.best, setup.objectives)}; near-tied candidates re-timed "
                        f"side by side: {retimed}"
                    )
                if job.progress:
                    print(f"near-tied candidates re-timed side by side: {retimed}", flush=True)
        if result.feasible and not candidates:
            result.warnings.append(
                f"no feasible trial beats the uncompressed model on {setup.objectives[0].name}: "
                "keep the original model, or search a space that compresses harder"
            )
        if job.confirm is not None and candidates:
            confirmations = confirm_candidates(
                candidates,
                trial,
                job.confirm,
                final_finetune=job.settings.final_finetune,
                directory=job.workdir / "confirm",
                measure=session.measure,
                latency_cache=session.latency_cache,
                tries=job.settings.top_k,
                progress=job.progress,
            )
            keep = best_not_compressing(result, setup.objectives[0].baseline)
            keep = keep if keep is None or keep.number not in unavailable else None
            apply_confirmation(result, confirmations, setup.constraint, len(job.confirm.targets), keep)
            if keep is not None and result.best is keep:
                result.warnings.append(
                    f"no confirmed trial beats the uncompressed model on {setup.objectives[0].name}: "
                    "keep the original model, or search a space that compresses harder"
                )
            estimates = [c.drop for c in confirmations if c.drop]
            result.warnings += resolution_warning(estimates, allowed, "confirmation data")
        if job.hardware is not None:
            result.hardware = _hardware_report(job.hardware, records)
        if result.best is not None and result.best.policy is not None and result.best.policy.student:
            result.layers = _student_layers(job.space, result.best.params)
        result.seconds = time.monotonic() - started
        finish_search(result, job, session.measure)
    return result


def _missing_models(records: list, job: SearchJob) -> dict[int, str]:
    """Trials whose exported model is gone (a deleted trial folder) when the delivered model
    would be the trial's own: they cannot be re-checked or deployed. With a confirmation
    that fine-tunes again, the model is rebuilt from the stored policy instead."""
    if job.confirm is not None and job.settings.final_finetune is not None:
        return {}
    return {
        r.number: f"its exported model {r.measurements.ir_path} is missing (deleted?)"
        for r in records
        if r.state == "COMPLETE" and r.measurements is not None and not Path(r.measurements.ir_path).exists()
    }


def _hardware_report(recalibration: proposals.Recalibration, records: list) -> dict[str, Any]:
    """The plan for result.json: as it ended (recalibrated on the trials), how well the
    profiled model predicted the trials (out of sample: fitted before any of them ran), and
    how well the model predicted each trial when refitted on the ones before it."""
    measured = [(t.params, t.measurements.latency_ratio) for t in records if t.measurements is not None]
    try:
        # The backend observes a trial when it proposes the next one: none follows the last.
        recalibration.observe(t for t in records if t.state == "COMPLETE")
        on_trials = recalibration.initial.latency_model.report(measured).to_dict()
        return {**recalibration.report(), "latency_model_on_trials": on_trials}
    except Exception as error:  # a report must never lose the result
        return {"error": f"{type(error).__name__}: {error}"}


def _student_layers(space: SearchSpace, params: dict[str, Any]) -> tuple[str, ...]:
    """The layers of the best policy's student, as the space knows them (() when it does not)."""
    try:
        return space.layers_of(params)
    except SpaceError:  # e.g. condensa's level stage: params of another space
        return ()


def resolution_warning(estimates: list[DropEstimate], allowed: float, what: str) -> list[str]:
    """A warning when the data are too few to tell a drop within the constraint from one
    beyond it: the median one-sided bound sits further above the measured drop than the
    whole allowed drop."""
    widths = sorted(e.high - e.drop for e in estimates)
    if not widths or allowed <= 0:
        return []
    width, samples, level = widths[len(widths) // 2], estimates[0].samples, estimates[0].confidence
    if width <= allowed:
        return []
    needed = math.ceil(samples * (width / (allowed / 2)) ** 2)  # the width shrinks as 1/sqrt(samples)
    return [
        f"the {what} ({samples} samples) resolve a drop only to +{100 * width:.2f} pt at {level:.0%} "
        f"(median of {len(widths)} candidates), more than the {100 * allowed:.2f} pt allowed: near the "
        f"limit, feasibility is decided by chance. About {needed} samples would resolve it to half the "
        "allowed drop."
    ]


def finish_search(result: SearchResult, job: SearchJob, measure: Measure) -> None:
    """Re-check the best policy on the test split (where ``measure`` runs); write
    result.json, the best model and the report."""
    workdir = job.workdir
    if result.best is not None and result.best.measurements is not None and job.test_loader is not None:
        result.test = _recheck(result, job.test_loader, job.setup, measure)
    staging = workdir / f".result.json.{os.getpid()}"
    staging.write_text(result.to_json() + "\n")
    staging.replace(workdir / "result.json")  # readers never see half a file
    written = [workdir / "result.json"]
    if result.best is not None and result.best.measurements is not None:
        written.append(result.deploy(workdir / "best"))
    elif (workdir / "best").is_dir():  # an earlier run's model is not this result's: never leave it stale
        retired = workdir / f".best.retired.{os.getpid()}"
        (workdir / "best").replace(retired)
        shutil.rmtree(retired, ignore_errors=True)
    try:  # plots are a convenience: an error there must never lose the result
        from autocompress.search.report import write_report

        report = write_report(result, workdir)
        written += [report["html"], report["png"]]
    except Exception as error:
        log.warning("could not write the search report: %s: %s", type(error).__name__, error)
    if job.progress:
        print(result.summary(), flush=True)
        print("wrote " + ", ".join(str(p) + ("/" if p.is_dir() else "") for p in written), flush=True)


def _recheck(
    result: SearchResult, test_loader: Iterable, setup: TrialSetup, measure: Measure
) -> dict[str, Any]:
    """Test accuracy of the best IR and the baseline IR (the drop paired on the same
    samples, and whether the promise held there), and a full latency comparison."""
    data = _dataset(test_loader, "test_loader")
    config = LatencyConfig()
    logits, latency = measure.compare(
        [result.baseline["ir_path"], result.best.measurements.ir_path], data.inputs_file(), config
    )
    drop = setup.constraint.assess(setup.metric, logits[0], logits[1], data.targets, "the test split")
    ratio = latency["ratios_to_first"][1]
    low, high = latency["models"][1].get("ratio_interval") or (None, None)
    selected = result.best.measurements
    return {
        "baseline_accuracy": drop.baseline,
        "accuracy": drop.accuracy,
        "drop": drop.drop,
        "drop_low": drop.low,
        "drop_high": drop.high,
        "confidence": drop.confidence,
        "allowed_drop": setup.constraint.allowed_drop(drop.baseline),
        "held": setup.constraint.violation(drop.accuracy, drop.baseline) <= 0,
        "samples": drop.samples,
        "baseline_latency_ms": latency["models"][0]["median_ms"],
        "latency_ms": latency["models"][1]["median_ms"],
        "speedup": 1.0 / ratio,
        "speedup_low": 1.0 / high if high else None,
        "speedup_high": 1.0 / low if low else None,
        "speedup_confidence": latency["models"][1].get("ratio_confidence"),
        # What the search measured of this model, and whether this re-check lies in its interval.
        "selected_speedup": selected.speedup,
        "selected_speedup_interval": selected.speedup_interval,
        "selected_speedup_confidence": selected.latency_confidence,
        "speedup_agrees": _within(1.0 / ratio, selected.speedup_interval),
        "rounds": config.rounds,
        "node": latency.get("node"),  # where it ran, when not on this machine (Ray)
    }


def _within(value: float, interval: tuple[float, float] | None) -> bool | None:
    return None if interval is None else interval[0] <= value <= interval[1]


def _accelerator(device: Any, autocast: str | None) -> Accelerator:
    """The device and autocast, checked on this machine before any work (the driver fine-tunes
    the confirmation itself, whatever the backend)."""
    accelerator = Accelerator(device, autocast)
    accelerator.torch_device  # noqa: B018 (raises for a device this machine does not have)
    return accelerator


def make_backend(settings: SearchSettings, **optuna_options: Any) -> Backend:
    """The backend the settings name. Ray is imported only when a search uses it."""
    if settings.uses_ray:
        if optuna_options.get("pruner") is not None:
            raise ValueError(
                "Optuna pruners run on the Optuna backend only; with Ray use Ray(scheduler='asha')"
            )
        from autocompress.search.ray_backend import RayBackend  # Ray only when a search uses it

        return RayBackend(settings.backend, sampler=optuna_options.get("sampler"))
    return optuna_backend.OptunaBackend(**optuna_options)


def _storage_setting(storage: Any) -> str | None:
    """The storage as stored in the settings: a path or URL; a storage object is not stored."""
    return str(storage) if isinstance(storage, (str, os.PathLike)) else None


def _storage_object(storage: Any) -> optuna.storages.BaseStorage | None:
    """An optuna storage object given instead of a path or URL (used as is, not stored)."""
    return storage if isinstance(storage, optuna.storages.BaseStorage) else None


def _instance(sampler: Any) -> optuna.samplers.BaseSampler | None:
    return sampler if isinstance(sampler, optuna.samplers.BaseSampler) else None


def _first_inputs(loader: Any, name: str):
    """The inputs of the loader's first batch; a clear error for an empty or odd loader."""
    try:
        batch = next(iter(loader))
    except StopIteration:
        raise ValueError(
            f"{name} is empty (yields no batch); pass a loader over a non-empty dataset"
        ) from None
    except TypeError:
        raise TypeError(
            f"{name} must be an iterable of (inputs, targets) batches, got {type(loader).__name__}"
        ) from None
    return inputs_of(batch)


def _dataset(loader: Any, name: str) -> Dataset:
    try:
        return Dataset(loader)
    except ValueError as error:
        raise ValueError(f"{name}: {error}") from None
