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
from pathlib import Path
from typing import Any, Callable, MutableMapping

import numpy as np
import onnx
import torch
from torch import nn

from autocompress.core import Finetune, apply_policy
from autocompress.export import export_onnx
from autocompress.training import Metric, top1_accuracy
from evaluators.child import run_jobs, unwrap
from evaluators.runtime import Dataset
from evaluators.size import count_flops, parameter_stats
from evaluators.target import LatencyConfig, Target
from policies import Policy

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
    def from_dict(cls, data: dict[str, Any]) -> "Baseline":
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
    ) -> None:
        self.model = model
        self.train_loader = train_loader
        self.val = val_data
        self.metric = metric or top1_accuracy
        self.loss_fn = loss_fn
        self.finetune = finetune
        self.target = target
        self.latency = latency
        self.input_shape = tuple(val_data.inputs.shape[1:])

    # -- measurements ---------------------------------------------------------------------
    def score(self, logits: np.ndarray, what: str) -> float:
        value = float(self.metric(logits, self.val.targets))
        if not math.isfinite(value):
            raise ValueError(f"the metric returned {value} for {what}; it must return a finite number (higher is better)")
        return value

    def torch_accuracy(self, module: nn.Module, batch_size: int = 500) -> float:
        """The metric of a torch module on the validation data (for early stopping)."""
        was_training = module.training
        module.eval()
        try:
            with torch.no_grad():
                logits = np.concatenate(
                    [module(torch.from_numpy(self.val.inputs[i : i + batch_size])).numpy() for i in range(0, len(self.val.inputs), batch_size)]
                )
        finally:
            module.train(was_training)
        return self.score(logits, "a candidate during fine-tuning")

    def _export_and_measure(
        self, module: nn.Module, directory: Path, against: str | None, latency_cache: MutableMapping[str, dict] | None
    ) -> dict[str, Any]:
        directory.mkdir(parents=True, exist_ok=True)
        onnx_path, ir_path, logits_path = directory / "model.onnx", directory / "model.xml", directory / "val_logits.npy"
        started = time.perf_counter()
        shape = (self.target.batch, *self.input_shape)
        export_onnx(module, shape, onnx_path)
        fingerprint = graph_fingerprint(onnx_path, self.target)
        cached = latency_cache.get(fingerprint) if latency_cache is not None else None
        export_seconds = time.perf_counter() - started
        jobs = [
            {"op": "convert_to_ir", "args": {"onnx_path": str(onnx_path), "xml_path": str(ir_path), "input_shape": list(shape)}},
            {"op": "infer", "args": {"xml_path": str(ir_path), "inputs_npy": str(self.val.inputs_file()), "outputs_npy": str(logits_path), "target": self.target.to_dict()}},
        ]
        if cached is None:
            paths = [against, str(ir_path)] if against else [str(ir_path)]
            jobs.append({"op": "measure_latency", "args": {"xml_paths": paths, "target": self.target.to_dict(), "config": self.latency.to_dict()}})
        started = time.perf_counter()
        results = [unwrap(r) for r in run_jobs(jobs)]
        measure_seconds = time.perf_counter() - started
        logits = np.load(logits_path)
        logits_path.unlink()
        out = {
            "fingerprint": fingerprint,
            "latency_cached": cached is not None,
            "onnx_path": str(onnx_path),
            "ir_path": str(ir_path),
            "size_bytes": int(results[0]["bin_bytes"]),
            "logits": logits,
            "seconds_export": export_seconds,
            "seconds_measure": measure_seconds,
        }
        if cached is None:
            latency = results[2]
            cached = {
                "latency_ms": latency["models"][-1]["median_ms"],
                "latency_ratio": latency["ratios_to_first"][-1] if against else 1.0,
                "runtime_precision": latency["models"][-1].get("runtime_precision"),
            }
            if latency_cache is not None:
                latency_cache[fingerprint] = cached
        out.update(cached)
        return out

    def measure_baseline(self, workdir: Path) -> Baseline:
        """Export the uncompressed model and measure it once (accuracy, latency, size)."""
        measured = self._export_and_measure(self.model, Path(workdir) / "baseline", None, None)
        return Baseline(
            onnx_path=measured["onnx_path"],
            ir_path=measured["ir_path"],
            accuracy=self.score(measured["logits"], "the uncompressed model"),
            latency_ms=measured["latency_ms"],
            size_bytes=measured["size_bytes"],
            parameters=parameter_stats(self.model)["parameters"],
            flops=count_flops(self.model, (1, *self.input_shape)),
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
        compressed = apply_policy(
            self.model, policy, self.train_loader, finetune=self.finetune, loss_fn=self.loss_fn, on_finetune_step=on_finetune_step
        )
        compress_seconds = time.perf_counter() - started
        directory = Path(directory)
        measured = self._export_and_measure(compressed.module, directory, baseline.ir_path, latency_cache)
        accuracy = self.score(measured["logits"], "a candidate")
        policy.save(directory / "policy.json")
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
            "parameters": parameter_stats(compressed.module)["parameters"],
            "flops": count_flops(compressed.module, (1, *self.input_shape)),
            "ir_path": measured["ir_path"],
            "onnx_path": measured["onnx_path"],
            "seconds_compress": compress_seconds,
            "seconds_export": measured["seconds_export"],
            "seconds_measure": measured["seconds_measure"],
        }
