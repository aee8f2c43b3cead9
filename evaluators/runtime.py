"""Evaluators that run the exported model: OpenVINO accuracy and latency, ONNX Runtime latency.

All runtime work happens in one child process per call (autocompress.evaluators.child): OpenVINO and
torch in one long-lived process have aborted at exit on this machine.
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from autocompress.evaluators.artifact import ExportedModel, Measurement
from autocompress.evaluators.child import Infer, MeasureLatency, MeasureOrtLatency, run_jobs, unwrap
from autocompress.evaluators.metrics import Metric, score
from autocompress.evaluators.scratch import scratch_dir
from autocompress.evaluators.target import LatencyConfig, Target


class Dataset:
    """Held-out data as arrays, materialised once from a loader of (inputs, targets) batches."""

    def __init__(self, loader: Iterable) -> None:
        inputs, targets = [], []
        for batch in loader:
            if not (isinstance(batch, (tuple, list)) and len(batch) >= 2):
                raise TypeError("evaluation loaders must yield (inputs, targets) batches")
            inputs.append(np.asarray(batch[0], dtype=np.float32))
            targets.append(np.asarray(batch[1]))
        if not inputs:
            raise ValueError("the evaluation loader yielded no batch; pass a non-empty loader")
        self.inputs = np.concatenate(inputs)
        self.targets = np.concatenate(targets)
        self._file: Path | None = None
        self._cleanup: weakref.finalize | None = None

    def __getstate__(self) -> dict:  # shipped to Ray workers: the arrays, not this process's temp file
        return {"inputs": self.inputs, "targets": self.targets, "_file": None, "_cleanup": None}

    def inputs_file(self) -> Path:
        if self._file is None:
            folder = scratch_dir("autocompress-data-")
            self._cleanup = weakref.finalize(self, shutil.rmtree, folder, True)
            self._file = folder / "inputs.npy"
            np.save(self._file, self.inputs)
        return self._file


class OpenVINOAccuracy:
    """The metric of the EXPORTED model run by OpenVINO: what is deployed is what is measured."""

    name = "openvino"

    def __init__(
        self,
        data: Dataset | Iterable,
        metric: Metric | None = None,
        target: Target = Target(),
        batch_size: int = 250,
    ):
        self.data = data if isinstance(data, Dataset) else Dataset(data)
        self.metric = metric
        self.target = target
        self.batch_size = batch_size

    def __call__(self, model: ExportedModel) -> Measurement:
        with tempfile.TemporaryDirectory(prefix="autocompress-logits-") as tmp:
            outputs = Path(tmp) / "logits.npy"
            job = Infer(
                str(model.ir_path),
                str(self.data.inputs_file()),
                str(outputs),
                self.target.to_dict(),
                self.batch_size,
            )
            unwrap(run_jobs([job])[0])
            logits = np.load(outputs)
        return {
            "accuracy": score(self.metric, logits, self.data.targets, "the exported model"),
            "samples": len(self.data.targets),
        }


class OpenVINOLatency:
    """Median OpenVINO latency on ``target`` over alternating measurement rounds.

    ``data`` (a Dataset or loader): each call gets the next batch of its inputs, since latency
    can depend on the data (see runtime_worker.TIMING_SAMPLES); None: seeded random inputs."""

    name = "latency"

    def __init__(
        self,
        target: Target = Target(),
        config: LatencyConfig = LatencyConfig(),
        data: Dataset | Iterable | None = None,
    ):
        self.target = target
        self.config = config
        self.data = _optional_dataset(data)

    def __call__(self, model: ExportedModel) -> Measurement:
        return self.compare({"model": model})["model"]

    def compare(
        self, models: Mapping[str, ExportedModel], targets: Mapping[str, Target] | None = None
    ) -> dict[str, Measurement]:
        """Measure several models in alternating rounds; adds each one's ratio to the first.

        ``targets`` overrides the target per model name (e.g. one IR at f32 and at bf16).
        """
        names = list(models)
        targets = targets or {}
        job = MeasureLatency(
            xml_paths=[str(models[n].ir_path) for n in names],
            target=[targets.get(n, self.target).to_dict() for n in names],
            config=self.config.to_dict(),
            inputs_npy=_inputs_file(self.data),
        )
        return _per_model(names, unwrap(run_jobs([job])[0]))


class OnnxRuntimeLatency:
    """Median ONNX Runtime (CPU) latency of the ONNX file, same protocol (and ``data``) as
    OpenVINOLatency."""

    name = "onnxruntime"

    def __init__(
        self,
        threads: int | None = None,
        config: LatencyConfig = LatencyConfig(),
        data: Dataset | Iterable | None = None,
    ):
        self.threads = threads
        self.config = config
        self.data = _optional_dataset(data)

    def __call__(self, model: ExportedModel) -> Measurement:
        return self.compare({"model": model})["model"]

    def compare(self, models: Mapping[str, ExportedModel]) -> dict[str, Measurement]:
        names = list(models)
        job = MeasureOrtLatency(
            [str(models[n].onnx_path) for n in names],
            self.threads,
            self.config.to_dict(),
            _inputs_file(self.data),
        )
        return _per_model(names, unwrap(run_jobs([job])[0]))


def _optional_dataset(data: Dataset | Iterable | None) -> Dataset | None:
    return data if data is None or isinstance(data, Dataset) else Dataset(data)


def _inputs_file(data: Dataset | None) -> str | None:
    """Where a timing job reads its inputs (None: seeded random ones)."""
    return str(data.inputs_file()) if data is not None else None


def _per_model(names: list[str], result: dict[str, Any]) -> dict[str, Measurement]:
    per_model = result["models"]
    ratios = result.get("ratios_to_first")
    out = {}
    for index, name in enumerate(names):
        measurement = dict(per_model[index])
        measurement.pop("path", None)
        if ratios is not None:
            measurement["ratio_to_first"] = ratios[index]
        out[name] = measurement
    return out
