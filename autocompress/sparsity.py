"""Unstructured and block sparsity: masks on weights, applied during fine-tuning.

Every sparsified layer gets one ``torch.nn.utils.parametrize`` parametrization on its
``weight``, registered *before* any weight quantizer so the chain is
``quantize(mask(w))``: zeros stay zeros after symmetric fake quantization (zero point 0)
and ``autocompress.evaluators.size.parameter_stats`` counts them. Shapes never change; OpenVINO runs
the weights dense on CPU, so sparsity buys size (compressible zeros), not latency.

Two methods, as ``autocompress.policies.Sparsity.method`` says:

``"magnitude"`` -- :class:`MagnitudeMask`. The smallest-|w| weights (or, with ``block``,
    the (rows, cols) blocks of a Linear weight with the smallest L2 norm, as Condensa's
    BlockPrune) are zeroed. During fine-tuning the level follows the schedule from 0 to
    the target (``SparsityController.on_step``); without fine-tuning ``finalize()``
    prunes one-shot.
``"l0"`` -- :class:`L0Gate`. Hard-concrete gates (Louizos et al. 2018) with one
    ``log_alpha`` per weight and a penalty pulling each layer's expected density to
    ``1 - level`` (the regularization-based sparsity of the NNCF paper).
    ``finalize()`` keeps exactly the top ``1 - level`` weights by ``log_alpha`` and
    replaces the gate by a fixed binary mask.

Typical use with ``autocompress.training.train``::

    controller = SparsityController(model, {"fc": Sparsity(0.5)}).attach()
    train(model, loader, extra_loss=controller.extra_loss, on_step=controller.on_step)
    controller.finalize()   # exact levels, binary masks only; {layer: achieved sparsity}

Defaults (see :class:`SparsityController`) were picked on MnistCNN/digits, where one
epoch is only 20 steps; they scale with the number of steps, not with the data set.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn
from torch.nn.utils import parametrize

from autocompress.policies import PolicyError, Sparsity

__all__ = [
    "MagnitudeMask",
    "L0Gate",
    "SparsityController",
    "SparsityError",
    "scheduled_level",
    "BETA",
    "GAMMA",
    "ZETA",
]

# Hard-concrete constants of Louizos et al. (2018).
BETA, GAMMA, ZETA = 2.0 / 3.0, -0.1, 1.1
# log_alpha above which P(gate != 0) > 1/2: the eval-time gate is open there.
_OPEN_THRESHOLD = BETA * math.log(-GAMMA / ZETA)  # ~ -1.599
_SCHEDULES = ("constant", "polynomial", "exponential")


class SparsityError(PolicyError):
    """A sparsity request that cannot be applied to this model (names the layer)."""


# -- schedule ---------------------------------------------------------------------


def scheduled_level(target: float, schedule: str, progress: float) -> float:
    """Sparsity level at ``progress`` in [0, 1] of the ramp (1 and beyond: the target).

    constant: the target from the start. polynomial: Zhu & Gupta (2017),
    ``target * (1 - (1 - progress)^3)`` -- prunes fast while the network is redundant,
    slowly near the end. exponential: the density ``1 - level`` decays exponentially
    from 1 to ``1 - target``, i.e. ``density = (1 - target) ** progress``.
    """
    if schedule not in _SCHEDULES:
        raise ValueError(f"unknown sparsity schedule {schedule!r}; allowed: {', '.join(_SCHEDULES)}")
    progress = min(max(float(progress), 0.0), 1.0)
    if schedule == "constant" or progress >= 1.0:
        return float(target)
    if schedule == "polynomial":
        return float(target) * (1.0 - (1.0 - progress) ** 3)
    return 1.0 - (1.0 - float(target)) ** progress


def _zeros_for(level: float, units: int) -> int:
    """How many of ``units`` weights/blocks are zero at ``level`` (round half to even)."""
    return min(units, max(0, round(level * units)))


def _keep_top(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """A 0/1 tensor shaped like ``scores`` with exactly ``keep`` ones at the largest scores."""
    flat = scores.detach().reshape(-1)
    mask = torch.zeros_like(flat)
    if keep > 0:
        mask[torch.topk(flat, keep, sorted=False).indices] = 1.0
    return mask.view_as(scores)


# -- parametrizations -------------------------------------------------------------


class MagnitudeMask(nn.Module):
    """Parametrization ``w -> w * mask`` with a fixed binary ``mask`` buffer.

    ``block=(rows, cols)`` (2-D weights only) makes the mask out of whole blocks, chosen
    by block L2 norm. The mask changes only through :meth:`update`/:meth:`set_mask`.
    """

    def __init__(self, weight: torch.Tensor, block: tuple[int, int] | None = None, name: str = "") -> None:
        super().__init__()
        self.layer_name = name
        self.block = tuple(block) if block is not None else None
        if self.block is not None:
            _check_block(name, tuple(weight.shape), self.block)
        self.register_buffer("mask", torch.ones_like(weight, dtype=weight.dtype, requires_grad=False))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask

    # -- scores and updates -------------------------------------------------------
    @property
    def units(self) -> int:
        """Prunable units: weights, or blocks in block mode."""
        if self.block is None:
            return self.mask.numel()
        rows, cols = self.block
        return self.mask.numel() // (rows * cols)

    def scores(self, weight: torch.Tensor) -> torch.Tensor:
        """|w| per weight, or the L2 norm of each block ([out/rows, in/cols])."""
        weight = weight.detach()
        if self.block is None:
            return weight.abs()
        rows, cols = self.block
        out_features, in_features = weight.shape
        blocks = weight.reshape(out_features // rows, rows, in_features // cols, cols)
        return blocks.pow(2).sum(dim=(1, 3)).sqrt()

    def _expand(self, block_mask: torch.Tensor) -> torch.Tensor:
        if self.block is None:
            return block_mask
        rows, cols = self.block
        return block_mask.repeat_interleave(rows, dim=0).repeat_interleave(cols, dim=1)

    @torch.no_grad()
    def update(self, weight: torch.Tensor, level: float) -> None:
        """Zero exactly ``round(level * units)`` units with the smallest score in ``weight``."""
        scores = self.scores(weight)
        keep = scores.numel() - _zeros_for(level, scores.numel())
        self.mask.copy_(self._expand(_keep_top(scores, keep)).to(self.mask.dtype))

    @torch.no_grad()
    def set_mask(self, mask: torch.Tensor) -> None:
        if mask.shape != self.mask.shape:
            raise ValueError(
                f"mask shape {tuple(mask.shape)} does not match weight shape {tuple(self.mask.shape)}"
            )
        self.mask.copy_((mask != 0).to(self.mask.dtype))

    def zero_units(self) -> int:
        """Masked weights, or masked blocks in block mode."""
        zeros = int((self.mask == 0).sum())
        return zeros if self.block is None else zeros // (self.block[0] * self.block[1])

    def sparsity(self) -> float:
        """Fraction of weights the mask zeroes."""
        return float((self.mask == 0).sum()) / self.mask.numel()

    def extra_repr(self) -> str:
        block = f", block={self.block[0]}x{self.block[1]}" if self.block else ""
        return f"shape={tuple(self.mask.shape)}{block}, sparsity={self.sparsity():.3f}"


class L0Gate(nn.Module):
    """Parametrization ``w -> w * z`` with hard-concrete gates ``z`` (Louizos et al. 2018).

    One ``log_alpha`` per weight. Training: ``z`` is sampled, ``s = sigmoid((log u -
    log(1 - u) + log_alpha) / beta)``, ``z = clamp(s * (zeta - gamma) + gamma, 0, 1)``
    with beta=2/3, gamma=-0.1, zeta=1.1, so gates are exactly 0 or 1 most of the time and
    still have gradients. Eval: deterministic and binary, ``z = 1`` where the gate is
    more likely open than closed (``P(z != 0) > 1/2``, i.e. ``log_alpha > beta *
    log(-gamma / zeta)``), else 0 -- what is exported. :meth:`expected_density` is the
    differentiable ``mean P(z != 0)`` (the layer's expected L0 norm over its size).

    Initialisation (``level`` is the layer's target): gates ordered by magnitude and
    centred on the target, ``log_alpha = init + 2 * log(|w| / q)`` with ``q`` the
    ``level``-quantile of ``|w|``. Weights at the quantile start open (``init=2``: the
    deterministic gate is 0.95), much smaller ones start closed, so the penalty and the
    data only have to decide the boundary -- with a 20-step fine-tune there is no time
    to learn an order from scratch. Without training, the top-``(1 - level)`` by
    ``log_alpha`` is exactly magnitude pruning.

    ``log_alpha`` is a buffer that requires grad, not a Parameter, so the fine-tuning
    optimizer does not see it: :meth:`gate_step` (driven by :class:`SparsityController`)
    trains it with its own learning rate -- gates must move ~1000x faster than weights
    to reach a level within one short epoch, whatever optimizer tunes the weights.
    """

    SPREAD = 2.0  # log_alpha units per e-fold of |w| at initialisation

    def __init__(self, weight: torch.Tensor, level: float = 0.0, init: float = 2.0, name: str = "") -> None:
        super().__init__()
        self.layer_name = name
        with torch.no_grad():
            magnitude = weight.detach().float().abs()
            floor = magnitude.pow(2).mean().sqrt().clamp_min(1e-12) * 1e-6
            zeros = _zeros_for(level, magnitude.numel())
            pivot = magnitude.reshape(-1).kthvalue(zeros).values if zeros > 0 else magnitude.min()
            pivot = pivot.clamp_min(floor)
            log_alpha = init + self.SPREAD * torch.log(magnitude.clamp_min(floor) / pivot)
            log_alpha = log_alpha.clamp(-10.0, 10.0).to(weight.dtype)
        self.register_buffer("log_alpha", log_alpha.requires_grad_())
        # Gate optimizer state: Adam's first moment per gate, second moment per layer.
        self.register_buffer("_moment1", torch.zeros_like(log_alpha))
        self.register_buffer("_moment2", torch.zeros((), dtype=log_alpha.dtype))
        self.gate_steps = 0

    def _alpha(self) -> torch.Tensor:
        log_alpha = self.log_alpha
        if not (log_alpha.is_leaf and log_alpha.requires_grad):  # e.g. after .to(device) or a load
            log_alpha = self.log_alpha = log_alpha.detach().requires_grad_()
        return log_alpha

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self.training:
            return weight * self.sample()
        return weight * self.hard_gate().to(weight.dtype)

    def sample(self) -> torch.Tensor:
        """A stochastic hard-concrete gate per weight (differentiable in log_alpha)."""
        log_alpha = self._alpha()
        u = torch.rand_like(log_alpha).clamp(1e-6, 1.0 - 1e-6)
        s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + log_alpha) / BETA)
        return (s * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)

    def hard_gate(self) -> torch.Tensor:
        """The binary eval gate: 1 where P(z != 0) > 1/2."""
        return (self.log_alpha.detach() > _OPEN_THRESHOLD).to(self.log_alpha.dtype)

    def open_probability(self) -> torch.Tensor:
        """P(z != 0) per weight, differentiable in log_alpha."""
        return torch.sigmoid(self._alpha() - _OPEN_THRESHOLD)

    def expected_density(self) -> torch.Tensor:
        """Expected fraction of non-zero gates (differentiable): the layer's L0 / numel."""
        return self.open_probability().mean()

    def sparsity(self) -> float:
        """Fraction of weights the eval gate zeroes."""
        return 1.0 - float(self.hard_gate().mean())

    @torch.no_grad()
    def gate_step(self, lr: float, betas: tuple[float, float] = (0.9, 0.999)) -> bool:
        """One step on ``log_alpha`` from its accumulated gradient, then clear the gradient.

        Adam with one second moment for the whole layer (Adam's is per weight): the
        layer moves ~``lr`` per step (RMS) while it is far from its target, slows
        down as the penalty's gradient shrinks near it, and the relative size of the
        gates' gradients -- which weights the loss needs -- is kept. (Per-weight Adam
        moves every gate by ~lr whatever its gradient: all gates drift together,
        the whole layer becomes noisy and one epoch of digits lost ~10 pt.)
        Returns False (doing nothing) when there is no gradient, or a non-finite one.
        """
        log_alpha = self.log_alpha
        grad = log_alpha.grad
        if grad is None:
            return False
        if not bool(torch.isfinite(grad).all()):
            log_alpha.grad = None  # an fp16 GradScaler overflow: skipped, as the optimizer's step is
            return False
        self.gate_steps += 1
        b1, b2 = betas
        self._moment1.mul_(b1).add_(grad, alpha=1 - b1)
        self._moment2.mul_(b2).add_(grad.pow(2).mean(), alpha=1 - b2)
        m_hat = self._moment1 / (1 - b1**self.gate_steps)
        v_hat = self._moment2 / (1 - b2**self.gate_steps)
        log_alpha.sub_(lr * m_hat / v_hat.sqrt().clamp_min(1e-30))
        log_alpha.grad = None
        return True

    def extra_repr(self) -> str:
        return f"shape={tuple(self.log_alpha.shape)}, sparsity={self.sparsity():.3f}"


# -- controller -------------------------------------------------------------------


class SparsityController:
    """Attaches and drives the sparsity parametrizations of a module's layers.

    ``layers`` maps module names (as in ``module.named_modules()``) to
    :class:`autocompress.policies.Sparsity`; each layer is pruned to its own level. Call
    :meth:`attach` before any weight quantizer is registered, pass :meth:`on_step` and
    :meth:`extra_loss` to ``autocompress.training.train``, then call :meth:`finalize`.

    Defaults, picked on MnistCNN/digits (20 steps per epoch) and expressed as fractions
    of the run so they carry over to longer fine-tunes:

    ramp=0.75: levels ramp over the first 75% of the steps; the last 25% fine-tune the
        weights under the final, fixed masks (Zhu & Gupta prune for most of the run and
        then recover; NNCF freezes RB masks for the last epochs likewise).
    update_every=0.05: magnitude masks are recomputed every 5% of the ramp (at least
        every step, and at the end of the ramp): ~20 pruning events, a smooth ramp, and
        steps in between for the weights to adapt. During the ramp masks come from the
        raw |w| (a pruned weight may come back, as in Zhu & Gupta); then they are held.
    l0_lambda=100: weight of ``sum_layers (E[density] - (1 - level))^2`` (NNCF's RB
        loss). The gates' optimizer normalises each layer's gradient, so lambda only sets
        the balance between the penalty and the task loss: at 100 the eval-gate
        sparsity is within ~2.5 pt of the target when the gates freeze after one digits
        epoch, at 50% and at 90% (at 10, 90% stopped at 73-80%; at 1000 the fc layer
        overshot to 95%).
    gate_lr=None: the gates' learning rate (log_alpha units per step). None derives it
        from the run length: ``l0_travel / (l0_fraction * total_steps)`` for the first
        half of the steps (``l0_travel=12``: room to cross the ~4 units from open to
        closed with the task loss pushing back), then a cosine decay to 0 at the end of
        the ramp, where the gates are frozen to exact binary masks (``l0_freeze``).
        Without ``on_step`` (run length unknown) it is 0.05.
    """

    def __init__(
        self,
        module: nn.Module,
        layers: Mapping[str, Sparsity],
        *,
        ramp: float = 0.75,
        update_every: float = 0.05,
        l0_lambda: float = 100.0,
        gate_lr: float | None = None,
        l0_travel: float = 12.0,
        l0_fraction: float = 0.5,
        l0_init: float = 2.0,
        l0_freeze: bool = True,
    ) -> None:
        if not 0.0 < ramp <= 1.0:
            raise ValueError(f"ramp must be in (0, 1], got {ramp}")
        if not 0.0 < update_every <= 1.0:
            raise ValueError(f"update_every must be in (0, 1], got {update_every}")
        if not 0.0 < l0_fraction <= ramp:
            raise ValueError(f"l0_fraction must be in (0, ramp={ramp}], got {l0_fraction}")
        if l0_lambda < 0:
            raise ValueError(f"l0_lambda must be >= 0, got {l0_lambda}")
        if gate_lr is not None and gate_lr < 0:
            raise ValueError(f"gate_lr must be >= 0 or None, got {gate_lr}")
        self.module = module
        self.specs: dict[str, Sparsity] = dict(layers)
        self.ramp = ramp
        self.update_every = update_every
        self.l0_lambda = l0_lambda
        self.gate_lr = gate_lr
        self.l0_travel = l0_travel
        self.l0_fraction = l0_fraction
        self.l0_init = l0_init
        self.l0_freeze = l0_freeze
        modules = dict(module.named_modules())
        self.layers: dict[str, nn.Module] = {
            name: self._check(modules, name, spec) for name, spec in self.specs.items()
        }
        self.masks: dict[str, MagnitudeMask | L0Gate] = {}
        self.attached = False
        self.finalized = False
        self._last_update: dict[str, int] = {}
        self._gate_lr_now = 0.05 if gate_lr is None else gate_lr

    # -- validation -----------------------------------------------------------------
    def _check(self, modules: dict[str, nn.Module], name: str, spec: Sparsity) -> nn.Module:
        if not isinstance(spec, Sparsity):
            raise TypeError(
                f"layer {name!r}: expected a autocompress.policies.Sparsity, got {type(spec).__name__}"
            )
        if name not in modules or name == "":
            with_weights = [n for n, m in modules.items() if n and isinstance(_weight_of(m), torch.Tensor)]
            raise SparsityError(
                f"unknown layer {name!r}: {type(self.module).__name__} has no such submodule. "
                f"Layers with a weight: {', '.join(with_weights) or '(none)'}"
            )
        layer = modules[name]
        weight = _weight_of(layer)
        if not isinstance(weight, torch.Tensor):
            raise SparsityError(
                f"layer {name!r} is a {type(layer).__name__} without a 'weight' tensor; sparsity applies "
                "to layers with a weight (Conv1d/2d/3d, Linear, ...)"
            )
        if not weight.is_floating_point():
            raise SparsityError(f"layer {name!r}: weight dtype {weight.dtype} is not floating point")
        if spec.block is not None:
            if not isinstance(layer, nn.Linear):
                raise SparsityError(
                    f"layer {name!r} is a {type(layer).__name__}: block sparsity "
                    f"{spec.block[0]}x{spec.block[1]} applies to nn.Linear weights only; "
                    "use block=None (unstructured) for this layer"
                )
            _check_block(name, tuple(weight.shape), tuple(spec.block))
        # As pruning refuses to leave no channel: a level keeping fewer weights than the layer
        # has output channels leaves some channel without any (its output a constant).
        weights, channels = weight.numel(), weight.shape[0]
        kept = weights - _zeros_for(spec.level, weights)
        if kept < channels:
            raise SparsityError(
                f"layer {name!r}: sparsity level {spec.level:g} keeps {kept} of its {weights} weights, fewer "
                f"than its {channels} output channels, so some would have no weight left; use a level of at "
                f"most {1 - channels / weights:.4f}"
            )
        return layer

    # -- lifecycle ------------------------------------------------------------------
    def attach(self) -> SparsityController:
        """Register one parametrization per layer (before any quantizer); returns self."""
        if self.attached:
            raise RuntimeError("SparsityController.attach() was already called")
        for name, layer in self.layers.items():
            if parametrize.is_parametrized(layer, "weight"):
                existing = ", ".join(type(p).__name__ for p in layer.parametrizations.weight)
                raise SparsityError(
                    f"layer {name!r}: weight is already parametrized ({existing}); attach sparsity "
                    "before weight quantizers so the chain is quantize(mask(w))"
                )
        for name, layer in self.layers.items():
            spec = self.specs[name]
            if spec.method == "l0":
                mask: MagnitudeMask | L0Gate = L0Gate(
                    layer.weight, level=spec.level, init=self.l0_init, name=name
                )
            else:
                mask = MagnitudeMask(layer.weight, block=spec.block, name=name)
            parametrize.register_parametrization(layer, "weight", mask)
            self.masks[name] = mask
        self.attached = True
        return self

    def _require(self) -> None:
        if not self.attached:
            raise RuntimeError("call SparsityController.attach() first")

    def on_step(self, step: int, total_steps: int) -> None:
        """Training hook (``train(on_step=...)``, called before each step).

        Magnitude layers: follow their schedule, recomputing masks every
        ``update_every`` of the ramp. L0 layers: apply the gates' pending gradient,
        then freeze them to exact binary masks at the end of the ramp.
        """
        self._require()
        if self.finalized:
            return
        ramp_end = max(1, math.ceil(self.ramp * total_steps))
        every = max(1, round(self.update_every * ramp_end))
        self._gate_lr_now = self._gate_lr(step, total_steps, ramp_end)
        for name, mask in list(self.masks.items()):
            spec = self.specs[name]
            if spec.method == "magnitude":
                last = self._last_update.get(name)
                if last is not None and last >= ramp_end:
                    continue  # holding the final mask
                if last is None or step - last >= every or step >= ramp_end:
                    level = scheduled_level(spec.level, spec.schedule, step / ramp_end)
                    mask.update(_original(self.layers[name]), level)
                    self._last_update[name] = step
            elif isinstance(mask, L0Gate):
                mask.gate_step(self._gate_lr_now)
                if self.l0_freeze and step >= ramp_end:
                    self._fix_gate(name, mask)

    def _gate_lr(self, step: int, total_steps: int, ramp_end: int) -> float:
        if self.gate_lr is not None:
            return self.gate_lr
        travel_steps = max(1.0, self.l0_fraction * total_steps)
        settle_end = max(travel_steps + 1.0, float(ramp_end if self.l0_freeze else total_steps))
        base = self.l0_travel / travel_steps
        if step < travel_steps:
            return base
        progress = min(1.0, (step - travel_steps) / (settle_end - travel_steps))
        return base * 0.5 * (1.0 + math.cos(math.pi * progress))

    def extra_loss(
        self, inputs: torch.Tensor | None = None, outputs: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``l0_lambda * sum (E[density] - (1 - level))^2`` over live L0 gates, else 0.

        ``inputs``/``outputs`` are ignored (the ``train(extra_loss=...)`` signature).
        When ``on_step`` is not used, the gates' pending gradient is applied here.
        """
        self._require()
        gates = [(name, m) for name, m in self.masks.items() if isinstance(m, L0Gate)]
        device = outputs.device if isinstance(outputs, torch.Tensor) else None
        if not gates or self.finalized:
            return torch.zeros((), device=device)
        for _, gate in gates:
            gate.gate_step(self._gate_lr_now)  # no-op when on_step already consumed the gradient
        penalty = sum((gate.expected_density() - (1.0 - self.specs[name].level)) ** 2 for name, gate in gates)
        return self.l0_lambda * penalty

    @torch.no_grad()
    def finalize(self) -> dict[str, float]:
        """Fix every mask at exactly the target level; returns {layer: achieved sparsity}.

        Magnitude: a mask already at the target count (the schedule ran to its end) is
        kept; otherwise the effective weights ``|w * mask|`` are pruned to the target
        (one-shot pruning when no step ran; previously pruned weights stay pruned).
        L0: keeps the top ``1 - level`` weights by ``log_alpha`` and replaces the gate
        by a fixed :class:`MagnitudeMask` in place, so only binary masks remain and a
        quantizer registered after it stays in the chain. Achieved sparsity is
        ``round(level * n) / n`` (n weights, or blocks in block mode).
        """
        self._require()
        for name, mask in list(self.masks.items()):
            if isinstance(mask, L0Gate):
                self._fix_gate(name, mask)
            elif mask.zero_units() != _zeros_for(self.specs[name].level, mask.units):
                mask.update(_original(self.layers[name]) * mask.mask, self.specs[name].level)
        self.finalized = True
        return self.levels()

    @torch.no_grad()
    def _fix_gate(self, name: str, gate: L0Gate) -> None:
        """Replace an L0 gate by a binary mask keeping the top ``1 - level`` by log_alpha."""
        log_alpha = gate.log_alpha.detach()
        fixed = MagnitudeMask(log_alpha, name=name)
        keep = log_alpha.numel() - _zeros_for(self.specs[name].level, log_alpha.numel())
        fixed.set_mask(_keep_top(log_alpha, keep))
        chain = self.layers[name].parametrizations.weight
        index = next(i for i, p in enumerate(chain) if p is gate)
        chain[index] = fixed
        self.masks[name] = fixed

    # -- introspection --------------------------------------------------------------
    def levels(self) -> dict[str, float]:
        """Current achieved sparsity per layer: the fraction of weights masked (eval gates for L0)."""
        self._require()
        return {name: mask.sparsity() for name, mask in self.masks.items()}

    def expected_densities(self) -> dict[str, float]:
        """E[density] of each layer that still has live L0 gates."""
        self._require()
        return {
            n: float(m.expected_density().detach()) for n, m in self.masks.items() if isinstance(m, L0Gate)
        }

    def describe(self) -> str:
        lines = []
        for name, spec in self.specs.items():
            now = f", now {self.masks[name].sparsity():.1%}" if name in self.masks else ""
            lines.append(f"{name}: {spec.short()} ({spec.schedule}){now}")
        return "\n".join(lines)


def _weight_of(layer: nn.Module) -> object:
    try:
        return getattr(layer, "weight", None)
    except Exception:  # a parametrization that fails to compute
        return None


def _original(layer: nn.Module) -> torch.Tensor:
    """The raw weight under the parametrizations."""
    return layer.parametrizations.weight.original


def _check_block(name: str, shape: tuple[int, ...], block: tuple[int, int]) -> None:
    if len(shape) != 2:
        raise SparsityError(
            f"layer {name!r}: block sparsity {block[0]}x{block[1]} needs a 2-D (Linear) weight, got shape {shape}"
        )
    if shape[0] % block[0] or shape[1] % block[1]:
        raise SparsityError(
            f"layer {name!r}: weight shape {shape} (out, in) is not divisible by block {block[0]}x{block[1]}; "
            f"pick rows dividing {shape[0]} and cols dividing {shape[1]}"
        )
