"""Multi-fidelity in the Optuna backend: pruners see the accuracy checks in the study's
direction, on a ladder shared by every trial; stopped trials cost only the steps they ran."""

from __future__ import annotations

import optuna
import pytest
import torch
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

import autocompress
from autocompress import Finetune, Target
from autocompress.search.optuna_backend import (
    CHECK_STEPS,
    FLOOR_KEY,
    FeasibilityPruner,
    intermediate_value,
    make_pruner,
)
from autocompress.search.progress import StepBudget
from autocompress.search.result import TrialRecord
from autocompress.search_spaces import Dimension, SearchSpace, build_space

MINIMIZE = optuna.study.StudyDirection.MINIMIZE


def _study(direction: str, pruner) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(direction=direction, pruner=pruner)


def test_a_pruner_keeps_the_more_accurate_trial_in_a_minimising_study():
    """A latency search minimises; had the raw accuracy been reported, Optuna's median rule
    would have stopped the more accurate trial. Both directions keep it."""
    for direction in ("minimize", "maximize"):
        study = _study(direction, optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0))
        sign = optuna.study.StudyDirection.MINIMIZE if direction == "minimize" else None
        for accuracy in (0.90, 0.95):
            study.add_trial(
                create_trial(
                    value=0.5, intermediate_values={2: intermediate_value(accuracy, sign or study.direction)}
                )
            )
        verdicts = {}
        for accuracy in (0.80, 0.97):
            trial = study.ask()
            trial.report(intermediate_value(accuracy, study.direction), CHECK_STEPS["finetune"])
            verdicts[accuracy] = trial.should_prune()
            study.tell(trial, 0.5)
        assert verdicts == {0.80: True, 0.97: False}, direction


def _finished(check: float, final: float) -> optuna.trial.FrozenTrial:
    return create_trial(
        value=0.5,
        params={"x": 0.5},
        distributions={"x": FloatDistribution(0, 1)},
        user_attrs={"accuracy_finetune_check": check, "measurements": {"accuracy": final}, FLOOR_KEY: 0.9},
    )


def test_the_feasibility_pruner_stops_only_what_cannot_reach_the_floor():
    """Gains learned from finished trials (final - check accuracy: 1, 2, 3 pt): a trial at
    0.86 cannot reach the 0.90 floor (+2.8 pt at the 90% quantile), one at 0.88 can."""
    study = _study("minimize", FeasibilityPruner(quantile=0.9, n_startup=3))
    for check, final in ((0.90, 0.91), (0.93, 0.95), (0.80, 0.83)):
        study.add_trial(_finished(check, final))
    verdicts = {}
    for accuracy in (0.86, 0.88):
        trial = study.ask()
        trial.set_user_attr(FLOOR_KEY, 0.9)
        trial.set_user_attr("accuracy_finetune_check", accuracy)
        trial.report(intermediate_value(accuracy, study.direction), CHECK_STEPS["finetune"])
        verdicts[accuracy] = trial.should_prune()
        study.tell(trial, state=TrialState.PRUNED)
    assert verdicts == {0.86: True, 0.88: False}
    # Before n_startup trials ran to the end nothing is learned, nothing is stopped.
    young = _study("minimize", FeasibilityPruner(n_startup=3))
    young.add_trial(_finished(0.90, 0.91))
    trial = young.ask()
    trial.set_user_attr(FLOOR_KEY, 0.9)
    trial.set_user_attr("accuracy_finetune_check", 0.5)
    trial.report(-0.5, CHECK_STEPS["finetune"])
    assert not trial.should_prune()


def test_pruners_by_name_and_bad_names():
    assert isinstance(make_pruner("halving"), optuna.pruners.SuccessiveHalvingPruner)
    assert isinstance(make_pruner("feasibility"), FeasibilityPruner)
    assert make_pruner(None) is None
    with pytest.raises(ValueError, match="one of feasibility, halving, hyperband, median"):
        make_pruner("asha")
    with pytest.raises(ValueError, match="pruner must be"):
        autocompress.search(torch.nn.Linear(2, 2), [], [], pruner="fastest", progress=False)


def test_the_step_budget_counts_what_stopped_trials_saved():
    budget = StepBudget()
    for state, steps in (("COMPLETE", 100), ("COMPLETE", 100), ("PRUNED", 50), ("FAIL", None)):
        budget.add(TrialRecord(0, state, {}, None, None, None, None, None, steps=steps))
    assert budget.spent == 250
    assert budget.saved_share() == pytest.approx(50 / 300)
    assert "1 stopped early saved ~17%" in budget.describe()


def test_successive_halving_stops_candidates_at_the_shared_check(cnn, digits_loaders, tmp_path):
    """A real search with pruner="halving": plain INT8 first (the most accurate), then pruned
    candidates; these are stopped half-way through their fine-tune, after fewer steps."""
    train, val, _ = digits_loaders
    example = torch.zeros(1, *next(iter(train))[0].shape[1:])
    compact = build_space(cnn, "compact", example_input=example)
    space = SearchSpace(
        dimensions=(Dimension("pruning_ratio", low=0.0, high=0.75, step=0.25),),
        layers=compact.layers,
        groups=compact.groups,
        start_points=({"pruning_ratio": 0.0}, {"pruning_ratio": 0.75}, {"pruning_ratio": 0.5}),
    )
    result = autocompress.search(
        cnn,
        train,
        val,
        space=space,
        n_trials=3,
        pruner="halving",
        early_stop_margin=None,
        finetune=Finetune(epochs=0.5),
        target=Target(threads=1),
        confirm_fraction=0.0,
        confidence=None,
        max_accuracy_drop=0.5,
        progress=False,
        workdir=tmp_path,
    )
    first, *later = result.trials
    assert first.state == "COMPLETE" and first.steps > 0
    stopped = [t for t in later if t.state == "PRUNED"]
    assert stopped, [(t.state, t.error) for t in later]
    for t in stopped:
        assert "stopped by the search's scheduler" in t.error
        assert 0 < t.steps < first.steps
    study = optuna.load_study(study_name=result.study_name, storage=f"sqlite:///{tmp_path / 'search.db'}")
    for frozen in study.trials:  # minimising latency: the accuracy is reported negated, at the shared steps
        assert set(frozen.intermediate_values) <= set(CHECK_STEPS.values())
        assert all(-1 <= v < 0 for v in frozen.intermediate_values.values())


def test_the_cli_takes_a_pruner_by_name(capsys):
    from autocompress.cli import main

    assert main(["search", "--pruner", "fastest", "--trials", "1"]) == 2
    assert "--pruner" in capsys.readouterr().err
