"""Compression policies as plain, validated, JSON-serialisable data."""

from policies.schema import (
    DEFAULT_ACTIVATIONS,
    DEFAULT_WEIGHTS,
    POLICY_FORMAT,
    POLICY_VERSION,
    LayerPolicy,
    LayerQuant,
    Policy,
    PolicyError,
    Pruning,
    Sparsity,
    TensorQuant,
)

__all__ = [
    "DEFAULT_ACTIVATIONS",
    "DEFAULT_WEIGHTS",
    "POLICY_FORMAT",
    "POLICY_VERSION",
    "LayerPolicy",
    "LayerQuant",
    "Policy",
    "PolicyError",
    "Pruning",
    "Sparsity",
    "TensorQuant",
]
