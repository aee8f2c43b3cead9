"""The user's own training loop drives every fine-tuning stage of the core (issue 15)."""

from __future__ import annotations

import torch

import autocompress
from autocompress import Finetune, Policy, Target, TrainStage, apply_policy
from autocompress.policies import Distillation, LayerPolicy, LayerQuant, Pruning, Student
from autocompress.training import evaluate_torch


class SGDLoop:
    """A user's recipe: SGD with momentum, its own step count, calling the stage's hooks."""

    def __init__(self) -> None:
        self.stages: list[tuple[str, int, float]] = []

    def __call__(self, stage: TrainStage) -> None:
        optimizer = torch.optim.SGD(stage.model.parameters(), lr=0.01, momentum=0.9)
        step = 0
        losses = []
        while step < stage.total_steps:
            for inputs, targets in stage.loader:
                stage.before_step(step)
                loss = stage.loss(inputs, stage.model(inputs), targets)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(float(loss.detach()))
                step += 1
                if step == stage.total_steps:
                    break
        assert stage.model.training  # the core hands the model over in training mode
        self.stages.append((stage.name, step, sum(losses[-5:]) / 5))


def test_train_fn_drives_distillation_recovery_and_qat(cnn, digits_loaders):
    train, _, test = digits_loaders
    policy = Policy(
        student=Student(family="mnist_cnn", params={"width": 0.5}),
        distillation=Distillation(),
        default=LayerPolicy(quantization=LayerQuant(), pruning=Pruning(ratio=0.25)),
    )
    loop = SGDLoop()
    compressed = apply_policy(
        cnn,
        policy,
        train,
        finetune=Finetune(distill_epochs=1, recovery_epochs=0.5, epochs=0.5),
        train_fn=loop,
    )
    assert [name for name, _, _ in loop.stages] == ["distillation", "recovery", "finetune"]
    steps = {name: count for name, count, _ in loop.stages}
    assert steps["distillation"] == len(train) and steps["recovery"] == steps["finetune"] == -(
        -len(train) // 2
    )
    assert compressed.history["finetune"]["train_fn"] == "finetune"
    assert not compressed.module.training
    # The user's loop trained a working student: far above chance (10%) on held-out digits.
    assert evaluate_torch(compressed.module, test) > 0.5


def test_before_step_runs_the_cores_step_hooks(cnn, digits_loaders):
    """before_step is where the sparsity ramp and the search's early stop run: the user's
    on_finetune_step sees every step the user's loop takes."""
    from autocompress.policies import Sparsity

    seen: list[tuple[str, int, int]] = []
    apply_policy(
        cnn,
        Policy(default=LayerPolicy(sparsity=Sparsity(level=0.5))),
        digits_loaders[0],
        finetune=Finetune(epochs=0.5),
        train_fn=SGDLoop(),
        on_finetune_step=lambda stage, step, total, module: seen.append((stage, step, total)),
    )
    total = -(-len(digits_loaders[0]) // 2)
    assert seen == [("finetune", step, total) for step in range(total)]


def test_a_search_fine_tunes_its_trials_with_train_fn(cnn, digits_loaders, tmp_path):
    train, val, _ = digits_loaders
    loop = SGDLoop()
    result = autocompress.search(
        cnn,
        train,
        val,
        space="compact",
        n_trials=1,
        max_accuracy_drop=0.2,
        finetune=Finetune(epochs=0.2, recovery_epochs=0.2),
        final_finetune=None,
        target=Target(threads=1),
        hardware_proposals=False,
        train_fn=loop,
        workdir=tmp_path,
        progress=False,
    )
    assert result.trials[0].state == "COMPLETE", result.trials[0].error
    assert {name for name, _, _ in loop.stages} <= {"recovery", "finetune"} and loop.stages
