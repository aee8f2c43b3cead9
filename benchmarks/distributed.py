"""Distributed search benchmark: the same search on a local Ray cluster of 1 vs 2 worker
nodes (1 CPU each), and in-process on the Optuna backend, in ONE run.

Zoo ResNet-20 on MNIST-5k, compact space, random sampler with a fixed seed (so every
run proposes the same policies whatever the concurrency), drop <= 1 pt. Latency is
measured on the head node (it holds the target resource, one measurement at a time).

Reported per configuration: wall time of the search() call (baseline measurement and
Ray/Tune start-up included; the cluster's own start-up not), trials per hour, speedup over 1 worker, and Ray's overhead per trial: Tune's trial time minus the
work inside it (compression + fine-tuning, export, measurement), median.

    python benchmarks/distributed.py                  # 6 trials per configuration
    python benchmarks/distributed.py --trials 8 --width 1
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

for _key, _value in {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_AIR_NEW_OUTPUT": "0",
    "TUNE_GLOBAL_CHECKPOINT_S": "1",
}.items():
    os.environ.setdefault(_key, _value)

import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

import autocompress  # noqa: E402
from autocompress import Target  # noqa: E402
from autocompress.data import load_dataset, make_loaders  # noqa: E402
from autocompress.search import SEARCH_FINETUNE, Ray, SearchResult  # noqa: E402
from autocompress.zoo import pretrained  # noqa: E402

NODE = dict(num_cpus=1, object_store_memory=256 * 1024**2)


def inner_seconds(trial) -> float:
    m = trial.measurements
    return (m.seconds_compress or 0) + (m.seconds_export or 0) + (m.seconds_measure or 0)


def run(label: str, workers: int | None, model, loaders, args, workdir: Path) -> dict:
    train, val, _ = loaders
    options = dict(
        space="compact",
        sampler="random",
        seed=0,
        n_trials=args.trials,
        max_accuracy_drop=args.max_drop,
        target=Target(threads=1, precision_hint="f32"),
        finetune=SEARCH_FINETUNE,
        progress=False,
        workdir=workdir / label,
        study_name=label,
    )
    cluster = None
    if workers is not None:
        cluster = Cluster(initialize_head=True, head_node_args={**NODE, "resources": {"ov_target": 1}})
        for _ in range(workers - 1):
            cluster.add_node(**NODE)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
        options["backend"] = Ray(storage_path=str(workdir / label / "ray"), target_resource="ov_target")
    try:
        started = time.perf_counter()
        result: SearchResult = autocompress.search(model, train, val, **options)
        wall = time.perf_counter() - started
    finally:
        if cluster is not None:
            ray.shutdown()
            cluster.shutdown()
    finished = [t for t in result.trials if t.state in ("COMPLETE", "PRUNED")]
    complete = [t for t in result.trials if t.state == "COMPLETE" and t.seconds]
    return {
        "label": label,
        "wall": wall,
        "trials": len(finished),
        "per_hour": 3600 * len(finished) / wall,
        "overhead": statistics.median(t.seconds - inner_seconds(t) for t in complete)
        if complete and workers
        else None,
        "trial_s": statistics.median(t.seconds for t in complete) if complete else None,
        "policies": sorted(str(sorted(t.params.items())) for t in result.trials),
        "best": result.best.measurements.speedup if result.best else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--max-drop", type=float, default=0.01)
    parser.add_argument("--baseline-epochs", type=int, default=8)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)

    model = pretrained("resnet20", "mnist5k", epochs=args.baseline_epochs, width=args.width)
    loaders = make_loaders(load_dataset("mnist5k"))
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="autocompress-distributed-"))
    for label in ("optuna", "ray-1", "ray-2"):
        shutil.rmtree(workdir / label, ignore_errors=True)
    rows = [
        run("optuna", None, model, loaders, args, workdir),
        run("ray-1", 1, model, loaders, args, workdir),
        run("ray-2", 2, model, loaders, args, workdir),
    ]
    one = next(r for r in rows if r["label"] == "ray-1")
    print(
        f"\nresnet20 width {args.width:g}, MNIST-5k, compact space, random sampler (seed 0), {args.trials} trials, "
        f"{os.cpu_count()} cores; latency measured on the head node"
    )
    print(
        f"{'configuration':<28}{'wall s':>8}{'trials':>8}{'trials/h':>10}{'vs 1 worker':>13}{'trial s':>9}{'Ray ovh s':>11}{'best':>8}"
    )
    names = {"optuna": "Optuna, in-process", "ray-1": "Ray, 1 worker node", "ray-2": "Ray, 2 worker nodes"}
    for r in rows:
        overhead = f"{r['overhead']:.2f}" if r["overhead"] is not None else "-"
        best = f"{r['best']:.2f}x" if r["best"] else "-"
        print(
            f"{names[r['label']]:<28}{r['wall']:>8.0f}{r['trials']:>8}{r['per_hour']:>10.0f}{one['wall'] / r['wall']:>12.2f}x"
            f"{r['trial_s']:>9.1f}{overhead:>11}{best:>8}"
        )
    same = len({tuple(r["policies"]) for r in rows}) == 1
    print(
        f"\nsame policies in every configuration: {same}. trial s: median Tune/Optuna trial time; Ray ovh: "
        "trial time minus compression, export and measurement inside it (median)."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
