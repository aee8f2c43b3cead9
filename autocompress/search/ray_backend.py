"""The Ray backend: the same constrained search as a Ray Tune experiment on a cluster.

    result = autocompress.search(model, train, val, backend=autocompress.search.Ray(address="auto"))
    result = autocompress.resume("/shared/autocompress-search/ray/autocompress-joint")

Each Tune trial runs the shared trial function (autocompress.search.trial) on whichever
node Ray gives it: the policy comes from ``StudySearcher`` (an Optuna study driven
through its public ask/tell API, with the accuracy constraint, so the sampler models
feasibility); the exported ONNX goes to a Ray task pinned (custom resource, one at a
time per node so measurements never overlap) to the nodes of the target hardware.
Trials checkpoint after export and after measurement, so a trial retried on another
node (a lost worker) skips the work it already did. The experiment directory holds
Tune's state and autocompress's own (settings, baseline, the pickled model and loaders),
so ``resume(path)`` needs nothing else.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import pickle
import shutil
import socket
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import ray
from ray import tune
from ray.tune.search import Searcher
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from autocompress.evaluators.child import ConvertToIR, run_jobs, unwrap
from autocompress.evaluators.scratch import claim, scratch_dir
from autocompress.evaluators.target import LatencyConfig, Target
from autocompress.policies import Policy
from autocompress.search.atomic_fs import atomic_local_filesystem
from autocompress.search.backend import SearchJob
from autocompress.search.objectives import Objective
from autocompress.search.optuna_backend import make_sampler, quiet_optuna
from autocompress.search.progress import ProgressBar
from autocompress.search.result import TrialRecord
from autocompress.search.settings import Ray, SearchSettings
from autocompress.search.storage import create_or_load_study, open_storage, storage_url
from autocompress.search.trial import (
    TRIAL_LATENCY,
    Baseline,
    Exported,
    LatencyCache,
    MeasuredIR,
    Trial,
    TrialOutcome,
    TrialSetup,
    compare_irs,
    measure_candidate,
)
from autocompress.search_spaces import SearchSpace
from autocompress.search_spaces.to_optuna import distributions

log = logging.getLogger(__name__)

SETTINGS_FILE = "autocompress.json"
SETUP_FILE = "autocompress-setup.pkl"
BASELINE_FILE = (
    "baseline.onnx"  # every measuring node converts it to its own IR (against it, candidates are timed)
)
STAGE_FILE = "stage.json"
TUNE_TRIAL_ID = "tune_trial_id"  # user attribute: which Tune trial an Optuna trial is
# A trial reports each accuracy check (at most 3), its export and its end: ASHA's time axis.
MAX_REPORTS = 5


def objective_key(objective: Objective) -> str:
    return f"objective/{objective.name}"


# -- the sampler: an Optuna study through ask/tell ---------------------------------------------
# It lives at module level in an importable module: Tune pickles the searcher.
class StudySearcher(Searcher):
    """A Tune Searcher over an Optuna study, through Optuna's public ask/tell API.

    suggest() asks the study (the search space's start points first, enqueued); a trial's
    final result carries ``state`` (COMPLETE, PRUNED or FAIL), the objective values and
    the accuracy constraint's ``violation`` (set with ``trial.set_constraint`` before
    ``tell``). It limits how many trials run at once itself (a ConcurrencyLimiter's saved
    state can disagree with the experiment's after a killed driver). Its saved state is a
    JSON list of the trials it asked and what came back, replayed into a fresh study on
    restore, and rebuildable from the trials' own result files."""

    def __init__(
        self,
        *,
        space: dict[str, Any],
        metrics: list[str],
        modes: list[str],
        points: list[dict],
        sampler: str,
        seed: int,
        n_trials: int,
        study_name: str,
        storage: str | None = None,
        max_concurrent: int | None = None,
        sampler_instance: optuna.samplers.BaseSampler | None = None,
    ) -> None:
        super().__init__(
            metric=metrics if len(metrics) > 1 else metrics[0], mode=modes if len(modes) > 1 else modes[0]
        )
        self.options = dict(
            space=space,
            metrics=metrics,
            modes=modes,
            points=points,
            sampler=sampler,
            seed=seed,
            n_trials=n_trials,
            study_name=study_name,
            storage=storage,
            max_concurrent=max_concurrent,
        )
        self.sampler_instance = sampler_instance
        self._reset([])

    def _reset(self, records: list[dict]) -> None:
        o = self.options
        self.distributions = {
            name: optuna.distributions.json_to_distribution(d) for name, d in o["space"].items()
        }
        storage = (
            open_storage(storage_url(o["storage"], Path.cwd()), heartbeat_interval=None)
            if o["storage"]
            else None
        )
        directions = ["minimize" if m == "min" else "maximize" for m in o["modes"]]
        sampler = self.sampler_instance or make_sampler(
            o["sampler"], len(directions), o["seed"], o["n_trials"]
        )
        with quiet_optuna():
            self.study = (
                create_or_load_study(storage, o["study_name"], directions=directions, sampler=sampler)
                if storage
                else optuna.create_study(study_name=o["study_name"], directions=directions, sampler=sampler)
            )
        self.trials: dict[str, optuna.Trial] = {}
        self.records: dict[str, dict] = {}
        self.finished: set[str] = set()
        self.points = [dict(p) for p in o["points"]]
        self._replay(records)

    def _replay(self, records: list[dict]) -> None:
        # With a persistent storage (a mirror), the study already holds earlier trials.
        known = {t.user_attrs.get(TUNE_TRIAL_ID): t for t in self.study.get_trials(deepcopy=False)}
        for record in records:
            trial_id, existing = record["trial_id"], known.get(record["trial_id"])
            self.points = [p for p in self.points if p != record["params"]]
            if existing is not None and existing.state.is_finished():
                self.records[trial_id] = record
                self.finished.add(trial_id)
                continue
            if existing is not None:  # left RUNNING by a dead driver: failed, and asked again below
                self.study.tell(existing.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
            self._ask(trial_id, record["params"])
            if record.get("final") is not None:
                self.on_trial_complete(trial_id, record["final"])

    def _ask(self, trial_id: str, params: dict | None) -> dict:
        if params is not None:
            self.study.enqueue_trial(params)
        trial = self.study.ask(fixed_distributions=self.distributions)
        trial.set_user_attr(TUNE_TRIAL_ID, trial_id)
        self.trials[trial_id] = trial
        self.records[trial_id] = {"trial_id": trial_id, "params": dict(trial.params), "final": None}
        return dict(trial.params)

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # the space and metrics are ours; Tune has nothing to add

    def suggest(self, trial_id: str) -> dict | None:
        if trial_id in self.trials:
            return dict(self.trials[trial_id].params)
        limit = self.options["max_concurrent"]
        if limit is not None and len(self.trials) - len(self.finished) >= limit:
            return None  # Tune asks again later
        point = self.points.pop(0) if self.points else None
        return self._ask(trial_id, point)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self.finished or trial_id not in self.trials:
            return
        trial, result = self.trials[trial_id], result or {}
        state = "FAIL" if error else result.get("state", "PRUNED")
        try:
            for key in ("policy", "measurements", "error"):
                if result.get(key) is not None:
                    trial.set_user_attr(key, result[key])
            if state == "COMPLETE":
                trial.set_constraint("accuracy", float(result["violation"]))
                values = [float(result[m]) for m in self.options["metrics"]]
                self.study.tell(trial, values if len(values) > 1 else values[0])
            else:  # FAIL: raised; PRUNED: stopped early (accuracy floor, ASHA, time budget)
                self.study.tell(
                    trial,
                    state=optuna.trial.TrialState.FAIL if state == "FAIL" else optuna.trial.TrialState.PRUNED,
                )
        except Exception as exc:  # a tell that fails must not stop the experiment
            log.warning("could not record trial %s in the sampler's study: %s", trial_id, exc)
        self.records[trial_id]["final"] = _final_only(result) if not error else {"state": "FAIL"}
        self.finished.add(trial_id)

    # -- state: a JSON list of what was asked and told ------------------------------------------
    def get_state(self) -> dict:
        return {"options": self.options, "records": list(self.records.values())}

    def set_state(self, state: dict) -> None:
        self.options = state["options"]
        self._reset(state["records"])

    def save(self, checkpoint_path: str) -> None:
        Path(checkpoint_path).write_text(json.dumps(self.get_state()))

    def restore(self, checkpoint_path: str) -> None:
        self.set_state(json.loads(Path(checkpoint_path).read_text()))

    def __getstate__(self) -> dict:  # Tune pickles the searcher with the experiment
        return {**self.get_state(), "metric": self._metric, "mode": self._mode}

    def __setstate__(self, state: dict) -> None:
        Searcher.__init__(self, metric=state["metric"], mode=state["mode"])
        self.sampler_instance = None
        self.set_state(state)


def _final_only(result: dict) -> dict:
    """What the searcher needs to tell a trial again on replay."""
    keep = {"state", "violation", "policy", "measurements", "error", "stage"}
    return {k: v for k, v in result.items() if k in keep or k.startswith("objective/")}


# -- measuring on the target node ------------------------------------------------------------
def node_id() -> str:
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
        unwrap(
            run_jobs([ConvertToIR(str(staging / "model.onnx"), str(staging / "model.xml"), input_shape)])[0]
        )
        with contextlib.suppress(OSError):  # another task got there first
            staging.rename(directory)  # atomic: concurrent converters on one node agree
    return str(xml)


def measure_on_node(
    onnx: bytes, baseline_onnx: bytes | None, inputs: np.ndarray, target: dict, config: dict, latency: bool
) -> dict:
    """Runs as a Ray task on the measuring node: IR, validation logits, latency vs the baseline."""
    target_ = Target.from_dict(target)
    with tempfile.TemporaryDirectory(prefix="autocompress-measure-") as tmp:
        tmp = Path(tmp)
        (tmp / "model.onnx").write_bytes(onnx)
        np.save(tmp / "inputs.npy", inputs)
        against = (
            _baseline_ir_on_this_node(baseline_onnx, [target_.batch, *inputs.shape[1:]])
            if baseline_onnx is not None
            else None
        )
        measured = measure_candidate(
            tmp / "model.onnx",
            tmp / "model.xml",
            tmp / "inputs.npy",
            target_,
            LatencyConfig(**config),
            against=against,
            latency=latency,
        )
        return {
            "measured": dataclasses.replace(measured, node=node_id()),
            "xml": (tmp / "model.xml").read_bytes(),
            "bin": (tmp / "model.bin").read_bytes(),
        }


def compare_on_node(
    candidates: list[tuple[bytes, bytes]],
    baseline_onnx: bytes,
    inputs: np.ndarray,
    target: dict,
    config: dict,
) -> tuple:
    """Runs as a Ray task on the measuring node: IRs ((xml, bin) bytes) side by side with the
    baseline (see trial.compare_irs): the final test check, and near-tied candidates."""
    target_ = Target.from_dict(target)
    with tempfile.TemporaryDirectory(prefix="autocompress-test-") as tmp:
        tmp = Path(tmp)
        paths = []
        for index, (xml, weights) in enumerate(candidates):
            (tmp / f"model{index}.xml").write_bytes(xml)
            (tmp / f"model{index}.bin").write_bytes(weights)
            paths.append(str(tmp / f"model{index}.xml"))
        np.save(tmp / "inputs.npy", inputs)
        baseline = _baseline_ir_on_this_node(baseline_onnx, [target_.batch, *inputs.shape[1:]])
        logits, latency = compare_irs(
            [baseline, *paths], tmp / "inputs.npy", target_, LatencyConfig(**config)
        )
    return logits, {**latency, "node": node_id()}


def _placement(resource: str | None) -> dict:
    """Task options: on a node with one unit of ``resource`` (outside any trial's placement
    group, which has none of it), or on this very node."""
    if resource:
        return {"resources": {resource: 1}, "scheduling_strategy": "DEFAULT", "max_retries": 2}
    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node_id(), soft=False)}


@dataclasses.dataclass
class RayMeasure:
    """A Measure (see trial.py) that runs on a node holding ``resource``, or on this node
    when ``resource`` is None. The baseline travels as ONNX (each node converts it once);
    the first IR of ``compare`` is always the baseline."""

    inputs: Any  # a Ray object ref of the validation inputs
    target: Target
    resource: str | None
    baseline_onnx: Any = None  # a Ray object ref of the baseline ONNX bytes (None until it is measured)
    config: LatencyConfig = TRIAL_LATENCY

    def candidate(self, onnx_path: Path, ir_path: Path, *, against: str | None, latency: bool) -> MeasuredIR:
        task = ray.remote(measure_on_node).options(num_cpus=0, **_placement(self.resource))
        baseline = self.baseline_onnx if against is not None else None
        reply = ray.get(
            task.remote(
                Path(onnx_path).read_bytes(),
                baseline,
                self.inputs,
                self.target.to_dict(),
                self.config.to_dict(),
                latency,
            )
        )
        Path(ir_path).write_bytes(reply["xml"])
        Path(ir_path).with_suffix(".bin").write_bytes(reply["bin"])
        return reply["measured"]

    def compare(
        self, ir_paths: list[str], inputs_file: Path, config: LatencyConfig
    ) -> tuple[list[np.ndarray], dict]:
        candidates = [(Path(p).read_bytes(), Path(p).with_suffix(".bin").read_bytes()) for p in ir_paths[1:]]
        task = ray.remote(compare_on_node).options(num_cpus=0, **_placement(self.resource))
        return ray.get(
            task.remote(
                candidates,
                self.baseline_onnx,
                np.load(inputs_file),
                self.target.to_dict(),
                config.to_dict(),
            )
        )


# -- the trainable -------------------------------------------------------------------------------
@dataclasses.dataclass
class TuneWork:
    """What every Tune trial needs, shipped once through Ray's object store (tune.with_parameters)."""

    trial: Trial
    space: dict
    measure: RayMeasure
    latency_cache: str | None  # a directory beside the experiment (None: no cache)


def tune_trial(config: dict, work: TuneWork) -> None:
    """One Tune trial (a function trainable) around the shared trial function: reports its
    accuracy checks and one final result with ``state``; resumes from its checkpoint when
    Ray retries it."""
    logging.getLogger("ray.train").setLevel(logging.WARNING)  # one INFO line per checkpoint otherwise
    # Tune wants the searcher's metrics, and ASHA its accuracy_check, in every result.
    placeholders = {objective_key(o): None for o in work.trial.setup.objectives}
    last_check = [0.0]

    def report(stage: str, checkpoint: tune.Checkpoint | None = None, **fields: Any) -> None:
        tune.report(
            {**placeholders, "accuracy_check": last_check[0], **fields, "stage": stage}, checkpoint=checkpoint
        )

    try:
        policy = SearchSpace.from_dict(work.space).policy(config)
    except Exception as error:  # a bad sample fails its trial (recorded, not retried)
        outcome = TrialOutcome("FAIL", error=f"{type(error).__name__}: {error}"[:2000])
        report("done", state="FAIL", outcome=outcome.to_dict(), error=outcome.error)
        return
    trained_on = node_id()

    def on_check(stage: str, accuracy: float) -> None:
        last_check[0] = accuracy
        report(stage)

    work_dir = scratch_dir("autocompress-trial-")
    candidate = work_dir / "candidate"

    def on_exported(exported: Exported) -> None:
        (work_dir / STAGE_FILE).write_text(
            json.dumps({"stage": "exported", "exported": exported.to_dict(), "node_trained": trained_on})
        )
        report("exported", checkpoint=tune.Checkpoint.from_directory(str(work_dir)))

    try:
        restored = _restore(tune.get_checkpoint(), work_dir)
        if restored is not None and restored["stage"] == "measured":  # died after measuring: report again
            report("done", checkpoint=tune.Checkpoint.from_directory(str(work_dir)), **restored["result"])
            return
        exported = None
        if restored is not None:  # exported before its worker died: measure only
            exported = dataclasses.replace(
                Exported.from_dict(restored["exported"]), onnx_path=str(candidate / "model.onnx")
            )
        outcome = _on_reserved_device(work.trial)(
            policy,
            candidate,
            measure=work.measure,
            latency_cache=LatencyCache(work.latency_cache),
            on_check=on_check,
            exported=exported,
            on_exported=on_exported,
        )
        if outcome.measurements is not None:
            where = dict(node_trained=trained_on, resumed_from="exported" if restored is not None else None)
            outcome = dataclasses.replace(
                outcome, measurements=dataclasses.replace(outcome.measurements, **where)
            )
        result = {
            "state": outcome.state,
            "policy": policy.to_dict(),
            "outcome": outcome.to_dict(),
            "measurements": outcome.measurements.to_dict() if outcome.measurements else None,
            "violation": outcome.violation,
            "error": outcome.error,
            **{key: value for key, value in zip(placeholders, outcome.values or ())},
        }
        checkpoint = None
        if outcome.state == "COMPLETE":
            last_check[0] = outcome.measurements.accuracy
            (work_dir / STAGE_FILE).write_text(json.dumps({"stage": "measured", "result": result}))
            checkpoint = tune.Checkpoint.from_directory(str(work_dir))
        report("done", checkpoint=checkpoint, **result)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)  # tune.report has copied the checkpoints to storage


def _on_reserved_device(trial: Trial) -> Trial:
    """The trial as this worker runs it: device "auto" is the GPU Ray reserved for the trial
    (``resources_per_trial={"gpu": 1}``: Ray shows the worker that GPU only), else the CPU,
    not a GPU of the node that Ray did not give it (another trial's)."""
    if trial.setup.device != "auto" or ray.get_gpu_ids():
        return trial
    return dataclasses.replace(trial, setup=dataclasses.replace(trial.setup, device="cpu"))


def check_gpu_resources(resources: dict[str, float], setup: TrialSetup, cluster: dict[str, float]) -> None:
    """ValueError, before any trial starts, when the trials ask for GPUs the cluster does not
    have (Tune would wait for them forever), or for a CUDA device (or fp16) without reserving
    a GPU. ``resources`` as Tune takes them ("GPU"), ``cluster``: ray.cluster_resources()."""
    wanted, present = float(resources.get("GPU", 0) or 0), float(cluster.get("GPU", 0) or 0)
    if wanted > 0 and present < wanted:
        raise ValueError(
            f"resources_per_trial asks for {wanted:g} GPU per trial, but the Ray cluster has {present:g} GPU(s): "
            "no trial could ever start. Add nodes with GPUs (ray start --num-gpus=N), or drop 'gpu' from "
            "resources_per_trial to fine-tune on the CPU"
        )
    if wanted == 0 and (setup.device.startswith("cuda") or setup.autocast == "fp16"):
        asked = f"device={setup.device!r}" if setup.device.startswith("cuda") else "autocast='fp16'"
        raise ValueError(
            f"{asked} on Ray needs a GPU reserved for each trial: pass resources_per_trial with 'gpu' "
            "(e.g. {'cpu': 1, 'gpu': 1}); without one a trial fine-tunes on the CPU (device='auto')"
        )


def _restore(checkpoint, work: Path) -> dict | None:
    if checkpoint is None:
        return None
    checkpoint.to_directory(str(work))
    claim(work)  # the checkpoint holds its first worker's owner record
    return json.loads((work / STAGE_FILE).read_text())


# -- the backend ------------------------------------------------------------------------------------
@dataclasses.dataclass
class RayBackend:
    """Trials as a Ray Tune experiment (see the module docstring); ``sampler`` overrides the
    settings' sampler by name with an Optuna sampler instance."""

    options: Ray
    sampler: optuna.samplers.BaseSampler | None = None

    @contextlib.contextmanager
    def open(self, job: SearchJob) -> Iterator[RaySession]:
        session = RaySession(job, self)
        try:
            yield session
        finally:
            session.close()


class RaySession:
    def __init__(self, job: SearchJob, backend: RayBackend) -> None:
        self.job, self.backend, self.options = job, backend, backend.options
        storage_path = _check_storage_path(self.options.storage_path or str(job.workdir / "ray"))
        self.experiment = self.location = _join(storage_path, job.study_name)
        if not job.resuming and tune.Tuner.can_restore(self.experiment):
            raise ValueError(
                f"a Ray experiment already exists at {self.experiment}: continue it with "
                f"autocompress.resume({self.experiment!r}) "
                "(or `autocompress resume PATH`), or pick another study_name"
            )
        # Trials on the nodes share the experiment's cache (a local path every node sees); the
        # driver's own measurements (confirmation) use it too, or the workdir's for a cloud URI.
        local = "://" not in self.experiment
        self.latency_cache = LatencyCache(
            _join(self.experiment, "latency-cache") if local else job.workdir / "latency-cache"
        )
        self.started_ray = _connect(self.options.address)
        self.measure = RayMeasure(
            ray.put(job.setup.val.inputs), job.setup.target, self.options.target_resource
        )
        if job.resuming:
            self.measure.baseline_onnx = ray.put(_read(self.experiment, BASELINE_FILE))

    def close(self) -> None:
        if self.started_ray:
            ray.shutdown()

    def stored_baseline(self) -> Baseline | None:
        if not self.job.resuming:
            return None
        return Baseline.from_dict(json.loads(_read(self.experiment, SETTINGS_FILE))["baseline"])

    def save_baseline(self, baseline: Baseline) -> None:
        """The experiment's own files: settings and baseline, the baseline ONNX, the pickled setup."""
        baseline_onnx = Path(baseline.onnx_path).read_bytes()
        self.measure.baseline_onnx = ray.put(baseline_onnx)
        stored = {"settings": self.job.settings.to_dict(), "baseline": baseline.to_dict()}
        _write(self.experiment, SETTINGS_FILE, json.dumps(stored, indent=1, default=str).encode())
        _write(self.experiment, BASELINE_FILE, baseline_onnx)
        _write(
            self.experiment,
            SETUP_FILE,
            _pickle(self.job.setup, self.job.test_loader, self.job.confirm, self.job.settings.objective),
        )

    def run(self, trial: Trial) -> list[TrialRecord]:
        settings, space = self.job.settings, self.job.space
        cache = None if "://" in self.experiment else str(self.latency_cache.directory)
        work = TuneWork(trial=trial, space=space.to_dict(), measure=self.measure, latency_cache=cache)
        resources = {
            ("CPU" if k.lower() == "cpu" else "GPU" if k.lower() == "gpu" else k): v
            for k, v in self.options.resources_per_trial.items()
        }
        check_gpu_resources(resources, trial.setup, ray.cluster_resources())
        trainable = tune.with_resources(tune.with_parameters(tune_trial, work=work), resources)
        bar = _Progress(settings.n_trials, self.job.progress)
        if self.job.resuming:
            if "://" not in self.experiment:
                _check_tune_state(Path(self.experiment), self._searcher())
            tuner = tune.Tuner.restore(
                self.experiment,
                trainable=trainable,
                resume_unfinished=True,
                resume_errored=True,
                storage_filesystem=_storage_filesystem(self.experiment),
            )
        else:
            tuner = tune.Tuner(trainable, tune_config=self._tune_config(), run_config=self._run_config(bar))
        grid = tuner.fit()
        bar.close()
        records = [_record(r, space, trial.setup.objectives, self.job.workdir) for r in grid]
        return sorted(records, key=lambda r: r.number)

    def _searcher(self) -> StudySearcher:
        settings, space = self.job.settings, self.job.space
        objectives = self.job.setup.objectives
        searched = {d.name for d in space.searched}
        return StudySearcher(
            space={
                name: optuna.distributions.distribution_to_json(d) for name, d in distributions(space).items()
            },
            metrics=[objective_key(o) for o in objectives],
            modes=["min" if o.direction == "minimize" else "max" for o in objectives],
            points=[{k: v for k, v in point.items() if k in searched} for point in space.start_points],
            sampler=settings.sampler if isinstance(settings.sampler, str) else "auto",
            seed=settings.seed,
            n_trials=settings.n_trials,
            study_name=self.job.study_name,
            storage=settings.storage,
            max_concurrent=self.options.max_concurrent,
            sampler_instance=self.backend.sampler,
        )

    def _tune_config(self) -> tune.TuneConfig:
        scheduler = None
        if self.options.scheduler == "asha":
            from ray.tune.schedulers import ASHAScheduler

            scheduler = ASHAScheduler(
                metric="accuracy_check", mode="max", max_t=MAX_REPORTS, grace_period=1, reduction_factor=2
            )
        return tune.TuneConfig(
            search_alg=self._searcher(),
            scheduler=scheduler,
            num_samples=self.job.settings.n_trials,
            reuse_actors=self.options.reuse_actors,
            time_budget_s=self.job.settings.timeout,
        )

    def _run_config(self, bar: _Progress) -> tune.RunConfig:
        return tune.RunConfig(
            name=self.job.study_name,
            storage_path=self.experiment.rsplit("/", 1)[0],
            storage_filesystem=_storage_filesystem(self.experiment),
            verbose=0,
            callbacks=[bar],
            failure_config=tune.FailureConfig(max_failures=self.options.max_failures),
            # Keep both of a trial's checkpoints (export, measurement): with num_to_keep=1 the first is
            # deleted, and a driver killed before its state recorded the second cannot restore the trial.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
        )


def load_experiment(path: str | os.PathLike, *, address: str | None = None, timeout: float | None = None):
    """What ``resume(path)`` needs from a Ray experiment: (settings, setup, test_loader,
    confirmation data, backend)."""
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
        setup, test_loader, confirm, objective = _unpickle(_read(experiment, SETUP_FILE))
    except FileNotFoundError:
        raise ValueError(
            f"the Ray experiment at {experiment} was not written by autocompress.search (no {SETTINGS_FILE})"
        ) from None
    settings = SearchSettings.from_dict(stored["settings"], objective=objective, timeout=timeout)
    options = dataclasses.replace(settings.backend, **({"address": address} if address else {}))
    if "://" not in experiment:  # the experiment may have moved: its storage_path is where it is now
        options = dataclasses.replace(options, storage_path=str(Path(experiment).parent))
    return dataclasses.replace(settings, backend=options), setup, test_loader, confirm, RayBackend(options)


def _record(result, space: SearchSpace, objectives: list[Objective], workdir: Path) -> TrialRecord:
    """A TrialRecord from a Tune Result (its last report)."""
    metrics = result.metrics or {}
    number = _trial_number(metrics, result.path)
    config = dict(result.config or {})
    policy = (
        Policy.from_dict(metrics["policy"])
        if metrics.get("policy")
        else (space.policy(config) if config else None)
    )
    if result.error is not None:
        outcome = TrialOutcome("FAIL", error=f"{type(result.error).__name__}: {result.error}"[:2000])
    elif metrics.get("outcome") is None:
        outcome = TrialOutcome("PRUNED", error="stopped before it finished (scheduler or time budget)")
    else:
        outcome = TrialOutcome.from_dict(metrics["outcome"])
        if outcome.measurements is not None and result.checkpoint is not None:
            ir, onnx = _local_files(result.checkpoint, workdir / "trials" / f"trial_{number:04d}")
            outcome = dataclasses.replace(outcome, measurements=outcome.measurements.with_paths(ir, onnx))
    return TrialRecord.from_outcome(number, config, policy, outcome, metrics.get("time_total_s"))


def _trial_number(metrics: dict, path: str) -> int:
    """0-based, in the order Tune created the trials: its experiment tags (and trial
    directories, tune_trial_<id>_<tag>) start with the 1-based index."""
    tag = metrics.get("experiment_tag")
    if tag is None:  # a trial that died before reporting anything
        tag = Path(path).name.split("_", 3)[3]
    return int(str(tag).split("_", 1)[0]) - 1


def _local_files(checkpoint, fallback: Path) -> tuple[str, str]:
    """The candidate's IR and ONNX as local paths (downloaded when storage is remote)."""
    directory = Path(checkpoint.path) / "candidate"
    if not (directory / "model.xml").exists():
        checkpoint.to_directory(str(fallback))
        directory = fallback / "candidate"
    return str(directory / "model.xml"), str(directory / "model.onnx")


class _Progress(tune.Callback):
    """The search's progress bar, fed from Tune's callbacks."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.enabled, self.bar, self.done = total, enabled, None, 0

    def setup(self, **info) -> None:
        self.bar = ProgressBar(self.total, label="search (ray)", enabled=self.enabled)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if self.bar is None or result.get("stage") != "done" or result.get("outcome") is None:
            return
        outcome = TrialOutcome.from_dict(result["outcome"])
        self.bar.update(TrialRecord.from_outcome(self.done, dict(trial.config), None, outcome, None))
        self.done += 1

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# -- a driver killed while Tune copied its state ---------------------------------------------------
def _check_tune_state(experiment: Path, searcher: StudySearcher) -> None:
    """Tune copies its driver state into the experiment directory file by file, in the
    background, and not atomically: a driver killed during a copy leaves a truncated file,
    and Tune's restore then fails and waits forever. The searcher's state is ours, and is
    rebuilt from the trials' own results; a damaged Tune file is a clear error."""
    for pattern in ("experiment_state-*.json", "search_gen_state-*.json"):
        newest = _newest(experiment, pattern)
        if newest is None or not _loads(newest):
            raise ValueError(
                f"the Ray experiment at {experiment} cannot be resumed: Tune's state file {newest or pattern} "
                "is missing or "
                "damaged (the driver was killed while it was being written). The finished trials' results are in the "
                "trial directories there; start a new search (another study_name) to go on"
            )
    searcher_state = _newest(experiment, "searcher-state-*.pkl")
    if searcher_state is not None and _loads(searcher_state):
        return
    log.warning(
        "the sampler's saved state in %s is damaged; rebuilding it from the trials' results", experiment
    )
    records = [
        {"trial_id": trial_id, "params": params, "final": final}
        for trial_id, params, final in _trial_results(experiment)
    ]
    searcher.set_state({"options": searcher.options, "records": records})
    target = searcher_state or experiment / Searcher.CKPT_FILE_TMPL.format("rebuilt")
    staging = target.with_name(f".{target.name}.rebuilt")
    searcher.save(str(staging))
    staging.replace(target)


def _trial_results(experiment: Path) -> Iterator[tuple[str, dict, dict | None]]:
    """(trial id, parameters, final result or None) of every trial directory, from the
    files the trials wrote themselves (params.json, result.json: one JSON line per report)."""
    for params_file in sorted(experiment.glob("*/params.json")):
        results_file = params_file.parent / "result.json"
        lines = (
            [line for line in results_file.read_text().splitlines() if line.strip()]
            if results_file.exists()
            else []
        )
        results = []
        for line in lines:
            with contextlib.suppress(ValueError):  # a line cut short by the kill
                results.append(json.loads(line))
        if not results:
            continue  # never reported: Tune restarts it, and the sampler never hears of it
        final = next((r for r in reversed(results) if r.get("stage") == "done"), None)
        yield (
            results[0]["trial_id"],
            json.loads(params_file.read_text()),
            _final_only(final) if final else None,
        )


def _newest(directory: Path, pattern: str) -> Path | None:
    files = sorted(directory.glob(pattern))
    return files[-1] if files else None


def _loads(path: Path) -> bool:
    """Whether a Tune state file (JSON or pickle) can be read back."""
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
    os.environ.setdefault(
        "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0"
    )  # that period is deliberate
    os.environ.setdefault(
        "RAY_AIR_NEW_OUTPUT", "0"
    )  # with it, verbose=0 keeps Tune's tables out of our progress bar
    if ray.is_initialized():
        return False
    try:
        ray.init(
            address=None if address == "local" else address,
            logging_level=logging.WARNING,
            include_dashboard=False,
        )
    except ConnectionError as error:
        raise ValueError(
            f"cannot connect to the Ray cluster at {address!r}: {error}. Start one with `ray start --head`, "
            "or pass address=None to run a local Ray"
        ) from None
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
        raise ValueError(
            f"Ray storage_path must be absolute or a URI (s3://, gs://), got {path!r}; "
            f"e.g. {str(Path(path).resolve())!r}"
        )
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


def _storage_filesystem(experiment: str):
    """Local experiments are written through atomic renames (see atomic_fs); URIs keep the
    cloud filesystem Tune picks for them."""
    return None if "://" in experiment else atomic_local_filesystem()


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


def _pickle(setup: TrialSetup, test_loader: Iterable | None, confirm: Any, objective: Any) -> bytes:
    from ray import cloudpickle

    return cloudpickle.dumps((setup, test_loader, confirm, objective))


def _unpickle(data: bytes):
    from ray import cloudpickle

    return cloudpickle.loads(data)
