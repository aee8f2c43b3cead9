"""Torch-side accuracy of the module an exported model came from (for comparing with the deployed IR)."""

from __future__ import annotations

import numpy as np
import torch

from autocompress.evaluators.artifact import ExportedModel, Measurement
from autocompress.evaluators.runtime import Dataset, Metric, _finite, _top1


class TorchAccuracy:
    """The metric of ``model.module`` in torch, on exactly the arrays OpenVINOAccuracy feeds the IR."""

    name = "torch"

    def __init__(self, data: Dataset, metric: Metric | None = None, batch_size: int = 250):
        self.data = data
        self.metric = metric or _top1
        self.batch_size = batch_size

    def __call__(self, model: ExportedModel) -> Measurement:
        if model.module is None:
            raise ValueError("TorchAccuracy needs the torch module: export with autocompress.export, which attaches it")
        module = model.module
        was_training = module.training
        module.eval()
        try:
            with torch.no_grad():
                logits = np.concatenate(
                    [
                        module(torch.from_numpy(self.data.inputs[i : i + self.batch_size])).numpy()
                        for i in range(0, len(self.data.inputs), self.batch_size)
                    ]
                )
        finally:
            module.train(was_training)
        return {"accuracy": _finite(self.metric(logits, self.data.targets), "metric")}
