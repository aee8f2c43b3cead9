"""Real searches: the MnistCNN on digits, real OpenVINO measurements in child processes,
Optuna studies in SQLite / journal files under tmp_path, tiny fine-tuning budgets."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState
from torch.utils.data import DataLoader, TensorDataset

import autocompress
from autocompress import Finetune, Policy, SearchResult, Target
from autocompress.search import SearchSettings
from autocompress.search.lock import DriverLock, SearchBusy
from autocompress.search_spaces import Dimension, SearchSpace, SpaceError, build_space

FINETUNE = Finetune(epochs=0.3, recovery_epochs=0.5, rewind_lr=1e-3)
TARGET = Target(threads=1)
ROOT = Path(__file__).resolve().parents[1]
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def run_search(model, loaders, workdir, **kwargs) -> SearchResult:
    train, val, _ = loaders
    options = dict(
        space="compact",
        finetune=FINETUNE,
        target=TARGET,
        progress=False,
        max_accuracy_drop=0.05,
        workdir=workdir,
        n_trials=3,
        # The search as it was before the confirmation stage; tests/test_confirm.py covers that.
        confidence=None,
        confirm_fraction=0.0,
    )
    options.update(kwargs)
    return autocompress.search(model, train, val, **options)


def sqlite(path: Path) -> str:
    return f"sqlite:///{path}"


def load(storage, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=storage)


def snapshot(study: optuna.Study) -> dict[int, tuple]:
    return {
        t.number: (t.state, dict(t.params), tuple(t.values) if t.values else None)
        for t in study.get_trials(deepcopy=False)
    }


def counted(study: optuna.Study) -> int:
    """Finished trials as the driver counts them against the budget."""
    return sum(
        1
        for t in study.trials
        if t.state in FINISHED or (t.state == TrialState.FAIL and "error" in t.user_attrs)
    )


def dominates(a: list[float], b: list[float]) -> bool:
    return all(x <= y for x, y in zip(a, b)) and a != b


def minimised(record, objectives) -> list[float]:
    signs = [1 if o["direction"] == "minimize" else -1 for o in objectives]
    return [s * v for s, v in zip(signs, record.values)] + [-record.measurements.accuracy]


def assert_pareto(result: SearchResult) -> None:
    feasible = [t for t in result.trials if t.feasible]
    assert result.pareto, "a feasible search has a Pareto front"
    front = {t.number for t in result.pareto}
    for member in result.pareto:
        assert member.feasible
        assert not any(
            dominates(minimised(o, result.objectives), minimised(member, result.objectives)) for o in feasible
        )
    for other in feasible:  # everything off the front is beaten (or tied) by a member
        if other.number not in front:
            assert any(
                dominates(minimised(m, result.objectives), minimised(other, result.objectives))
                or minimised(m, result.objectives) == minimised(other, result.objectives)
                for m in result.pareto
            )


def criterion_space(cnn, example, ratio: float) -> SearchSpace:
    """Float model, every channel group pruned at ``ratio``; only the criterion varies: every
    candidate has the same graph (shapes), with different weights."""
    compact = build_space(cnn, "compact", example_input=example)
    return SearchSpace(
        dimensions=(
            Dimension("pruning_criterion", choices=("l1", "l2")),
            Dimension("pruning_ratio", low=0.0, high=0.75, step=0.125),
        ),
        layers=compact.layers,
        groups=compact.groups,
        fixed={"pruning_ratio": ratio},
        start_points=({"pruning_criterion": "l1"}, {"pruning_criterion": "l2"}),
    )


@pytest.fixture(scope="module")
def example(digits_loaders):
    return torch.zeros(1, *next(iter(digits_loaders[0]))[0].shape[1:])


# -- a plain search, then resumed ------------------------------------------------------


@pytest.fixture(scope="module")
def first(cnn, digits_loaders, tmp_path_factory):
    """A 3-trial search on the compact space with a test re-check (later resumed to 5)."""
    workdir = tmp_path_factory.mktemp("search")
    result = run_search(cnn, digits_loaders, workdir, test_loader=digits_loaders[2], study_name="first")
    return result, workdir


def test_search_result_trials_best_pareto_and_deployment(first, cnn, digits_loaders, example):
    result, workdir = first
    assert isinstance(result, SearchResult)
    assert result.study_name == "first" and result.strategy == "direct"
    assert result.objectives == [{"name": "latency", "direction": "minimize"}]

    # Every trial is in the SQLite file.
    study = load(sqlite(workdir / "search.db"), "first")
    assert len(study.trials) == len(result.trials) == 3
    assert [t.number for t in result.trials] == [0, 1, 2]
    assert all(t.state in FINISHED for t in study.trials)
    assert "autocompress.settings" in study.user_attrs and "autocompress.baseline" in study.user_attrs
    # The preset's start points were tried first: uniform INT8, unpruned then pruned.
    starts = build_space(cnn, "compact", example_input=example).start_points
    assert [t.params for t in result.trials] == list(starts)

    for t in result.trials:
        if t.state == "COMPLETE":
            m = t.measurements
            for key in ("accuracy", "latency_ratio", "size_ratio", "latency_ms", "speedup", "parameters"):
                assert isinstance(getattr(m, key), (int, float)), key
            assert 0 <= m.accuracy <= 1 and m.latency_ratio > 0 and 0 < m.size_ratio < 1  # INT8 weights
            assert t.values == (pytest.approx(m.latency_ratio),)
            assert t.violation == pytest.approx(result.baseline["accuracy"] - 0.05 - m.accuracy)
            assert isinstance(t.policy, Policy) and t.seconds > 0
    # Trial 0 is plain INT8: it keeps the accuracy.
    assert result.trials[0].feasible

    assert result.feasible and "INFEASIBLE" not in result.message
    assert result.best.feasible and result.best.number in {t.number for t in result.pareto}
    if result.remeasured is None:  # no candidate within the best one's latency interval
        assert result.best is result.pareto[0]
        best_latency = min(t.values[0] for t in result.trials if t.feasible)
        assert result.best.values[0] == best_latency
    else:  # the near-tied ones were timed side by side: the fastest there is delivered
        side_by_side = {r["trial"]: r["speedup_side_by_side"] for r in result.remeasured}
        assert result.best is result.pareto[0]  # the front as re-timed
        if result.best.number in side_by_side:
            assert result.best.number == max(side_by_side, key=side_by_side.get)
            assert result.best.measurements.speedup == pytest.approx(side_by_side[result.best.number])
    assert_pareto(result)

    assert result.test is not None
    assert result.test["samples"] == len(digits_loaders[2].dataset)
    assert 0.5 < result.test["accuracy"] <= 1 and result.test["speedup"] > 0
    assert result.test["drop"] == pytest.approx(result.test["baseline_accuracy"] - result.test["accuracy"])
    # Speedups carry an interval (5 alternating rounds: min..max of the per-round ratios, 93.75%),
    # and the re-check says whether it lands in the search's own.
    low, high = result.best.measurements.speedup_interval
    assert low <= result.best.measurements.speedup <= high
    assert result.test["selected_speedup_interval"] == pytest.approx([low, high])
    assert result.test["speedup_low"] <= result.test["speedup"] <= result.test["speedup_high"]
    assert result.test["speedup_agrees"] == (low <= result.test["speedup"] <= high)
    assert "this re-check is" in result.summary()

    best = workdir / "best"
    for name in ("model.xml", "model.bin", "model.onnx", "policy.json", "manifest.json"):
        assert (best / name).is_file(), name
    assert Policy.load(best / "policy.json") == result.best_policy
    manifest = json.loads((best / "manifest.json").read_text())
    assert manifest["trial"] == result.best.number and manifest["feasible"] is True
    saved = json.loads((workdir / "result.json").read_text())
    assert saved["best"]["trial"] == result.best.number
    assert len(saved["trials"]) == 3


def test_resume_finishes_the_budget_without_rerunning_trials(first, cnn, digits_loaders):
    result, workdir = first
    storage = workdir / "search.db"
    before = snapshot(load(sqlite(storage), "first"))
    assert len(before) == 3

    train, val, _ = digits_loaders
    resumed = autocompress.resume(
        cnn, train, val, storage=storage, study_name="first", n_trials=5, progress=False
    )
    after = snapshot(load(sqlite(storage), "first"))
    assert len(after) == 5 and [t.number for t in resumed.trials] == [0, 1, 2, 3, 4]
    assert all(state in FINISHED for state, _, _ in after.values())
    for number, record in before.items():
        assert after[number] == record, f"trial {number} changed on resume"
    assert resumed.baseline == result.baseline  # measured once, kept in the study
    assert resumed.study_name == "first"

    # Nothing left to do: resuming a finished study runs no trial.
    again = autocompress.resume(
        cnn, train, val, storage=storage, study_name="first", n_trials=5, progress=False
    )
    assert len(again.trials) == 5

    # The best trial's folder deleted: it is left out of the selection (its model cannot be
    # re-checked or deployed), and result.json and best/ follow the next best.
    best = again.best
    shutil.rmtree(Path(best.measurements.ir_path).parent)
    rebuilt = autocompress.resume(
        cnn, train, val, storage=storage, study_name="first", n_trials=5, progress=False
    )
    assert rebuilt.best is None or rebuilt.best.number != best.number
    assert any(
        f"trial {best.number} left out of the selection" in w and "missing" in w for w in rebuilt.warnings
    )
    written = json.loads((workdir / "result.json").read_text())
    assert (written["best"] or {}).get("trial") == (rebuilt.best.number if rebuilt.best else None)
    if rebuilt.best is not None:
        manifest = json.loads((workdir / "best" / "manifest.json").read_text())
        assert manifest["trial"] == rebuilt.best.number

    # The same study with other settings is refused, pointing at resume().
    with pytest.raises(ValueError, match="resume"):
        run_search(cnn, digits_loaders, workdir, study_name="first", space="pruning")
    with pytest.raises(ValueError, match="no study 'nope'"):
        autocompress.resume(cnn, train, val, storage=storage, study_name="nope", progress=False)


# -- the latency cache and an infeasible constraint ------------------------------------


@pytest.fixture(scope="module")
def aggressive(cnn, digits_loaders, example, tmp_path_factory):
    """Two float candidates pruned at 75% (l1, l2): one graph; no accuracy drop allowed."""
    workdir = tmp_path_factory.mktemp("aggressive")
    space = criterion_space(cnn, example, 0.75)
    result = run_search(
        cnn, digits_loaders, workdir, space=space, n_trials=2, max_accuracy_drop=0.0, early_stop_margin=None
    )
    return result, workdir


def test_deploy_replaces_a_deployment_whole_and_never_other_files(aggressive, tmp_path):
    result, _ = aggressive
    target = tmp_path / "deploy"
    result.deploy(target)
    (target / "model.onnx").unlink()  # a damaged deployment is replaced whole
    result.deploy(target)
    assert {p.name for p in target.iterdir()} == {
        "model.xml",
        "model.bin",
        "model.onnx",
        "policy.json",
        "manifest.json",
    }
    assert not list(tmp_path.glob(".deploy.*")), "no staging folder left behind"
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="holds other files"):
        result.deploy(mine)
    assert (mine / "notes.txt").read_text() == "keep me"


def test_a_second_driver_on_a_running_search_is_refused(cnn, digits_loaders, tmp_path):
    with DriverLock(tmp_path):  # what a running search holds; released by the kernel when it dies
        with pytest.raises(SearchBusy, match=f"pid {os.getpid()} on "):
            run_search(cnn, digits_loaders, tmp_path, n_trials=1)
    assert not (tmp_path / "search.db").exists(), "refused before it touched the study"


def test_same_graph_reuses_the_measured_latency(aggressive):
    result, workdir = aggressive
    first, second = result.trials
    assert (first.params, second.params) == ({"pruning_criterion": "l1"}, {"pruning_criterion": "l2"})
    assert first.state == second.state == "COMPLETE"
    assert first.measurements.latency_cached is False
    assert second.measurements.latency_cached is True
    assert first.measurements.fingerprint == second.measurements.fingerprint
    assert second.measurements.latency_ms == first.measurements.latency_ms
    assert second.measurements.latency_ratio == first.measurements.latency_ratio
    assert first.measurements.parameters == second.measurements.parameters < result.baseline["parameters"]
    # The cache lives in the workdir, one file per fingerprint.
    assert (workdir / "latency-cache" / f"{first.measurements.fingerprint}.json").exists()


def test_infeasible_constraint_returns_the_closest_trial(aggressive):
    result, workdir = aggressive
    assert result.feasible is False and result.pareto == []
    assert "INFEASIBLE" in result.message
    assert all(t.state == "COMPLETE" and t.violation > 0 for t in result.trials)
    closest = min(result.trials, key=lambda t: t.violation)
    assert result.best is not None and result.best.number == closest.number
    assert f"trial {closest.number}" in result.message
    assert result.best.measurements.accuracy < result.baseline["accuracy"]
    # The closest candidate is still deployed, marked infeasible.
    manifest = json.loads((workdir / "best" / "manifest.json").read_text())
    assert manifest["feasible"] is False and manifest["trial"] == closest.number


# -- failures -------------------------------------------------------------------------


def test_a_crashing_trial_is_recorded_and_the_search_goes_on(cnn, digits_loaders, example, tmp_path):
    calls = []

    def size_once_broken(measurements):
        calls.append(measurements.size_ratio)
        if len(calls) == 1:
            raise RuntimeError("objective exploded")
        return measurements.size_ratio

    space = criterion_space(cnn, example, 0.0)  # no compression at all: cheap trials
    result = run_search(cnn, digits_loaders, tmp_path, space=space, objective=size_once_broken)
    assert [t.state for t in result.trials] == ["FAIL", "COMPLETE", "COMPLETE"]
    failed = result.trials[0]
    assert "RuntimeError: objective exploded" in failed.error and failed.values is None
    study = load(sqlite(tmp_path / "search.db"), result.study_name)
    assert "objective exploded" in study.trials[0].user_attrs["error"]
    # The failed trial counts against the budget (it is not retried).
    assert len(study.trials) == 3 and len(calls) == 3
    assert result.feasible and result.best.number in (1, 2)
    assert result.best.values == (pytest.approx(result.best.measurements.size_ratio),)
    assert result.objectives == [{"name": "size_once_broken", "direction": "minimize"}]


def test_bad_input_is_reported_before_any_trial(cnn, digits_loaders, tmp_path):
    train, val, _ = digits_loaders
    with pytest.raises(ValueError, match="unknown objective 'speed'"):
        run_search(cnn, digits_loaders, tmp_path, objective="speed")
    empty = DataLoader(
        TensorDataset(torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long)), batch_size=64
    )
    with pytest.raises(ValueError, match="val_loader"):
        autocompress.search(cnn, train, empty, workdir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="train_loader is empty"):
        autocompress.search(cnn, empty, val, workdir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="cannot open the search storage"):
        run_search(cnn, digits_loaders, tmp_path, storage="postgresql://nobody@127.0.0.1:1/none")
    with pytest.raises(SpaceError, match="unknown search space preset 'huge'"):
        run_search(cnn, digits_loaders, tmp_path, space="huge")
    with pytest.raises(ValueError, match="n_trials must be an int >= 1"):
        run_search(cnn, digits_loaders, tmp_path, n_trials=0)
    with pytest.raises(ValueError, match="max_accuracy_drop"):
        run_search(cnn, digits_loaders, tmp_path, max_accuracy_drop=1.5)
    with pytest.raises(ValueError, match="unknown strategy"):
        run_search(cnn, digits_loaders, tmp_path, strategy="greedy")
    assert not list(tmp_path.glob("trials/*/trial_*")), "no trial ran"


def test_a_nan_metric_for_the_baseline_is_an_error(cnn, digits_loaders, tmp_path):
    def nan_metric(logits, targets):
        return float("nan")

    with pytest.raises(ValueError, match="metric returned nan for the uncompressed model"):
        run_search(cnn, digits_loaders, tmp_path, metric=nan_metric)
    study = load(sqlite(tmp_path / "search.db"), "autocompress-compact")
    assert all(t.state == TrialState.WAITING for t in study.trials)  # start points queued, no trial started
    assert not list(tmp_path.glob("trials/*/trial_*"))


# -- other storages, strategies and objectives ----------------------------------------


def test_journal_storage_resume_retries_an_interrupted_trial(cnn, digits_loaders, example, tmp_path):
    journal = tmp_path / "search.log"
    space = criterion_space(cnn, example, 0.0)
    result = run_search(
        cnn, digits_loaders, tmp_path / "work", space=space, storage=journal, n_trials=2, study_name="j"
    )
    assert result.storage.startswith("journal:") and len(result.trials) == 2
    assert not (tmp_path / "work" / "search.db").exists()
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    study = optuna.load_study(study_name="j", storage=storage)
    before = snapshot(study)
    # A driver that died mid-trial leaves it RUNNING (journals have no heartbeat).
    orphan = study.ask()
    orphan.suggest_categorical("pruning_criterion", ["l1", "l2"])
    del study, storage

    train, val, _ = digits_loaders
    resumed = autocompress.resume(
        cnn, train, val, storage=journal, study_name="j", n_trials=3, progress=False
    )
    states = {t.number: t.state for t in resumed.trials}
    assert states[orphan.number] == "FAIL"
    retry = [t for t in resumed.trials if t.number > orphan.number]
    assert len(retry) == 1 and retry[0].state == "COMPLETE"
    assert retry[0].params == orphan.params
    study = optuna.load_study(
        study_name="j",
        storage=optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal))),
    )
    assert study.trials[retry[0].number].user_attrs["retry_of"] == orphan.number
    assert counted(study) == 3
    for number, record in before.items():
        assert snapshot(study)[number] == record


def test_a_recalibrated_proposal_is_brought_inside_a_capped_space(cnn):
    """Condensa caps every ratio at the level it found; the hardware plan's recalibrated
    proposals come from the uncapped space (seen: every one of them failed as out of range
    when the level was 0), so they are clipped into the searched space."""
    from autocompress.search.optuna_backend import _inside

    space = build_space(cnn, "joint", example_input=torch.zeros(1, 1, 8, 8))
    ratios = [d for d in space.dimensions if d.knob == "pruning_ratio" and d.choices is None]
    capped = dataclasses.replace(
        space,
        dimensions=tuple(dataclasses.replace(d, high=0.125) if d in ratios else d for d in space.dimensions),
        start_points=(),
    )
    point = {d.name: (d.high if d.choices is None else d.choices[0]) for d in space.dimensions}
    inside = _inside(capped, point)
    assert all(inside[d.name] == 0.125 for d in ratios) and ratios
    assert all(inside[d.name] == point[d.name] for d in space.dimensions if d not in ratios)
    categorical = next(d for d in space.dimensions if d.choices is not None)
    assert _inside(capped, {**point, categorical.name: "not a choice"}) is None


def test_condensa_strategy_searches_below_the_level_it_found(cnn, digits_loaders, tmp_path):
    result = run_search(cnn, digits_loaders, tmp_path, strategy="condensa", n_trials=3, study_name="c")
    assert result.strategy == "condensa" and result.study_name == "c"
    storage = sqlite(tmp_path / "search.db")
    names = {s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    assert names == {"c", "c:level"}
    level_study, main = load(storage, "c:level"), load(storage, "c")
    # The level search gets part of the budget, the capped search the rest.
    ran = [t for t in main.trials if t.state != TrialState.WAITING]
    assert level_study.trials and ran
    assert len(level_study.trials) + len(ran) == 3
    assert all(set(t.params) == {"pruning_ratio"} for t in level_study.trials)
    assert [t.params for t in level_study.trials[:2]] == [{"pruning_ratio": 0.25}, {"pruning_ratio": 0.5}][
        : len(level_study.trials)
    ]
    level = main.user_attrs["condensa_level"]
    feasible = [
        t.params["pruning_ratio"]
        for t in level_study.trials
        if t.state == TrialState.COMPLETE and t.constraints and t.constraints["accuracy"] <= 0
    ]
    assert level == max(feasible, default=0.0)
    # result.trials are the main study's, every pruning ratio capped at the level.
    # result.trials are the main study's trials that ran (a queued start point left WAITING is not one).
    assert [t.number for t in result.trials] == [
        t.number for t in main.trials if t.state != TrialState.WAITING
    ]
    ran = result.trials
    assert all(
        set(t.params) == {"pruning_criterion", "weight_bits", "activation_bits", "pruning_ratio"} for t in ran
    )
    assert all(t.params["pruning_ratio"] <= level for t in ran)
    # Stage 2 starts at the level, in INT8 with the level search's criterion.
    assert result.trials[0].params == {
        "pruning_criterion": "l2",
        "weight_bits": 8,
        "activation_bits": 8,
        "pruning_ratio": level,
    }


def test_two_objectives_give_a_pareto_front(cnn, digits_loaders, tmp_path):
    result = run_search(cnn, digits_loaders, tmp_path, objective=["latency", "size"], n_trials=4)
    assert result.objectives == [
        {"name": "latency", "direction": "minimize"},
        {"name": "size", "direction": "minimize"},
    ]
    study = load(sqlite(tmp_path / "search.db"), result.study_name)
    assert len(study.directions) == 2 and len(study.trials) == 4
    complete = [t for t in result.trials if t.state == "COMPLETE"]
    assert complete
    for t in complete:
        assert len(t.values) == 2
        assert t.values == (
            pytest.approx(t.measurements.latency_ratio),
            pytest.approx(t.measurements.size_ratio),
        )
    assert_pareto(result)
    for a in result.pareto:
        for b in result.pareto:
            assert not dominates(minimised(a, result.objectives), minimised(b, result.objectives))


# -- a search killed mid-trial, resumed ------------------------------------------------

KILLED_SEARCH = textwrap.dedent(
    """
    import sys
    import autocompress
    from autocompress import Finetune, Target
    from autocompress.data import load_dataset, make_loaders
    from autocompress.zoo import pretrained

    train, val, _ = make_loaders(load_dataset("digits"), batch_size=64)
    model = pretrained("mnist_cnn", "digits", epochs=2)
    autocompress.search(
        model, train, val, space="compact", n_trials=6, storage=sys.argv[1], study_name="killed", workdir=sys.argv[2],
        finetune=Finetune(epochs=0.3, recovery_epochs=0.5, rewind_lr=1e-3), target=Target(threads=1),
        max_accuracy_drop=0.05, heartbeat_interval=1, progress=False,
    )
    """
)


def _moment_reached(moment: str, trials: list, workdir: Path) -> bool:
    """Whether a search (its trials; workdir) is at ``moment``, with 2 trials finished."""
    if sum(t.state in FINISHED for t in trials) < 2:
        return False
    if moment == "after a trial":  # at once: the next trial has barely started, if at all
        return True
    running = [t for t in trials if t.state == TrialState.RUNNING and len(t.params) == 4]
    if not running:
        return False
    exported = (workdir / "trials" / "killed" / f"trial_{running[0].number:04d}" / "model.onnx").exists()
    return exported if moment == "measurement" else not exported


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["fine-tuning", "measurement", "after a trial"])
def test_a_killed_search_resumes_and_retries_the_interrupted_trial(cnn, digits_loaders, tmp_path, moment):
    """SIGKILL at three moments, then resume at once: no finished trial lost or changed, none
    duplicated, none left running, the budget met exactly."""
    db = tmp_path / "search.db"
    script = tmp_path / "search.py"
    script.write_text(KILLED_SEARCH)
    log = (tmp_path / "child.log").open("w")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH")))),
    }
    child = subprocess.Popen(
        [sys.executable, str(script), str(db), str(tmp_path / "work")],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the kill takes its OpenVINO worker too
    )
    storage, problem = None, None
    try:
        deadline = time.monotonic() + 300
        while True:
            assert child.poll() is None, (
                f"the search ended before it was killed:\n{(tmp_path / 'child.log').read_text()[-3000:]}"
            )
            assert time.monotonic() < deadline, (
                f"the search did not finish 2 trials in time (last error: {problem!r})"
            )
            time.sleep(0.05)
            if not db.exists():
                continue
            try:  # the child creates the tables and the study
                storage = storage or optuna.storages.RDBStorage(
                    sqlite(db), engine_kwargs={"connect_args": {"timeout": 60}}
                )
                trials = load(storage, "killed").get_trials(deepcopy=False)
            except Exception as error:
                problem = error
                continue
            if _moment_reached(moment, trials, tmp_path / "work"):
                break
        os.killpg(child.pid, signal.SIGKILL)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        log.close()
    before = snapshot(load(storage, "killed"))
    killed = [n for n, (state, _, _) in before.items() if state == TrialState.RUNNING]
    assert killed or moment == "after a trial", "a trial was running when the search was killed"
    finished_before = {n: r for n, r in before.items() if r[0] in FINISHED}
    assert len(finished_before) >= 2

    # At once, with a heartbeat grace period not yet passed: the workdir's driver lock is free,
    # so the killed driver is gone and its RUNNING trial is an orphan to retry now.
    train, val, _ = digits_loaders
    result = autocompress.resume(
        cnn, train, val, storage=db, study_name="killed", heartbeat_interval=1, progress=False
    )

    study = load(storage, "killed")
    after = snapshot(study)
    assert counted(study) == 6 and sum(1 for t in result.trials if t.state in ("COMPLETE", "PRUNED")) == 6
    assert not any(state == TrialState.RUNNING for state, _, _ in after.values())
    for number, record in finished_before.items():
        assert after[number] == record, f"trial {number}, finished before the kill, changed"
    for number in killed:
        state, params, _ = after[number]
        assert state == TrialState.FAIL and "error" not in study.trials[number].user_attrs
        retries = [t for t in study.trials if t.number > number and t.user_attrs.get("retry_of") == number]
        if params:  # the retry keeps what it drew (all of it, or part when killed mid-draw)
            assert len(retries) == 1 and retries[0].state in FINISHED
            assert params.items() <= retries[0].params.items() and len(retries[0].params) == 4
        else:  # killed before it drew its parameters: failed, not counted, nothing to retry
            assert not retries
    assert result.best is not None and result.feasible


def test_a_study_continues_only_with_the_same_settings():
    stored = SearchSettings(objective="latency", sampler=optuna.samplers.RandomSampler(seed=0)).to_dict()
    # A sampler instance compares by the name it was stored under; budget and places may change.
    same = SearchSettings(
        objective="latency", sampler=optuna.samplers.RandomSampler(seed=0), n_trials=99, workdir="x"
    )
    assert same.differing(stored) == []
    assert SearchSettings(objective="size", sampler=optuna.samplers.RandomSampler()).differing(stored) == [
        "objective"
    ]
    assert SearchSettings(objective="latency").differing(stored) == ["sampler"]


def test_the_graph_fingerprint_ignores_names_values_and_shared_constants(tmp_path):
    """The exporter names tensors in order and shares equal constants through Identity
    nodes, so one policy fine-tuned twice exports differently named graphs: same kernels,
    same fingerprint. A different shape or operator is a different graph."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from autocompress.search.trial import graph_fingerprint

    def save(name, scales, shape=(4, 4), op="Relu", identity=False):
        inits = [
            numpy_helper.from_array(np.full(shape, v, np.float32), f"{name}_w{i}")
            for i, v in enumerate(scales)
        ]
        nodes = []
        second = inits[1].name
        if identity:  # the second constant equals the first: shared through an Identity
            inits = inits[:1]
            nodes.append(helper.make_node("Identity", [inits[0].name], [f"{name}_alias"]))
            second = f"{name}_alias"
        nodes += [
            helper.make_node("MatMul", [f"{name}_x", inits[0].name], [f"{name}_a"]),
            helper.make_node("MatMul", [f"{name}_a", second], [f"{name}_b"]),
            helper.make_node(op, [f"{name}_b"], [f"{name}_y"]),
        ]
        graph = helper.make_graph(
            nodes,
            name,
            [helper.make_tensor_value_info(f"{name}_x", TensorProto.FLOAT, [1, shape[0]])],
            [helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, [1, shape[1]])],
            inits,
        )
        path = tmp_path / f"{name}.onnx"
        onnx.save(helper.make_model(graph), path)
        return graph_fingerprint(path, TARGET)

    base = save("a", [0.5, 0.7])
    assert save("b", [0.1, 0.9]) == base  # other names and values
    assert save("c", [0.5, 0.5], identity=True) == base  # equal constants shared through an Identity
    assert save("d", [0.5, 0.7], shape=(4, 8)) != base  # another shape
    assert save("e", [0.5, 0.7], op="Sigmoid") != base  # another operator
