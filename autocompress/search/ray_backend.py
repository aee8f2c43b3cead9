"""The Ray backend: the same constrained search as a Ray Tune experiment on a cluster.

    result = autocompress.search(model, train, val, backend=autocompress.search.Ray(address="auto"))
    result = autocompress.resume("/shared/autocompress-search/ray/autocompress-joint")

Each trial is a Tune function trainable: it samples nothing itself (OptunaSearch over the
same search space, with the accuracy constraint through ``trial.set_constraint``), then
compresses, fine-tunes and exports the candidate on whichever node Ray gives it, and
measures it ON THE TARGET: the exported ONNX goes to a Ray task pinned (custom resource,
one at a time per node so measurements never overlap) to the nodes of the target
hardware. Trials checkpoint after export and after measurement, so a trial retried
on another node (a lost worker) skips the work it already did. The experiment directory
holds Tune's state and autocompress's own (settings, baseline, the pickled model and
loaders), so ``resume(path)`` needs nothing else.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import optuna
import ray
import torch
from ray import tune
from ray.tune.search.optuna import OptunaSearch
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from autocompress.core import Finetune
from autocompress.search.backend import Ray
from autocompress.search.candidate import TRIAL_LATENCY, Baseline, CandidateRunner, measure_exported
from autocompress.search.objectives import AccuracyConstraint, Objective
from autocompress.search.result import SearchResult, TrialRecord
from autocompress.evaluators.child import run_jobs, unwrap
from autocompress.evaluators.runtime import Dataset
from autocompress.evaluators.target import LatencyConfig, Target
from autocompress.policies import Policy
from autocompress.search_spaces import SearchSpace
from autocompress.search_spaces.to_optuna import distributions

log = logging.getLogger(__name__)

SETTINGS_FILE = "autocompress.json"
SETUP_FILE = "autocompress-setup.pkl"
BASELINE_FILE = "baseline.onnx"  # every measuring node converts it to its own IR (against it, candidates are timed)
STAGE_FILE = "stage.json"
TUNE_TRIAL_ID = "tune_trial_id"  # user attribute: which Tune trial an Optuna trial is


# -- the sampler: Ray's OptunaSearch with the accuracy constraint ------------------------------
# It lives at module level in an importable module: Tune pickles the searcher.
class ConstrainedOptunaSearch(OptunaSearch):
    """OptunaSearch that knows autocompress's trial outcomes: a final result carries
    ``state`` (COMPLETE, PRUNED or FAIL), the objective values, the accuracy
    constraint's ``violation`` (set with ``trial.set_constraint`` before ``tell``, so the
    sampler models feasibility) and the policy and measurements (user attributes).

    It also limits how many trials run at once (instead of Tune's ConcurrencyLimiter,
    whose saved state can disagree with the experiment's after a killed driver, and then
    never proposes again); ``rebuild_searcher_state`` can recreate its state from the
    trials' own results."""

    def __init__(self, *args, max_concurrent: int | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.max_concurrent = max_concurrent

    def suggest(self, trial_id: str) -> dict | None:
        live = len(set(self._ot_trials) - self._completed_trials)
        if trial_id not in self._ot_trials and self.max_concurrent is not None and live >= self.max_concurrent:
            return None  # Tune asks again later
        config = super().suggest(trial_id)
        self._ot_trials[trial_id].set_user_attr(TUNE_TRIAL_ID, trial_id)
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        ot_trial = self._ot_trials.get(trial_id)
        check = result.get("accuracy_check")
        if ot_trial is None or check is None or isinstance(self.metric, list) or result.get("state"):
            return
        ot_trial.report(float(check), int(result.get("training_iteration", 0)))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        ot_trial = self._ot_trials[trial_id]
        result = result or {}
        state = result.get("state") if not error else "FAIL"
        for key in ("policy", "measurements", "error", "node_trained", "node_measured"):
            if result.get(key) is not None:
                ot_trial.set_user_attr(key, result[key])
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        try:
            if state == "COMPLETE":
                ot_trial.set_constraint("accuracy", float(result["violation"]))
                values = [float(result[m]) for m in metrics]
                self._ot_study.tell(ot_trial, values if len(values) > 1 else values[0])
            elif state == "FAIL" or error:
                self._ot_study.tell(ot_trial, state=optuna.trial.TrialState.FAIL)
            else:  # stopped early (accuracy floor, ASHA)
                self._ot_study.tell(ot_trial, state=optuna.trial.TrialState.PRUNED)
        except Exception as exc:  # a tell that fails must not stop the experiment
            log.warning("could not record trial %s in the sampler's study: %s", trial_id, exc)
        self._completed_trials.add(trial_id)


# -- measuring on the target node ------------------------------------------------------------
def _node_id() -> str:
    return ray.get_runtime_context().get_node_id()


def _baseline_ir_on_this_node(baseline_onnx: bytes, input_shape: list[int]) -> str:
    """The baseline IR on this node (converted once per node, cached by content)."""
    digest = hashlib.sha256(baseline_onnx).hexdigest()[:16]
    directory = Path(tempfile.gettempdir()) / "autocompress-baselines" / digest
    xml = directory / "model.xml"
    if not xml.exists():
        directory.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f"{digest}-", dir=directory.parent))
        (staging / "model.onnx").write_bytes(baseline_onnx)
        unwrap(run_jobs([{"op": "convert_to_ir", "args": {"onnx_path": str(staging / "model.onnx"), "xml_path": str(staging / "model.xml"), "input_shape": input_shape}}])[0])
        try:
            staging.rename(directory)  # atomic: concurrent converters on one node agree
        except OSError:
            pass  # another task got there first
    return str(xml)


def measure_on_node(onnx: bytes, baseline_onnx: bytes | None, inputs: np.ndarray, target: dict, config: dict, latency: bool) -> dict:
    """Runs as a Ray task on the measuring node: IR, validation logits, latency vs the baseline."""
    with tempfile.TemporaryDirectory(prefix="autocompress-measure-") as tmp:
        tmp = Path(tmp)
        (tmp / "model.onnx").write_bytes(onnx)
        np.save(tmp / "inputs.npy", inputs)
        shape = [Target.from_dict(target).batch, *inputs.shape[1:]]
        against = _baseline_ir_on_this_node(baseline_onnx, shape) if baseline_onnx is not None else None
        measured = measure_exported(
            tmp / "model.onnx", tmp / "model.xml", tmp / "inputs.npy", Target.from_dict(target), LatencyConfig(**config),
            against=against, latency=latency,
        )
        measured["xml"] = (tmp / "model.xml").read_bytes()
        measured["bin"] = (tmp / "model.bin").read_bytes()
    measured["node"] = _node_id()
    return measured


def test_check_on_node(best_xml: bytes, best_bin: bytes, baseline_onnx: bytes, inputs: np.ndarray, target: dict, config: dict) -> tuple:
    """Runs as a Ray task on the measuring node: the final test check (see driver.run_test_check)."""
    from autocompress.search.driver import run_test_check

    with tempfile.TemporaryDirectory(prefix="autocompress-test-") as tmp:
        tmp = Path(tmp)
        (tmp / "model.xml").write_bytes(best_xml)
        (tmp / "model.bin").write_bytes(best_bin)
        np.save(tmp / "inputs.npy", inputs)
        baseline = _baseline_ir_on_this_node(baseline_onnx, [Target.from_dict(target).batch, *inputs.shape[1:]])
        logits, latency = run_test_check([baseline, str(tmp / "model.xml")], tmp / "inputs.npy", Target.from_dict(target), LatencyConfig(**config))
    return logits, {**latency, "node": _node_id()}


@dataclasses.dataclass
class RayTestCheck:
    """driver.run_test_check on a node holding ``resource`` (this node when None); the
    first IR is always the baseline, shipped as ONNX."""

    resource: str | None
    baseline_onnx: Any  # a Ray object ref of the baseline ONNX bytes

    def __call__(self, ir_paths: list[str], inputs_file: Path, target: Target, config: LatencyConfig) -> tuple:
        best = Path(ir_paths[1])
        task = ray.remote(test_check_on_node).options(num_cpus=0, **_placement(self.resource))
        return ray.get(task.remote(best.read_bytes(), best.with_suffix(".bin").read_bytes(), self.baseline_onnx,
                                   np.load(inputs_file), target.to_dict(), config.to_dict()))


def _placement(resource: str | None) -> dict:
    """Task options: on a node with one unit of ``resource`` (outside any trial's placement
    group, which has none of it), or on this very node."""
    if resource:
        return {"resources": {resource: 1}, "scheduling_strategy": "DEFAULT", "max_retries": 2}
    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(_node_id(), soft=False)}


@dataclasses.dataclass
class RayMeasure:
    """A Measure (see candidate.py) that runs on a node holding ``resource``, or on this
    node when ``resource`` is None. ``against`` is always the baseline, shipped as ONNX."""

    inputs: Any  # a Ray object ref of the validation inputs
    target: Target
    config: LatencyConfig
    resource: str | None
    baseline_onnx: Any = None  # a Ray object ref of the baseline ONNX bytes
    last_node: str | None = None

    def __call__(self, onnx_path: Path, ir_path: Path, *, against: str | None, latency: bool) -> dict[str, Any]:
        task = ray.remote(measure_on_node).options(num_cpus=0, **_placement(self.resource))
        baseline = self.baseline_onnx if against is not None else None
        measured = ray.get(task.remote(Path(onnx_path).read_bytes(), baseline, self.inputs, self.target.to_dict(), self.config.to_dict(), latency))
        Path(ir_path).write_bytes(measured.pop("xml"))
        Path(ir_path).with_suffix(".bin").write_bytes(measured.pop("bin"))
        self.last_node = measured.pop("node")
        return measured


# -- the trainable -------------------------------------------------------------------------------
@dataclasses.dataclass
class TrialSetup:
    """What every trial needs, shipped once through Ray's object store (tune.with_parameters)."""

    model: torch.nn.Module
    train_loader: Iterable
    val_loader: Iterable
    metric: Any
    loss_fn: Any
    objectives: list[Objective]
    constraint: AccuracyConstraint
    space: dict
    finetune: Finetune
    target: Target
    baseline: dict
    early_stop_margin: float | None
    target_resource: str | None
    latency_cache: str | None = None  # a directory beside the experiment (None: no cache)
    inputs: Any = None
    baseline_onnx: Any = None


def run_trial(config: dict, setup: TrialSetup) -> None:
    """One trial (a Tune function trainable). Reports intermediate accuracy checks and one
    final result with ``state``; resumes from its checkpoint when Ray retries it."""
    from autocompress.search.driver import EarlyStop, _jsonable

    logging.getLogger("ray.train").setLevel(logging.WARNING)  # one INFO line per checkpoint otherwise
    space = SearchSpace.from_dict(setup.space)
    policy = space.policy(config)
    baseline = Baseline.from_dict(setup.baseline)
    floor = setup.constraint.floor(baseline.accuracy)
    val = Dataset(setup.val_loader)
    measure = RayMeasure(setup.inputs, setup.target, TRIAL_LATENCY, setup.target_resource, setup.baseline_onnx)
    runner = CandidateRunner(setup.model, setup.train_loader, val, metric=setup.metric, loss_fn=setup.loss_fn,
                             finetune=setup.finetune, target=setup.target, measure=measure)
    objective_keys = [objective_key(o) for o in setup.objectives]
    placeholders = {key: None for key in objective_keys}  # Tune wants the searcher's metrics in every result
    common = {"policy": policy.to_dict(), "node_trained": _node_id()}
    last_check: list[float] = []

    def record(stage: str, accuracy: float, index: int) -> None:
        last_check.append(accuracy)
        tune.report({**placeholders, "accuracy_check": accuracy, "stage": stage})

    def finish(state: str, checkpoint: tune.Checkpoint | None = None, **fields: Any) -> None:
        fields.setdefault("accuracy_check", last_check[-1] if last_check else 0.0)
        tune.report({**placeholders, **common, **fields, "state": state, "stage": "done"}, checkpoint=checkpoint)

    work = Path(tempfile.mkdtemp(prefix="autocompress-trial-"))
    candidate = work / "candidate"
    try:
        restored = _restore(tune.get_checkpoint(), work)
        if restored is not None and restored["stage"] == "measured":  # died after measuring: report again
            finish("COMPLETE", **restored["result"], checkpoint=tune.Checkpoint.from_directory(str(work)))
            return
        if restored is not None:  # exported before its worker died: measure only
            exported = {**restored["exported"], "onnx_path": str(candidate / "model.onnx")}
            common["resumed_from"] = "exported"
        else:
            started = time.perf_counter()
            module = runner.compress(policy, EarlyStop(runner, floor, setup.early_stop_margin, record))
            compress_seconds = time.perf_counter() - started
            accuracy = runner.torch_accuracy(module)
            last_check.append(accuracy)
            exported = {**runner.export(module, candidate), "seconds_compress": compress_seconds}
            _save_stage(work, {"stage": "exported", "exported": exported, **common})
            tune.report({**placeholders, "accuracy_check": accuracy, "stage": "exported"}, checkpoint=tune.Checkpoint.from_directory(str(work)))
        measured = runner.measure_exported(
            exported, policy, baseline, latency_cache=_FileLatencyCache(setup.latency_cache), compress_seconds=exported["seconds_compress"]
        )
        measured["params"] = dict(config)
        values = {key: float(o(measured)) for key, o in zip(objective_keys, setup.objectives)}
        measured.pop("params")
        measured.update(node_measured=measure.last_node, **{k: v for k, v in common.items() if k != "policy"})
        result = {
            **values,
            "measurements": _jsonable(measured),
            "accuracy": measured["accuracy"],
            "violation": setup.constraint.violation(measured["accuracy"], baseline.accuracy),
            "accuracy_check": measured["accuracy"],
            "node_measured": measure.last_node,
        }
        _save_stage(work, {"stage": "measured", "result": result, **common})
        finish("COMPLETE", **result, checkpoint=tune.Checkpoint.from_directory(str(work)))
    except optuna.TrialPruned as pruned:
        finish("PRUNED", error=str(pruned))
    except Exception as error:  # recorded, not retried: the same policy would fail again
        log.warning("trial failed: %s: %s", type(error).__name__, error, exc_info=True)
        finish("FAIL", error=f"{type(error).__name__}: {error}"[:2000])
    finally:
        shutil.rmtree(work, ignore_errors=True)  # tune.report has copied the checkpoints to storage


def objective_key(objective: Objective) -> str:
    return f"objective/{objective.name}"


def _save_stage(directory: Path, stage: dict) -> None:
    (directory / STAGE_FILE).write_text(json.dumps(stage))


def _restore(checkpoint, work: Path) -> dict | None:
    if checkpoint is None:
        return None
    checkpoint.to_directory(str(work))
    return json.loads((work / STAGE_FILE).read_text())


class _FileLatencyCache:
    """Latency per graph fingerprint in files beside the experiment (shared storage on a
    cluster; one file per fingerprint, written atomically)."""

    def __init__(self, root: str | None) -> None:
        self.root = Path(root) if root else None

    def get(self, key: str, default=None):
        if self.root is None or not (self.root / f"{key}.json").exists():
            return default
        return json.loads((self.root / f"{key}.json").read_text())

    def __setitem__(self, key: str, value: dict) -> None:
        if self.root is None:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        staging = self.root / f".{key}.{os.getpid()}.tmp"
        staging.write_text(json.dumps(value))
        staging.replace(self.root / f"{key}.json")


# -- the driver -----------------------------------------------------------------------------------
def search_with_ray(
    backend: Ray, *, model, train_loader, val_loader, val: Dataset, test_loader, metric, loss_fn,
    objectives: list[Objective], constraint: AccuracyConstraint, space: SearchSpace, target: Target, finetune: Finetune,
    settings: dict, n_trials: int, timeout: float | None, storage, study_name: str, sampler, progress: bool,
) -> SearchResult:
    """search(..., backend=Ray(...)): see the module docstring."""
    workdir = Path(settings["workdir"])
    storage_path = _check_storage_path(backend.storage_path or str(workdir / "ray"))
    experiment = _join(storage_path, study_name)
    if tune.Tuner.can_restore(experiment):
        raise ValueError(
            f"a Ray experiment already exists at {experiment}: continue it with autocompress.resume({experiment!r}) "
            "(or `autocompress resume PATH`), or pick another study_name"
        )
    started, started_ray = time.monotonic(), _connect(backend.address)
    try:
        setup = TrialSetup(
            model=model, train_loader=train_loader, val_loader=val_loader, metric=metric, loss_fn=loss_fn,
            objectives=objectives, constraint=constraint, space=space.to_dict(), finetune=finetune, target=target,
            baseline={}, early_stop_margin=settings["early_stop_margin"], target_resource=backend.target_resource,
            latency_cache=None if "://" in experiment else _join(experiment, "latency-cache"),
        )
        workdir.mkdir(parents=True, exist_ok=True)
        setup.inputs = ray.put(val.inputs)  # once in the object store, not once per trial
        runner = CandidateRunner(model, train_loader, val, metric=metric, loss_fn=loss_fn, finetune=finetune, target=target,
                                 measure=RayMeasure(setup.inputs, target, TRIAL_LATENCY, backend.target_resource))
        baseline = runner.measure_baseline(workdir)
        setup.baseline = baseline.to_dict()
        baseline_onnx = Path(baseline.onnx_path).read_bytes()
        setup.baseline_onnx = ray.put(baseline_onnx)
        if progress:
            print(f"baseline: accuracy {baseline.accuracy:.4f}, latency {baseline.latency_ms:.4f} ms; "
                  f"{constraint.describe(baseline.accuracy)}; {len(space.searched)} dimensions; Ray experiment {experiment}", flush=True)
        stored = {**settings, "backend": "ray", "ray": backend.to_dict(), "n_trials": n_trials, "study_name": study_name,
                  "storage": storage if isinstance(storage, str) or storage is None else None, "baseline": baseline.to_dict()}
        _write(experiment, SETTINGS_FILE, json.dumps(stored, indent=1, default=str).encode())
        _write(experiment, BASELINE_FILE, baseline_onnx)
        _write(experiment, SETUP_FILE, _pickle(dataclasses.replace(setup, inputs=None, baseline_onnx=None), test_loader))
        tuner = tune.Tuner(
            _trainable(setup, backend),
            tune_config=_tune_config(backend, space, objectives, settings, n_trials, timeout, storage, study_name, sampler),
            run_config=_run_config(backend, storage_path, study_name, n_trials, progress),
        )
        grid = tuner.fit()
        return _finish(grid, experiment, stored, setup, space, objectives, constraint, baseline, test_loader, metric, target, progress, started)
    finally:
        if started_ray:
            ray.shutdown()


def resume_ray(path: str | os.PathLike, *, address: str | None = None, timeout: float | None = None, progress: bool = True) -> SearchResult:
    """Continue a Ray search from its experiment directory: finished trials are kept,
    unfinished and errored ones run again (from their checkpoints), and the sampler
    proposes the rest of the budget."""
    experiment = str(path)
    if "://" not in experiment:
        experiment = str(Path(experiment).expanduser().resolve())
    if not tune.Tuner.can_restore(experiment):
        raise ValueError(
            f"no Ray Tune experiment at {experiment}: pass the directory the search printed "
            "(<storage_path>/<study_name>, e.g. autocompress-search/ray/autocompress-joint)"
        )
    try:
        stored = json.loads(_read(experiment, SETTINGS_FILE))
        setup, test_loader = _unpickle(_read(experiment, SETUP_FILE))
    except FileNotFoundError:
        raise ValueError(f"the Ray experiment at {experiment} was not written by autocompress.search (no {SETTINGS_FILE})") from None
    backend = Ray(**{**stored["ray"], **({"address": address} if address else {})})
    started, started_ray = time.monotonic(), _connect(backend.address)
    try:
        setup.inputs = ray.put(Dataset(setup.val_loader).inputs)
        setup.baseline_onnx = ray.put(_read(experiment, BASELINE_FILE))
        space = SearchSpace.from_dict(stored["space"])
        baseline = Baseline.from_dict(stored["baseline"])
        if progress:
            print(f"resuming Ray experiment {experiment}", flush=True)
        if "://" not in experiment:
            _check_tune_state(Path(experiment), stored, setup, space)
        tuner = tune.Tuner.restore(experiment, trainable=_trainable(setup, backend), resume_unfinished=True, resume_errored=True)
        grid = tuner.fit()
        return _finish(grid, experiment, stored, setup, space, setup.objectives, setup.constraint, baseline, test_loader,
                       setup.metric, setup.target, progress, started)
    finally:
        if started_ray:
            ray.shutdown()


def _trainable(setup: TrialSetup, backend: Ray):
    resources = {("CPU" if k.lower() == "cpu" else "GPU" if k.lower() == "gpu" else k): v for k, v in backend.resources_per_trial.items()}
    return tune.with_resources(tune.with_parameters(run_trial, setup=setup), resources)


def _searcher(space: SearchSpace, objectives, settings: dict, n_trials: int, storage, study_name: str, sampler, max_concurrent, points):
    from autocompress.search.driver import _make_sampler, _quiet_optuna
    from autocompress.search.storage import open_storage, storage_url

    if not isinstance(sampler, optuna.samplers.BaseSampler):
        sampler = _make_sampler(settings["sampler"], len(objectives), settings["seed"], n_trials)
    mirror = None if storage is None else open_storage(storage_url(storage, Path(settings["workdir"])), heartbeat_interval=None)
    keys = [objective_key(o) for o in objectives]
    modes = ["min" if o.direction == "minimize" else "max" for o in objectives]
    with _quiet_optuna():
        return ConstrainedOptunaSearch(
            space=distributions(space), metric=keys if len(keys) > 1 else keys[0], mode=modes if len(modes) > 1 else modes[0],
            points_to_evaluate=points or None, sampler=sampler, study_name=study_name, storage=mirror, max_concurrent=max_concurrent,
        )


def _tune_config(backend: Ray, space: SearchSpace, objectives, settings, n_trials, timeout, storage, study_name, sampler):
    searched = {d.name for d in space.searched}
    points = [{k: v for k, v in point.items() if k in searched} for point in space.start_points]
    searcher = _searcher(space, objectives, settings, n_trials, storage, study_name, sampler, backend.max_concurrent, points)
    scheduler = None
    if backend.scheduler == "asha":
        from ray.tune.schedulers import ASHAScheduler

        # Every result carries accuracy_check; a trial reports at most 4 (2 checks, compressed, done).
        scheduler = ASHAScheduler(metric="accuracy_check", mode="max", max_t=4, grace_period=1, reduction_factor=2)
    return tune.TuneConfig(
        search_alg=searcher, scheduler=scheduler, num_samples=n_trials, reuse_actors=backend.reuse_actors, time_budget_s=timeout,
    )


def _run_config(backend: Ray, storage_path: str, name: str, n_trials: int, progress: bool):
    callbacks = [_Progress(n_trials)] if progress else []
    return tune.RunConfig(
        name=name, storage_path=storage_path, verbose=0, callbacks=callbacks,
        failure_config=tune.FailureConfig(max_failures=backend.max_failures),
        # Keep both of a trial's checkpoints (export, measurement): with num_to_keep=1 the first is
        # deleted, and a driver killed before its state recorded the second cannot restore the trial.
        checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
    )


def _finish(
    grid, experiment: str, stored: dict, setup: TrialSetup, space, objectives, constraint, baseline, test_loader, metric, target, progress,
    started: float,
) -> SearchResult:
    from autocompress.search.driver import finish_search, summarize_trials

    workdir = Path(stored["workdir"])
    records = sorted((_record(r, space, objectives, workdir) for r in grid), key=lambda r: r.number)
    result = summarize_trials(
        records, objectives=objectives, constraint=constraint, baseline=baseline, space=space, name=stored["study_name"],
        storage=experiment, workdir=workdir, strategy=stored.get("strategy", "direct"),
    )
    result.seconds = time.monotonic() - started
    finish_search(result, workdir, test_loader, metric, target, progress, RayTestCheck(setup.target_resource, setup.baseline_onnx))
    return result


def _record(result, space: SearchSpace, objectives, workdir: Path) -> TrialRecord:
    """A TrialRecord from a Tune Result (its last report)."""
    metrics = result.metrics or {}
    number = _trial_number(metrics, result.path)
    state = metrics.get("state")
    error = metrics.get("error")
    if result.error is not None:
        state, error = "FAIL", f"{type(result.error).__name__}: {result.error}"[:2000]
    elif state is None:
        state, error = "PRUNED", "stopped before it finished (scheduler or time budget)"
    measurements = dict(metrics.get("measurements") or {})
    if state == "COMPLETE" and result.checkpoint is not None:
        measurements.update(_local_files(result.checkpoint, workdir / "trials" / f"trial_{number:04d}"))
    policy = metrics.get("policy")
    config = dict(result.config or {})
    return TrialRecord(
        number=number,
        state=state,
        params=config,
        policy=Policy.from_dict(policy) if policy else (space.policy(config) if config else None),
        measurements=measurements,
        values=tuple(float(metrics[objective_key(o)]) for o in objectives) if state == "COMPLETE" else None,
        violation=metrics.get("violation"),
        seconds=metrics.get("time_total_s"),
        error=error,
    )


def _trial_number(metrics: dict, path: str) -> int:
    """0-based, in the order Tune created the trials: its experiment tags (and trial
    directories, run_trial_<id>_<tag>) start with the 1-based index."""
    tag = metrics.get("experiment_tag")
    if tag is None:  # a trial that died before reporting anything
        tag = Path(path).name.split("_", 3)[3]
    return int(str(tag).split("_", 1)[0]) - 1


def _local_files(checkpoint, fallback: Path) -> dict[str, str]:
    """The candidate's IR and ONNX as local paths (downloaded when storage is remote)."""
    directory = Path(checkpoint.path) / "candidate"
    if not (directory / "model.xml").exists():
        checkpoint.to_directory(str(fallback))
        directory = fallback / "candidate"
    return {"ir_path": str(directory / "model.xml"), "onnx_path": str(directory / "model.onnx")}


class _Progress(tune.Callback):
    """Trial n/N and the best feasible so far (tqdm), from Tune's callbacks."""

    def __init__(self, total: int) -> None:
        self.total, self.bar, self.best = total, None, None

    def setup(self, **info) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=self.total, desc="search (ray)", unit="trial", dynamic_ncols=True)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if self.bar is None or result.get("stage") != "done":
            return
        self.bar.update(1)
        m = result.get("measurements") or {}
        if result.get("state") == "COMPLETE" and (result.get("violation") or 0) <= 0:
            if self.best is None or m["speedup"] > self.best[0]:
                self.best = (m["speedup"], f"best: {m['speedup']:.2f}x, acc {m['accuracy']:.4f}")
        self.bar.set_postfix_str(self.best[1] if self.best else "no feasible trial yet", refresh=True)

    def on_experiment_end(self, trials, **info) -> None:
        if self.bar is not None:
            self.bar.close()


# -- a driver killed while Tune copied its state ---------------------------------------------------
def _check_tune_state(experiment: Path, stored: dict, setup: TrialSetup, space: SearchSpace) -> None:
    """Tune copies its driver state into the experiment directory file by file, in the
    background, and not atomically: a driver killed during a copy leaves a truncated file,
    and Tune's restore then fails and waits forever. The searcher's state is ours, and is
    rebuilt from the trials' own results; a damaged Tune file is a clear error."""
    for pattern in ("experiment_state-*.json", "search_gen_state-*.json"):
        newest = _newest(experiment, pattern)
        if newest is None or not _loads(newest):
            raise ValueError(
                f"the Ray experiment at {experiment} cannot be resumed: Tune's state file {newest or pattern} is missing or "
                "damaged (the driver was killed while it was being written). The finished trials' results are in the "
                "trial directories there; start a new search (another study_name) to go on"
            )
    searcher_state = _newest(experiment, "searcher-state-*.pkl")
    if searcher_state is not None and _loads(searcher_state):
        return
    log.warning("the sampler's saved state in %s is damaged; rebuilding it from the trials' results", experiment)
    searcher = rebuild_searcher_state(experiment, stored, setup, space)
    staging = searcher_state.with_name(f".{searcher_state.name}.rebuilt")
    searcher.save(str(staging))
    staging.replace(searcher_state)


def rebuild_searcher_state(experiment: Path, stored: dict, setup: TrialSetup, space: SearchSpace) -> ConstrainedOptunaSearch:
    """A searcher that knows every trial of the experiment: finished ones are told (with
    their constraint), unfinished ones are asked again with the same parameters, so Tune's
    restore can resume them and the sampler hears of their results."""
    searcher = _searcher(space, setup.objectives, stored, stored["n_trials"], stored.get("storage"), stored["study_name"], None,
                         stored["ray"].get("max_concurrent"), None)
    study = searcher._ot_study
    known = {t.user_attrs.get(TUNE_TRIAL_ID): t for t in study.get_trials(deepcopy=False)}
    for trial_id, params, final in _trial_results(experiment):
        existing = known.get(trial_id)
        if existing is not None and existing.state != optuna.trial.TrialState.RUNNING:
            searcher._completed_trials.add(trial_id)  # already told (an RDB mirror keeps them)
            continue
        if existing is not None:
            searcher._ot_trials[trial_id] = optuna.Trial(study, existing._trial_id)
        else:
            study.enqueue_trial(params)
            searcher._ot_trials[trial_id] = study.ask(fixed_distributions=searcher._space)
            searcher._ot_trials[trial_id].set_user_attr(TUNE_TRIAL_ID, trial_id)
        if final is not None:
            searcher.on_trial_complete(trial_id, final)
    return searcher


def _trial_results(experiment: Path) -> Iterator[tuple[str, dict, dict | None]]:
    """(trial id, parameters, final result or None) of every trial directory, from the
    files the trials wrote themselves (params.json, result.json: one JSON line per report)."""
    for params_file in sorted(experiment.glob("*/params.json")):
        lines = [line for line in (params_file.parent / "result.json").read_text().splitlines() if line.strip()] \
            if (params_file.parent / "result.json").exists() else []
        results = []
        for line in lines:
            try:
                results.append(json.loads(line))
            except ValueError:  # a line cut short by the kill
                continue
        if not results:
            continue  # never reported: Tune restarts it, and the sampler never hears of it
        final = next((r for r in reversed(results) if r.get("stage") == "done"), None)
        yield results[0]["trial_id"], json.loads(params_file.read_text()), final


def _newest(directory: Path, pattern: str) -> Path | None:
    files = sorted(directory.glob(pattern))
    return files[-1] if files else None


def _loads(path: Path) -> bool:
    """Whether a Tune state file (JSON or pickle) can be read back."""
    import pickle

    data = path.read_bytes()
    try:
        json.loads(data)
        return True
    except ValueError:
        pass
    try:
        pickle.loads(data)
        return True
    except Exception:
        return False


# -- cluster, storage and files --------------------------------------------------------------------
def _connect(address: str | None) -> bool:
    """Join (or start) Ray; True if this call started it (and should shut it down)."""
    if address not in (None, "auto", "local"):
        _check_reachable(address)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # A SIGKILLed driver loses at most this many seconds of experiment state.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")  # that period is deliberate
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with it, verbose=0 keeps Tune's tables out of our progress bar
    if ray.is_initialized():
        return False
    try:
        ray.init(address=address, logging_level=logging.WARNING, include_dashboard=False)
    except ConnectionError as error:
        raise ValueError(f"cannot connect to the Ray cluster at {address!r}: {error}. Start one with `ray start --head`, "
                         "or pass address=None to run a local Ray") from None
    return True


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"Ray address {address!r} is not host:port, ray://host:port, 'auto' or None")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as error:
        raise ValueError(
            f"cannot reach the Ray cluster at {address!r} ({error}). Check that the head node runs "
            "(`ray start --head --port=6379`), the address and port, and the firewall; or pass address=None "
            "to start a local Ray"
        ) from None


def _check_storage_path(path: str) -> str:
    if "://" in path:
        return path
    if not Path(path).is_absolute():
        raise ValueError(f"Ray storage_path must be absolute or a URI (s3://, gs://), got {path!r}; e.g. {str(Path(path).resolve())!r}")
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
        probe = Path(path) / f".autocompress-write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise ValueError(
            f"cannot write the Ray storage_path {path!r} ({error}); choose a writable directory "
            "(on a cluster, one every node shares, e.g. NFS) or a cloud URI (s3://bucket/path)"
        ) from None
    return path


def _join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def _filesystem(path: str):
    import pyarrow.fs

    return pyarrow.fs.FileSystem.from_uri(path) if "://" in path else (pyarrow.fs.LocalFileSystem(), path)


def _write(directory: str, name: str, data: bytes) -> None:
    fs, root = _filesystem(directory)
    fs.create_dir(root, recursive=True)
    with fs.open_output_stream(_join(root, name)) as stream:
        stream.write(data)


def _read(directory: str, name: str) -> bytes:
    fs, root = _filesystem(directory)
    with fs.open_input_stream(_join(root, name)) as stream:
        return stream.read()


def _pickle(setup: TrialSetup, test_loader) -> bytes:
    from ray import cloudpickle

    return cloudpickle.dumps((setup, test_loader))


def _unpickle(data: bytes):
    from ray import cloudpickle

    return cloudpickle.loads(data)
