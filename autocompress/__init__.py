"""autocompress: find the best way to compress a trained PyTorch model for a target machine.

compressed = autocompress.apply_policy(model, Policy.quantize(8, 8), train_loader)
report = autocompress.evaluate({"fp32": model, "int8": compressed}, test_loader)
print(report.table())
autocompress.export(compressed, "deploy/")

result = autocompress.search(model, train_loader, val_loader, test_loader=test_loader)
"""

from autocompress.core import CompressedModel, Finetune, ModelError, apply_policy, compressible_layers
from autocompress.evaluate import Report, evaluate
from autocompress.evaluators.target import LatencyConfig, Target
from autocompress.export import export
from autocompress.policies import LayerPolicy, LayerQuant, Policy, PolicyError, TensorQuant
from autocompress.search import SearchResult, resume, search
from autocompress.training import TrainStage

__version__ = "0.1.0"

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
    "TrainStage",
    "apply_policy",
    "compressible_layers",
    "evaluate",
    "export",
    "resume",
    "search",
]
