"""Translate a SearchSpace into Optuna distributions (define-and-run)."""

from __future__ import annotations

from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution

from autocompress.search_spaces.space import Dimension, SearchSpace


def distribution(dim: Dimension) -> BaseDistribution:
    if dim.choices is not None:
        return CategoricalDistribution(list(dim.choices))
    return FloatDistribution(dim.low, dim.high, step=dim.step, log=dim.log)


def distributions(space: SearchSpace) -> dict[str, BaseDistribution]:
    """{dimension name: Optuna distribution} for the searched (not fixed) dimensions."""
    return {dim.name: distribution(dim) for dim in space.searched}


def suggest(trial: optuna.Trial, space: SearchSpace) -> dict[str, Any]:
    """Sample every searched dimension of ``space`` in ``trial``; returns {name: value}."""
    return {name: _suggest(trial, name, dist) for name, dist in distributions(space).items()}


def _suggest(trial: optuna.Trial, name: str, dist: BaseDistribution) -> Any:
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)
