"""One trial, the same on every backend: policy in -> compress -> export -> measure -> outcome.

``Trial`` binds what every trial shares (the model, the data, the baseline, the
objectives and the constraint); calling it with a policy runs one candidate and returns a
typed ``TrialOutcome``. A backend decides only where this runs and where its exported
model is measured (a ``Measure``: on this machine, or on a Ray node of the target).

All OpenVINO work for a candidate (IR conversion, accuracy on the validation data,
latency against the baseline in alternating rounds) runs in ONE child process, so the
per-trial overhead outside fine-tuning is one interpreter start. Latency depends on the
graph, not on the weight values, so it is cached by a fingerprint of the exported graph.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import onnx
from torch import nn

from autocompress.core import Finetune, apply_policy
from autocompress.evaluators.child import ConvertToIR, Infer, MeasureLatency, RuntimeWorker, run_jobs, unwrap
from autocompress.evaluators.metrics import Metric, score
from autocompress.evaluators.runtime import Dataset
from autocompress.evaluators.size import count_flops, parameter_stats
from autocompress.evaluators.target import LatencyConfig, Target
from autocompress.evaluators.torch_side import module_logits
from autocompress.export import export_onnx
from autocompress.policies import Policy
from autocompress.search.objectives import AccuracyConstraint, DropEstimate, Objective
from autocompress.training import TrainFn

log = logging.getLogger(__name__)

# Per-trial latency: short alternating rounds against the baseline (5, so that one burst of
# neighbour load cannot pick the winner); the chosen policy is re-measured fully. The time floor
# decides for any model under 20 ms; an iteration floor would only make a large model slow to
# time (a 224x224 ResNet-50 takes 41-45 ms at 1 thread, f32: 50 iterations would be ~2 s per
# round, ~20 s per trial over 5 rounds of two models; benchmarks/scale.py).
TRIAL_LATENCY = LatencyConfig(warmup_iterations=5, rounds=5, min_iterations=5, min_seconds=0.1)
State = Literal["COMPLETE", "PRUNED", "FAIL"]


@dataclasses.dataclass(frozen=True)
class Baseline:
    """The uncompressed model as exported and measured on the target."""

    onnx_path: str
    ir_path: str
    accuracy: float
    latency_ms: float
    size_bytes: int
    parameters: int
    flops: int
    val_logits: str | None = None  # its outputs on the validation data (.npy): trials are paired with them

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Baseline:
        return cls(**data)

    def logits(self) -> np.ndarray | None:
        """The stored validation outputs, or None when they are gone (then measure it again)."""
        try:
            return np.load(self.val_logits) if self.val_logits else None
        except (OSError, ValueError):
            return None


@dataclasses.dataclass(frozen=True)
class Measurements:
    """What was measured of one candidate: accuracy of the exported IR on the validation
    data (OpenVINO), latency on the target (ms, and ratio to the baseline measured in the
    same alternating rounds), size of the IR's weights, and where the time went."""

    drop: DropEstimate  # accuracy on the validation data, paired with the baseline on the same samples
    latency_ms: float
    latency_ratio: float  # candidate / baseline: 0.25 = 4x faster
    throughput: float  # samples per second at the target's batch
    size_bytes: int  # the IR's .bin
    size_ratio: float
    parameters: int
    flops: int
    runtime_precision: dict[str, Any] | None
    latency_cached: bool  # the same graph was timed earlier in this search
    fingerprint: str
    ir_path: str
    onnx_path: str
    seconds_compress: float | None = None
    seconds_export: float | None = None
    seconds_measure: float | None = (
        None  # all of the measurement: seconds_convert, _infer, _timed and the rest
    )
    seconds_convert: float | None = None  # ONNX -> IR
    seconds_infer: float | None = None  # the IR on the validation data
    seconds_timed: float | None = None  # the alternating latency rounds (warm-up included)
    # latency_ratio's interval (the median of per-round ratios; distribution-free) and its confidence
    latency_ratio_low: float | None = None
    latency_ratio_high: float | None = None
    latency_confidence: float | None = None
    node_trained: str | None = None  # Ray: where it was fine-tuned and where it was measured
    node_measured: str | None = None
    resumed_from: str | None = None  # Ray: "exported" when a retried trial went on from its checkpoint

    @property
    def accuracy(self) -> float:
        """The metric on the validation data (higher is better)."""
        return self.drop.accuracy

    @property
    def speedup(self) -> float:
        """Baseline latency / candidate latency, from the same alternating rounds."""
        return 1.0 / self.latency_ratio

    @property
    def speedup_interval(self) -> tuple[float, float] | None:
        """(low, high) of the speedup at latency_confidence, from the same rounds; None when
        not measured against the baseline in several rounds."""
        if self.latency_ratio_low is None or self.latency_ratio_high is None:
            return None
        return 1.0 / self.latency_ratio_high, 1.0 / self.latency_ratio_low

    @property
    def throughput_ratio(self) -> float:
        return 1.0 / self.latency_ratio

    def to_dict(self) -> dict[str, Any]:
        """The fields, and the ratios derived from them for readers of the JSON."""
        return {
            **dataclasses.asdict(self),
            "accuracy": self.accuracy,
            "speedup": self.speedup,
            "speedup_interval": self.speedup_interval,
            "throughput_ratio": self.throughput_ratio,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Measurements:
        derived = ("accuracy", "speedup", "speedup_interval", "throughput_ratio")
        values = {k: v for k, v in data.items() if k not in derived}
        values["drop"] = DropEstimate.from_dict(values["drop"])
        return cls(**values)

    def with_paths(self, ir_path: str, onnx_path: str) -> Measurements:
        return dataclasses.replace(self, ir_path=ir_path, onnx_path=onnx_path)


@dataclasses.dataclass(frozen=True)
class Exported:
    """A compressed candidate exported to ONNX, with what measuring it needs from torch."""

    onnx_path: str
    fingerprint: str
    parameters: int
    flops: int
    seconds_compress: float | None
    seconds_export: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Exported:
        return cls(**data)


@dataclasses.dataclass(frozen=True)
class TrialOutcome:
    """How a trial ended: COMPLETE (measured), PRUNED (stopped early below the accuracy
    floor) or FAIL (it raised: the same policy would fail again)."""

    state: State
    measurements: Measurements | None = None
    values: tuple[float, ...] | None = None  # the objectives, in order
    violation: float | None = None  # accuracy floor - accuracy; <= 0 is feasible
    error: str | None = None
    checks: tuple[tuple[str, float], ...] = ()  # (stage, torch validation accuracy) on the way
    steps: int | None = None  # fine-tuning steps it ran (pruning recovery and QAT): what it cost

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["measurements"] = self.measurements.to_dict() if self.measurements else None
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrialOutcome:
        data = dict(data)
        data["measurements"] = (
            Measurements.from_dict(data["measurements"]) if data.get("measurements") else None
        )
        data["values"] = tuple(data["values"]) if data.get("values") is not None else None
        data["checks"] = tuple(tuple(c) for c in data.get("checks") or ())
        return cls(**data)


class TrialStopped(Exception):
    """Raised inside fine-tuning to stop a candidate early (it ends PRUNED)."""


@dataclasses.dataclass(frozen=True)
class Latency:
    """A candidate's latency from alternating rounds against the baseline; ratio_low/high: a
    distribution-free interval for the median per-round ratio, at ratio_confidence."""

    latency_ms: float
    latency_ratio: float
    runtime_precision: dict[str, Any] | None
    ratio_low: float | None = None
    ratio_high: float | None = None
    ratio_confidence: float | None = None

    @classmethod
    def from_rounds(cls, result: dict, index: int = -1, *, against: bool = True) -> Latency:
        """Model ``index`` of a MeasureLatency result, whose first model is the baseline when
        ``against`` (else the ratio is 1: nothing to compare with)."""
        model = result["models"][index]
        if not against:
            return cls(model["median_ms"], 1.0, model.get("runtime_precision"))
        low, high = model.get("ratio_interval") or (None, None)
        return cls(
            model["median_ms"],
            result["ratios_to_first"][index],
            model.get("runtime_precision"),
            low,
            high,
            model.get("ratio_confidence"),
        )


@dataclasses.dataclass(frozen=True)
class MeasuredIR:
    """What a Measure returns for one exported model."""

    bin_bytes: int
    logits: np.ndarray
    latency: Latency | None  # None when not asked for (a cached graph)
    node: str | None = None
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)  # convert, infer, timed


class Measure(Protocol):
    """Where exported models are measured: on this machine (LocalMeasure) or on a node of
    the target hardware (the Ray backend's).

    candidate(): converts ``onnx_path`` to an IR at ``ir_path``, runs the validation inputs
        through it and, if ``latency``, times it against the baseline IR ``against`` (None:
        alone) in alternating rounds.
    compare(): the outputs of the IRs ``ir_paths`` on ``inputs_file`` and their latencies in
        alternating rounds, the first being the reference (the final test-split check)."""

    def candidate(
        self, onnx_path: Path, ir_path: Path, *, against: str | None, latency: bool
    ) -> MeasuredIR: ...

    def compare(
        self, ir_paths: list[str], inputs_file: Path, config: LatencyConfig
    ) -> tuple[list[np.ndarray], dict]: ...


def measure_candidate(
    onnx_path: Path,
    ir_path: Path,
    inputs_file: Path,
    target: Target,
    config: LatencyConfig,
    *,
    against: str | None,
    latency: bool,
    worker: RuntimeWorker | None = None,
) -> MeasuredIR:
    """IR conversion, validation logits and (optionally) latency, in ONE OpenVINO child process
    (``worker``, a persistent one, or a fresh one)."""
    shape = list(np.load(inputs_file, mmap_mode="r").shape[1:])
    logits_path = Path(ir_path).with_name("val_logits.npy")
    jobs = [
        ConvertToIR(str(onnx_path), str(ir_path), [target.batch, *shape]),
        Infer(str(ir_path), str(inputs_file), str(logits_path), target.to_dict()),
    ]
    if latency:
        paths = [against, str(ir_path)] if against else [str(ir_path)]
        jobs.append(MeasureLatency(paths, target.to_dict(), config.to_dict(), str(inputs_file)))
    results = [unwrap(r) for r in run_jobs(jobs, worker=worker)]
    logits = np.load(logits_path)
    logits_path.unlink()
    timed = Latency.from_rounds(results[2], against=against is not None) if latency else None
    seconds = {"convert": results[0]["seconds"], "infer": results[1]["seconds"]}
    if latency:
        seconds["timed"] = results[2]["timed_seconds"]
    return MeasuredIR(int(results[0]["bin_bytes"]), logits, timed, seconds=seconds)


def compare_irs(
    ir_paths: list[str],
    inputs_file: Path,
    target: Target,
    config: LatencyConfig,
    worker: RuntimeWorker | None = None,
) -> tuple[list[np.ndarray], dict]:
    """Outputs of each IR on the inputs, and their latencies in alternating rounds (the
    first IR is the reference), in one OpenVINO child process on this machine."""
    with tempfile.TemporaryDirectory(prefix="autocompress-check-") as tmp:
        jobs: list = [
            Infer(p, str(inputs_file), f"{tmp}/{i}.npy", target.to_dict()) for i, p in enumerate(ir_paths)
        ]
        jobs.append(MeasureLatency(list(ir_paths), target.to_dict(), config.to_dict(), str(inputs_file)))
        results = [unwrap(r) for r in run_jobs(jobs, worker=worker)]
        logits = [np.load(f"{tmp}/{i}.npy") for i in range(len(ir_paths))]
    return logits, results[-1]


@dataclasses.dataclass
class LocalMeasure:
    """Measure on this machine (see Measure), in one persistent worker process while open
    (the baseline compiled once for all trials); close() ends it."""

    inputs_file: Path
    target: Target
    config: LatencyConfig = TRIAL_LATENCY
    worker: RuntimeWorker = dataclasses.field(default_factory=RuntimeWorker)

    def candidate(self, onnx_path: Path, ir_path: Path, *, against: str | None, latency: bool) -> MeasuredIR:
        return measure_candidate(
            onnx_path,
            ir_path,
            self.inputs_file,
            self.target,
            self.config,
            against=against,
            latency=latency,
            worker=self.worker,
        )

    def compare(
        self, ir_paths: list[str], inputs_file: Path, config: LatencyConfig
    ) -> tuple[list[np.ndarray], dict]:
        return compare_irs(ir_paths, inputs_file, self.target, config, worker=self.worker)

    def close(self) -> None:
        self.worker.close()


class LatencyCache:
    """Latency per graph fingerprint, one JSON file per fingerprint in ``directory``
    (written atomically, so trials on several processes or nodes can share it). An entry
    timed by another protocol (``PROTOCOL``) is timed again."""

    PROTOCOL = 2  # 2: timed on the search's data, a new input each call (1: one random input)

    def __init__(self, directory: str | Path | None) -> None:
        self.directory = Path(directory) if directory else None

    def get(self, fingerprint: str) -> Latency | None:
        path = self.directory / f"{fingerprint}.json" if self.directory else None
        if path is None or not path.exists():
            return None
        try:
            stored = json.loads(path.read_text())
            if stored.pop("protocol", None) != self.PROTOCOL:
                return None
            return Latency(**stored)
        except (ValueError, TypeError, AttributeError):  # a damaged entry is measured again
            return None

    def put(self, fingerprint: str, latency: Latency) -> None:
        if self.directory is None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        staging = self.directory / f".{fingerprint}.{os.getpid()}.tmp"
        staging.write_text(json.dumps({"protocol": self.PROTOCOL, **dataclasses.asdict(latency)}))
        staging.replace(self.directory / f"{fingerprint}.json")


def graph_fingerprint(onnx_path: str | Path, target: Target) -> str:
    """sha256 of the ONNX graph's structure, plus the target: two candidates with this
    fingerprint run the same kernels. Operators with their attributes and wiring, and every
    constant's type and shape count; names, tensor values and Identity nodes do not. (The
    exporter shares equal constants through Identity nodes and numbers tensors in order, so
    the same policy fine-tuned twice exported with different names and Identity nodes: the
    raw graph missed the latency cache for the demo's confirmations.)"""
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    constants = {
        t.name: f"const{onnx.helper.tensor_dtype_to_np_dtype(t.data_type)}{list(t.dims)}"
        for t in graph.initializer
    }
    tokens: dict[str, str] = {"": "-"}
    for index, value in enumerate(graph.input):
        if value.name not in constants:
            tokens[value.name] = f"input{index}:{value.type.SerializeToString(deterministic=True).hex()}"
    aliases: dict[str, str] = {}

    def token(name: str) -> str:
        while name in aliases:
            name = aliases[name]
        return tokens.get(name) or constants.get(name) or f"unknown:{name}"

    digest = hashlib.sha256()
    index = 0  # of the nodes that count
    for node in graph.node:
        if node.op_type == "Identity" and not node.domain:
            aliases[node.output[0]] = node.input[0]
            continue
        attributes = []
        for attribute in sorted(node.attribute, key=lambda a: a.name):
            if attribute.HasField("t"):  # a constant's value: its type and shape only
                t = attribute.t
                attributes.append((attribute.name, t.data_type, tuple(t.dims)))
            elif attribute.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
                attributes.append((attribute.name, "subgraph"))
            else:
                attributes.append((attribute.name, repr(onnx.helper.get_attribute_value(attribute))))
        digest.update(repr((node.op_type, node.domain, [token(i) for i in node.input], attributes)).encode())
        for k, output in enumerate(node.output):
            tokens[output] = f"node{index}.{k}"
        index += 1
    digest.update(repr([token(o.name) for o in graph.output]).encode())
    digest.update(repr(sorted(target.to_dict().items())).encode())
    return digest.hexdigest()[:24]


@dataclasses.dataclass
class TrialSetup:
    """The search problem every trial shares: the user's model and data, how candidates
    are fine-tuned and scored. Plain data, picklable (Ray ships it to the workers once)."""

    model: nn.Module
    train_loader: Iterable
    val: Dataset
    objectives: list[Objective]
    constraint: AccuracyConstraint
    finetune: Finetune
    target: Target
    metric: Metric | None = None
    loss_fn: Callable | None = None
    train_fn: TrainFn | None = None
    early_stop_margin: float | None = 0.05
    device: str = "auto"  # where candidates fine-tune (apply_policy's device= and autocast=): not
    autocast: str | None = None  # part of the search's identity, so not in its stored settings

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.val.inputs.shape[1:])

    def torch_accuracy(self, module: nn.Module) -> float:
        """The metric of a torch module on the validation data (for early stopping)."""
        return score(
            self.metric,
            module_logits(module, self.val.inputs, 500),
            self.val.targets,
            "a candidate during fine-tuning",
        )

    def export(
        self, module: nn.Module, directory: str | Path, seconds_compress: float | None = None
    ) -> Exported:
        """Export a (compressed) module to ``directory``/model.onnx, with what the rest of the
        measurement needs from torch (parameters, FLOPs), so it can go on without it."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        onnx_path = directory / "model.onnx"
        started = time.perf_counter()
        export_onnx(module, (self.target.batch, *self.input_shape), onnx_path)
        return Exported(
            onnx_path=str(onnx_path),
            fingerprint=graph_fingerprint(onnx_path, self.target),
            parameters=parameter_stats(module)["parameters"],
            flops=count_flops(module, (1, *self.input_shape)),
            seconds_compress=seconds_compress,
            seconds_export=time.perf_counter() - started,
        )

    def measure_baseline(self, directory: str | Path, measure: Measure) -> Baseline:
        """Export the uncompressed model and measure it once (accuracy, latency, size)."""
        exported = self.export(self.model, Path(directory))
        ir_path = Path(exported.onnx_path).with_name("model.xml")
        measured = measure.candidate(Path(exported.onnx_path), ir_path, against=None, latency=True)
        logits_path = Path(directory) / "val_logits.npy"
        np.save(logits_path, measured.logits)
        return Baseline(
            onnx_path=exported.onnx_path,
            ir_path=str(ir_path),
            accuracy=score(self.metric, measured.logits, self.val.targets, "the uncompressed model"),
            latency_ms=measured.latency.latency_ms,
            size_bytes=measured.bin_bytes,
            parameters=exported.parameters,
            flops=exported.flops,
            val_logits=str(logits_path),
        )


@dataclasses.dataclass
class Trial:
    """The trial function both backends run: ``trial(policy, directory, ...) -> TrialOutcome``.

    measure: where the exported candidate is measured; latency_cache: shared timings by
    graph fingerprint. on_check(stage, accuracy) sees the torch validation accuracy at the
    end of pruning recovery and half-way through the final fine-tuning;
    should_stop() lets a scheduler or pruner stop the trial there. ``exported`` resumes a
    trial that was exported before its worker died (skipping the fine-tune), and
    on_exported(exported) lets a backend checkpoint that point. ``baseline_logits`` are the
    baseline's validation outputs, with which each candidate's drop is paired."""

    setup: TrialSetup
    baseline: Baseline
    baseline_logits: np.ndarray

    def __call__(
        self,
        policy: Policy,
        directory: str | Path,
        *,
        measure: Measure,
        latency_cache: LatencyCache | None = None,
        on_check: Callable[[str, float], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        exported: Exported | None = None,
        on_exported: Callable[[Exported], None] | None = None,
    ) -> TrialOutcome:
        checks: list[tuple[str, float]] = []
        steps: dict[str, int] = {}  # stage (a recovery round counts apart) -> steps started

        def check(stage: str, accuracy: float) -> None:
            checks.append((stage, accuracy))
            if on_check is not None:
                on_check(stage, accuracy)

        try:
            if exported is None:
                exported = self._compress_and_export(policy, Path(directory), check, should_stop, steps)
                if on_exported is not None:
                    on_exported(exported)
            measurements = self._measure(exported, policy, measure, latency_cache or LatencyCache(None))
            values = tuple(objective(measurements) for objective in self.setup.objectives)
        except TrialStopped as stopped:
            return TrialOutcome("PRUNED", error=str(stopped), checks=tuple(checks), steps=sum(steps.values()))
        except Exception as error:  # recorded, not retried: the same policy would fail again
            log.warning(
                "trial failed: %s: %s", type(error).__name__, error, exc_info=log.isEnabledFor(logging.DEBUG)
            )
            return TrialOutcome("FAIL", error=f"{type(error).__name__}: {error}"[:2000], checks=tuple(checks))
        return TrialOutcome(
            "COMPLETE",
            measurements,
            values,
            measurements.drop.violation,
            checks=tuple(checks),
            steps=sum(steps.values()) if steps else None,
        )

    def _compress_and_export(
        self, policy: Policy, directory: Path, check, should_stop, steps: dict[str, int]
    ) -> Exported:
        floor = self.setup.constraint.floor(self.baseline.accuracy)
        margin = self.setup.early_stop_margin

        def watch(stage: str, accuracy: float) -> None:
            check(stage, accuracy)
            if margin is not None and accuracy < floor - margin:
                raise TrialStopped(
                    f"{stage}: validation accuracy {accuracy:.4f} is below the floor {floor:.4f} by more than {margin}"
                )
            if should_stop is not None and should_stop():
                raise TrialStopped(f"{stage}: stopped by the search's scheduler at accuracy {accuracy:.4f}")

        def on_step(stage: str, step: int, total: int, module: nn.Module) -> None:
            if step == 0:  # a new stage, or the next round of pruning recovery
                steps[f"{stage}.{len(steps)}"] = 0
            steps[next(reversed(steps))] = step + 1
            # Mid-recovery accuracy says little (the lr is still high); its last step says a lot.
            checkpoint = total - 1 if stage == "recovery" else total // 2
            if total >= 4 and step == checkpoint:
                watch(stage, self.setup.torch_accuracy(module))

        started = time.perf_counter()
        module = apply_policy(
            self.setup.model,
            policy,
            self.setup.train_loader,
            finetune=self.setup.finetune,
            loss_fn=self.setup.loss_fn,
            on_finetune_step=on_step,
            train_fn=self.setup.train_fn,
            device=self.setup.device,
            autocast=self.setup.autocast,
        ).module
        seconds = time.perf_counter() - started
        # No torch validation pass here: the exported IR is scored on the same data next
        # (a torch pass cost 0.5-0.9 s per trial on the zoo ResNet-20 and decided nothing).
        return self.setup.export(module, directory, seconds)

    def _measure(
        self, exported: Exported, policy: Policy, measure: Measure, cache: LatencyCache
    ) -> Measurements:
        onnx_path = Path(exported.onnx_path)
        ir_path = onnx_path.with_name("model.xml")
        cached = cache.get(exported.fingerprint)
        started = time.perf_counter()
        measured = measure.candidate(
            onnx_path, ir_path, against=self.baseline.ir_path, latency=cached is None
        )
        seconds = time.perf_counter() - started
        latency = cached or measured.latency
        if cached is None:
            cache.put(exported.fingerprint, latency)
        policy.save(onnx_path.with_name("policy.json"))
        batch = self.setup.target.batch
        drop = self.setup.constraint.assess(
            self.setup.metric, self.baseline_logits, measured.logits, self.setup.val.targets
        )
        return Measurements(
            drop=drop,
            latency_ms=latency.latency_ms,
            latency_ratio=latency.latency_ratio,
            throughput=1000.0 * batch / latency.latency_ms,
            size_bytes=measured.bin_bytes,
            size_ratio=measured.bin_bytes / self.baseline.size_bytes,
            parameters=exported.parameters,
            flops=exported.flops,
            runtime_precision=latency.runtime_precision,
            latency_ratio_low=latency.ratio_low,
            latency_ratio_high=latency.ratio_high,
            latency_confidence=latency.ratio_confidence,
            latency_cached=cached is not None,
            fingerprint=exported.fingerprint,
            ir_path=str(ir_path),
            onnx_path=str(onnx_path),
            seconds_compress=exported.seconds_compress,
            seconds_export=exported.seconds_export,
            seconds_measure=seconds,
            seconds_convert=measured.seconds.get("convert"),
            seconds_infer=measured.seconds.get("infer"),
            seconds_timed=measured.seconds.get("timed"),
            node_measured=measured.node,
        )
