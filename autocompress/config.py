"""A search as a file: ``autocompress search --config search.yaml`` (also for ``ray job submit``).

    model: mypkg.models:trained_resnet     # () -> a trained torch.nn.Module
    data: mypkg.data:loaders               # () -> (train_loader, val_loader) or (train, val, test)
    metric: mypkg.metrics:top1             # optional: (logits, targets) -> float, higher is better
    objective: latency                     # or throughput, size, [latency, size], {latency: 0.7, size: 0.3}
    max_accuracy_drop: 0.01
    space: joint
    n_trials: 50
    workdir: /shared/autocompress
    backend: ray                           # or optuna
    ray: {address: auto, storage_path: /shared/ray-results, target_resource: ov_target}

Entry points are ``module:function``; the module must be importable where the driver
runs (on a cluster: on every node, e.g. through the job's working_dir).
"""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class RayOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    address: str | None = None
    storage_path: str | None = None
    resources_per_trial: dict[str, float] = Field(default_factory=lambda: {"cpu": 1})
    target_resource: str | None = None
    max_concurrent: int | None = None
    max_failures: int = 2
    scheduler: Literal["asha"] | None = None
    reuse_actors: bool = True


class SearchConfig(BaseModel):
    """Everything ``autocompress.search`` takes, with the Python objects as entry points."""

    model_config = ConfigDict(extra="forbid")

    model: str
    data: str
    metric: str | None = None
    loss: str | None = None
    objective: str | list[str] | dict[str, float] = "latency"
    max_accuracy_drop: float = 0.01
    relative_drop: bool = False
    space: str = "joint"
    n_trials: int = 30
    timeout: float | None = None
    workdir: str = "autocompress-search"
    study_name: str | None = None
    storage: str | None = None
    seed: int = 0
    sampler: str = "auto"
    strategy: str = "direct"
    target: dict[str, Any] = Field(default_factory=dict)
    finetune: dict[str, Any] = Field(default_factory=dict)
    backend: Literal["optuna", "ray"] = "optuna"
    ray: RayOptions = Field(default_factory=RayOptions)

    @classmethod
    def load(cls, path: str | Path) -> "SearchConfig":
        import yaml

        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"search config {path} does not exist") from None
        except yaml.YAMLError as error:
            raise ValueError(f"search config {path} is not valid YAML: {error}") from None
        if not isinstance(data, dict):
            raise ValueError(f"search config {path} must be a mapping of settings (model:, data:, ...), got {type(data).__name__}")
        try:
            return cls(**data)
        except ValidationError as error:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(top)'}: {e['msg']}" for e in error.errors())
            raise ValueError(f"search config {path}: {problems}") from None

    def run(self, progress: bool = True):
        """Resolve the entry points and run the search; returns the SearchResult."""
        import autocompress
        from autocompress.search import SEARCH_FINETUNE, Ray
        from autocompress.evaluators.target import Target

        # Everything that can be checked without running user code, first.
        build_model, build_loaders = entry_point(self.model, "model"), entry_point(self.data, "data")
        metric = entry_point(self.metric, "metric") if self.metric else None
        loss_fn = entry_point(self.loss, "loss") if self.loss else None
        try:
            finetune = dataclasses.replace(SEARCH_FINETUNE, **self.finetune)
            target = Target(**self.target)
        except TypeError as error:
            raise ValueError(f"search config: finetune or target has an unknown setting ({error})") from None
        backend = Ray(**self.ray.model_dump()) if self.backend == "ray" else "optuna"
        model = build_model()
        loaders = build_loaders()
        if not isinstance(loaders, (tuple, list)) or len(loaders) not in (2, 3):
            raise ValueError(f"data entry point {self.data} must return (train_loader, val_loader) or (train, val, test), "
                             f"got {type(loaders).__name__}")
        train, val, test = (*loaders, None)[:3]
        return autocompress.search(
            model, train, val, test_loader=test,
            metric=metric, loss_fn=loss_fn,
            objective=self.objective, max_accuracy_drop=self.max_accuracy_drop, relative_drop=self.relative_drop,
            target=target, space=self.space, n_trials=self.n_trials, timeout=self.timeout,
            storage=self.storage, study_name=self.study_name, workdir=self.workdir, finetune=finetune,
            sampler=self.sampler, strategy=self.strategy, seed=self.seed, progress=progress, backend=backend,
        )


def entry_point(spec: str, what: str) -> Callable:
    """'package.module:function' -> the function."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"{what}: {spec!r} is not an entry point; write it as 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"{what}: cannot import {module_name!r} ({error}); is it installed or on PYTHONPATH "
                         "(on a cluster: in the job's working_dir)?") from None
    try:
        function = getattr(module, attribute)
    except AttributeError:
        raise ValueError(f"{what}: module {module_name!r} has no {attribute!r}") from None
    if not callable(function):
        raise ValueError(f"{what}: {spec} is a {type(function).__name__}, not a function")
    return function
