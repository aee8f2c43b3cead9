"""Hardware-aware proposals: measured per-layer latency, quick sensitivities, a knapsack solve.

Learns from HALP (latency-aware structured pruning by a knapsack over measured layer
latencies), HAWQ-V3 (per-layer precision by an integer program under a budget) and
AMC/HAQ (hardware feedback in the loop), but measures where they assume:

1. **Profile** (``profile_variants``). The model is exported as a few variants (FP32 at the
   target's precision hint, INT8 everywhere, uniform pruning, each sub-8-bit value the space
   offers) and OpenVINO's per-node profiling (PERF_COUNT) times every executed kernel on the
   target; each kernel maps back to its torch layer through the ONNX node names that
   OpenVINO keeps in ``originalLayersNames``. Every variant's latency ratio to the baseline
   is also measured the way trials are (alternating rounds, profiling off).
2. **Latency model** (``LatencyModel``): per layer and precision, microseconds as a
   piecewise-linear function of the kept fraction of its channels, through the profiled
   widths; a layer pruned on both sides (input and output by different groups) costs the
   geometric mean of that function at each side's fraction. Kernels that are no layer's
   (pooling, reorders, quantize steps) are charged to the next layer in execution order.
   One factor for the float layers, one for the quantized ones, the cost of a float <->
   quantized change between two layers and the time outside the kernels (a share of the
   baseline's latency) are then fitted to the measured latency ratios of the
   variants, and refitted with every measured trial (``calibrate``); ``report`` gives the
   median error and the share of candidates within +-10%.
3. **Sensitivities** (``measure_sensitivities``), without fine-tuning, in torch on a
   subsample of the validation data: per pruning group, its channels masked at a few
   ratios with BatchNorm statistics re-estimated; per layer, that layer alone in INT8.
4. **Proposals** (``propose``): an integer program (scipy's HiGHS) chooses a ratio per
   group (the space's grid) and INT8 or float per layer for the lowest predicted latency
   under a predicted drop budget, at several budgets. The predicted drop is the SUM of the
   per-group and per-layer drops: an additive approximation (interactions ignored), scaled
   by what the real, fine-tuned trials showed (``HardwarePlan.update_from_trials``).
5. **Fitted space** (``fit_space``): for latency objectives, the bit-widths that measured no
   faster than INT8 on the target are left out of the space, with the measured ratios as
   the reason.

``plan`` runs all of it and caches the profiles and sensitivities in its workdir, so a
resumed search does not redo them.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import functools
import hashlib
import itertools
import json
import logging
import math
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from autocompress.core import CompressedModel, Finetune, apply_policy
from autocompress.devices import Accelerator, placed, to_device
from autocompress.evaluators.child import MeasureLatency, ProfileLayers, run_jobs, unwrap
from autocompress.evaluators.metrics import Metric, score, to_jsonable
from autocompress.evaluators.runtime import Dataset
from autocompress.evaluators.target import LatencyConfig, Target
from autocompress.evaluators.torch_side import module_logits
from autocompress.export import export_onnx
from autocompress.graph import COMPRESSIBLE, ModelError, trace
from autocompress.policies import LayerPolicy, LayerQuant, Policy
from autocompress.pruning import masked_twin, pruning_groups, removed_channels
from autocompress.search.confirm import selection_drop
from autocompress.search_spaces import Dimension, SearchSpace
from autocompress.search_spaces.knobs import start_point, student_shape

__all__ = [
    "HardwarePlan",
    "LatencyModel",
    "LatencyReport",
    "LayerShape",
    "Observation",
    "Profile",
    "Proposal",
    "Sensitivities",
    "Structure",
    "UnpredictableError",
    "Variant",
    "fit_space",
    "layout",
    "measure_sensitivities",
    "plan",
    "precision_class",
    "profile_variants",
    "propose",
    "uniform_variants",
]

log = logging.getLogger(__name__)

# 2: kept input and output fractions per layer; 3: kernels charged per inference; 4: timed on the data
CACHE_VERSION = 4
# Variants are timed against the baseline the way trials are (search.trial.TRIAL_LATENCY).
VARIANT_LATENCY = LatencyConfig(warmup_iterations=5, rounds=5, min_iterations=5, min_seconds=0.1)
# Drop budgets, in allowed drops. Without fine-tuning a drop is overstated many times over:
# the zoo ResNet-20 (MNIST) with every group pruned at 0.5 lost 53 points (the per-group sum
# said 19) and holds 1 point after one epoch. Until trials measure the scale, the budgets
# span that range geometrically.
DROP_MULTIPLES = (0.5, 2.0, 8.0, 32.0)
SENSITIVITY_RATIOS = (0.25, 0.5, 0.75)
NO_FASTER = 0.03  # a value must be at least 3% faster than the one it replaces to stay
FLOAT, INT8, MIXED = "float", "int8", "mixed"
_CONV_OPS = {"Conv", "ConvTranspose"}
_LINEAR_OPS = {"Gemm", "MatMul"}


# ============================================================================ structure


@dataclasses.dataclass(frozen=True)
class LayerShape:
    """One compressible layer as the latency model sees it: channels, which prunable groups
    shrink its outputs (``out_group``) and its inputs (``in_groups``), and the compressible
    layers whose outputs reach its input through other operations (``producers``: where a
    precision change between two layers costs a conversion) and the elements of its input
    for one sample (``input_elements``: what such a conversion converts; 0 when unknown)."""

    name: str
    cin: int
    cout: int
    depthwise: bool = False
    out_group: str | None = None
    in_groups: tuple[str, ...] = ()
    producers: tuple[str, ...] = ()
    input_elements: int = 0

    @property
    def both_sides(self) -> bool:
        """Its input and its output channels are pruned by different groups, so they can
        differ: its cost is then a function of both (``LatencyModel.layer_us``)."""
        return bool(self.out_group and self.in_groups and not self.depthwise)


@dataclasses.dataclass(frozen=True)
class Structure:
    """The model's compressible layers and prunable groups (channels per group)."""

    layers: tuple[LayerShape, ...]
    group_channels: dict[str, int]
    group_units: dict[str, int] = dataclasses.field(default_factory=dict)  # PruneGroup.unit, when > 1

    @classmethod
    def from_model(
        cls, model: nn.Module, example_input: torch.Tensor, pinned: Iterable[str] = ()
    ) -> Structure:
        groups = [g for g in pruning_groups(model, example_input, tuple(pinned)) if g.prunable]
        out_group = {layer: g.name for g in groups for layer in g.layers}
        in_groups: dict[str, list[str]] = {}
        for g in groups:
            for consumer in g.consumers:
                in_groups.setdefault(consumer, []).append(g.name)
        producers = _producers(model)
        elements = _input_elements(model, example_input)
        shapes = []
        for name, module in model.named_modules():
            if not isinstance(module, COMPRESSIBLE):
                continue
            cin, cout = _channels(module)
            depthwise = isinstance(module, nn.modules.conv._ConvNd) and module.groups == cin == cout > 1
            shapes.append(
                LayerShape(
                    name,
                    cin,
                    cout,
                    depthwise,
                    out_group.get(name),
                    tuple(in_groups.get(name, ())),
                    producers.get(name, ()),
                    elements.get(name, 0),
                )
            )
        return cls(
            tuple(shapes),
            {g.name: g.channels for g in groups},
            {g.name: g.unit for g in groups if g.unit > 1},
        )

    def edge_weight(self, layer: LayerShape) -> float:
        """A precision change at this layer's input, relative to one at an average layer's:
        its input's elements over the mean (1 when they are unknown). A conversion (a
        quantize or dequantize step, a reorder) is elementwise: on the MNIST CNN one at the
        first conv's output moves 392 times the elements of one at the classifier. On the 282
        replayed trials of ``LayerFit``, weighting the edges took the share within +-10%
        from 84% to 85% (85% to 87% with ``predict_config``'s recall)."""
        mean = self._mean_input_elements
        return layer.input_elements / mean if mean and layer.input_elements > 0 else 1.0

    @functools.cached_property
    def _mean_input_elements(self) -> float | None:
        """None unless every layer's input elements are known."""
        known = [s.input_elements for s in self.layers if s.input_elements > 0]
        return sum(known) / len(known) if known and len(known) == len(self.layers) else None

    def changes_at(self, layer: LayerShape, classes: Mapping[str, str]) -> tuple[float, float]:
        """Precision changes on the edges into this layer: (float -> quantized, a quantize
        step; quantized -> float, a dequantize step), weighted by the elements they convert
        (``edge_weight``)."""
        integer = _integer(classes.get(layer.name, FLOAT))
        changed = sum(_integer(classes.get(p, FLOAT)) != integer for p in layer.producers)
        weighted = self.edge_weight(layer) * changed if changed else 0.0
        return (weighted, 0.0) if integer else (0.0, weighted)

    def transitions(self, classes: Mapping[str, str]) -> tuple[float, float]:
        """The model's precision changes (``changes_at``, summed over its layers)."""
        to_integer = to_float = 0.0
        for s in self.layers:
            q, d = self.changes_at(s, classes)
            to_integer, to_float = to_integer + q, to_float + d
        return to_integer, to_float

    def removed(self, group: str, ratio: float) -> int:
        """Channels pruning removes from ``group`` at ``ratio`` (as PruneGroup.removed)."""
        return removed_channels(self.group_channels[group], self.group_units.get(group, 1), ratio)

    def kept(self, layer: LayerShape, ratios: Mapping[str, float]) -> Kept:
        """The fractions of the layer's input and output channels that pruning at ``ratios``
        keeps (a depthwise conv's input is its output group)."""
        cout = layer.cout - (
            self.removed(layer.out_group, ratios.get(layer.out_group, 0.0)) if layer.out_group else 0
        )
        if layer.depthwise:
            return (cout / layer.cout, cout / layer.cout)
        cin = layer.cin - sum(self.removed(g, ratios.get(g, 0.0)) for g in layer.in_groups)
        return (cin / layer.cin, cout / layer.cout)

    def to_dict(self) -> dict[str, Any]:
        return {
            "layers": [dataclasses.asdict(s) for s in self.layers],
            "group_channels": self.group_channels,
            "group_units": self.group_units,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Structure:
        layers = tuple(
            LayerShape(
                **{**s, "in_groups": tuple(s["in_groups"]), "producers": tuple(s.get("producers", ()))}
            )
            for s in data["layers"]
        )
        return cls(layers, dict(data["group_channels"]), dict(data.get("group_units", {})))


Kept = tuple[float, float]  # kept fractions of a layer's input and output channels


def layout(
    space: SearchSpace, structure: Structure, params: Mapping[str, Any]
) -> tuple[dict[str, float], dict[str, str]]:
    """A point's pruning ratio per group and precision class per layer."""
    policy = space.policy(params)
    if policy.student is not None:
        raise UnpredictableError("a point with a student: its layers are not the profiled model's")
    layers = policy.resolve([s.name for s in structure.layers])
    ratios: dict[str, float] = {}
    for shape in structure.layers:
        pruning = layers[shape.name].pruning
        if shape.out_group and pruning is not None:
            ratios.setdefault(shape.out_group, float(pruning.ratio))
    return ratios, {name: precision_class(lp) for name, lp in layers.items()}


class UnpredictableError(ValueError):
    """A point the predictors cannot judge (a student: other layers than the profiled model's)."""


def _producers(model: nn.Module) -> dict[str, tuple[str, ...]]:
    """Compressible layer -> the compressible layers whose outputs make its input, from a
    torch.fx trace: walking back through activations, pooling and reshapes, and through at
    most one merge (a residual add, a concat), whose other operands are the earlier blocks'
    outputs that OpenVINO fuses into the layer feeding the merge. {} when the model does
    not trace (then no precision change is ever charged)."""
    try:
        graph = trace(model).graph
    except ModelError:
        return {}
    modules = dict(model.named_modules())
    layer_nodes = {
        n for n in graph.nodes if n.op == "call_module" and isinstance(modules.get(n.target), COMPRESSIBLE)
    }

    def inputs(node: Any) -> list[Any]:
        return [n for n in node.all_input_nodes if n.op != "get_attr"]

    found: dict[str, tuple[str, ...]] = {}
    for node in layer_nodes:
        seen, reached = set(), set()
        stack = [(n, 0) for n in inputs(node)]
        while stack:
            current, merges = stack.pop()
            if current in seen:
                continue
            seen.add(current)
            if current in layer_nodes:
                reached.add(current.target)
                continue
            upstream = inputs(current)
            if len(upstream) > 1:
                if merges:
                    continue  # an earlier block's merge: fused upstream, not this layer's input
                merges += 1
            stack.extend((n, merges) for n in upstream)
        found[node.target] = tuple(sorted(reached))
    return found


def _on_layer_calls(
    module: nn.Module, example_input: torch.Tensor, on_call: Callable[[str, tuple[Any, ...]], None]
) -> None:
    """One forward pass of the example in eval mode, calling ``on_call(layer name, its
    positional inputs)`` before every compressible layer runs (repeats included); the
    module's train/eval mode is restored after."""
    handles = [
        m.register_forward_pre_hook(lambda _m, args, name=name: on_call(name, args))
        for name, m in module.named_modules()
        if isinstance(m, COMPRESSIBLE)
    ]
    was_training = module.training
    try:
        with torch.no_grad():
            module.eval()(example_input)
    finally:
        for handle in handles:
            handle.remove()
        module.train(was_training)


def _input_elements(model: nn.Module, example_input: torch.Tensor) -> dict[str, int]:
    """Compressible layer -> the elements of its (first) input for one sample, from one
    forward pass on the example."""
    sizes: dict[str, int] = {}
    batch = example_input.shape[0] if isinstance(example_input, torch.Tensor) and example_input.dim() else 1

    def record(name: str, args: tuple[Any, ...]) -> None:
        first = next((a for a in args if isinstance(a, torch.Tensor)), None)
        if first is not None:
            sizes.setdefault(name, max(1, first.numel() // max(1, batch)))

    _on_layer_calls(model, example_input, record)
    return sizes


def _channels(module: nn.Module) -> tuple[int, int]:
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    return module.in_channels, module.out_channels


def _kept_of_module(module: nn.Module, original: LayerShape) -> Kept:
    """The kept input and output fractions of a (possibly pruned) layer, read from its shape."""
    cin, cout = _channels(module)
    return (cin / original.cin, cout / original.cout)


def precision_class(layer_policy: LayerPolicy) -> str:
    """ "float", "int8", "w<bits>a<bits>" for other bit-widths, "w<bits>af" / "wfa<bits>" for
    a layer with one side in float."""
    quant = layer_policy.quantization
    if quant is None:
        return FLOAT
    return _class_of_bits(
        quant.weights.bits if quant.weights.enabled else None,
        quant.activations.bits if quant.activations.enabled else None,
    )


def _class_of_bits(weight_bits: int | None, activation_bits: int | None) -> str:
    if weight_bits is None and activation_bits is None:
        return FLOAT
    if (weight_bits, activation_bits) == (8, 8):
        return INT8
    return f"w{weight_bits or 'f'}a{activation_bits or 'f'}"


def _integer(cls_: str) -> bool:
    """Both sides quantized: the layer runs on integer kernels (or would, at 8 bits)."""
    return cls_ != FLOAT and "f" not in cls_


# ============================================================================ variants + profiling


@dataclasses.dataclass(frozen=True)
class Variant:
    """A variant to profile: uniform (every group pruned at ``ratio``, every layer at these
    bits, None: float), or a point of the space (``params``; e.g. to check the latency model
    on points it was not fitted on)."""

    name: str
    ratio: float = 0.0
    weight_bits: int | None = None
    activation_bits: int | None = None
    params: dict[str, Any] | None = None
    float_layers: tuple[str, ...] = ()  # layers left in float in an otherwise quantized variant

    @property
    def precision(self) -> str:
        """The uniform precision class; "mixed" for a point of the space."""
        if self.params is not None or self.float_layers:
            return MIXED
        return _class_of_bits(self.weight_bits, self.activation_bits)

    def policy(self, space: SearchSpace, structure: Structure) -> Policy:
        """The policy: the point's, or a uniform one built the way a space builds its points
        (on its base; knobs applied in registry order; the most common layer policy as the
        default, so that residual adds are quantized with an INT8 default, as core does)."""
        if self.params is not None:
            return space.policy(self.params)
        return self.uniform_policy(space.base, structure)

    def uniform_policy(self, base: Policy, structure: Structure) -> Policy:
        groups = {
            g: tuple(s.name for s in structure.layers if s.out_group == g) for g in structure.group_channels
        }
        dims = [
            Dimension("weight_bits", choices=(self.weight_bits,)),
            Dimension("activation_bits", choices=(self.activation_bits,)),
        ]
        values: dict[str, Any] = {"weight_bits": self.weight_bits, "activation_bits": self.activation_bits}
        if groups:
            dims.append(Dimension("pruning_ratio", low=self.ratio, high=self.ratio))
            values["pruning_ratio"] = self.ratio
        helper = SearchSpace(
            dimensions=tuple(dims),
            layers=tuple(s.name for s in structure.layers),
            groups=groups,
            base=dataclasses.replace(base, student=None),
        )
        policy = helper.policy(values)
        floats = {
            layer: dataclasses.replace(policy.for_layer(layer), quantization=None)
            for layer in self.float_layers
        }
        return dataclasses.replace(policy, overrides={**policy.overrides, **floats}) if floats else policy


def uniform_variants(space: SearchSpace, prune_ratios: Sequence[float] = (0.25, 0.5, 0.75)) -> list[Variant]:
    """FP32 (the baseline, first), INT8, INT8 with every other layer in float and with the
    first and last in float (when the space sets precision per layer), each pruning ratio
    in float and in INT8, one variant per sub-8-bit value the space searches (W<v>A8,
    W8A<v>: the evidence ``fit_space`` needs),
    and weights-only and activations-only INT8 when the space can leave either side float."""
    variants = [Variant("fp32"), Variant("int8", 0.0, 8, 8)]
    if any(d.knob in ("weight_bits", "activation_bits", "keep_float") and d.layers for d in space.searched):
        # Every other layer in float: what a precision change between layers costs.
        variants.append(Variant("int8-alternate", 0.0, 8, 8, float_layers=tuple(space.layers[1::2])))
        if len(space.layers) > 2:
            # The first and last layers in float, the rest INT8: the configuration an engineer
            # tries first and the keep-float sensitivities often propose. Its few conversions
            # show against fast INT8 layers, where every other layer in float buries them.
            ends = (space.layers[0], space.layers[-1])
            variants.append(Variant("int8-ends", 0.0, 8, 8, float_layers=ends))
    for ratio in prune_ratios:
        variants += [Variant(f"prune{ratio:g}", ratio), Variant(f"prune{ratio:g}-int8", ratio, 8, 8)]
    offered = {
        knob: {c for d in space.searched if d.knob == knob for c in (d.choices or ())}
        for knob in ("weight_bits", "activation_bits")
    }
    variants += [
        Variant(f"w{v}a8", 0.0, v, 8) for v in sorted(v for v in offered["weight_bits"] - {None} if v < 8)
    ]
    variants += [
        Variant(f"w8a{v}", 0.0, 8, v) for v in sorted(v for v in offered["activation_bits"] - {None} if v < 8)
    ]
    if None in offered["weight_bits"] and None in offered["activation_bits"]:
        variants += [Variant("w8af", 0.0, 8, None), Variant("wfa8", 0.0, None, 8)]
    return variants


@dataclasses.dataclass(frozen=True)
class Profile:
    """One profiled variant: microseconds per torch layer (unmapped kernels charged to the
    next layer), each layer's kept input and output fractions and precision, and its
    measured latency."""

    name: str
    precision: str  # the variant's uniform precision class
    ratio: float
    layer_us: dict[str, float]
    kept: dict[str, Kept]
    classes: dict[str, str]
    total_us: float  # sum of every executed kernel's time
    direct_us: float  # the part in kernels that map to a layer directly
    mapped_layers: int
    latency_ms: float  # alternating rounds with the baseline, profiling off
    latency_ratio: float
    kernels: tuple[dict[str, Any], ...] = dataclasses.field(default=(), repr=False)

    @property
    def coverage(self) -> float:
        """Share of the profiled time in kernels mapped to a layer directly."""
        return self.direct_us / self.total_us if self.total_us > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Profile:
        return cls(
            **{
                **data,
                "kept": {layer: tuple(k) for layer, k in data["kept"].items()},
                "kernels": tuple(data.get("kernels", ())),
            }
        )


def _model_fingerprint(model: nn.Module) -> str:
    digest = hashlib.sha256(type(model).__qualname__.encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(to_jsonable(parts), sort_keys=True).encode()).hexdigest()[:16]


def _call_order(module: nn.Module, example_input: torch.Tensor) -> list[str]:
    """Compressible layers in the order a forward pass calls them (repeats included)."""
    calls: list[str] = []
    _on_layer_calls(module, example_input, lambda name, _args: calls.append(name))
    return calls


def _onnx_layer_keys(onnx_path: Path, module: nn.Module, example_input: torch.Tensor) -> dict[str, str]:
    """ONNX names (node names and their outputs' names, which OpenVINO uses for a graph
    output) -> the torch layer each Conv/Gemm/MatMul node computes.

    The exporter emits nodes in call order, so the k-th compute node is the k-th compressible
    layer call; the node kinds must agree (Conv with a conv, Gemm/MatMul with a Linear).
    Scope names alone do not do: a traced (compressed) module's scopes are flattened
    ("/conv1_3/Conv" for layer1.2.conv1)."""
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    nodes = [n for n in graph.node if n.op_type in _CONV_OPS or n.op_type in _LINEAR_OPS]
    calls = _call_order(module, example_input)
    modules = dict(module.named_modules())
    if len(nodes) != len(calls):
        log.warning(
            "latency profile: %d compute nodes in the ONNX graph for %d layer calls; layers left unmapped",
            len(nodes),
            len(calls),
        )
        return {}
    keys: dict[str, str] = {}
    for node, layer in zip(nodes, calls):
        is_linear = isinstance(modules[layer], nn.Linear)
        if is_linear != (node.op_type in _LINEAR_OPS):
            log.warning("latency profile: ONNX node %s (%s) is not layer %s", node.name, node.op_type, layer)
            return {}
        for name in (node.name, *node.output):
            if name:
                keys[name] = layer
    return keys


def _attribute(nodes: list[dict[str, Any]], keys: Mapping[str, str]) -> tuple[dict[str, float], float]:
    """Microseconds per layer: a kernel whose fused original names include a layer's ONNX
    node (or a name under it, "/conv1/Conv/WithoutBiases") is that layer's; other kernels
    (pooling, reorders, standalone quantize steps) are charged to the next layer in
    execution order (the last ones to the previous layer). Also returns the direct part."""

    def owner(node: dict[str, Any]) -> str | None:
        for original in node["original_names"]:
            name = original
            while name:
                if name in keys:
                    return keys[name]
                name = name.rpartition("/")[0]
        return None

    owners = [owner(n) for n in nodes]
    per_layer: dict[str, float] = {}
    direct = 0.0
    pending = 0.0
    last = None
    for node, layer in zip(nodes, owners):
        if layer is None:
            pending += node["mean_us"]
            continue
        direct += node["mean_us"]
        per_layer[layer] = per_layer.get(layer, 0.0) + node["mean_us"] + pending
        pending, last = 0.0, layer
    if pending and last is not None:
        per_layer[last] += pending
    return per_layer, direct


def profile_variants(
    model: nn.Module,
    space: SearchSpace,
    variants: Sequence[Variant],
    *,
    structure: Structure,
    calibration: Sequence[Any],
    example_input: torch.Tensor,
    target: Target = Target(),
    workdir: str | Path,
    iterations: int = 200,
    latency: LatencyConfig = VARIANT_LATENCY,
) -> dict[str, Profile]:
    """Compress (no fine-tuning), export and profile each variant on the target; the first
    variant is the baseline its latency ratios are measured against. Profiles are cached in
    ``workdir``/profiles by model, variant, target and settings."""
    if not variants:
        raise ValueError("profile_variants needs at least one variant (the baseline first)")
    workdir = Path(workdir)
    (workdir / "profiles").mkdir(parents=True, exist_ok=True)
    fingerprint = _model_fingerprint(model)
    shape = (target.batch, *example_input.shape[1:])
    keys = {
        v.name: _key(
            CACHE_VERSION,
            fingerprint,
            v.policy(space, structure).to_dict(),
            target.to_dict(),
            shape,
            iterations,
        )
        for v in variants
    }
    profiles: dict[str, Profile] = {}
    for v in variants:
        path = workdir / "profiles" / f"{v.name}.json"
        if path.is_file():
            with contextlib.suppress(ValueError, KeyError, TypeError):
                data = json.loads(path.read_text())
                if data.get("key") == keys[v.name]:
                    profiles[v.name] = Profile.from_dict(data["profile"])
    missing = [v for v in variants if v.name not in profiles]
    if not missing:
        return {v.name: profiles[v.name] for v in variants}
    todo = [variants[0], *[v for v in missing if v is not variants[0]]]  # always timed against the baseline
    tmp = Path(tempfile.mkdtemp(prefix="profile-", dir=workdir))
    try:
        exported = []
        pruned: dict[float, nn.Module] = {}  # one pruning per ratio, quantized or not after it
        for v in todo:
            source, variant = model, v
            if v.params is None and v.ratio > 0 and v.precision != FLOAT:
                if v.ratio not in pruned:
                    pruned[v.ratio] = _compress(
                        model, Variant("", v.ratio), space, structure, calibration
                    ).module
                source, variant = pruned[v.ratio], dataclasses.replace(v, ratio=0.0)
            compressed = _compress(source, variant, space, structure, calibration)
            module = compressed.module
            if v.params is None and v.ratio > 0 and v.precision == FLOAT:
                pruned.setdefault(v.ratio, module)
            onnx_path = tmp / f"{v.name}.onnx"
            export_onnx(module, shape, onnx_path)
            modules = dict(module.named_modules())
            kept = {
                s.name: _kept_of_module(modules[s.name], s) for s in structure.layers if s.name in modules
            }
            classes = {name: precision_class(lp) for name, lp in compressed.layers.items()}
            keys_of = _onnx_layer_keys(onnx_path, module, example_input[:1])
            exported.append((v, onnx_path, keys_of, kept, classes))
        # OpenVINO reads the ONNX files directly: it compiles them to the same kernels and
        # precisions as the converted IRs the trials measure (checked for FP32 and INT8), and
        # conversion would cost 0.5-1.3 s a variant.
        paths = [str(p) for _, p, *_ in exported]
        inputs = _timing_inputs(calibration, shape, tmp)
        jobs = [ProfileLayers(paths, target.to_dict(), iterations, rounds=3, inputs_npy=inputs)]
        jobs.append(MeasureLatency(paths, target.to_dict(), latency.to_dict(), inputs))
        layer_profiles, timing = (unwrap(r) for r in run_jobs(jobs, timeout=600, workdir=workdir))
        layer_profiles = layer_profiles["models"]
        for index, (v, _, keys_of, kept, classes) in enumerate(exported):
            nodes = layer_profiles[index]["nodes"]
            layer_us, direct = _attribute(nodes, keys_of)
            profile = Profile(
                name=v.name,
                precision=v.precision,
                ratio=v.ratio,
                layer_us=layer_us,
                kept=kept,
                classes=classes,
                total_us=float(layer_profiles[index]["total_us"]),
                direct_us=direct,
                mapped_layers=len(layer_us),
                latency_ms=float(timing["models"][index]["median_ms"]),
                latency_ratio=float(timing["ratios_to_first"][index]),
                kernels=tuple(
                    {k: n[k] for k in ("name", "node_type", "exec_type", "runtime_precision", "mean_us")}
                    for n in nodes
                ),
            )
            if v.name not in profiles or v is not variants[0]:
                profiles[v.name] = profile
                _write_json(
                    workdir / "profiles" / f"{v.name}.json",
                    {"key": keys[v.name], "profile": profile.to_dict()},
                )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {v.name: profiles[v.name] for v in variants}


# Students: the predictors see the model's own layers only, so each offered student is timed
# as a whole instead (latency does not depend on the weights: no distillation needed).
STUDENT_PRUNE_RATIOS = (0.0, 0.25, 0.5)
STUDENT_KNOBS = ("student_width", "student_blocks")


@dataclasses.dataclass(frozen=True)
class StudentTiming:
    """A student point of the space (the student start's precision, every group pruned at
    ``ratio``) and its latency ratio to the baseline, measured on the target untrained."""

    params: dict[str, Any]
    ratio: float
    latency_ratio: float

    @property
    def label(self) -> str:
        shape = student_shape(self.params.get("student_width"), self.params.get("student_blocks"))
        return f"{shape} pruned {self.ratio:g}"

    def to_dict(self) -> dict[str, Any]:
        return {"student": self.label, "latency_ratio": self.latency_ratio}


def student_points(
    space: SearchSpace, prune_ratios: Sequence[float] = STUDENT_PRUNE_RATIOS
) -> list[tuple[dict[str, Any], float]]:
    """(point, pruning ratio) for every offered student shape at each ratio: the space's
    student start point (its precision, usually uniform INT8) with the shape's width and
    depth and every searched pruning ratio set to the ratio (clipped into the dimension's
    range). [] when the space starts no student."""
    start = next((p for p in space.start_points if p.get("student") is True), None)
    if start is None:
        return []
    searched = {d.name: d for d in space.searched}
    names = [k for k in STUDENT_KNOBS if k in searched and searched[k].choices]
    shapes = [searched[k].choices for k in names]
    ratio_dims = [d for d in space.searched if d.knob == "pruning_ratio" and d.choices is None]
    out: list[tuple[dict[str, Any], float]] = []
    for shape in itertools.product(*shapes):
        for ratio in prune_ratios if ratio_dims else (0.0,):
            point = {**start, **dict(zip(names, shape))}
            point.update({d.name: min(max(ratio, d.low), d.high) for d in ratio_dims})
            if all(point != p for p, _ in out):
                out.append((point, ratio))
    return out


def time_students(
    model: nn.Module,
    space: SearchSpace,
    points: Sequence[tuple[dict[str, Any], float]],
    *,
    calibration: Sequence[Any],
    example_input: torch.Tensor,
    target: Target = Target(),
    workdir: str | Path,
    latency: LatencyConfig = VARIANT_LATENCY,
) -> tuple[StudentTiming, ...]:
    """Build each student point without training, export it, and time it against the
    baseline in alternating rounds (the way trials are timed). A point that cannot be built
    is left out. Cached in ``workdir``/students.json by model, points, target and settings."""
    if not points:
        return ()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    shape = (target.batch, *example_input.shape[1:])
    policies = [space.policy(p).to_dict() for p, _ in points]
    key = _key(CACHE_VERSION, _model_fingerprint(model), policies, target.to_dict(), shape, latency.to_dict())
    cache = workdir / "students.json"
    if cache.is_file():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            data = json.loads(cache.read_text())
            if data.get("key") == key:
                return tuple(
                    StudentTiming(dict(t["params"]), float(t["ratio"]), float(t["latency_ratio"]))
                    for t in data["timings"]
                )
    tmp = Path(tempfile.mkdtemp(prefix="students-", dir=workdir))
    try:
        baseline = tmp / "baseline.onnx"
        export_onnx(model, shape, baseline)
        paths, built = [str(baseline)], []
        for index, (point, ratio) in enumerate(points):
            try:
                policy = space.policy(point)
                module = apply_policy(
                    model, policy, calibration, finetune=None, calibration_batches=len(calibration)
                ).module
                export_onnx(module, shape, tmp / f"student{index}.onnx")
            except Exception as error:  # one student the family cannot build costs that student only
                log.warning("student %s left out of the timings: %s: %s", point, type(error).__name__, error)
                continue
            paths.append(str(tmp / f"student{index}.onnx"))
            built.append((point, ratio))
        inputs = _timing_inputs(calibration, shape, tmp)
        (timing,) = (
            unwrap(r)
            for r in run_jobs(
                [MeasureLatency(paths, target.to_dict(), latency.to_dict(), inputs)],
                timeout=600,
                workdir=workdir,
            )
        )
        ratios = timing["ratios_to_first"][1:]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    timings = tuple(StudentTiming(p, r, float(x)) for (p, r), x in zip(built, ratios))
    _write_json(cache, {"key": key, "timings": [dataclasses.asdict(t) for t in timings]})
    return timings


def _timing_inputs(calibration: Sequence[Any], shape: tuple[int, ...], directory: Path) -> str | None:
    """The calibration inputs saved as ``directory``/inputs.npy, so that the target times the
    models on the data, as the trials are timed; None (random inputs) when they are not one
    array of the exported shape."""
    data = _inputs_of(calibration)
    if data is None or tuple(data.shape[1:]) != tuple(shape[1:]):
        return None
    path = str(directory / "inputs.npy")
    np.save(path, data)
    return path


def _inputs_of(batches: Sequence[Any]) -> np.ndarray | None:
    """The loader batches' inputs as one float32 array (the first of a tuple batch), or None
    when they are not tensors or arrays (a dict of inputs, say)."""
    arrays = []
    for batch in batches:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
        if not isinstance(x, np.ndarray) or not np.issubdtype(x.dtype, np.number):
            return None
        arrays.append(x.astype(np.float32))
    return np.concatenate(arrays) if arrays else None


def _compress(
    model: nn.Module, variant: Variant, space: SearchSpace, structure: Structure, calibration: Sequence[Any]
) -> CompressedModel:
    """The variant compressed without fine-tuning (latency does not depend on the weights'
    values, so one small calibration batch does)."""
    policy = variant.policy(space, structure)
    return apply_policy(model, policy, calibration, finetune=None, calibration_batches=len(calibration))


# ============================================================================ latency model


@dataclasses.dataclass(frozen=True)
class LayerFit:
    """Microseconds of one layer at one precision, a step function of the kept fraction of
    its channels: at a width between two profiled ones, the time of the wider one (flat
    beyond them). Not one line: a kernel's cost is not linear in its channels on this CPU
    (on the zoo ResNet-20 a line through the profiled widths missed held-out points by
    13-15%, median). Not interpolated either: kernels work in blocks of channels, and a
    partly filled block costs a full one (on an AMX Xeon the wide ResNet's INT8 convs took
    13.6 us with 24 of 32 channels, 14.2 us with 32 and 3.3 us with 16). On 282 replayed
    trials of 33 saved searches, each predicted before its refit, the step took the share
    within +-10% from 80% (linear interpolation) to 84%, the median error from 4.3% to 4.0%.

    ``kept``: the fraction on the side(s) that pruning changes: the output for a first layer
    or a depthwise conv, the input for a last one, and for a layer pruned on both sides the
    geometric mean of the two, which the uniform profiles change together (see
    ``LatencyModel.layer_us``)."""

    kept: tuple[float, ...]
    us: tuple[float, ...]

    def __call__(self, kept: float) -> float:
        wider = bisect.bisect_left(self.kept, kept - 1e-9)
        return float(self.us[min(wider, len(self.us) - 1)])

    def scaled(self, factor: float) -> LayerFit:
        return LayerFit(self.kept, tuple(u * factor for u in self.us))

    @classmethod
    def through(cls, points: Iterable[tuple[float, float]]) -> LayerFit:
        """Through the mean time at each distinct kept fraction, made non-decreasing in it
        (pooled where a narrower width measured slower): a kernel does not get slower
        with fewer channels, but one noisy profile said so, and the integer program then
        "sped up" a model by pruning less (seen in the tests, once in a full run)."""
        at: dict[float, list[float]] = {}
        for kept, us in points:
            at.setdefault(round(kept, 6), []).append(us)
        fractions = tuple(sorted(at))
        return cls(
            fractions,
            _non_decreasing([statistics.fmean(at[k]) for k in fractions], [len(at[k]) for k in fractions]),
        )


def _fit_coordinate(shape: LayerShape, kept: Kept) -> float:
    """Where a layer's profile lies on its ``LayerFit``: the kept fraction of the side
    pruning changes (the geometric mean of both for a layer pruned on both sides)."""
    if shape.both_sides:
        return math.sqrt(kept[0] * kept[1])
    return kept[0] if shape.in_groups and not shape.out_group else kept[1]


def _kernel_us(fit: LayerFit, shape: LayerShape, kept: Kept) -> float:
    """A layer's kernel time at these kept fractions. Pruned on both sides, it is the
    geometric mean of the fit at each side's fraction: the fit comes from profiles whose two
    sides were pruned alike, and on the geometric mean the cost of a kernel proportional to
    in x out channels comes out exactly, while a width with slow kernels (24 of 32 channels
    ran INT8 slower than 32 on an AMX Xeon) is charged only to the side that has it. The
    fit at the product (in x out) gave 16 channels in and 32 out the cost of 24 in and 24
    out; on 62 trials of six saved searches predicted before each refit, the geometric
    mean took the share within +-10% from 69% to 76% (median error 6.0% -> 4.5%)."""
    if shape.both_sides:
        return math.sqrt(max(0.0, fit(kept[0])) * max(0.0, fit(kept[1])))
    return max(0.0, fit(_fit_coordinate(shape, kept)))


def _non_decreasing(values: list[float], weights: list[int]) -> tuple[float, ...]:
    """Weighted isotonic regression (pool adjacent violators)."""
    blocks: list[list[float]] = []  # [mean, weight, count]
    for value, weight in zip(values, weights):
        blocks.append([value, float(weight), 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            (m1, w1, c1), (m2, w2, c2) = blocks[-2], blocks[-1]
            blocks[-2:] = [[(m1 * w1 + m2 * w2) / (w1 + w2), w1 + w2, c1 + c2]]
    return tuple(mean for mean, _, count in blocks for _ in range(count))


@dataclasses.dataclass(frozen=True)
class LatencyReport:
    """How well the model predicts measured latency ratios."""

    n: int
    median_abs_rel_error: float | None
    within_10pct: float | None  # share of candidates predicted within +-10%
    worst: float | None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


Config = tuple[Mapping[str, Kept], Mapping[str, str]]  # per-layer kept fractions, precision classes


@dataclasses.dataclass(frozen=True)
class LatencyModel:
    """Per-layer latency in channel counts and precision, fitted on profiled variants.

    latency ratio = (s_float * float layers' us + s_quantized * quantized layers' us)
    / baseline_us + t_int * changes to integer + t_float * changes to float + overhead,
    where a layer's us come from its fit (``layer_us``: at its kept channels and precision),
    baseline_us is the baseline's measured latency, a precision change is a producer -> layer
    edge with one side on integer kernels and the other not (weighted by the elements it
    converts, ``Structure.edge_weight``), and ``overhead`` the time outside the kernels as a
    share of baseline_us. The profiles give each layer's cost and how it scales; the
    factors, the transition costs and the overhead are then fitted to the MEASURED latency
    ratios (profiling off) of the profiled variants, the ``anchors``, and of every trial passed to
    ``calibrate``: per-node profiling times carry the profiler's own overhead and a
    neighbour's load, the measured ratios are what the search optimises.
    """

    structure: Structure
    space: SearchSpace
    fits: dict[str, dict[str, LayerFit]]
    baseline_us: float
    overhead: float = 0.0
    scales: dict[str, float] = dataclasses.field(default_factory=lambda: {FLOAT: 1.0, "quantized": 1.0})
    # The cost of a precision change at an average layer's input, as a share of baseline_us:
    # float -> quantized (a quantize step) and quantized -> float (a dequantize step). One cost
    # for both directions put 87% of the 282 replayed trials of ``LayerFit`` within +-10%
    # (3.6% median error), two 88% (3.4%): 85% -> 92% on the 88 trials of four searches, no
    # change on the other 194.
    transition: tuple[float, float] = (0.0, 0.0)
    anchors: tuple[tuple[dict[str, Kept], dict[str, str], float], ...] = dataclasses.field(
        default=(), repr=False
    )
    prior_overhead: float = 0.0
    calibrated_on: int = 0  # trials in the last calibration
    # Measured latency ratios by configuration (the anchors' and the calibration trials'):
    # a configuration measured before is predicted by its measurements (``predict_config``).
    memory: dict[tuple, tuple[float, ...]] = dataclasses.field(default_factory=dict, repr=False)

    # -- fitting ---------------------------------------------------------------------------
    @classmethod
    def fit(cls, profiles: Sequence[Profile], structure: Structure, space: SearchSpace) -> LatencyModel:
        """Per layer and precision, the profiled times through the profiled widths (the
        first profile is the baseline), each profile scaled to its measured latency minus the
        time outside the kernels (the median of measured latency minus profiled kernels); a
        precision profiled at one width only scales the INT8 (or float) fit of the layer by
        its measured ratio. A mixed-precision profile is an anchor only (below): its layers'
        times carry the float <-> INT8 conversions, which the transition term prices; as
        layer points they made every INT8 layer dearer, and uniform INT8 was predicted
        11-19% slow in 4 of 12 saved searches. Leaving them out took the share of 116
        replayed trials within +-10% from 80% to 84% (mixed-precision trials 73% -> 76%, their
        median error 6.3% -> 4.3%). Then the factors, the cost of a precision change and the
        overhead are fitted to the profiles' measured ratios."""
        # Per-node times from different moments are not comparable (a neighbour's load moves
        # them by 30% for seconds, PLATFORM_NOTES), the latencies measured side by side are:
        # each profile gives the split among layers, its measured latency the total.
        baseline = profiles[0].latency_ms * 1e3
        # A variant profiled later (a resumed search that added one) was timed against a
        # baseline measured then: its ratio, not its milliseconds, carries over.
        walls = [p.latency_ratio * baseline for p in profiles]
        outside = max(0.0, statistics.median(w - p.total_us for w, p in zip(walls, profiles)))
        shapes = {s.name: s for s in structure.layers}
        points: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for p, wall in zip(profiles, walls):
            if p.precision == MIXED:
                continue
            kernels = wall - outside
            factor = kernels / p.total_us if kernels > 0 and p.total_us > 0 else 1.0
            for layer, us in p.layer_us.items():
                if layer in shapes:
                    points.setdefault((layer, p.classes.get(layer, FLOAT)), []).append(
                        (_fit_coordinate(shapes[layer], p.kept.get(layer, (1.0, 1.0))), us * factor)
                    )
        fits: dict[str, dict[str, LayerFit]] = {}
        for (layer, cls_), pts in points.items():
            fits.setdefault(layer, {})[cls_] = LayerFit.through(pts)
        for by_class in fits.values():  # one width only: the shape of a reference fit
            for cls_, fit in list(by_class.items()):
                ref = by_class.get(INT8 if _integer(cls_) else FLOAT) or by_class.get(FLOAT)
                if len(fit.kept) == 1 and ref is not None and len(ref.kept) > 1 and ref(fit.kept[0]) > 0:
                    by_class[cls_] = ref.scaled(fit.us[0] / ref(fit.kept[0]))
        prior = float(np.clip(outside / baseline, 0.0, 0.9))
        anchors = tuple((dict(p.kept), dict(p.classes), p.latency_ratio) for p in profiles)
        model = cls(structure, space, fits, baseline, prior, anchors=anchors, prior_overhead=prior)
        return dataclasses.replace(model._refit([]), memory=model._remember(anchors))

    # -- prediction ------------------------------------------------------------------------
    def _fit(self, layer: str, cls_: str) -> LayerFit | None:
        fits = self.fits.get(layer)
        if not fits:
            return None
        if cls_ in fits:
            return fits[cls_]
        if not _integer(cls_):  # float, or one side in float, unprofiled: as float
            return fits.get(FLOAT) or fits.get(INT8)
        # An unprofiled bit-width pair: the slower of the profiled ones with the same weight
        # or activation bits, else INT8.
        w, _, a = cls_[1:].partition("a")
        near = [fits[c] for c in (f"w8a{a}", f"w{w}a8") if c in fits]
        if near:
            return max(near, key=lambda f: f(1.0))
        return fits.get(INT8) or fits.get(FLOAT)

    def layer_us(self, layer: LayerShape, kept: Kept, cls_: str) -> float:
        """The layer's microseconds with these kept input and output fractions, at this
        precision, with its factor."""
        fit = self._fit(layer.name, cls_)
        if fit is None:
            return 0.0
        return _kernel_us(fit, layer, kept) * self.scales["quantized" if _integer(cls_) else FLOAT]

    def components(self, kept: Mapping[str, Kept], classes: Mapping[str, str]) -> dict[str, float]:
        """Microseconds of the float and of the quantized layers, before their factors."""
        out = {FLOAT: 0.0, "quantized": 0.0}
        for s in self.structure.layers:
            cls_ = classes.get(s.name, FLOAT)
            fit = self._fit(s.name, cls_)
            if fit is not None:
                out["quantized" if _integer(cls_) else FLOAT] += _kernel_us(
                    fit, s, kept.get(s.name, (1.0, 1.0))
                )
        return out

    def _config_key(self, kept: Mapping[str, Kept], classes: Mapping[str, str]) -> tuple:
        return tuple(
            (*(round(k, 6) for k in kept.get(s.name, (1.0, 1.0))), classes.get(s.name, FLOAT))
            for s in self.structure.layers
        )

    def _remember(self, measured: Iterable[tuple[Mapping[str, Kept], Mapping[str, str], float]]) -> dict:
        memory: dict[tuple, list[float]] = {}
        for kept, classes, ratio in measured:
            if ratio and math.isfinite(ratio) and ratio > 0:
                memory.setdefault(self._config_key(kept, classes), []).append(float(ratio))
        return {key: tuple(ratios) for key, ratios in memory.items()}

    def predict_config(
        self, kept: Mapping[str, Kept], classes: Mapping[str, str], *, recall: bool = True
    ) -> float:
        """Predicted latency ratio to the baseline of a model with these per-layer kept
        fractions and precisions. A configuration measured before (a profiled variant, a
        calibration trial: the engineer's uniform INT8 is both, in most searches) is
        predicted by the median of its measurements, unless ``recall`` is False: the layers'
        sum missed such repeats by up to 12% after a few trials had moved the factors (on
        the 282 replayed trials of ``LayerFit``, recalling took the share within +-10% from
        84% to 85%, 85% to 87% with the weighted edges)."""
        if recall and (seen := self.memory.get(self._config_key(kept, classes))):
            return float(statistics.median(seen))
        parts = self.components(kept, classes)
        layers = sum(self.scales[k] * v for k, v in parts.items()) / self.baseline_us
        to_integer, to_float = self.structure.transitions(classes)
        return layers + self.transition[0] * to_integer + self.transition[1] * to_float + self.overhead

    def predict_profile(self, profile: Profile) -> float:
        """Predicted latency ratio of a profiled variant, from its layers (not recalled)."""
        return self.predict_config(profile.kept, profile.classes, recall=False)

    def config(self, params: Mapping[str, Any]) -> tuple[dict[str, Kept], dict[str, str]]:
        """Per-layer kept fractions and precision classes of a point of the space."""
        ratios, classes = layout(self.space, self.structure, params)
        return {s.name: self.structure.kept(s, ratios) for s in self.structure.layers}, classes

    def predict(self, params: Mapping[str, Any], *, recall: bool = True) -> float:
        """Predicted latency ratio to the baseline (0.25: 4x faster) of a point of the space
        (``recall``: see ``predict_config``)."""
        return self.predict_config(*self.config(params), recall=recall)

    # -- learning from trials --------------------------------------------------------------
    def _refit(self, measured: Sequence[tuple[Mapping[str, Kept], Mapping[str, str], float]]) -> LatencyModel:
        """Least squares on relative errors for (s_float, s_quantized, t_int, t_float,
        overhead) over the anchors, then, with ``measured`` trials, again over both with the
        trials' own overhead: the time outside the kernels is what a neighbour's load moves
        (5% to 45% of the baseline's latency here within an hour), so the search's trials,
        not the profiling session, say what it is now. Each parameter is pulled (about one
        measurement's worth) towards (1, 1, 0, 0, the profiles' overhead): a component
        nothing exercised stays as profiled, and a few measurements cannot swing it."""

        def rows(configs, columns):
            out = []
            for kept, classes, ratio in configs:
                if not (ratio and math.isfinite(ratio) and ratio > 0):
                    continue
                parts = self.components(kept, classes)
                out.append(
                    [
                        parts[FLOAT] / self.baseline_us / ratio,
                        parts["quantized"] / self.baseline_us / ratio,
                        *(t / ratio for t in self.structure.transitions(classes)),
                        *(c / ratio for c in columns),
                    ]
                )
            return out

        def solve(a: list[list[float]], prior: list[float]) -> np.ndarray:
            m = np.asarray(a)
            theta = np.linalg.solve(m.T @ m + np.eye(len(prior)), m.T @ np.ones(len(a)) + np.asarray(prior))
            low = [0.2, 0.2, 0.0, 0.0] + [0.0] * (len(prior) - 4)
            high = [5.0, 5.0, 0.2, 0.2] + [0.95] * (len(prior) - 4)
            return np.clip(theta, low, high)

        anchors = rows(self.anchors, (1.0,))
        if not anchors:
            return self
        theta = solve(anchors, [1.0, 1.0, 0.0, 0.0, self.prior_overhead])
        trials = rows(measured, (0.0, 1.0))
        if trials:
            both = [[*r, 0.0] for r in anchors] + trials
            theta = solve(both, [1.0, 1.0, 0.0, 0.0, self.prior_overhead, float(theta[4])])
            theta = np.delete(theta, 4)  # predictions use the trials' overhead
        s_float, s_quant, to_integer, to_float, overhead = map(float, theta)
        return dataclasses.replace(
            self,
            scales={FLOAT: s_float, "quantized": s_quant},
            transition=(to_integer, to_float),
            overhead=overhead,
        )

    def calibrate(self, pairs: Iterable[tuple[Mapping[str, Any], float]]) -> LatencyModel:
        """A copy refitted on the profiled variants and these measured (point, latency ratio)
        pairs: pass every trial so far (each call starts from the profiles). Points the model
        cannot predict (students) are skipped."""
        measured = []
        for params, ratio in pairs:
            try:
                measured.append((*self.config(params), ratio))
            except UnpredictableError:
                continue
        return dataclasses.replace(
            self._refit(measured),
            calibrated_on=len(measured),
            memory=self._remember([*self.anchors, *measured]),
        )

    def report(self, pairs: Iterable[tuple[Mapping[str, Any], float]]) -> LatencyReport:
        """Median absolute relative error and share within +-10% on measured (point, ratio) pairs."""
        errors = []
        for params, measured in pairs:
            try:
                predicted = self.predict(params)
            except UnpredictableError:
                continue
            errors.append(abs(predicted - measured) / measured)
        return _report(errors)

    def report_profiles(self, profiles: Iterable[Profile]) -> LatencyReport:
        """The same on profiled variants (in-sample for the ones it was fitted on)."""
        return _report([abs(self.predict_profile(p) - p.latency_ratio) / p.latency_ratio for p in profiles])

    def to_dict(self) -> dict[str, Any]:
        return {
            "baseline_us": self.baseline_us,
            "overhead": self.overhead,
            "scales": self.scales,
            "transition": self.transition,
            "calibrated_on": self.calibrated_on,
            "fits": {
                layer: {c: {"kept": f.kept, "us": f.us} for c, f in fits.items()}
                for layer, fits in self.fits.items()
            },
        }


def _report(errors: list[float]) -> LatencyReport:
    if not errors:
        return LatencyReport(0, None, None, None)
    return LatencyReport(
        n=len(errors),
        median_abs_rel_error=float(statistics.median(errors)),
        within_10pct=sum(e <= 0.10 for e in errors) / len(errors),
        worst=float(max(errors)),
    )


# ============================================================================ sensitivities


@dataclasses.dataclass(frozen=True)
class Sensitivities:
    """Metric drops (baseline - candidate, in the metric's units; negative: a gain) measured
    in torch without fine-tuning on ``samples`` validation samples.

    pruning: group -> {ratio: drop} with only that group's channels removed (masked, then
        BatchNorm statistics re-estimated on a few training batches).
    quantization: layer -> drop with only that layer in INT8 (weights and input); measured
        only when INT8 everywhere loses more than one sample, else an equal share of it.
    checks: the additive approximation against the real thing: the summed per-layer drops
        vs INT8 everywhere, the summed per-group drops vs every group pruned at 0.5.
    """

    baseline: float
    samples: int
    pruning: dict[str, dict[float, float]]
    quantization: dict[str, float]
    checks: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0

    def group_drop(self, group: str, ratio: float) -> float:
        """Piecewise-linear in the ratio through (0, 0) and the measured ratios (the last
        segment extended), never decreasing with the ratio, never below 0."""
        measured = self.pruning.get(group)
        if not measured or ratio <= 0:
            return 0.0
        xs, ys = [0.0], [0.0]
        for r in sorted(measured):
            xs.append(r)
            ys.append(max(ys[-1], measured[r]))  # noise can make a harder cut look harmless
        if ratio <= xs[-1]:
            return float(np.interp(ratio, xs, ys))
        slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
        return ys[-1] + slope * (ratio - xs[-1])

    def layer_drop(self, layer: str) -> float:
        return max(0.0, self.quantization.get(layer, 0.0))

    def predict(self, ratios: Mapping[str, float], classes: Mapping[str, str]) -> float:
        """The additive drop prediction: per-group pruning drops plus per-layer INT8 drops
        (any quantized class counts as INT8's drop)."""
        return sum(self.group_drop(g, r) for g, r in ratios.items()) + sum(
            self.layer_drop(layer) for layer, c in classes.items() if c != FLOAT
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "baseline": self.baseline,
            "samples": self.samples,
            "pruning": {g: {str(r): d for r, d in v.items()} for g, v in self.pruning.items()},
            "quantization": dict(self.quantization),
            "checks": self.checks,
            "seconds": self.seconds,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Sensitivities:
        return cls(
            baseline=data["baseline"],
            samples=data["samples"],
            pruning={g: {float(r): d for r, d in v.items()} for g, v in data["pruning"].items()},
            quantization=dict(data["quantization"]),
            checks=dict(data.get("checks", {})),
            seconds=data.get("seconds", 0.0),
        )


def _reestimate_batchnorm(module: nn.Module, batches: Sequence[Any]) -> None:
    """Recompute every BatchNorm's running statistics as a plain average over ``batches``."""
    norms = [
        m
        for m in module.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]
    if not norms or not batches:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    module.train()
    try:
        with torch.no_grad():
            for batch in batches:
                module(batch[0] if isinstance(batch, (tuple, list)) else batch)
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        module.eval()


def measure_sensitivities(
    model: nn.Module,
    structure: Structure,
    *,
    train_loader: Iterable,
    val: Dataset,
    example_input: torch.Tensor,
    metric: Metric | None = None,
    base: Policy = Policy(),
    ratios: Sequence[float] = SENSITIVITY_RATIOS,
    samples: int | None = 500,
    batchnorm_batches: int = 1,
    calibration_batches: int = 1,
    criterion: str = "l2",
    seed: int = 0,
    device: str | torch.device = "auto",
) -> Sensitivities:
    """Per-group pruning and per-layer INT8 drops without fine-tuning (see Sensitivities).

    ``samples``: a fixed random subsample of ``val`` (None: all of it); 500 samples resolve
    about 0.2 points, enough to rank groups and layers, not to promise accuracy.
    ``device``: where the evaluations, BatchNorm re-estimations and calibrations run (see
    autocompress.devices); ``model`` is moved there and back.
    """
    target = Accelerator(device).torch_device
    started = time.perf_counter()
    inputs, targets = val.inputs, val.targets
    if samples is not None and samples < len(targets):
        index = np.sort(np.random.default_rng(seed).choice(len(targets), samples, replace=False))
        inputs, targets = inputs[index], targets[index]
    batches = list(itertools.islice(iter(train_loader), max(batchnorm_batches, calibration_batches, 1)))
    if not batches:
        raise ValueError("measure_sensitivities: the training loader yielded no batch")

    on_device = [to_device(batch, target) for batch in batches]

    def evaluate(module: nn.Module) -> float:
        with placed(target, module):
            return score(metric, module_logits(module, inputs), targets, "a sensitivity candidate")

    baseline = evaluate(model)
    groups = pruning_groups(model, example_input, base.pinned)
    pruning: dict[str, dict[float, float]] = {}
    for group in structure.group_channels:
        for ratio in ratios:
            if not 0 < structure.removed(group, ratio) < structure.group_channels[group]:
                continue
            twin = masked_twin(
                model,
                {group: (ratio, criterion)},
                example_input,
                data=batches,
                pinned=base.pinned,
                groups=groups,
            ).to(target)  # a throwaway copy: it stays there
            _reestimate_batchnorm(twin, on_device[:batchnorm_batches])
            pruning.setdefault(group, {})[float(ratio)] = baseline - evaluate(twin)
    skip = Finetune(epochs=0.0, distill_epochs=0.0)
    int8 = apply_policy(
        model,
        Variant("int8", 0.0, 8, 8).uniform_policy(base, structure),
        batches,
        finetune=skip,
        calibration_batches=calibration_batches,
        device=target,
    )
    int8_drop = baseline - evaluate(int8.module)
    layers = [shape.name for shape in structure.layers]
    if int8_drop <= 1.0 / len(targets):
        # INT8 everywhere loses at most one sample: nothing for a per-layer measurement to
        # resolve, so every layer gets an equal share and 2 x layers evaluations are saved.
        quantization = dict.fromkeys(layers, max(0.0, int8_drop) / len(layers))
    else:
        plain = dataclasses.replace(base, default=LayerPolicy(), overrides={}, student=None)
        quantization = {}
        for layer in layers:
            policy = dataclasses.replace(plain, overrides={layer: LayerPolicy(quantization=LayerQuant())})
            compressed = apply_policy(
                model, policy, batches, finetune=skip, calibration_batches=calibration_batches, device=target
            )
            quantization[layer] = baseline - evaluate(compressed.module)
    sens = Sensitivities(baseline, len(targets), pruning, quantization)
    checks = {"int8_everywhere": {"predicted": sum(quantization.values()), "measured": int8_drop}}
    half = {
        g: 0.5
        for g in structure.group_channels
        if 0 < structure.removed(g, 0.5) < structure.group_channels[g]
    }
    if half:
        twin = masked_twin(
            model,
            {g: (r, criterion) for g, r in half.items()},
            example_input,
            data=batches,
            pinned=base.pinned,
            groups=groups,
        ).to(target)
        _reestimate_batchnorm(twin, on_device[:batchnorm_batches])
        checks["prune_0.5_everywhere"] = {
            "predicted": sum(sens.group_drop(g, r) for g, r in half.items()),
            "measured": baseline - evaluate(twin),
        }
    return dataclasses.replace(sens, checks=checks, seconds=time.perf_counter() - started)


# ============================================================================ proposals


@dataclasses.dataclass(frozen=True)
class Proposal:
    """A point of the space (searched dimensions only) with what the predictors expect of it."""

    params: dict[str, Any]
    predicted_latency_ratio: float
    predicted_drop: float  # already scaled by what trials showed
    budget: float  # the drop budget it was solved for

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(dataclasses.asdict(self))


@dataclasses.dataclass(frozen=True)
class _Choice:
    """One decision of the integer program: a pruning ratio for some groups, or INT8/float for
    some layers; each option is a set of dimension values with its predicted drop."""

    name: str
    options: tuple[dict[str, Any], ...]
    drops: tuple[float, ...]
    ratios: tuple[float, ...] = ()  # per option, for the groups below
    groups: tuple[str, ...] = ()
    classes: tuple[dict[str, str], ...] = ()  # per option, for the layers it sets


def _grid(dim: Dimension) -> list[float]:
    if dim.choices is not None:
        return sorted(float(c) for c in dim.choices)
    step = dim.step or 0.125
    count = int(math.floor((dim.high - dim.low) / step + 1e-9))
    return [round(dim.low + i * step, 10) for i in range(count + 1)]


def _reference(space: SearchSpace) -> dict[str, Any]:
    """Where an engineer starts (every knob at its level-0 start: INT8, no pruning, no
    student): the values of the dimensions no decision sets."""
    return start_point(space.searched, 0.0)


def _choices(
    space: SearchSpace, model: LatencyModel, sens: Sensitivities, reference: Mapping[str, Any]
) -> list[_Choice]:
    structure = model.structure
    found: list[_Choice] = []
    for dim in space.searched:
        if dim.knob != "pruning_ratio":
            continue
        layers = set(dim.layers or [layer for members in space.groups.values() for layer in members])
        groups = tuple(g for g in structure.group_channels if g in layers)
        grid = [
            r
            for r in _grid(dim)
            if all(structure.removed(g, r) < structure.group_channels[g] for g in groups)
        ]
        if not groups or len(grid) < 2:
            continue
        found.append(
            _Choice(
                dim.name,
                tuple({dim.name: r} for r in grid),
                tuple(sum(sens.group_drop(g, r) for g in groups) for r in grid),
                tuple(grid),
                groups,
            )
        )
    # Precision: dimensions that set the same layers decide together (e.g. a layer's
    # weight and activation bits); options INT8 and float, where the dimensions offer them.
    precision = [d for d in space.searched if d.knob in ("weight_bits", "activation_bits", "keep_float")]
    components: list[tuple[list[Dimension], set[str]]] = []
    for dim in precision:
        covered = set(dim.layers or space.layers)
        merged = [c for c in components if c[1] & covered]
        components = [c for c in components if not c[1] & covered]
        components.append(([d for c in merged for d in c[0]] + [dim], covered.union(*(c[1] for c in merged))))
    for dims, covered in components:
        options, classes, drops = [], [], []
        for target in (INT8, FLOAT):
            values = {}
            for d in dims:
                wanted = (target == FLOAT) if d.knob == "keep_float" else (8 if target == INT8 else None)
                values[d.name] = wanted if wanted in (d.choices or ()) else reference[d.name]
            try:
                _, point_classes = layout(space, structure, {**reference, **values})
            except UnpredictableError:
                continue
            layer_classes = {layer: point_classes[layer] for layer in covered if layer in point_classes}
            if not layer_classes or any(c != target for c in layer_classes.values()):
                continue  # the dimensions cannot express this option
            options.append(values)
            classes.append(layer_classes)
            drops.append(sum(sens.layer_drop(layer) for layer in layer_classes) if target == INT8 else 0.0)
        if len(options) == 2:
            found.append(
                _Choice(
                    "precision:" + ",".join(sorted(covered))[:60],
                    tuple(options),
                    tuple(drops),
                    classes=tuple(classes),
                )
            )
    return found


def _factors(
    space: SearchSpace, model: LatencyModel, choices: Sequence[_Choice], reference: Mapping[str, Any]
) -> tuple[float, list[tuple[tuple[int, ...], dict[tuple[int, ...], float]]]]:
    """Each layer's latency as a table over the choices it depends on (its output group's
    ratio, its input groups' ratios, its precision and its producers' precisions, for the
    conversions between them): (constant part, [(choice indices, {option indices:
    microseconds})])."""
    structure = model.structure
    ratios0, classes0 = layout(space, structure, reference)
    ratio_of = {g: i for i, c in enumerate(choices) for g in c.groups}
    class_of = {layer: i for i, c in enumerate(choices) for layer in (c.classes[0] if c.classes else {})}
    to_integer_us, to_float_us = (cost * model.baseline_us for cost in model.transition)
    constant = 0.0
    tables = []
    for shape in structure.layers:
        involved = sorted(
            {ratio_of[g] for g in (shape.out_group, *shape.in_groups) if g in ratio_of}
            | {class_of[layer] for layer in (shape.name, *shape.producers) if layer in class_of}
        )
        table = {}
        for combo in itertools.product(*(range(len(choices[i].options)) for i in involved)):
            ratios, classes = dict(ratios0), dict(classes0)
            for i, option in zip(involved, combo):
                c = choices[i]
                ratios.update(dict.fromkeys(c.groups, c.ratios[option]) if c.groups else {})
                classes.update(c.classes[option] if c.classes else {})
            cls_ = classes.get(shape.name, FLOAT)
            to_integer, to_float = structure.changes_at(shape, classes)
            table[combo] = (
                model.layer_us(shape, structure.kept(shape, ratios), cls_)
                + to_integer * to_integer_us
                + to_float * to_float_us
            )
        if involved:
            tables.append((tuple(involved), table))
        else:
            constant += table[()]
    return constant, tables


def _solve(
    choices: Sequence[_Choice],
    tables: Sequence[tuple[tuple[int, ...], dict[tuple[int, ...], float]]],
    budget: float,
) -> list[int] | None:
    """The options (one per choice) of least total latency with summed drop <= budget: a
    0-1 program with each layer's table linearised exactly (one indicator per table row,
    whose marginals must equal the choices' indicators). None when infeasible."""
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import coo_array

    offsets, n = [], 0
    for c in choices:
        offsets.append(n)
        n += len(c.options)
    cost: list[float] = [0.0] * n
    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []
    lower: list[float] = []
    upper: list[float] = []

    def constraint(entries: Iterable[tuple[int, float]], lo: float, hi: float) -> None:
        row = len(lower)
        for col, val in entries:
            rows.append(row)
            cols.append(col)
            vals.append(val)
        lower.append(lo)
        upper.append(hi)

    for k, c in enumerate(choices):
        constraint(((offsets[k] + i, 1.0) for i in range(len(c.options))), 1.0, 1.0)
    for involved, table in tables:
        if len(involved) == 1:
            for (option,), us in table.items():
                cost[offsets[involved[0]] + option] += us
            continue
        first = n
        cost += table.values()
        n += len(table)
        for position, k in enumerate(involved):
            for option in range(len(choices[k].options)):
                entries = [(first + r, 1.0) for r, combo in enumerate(table) if combo[position] == option]
                constraint([*entries, (offsets[k] + option, -1.0)], 0.0, 0.0)
    constraint(
        ((offsets[k] + i, d) for k, c in enumerate(choices) for i, d in enumerate(c.drops)), -np.inf, budget
    )
    matrix = coo_array((vals, (rows, cols)), shape=(len(lower), n)).tocsr()
    integrality = np.zeros(n)
    integrality[: offsets[-1] + len(choices[-1].options)] = 1
    result = milp(
        np.asarray(cost),
        constraints=LinearConstraint(matrix, np.asarray(lower), np.asarray(upper)),
        integrality=integrality,
        bounds=Bounds(0, 1),
    )
    if result.x is None:
        return None
    return [int(np.argmax(result.x[offsets[k] : offsets[k] + len(c.options)])) for k, c in enumerate(choices)]


def propose(
    space: SearchSpace,
    model: LatencyModel,
    sensitivities: Sensitivities,
    *,
    max_drop: float,
    multiples: Sequence[float] = DROP_MULTIPLES,
    drop_scale: float = 1.0,
    exclude: Iterable[Mapping[str, Any]] = (),
) -> list[Proposal]:
    """The fastest predicted point under each drop budget ``m * max_drop`` (m in
    ``multiples``), as points of ``space`` (searched dimensions only), deduplicated and
    without the ``exclude``d ones. The predicted drop of a point is ``drop_scale`` times the
    sum of its groups' and layers' drops (additive: interactions are ignored; the trials
    correct the scale). Needs scipy (HiGHS)."""
    reference = _reference(space)
    choices = _choices(space, model, sensitivities, reference)
    if not choices:
        return []
    _, tables = _factors(space, model, choices, reference)
    # What no decision changes (fixed dimensions, layers no dimension sets) spends budget too.
    ratios, classes = layout(space, model.structure, reference)
    decided_groups = {g for c in choices for g in c.groups}
    decided_layers = {layer for c in choices for layer in (c.classes[0] if c.classes else {})}
    fixed_drop = sensitivities.predict(
        {g: r for g, r in ratios.items() if g not in decided_groups},
        {layer: c for layer, c in classes.items() if layer not in decided_layers},
    )
    seen = [dict(p) for p in exclude]
    out: list[Proposal] = []
    for multiple in multiples:
        budget = multiple * max_drop
        left = budget / max(drop_scale, 1e-9) - fixed_drop
        picked = _solve(choices, tables, left) if left >= 0 else None
        if picked is None:
            continue
        point = dict(reference)
        for c, option in zip(choices, picked):
            point.update(c.options[option])
        space.policy(point)  # a valid point of the space, or SpaceError here
        if point in seen:
            continue
        seen.append(point)
        ratios, classes = layout(space, model.structure, point)
        # The layers' sum the program minimised, not a measured configuration's recall: the
        # two differ by the model's error there, and mixing them reported a proposal at a
        # larger budget slower than one at a smaller (the tests, once in 2 full runs).
        latency = model.predict(point, recall=False)
        out.append(Proposal(point, latency, drop_scale * sensitivities.predict(ratios, classes), budget))
    return out


# ============================================================================ fitting the space


def _latency_only(objectives: Any) -> bool:
    """True when every objective is latency or throughput (a mix of the two included)."""
    if isinstance(objectives, str):
        return objectives in ("latency", "throughput")
    if isinstance(objectives, Mapping):
        return bool(objectives) and all(k in ("latency", "throughput") for k, w in objectives.items() if w)
    if isinstance(objectives, (list, tuple)):
        return bool(objectives) and all(_latency_only(o) for o in objectives)
    return False


def fit_space(
    space: SearchSpace, evidence: Mapping[str, float], objectives: Any
) -> tuple[SearchSpace, tuple[str, ...]]:
    """For latency (or throughput) objectives, the space without the precisions that measured
    no faster on the target than what they would replace, and why.

    ``evidence``: measured latency ratio to FP32 per precision class at full width ("int8",
    "w4a8" for 4-bit weights with 8-bit activations, "w8a6", "w8af" for INT8 weights with
    float activations, "wfa8", ...). A sub-8-bit value stays when its variant was at least
    3% faster than INT8, or when it was not profiled (said so). A layer quantized on one
    side only computes in float with fake-quantize steps added (on this project's machines
    WFA8 measured 1.05-1.53x FP32, W8AF 1.00x): when both measured no faster than FP32, a
    layer's weight and activation bits lose their float choice and a ``keep_float``
    dimension sets the whole layer float instead. Start points that used a removed value
    take the knob's start instead; fixed values stay.
    """
    if not _latency_only(objectives):
        return space, (f"objectives {objectives!r} are not latency only: the space is kept as given",)
    reasons: list[str] = []
    removed: dict[str, set[Any]] = {}
    for knob, label, cls_of in (
        ("weight_bits", "W", lambda v: f"w{v}a8"),
        ("activation_bits", "A", lambda v: f"w8a{v}"),
    ):
        values = sorted(
            {
                c
                for d in space.searched
                if d.knob == knob
                for c in (d.choices or ())
                if c is not None and c < 8
            }
        )
        for v in values:
            cls_ = cls_of(v)
            if cls_ not in evidence or INT8 not in evidence:
                reasons.append(f"{knob} {v} kept: {label}{v} was not profiled on the target")
                continue
            ratio, int8 = evidence[cls_], evidence[INT8]
            speed = f"{cls_.upper()} measured {ratio:.3f} of FP32 latency, INT8 {int8:.3f}"
            if ratio >= int8 * (1 - NO_FASTER):
                removed.setdefault(knob, set()).add(v)
                reasons.append(
                    f"{knob} {v} left out: {speed}; it is no faster than INT8 on this target "
                    f"(needs >= {NO_FASTER:.0%} faster) and can only cost accuracy"
                )
            else:
                reasons.append(f"{knob} {v} kept: {speed}")
    dims = []
    for dim in space.dimensions:
        gone = removed.get(dim.knob, set())
        if dim.name in space.fixed or dim.choices is None or not gone & set(dim.choices):
            dims.append(dim)
            continue
        dims.append(dataclasses.replace(dim, choices=tuple(c for c in dim.choices if c not in gone)))
    pairs = _one_sided_pairs(space, dims)
    if pairs:
        one_sided = {c: evidence.get(c) for c in ("w8af", "wfa8")}
        fp32 = evidence.get(FLOAT)
        if fp32 is None or None in one_sided.values():
            reasons.append("a layer may stay float on one side: W8AF and WFA8 were not both profiled")
            pairs = {}
        else:
            speed = ", ".join(f"{c.upper()} measured {r:.3f} of FP32 latency" for c, r in one_sided.items())
            if all(r >= fp32 * (1 - NO_FASTER) for r in one_sided.values()):
                reasons.append(
                    f"float on one side of a layer left out: {speed}; no faster than FP32 on this "
                    "target, it can only cost accuracy: a layer is quantized on both sides or kept "
                    "float (keep_float)"
                )
            else:
                reasons.append(f"a layer may stay float on one side: {speed}")
                pairs = {}
    if not removed and not pairs:
        return space, tuple(reasons)
    keeps = {
        d.name: Dimension("keep_float", layers=d.layers, choices=(False, True))
        for d in dims
        if d.name in pairs
    }
    tied = []
    for dim in dims:
        if dim.name in pairs:  # a layer's weight bits: its activation bits and keep_float follow
            activation = next(d for d in dims if d.name == pairs[dim.name])
            tied += [
                dataclasses.replace(dim, choices=tuple(c for c in dim.choices if c is not None)),
                dataclasses.replace(
                    activation, choices=tuple(c for c in activation.choices if c is not None)
                ),
                keeps[dim.name],
            ]
        elif dim.name not in pairs.values():
            tied.append(dim)
    by_name = {d.name: d for d in tied}
    points = []
    for point in space.start_points:
        fitted = {
            k: (
                v
                if k not in by_name or by_name[k].choices is None or v in by_name[k].choices
                else start_point([by_name[k]], 0.0)[k]
            )
            for k, v in point.items()
        }
        for weights, activations in pairs.items():  # float on either side: the layer stays float
            fitted[keeps[weights].name] = None in (point[weights], point[activations])
        if fitted not in points:
            points.append(fitted)
    return dataclasses.replace(space, dimensions=tuple(tied), start_points=tuple(points)), tuple(reasons)


def _one_sided_pairs(space: SearchSpace, dims: Sequence[Dimension]) -> dict[str, str]:
    """{weight_bits dimension: activation_bits dimension} for the searched pairs that set the
    same layers, both offer float and a bit-width, and no keep_float dimension touches."""
    searched = [d for d in dims if d.name not in space.fixed and d.choices is not None]
    keep_float = [d for d in dims if d.knob == "keep_float"]

    def open_(dim: Dimension) -> bool:
        return None in dim.choices and len(dim.choices) > 1

    pairs = {}
    for weights in (d for d in searched if d.knob == "weight_bits" and open_(d)):
        activations = next(
            (d for d in searched if d.knob == "activation_bits" and d.layers == weights.layers and open_(d)),
            None,
        )
        touched = any(
            k.is_global or weights.is_global or set(k.layers) & set(weights.layers) for k in keep_float
        )
        if activations is not None and not touched:
            pairs[weights.name] = activations.name
    return pairs


# ============================================================================ the plan


@dataclasses.dataclass(frozen=True)
class Observation:
    """A measured trial: its point, its drop (baseline - accuracy, after fine-tuning) and its
    latency ratio to the baseline."""

    params: dict[str, Any]
    drop: float
    latency_ratio: float


@dataclasses.dataclass(frozen=True)
class HardwarePlan:
    """What ``plan`` found: the space fitted to the target, the proposals that start the
    study, and the predictors behind them (which ``update_from_trials`` refines)."""

    space: SearchSpace
    proposals: tuple[Proposal, ...]
    latency_model: LatencyModel
    sensitivities: Sensitivities
    profiles: tuple[Profile, ...]
    reasons: tuple[str, ...]
    max_drop: float
    multiples: tuple[float, ...] = DROP_MULTIPLES
    drop_scale: float = 1.0  # realised drop after fine-tuning / predicted, from trials
    trials_seen: int = 0
    seconds: float = 0.0
    timings: dict[str, float] = dataclasses.field(default_factory=dict)  # seconds per step (cached: ~0)
    students: tuple[StudentTiming, ...] = ()  # the space's students, timed untrained (``time_students``)

    @property
    def points(self) -> list[dict[str, Any]]:
        """The proposals as points of ``space`` (to enqueue)."""
        return [dict(p.params) for p in self.proposals]

    def predict_drop(self, params: Mapping[str, Any]) -> float:
        ratios, classes = layout(self.space, self.latency_model.structure, params)
        return self.drop_scale * self.sensitivities.predict(ratios, classes)

    def update_from_trials(self, trials: Iterable[Observation]) -> HardwarePlan:
        """``refit`` on every measured trial so far and propose again, without the measured points."""
        trials = list(trials)
        plan = self.refit(trials)
        proposals = propose(
            plan.space,
            plan.latency_model,
            plan.sensitivities,
            max_drop=plan.max_drop,
            multiples=plan.multiples,
            drop_scale=plan.drop_scale,
            exclude=[t.params for t in trials],
        )
        return dataclasses.replace(plan, proposals=tuple(proposals))

    def refit(self, trials: Iterable[Observation]) -> HardwarePlan:
        """Both predictors refitted on every measured trial so far (pass all of them: the
        fits start from the profiles each time); the proposals are left as they were.

        Drop: the scale s in realised = s * predicted, by least squares with one
        pseudo-trial at s = 1 (so one lucky trial cannot zero it). Latency:
        ``LatencyModel.calibrate``. Points with a student are left out of both fits."""
        num = den = self.max_drop**2
        pairs = []
        for t in trials:
            try:
                predicted = self.sensitivities.predict(
                    *layout(self.space, self.latency_model.structure, t.params)
                )
            except UnpredictableError:
                continue
            num += predicted * t.drop
            den += predicted * predicted
            pairs.append((t.params, t.latency_ratio))
        scale = float(np.clip(num / den, 0.05, 5.0))
        model = self.latency_model.calibrate(pairs)
        return dataclasses.replace(self, latency_model=model, drop_scale=scale, trials_seen=len(pairs))

    def to_dict(self) -> dict[str, Any]:
        """For result.json: everything but the space itself (the search stores that)."""
        fit = self.latency_model.report_profiles(self.profiles)
        return to_jsonable(
            {
                "proposals": [p.to_dict() for p in self.proposals],
                "reasons": list(self.reasons),
                "drop_scale": self.drop_scale,
                "trials_seen": self.trials_seen,
                "seconds": self.seconds,
                "timings": self.timings,
                "latency_model": {**self.latency_model.to_dict(), "fit_on_profiles": fit.to_dict()},
                "sensitivities": self.sensitivities.to_dict(),
                "students": [t.to_dict() for t in self.students],
                "profiles": [
                    {
                        "name": p.name,
                        "latency_ratio": p.latency_ratio,
                        "predicted": self.latency_model.predict_profile(p),
                        "latency_ms": p.latency_ms,
                        "mapped_layers": p.mapped_layers,
                        "coverage": p.coverage,
                    }
                    for p in self.profiles
                ],
            }
        )


class Recalibration:
    """The plan during a search: after every measured trial both predictors are refitted on
    all trials so far (``HardwarePlan.refit``) and the next point is the fastest
    predicted under the allowed drop that no trial has tried.

    Before each refit, the trial just measured is predicted by the model fitted without it:
    ``prequential`` collects those (predicted, measured) latency ratios, an out-of-sample
    error of the model as the search used it."""

    def __init__(self, plan: HardwarePlan) -> None:
        self.plan = plan
        self.initial = plan
        self.prequential: list[tuple[int, float, float]] = []  # (trial number, predicted, measured)
        self.proposed: list[dict[str, Any]] = []
        self.margin = 0.0  # how far the constraint's bound sits above the measured drop (median)
        self.incumbent: float | None = None  # the fastest candidate trial's measured latency ratio
        self.failed: list[dict[str, Any]] = []  # trials that are no candidate (``observe``)
        self.student_steps = 0
        self._seen: set[int] = set()

    def observe(self, trials: Iterable[Any]) -> None:
        """Refit on the measured trials (TrialRecords: every one so far; a trial is predicted
        out of sample once, the first time it is seen)."""
        trials = [t for t in trials if t.measurements is not None]
        fresh = [t for t in trials if t.number not in self._seen]
        if not fresh:
            return
        for t in fresh:
            self._seen.add(t.number)
            with contextlib.suppress(UnpredictableError):
                self.prequential.append(
                    (t.number, self.plan.latency_model.predict(t.params), t.measurements.latency_ratio)
                )
        # Refit only: next_point solves for the one point it needs (the plan's proposals are
        # the ones that started the study).
        self.plan = self.plan.refit(
            Observation(dict(t.params), t.measurements.drop.drop, t.measurements.latency_ratio)
            for t in trials
        )
        # The constraint decides on the drop's upper bound (violation = bound - allowed): aim the
        # predicted drop that much below the allowed one.
        margins = [
            max(0.0, t.measurements.drop.violation + self.plan.max_drop - t.measurements.drop.drop)
            for t in trials
        ]
        self.margin = float(statistics.median(margins))
        # Candidates as the confirmation takes them (a student by the lower bound of its drop,
        # which its final distillation closes): the bar a student step must beat, and the
        # failures that rule out faster students.
        candidate = {t.number: selection_drop(t) <= self.plan.max_drop + 1e-9 for t in trials}
        self.incumbent = min(
            (t.measurements.latency_ratio for t in trials if candidate[t.number]), default=self.incumbent
        )
        self.failed = [dict(t.params) for t in trials if not candidate[t.number]]

    def next_point(
        self, tried: Iterable[Mapping[str, Any]], stopped: Iterable[Mapping[str, Any]] = ()
    ) -> dict[str, Any] | None:
        """The faster of: the fastest predicted point whose drop is predicted within the
        allowed one less the bound's margin (half that, if that point was tried), and the
        next step through the timed students (``student_step``); neither in ``tried``. None
        when neither has anything new to say. ``stopped``: tried points stopped early for
        accuracy."""
        tried = [dict(t) for t in tried]
        step = self.student_step(tried, stopped)
        budget = max(self.plan.max_drop - self.margin, 0.25 * self.plan.max_drop)
        proposals = propose(
            self.plan.space,
            self.plan.latency_model,
            self.plan.sensitivities,
            max_drop=budget,
            multiples=(1.0, 0.5),
            drop_scale=self.plan.drop_scale,
            exclude=tried + self.proposed,
        )
        if step is not None and (not proposals or step.latency_ratio < proposals[0].predicted_latency_ratio):
            self.student_steps += 1
            point = dict(step.params)
        elif proposals:
            point = dict(proposals[0].params)
        else:
            return None
        self.proposed.append(point)
        return point

    def student_step(
        self, tried: Sequence[Mapping[str, Any]], stopped: Iterable[Mapping[str, Any]] = ()
    ) -> StudentTiming | None:
        """The next student to try, a bisection over the timed students by latency (Condensa's
        level-set search, with measured latency as the level): among those faster than the
        fastest confirmation candidate (by ``NO_FASTER``) and slower than the slowest student
        that failed (no candidate, or ``stopped`` early; anything faster is taken to fail
        too), untried, the middle one. A student beats the model's own layers where pruning
        cannot shorten the per-layer cost of small inputs (a shallower net), but the
        predictors, fitted on the model's layers, cannot price it; its drop is unknown until
        distilled, hence the bisection."""
        if not self.plan.students:
            return None
        failed = [*self.failed, *(dict(f) for f in stopped)]
        ceiling = (1.0 if self.incumbent is None else self.incumbent) * (1 - NO_FASTER)
        floor = max((t.latency_ratio for t in self.plan.students if t.params in failed), default=0.0)
        seen = [*tried, *self.proposed]
        open_ = sorted(
            (t for t in self.plan.students if floor < t.latency_ratio < ceiling and t.params not in seen),
            key=lambda t: -t.latency_ratio,
        )
        return open_[len(open_) // 2] if open_ else None

    def report(self) -> dict[str, Any]:
        """For result.json: the plan as it ended, and how well the latency model predicted
        each trial before it was refitted on it."""
        errors = [abs(p - m) / m for _, p, m in self.prequential if m > 0]
        return {
            **self.plan.to_dict(),
            "initial_drop_scale": self.initial.drop_scale,
            "recalibrated_proposals": len(self.proposed),
            "student_steps": self.student_steps,
            "bound_margin": self.margin,
            "latency_model_prequential": {
                **_report(errors).to_dict(),
                "trials": [{"number": n, "predicted": p, "measured": m} for n, p, m in self.prequential],
            },
        }


def plan(
    model: nn.Module,
    space: SearchSpace,
    *,
    train_loader: Iterable,
    val: Dataset,
    example_input: torch.Tensor,
    target: Target = Target(),
    metric: Metric | None = None,
    max_drop: float = 0.01,
    objectives: Any = "latency",
    workdir: str | Path,
    prune_ratios: Sequence[float] = (0.25, 0.5, 0.75),
    multiples: Sequence[float] = DROP_MULTIPLES,
    sensitivity_samples: int | None = 500,
    profile_iterations: int = 200,
    latency: LatencyConfig = VARIANT_LATENCY,
    torch_threads: int | None = 1,
    device: str | torch.device = "auto",
) -> HardwarePlan:
    """Profile the model's variants on ``target``, fit the space and the latency model,
    measure the sensitivities, and propose the points that start the study.

    ``max_drop``: the allowed drop in the metric's units (absolute; convert a relative
    constraint first). ``workdir``: profiles and sensitivities are cached under
    ``workdir``/hardware, keyed by the model's weights and the settings, so a resumed search
    reads them back. The baseline is exported again here (its ONNX names map the kernels to
    layers, and it must be built as the variants are). ``torch_threads``: torch's intra-op
    threads while planning (restored after; None: leave as set). Its work is many small
    forward passes: on 2 shared cores here, 1 thread ran them 2.5-4x faster than 2 (the
    second thread waits on a busy core). ``device``: where the sensitivity passes run (see
    measure_sensitivities); the variants profiled for latency are built on the CPU.
    """
    with _torch_threads(torch_threads):
        return _plan(
            model,
            space,
            train_loader=train_loader,
            val=val,
            example_input=example_input,
            target=target,
            metric=metric,
            max_drop=max_drop,
            objectives=objectives,
            workdir=workdir,
            prune_ratios=prune_ratios,
            multiples=multiples,
            sensitivity_samples=sensitivity_samples,
            profile_iterations=profile_iterations,
            latency=latency,
            device=device,
        )


@contextlib.contextmanager
def _torch_threads(threads: int | None):
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _plan(
    model: nn.Module,
    space: SearchSpace,
    *,
    train_loader: Iterable,
    val: Dataset,
    example_input: torch.Tensor,
    target: Target,
    metric: Metric | None,
    max_drop: float,
    objectives: Any,
    workdir: str | Path,
    prune_ratios: Sequence[float],
    multiples: Sequence[float],
    sensitivity_samples: int | None,
    profile_iterations: int,
    latency: LatencyConfig,
    device: str | torch.device,
) -> HardwarePlan:
    started = time.perf_counter()
    workdir = Path(workdir) / "hardware"
    workdir.mkdir(parents=True, exist_ok=True)
    structure = Structure.from_model(model, example_input, space.base.pinned)
    first = next(iter(train_loader))
    calibration = [tuple(t[:16] for t in first) if isinstance(first, (tuple, list)) else first[:16]]
    variants = uniform_variants(space, prune_ratios)
    timings = {"structure": time.perf_counter() - started}
    profiles = profile_variants(
        model,
        space,
        variants,
        structure=structure,
        calibration=calibration,
        example_input=example_input,
        target=target,
        workdir=workdir,
        iterations=profile_iterations,
        latency=latency,
    )
    timings["profiles"] = time.perf_counter() - started - sum(timings.values())
    evidence = {p.precision: p.latency_ratio for p in profiles.values() if p.ratio == 0}
    fitted, reasons = fit_space(space, evidence, objectives)
    latency_model = LatencyModel.fit(list(profiles.values()), structure, fitted)
    sens = _cached_sensitivities(
        workdir,
        model,
        structure,
        train_loader=train_loader,
        val=val,
        example_input=example_input,
        metric=metric,
        base=space.base,
        samples=sensitivity_samples,
        device=device,
    )
    timings["sensitivities"] = time.perf_counter() - started - sum(timings.values())
    proposals: list[Proposal] = []
    students: tuple[StudentTiming, ...] = ()
    if has_latency(objectives):
        proposals = propose(fitted, latency_model, sens, max_drop=max_drop, multiples=multiples)
        timings["proposals"] = time.perf_counter() - started - sum(timings.values())
        students, said = _timed_students(model, fitted, calibration, example_input, target, workdir, latency)
        reasons = (*reasons, *said)
        timings["students"] = time.perf_counter() - started - sum(timings.values())
    else:
        reasons = (*reasons, "no latency objective: no latency-driven proposals")
    return HardwarePlan(
        space=fitted,
        proposals=tuple(proposals),
        latency_model=latency_model,
        sensitivities=sens,
        profiles=tuple(profiles.values()),
        reasons=tuple(reasons),
        max_drop=max_drop,
        multiples=tuple(multiples),
        seconds=time.perf_counter() - started,
        timings=timings,
        students=students,
    )


def _timed_students(
    model: nn.Module,
    space: SearchSpace,
    calibration: Sequence[Any],
    example_input: torch.Tensor,
    target: Target,
    workdir: Path,
    latency: LatencyConfig,
) -> tuple[tuple[StudentTiming, ...], tuple[str, ...]]:
    """The space's students timed (``time_students``), and what to say about them; a failure
    costs the student steps only."""
    points = student_points(space)
    if not points:
        return (), ()
    try:
        timed = time_students(
            model,
            space,
            points,
            calibration=calibration,
            example_input=example_input,
            target=target,
            workdir=workdir,
            latency=latency,
        )
    except Exception as error:
        return (), (f"students not timed ({type(error).__name__}: {error}): no student steps",)
    if not timed:
        return (), ("no student of the space could be built untrained: no student steps",)
    fastest = min(timed, key=lambda t: t.latency_ratio)
    slowest = max(timed, key=lambda t: t.latency_ratio)
    return timed, (
        f"{len(timed)} students timed untrained on the target, {fastest.latency_ratio:.3f} ({fastest.label}) "
        f"to {slowest.latency_ratio:.3f} ({slowest.label}) of FP32 latency: the search steps through "
        "those faster than its fastest confirmation candidate",
    )


def has_latency(objectives: Any) -> bool:
    if isinstance(objectives, str):
        return objectives in ("latency", "throughput")
    if isinstance(objectives, Mapping):
        return any(objectives.get(k) for k in ("latency", "throughput"))
    if isinstance(objectives, (list, tuple)):
        return any(has_latency(o) for o in objectives)
    return False


def _cached_sensitivities(
    workdir: Path, model: nn.Module, structure: Structure, **kwargs: Any
) -> Sensitivities:
    val: Dataset = kwargs["val"]
    key = _key(
        CACHE_VERSION,
        _model_fingerprint(model),
        hashlib.sha256(np.ascontiguousarray(val.inputs).tobytes()).hexdigest(),
        kwargs["base"].to_dict(),
        kwargs["samples"],
        getattr(kwargs["metric"], "__qualname__", None),
        structure.to_dict(),
    )
    path = workdir / "sensitivities.json"
    if path.is_file():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            data = json.loads(path.read_text())
            if data.get("key") == key:
                return Sensitivities.from_dict(data["sensitivities"])
    sens = measure_sensitivities(model, structure, **kwargs)
    _write_json(path, {"key": key, "sensitivities": sens.to_dict()})
    return sens


def _write_json(path: Path, data: Any) -> None:
    """Written to the side and swapped in: a killed search never leaves half a cache file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(to_jsonable(data)))
    os.replace(tmp, path)
