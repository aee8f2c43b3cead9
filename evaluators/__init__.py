"""Evaluators: accuracy, latency and size of exported models.

Each evaluator follows the small ``Evaluator`` protocol (evaluators.artifact): a ``name``
and ``__call__(ExportedModel) -> dict`` of JSON-serialisable values; none knows who asked.

- OpenVINOAccuracy, OpenVINOLatency, OnnxRuntimeLatency (evaluators.runtime): run the
  exported files in a child process (evaluators.child -> evaluators.runtime_worker).
- TorchAccuracy (evaluators.torch_side), ModelSize (evaluators.size).

This __init__ stays import-free: ``python -m evaluators.runtime_worker`` imports it, and
the worker must never load torch.
"""
