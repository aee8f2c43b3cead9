"""Compression policies: plain, versioned, frozen data.

A policy says *what* to do to each layer; the compression core (``autocompress.core``)
says *how*. Policies are validated when built and when loaded from JSON, so a typo or an
out-of-range value is reported with the path of the bad field and the allowed values.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass

POLICY_FORMAT = "autocompress.policy"
POLICY_VERSION = 1

_STRICT = ConfigDict(extra="forbid")

Bits = Annotated[int, Field(ge=1, le=8)]
RangeInit = Literal["minmax", "percentile", "mse"]
Binarization = Literal["xnor", "dorefa", "scale_threshold"]
WEIGHT_BINARIZATIONS = ("xnor", "dorefa")
ACTIVATION_BINARIZATIONS = ("scale_threshold",)


class PolicyError(ValueError):
    """A policy that cannot be built, loaded or applied; the message names the field."""


@dataclass(frozen=True, config=_STRICT)
class TensorQuant:
    """How one tensor (a layer's weights or its input activations) is quantized.

    bits: 1..8, or None to keep the tensor in float. 1 bit needs ``binarize``.
    symmetric: zero point fixed at 0 (activations that are never negative use the
        unsigned range automatically); asymmetric learns an offset.
    per_channel: one scale per output channel (weights) instead of one per tensor.
    range_init: how calibration picks the range: "minmax", "percentile" (clip to the
        given percentile of the observed values) or "mse" (clip that minimises the
        quantization error).
    learn_scale: train the scale during fine-tuning (LSQ for weights, a PACT-style
        learned clipping range for activations).
    binarize: "xnor" (sign times per-filter mean |w|) or "dorefa" (sign times the
        tensor's mean |w|) for weights, "scale_threshold" for activations, as in the
        NNCF paper. Only with bits=1.
    """

    bits: Bits | None = 8
    symmetric: bool = True
    per_channel: bool = False
    range_init: RangeInit = "minmax"
    percentile: Annotated[float, Field(gt=50.0, le=100.0)] = 99.99
    learn_scale: bool = False
    binarize: Binarization | None = None

    def __post_init__(self) -> None:
        if self.bits == 1 and self.binarize is None:
            raise ValueError(
                "bits=1 needs binarize: 'xnor' or 'dorefa' for weights, 'scale_threshold' for activations"
            )
        if self.binarize is not None and self.bits != 1:
            raise ValueError(f"binarize={self.binarize!r} needs bits=1, got bits={self.bits}")

    @property
    def enabled(self) -> bool:
        return self.bits is not None

    def short(self) -> str:
        if self.bits is None:
            return "float"
        if self.binarize:
            return f"binary({self.binarize})"
        parts = [f"{self.bits}b", "sym" if self.symmetric else "asym"]
        parts.append("per-channel" if self.per_channel else "per-tensor")
        parts.append(self.range_init if self.range_init != "percentile" else f"p{self.percentile:g}")
        if self.learn_scale:
            parts.append("learned")
        return " ".join(parts)


DEFAULT_WEIGHTS = TensorQuant(bits=8, symmetric=True, per_channel=True)
DEFAULT_ACTIVATIONS = TensorQuant(bits=8, symmetric=False, per_channel=False)


@dataclass(frozen=True, config=_STRICT)
class LayerQuant:
    """Quantization of one Conv/Linear layer: its weights and its input activations."""

    weights: TensorQuant = DEFAULT_WEIGHTS
    activations: TensorQuant = DEFAULT_ACTIVATIONS

    def __post_init__(self) -> None:
        if self.weights.binarize not in (None, *WEIGHT_BINARIZATIONS):
            raise ValueError(
                f"weights.binarize={self.weights.binarize!r} is for activations; "
                f"weights allow {WEIGHT_BINARIZATIONS}"
            )
        if self.activations.binarize not in (None, *ACTIVATION_BINARIZATIONS):
            raise ValueError(
                f"activations.binarize={self.activations.binarize!r} is for weights; "
                f"activations allow {ACTIVATION_BINARIZATIONS}"
            )

    def short(self) -> str:
        return f"W[{self.weights.short()}] A[{self.activations.short()}]"


Criterion = Literal["l1", "l2", "geometric_median", "bn_scale", "taylor"]
Schedule = Literal["constant", "polynomial", "exponential"]
Fraction = Annotated[float, Field(ge=0.0, lt=1.0)]


@dataclass(frozen=True, config=_STRICT)
class Pruning:
    """Structured pruning: remove a fraction of a layer's output channels, physically.

    Layers coupled through the graph (a residual add, a depthwise conv, a concat) form a
    group that is pruned together, with importance summed over the group; all layers of
    a group must ask for the same ratio.
    criterion: "l1"/"l2" filter norm, "geometric_median" (FPGM: filters closest to the
    others are redundant), "bn_scale" (|gamma| of the following BatchNorm), "taylor"
    (first-order Taylor |w * dL/dw|, needs data).
    """

    ratio: Fraction
    criterion: Criterion = "l1"

    def short(self) -> str:
        return f"prune {self.ratio:.0%} {self.criterion}"


@dataclass(frozen=True, config=_STRICT)
class Sparsity:
    """Unstructured sparsity: zero a fraction of a layer's weights (masks, same shapes).

    method: "magnitude" (smallest |w| zeroed, the level ramped by ``schedule`` during
    fine-tuning) or "l0" (learned hard-concrete gates with an L0 penalty, as the
    regularization-based sparsity of the NNCF paper).
    block: (rows, cols) zeroes whole blocks of a Linear weight by block norm
    (Condensa's BlockPrune); magnitude only.
    OpenVINO runs sparse weights dense on CPU: this buys size, not latency.
    """

    level: Fraction
    method: Literal["magnitude", "l0"] = "magnitude"
    schedule: Schedule = "polynomial"
    block: tuple[Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)]] | None = None

    def __post_init__(self) -> None:
        if self.block is not None and self.method != "magnitude":
            raise ValueError(f"block sparsity needs method='magnitude', got method={self.method!r}")

    def short(self) -> str:
        block = f" block{self.block[0]}x{self.block[1]}" if self.block else ""
        return f"sparse {self.level:.0%} {self.method}{block}"


@dataclass(frozen=True, config=_STRICT)
class LayerPolicy:
    """Everything the policy says about one layer; all None keeps it as it is, in float."""

    quantization: LayerQuant | None = None
    pruning: Pruning | None = None
    sparsity: Sparsity | None = None

    def short(self) -> str:
        parts = [self.quantization.short() if self.quantization else "float"]
        parts += [part.short() for part in (self.pruning, self.sparsity) if part is not None]
        return ", ".join(parts)


@dataclass(frozen=True, config=_STRICT)
class Student:
    """A smaller student network to distill the model into.

    family: a registered student family (autocompress.distillation.student_families());
        "resnet" derives students from the zoo ResNet teacher.
    params: the family's parameters, e.g. {"width": [0.5, 0.5, 0.25], "blocks": [1, 1, 1],
        "kernel_size": 3} for "resnet" (width multipliers per stage, blocks per stage).
    init_from_teacher: copy the teacher's weights where shapes allow, keeping the most
        important filters (L1) — a warm start.
    ensemble: train this many students (different seeds) and export their averaged
        logits as one graph.
    """

    family: str
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    init_from_teacher: bool = True
    ensemble: Annotated[int, Field(ge=1, le=8)] = 1


@dataclass(frozen=True, config=_STRICT)
class Distillation:
    """Knowledge distillation from the original model (the teacher) during fine-tuning.

    loss = alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T))
           + (1 - alpha) * task loss + hint_weight * feature loss
    The feature (hint) loss matches intermediate features through learned 1x1
    projections (FitNets). Used when the policy has a student; ``throughout`` keeps the
    (logit) KD loss in the later stages too (pruning recovery and QAT) instead of
    switching to the task loss; ``always`` also distills into the model itself when
    there is no student (the original model is the teacher of its pruned/quantized copy).
    """

    temperature: Annotated[float, Field(gt=0.0)] = 4.0
    # The labels weigh as much as the teacher: on small data a teacher a point or two above
    # its student still errs where the labels do not. Measured (MNIST-5k, 1000 steps from the
    # teacher's weights, float, drop on validation + test, 2000 images): alpha 0.9 -> 0.5 took
    # the MNIST CNN's half-width student from 0.20 / 0.45 / 0.55 pt to -0.20 / 0.15 / -0.15
    # over three data orders, the depthwise net's two-block student from 0.00 to -0.45 pt and
    # the wide ResNet's half-width two-block one from -0.10 to -0.15 pt.
    alpha: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5
    hint_weight: Annotated[float, Field(ge=0.0)] = 0.0
    throughout: bool = True
    always: bool = False


@dataclass(frozen=True, config=_STRICT)
class Policy:
    """A whole-model compression policy: a default plus per-layer overrides.

    ``pinned`` names layers (or patterns) whose output channels must be kept; the
    model's output layer is always kept.
    ``overrides`` maps a module name (as in ``model.named_modules()``) or an fnmatch
    pattern (``"layer1.*"``) to the LayerPolicy for the layers it matches. An exact
    name wins over patterns; among patterns, the one listed last wins.
    """

    default: LayerPolicy = LayerPolicy()
    overrides: dict[str, LayerPolicy] = dataclasses.field(default_factory=dict)
    pinned: tuple[str, ...] = ()  # layers whose output channels are never pruned
    student: Student | None = None  # distill into this student first, then prune/quantize it
    distillation: Distillation = Distillation()
    format: Literal["autocompress.policy"] = POLICY_FORMAT
    version: Literal[1] = POLICY_VERSION

    # -- construction ---------------------------------------------------------
    @classmethod
    def quantize(
        cls,
        weight_bits: int | None = 8,
        activation_bits: int | None = 8,
        overrides: Mapping[str, LayerPolicy] | None = None,
    ) -> Policy:
        """Uniform WxAy quantization of every Conv/Linear layer (the common case)."""
        quant = LayerQuant(
            weights=dataclasses.replace(DEFAULT_WEIGHTS, bits=weight_bits),
            activations=dataclasses.replace(DEFAULT_ACTIVATIONS, bits=activation_bits),
        )
        return cls(default=LayerPolicy(quantization=quant), overrides=dict(overrides or {}))

    # -- resolution -----------------------------------------------------------
    def for_layer(self, name: str) -> LayerPolicy:
        if name in self.overrides:
            return self.overrides[name]
        chosen = self.default
        for pattern, layer_policy in self.overrides.items():
            if fnmatch.fnmatchcase(name, pattern):
                chosen = layer_policy
        return chosen

    def names(self, layer: str) -> bool:
        """Whether an override (a name or a pattern) covers ``layer``, rather than the default."""
        return layer in self.overrides or any(fnmatch.fnmatchcase(layer, p) for p in self.overrides)

    def resolve(self, layer_names: Iterable[str]) -> dict[str, LayerPolicy]:
        """Per-layer policies for these layers; every override must match one of them."""
        names = list(layer_names)
        for pattern in self.overrides:
            if pattern not in names and not fnmatch.filter(names, pattern):
                raise PolicyError(
                    f"override {pattern!r} matches no compressible layer. "
                    f"Compressible layers: {', '.join(names)}. Use a module name from "
                    "model.named_modules() or an fnmatch pattern such as 'layer1.*'."
                )
        return {name: self.for_layer(name) for name in names}

    # -- serialisation --------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return _ADAPTER.dump_python(self, mode="json")

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Policy:
        """A policy from its JSON form, strictly: "8" or 8.0 is not bits=8, "yes" or 1 not True."""
        if not isinstance(data, Mapping):
            raise PolicyError(f"a policy must be a JSON object, got {type(data).__name__}")
        if data.get("format", POLICY_FORMAT) != POLICY_FORMAT:
            raise PolicyError(
                f"not an autocompress policy: format={data.get('format')!r}, expected {POLICY_FORMAT!r}"
            )
        version = data.get("version", POLICY_VERSION)
        if isinstance(version, bool) or not isinstance(version, int):  # 1.0 or true is not version 1
            raise PolicyError(
                f"version must be an integer (this autocompress reads version {POLICY_VERSION}), "
                f"got {version!r}"
            )
        if version != POLICY_VERSION:
            raise PolicyError(
                f"policy version {version!r} is not supported; this autocompress reads version {POLICY_VERSION}"
            )
        try:
            text = json.dumps(dict(data), allow_nan=False)
        except (TypeError, ValueError, RecursionError) as error:
            raise PolicyError(
                f"a policy holds only JSON values (objects, arrays, strings, finite numbers): {error}"
            ) from None
        try:  # JSON-mode strict validation: no string, float or bool coercion; arrays are fine for tuples
            return _ADAPTER.validate_json(text, strict=True)
        except ValidationError as error:
            raise PolicyError(_explain(error)) from None
        except RecursionError:
            raise PolicyError("the policy is nested too deeply to be a policy") from None

    @classmethod
    def from_json(cls, text: str | bytes) -> Policy:
        try:
            data = json.loads(text, object_pairs_hook=_unique_keys)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise PolicyError(f"policy is not valid JSON: {error}") from None
        except RecursionError:
            raise PolicyError("policy is not valid JSON: nested too deeply") from None
        return cls.from_dict(data)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(self.to_json() + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Policy:
        path = Path(path)
        if not path.is_file():
            raise PolicyError(f"policy file {str(path)!r} does not exist (or is not a file)")
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as error:
            raise PolicyError(f"{path}: not UTF-8 text ({error}); save the policy as UTF-8 JSON") from None
        except OSError as error:
            raise PolicyError(f"{path}: cannot be read ({error.strerror or error})") from None
        try:
            return cls.from_json(text)
        except PolicyError as error:
            raise PolicyError(f"{path}: {error}") from None

    def describe(self, layer_names: Iterable[str] | None = None) -> str:
        """Human-readable summary; with layer names, one line per layer as resolved."""
        lines = [f"Policy v{self.version}"]
        if self.student is not None:
            student = self.student
            params = ", ".join(f"{k}={v}" for k, v in student.params.items())
            ensemble = f" x{student.ensemble}" if student.ensemble > 1 else ""
            lines.append(
                f"  student: {student.family}({params}){ensemble}, "
                f"KD T={self.distillation.temperature:g} alpha={self.distillation.alpha:g}"
            )
        if self.pinned:
            lines.append(f"  pinned: {', '.join(self.pinned)}")
        lines.append(f"  default: {self.default.short()}")
        if layer_names is None:
            lines += [f"  {pattern}: {lp.short()}" for pattern, lp in self.overrides.items()]
        else:
            resolved = self.resolve(layer_names)
            width = max((len(n) for n in resolved), default=0)
            lines += [f"  {name:<{width}}  {lp.short()}" for name, lp in resolved.items()]
        return "\n".join(lines)


_ADAPTER = TypeAdapter(Policy)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object's keys, each once: with a repeated key, which value was meant is unknown."""
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise PolicyError(f"policy is not valid: the key {key!r} appears twice in one object")
        seen[key] = value
    return seen


def _explain(error: ValidationError) -> str:
    """One line per problem: the dotted path of the field, what was wrong, what is allowed."""
    lines = []
    for problem in error.errors():
        location = ".".join(str(part) for part in problem["loc"] if part not in ("function-after",))
        message = problem["msg"].removeprefix("Value error, ")
        if problem["type"] == "unexpected_keyword_argument":
            message = (
                "unknown field (check the spelling; see autocompress.policies.schema for the allowed fields)"
            )
        value = problem.get("input")
        shown = f" (got {value!r})" if value is not None and not isinstance(value, Mapping) else ""
        lines.append(f"{location or '<policy>'}: {message}{shown}")
    return "invalid policy:\n  " + "\n  ".join(lines)
