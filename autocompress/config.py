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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from autocompress.search.settings import FINAL_FINETUNE, SAMPLERS, SEARCH_FINETUNE, Ray, SearchSettings

ENTRY_POINTS = ("model", "data", "metric", "loss")


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """A search file: the Python objects as entry points, everything else SearchSettings
    (validated there, the same way as ``autocompress.search``'s arguments)."""

    model: str
    data: str
    settings: SearchSettings
    metric: str | None = None
    loss: str | None = None

    @classmethod
    def load(cls, path: str | Path) -> SearchConfig:
        import yaml

        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"search config {path} does not exist") from None
        except (OSError, UnicodeDecodeError) as error:
            raise ValueError(f"search config {path} cannot be read: {error}") from None
        except yaml.YAMLError as error:
            raise ValueError(f"search config {path} is not valid YAML: {error}") from None
        if not isinstance(data, dict):
            raise ValueError(
                f"search config {path} must be a mapping of settings (model:, data:, ...), got {type(data).__name__}"
            )
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as error:
            raise ValueError(f"search config {path}: {error}") from None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchConfig:
        data = dict(data)
        points = {key: data.pop(key, None) for key in ENTRY_POINTS}
        for key in ("model", "data"):
            if not isinstance(points[key], str):
                raise ValueError(f"{key}: an entry point 'package.module:function' is required")
        ray_options = data.pop("ray", None)
        if data.get("backend") == "ray" or ray_options is not None:
            if data.get("backend", "ray") != "ray":
                raise ValueError("ray: options given, but backend is not 'ray'")
            data["backend"] = Ray.from_dict(ray_options or {})
        # SearchSettings.from_dict reads back a sampler instance stored by its class name as
        # "auto"; a config file names a sampler, and any other name is a mistake.
        if "sampler" in data and (not isinstance(data["sampler"], str) or data["sampler"] not in SAMPLERS):
            raise ValueError(f"unknown sampler {data['sampler']!r}; use one of {', '.join(SAMPLERS)}")
        if isinstance(data.get("finetune"), dict):
            data["finetune"] = {**dataclasses.asdict(SEARCH_FINETUNE), **data["finetune"]}
        if isinstance(data.get("final_finetune"), dict):
            data["final_finetune"] = {**dataclasses.asdict(FINAL_FINETUNE), **data["final_finetune"]}
        return cls(
            model=points["model"],
            data=points["data"],
            metric=points["metric"],
            loss=points["loss"],
            settings=SearchSettings.from_dict(data),
        )

    def run(self, progress: bool = True):
        """Resolve the entry points and run the search; returns the SearchResult."""
        from autocompress.search.driver import Loaders, make_backend, run_search

        # Everything that can be checked without running user code, first.
        build_model, build_loaders = entry_point(self.model, "model"), entry_point(self.data, "data")
        metric = entry_point(self.metric, "metric") if self.metric else None
        loss_fn = entry_point(self.loss, "loss") if self.loss else None
        model = build_model()
        loaders = build_loaders()
        if not isinstance(loaders, (tuple, list)) or len(loaders) not in (2, 3, 4):
            raise ValueError(
                f"data entry point {self.data} must return (train_loader, val_loader), (train, val, test) or "
                f"(train, val, test, confirm), got {type(loaders).__name__}"
            )
        settings = dataclasses.replace(self.settings, workdir=str(Path(self.settings.workdir).resolve()))
        data = Loaders(*loaders)
        return run_search(settings, model, data, metric, loss_fn, make_backend(settings), progress)


def entry_point(spec: str, what: str) -> Callable:
    """'package.module:function' -> the function."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"{what}: {spec!r} is not an entry point; write it as 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(
            f"{what}: cannot import {module_name!r} ({error}); is it installed or on PYTHONPATH "
            "(on a cluster: in the job's working_dir)?"
        ) from None
    try:
        function = getattr(module, attribute)
    except AttributeError:
        raise ValueError(f"{what}: module {module_name!r} has no {attribute!r}") from None
    if not callable(function):
        raise ValueError(f"{what}: {spec} is a {type(function).__name__}, not a function")
    return function
