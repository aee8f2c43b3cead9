"""Torch-side accuracy of the module an exported model came from (for comparing with the deployed IR)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from autocompress.evaluators.artifact import ExportedModel, Measurement
from autocompress.evaluators.metrics import Metric, score
from autocompress.evaluators.runtime import Dataset


def module_logits(module: nn.Module, inputs: np.ndarray, batch_size: int = 250) -> np.ndarray:
    """Outputs of ``module`` in eval mode on ``inputs``, in batches; its train/eval mode is restored.

    The batches run on the device the module is on (a candidate fine-tuning on a GPU is
    checked there); the outputs come back as numpy."""
    was_training = module.training
    module.eval()
    device = next(iter(module.parameters()), torch.empty(0)).device
    try:
        with torch.no_grad():
            return np.concatenate(
                [
                    module(torch.from_numpy(inputs[i : i + batch_size]).to(device)).cpu().numpy()
                    for i in range(0, len(inputs), batch_size)
                ]
            )
    finally:
        module.train(was_training)


class TorchAccuracy:
    """The metric of ``model.module`` in torch, on exactly the arrays OpenVINOAccuracy feeds the IR."""

    name = "torch"

    def __init__(self, data: Dataset, metric: Metric | None = None, batch_size: int = 250):
        self.data = data
        self.metric = metric
        self.batch_size = batch_size

    def __call__(self, model: ExportedModel) -> Measurement:
        if model.module is None:
            raise ValueError(
                "TorchAccuracy needs the torch module: export with autocompress.export, which attaches it"
            )
        logits = module_logits(model.module, self.data.inputs, self.batch_size)
        return {"accuracy": score(self.metric, logits, self.data.targets, "the torch module")}
