"""Backend options (plain data; importing this does not import Ray)."""

from __future__ import annotations

import dataclasses
from typing import Any

SCHEDULERS = (None, "asha")


@dataclasses.dataclass(frozen=True)
class Ray:
    """Run the search as a Ray Tune experiment: ``search(..., backend=Ray(...))`` or ``backend="ray"``.

    address: None starts (or joins the already initialised) local Ray; "auto", "host:port"
        or "ray://host:port" joins an existing cluster.
    storage_path: absolute directory (shared by all nodes on a cluster) or cloud URI
        (s3://, gs://) for the experiment ``<storage_path>/<study_name>``; default
        ``<workdir>/ray``. search(storage=...) is then an optional Optuna RDB that
        mirrors the sampler's study (for optuna-dashboard).
    resources_per_trial: Ray resources a trial holds while it compresses and fine-tunes.
    target_resource: a custom resource that marks the nodes of the target hardware
        (``ray start --resources='{"ov_target": 1}'``): every latency measurement runs
        there, one at a time per node. None: measured on the trial's own node.
    max_concurrent: trials at once (default: as many as the resources allow).
    max_failures: retries of a trial whose worker or node died (from its checkpoint);
        a trial that raises (bad policy, NaN metric) is recorded as failed, not retried.
    scheduler: None (the accuracy-floor early stop only) or "asha" (also stops trials
        whose accuracy at the checks is in the bottom of their rung).
    """

    address: str | None = None
    storage_path: str | None = None
    resources_per_trial: dict[str, float] = dataclasses.field(default_factory=lambda: {"cpu": 1})
    target_resource: str | None = None
    max_concurrent: int | None = None
    max_failures: int = 2
    scheduler: str | None = None
    reuse_actors: bool = True

    def __post_init__(self) -> None:
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"unknown Ray scheduler {self.scheduler!r}; use None or 'asha'")
        if self.max_failures < 0:
            raise ValueError(f"max_failures must be >= 0, got {self.max_failures}")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise ValueError(f"max_concurrent must be >= 1 or None, got {self.max_concurrent}")
        if not isinstance(self.resources_per_trial, dict) or not self.resources_per_trial:
            raise ValueError(f"resources_per_trial must be a non-empty dict such as {{'cpu': 1}}, got {self.resources_per_trial!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
