"""autocompress: find the best way to compress a trained PyTorch model for a target machine.

    compressed = autocompress.apply_policy(model, Policy.quantize(8, 8), train_loader)
    report = autocompress.evaluate({"fp32": model, "int8": compressed}, test_loader)
    print(report.table())
    autocompress.export(compressed, "deploy/")

    result = autocompress.search(model, train_loader, val_loader, test_loader=test_loader)

The names below load on first use (PEP 562): ``import autocompress`` stays cheap and
imports no torch, so the torch-free OpenVINO worker and the CLI's ``--help`` start fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "CompressedModel": "autocompress.core",
    "Finetune": "autocompress.core",
    "ModelError": "autocompress.core",
    "apply_policy": "autocompress.core",
    "compressible_layers": "autocompress.core",
    "Report": "autocompress.evaluate",
    "evaluate": "autocompress.evaluate",
    "export": "autocompress.export",
    "SearchResult": "autocompress.search",
    "resume": "autocompress.search",
    "search": "autocompress.search",
    "LatencyConfig": "autocompress.evaluators.target",
    "Target": "autocompress.evaluators.target",
    "LayerPolicy": "autocompress.policies",
    "LayerQuant": "autocompress.policies",
    "Policy": "autocompress.policies",
    "PolicyError": "autocompress.policies",
    "TensorQuant": "autocompress.policies",
}

__all__ = [
    "CompressedModel",
    "Finetune",
    "LatencyConfig",
    "LayerPolicy",
    "LayerQuant",
    "ModelError",
    "Policy",
    "PolicyError",
    "Report",
    "SearchResult",
    "Target",
    "TensorQuant",
    "apply_policy",
    "compressible_layers",
    "evaluate",
    "export",
    "resume",
    "search",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'autocompress' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once loaded, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


# `autocompress.search` is the search function, and `autocompress.search` also names the
# package of the search layer (from autocompress.search import Ray). The package is loaded
# now (it is lazy too, so this costs nothing) and its name handed to the function, so that
# importing one of its modules later cannot rebind the name to the package.
importlib.import_module("autocompress.search")
del globals()["search"]


if TYPE_CHECKING:  # what static tools and IDEs see
    from autocompress.core import CompressedModel, Finetune, ModelError, apply_policy, compressible_layers
    from autocompress.evaluate import Report, evaluate
    from autocompress.evaluators.target import LatencyConfig, Target
    from autocompress.export import export
    from autocompress.policies import LayerPolicy, LayerQuant, Policy, PolicyError, TensorQuant
    from autocompress.search import SearchResult, resume, search
