"""Measure models side by side: exported-model accuracy, OpenVINO latency, size."""

from __future__ import annotations

import dataclasses
import json
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from torch import nn

from autocompress.core import CompressedModel
from autocompress.evaluators.artifact import ExportedModel
from autocompress.evaluators.metrics import Metric, top1_accuracy
from autocompress.evaluators.runtime import Dataset, OnnxRuntimeLatency, OpenVINOAccuracy, OpenVINOLatency
from autocompress.evaluators.size import ModelSize
from autocompress.evaluators.target import LatencyConfig, Target
from autocompress.evaluators.torch_side import TorchAccuracy
from autocompress.export import export

Candidate = nn.Module | CompressedModel | ExportedModel


@dataclasses.dataclass
class Report:
    """Measurements per model (rows), with the target and protocol they were taken on."""

    rows: dict[str, dict[str, Any]]
    target: Target
    latency_config: LatencyConfig

    def __getitem__(self, name: str) -> dict[str, Any]:
        return self.rows[name]

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "target": self.target.to_dict(),
            "latency_config": self.latency_config.to_dict(),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def table(self) -> str:
        header = [
            "model",
            "accuracy (OV)",
            "accuracy (torch)",
            "latency ms",
            "spread",
            "speedup",
            "IR weights KiB",
            "params",
        ]
        lines = [header]
        for name, row in self.rows.items():
            lines.append(
                [
                    name,
                    _pct(row.get("accuracy")),
                    _pct(row.get("torch_accuracy")),
                    f"{row['latency_ms']:.4f}",
                    f"{row['latency_spread']:.0%}",
                    f"{row['speedup']:.2f}x",
                    f"{row['ir_weights_bytes'] / 1024:.1f}",
                    f"{row.get('parameters', 0):,}",
                ]
            )
        widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
        rendered = ["  ".join(str(cell).ljust(w) for cell, w in zip(line, widths)) for line in lines]
        rendered.insert(1, "  ".join("-" * w for w in widths))
        hints = {name: row.get("precision_hint") for name, row in self.rows.items()}
        overridden = ", ".join(
            f"{name}: {hint}" for name, hint in hints.items() if hint != self.target.precision_hint
        )
        precision = (self.target.precision_hint or "runtime default") + (
            f" ({overridden})" if overridden else ""
        )
        note = (
            f"target: {self.target.device}, threads={self.target.threads or 'default'}, batch={self.target.batch}, "
            f"precision={precision}; latency = median of "
            f"{self.latency_config.rounds} alternating rounds; speedup vs the first row"
        )
        return "\n".join(rendered + [note])


def evaluate(
    models: Candidate | Mapping[str, Candidate],
    test_loader: Iterable,
    *,
    target: Target = Target(),
    targets: Mapping[str, Target] | None = None,
    metric: Metric | None = None,
    latency: LatencyConfig = LatencyConfig(),
    workdir: str | Path | None = None,
    onnxruntime: bool = False,
) -> Report:
    """Export each model and measure it: OpenVINO accuracy of the exported IR, torch
    accuracy, OpenVINO latency on ``target`` (all models in alternating rounds, so the
    ratios are fair on a noisy machine), optional ONNX Runtime latency, and size.

    ``models``: one model or {name: model}; the first is the reference for speedups.
    ``targets`` overrides ``target`` per model name (e.g. the FP32 baseline at "f32").
    Exported files go to ``workdir`` (a temporary directory when omitted).
    """
    targets = dict(targets or {})
    candidates = dict(models) if isinstance(models, Mapping) else {"model": models}
    if not candidates:
        raise ValueError("evaluate needs at least one model")
    metric = metric or top1_accuracy
    data = Dataset(test_loader)
    input_shape = tuple(data.inputs.shape[1:])
    with tempfile.TemporaryDirectory(prefix="autocompress-eval-") as tmp:
        root = Path(workdir) if workdir is not None else Path(tmp)
        exported = {
            name: (
                m
                if isinstance(m, ExportedModel)
                else export(m, root / name, input_shape=_shape_for(m, input_shape), batch=target.batch)
            )
            for name, m in candidates.items()
        }
        rows: dict[str, dict[str, Any]] = {name: {} for name in exported}
        torch_accuracy = TorchAccuracy(data, metric=metric)
        size = ModelSize()
        for name, artifact in exported.items():
            accuracy = OpenVINOAccuracy(data, metric=metric, target=targets.get(name, target))
            rows[name]["accuracy"] = accuracy(artifact)["accuracy"]
            rows[name]["precision_hint"] = targets.get(name, target).precision_hint
            if artifact.module is not None:
                rows[name]["torch_accuracy"] = torch_accuracy(artifact)["accuracy"]
            rows[name].update(size(artifact))
        for name, measured in OpenVINOLatency(target, latency, data).compare(exported, targets).items():
            rows[name].update(_latency_fields(measured))
        if onnxruntime:
            for name, measured in OnnxRuntimeLatency(target.threads, latency, data).compare(exported).items():
                rows[name]["onnxruntime_latency_ms"] = measured["median_ms"]
        for name, row in rows.items():
            row["files"] = exported[name].to_dict() if workdir is not None else None
    return Report(rows, target, latency)


def _shape_for(model: Candidate, data_shape: tuple[int, ...]) -> tuple[int, ...]:
    if isinstance(model, CompressedModel) and tuple(model.input_shape) != data_shape:
        raise ValueError(
            f"the test data has samples of shape {list(data_shape)} but the model was compressed "
            f"for {list(model.input_shape)}"
        )
    return data_shape


def _latency_fields(measured: dict[str, Any]) -> dict[str, Any]:
    ratio = measured.get("ratio_to_first", 1.0)
    return {
        "latency_ms": measured["median_ms"],
        "latency_spread": measured["spread"],
        "latency_rounds_ms": measured["rounds_ms"],
        "latency_ratio": ratio,
        "speedup": 1.0 / ratio,
        "runtime_precision": measured.get("runtime_precision"),
    }


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"
