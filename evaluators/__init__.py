"""Evaluators: accuracy, latency and size of exported models.

Each evaluator follows the small ``Evaluator`` protocol (autocompress.evaluators.artifact): a ``name``
and ``__call__(ExportedModel) -> dict`` of JSON-serialisable values; none knows who asked.

- OpenVINOAccuracy, OpenVINOLatency, OnnxRuntimeLatency (autocompress.evaluators.runtime): run the
  exported files in a child process (autocompress.evaluators.child -> autocompress.evaluators.runtime_worker).
- TorchAccuracy (autocompress.evaluators.torch_side), ModelSize (autocompress.evaluators.size).

This __init__ stays import-free: ``python -m autocompress.evaluators.runtime_worker`` imports it, and
the worker must never load torch.
"""
