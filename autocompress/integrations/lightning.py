"""PyTorch Lightning as the core's training loop: ``train_fn=lightning_train_fn()``.

    from autocompress.integrations.lightning import lightning_train_fn

    compressed = autocompress.apply_policy(model, policy, train_loader,
                                           train_fn=lightning_train_fn(gradient_clip_val=1.0))

Every fine-tune stage of the core (distillation, pruning recovery, the final quantization-aware
fine-tune) then runs as ``lightning.pytorch.Trainer(max_steps=stage.total_steps, ...).fit``
on the stage's loader. Lightning is optional: it is imported when a stage runs, and a missing
install is an ImportError naming ``pip install lightning``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from autocompress.training import TrainStage

__all__ = ["LightningTrainFn", "default_optimizers", "lightning_train_fn"]

_PRECISION = {"bf16": "bf16-mixed", "fp16": "16-mixed"}
# Lightning's per-fit chatter ("GPU available: ...", "`Trainer.fit` stopped: `max_steps=N`
# reached."): a search fits many stages; warnings and errors still show.
_QUIET_LOGGERS = ("lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning_fabric")
_QUIET_WARNINGS = (
    ".*does not have many workers.*",  # the user's loader is the user's choice
    ".*isinstance\\(treespec, LeafSpec\\).*",  # Lightning's pytree copy vs newer torch: not the user's
)

ConfigureOptimizers = Callable[[TrainStage], Any]


def default_optimizers(stage: TrainStage) -> dict[str, Any]:
    """The built-in loop's recipe: Adam at ``stage.lr`` over the trainable parameters, the
    learning rate following a cosine schedule over ``stage.total_steps`` (stepped per step)."""
    params = [p for p in stage.model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"lightning_train_fn: the {stage.name!r} stage's model has no trainable parameters")
    optimizer = torch.optim.Adam(params, lr=stage.lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=stage.total_steps)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def lightning_train_fn(
    configure_optimizers: ConfigureOptimizers | None = None,
    *,
    quiet: bool = True,
    **trainer_kwargs: Any,
) -> LightningTrainFn:
    """A ``train_fn`` for apply_policy/search/resume that fits each stage with a Lightning
    Trainer: ``LightningTrainFn(configure_optimizers, quiet=quiet, **trainer_kwargs)``."""
    return LightningTrainFn(configure_optimizers, quiet=quiet, **trainer_kwargs)


class LightningTrainFn:
    """A ``train_fn`` (autocompress.training.TrainFn) that fits each stage with a Lightning Trainer.

    configure_optimizers(stage): returns what ``LightningModule.configure_optimizers`` may
        return (an optimizer, a dict with "optimizer" and "lr_scheduler", lists of them),
        built over ``stage.model``'s parameters; default :func:`default_optimizers` (Adam at
        ``stage.lr``, cosine schedule over ``stage.total_steps``, as the built-in loop).
    quiet: keep Lightning's informational log lines (devices, tips, "max_steps reached"), its
        warning about the loader's worker count and its torch pytree deprecation warning out
        of the output while a stage fits.
    trainer_kwargs: override the Trainer's arguments. The defaults, for a library call:
        ``max_steps=stage.total_steps`` (``max_epochs=-1``: the steps decide), no logger, no
        checkpointing, no progress bar, no model summary, ``accelerator``/``devices`` from
        ``stage.device`` ("cpu", or "gpu" on its CUDA index; "auto" when the stage has no
        device) and ``precision`` from ``stage.autocast`` ("bf16" -> "bf16-mixed", "fp16" ->
        "16-mixed"; Lightning scales fp16 losses itself).

    Each training batch is ``(inputs, targets)``; the loss is ``stage.loss(inputs,
    model(inputs), targets)`` (a non-finite loss is a ValueError, as in the built-in loop)
    and ``stage.before_step(step)`` runs before the batch that starts optimizer step ``step``
    (0-based ``trainer.global_step``; once per step, also with ``accumulate_grad_batches``).
    ``stage.model`` is trained in place, ends on the device it was on when the stage began
    (Lightning's teardown would leave it on the CPU), and is left in eval mode. ``stages``
    lists each fitted stage's ``(name, global_step)``. On Ray the object is pickled to the
    workers: the optimizer factory and the trainer arguments (callbacks) must pickle too.
    """

    def __init__(
        self,
        configure_optimizers: ConfigureOptimizers | None = None,
        *,
        quiet: bool = True,
        **trainer_kwargs: Any,
    ) -> None:
        self.configure_optimizers = configure_optimizers or default_optimizers
        self.quiet = quiet
        self.trainer_kwargs = trainer_kwargs
        self.stages: list[tuple[str, int]] = []

    def __call__(self, stage: TrainStage) -> None:
        pl = _import_lightning()
        module = _stage_module(pl, stage, self.configure_optimizers)
        model = stage.model
        device = _device_of(model)
        sigint = signal.getsignal(signal.SIGINT)
        trainer = None
        model.train()
        try:
            with _quiet() if self.quiet else contextlib.nullcontext():
                trainer = pl.Trainer(**{**_trainer_defaults(stage), **self.trainer_kwargs})
                trainer.fit(module, train_dataloaders=stage.loader)
        except SystemExit as exit_:
            # Lightning answers a KeyboardInterrupt (Ctrl+C, or one raised in before_step) with
            # sys.exit(1) and SIGINT ignored: give the caller (a search) the interrupt back.
            if trainer is not None and trainer.interrupted:
                raise KeyboardInterrupt from exit_
            raise
        finally:
            if threading.current_thread() is threading.main_thread() and sigint is not None:
                signal.signal(signal.SIGINT, sigint)
            if device is not None:
                model.to(device)  # Lightning's teardown moves a GPU model to the CPU
            model.eval()
        self.stages.append((stage.name, int(trainer.global_step)))


def _import_lightning() -> Any:
    try:
        import lightning.pytorch as pl
    except ImportError as error:
        raise ImportError(
            "autocompress.integrations.lightning needs PyTorch Lightning: pip install lightning"
        ) from error
    return pl


def _trainer_defaults(stage: TrainStage) -> dict[str, Any]:
    defaults: dict[str, Any] = {
        "max_steps": stage.total_steps,
        "max_epochs": -1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "accelerator": "auto",
    }
    device = getattr(stage, "device", None)
    if device is not None:
        device = torch.device(device)
        if device.type == "cuda":
            index = device.index if device.index is not None else torch.cuda.current_device()
            defaults.update(accelerator="gpu", devices=[index])
        else:
            defaults.update(accelerator=device.type, devices=1)
    autocast = getattr(stage, "autocast", None)
    if autocast is not None:
        defaults["precision"] = _PRECISION[autocast]
    return defaults


def _stage_module(pl: Any, stage: TrainStage, configure: ConfigureOptimizers) -> Any:
    class StageModule(pl.LightningModule):
        """``stage.model`` (a child, so Lightning moves and switches its mode) trained on ``stage.loss``."""

        def __init__(self) -> None:
            super().__init__()
            self.model = stage.model
            self._next_step = 0  # the first global step whose before_step has not run

        def forward(self, inputs: Any) -> Any:
            return self.model(inputs)

        def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
            step = self.trainer.global_step
            if step >= self._next_step:  # the first batch of an optimizer step
                stage.before_step(step)
                self._next_step = step + 1

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            inputs, targets = batch
            outputs = self.model(inputs)
            loss = stage.loss(inputs, outputs, targets)
            value = float(loss.detach())
            if not math.isfinite(value):  # as the built-in loop: a failed stage, not NaN weights
                raise ValueError(
                    f"lightning_train_fn: the {stage.name!r} loss became {value} at step "
                    f"{self.trainer.global_step + 1}/{stage.total_steps}; try a lower learning rate"
                )
            self.log("train_loss", value, on_step=True, on_epoch=False, batch_size=_batch_size(inputs))
            return loss

        def configure_optimizers(self) -> Any:
            return configure(stage)

    return StageModule()


def _batch_size(inputs: Any) -> int | None:
    return inputs.shape[0] if isinstance(inputs, torch.Tensor) and inputs.dim() > 0 else None


def _device_of(module: nn.Module) -> torch.device | None:
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return None


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in _QUIET_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            for message in _QUIET_WARNINGS:
                warnings.filterwarnings("ignore", message=message)
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
