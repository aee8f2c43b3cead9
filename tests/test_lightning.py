"""PyTorch Lightning drives the core's fine-tune stages (issue 15): train_fn=lightning_train_fn()."""

from __future__ import annotations

import dataclasses
import pickle
import signal
import sys

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.utils.data import DataLoader, TensorDataset

from autocompress import Finetune, Policy, TrainStage, apply_policy, export
from autocompress.integrations.lightning import lightning_train_fn
from autocompress.policies import Distillation, LayerPolicy, LayerQuant, Pruning, Sparsity, Student
from autocompress.training import evaluate_torch

pl = pytest.importorskip("lightning.pytorch")


class Recorder(pl.Callback):
    """What Lightning did in each fit: the stage's module, steps, weights moved, device."""

    def __init__(self) -> None:
        self.fits: list[dict] = []

    def on_train_start(self, trainer, pl_module) -> None:
        params = dict(pl_module.model.named_parameters())
        self._before = {name: p.detach().clone() for name, p in params.items() if p.requires_grad}
        self.fits.append({"module": pl_module.model, "max_steps": trainer.max_steps})

    def on_train_end(self, trainer, pl_module) -> None:
        params = dict(pl_module.model.named_parameters())
        changed = [n for n, before in self._before.items() if not torch.equal(params[n].detach(), before)]
        self.fits[-1].update(steps=trainer.global_step, changed=len(changed), trained=len(self._before))


def _on_cpu_in_eval(module: nn.Module) -> bool:
    tensors = [*module.parameters(), *module.buffers()]
    return not any(m.training for m in module.modules()) and all(t.device.type == "cpu" for t in tensors)


def _half_epoch(loader) -> int:
    return -(-len(loader) // 2)


def test_qat_under_lightning_trains_in_place_and_exports(cnn, digits_loaders, tmp_path):
    train, _, test = digits_loaders
    recorder = Recorder()
    train_fn = lightning_train_fn(callbacks=[recorder])
    seen: list[tuple[str, int, int]] = []
    compressed = apply_policy(
        cnn,
        Policy.quantize(8, 8),
        train,
        finetune=Finetune(epochs=0.5, lr=1e-3),
        train_fn=train_fn,
        on_finetune_step=lambda stage, step, total, module: seen.append((stage, step, total)),
    )
    total = _half_epoch(train)
    assert train_fn.stages == [("finetune", total)]
    # before_step ran once per optimizer step, 0-based, in order: the core's step hooks saw them all.
    assert seen == [("finetune", step, total) for step in range(total)]
    assert compressed.history["finetune"]["train_fn"] == "finetune"
    assert compressed.history["finetune"]["steps"] == total
    (fit,) = recorder.fits
    assert fit["max_steps"] == fit["steps"] == total
    assert fit["changed"] == fit["trained"] > 0  # every trainable weight (and quantizer scale) moved
    assert fit["module"] is compressed.module  # trained in place, not a copy
    assert _on_cpu_in_eval(compressed.module)
    assert evaluate_torch(compressed.module, test) > 0.5
    exported = export(compressed, tmp_path)
    assert exported.ir_path.exists() and exported.onnx_path.exists()


def test_pruning_recovery_and_sparsity_masks_under_lightning(cnn, digits_loaders):
    """Recovery after each pruning step, then the fine-tune whose sparsity ramp (parametrized
    masks) runs in before_step, all as Lightning fits."""
    train, _, test = digits_loaders
    recorder = Recorder()
    train_fn = lightning_train_fn(callbacks=[recorder])
    seen: list[tuple[str, int, int]] = []
    compressed = apply_policy(
        cnn,
        Policy(default=LayerPolicy(pruning=Pruning(ratio=0.25), sparsity=Sparsity(level=0.5))),
        train,
        finetune=Finetune(epochs=0.5, recovery_epochs=0.5, prune_steps=2, lr=1e-3),
        train_fn=train_fn,
        on_finetune_step=lambda stage, step, total, module: seen.append((stage, step, total)),
    )
    total = _half_epoch(train)
    assert train_fn.stages == [("recovery", total), ("recovery", total), ("finetune", total)]
    assert seen == [(name, step, total) for name, _ in train_fn.stages for step in range(total)]
    assert [fit["steps"] for fit in recorder.fits] == [fit["max_steps"] for fit in recorder.fits]
    assert all(fit["changed"] > 0 for fit in recorder.fits)
    assert any(parametrize.is_parametrized(m) for m in compressed.module.modules())  # the masks
    assert _on_cpu_in_eval(compressed.module)
    assert evaluate_torch(compressed.module, test) > 0.5


def test_student_distillation_recovery_and_qat_under_lightning(cnn, digits_loaders):
    train, _, test = digits_loaders
    recorder = Recorder()
    train_fn = lightning_train_fn(callbacks=[recorder])
    compressed = apply_policy(
        cnn,
        Policy(
            student=Student(family="mnist_cnn", params={"width": 0.5}),
            distillation=Distillation(),
            default=LayerPolicy(quantization=LayerQuant(), pruning=Pruning(ratio=0.25)),
        ),
        train,
        finetune=Finetune(distill_epochs=1, recovery_epochs=0.5, epochs=0.5),
        train_fn=train_fn,
    )
    half = _half_epoch(train)
    assert train_fn.stages == [("distillation", len(train)), ("recovery", half), ("finetune", half)]
    assert all(fit["steps"] == fit["max_steps"] and fit["changed"] > 0 for fit in recorder.fits)
    assert _on_cpu_in_eval(compressed.module)
    assert evaluate_torch(compressed.module, test) > 0.5


# -- the adapter on hand-built stages: fx graphs, parametrizations, accumulation, overrides --


class _Scale(nn.Module):
    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * 0.5


def _stage(model: nn.Module, *, total_steps: int = 6, before_step=None, batches: int = 4) -> TrainStage:
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(8 * batches, 4), torch.randint(0, 3, (8 * batches,)))
    loss = nn.CrossEntropyLoss()
    return TrainStage(
        name="finetune",
        model=model,
        loader=DataLoader(data, batch_size=8),
        epochs=total_steps / batches,
        total_steps=total_steps,
        lr=1e-2,
        loss=lambda inputs, outputs, targets: loss(outputs, targets),
        before_step=before_step or (lambda step: None),
    )


def _graph_with_parametrized_linear() -> nn.Module:
    model = torch.fx.symbolic_trace(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)))
    parametrize.register_parametrization(model.get_submodule("0"), "weight", _Scale())
    return model


def test_fx_graph_with_parametrization_trains_once_per_step_with_accumulation():
    model = _graph_with_parametrized_linear()
    original = model.get_submodule("0").parametrizations.weight.original
    before = original.detach().clone()
    steps: list[int] = []
    stage = _stage(model, total_steps=3, before_step=steps.append)
    train_fn = lightning_train_fn(
        lambda s: torch.optim.SGD(s.model.parameters(), lr=s.lr), accumulate_grad_batches=2
    )
    model.train()
    train_fn(stage)
    assert steps == [0, 1, 2]  # 6 batches, one before_step per optimizer step
    assert train_fn.stages == [("finetune", 3)]
    assert isinstance(model, torch.fx.GraphModule) and parametrize.is_parametrized(model.get_submodule("0"))
    assert model.get_submodule("0").parametrizations.weight.original is original  # in place
    assert not torch.equal(original.detach(), before)
    assert original.requires_grad and torch.is_grad_enabled()
    assert _on_cpu_in_eval(model)


def test_trainer_kwargs_override_the_defaults_and_stage_precision():
    model = nn.Sequential(nn.Linear(4, 3))
    stage = _stage(model, total_steps=4)
    if hasattr(stage, "autocast"):
        stage = dataclasses.replace(stage, autocast="bf16")
    recorder = Recorder()
    seen: dict = {}

    class Peek(pl.Callback):
        def on_train_start(self, trainer, pl_module) -> None:
            seen.update(precision=trainer.precision, max_steps=trainer.max_steps)

    lightning_train_fn(max_steps=2, callbacks=[recorder, Peek()])(stage)
    assert seen["max_steps"] == recorder.fits[0]["steps"] == 2
    if getattr(stage, "autocast", None) == "bf16":
        assert seen["precision"] == "bf16-mixed"
    assert _on_cpu_in_eval(model)


def test_an_interrupt_in_before_step_comes_back_as_keyboard_interrupt():
    """Lightning turns a KeyboardInterrupt into sys.exit(1) with SIGINT ignored; the adapter
    gives the caller the interrupt (and its SIGINT handler) back."""

    def stop(step: int) -> None:
        if step == 1:
            raise KeyboardInterrupt

    handler = signal.getsignal(signal.SIGINT)
    model = nn.Sequential(nn.Linear(4, 3))
    with pytest.raises(KeyboardInterrupt):
        lightning_train_fn()(_stage(model, before_step=stop))
    assert signal.getsignal(signal.SIGINT) is handler
    assert _on_cpu_in_eval(model)


def test_other_errors_in_before_step_propagate():
    class Hopeless(Exception):
        pass

    def stop(step: int) -> None:
        raise Hopeless

    model = nn.Sequential(nn.Linear(4, 3))
    with pytest.raises(Hopeless):
        lightning_train_fn()(_stage(model, before_step=stop))
    assert _on_cpu_in_eval(model)


def test_a_missing_lightning_install_names_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "lightning.pytorch", None)
    train_fn = lightning_train_fn()  # building it needs no Lightning; running a stage does
    with pytest.raises(ImportError, match="pip install lightning"):
        train_fn(_stage(nn.Linear(4, 3)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_the_model_ends_where_the_stage_began():
    """Lightning's teardown moves the model to the CPU; the core holds it on stage.device."""
    model = _graph_with_parametrized_linear().cuda()
    stage = dataclasses.replace(_stage(model), device=torch.device("cuda"), autocast="bf16")
    recorder = Recorder()
    lightning_train_fn(callbacks=[recorder])(stage)
    assert recorder.fits[0]["steps"] == 6 and recorder.fits[0]["changed"] == 3
    assert all(t.device.type == "cuda" for t in (*model.parameters(), *model.buffers()))
    assert not model.training


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_qat_on_cuda_comes_back_on_the_cpu(cnn, digits_loaders):
    train, _, test = digits_loaders
    recorder = Recorder()
    compressed = apply_policy(
        cnn,
        Policy.quantize(8, 8),
        train,
        finetune=Finetune(epochs=0.5, lr=1e-3),
        train_fn=lightning_train_fn(callbacks=[recorder]),
        device="cuda",
        autocast="bf16",
    )
    assert recorder.fits[0]["steps"] == _half_epoch(train)
    assert _on_cpu_in_eval(compressed.module)
    assert evaluate_torch(compressed.module, test) > 0.5


def test_the_train_fn_pickles_for_ray_workers():
    train_fn = lightning_train_fn(gradient_clip_val=1.0)
    copy = pickle.loads(pickle.dumps(train_fn))
    assert copy.trainer_kwargs == {"gradient_clip_val": 1.0} and copy.stages == []
    model = nn.Sequential(nn.Linear(4, 3))
    copy(_stage(model, total_steps=2))
    assert copy.stages == [("finetune", 2)]


def test_a_non_finite_loss_fails_the_stage():
    model = nn.Sequential(nn.Linear(4, 3))
    stage = dataclasses.replace(
        _stage(model), loss=lambda inputs, outputs, targets: outputs.sum() * float("nan")
    )
    with pytest.raises(ValueError, match="loss became nan at step 1/6"):
        lightning_train_fn()(stage)
    assert _on_cpu_in_eval(model)
