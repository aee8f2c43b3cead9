"""The Ray backend on a REAL two-node Ray cluster on this machine (ray.cluster_utils.Cluster,
1 CPU per node, loopback only): trials on both nodes, latency measured on the node that
holds the target resource, a node lost mid-search, a SIGKILLed driver restored."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import optuna
import pytest

import autocompress
from autocompress import Finetune, Target
from autocompress.search import Ray

# Set before Ray starts: loopback only, no telemetry, short socket paths, frequent experiment checkpoints.
RAY_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_AIR_NEW_OUTPUT": "0",
    "TUNE_GLOBAL_CHECKPOINT_S": "1",
}
for key, value in RAY_ENV.items():
    os.environ[key] = value

import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

FINETUNE = Finetune(epochs=0.3, recovery_epochs=0.5, rewind_lr=1e-3)
# True FP32 (f32 hint): INT8 is then clearly faster, so candidates beat the baseline.
TARGET = Target(threads=1, precision_hint="f32")
TARGET_RESOURCE = "ov_target"
NODE = dict(num_cpus=1, object_store_memory=256 * 1024**2)
ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


class TwoNodes:
    """The session's cluster: a head node (holds the target resource) and one worker."""

    def __init__(self) -> None:
        self.cluster = Cluster(
            initialize_head=True, head_node_args={**NODE, "resources": {TARGET_RESOURCE: 1}}
        )
        self.worker = self.cluster.add_node(**NODE)
        self.cluster.wait_for_nodes()
        ray.init(address=self.cluster.address, logging_level="WARNING")
        self.head_id = self.cluster.head_node.node_id
        self.address = self.cluster.address

    def node_ids(self) -> set[str]:
        return {n["NodeID"] for n in ray.nodes() if n["Alive"]}

    def replace_worker(self) -> None:
        self.cluster.remove_node(self.worker, allow_graceful=False)
        self.worker = self.cluster.add_node(**NODE)
        self.cluster.wait_for_nodes()

    def shutdown(self) -> None:
        ray.shutdown()
        self.cluster.shutdown()


@pytest.fixture(scope="session")
def two_nodes():
    # A short temp dir of its own: Ray's socket paths must stay under the 107-byte limit.
    tmpdir = Path(f"/tmp/rt{os.getpid()}")
    tmpdir.mkdir(exist_ok=True)
    os.environ["RAY_TMPDIR"] = str(tmpdir)
    cluster = TwoNodes()
    try:
        yield cluster
    finally:
        cluster.shutdown()
        subprocess.run(
            ["ray", "stop", "--force"], capture_output=True, timeout=60
        )  # leftovers of killed drivers
        shutil.rmtree(tmpdir, ignore_errors=True)


def ray_search(model, loaders, workdir: Path, **kwargs):
    train, val, _ = loaders
    options = dict(
        space="compact",
        finetune=FINETUNE,
        target=TARGET,
        progress=False,
        max_accuracy_drop=0.05,
        workdir=workdir,
        n_trials=4,
        # The search as it was before the confirmation stage; tests/test_confirm.py covers that.
        confidence=None,
        confirm_fraction=0.0,
    )
    backend = dict(storage_path=str(workdir / "ray"), target_resource=TARGET_RESOURCE, max_concurrent=2)
    backend.update(kwargs.pop("backend", {}))
    options.update(kwargs)
    return autocompress.search(model, train, val, backend=Ray(**backend), **options)


def test_trials_run_on_both_nodes_and_are_measured_on_the_target(two_nodes, cnn, digits_loaders, tmp_path):
    mirror = f"sqlite:///{tmp_path / 'mirror.db'}"
    result = ray_search(
        cnn,
        digits_loaders,
        tmp_path,
        study_name="both",
        storage=mirror,
        test_loader=digits_loaders[2],
        confirm_fraction=0.3,
        top_k=1,
        early_stop_margin=None,  # every trial finishes: both nodes train one (126 selection samples are noisy)
    )

    assert len(result.trials) == 4 and [t.number for t in result.trials] == [0, 1, 2, 3]
    finished = [t for t in result.trials if t.state == "COMPLETE"]
    assert len(finished) >= 3, [(t.state, t.error) for t in result.trials]
    trained_on = {t.measurements.node_trained for t in finished}
    assert trained_on == two_nodes.node_ids(), "with 1 CPU per node and 2 trials at once, both nodes train"
    assert {t.measurements.node_measured for t in finished} == {two_nodes.head_id}, (
        "latency only on the target node"
    )
    for t in finished:
        assert Path(t.measurements.ir_path).exists() and t.measurements.speedup > 0
        assert t.values == (pytest.approx(t.measurements.latency_ratio),)
    # The preset's start points come first: uniform INT8 is trial 0.
    assert result.trials[0].policy.default.quantization.weights.bits == 8
    assert result.test["samples"] > 0 and result.test["node"] == two_nodes.head_id, (
        "the final test check runs on the target node too"
    )
    # The best trial was fine-tuned again here and confirmed on the held-back data, measured on the target.
    (confirmed,) = result.confirmation
    assert confirmed.drop.samples == round(0.3 * len(digits_loaders[1].dataset))
    assert confirmed.measurements.node_measured == two_nodes.head_id
    assert result.feasible == confirmed.passed and result.best.feasible == confirmed.passed
    assert (tmp_path / "best" / "model.xml").exists() and (tmp_path / "result.json").exists()
    # The Optuna mirror holds the sampler's study, with the constraint of every finished trial.
    study = optuna.load_study(study_name="both", storage=mirror)
    told = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(told) == len(finished)
    assert all("accuracy" in t.constraints for t in told)
    # The sampler was told each trial's own figure; near-tied candidates re-timed side by side
    # afterwards carry the new figure in the result, their search figure in `remeasured`.
    in_search = {r["trial"]: 1 / r["speedup_in_search"] for r in result.remeasured or []}
    searched = [in_search.get(t.number, t.values[0]) for t in finished]
    assert sorted(t.values[0] for t in told) == pytest.approx(sorted(searched))
    # An existing experiment is not silently overwritten.
    with pytest.raises(ValueError, match="autocompress.resume"):
        ray_search(cnn, digits_loaders, tmp_path, study_name="both")


def test_a_lost_node_retries_its_trial_from_the_checkpoint(two_nodes, cnn, digits_loaders, tmp_path):
    worker = two_nodes.worker.node_id
    experiment = tmp_path / "ray" / "lost"
    removed = threading.Event()

    def remove_worker_after_its_checkpoint():
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not removed.is_set():
            for stage in experiment.glob("*/checkpoint_*/stage.json"):
                try:
                    data = json.loads(stage.read_text())
                except (OSError, ValueError):
                    continue
                if data.get("stage") == "exported" and data.get("node_trained") == worker:
                    two_nodes.cluster.remove_node(two_nodes.worker, allow_graceful=False)
                    removed.set()
                    return
            time.sleep(0.1)

    killer = threading.Thread(target=remove_worker_after_its_checkpoint, daemon=True)
    killer.start()
    try:
        result = ray_search(
            cnn, digits_loaders, tmp_path, study_name="lost", n_trials=2, backend={"max_failures": 2}
        )
    finally:
        removed.set()
        killer.join()
        two_nodes.worker = two_nodes.cluster.add_node(**NODE)  # later tests get their second node back
        two_nodes.cluster.wait_for_nodes()
    assert all(t.state in ("COMPLETE", "PRUNED") for t in result.trials), [
        (t.state, t.error) for t in result.trials
    ]
    resumed = [t for t in result.trials if t.measurements.resumed_from == "exported"]
    assert resumed, "the trial of the lost node went on from its post-export checkpoint"
    assert all(t.measurements.node_trained != worker for t in resumed)


KILLED_DRIVER = textwrap.dedent(
    """
    import sys
    import autocompress
    from autocompress import Finetune, Target
    from autocompress.data import load_dataset, make_loaders
    from autocompress.search import Ray
    from autocompress.zoo import pretrained

    address, workdir = sys.argv[1], sys.argv[2]
    train, val, test = make_loaders(load_dataset("digits"), batch_size=64)
    model = pretrained("mnist_cnn", "digits", epochs=2)
    autocompress.search(
        model, train, val, test_loader=test, space="compact", n_trials=4, max_accuracy_drop=0.05, workdir=workdir,
        finetune=Finetune(epochs=0.3, recovery_epochs=0.5, rewind_lr=1e-3), target=Target(threads=1), progress=False,
        study_name="killed",
        backend=Ray(address=address, storage_path=workdir + "/ray", target_resource="ov_target", max_concurrent=1),
    )
    """
)


def finished_trials(experiment: Path) -> dict[str, dict]:
    """{trial dir: its final result} for trials whose last stage checkpoint is 'measured'."""
    out = {}
    for stage in experiment.glob("*/checkpoint_*/stage.json"):
        try:
            data = json.loads(stage.read_text())
        except (OSError, ValueError):
            continue
        if data.get("stage") == "measured":
            out[stage.parent.parent.name] = data["result"]
    return out


@pytest.mark.parametrize("damaged", [False, True], ids=["intact", "damaged-sampler-state"])
def test_a_killed_driver_is_restored_and_finishes_the_budget(
    two_nodes, cnn, digits_loaders, tmp_path, damaged
):
    script = tmp_path / "driver.py"
    script.write_text(KILLED_DRIVER)
    experiment = tmp_path / "ray" / "killed"
    log = (tmp_path / "driver.log").open("w")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH")))),
    }
    driver = subprocess.Popen(
        [sys.executable, str(script), two_nodes.address, str(tmp_path)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while len(finished_trials(experiment)) < 2:
            assert driver.poll() is None, (
                f"the driver ended before it was killed:\n{(tmp_path / 'driver.log').read_text()[-3000:]}"
            )
            assert time.monotonic() < deadline, "the driver did not finish 2 trials in time"
            time.sleep(0.2)
        os.killpg(driver.pid, signal.SIGKILL)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
        log.close()
    before = finished_trials(experiment)
    time.sleep(2)  # Ray notices the dead driver and releases its trials' resources
    if damaged:  # as when the kill lands while Tune copies its state into the experiment (seen here)
        sorted(experiment.glob("searcher-state-*.pkl"))[-1].write_bytes(b"")

    result = autocompress.resume(str(experiment), progress=False)

    assert len(result.trials) == 4 and all(t.state in ("COMPLETE", "PRUNED") for t in result.trials), [
        (t.state, t.error) for t in result.trials
    ]
    after = finished_trials(experiment)
    for trial_dir, measured in before.items():  # finished before the kill: kept, not run again
        assert (
            after[trial_dir]["measurements"]["seconds_compress"]
            == measured["measurements"]["seconds_compress"]
        )
    assert result.best is not None and (tmp_path / "best" / "model.xml").exists()
    if damaged:  # Tune's own state files cannot be rebuilt: a clear error, not a restore that waits forever
        sorted(experiment.glob("experiment_state-*.json"))[-1].write_text('{"trial_data": [')
        with pytest.raises(ValueError, match="Tune's state file .* is missing or damaged"):
            autocompress.resume(str(experiment), progress=False)


def test_a_raising_trial_is_recorded_as_failed_and_the_search_goes_on(
    two_nodes, cnn, digits_loaders, tmp_path
):
    def exploding(
        measurements,
    ):  # a local function: Ray ships it by value (workers cannot import this test module)
        raise RuntimeError("objective exploded")

    result = ray_search(
        cnn,
        digits_loaders,
        tmp_path,
        study_name="raising",
        n_trials=2,
        objective=exploding,
        space=_cheap_space(cnn, digits_loaders),
    )
    assert [t.state for t in result.trials] == ["FAIL", "FAIL"]
    assert all("objective exploded" in t.error for t in result.trials)
    assert result.best is None and "objective exploded" in result.message


def _cheap_space(cnn, loaders):
    """Float model, no compression: the cheapest possible trials."""
    import torch

    from autocompress.search_spaces import Dimension, SearchSpace, build_space

    example = torch.zeros(1, *next(iter(loaders[0]))[0].shape[1:])
    compact = build_space(cnn, "compact", example_input=example)
    return SearchSpace(
        dimensions=(Dimension("pruning_criterion", choices=("l1", "l2")),),
        layers=compact.layers,
        groups=compact.groups,
        start_points=({"pruning_criterion": "l1"},),
    )


# -- bad input: clear errors before anything runs ----------------------------------------------------


def test_an_unreachable_address_is_a_clear_error(cnn, digits_loaders, tmp_path):
    with pytest.raises(ValueError, match="cannot reach the Ray cluster at '127.0.0.1:1'"):
        ray_search(cnn, digits_loaders, tmp_path, backend={"address": "127.0.0.1:1"})


def test_bad_storage_paths_are_clear_errors(cnn, digits_loaders, tmp_path):
    with pytest.raises(ValueError, match="must be absolute"):
        ray_search(cnn, digits_loaders, tmp_path, backend={"storage_path": "relative/ray"})
    (tmp_path / "a-file").write_text("")
    with pytest.raises(ValueError, match="cannot write the Ray storage_path"):
        ray_search(cnn, digits_loaders, tmp_path, backend={"storage_path": str(tmp_path / "a-file" / "ray")})


def test_resume_of_a_path_without_an_experiment_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no Ray Tune experiment at"):
        autocompress.resume(str(tmp_path))


def test_options_the_ray_backend_does_not_support_are_rejected(cnn, digits_loaders, tmp_path):
    with pytest.raises(ValueError, match="Optuna backend only"):
        ray_search(cnn, digits_loaders, tmp_path, strategy="condensa")
    with pytest.raises(ValueError, match="unknown Ray scheduler"):
        Ray(scheduler="hyperband")
    with pytest.raises(ValueError, match="unknown backend"):
        autocompress.search(cnn, *digits_loaders[:2], backend="dask")


def test_cli_search_from_a_config_on_the_cluster_then_resume_path(
    two_nodes, cnn, tmp_path, capsys, entry_points
):
    from autocompress.cli import main

    config = tmp_path / "search.yaml"
    config.write_text(
        textwrap.dedent(f"""
        model: {entry_points}:model
        data: {entry_points}:loaders
        space: quantization
        n_trials: 2
        max_accuracy_drop: 0.05
        finetune: {{epochs: 0.1}}
        target: {{threads: 1}}
        workdir: {tmp_path / "out"}
        study_name: cli
        backend: ray
        ray: {{storage_path: {tmp_path / "ray"}, target_resource: {TARGET_RESOURCE}, max_concurrent: 2,
              scheduler: asha}}
    """)
    )
    assert main(["search", "--config", str(config)]) == 0
    printed = capsys.readouterr().out
    assert f"autocompress resume {tmp_path / 'ray' / 'cli'}" in printed
    first = json.loads((tmp_path / "out" / "result.json").read_text())
    assert len(first["trials"]) == 2
    # A finished experiment: resume runs nothing and returns the same trials.
    assert main(["resume", str(tmp_path / "ray" / "cli")]) == 0
    again = json.loads((tmp_path / "out" / "result.json").read_text())
    assert [(t["params"], t["values"], t["accuracy"]) for t in again["trials"]] == [
        (t["params"], t["values"], t["accuracy"]) for t in first["trials"]
    ]
    assert main(["resume", str(tmp_path / "nothing-here")]) == 2
    assert "no Ray Tune experiment at" in capsys.readouterr().err
