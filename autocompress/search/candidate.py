"""One candidate, end to end: compress with a policy, export, measure.

Nothing here knows which search asked. All OpenVINO work for a candidate (IR
conversion, accuracy on the validation data, latency against the baseline in
alternating rounds) runs in ONE child process, so the per-trial overhead outside
fine-tuning is one interpreter start. Latency depends on the graph, not on the weight
values, so it is cached by a fingerprint of the exported graph's structure.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnx
import torch
from torch import nn

from autocompress.core import Finetune, apply_policy
from autocompress.evaluators.child import run_jobs, unwrap
from autocompress.evaluators.runtime import Dataset
from autocompress.evaluators.size import count_flops, parameter_stats
from autocompress.evaluators.target import LatencyConfig, Target
from autocompress.export import export_onnx
from autocompress.policies import Policy
from autocompress.training import Metric, top1_accuracy

# Per-trial latency: short alternating rounds against the baseline (5, so that one burst of
# neighbour load cannot pick the winner); the chosen policy is re-measured fully.
TRIAL_LATENCY = LatencyConfig(rounds=5, min_iterations=50, min_seconds=0.1)


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

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Baseline:
        return cls(**data)


def graph_fingerprint(onnx_path: str | Path, target: Target) -> str:
    """sha256 of the ONNX graph with every tensor's values dropped (shapes and types
    kept), plus the target: two candidates with this fingerprint run the same kernels."""
    model = onnx.load(str(onnx_path))
    for tensor in model.graph.initializer:
        tensor.ClearField("raw_data")
        for field in ("float_data", "int32_data", "int64_data", "double_data"):
            tensor.ClearField(field)
    for node in model.graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                attribute.t.ClearField("raw_data")
    digest = hashlib.sha256(model.graph.SerializeToString(deterministic=True))
    digest.update(repr(sorted(target.to_dict().items())).encode())
    return digest.hexdigest()[:24]


class Measure(Protocol):
    """Where an exported candidate is measured: converts ``onnx_path`` to an IR at
    ``ir_path``, runs the validation inputs through it, and (if ``latency``) measures its
    latency against the IR ``against`` in alternating rounds. Returns {"bin_bytes",
    "logits", "latency": {"latency_ms", "latency_ratio", "runtime_precision"} or None}.
    LocalMeasure does it on this machine; the Ray backend ships it to the target node."""

    def __call__(
        self, onnx_path: Path, ir_path: Path, *, against: str | None, latency: bool
    ) -> dict[str, Any]: ...


def measure_exported(
    onnx_path: Path,
    ir_path: Path,
    inputs_file: Path,
    target: Target,
    config: LatencyConfig,
    *,
    against: str | None,
    latency: bool,
) -> dict[str, Any]:
    """IR conversion, validation logits and (optionally) latency, in ONE OpenVINO child process."""
    shape = list(np.load(inputs_file, mmap_mode="r").shape[1:])
    logits_path = Path(ir_path).with_name("val_logits.npy")
    jobs = [
        {
            "op": "convert_to_ir",
            "args": {
                "onnx_path": str(onnx_path),
                "xml_path": str(ir_path),
                "input_shape": [target.batch, *shape],
            },
        },
        {
            "op": "infer",
            "args": {
                "xml_path": str(ir_path),
                "inputs_npy": str(inputs_file),
                "outputs_npy": str(logits_path),
                "target": target.to_dict(),
            },
        },
    ]
    if latency:
        paths = [against, str(ir_path)] if against else [str(ir_path)]
        jobs.append(
            {
                "op": "measure_latency",
                "args": {"xml_paths": paths, "target": target.to_dict(), "config": config.to_dict()},
            }
        )
    results = [unwrap(r) for r in run_jobs(jobs)]
    logits = np.load(logits_path)
    logits_path.unlink()
    measured = None
    if latency:
        models = results[2]["models"]
        measured = {
            "latency_ms": models[-1]["median_ms"],
            "latency_ratio": results[2]["ratios_to_first"][-1] if against else 1.0,
            "runtime_precision": models[-1].get("runtime_precision"),
        }
    return {"bin_bytes": int(results[0]["bin_bytes"]), "logits": logits, "latency": measured}


@dataclasses.dataclass
class LocalMeasure:
    """Measure on this machine (see Measure)."""

    val: Dataset
    target: Target
    config: LatencyConfig = TRIAL_LATENCY

    def __call__(
        self, onnx_path: Path, ir_path: Path, *, against: str | None, latency: bool
    ) -> dict[str, Any]:
        return measure_exported(
            onnx_path,
            ir_path,
            self.val.inputs_file(),
            self.target,
            self.config,
            against=against,
            latency=latency,
        )


class CandidateRunner:
    """Compresses, exports and measures policies for one model, data and target."""

    def __init__(
        self,
        model: nn.Module,
        train_loader,
        val_data: Dataset,
        *,
        metric: Metric | None = None,
        loss_fn: Callable | None = None,
        finetune: Finetune,
        target: Target,
        latency: LatencyConfig = TRIAL_LATENCY,
        measure: Measure | None = None,
    ) -> None:
        self.model = model
        self.train_loader = train_loader
        self.val = val_data
        self.metric = metric or top1_accuracy
        self.loss_fn = loss_fn
        self.finetune = finetune
        self.target = target
        self.input_shape = tuple(val_data.inputs.shape[1:])
        self.measure = measure or LocalMeasure(val_data, target, latency)

    # -- measurements ---------------------------------------------------------------------
    def score(self, logits: np.ndarray, what: str) -> float:
        value = float(self.metric(logits, self.val.targets))
        if not math.isfinite(value):
            raise ValueError(
                f"the metric returned {value} for {what}; it must return a finite number (higher is better)"
            )
        return value

    def torch_accuracy(self, module: nn.Module, batch_size: int = 500) -> float:
        """The metric of a torch module on the validation data (for early stopping)."""
        was_training = module.training
        module.eval()
        try:
            with torch.no_grad():
                logits = np.concatenate(
                    [
                        module(torch.from_numpy(self.val.inputs[i : i + batch_size])).numpy()
                        for i in range(0, len(self.val.inputs), batch_size)
                    ]
                )
        finally:
            module.train(was_training)
        return self.score(logits, "a candidate during fine-tuning")

    def export(self, module: nn.Module, directory: str | Path) -> dict[str, Any]:
        """Export a (compressed) module to ``directory``/model.onnx; with what the rest of
        the measurement needs from torch (parameters, FLOPs), so it can go on without it."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        onnx_path = directory / "model.onnx"
        started = time.perf_counter()
        export_onnx(module, (self.target.batch, *self.input_shape), onnx_path)
        return {
            "onnx_path": str(onnx_path),
            "fingerprint": graph_fingerprint(onnx_path, self.target),
            "parameters": parameter_stats(module)["parameters"],
            "flops": count_flops(module, (1, *self.input_shape)),
            "seconds_export": time.perf_counter() - started,
        }

    def _measure(
        self, exported: dict[str, Any], against: str | None, latency_cache: MutableMapping[str, dict] | None
    ) -> dict[str, Any]:
        onnx_path = Path(exported["onnx_path"])
        ir_path = onnx_path.with_name("model.xml")
        cached = latency_cache.get(exported["fingerprint"]) if latency_cache is not None else None
        started = time.perf_counter()
        measured = self.measure(onnx_path, ir_path, against=against, latency=cached is None)
        measure_seconds = time.perf_counter() - started
        if cached is None:
            cached = measured["latency"]
            if latency_cache is not None:
                latency_cache[exported["fingerprint"]] = cached
        return {
            **exported,
            "latency_cached": measured["latency"] is None,
            "ir_path": str(ir_path),
            "size_bytes": int(measured["bin_bytes"]),
            "logits": measured["logits"],
            "seconds_measure": measure_seconds,
            **cached,
        }

    def measure_baseline(self, workdir: Path) -> Baseline:
        """Export the uncompressed model and measure it once (accuracy, latency, size)."""
        measured = self._measure(self.export(self.model, Path(workdir) / "baseline"), None, None)
        return Baseline(
            onnx_path=measured["onnx_path"],
            ir_path=measured["ir_path"],
            accuracy=self.score(measured["logits"], "the uncompressed model"),
            latency_ms=measured["latency_ms"],
            size_bytes=measured["size_bytes"],
            parameters=measured["parameters"],
            flops=measured["flops"],
        )

    def run(
        self,
        policy: Policy,
        directory: str | Path,
        baseline: Baseline,
        *,
        latency_cache: MutableMapping[str, dict] | None = None,
        on_finetune_step: Callable | None = None,
    ) -> dict[str, Any]:
        """Compress ``model`` with ``policy``, export it into ``directory`` and measure it.

        Returns JSON-able measurements: accuracy (validation, exported IR on OpenVINO),
        latency (ms, and ratio to the baseline measured in the same alternating rounds),
        throughput and size ratios, parameters, FLOPs, files and seconds per stage.
        """
        started = time.perf_counter()
        module = self.compress(policy, on_finetune_step)
        compress_seconds = time.perf_counter() - started
        return self.measure_exported(
            self.export(module, directory),
            policy,
            baseline,
            latency_cache=latency_cache,
            compress_seconds=compress_seconds,
        )

    def compress(self, policy: Policy, on_finetune_step: Callable | None = None) -> nn.Module:
        """The compressed, fine-tuned module (a copy; the model is untouched)."""
        return apply_policy(
            self.model,
            policy,
            self.train_loader,
            finetune=self.finetune,
            loss_fn=self.loss_fn,
            on_finetune_step=on_finetune_step,
        ).module

    def measure_exported(
        self,
        exported: dict[str, Any],
        policy: Policy,
        baseline: Baseline,
        *,
        latency_cache: MutableMapping[str, dict] | None = None,
        compress_seconds: float | None = None,
    ) -> dict[str, Any]:
        """Measure a candidate exported by ``export`` (see run)."""
        measured = self._measure(exported, baseline.ir_path, latency_cache)
        accuracy = self.score(measured["logits"], "a candidate")
        policy.save(Path(exported["onnx_path"]).with_name("policy.json"))
        return {
            "accuracy": accuracy,
            "latency_ms": measured["latency_ms"],
            "latency_ratio": measured["latency_ratio"],
            "speedup": 1.0 / measured["latency_ratio"],
            "throughput": 1000.0 * self.target.batch / measured["latency_ms"],
            "throughput_ratio": 1.0 / measured["latency_ratio"],
            "size_bytes": measured["size_bytes"],
            "size_ratio": measured["size_bytes"] / baseline.size_bytes,
            "runtime_precision": measured["runtime_precision"],
            "latency_cached": measured["latency_cached"],
            "fingerprint": measured["fingerprint"],
            "parameters": measured["parameters"],
            "flops": measured["flops"],
            "ir_path": measured["ir_path"],
            "onnx_path": measured["onnx_path"],
            "seconds_compress": compress_seconds,
            "seconds_export": measured["seconds_export"],
            "seconds_measure": measured["seconds_measure"],
        }
