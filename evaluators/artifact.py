"""What evaluators measure: an exported model on disk (plus, optionally, its torch twin)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

Measurement = dict[str, Any]  # JSON-serialisable: numbers, strings, lists, dicts


@dataclasses.dataclass(frozen=True)
class ExportedModel:
    """An exported candidate: ONNX file, static-shape OpenVINO IR, and the torch module it came from.

    ``module`` is optional and only used by torch-side evaluators (torch accuracy, size
    in parameters and bits); runtime evaluators read the files.
    """

    onnx_path: Path
    ir_path: Path  # the .xml; its weights are in the .bin beside it
    input_shape: tuple[int, ...]  # static, with the batch dimension
    module: Any = dataclasses.field(default=None, compare=False, repr=False)

    @property
    def ir_bin_path(self) -> Path:
        return self.ir_path.with_suffix(".bin")

    def to_dict(self) -> dict[str, Any]:
        return {
            "onnx_path": str(self.onnx_path),
            "ir_path": str(self.ir_path),
            "input_shape": list(self.input_shape),
        }


@runtime_checkable
class Evaluator(Protocol):
    """Measures one aspect of an exported model. Knows nothing of who asked or why.

    ``name`` prefixes the measurement keys in reports; ``__call__`` returns plain,
    JSON-serialisable values.
    """

    name: str

    def __call__(self, model: ExportedModel) -> Measurement: ...
