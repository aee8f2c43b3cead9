"""Model graph basics shared by the compression passes: what can be compressed, tracing, batches."""

from __future__ import annotations

import copy
import inspect
import math
import operator
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import fx, nn

COMPRESSIBLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


class ModelError(ValueError):
    """The model cannot be compressed as given (untraceable, nothing to compress, ...)."""


def trace(model: nn.Module) -> fx.GraphModule:
    """Symbolic trace of a copy of ``model``; a clear error when it cannot be traced.

    forward()'s first argument is the input; every later argument with a default keeps its
    default (``attn_mask=None``, ``is_causal=False``): traced as graph inputs, a flag that
    must be a Python bool would become a tensor."""
    try:
        graph_module = fx.symbolic_trace(copy.deepcopy(model), concrete_args=_optional_arguments(model))
    except Exception as error:  # fx raises many types (TraceError, TypeError, ...)
        first = str(error).splitlines()[0] if str(error) else ""
        raise ModelError(
            f"cannot trace {type(model).__name__} with torch.fx ({type(error).__name__}: {first}). "
            "torch.fx needs forward() free of Python control flow on tensor values and of iteration "
            "over tensors. For your own model, move such code into a submodule and register it as a "
            "leaf; for a library's model, compress the part fx can trace (e.g. its backbone) or an "
            "equivalent implementation without that construct."
        ) from error
    _drop_pinned_arguments(graph_module)
    return graph_module


def _drop_pinned_arguments(graph_module: fx.GraphModule) -> None:
    """fx keeps a pinned argument as a placeholder guarded by an assertion of its value
    (an ``eq`` TorchScript cannot export); the core calls the model with its input only."""
    placeholders = [n for n in graph_module.graph.nodes if n.op == "placeholder"]
    for placeholder in placeholders[1:]:
        guards, frontier = [], list(placeholder.users)
        while frontier:
            node = frontier.pop()
            if node.op != "call_function" or node.target not in _GUARDS:
                break
            guards.append(node)
            frontier.extend(node.users)
        else:
            for node in reversed(sorted(set(guards), key=_position(graph_module))):
                graph_module.graph.erase_node(node)
            if not placeholder.users:
                graph_module.graph.erase_node(placeholder)
    graph_module.recompile()


def _position(graph_module: fx.GraphModule) -> Callable[[fx.Node], int]:
    order = {node: i for i, node in enumerate(graph_module.graph.nodes)}
    return order.__getitem__


def _optional_arguments(model: nn.Module) -> dict[str, Any] | None:
    try:
        parameters = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):  # a builtin forward: nothing to pin
        return None
    pinned = {
        p.name: p.default
        for p in parameters[1:]
        if p.default is not inspect.Parameter.empty
        and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    return pinned or None


_GUARDS = (fx._symbolic_trace._assert_is_none, torch._assert, operator.eq)

OutputSelector = str | int | Callable[[Any], torch.Tensor] | None


def select_output(
    outputs: Any,
    output: OutputSelector = None,
    *,
    what: str = "the model",
    kinds: tuple[type, ...] = (torch.Tensor,),
) -> Any:
    """The tensor the metric, the loss and the exported model use, from what forward()
    returned: ``output`` names it (a key or attribute such as "logits", an index, or a
    function of the outputs); None takes the outputs when they are a tensor, else their
    ``logits``, else the first tensor among them. ``kinds``: what counts as a tensor
    (fx.Node: select in a traced graph's return value)."""
    if output is None:
        if isinstance(outputs, kinds):
            return outputs
        found = _get(outputs, "logits")
        if found is not None:
            return found
        found = _first_tensor(outputs, kinds)
        if found is None:
            raise ModelError(
                f"{what} returned {type(outputs).__name__} with no tensor in it; "
                "pass output= (a key, an index or a function of the outputs) naming the logits"
            )
        return found
    if callable(output):
        return output(outputs)
    found = _get(outputs, output)
    if found is None:
        raise ModelError(
            f"output={output!r} does not name a part of what {what} returned ({_describe(outputs)}); "
            "pass a key or attribute name, an index, or a function of the outputs"
        )
    return found


def _structure(returned: Any) -> Any:
    """A traced graph's return value as the structure of nodes it builds: fx records a
    namedtuple or dataclass output as a call of its class."""
    if isinstance(returned, fx.Node) and returned.op == "call_function" and isinstance(returned.target, type):
        cls = returned.target
        fields = getattr(cls, "_fields", None) or list(getattr(cls, "__dataclass_fields__", {}))
        if fields:
            values = dict(zip(fields, returned.args))
            values.update(returned.kwargs)
            return values
    return returned


def _get(outputs: Any, key: str | int) -> Any:
    if isinstance(key, int) and not isinstance(key, bool) and isinstance(outputs, (tuple, list)):
        return outputs[key] if -len(outputs) <= key < len(outputs) else None
    if isinstance(key, str):
        if isinstance(outputs, Mapping) and key in outputs:
            return outputs[key]
        if not isinstance(outputs, (torch.Tensor, fx.Node)) and hasattr(
            type(outputs), "__dataclass_fields__"
        ):
            return getattr(outputs, key, None)
        if isinstance(outputs, tuple) and hasattr(outputs, "_fields"):  # a namedtuple
            return getattr(outputs, key, None)
    return None


def _first_tensor(outputs: Any, kinds: tuple[type, ...] = (torch.Tensor,)) -> Any:
    if isinstance(outputs, kinds):
        return outputs
    values = outputs.values() if isinstance(outputs, Mapping) else outputs
    if isinstance(values, (tuple, list)) or isinstance(outputs, Mapping):
        for value in values:
            found = _first_tensor(value, kinds)
            if found is not None:
                return found
    return None


def _describe(outputs: Any) -> str:
    if isinstance(outputs, Mapping):
        return f"{type(outputs).__name__} with keys {list(outputs)}"
    if isinstance(outputs, (tuple, list)):
        return f"{type(outputs).__name__} of {len(outputs)}"
    return type(outputs).__name__


def capture(model: nn.Module, example_input: torch.Tensor, output: OutputSelector = None) -> nn.Module:
    """The model as the compression core takes it: one tensor in, the logits out, as a
    graph torch.fx can trace.

    A model that returns a tensor (and no ``output``) and that fx traces is returned as it
    is. Otherwise it is traced (torch.fx) and its graph ends at the selected tensor (see
    ``select_output``), so fine-tuning, export and measurement all use the same output;
    the layers keep their names. When fx cannot trace it (library code: shape unpacking,
    ``**kwargs`` wrappers, attention dispatch), it is captured with torch.export instead
    (see ``exported_graph``).
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            outputs = model(example_input)
    except Exception as error:
        raise ModelError(
            f"{type(model).__name__} failed on an input of shape {list(example_input.shape)} "
            f"({type(error).__name__}: {error}); forward() must take one batch of the loader's inputs"
        ) from error
    finally:
        model.train(was_training)
    if output is not None or not isinstance(outputs, torch.Tensor):
        selected = select_output(outputs, output, what=type(model).__name__)
        if not isinstance(selected, torch.Tensor):
            raise ModelError(f"output={output!r} selected a {type(selected).__name__}, not a tensor")
    try:
        graph_module = trace(model)
    except ModelError as fx_error:
        try:
            return exported_graph(model, example_input, output)
        except Exception as export_error:
            first = str(export_error).strip().splitlines()[0][:300] if str(export_error).strip() else ""
            raise ModelError(
                f"{fx_error} torch.export could not capture it either ({type(export_error).__name__}: {first})."
            ) from export_error
    if output is None and isinstance(outputs, torch.Tensor):
        return model
    node = next(n for n in graph_module.graph.nodes if n.op == "output")
    returned = _structure(node.args[0])
    if callable(output):
        with graph_module.graph.inserting_before(node):
            chosen = graph_module.graph.call_function(output, (returned,))
    else:
        chosen = select_output(returned, output, what=type(model).__name__, kinds=(fx.Node,))
    if not isinstance(chosen, fx.Node):
        raise ModelError(
            f"the traced graph of {type(model).__name__} returns {_describe(returned)}: cannot find the "
            "selected output in it; pass output= as a function of the outputs"
        )
    node.args = (chosen,)
    graph_module.graph.eliminate_dead_code()
    graph_module.recompile()
    graph_module.train(was_training)
    return graph_module


class _Selected(nn.Module):
    """The model with its output selected: what torch.export captures."""

    def __init__(self, model: nn.Module, output: OutputSelector) -> None:
        super().__init__()
        self.model = model
        self.output = output

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return select_output(self.model(inputs), self.output, what=type(self.model).__name__)


# The ATen calls a Conv or Linear module's forward makes: mapped back to the module.
_MODULE_CALLS = {
    torch.ops.aten.linear.default: nn.Linear,
    torch.ops.aten.conv1d.default: nn.Conv1d,
    torch.ops.aten.conv2d.default: nn.Conv2d,
    torch.ops.aten.conv3d.default: nn.Conv3d,
}


def exported_graph(
    model: nn.Module, example_input: torch.Tensor, output: OutputSelector = None
) -> fx.GraphModule:
    """``model`` captured with torch.export (batch dimension dynamic), as an fx graph of
    ATen operations in which every Conv and Linear call is the model's own module again,
    under its own name, so policies address the layers as in the model.

    torch.export records the forward as it ran in eval mode: dropout is off and BatchNorm
    uses its running statistics, also during fine-tuning."""
    prefix = "model."
    model = copy.deepcopy(model).eval()
    sample = example_input[:1]
    # Two samples: torch.export specialises a dimension of size 1 to a constant.
    batch = torch.cat([sample, sample])
    program = torch.export.export(
        _Selected(model, output), (batch,), dynamic_shapes=({0: torch.export.Dim("batch")},), strict=False
    )
    source = program.module()
    graph = fx.Graph()
    copied: dict[fx.Node, fx.Node] = {}
    for node in source.graph.nodes:
        if node.op == "call_module":  # torch.export's input guards: checked again by the core
            continue
        if node.op == "get_attr":
            copied[node] = graph.get_attr(node.target.removeprefix(prefix))
        elif node.op == "output":  # the flat outputs: the one selected tensor
            (selected,) = node.args[0]
            graph.output(copied[selected])
        elif node.op == "call_function" and node.target == torch.ops.aten.sym_size.int:
            # x.size(d): the ONNX exporter's tracer keeps it a graph value; the ATen
            # call would freeze the batch size of the export into the model.
            copied[node] = graph.call_method("size", (copied[node.args[0]], node.args[1]))
        elif (layer := _layer_called(node, model, prefix)) is not None:
            copied[node] = graph.call_module(layer, (copied[node.args[0]],))
        else:
            copied[node] = graph.node_copy(node, copied.__getitem__)
    _sizes_through_python_calls(graph)
    _unfuse_attention(graph)
    graph_module = fx.GraphModule(model, graph, class_name=type(model).__name__)
    graph_module.graph.eliminate_dead_code()
    graph_module.recompile()
    return graph_module


def _unfuse_attention(graph: fx.Graph) -> None:
    """Fused attention (scaled_dot_product_attention, as transformers calls it) as its two
    MatMuls and the softmax between them, so that quantization can reach all four MatMul
    inputs as NNCF's transformer placement does (the fused op hides the softmax output
    and the values). The ONNX export decomposes it the same way; dropout is off (eval)."""
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target != torch.ops.aten.scaled_dot_product_attention.default:
            continue
        names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
        call = dict(zip(names, node.args)) | dict(node.kwargs)
        query = call["query"]
        query_value = query.meta.get("val") if isinstance(query, fx.Node) else None
        if call.get("is_causal") or call.get("enable_gqa") or call.get("dropout_p") or query_value is None:
            continue  # left fused: still exports, its query and key are quantized
        mask = call.get("attn_mask")
        mask_value = mask.meta.get("val") if isinstance(mask, fx.Node) else None
        if mask is not None and mask_value is None:
            continue  # a mask of unknown kind: left fused
        scale = call.get("scale") or 1 / math.sqrt(query_value.shape[-1])
        with graph.inserting_before(node):
            keys = graph.call_method("transpose", (call["key"], -2, -1))
            scores = graph.call_function(torch.mul, (graph.call_function(torch.matmul, (query, keys)), scale))
            if mask_value is not None and mask_value.dtype == torch.bool:  # True: may attend
                hidden = graph.call_function(torch.logical_not, (mask,))
                scores = graph.call_method("masked_fill", (scores, hidden, -math.inf))
            elif mask_value is not None:  # additive
                scores = graph.call_function(torch.add, (scores, mask))
            weights = graph.call_function(torch.softmax, (scores, -1))
            out = graph.call_function(torch.matmul, (weights, call["value"]))
        node.replace_all_uses_with(out)
        graph.erase_node(node)


def _sizes_through_python_calls(graph: fx.Graph) -> None:
    """An ATen call that takes a size computed from the input (``expand(cls, [batch, -1,
    -1])``) becomes the Tensor method or torch function of that name: the ONNX exporter's
    tracer keeps sizes symbolic only through those (measured: the ATen call exports the
    batch of the export as a constant, and OpenVINO then fails at any other batch)."""
    sizes: set[fx.Node] = set()
    for node in graph.nodes:
        inputs = node.all_input_nodes
        if node.op == "call_method" and node.target == "size":
            sizes.add(node)
        elif node.op == "call_function" and node.target.__module__ in ("_operator", "operator"):
            if any(n in sizes for n in inputs):
                sizes.add(node)  # arithmetic on sizes is a size
        elif isinstance(node.target, torch._ops.OpOverload) and any(n in sizes for n in inputs):
            name = _op_name(node)
            if isinstance(node.args[0], fx.Node) and hasattr(torch.Tensor, name):
                node.op, node.target = "call_method", name
            elif hasattr(torch, name):
                node.target = getattr(torch, name)


def _layer_called(node: fx.Node, model: nn.Module, prefix: str) -> str | None:
    """The name of the Conv or Linear module whose own forward made this ATen call."""
    kind = _MODULE_CALLS.get(node.target) if node.op == "call_function" else None
    stack = node.meta.get("nn_module_stack") or {}
    if kind is None or not stack:
        return None
    path = next(reversed(stack.values()))[0].removeprefix(prefix)
    weight = node.args[1]
    if not (
        isinstance(weight, fx.Node) and weight.op == "get_attr" and weight.target == f"{prefix}{path}.weight"
    ):
        return None
    module = model.get_submodule(path)
    if type(module) is not kind or (node.args[2] is None) != (module.bias is None):
        return None
    if kind is not nn.Linear:  # the module's own convolution, not a padded or strided variant
        settings = tuple(tuple(a) if isinstance(a, (list, tuple)) else a for a in node.args[3:])
        expected = (module.stride, module.padding, module.dilation, module.groups)
        if module.padding_mode != "zeros" or settings != expected[: len(settings)]:
            return None
    return path


_ATEN = torch.ops.aten
_MATMULS = {torch.matmul, operator.matmul, torch.bmm, _ATEN.matmul.default, _ATEN.bmm.default}
_ATTENTION = {nn.functional.scaled_dot_product_attention, _ATEN.scaled_dot_product_attention.default}
_MOVES = {"view", "reshape", "transpose", "permute", "contiguous", "_unsafe_view", "clone"}


def activation_product(node: fx.Node) -> bool:
    """A MatMul of two activations (attention scores, attention x values), or fused
    attention, whose first two inputs (query and key) are such a product."""
    if node.op == "call_function" and node.target in _ATTENTION:
        return True
    is_matmul = (node.op == "call_function" and node.target in _MATMULS) or (
        node.op == "call_method" and node.target in ("matmul", "bmm")
    )
    return is_matmul and all(isinstance(a, fx.Node) and a.op != "get_attr" for a in node.args[:2])


def head_widths(model: nn.Module) -> dict[str, int]:
    """Linear layer -> the width of the attention heads its outputs are split into: the
    last size of the view that splits them, when (through reshapes and transposes only)
    they reach an attention MatMul. {} when the model has none or does not trace."""
    try:
        graph = model.graph if isinstance(model, fx.GraphModule) else trace(model).graph
    except ModelError:
        return {}
    modules = dict(model.named_modules())
    widths = {}
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.Linear):
            continue
        frontier, width = [(user, None) for user in node.users], None
        while frontier and width is None:
            current, split = frontier.pop()
            if activation_product(current):
                width = split
            elif _op_name(current) in _MOVES:
                split = _split_width(current) or split
                frontier.extend((user, split) for user in current.users)
        if width:
            widths[node.target] = width
    return widths


def _op_name(node: fx.Node) -> str | None:
    """A method's or function's name; an ATen op's without its overload (view, not view.default)."""
    if node.op == "call_method":
        return node.target
    if node.op == "call_function":
        if isinstance(node.target, torch._ops.OpOverload):
            return node.target.overloadpacket.__name__
        return getattr(node.target, "__name__", None)
    return None


def _split_width(node: fx.Node) -> int | None:
    """The last size of a view or reshape into (..., heads, width): at least 3 sizes, the
    last a constant."""
    if _op_name(node) not in ("view", "reshape", "_unsafe_view"):
        return None
    shape = node.args[1] if len(node.args) == 2 and isinstance(node.args[1], (list, tuple)) else node.args[1:]
    if len(shape) >= 3 and isinstance(shape[-1], int) and shape[-1] > 0:
        return shape[-1]
    return None


def compressible_layers(model: nn.Module) -> list[str]:
    """Names of the layers a policy can address (Conv and Linear modules), in order."""
    return [name for name, module in model.named_modules() if isinstance(module, COMPRESSIBLE)]


def inputs_of(batch: Any) -> torch.Tensor:
    inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(
            f"loader batches must be tensors or (inputs, targets) pairs, got {type(inputs).__name__}"
        )
    return inputs
