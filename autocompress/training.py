"""Training, prediction and evaluation helpers shared by the zoo and compression passes."""

from __future__ import annotations

import dataclasses
import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from autocompress.devices import Accelerator, placed, to_device
from autocompress.evaluators.metrics import Metric, top1_accuracy

__all__ = [
    "Metric",
    "LossFn",
    "ExtraLoss",
    "TrainFn",
    "TrainStage",
    "top1_accuracy",
    "predict",
    "evaluate_torch",
    "train",
]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# extra_loss(inputs, outputs): sees the batch so distillation (teacher on the same
# inputs) fits, while regularisers (sparsity, weight penalties) may ignore both.
ExtraLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

_FINAL_LOSS_WINDOW = 20


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader) -> tuple[np.ndarray, np.ndarray]:
    """Run ``model`` over ``loader``; return concatenated (logits, targets) as numpy.

    The batches go to the device the model is on."""
    was_training = model.training
    model.eval()
    logits: list[np.ndarray] = []
    targets: list[np.ndarray] = []
    device = next(iter(model.parameters()), torch.empty(0)).device
    try:
        for inputs, target in loader:
            logits.append(model(to_device(inputs, device)).detach().cpu().numpy())
            targets.append(target.cpu().numpy())
    finally:
        model.train(was_training)
    if not logits:
        raise ValueError("predict: loader yielded no batches")
    return np.concatenate(logits), np.concatenate(targets)


def evaluate_torch(model: nn.Module, loader: DataLoader, metric: Metric = top1_accuracy) -> float:
    """Score ``model`` on ``loader`` with ``metric`` (default top-1 accuracy)."""
    logits, targets = predict(model, loader)
    return float(metric(logits, targets))


def _make_optimizer(
    name: str, params: list[torch.nn.Parameter], lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay, nesterov=True)
    raise ValueError(f"unknown optimizer {name!r}; allowed: adam, sgd")


def train(
    model: nn.Module,
    loader: DataLoader,
    *,
    epochs: float = 1,
    lr: float = 1e-3,
    optimizer: str = "adam",
    weight_decay: float = 0.0,
    loss_fn: LossFn | None = None,
    max_steps: int | None = None,
    seed: int | None = 0,
    extra_loss: ExtraLoss | None = None,
    on_step: Callable[[int, int], None] | None = None,
    train_fn: TrainFn | None = None,
    stage: str = "finetune",
    device: str | torch.device = "auto",
    autocast: str | None = None,
    companions: Iterable[nn.Module | None] = (),
) -> dict[str, float | int]:
    """Fine-tune ``model`` in place and return {"steps", "final_loss", "seconds"}.

    ``epochs`` may be fractional (0.5 = half the batches of one pass). The LR
    follows a cosine schedule over the total number of steps, which ``max_steps``
    caps. ``loss_fn(outputs, targets)`` defaults to cross-entropy; ``extra_loss(inputs,
    outputs)`` (e.g. distillation or a sparsity penalty) is added each step;
    ``on_step(step, total_steps)`` runs before each step (e.g. a sparsity schedule). ``seed``
    seeds torch before training (None leaves the global RNG alone). The model is
    left in eval mode.

    ``device``: where to train ("auto": CUDA when available, else the CPU; "cpu", "cuda",
    "cuda:N"); ``autocast``: None, "bf16" or "fp16" (CUDA only), the precision of the forward
    pass and the loss under torch.autocast (see autocompress.devices). The model is moved to
    the device for the loop and back to where it was afterwards (also when the loop raises),
    and every batch (tensors, or tuples/lists/dicts of them) is moved to the device.
    ``companions``: modules ``extra_loss`` or ``on_step`` run that are not part of ``model``
    (a distillation teacher): moved to the device and back with it.

    ``train_fn``: the user's training loop, called once with this ``stage``'s TrainStage
    instead of the loop below (see TrainStage).
    """
    accelerator = Accelerator(device, autocast)
    if epochs <= 0:
        raise ValueError(f"epochs must be > 0, got {epochs}")
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps must be >= 1 or None, got {max_steps}")
    try:
        batches_per_epoch = len(loader)
    except TypeError:  # iterable-style dataset without __len__
        raise ValueError("train: loader must have a length (map-style dataset)") from None
    if batches_per_epoch == 0:
        raise ValueError("train: loader is empty (0 batches); check the dataset and batch_size")

    total_steps = max(1, math.ceil(epochs * batches_per_epoch))
    if max_steps is not None:
        total_steps = min(total_steps, max_steps)

    if seed is not None:
        torch.manual_seed(seed)
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    target = accelerator.torch_device
    if not any(p.requires_grad for p in model.parameters()) and train_fn is None:
        raise ValueError("train: model has no trainable parameters")
    with placed(target, model, *companions):
        if train_fn is not None:
            return _run_user_loop(
                train_fn,
                stage,
                model,
                loader,
                epochs,
                lr,
                total_steps,
                loss_fn,
                extra_loss,
                on_step,
                target,
                accelerator.autocast,
            )
        return _run_loop(
            model,
            loader,
            total_steps,
            _make_optimizer(optimizer, [p for p in model.parameters() if p.requires_grad], lr, weight_decay),
            loss_fn,
            extra_loss,
            on_step,
            target,
            accelerator,
        )


def _run_loop(
    model: nn.Module,
    loader: DataLoader,
    total_steps: int,
    opt: torch.optim.Optimizer,
    loss_fn: LossFn,
    extra_loss: ExtraLoss | None,
    on_step: Callable[[int, int], None] | None,
    device: torch.device,
    accelerator: Accelerator,
) -> dict[str, float | int]:
    """The built-in loop (see train): the model is already on ``device``."""
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)
    scaler = accelerator.grad_scaler(device)

    recent: deque[float] = deque(maxlen=_FINAL_LOSS_WINDOW)
    step = 0
    start = time.perf_counter()
    model.train()
    try:
        while step < total_steps:
            steps_before = step
            for batch in loader:
                inputs, targets = to_device(batch, device)
                if on_step is not None:
                    on_step(step, total_steps)
                with accelerator.autocast_context(device):
                    outputs = model(inputs)
                    loss = loss_fn(outputs, targets)
                    if extra_loss is not None:
                        loss = loss + extra_loss(inputs, outputs)
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise ValueError(
                        f"train: loss became {value} at step {step + 1}/{total_steps} "
                        f"(lr={sched.get_last_lr()[0]:.3g}); try a lower learning rate"
                    )
                opt.zero_grad(set_to_none=True)
                if scaler is None:
                    loss.backward()
                    opt.step()
                else:  # fp16: scaled gradients, a step skipped (and the scale lowered) on overflow
                    scaler.scale(loss).backward()
                    scaler.step(opt)
                    scaler.update()
                sched.step()
                recent.append(value)
                step += 1
                if step >= total_steps:
                    break
            if step == steps_before:  # len() lied; avoid spinning forever
                raise ValueError("train: loader yielded no batches")
    finally:
        model.eval()
    return {
        "steps": step,
        "final_loss": float(np.mean(recent)),
        "seconds": time.perf_counter() - start,
    }


@dataclasses.dataclass(frozen=True)
class TrainStage:
    """One fine-tuning stage of the compression core, handed to a user's ``train_fn`` so
    that the user's recipe (optimizer, schedule, augmentation, mixed precision, device,
    a Lightning or transformers Trainer) is what trains.

    name: "distillation" (a student learns from the model), "recovery" (after a pruning
        step) or "finetune" (quantization-aware training, the sparsity ramp).
    model: train its parameters in place (for distillation they include the hint
        projections); leave it in eval mode. Its forward returns the logits.
    loss(inputs, outputs, targets): what this stage minimises: the task loss (or the
        distillation loss) plus the stage's own terms (the sparsity penalty). Use it as
        the training loss; replacing it changes what the policy means.
    before_step(step): call before each optimizer step (0-based): the sparsity ramp and
        the search's early stopping of hopeless candidates run there.
    epochs, total_steps, lr: the budget the core would spend, and the built-in loop's
        learning rate for this stage: a suggestion a recipe may scale.
    device: where to train (the ``device=`` of apply_policy/search, resolved: "auto" is
        CUDA when available). ``model`` and the modules ``loss`` runs (a distillation
        teacher) are already there, and are moved back afterwards; ``loader`` yields CPU
        batches: move inputs and targets to ``device`` (``autocompress.devices.to_device``).
    autocast: None, "bf16" or "fp16": run the forward pass and ``loss`` under
        ``stage.autocast_context()`` (torch.autocast on ``device``; a no-op for None); for
        fp16 scale the loss with torch.amp.GradScaler, as the built-in loop does.
    """

    name: str
    model: nn.Module
    loader: Iterable
    epochs: float
    total_steps: int
    lr: float
    loss: Callable[[torch.Tensor, Any, torch.Tensor], torch.Tensor]
    before_step: Callable[[int], None]
    device: torch.device = torch.device("cpu")
    autocast: str | None = None

    def autocast_context(self) -> Any:
        """torch.autocast for ``autocast`` on ``device``, or a no-op context when it is None."""
        return Accelerator(str(self.device), self.autocast).autocast_context(self.device)


TrainFn = Callable[[TrainStage], Any]


def _run_user_loop(
    train_fn: TrainFn,
    stage: str,
    model: nn.Module,
    loader: Iterable,
    epochs: float,
    lr: float,
    total_steps: int,
    loss_fn: LossFn,
    extra_loss: ExtraLoss | None,
    on_step: Callable[[int, int], None] | None,
    device: torch.device,
    autocast: str | None,
) -> dict[str, Any]:
    steps = 0

    def loss(inputs: torch.Tensor, outputs: Any, targets: torch.Tensor) -> torch.Tensor:
        value = loss_fn(outputs, targets)
        return value + extra_loss(inputs, outputs) if extra_loss is not None else value

    def before_step(step: int) -> None:
        nonlocal steps
        steps = max(steps, step + 1)
        if on_step is not None:
            on_step(step, total_steps)

    start = time.perf_counter()
    model.train()
    try:
        train_fn(
            TrainStage(stage, model, loader, epochs, total_steps, lr, loss, before_step, device, autocast)
        )
    finally:
        model.eval()
    return {"steps": steps, "seconds": time.perf_counter() - start, "train_fn": stage}
