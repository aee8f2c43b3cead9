"""Compression policies as plain, validated, JSON-serialisable data."""

from autocompress.policies.schema import (
    DEFAULT_ACTIVATIONS,
    DEFAULT_WEIGHTS,
    POLICY_FORMAT,
    POLICY_VERSION,
    Distillation,
    LayerPolicy,
    LayerQuant,
    Policy,
    PolicyError,
    Pruning,
    Sparsity,
    Student,
    TensorQuant,
)

__all__ = [
    "DEFAULT_ACTIVATIONS",
    "DEFAULT_WEIGHTS",
    "Distillation",
    "POLICY_FORMAT",
    "POLICY_VERSION",
    "LayerPolicy",
    "LayerQuant",
    "Policy",
    "PolicyError",
    "Pruning",
    "Sparsity",
    "Student",
    "TensorQuant",
]
