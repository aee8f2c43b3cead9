"""Fake quantizers: simulated low-bit tensors that train in torch and export as ONNX QDQ.

Every quantizer computes its forward pass with ``torch.fake_quantize_per_*_affine`` over
the *8-bit* range of its signedness. Narrower ranges (weights' symmetric [-127, 127],
any bit-width below 8) are expressed as a clamp to the narrow range first: the result
is numerically identical, and ONNX QuantizeLinear only accepts 8-bit ranges, so the
exported graph is plain QDQ that OpenVINO maps to FakeQuantize and runs on INT8 kernels.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from autocompress.policies import TensorQuant

Role = Literal["weight", "activation"]

_RESERVOIR = 1 << 18  # values kept per quantizer for percentile/MSE range search
_MSE_GRID = torch.linspace(0.3, 1.0, 36)


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    return (x.round() - x).detach() + x


def _scale_gradient(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Identity forward, gradient times ``factor`` (LSQ's step-size gradient scale)."""
    return (x - x * factor).detach() + x * factor


class _BinaryActivation(torch.autograd.Function):
    """NNCF-style scale-threshold binarization: y = s * [x > t * s].

    Backward uses the PACT-like surrogate y ~ clamp(x, 0, s) for x and s, and a box
    around the step for the threshold, so both parameters learn.
    """

    @staticmethod
    def forward(ctx, x, scale, threshold):
        shape = [1] * x.dim()
        shape[1] = -1
        cut = (threshold * scale).view(shape)
        ctx.save_for_backward(x, scale, threshold)
        return (x > cut).to(x.dtype) * scale

    @staticmethod
    def backward(ctx, grad):
        x, scale, threshold = ctx.saved_tensors
        shape = [1] * x.dim()
        shape[1] = -1
        inside = (x > 0) & (x < scale)
        grad_x = grad * inside
        grad_scale = (grad * (x >= scale)).sum().reshape(scale.shape)
        near_step = ((x - (threshold * scale).view(shape)).abs() < scale / 2).to(x.dtype)
        reduce_dims = [d for d in range(x.dim()) if d != 1]
        grad_threshold = -(grad * near_step * scale).sum(dim=reduce_dims)
        return grad_x, grad_scale, grad_threshold


class FakeQuantizer(nn.Module):
    """Simulates quantizing one tensor as ``spec`` says.

    Weight quantizers are attached with ``torch.nn.utils.parametrize`` (they receive the
    float weight); activation quantizers are graph nodes. Activation ranges come from
    calibration: call ``observe()``, run data through, then ``finish_calibration()``.
    """

    def __init__(self, spec: TensorQuant, role: Role, channels: int = 1) -> None:
        """``channels``: output channels of a weight; activations learn theirs from data."""
        super().__init__()
        if not spec.enabled:
            raise ValueError("FakeQuantizer needs bits; leave float tensors unquantized")
        self.spec = spec
        self.role = role
        self.per_channel = spec.per_channel or spec.binarize == "scale_threshold"
        self.channels = channels if (self.per_channel and role == "weight") else 1
        self.bits = spec.bits
        self.observing = False
        self.calibrated = False
        self.qmin, self.qmax = 0, 1  # set by calibration
        self.scale = nn.Parameter(torch.ones(self.channels), requires_grad=spec.learn_scale)
        self.register_buffer("zero_point", torch.zeros(self.channels, dtype=torch.int32))
        if spec.binarize == "scale_threshold":
            self.scale = nn.Parameter(torch.ones(1))
            self.threshold = nn.Parameter(torch.full((1,), 0.5))
        self._low: torch.Tensor | None = None
        self._high: torch.Tensor | None = None
        self._samples: list[torch.Tensor] = []

    def _resize(self, channels: int, device: torch.device) -> None:
        self.channels = channels
        self.scale = nn.Parameter(
            torch.ones(channels if self.spec.binarize is None else 1, device=device),
            requires_grad=self.scale.requires_grad,
        )
        self.zero_point = torch.zeros(channels, dtype=torch.int32, device=device)
        if self.spec.binarize == "scale_threshold":
            self.threshold = nn.Parameter(torch.full((channels,), 0.5, device=device))

    # -- calibration ----------------------------------------------------------
    def observe(self) -> None:
        self.observing, self.calibrated = True, False
        self._low = self._high = None
        self._samples = []

    def finish_calibration(self) -> None:
        if self._low is None:
            raise RuntimeError(
                "activation quantizer saw no data during calibration; is the calibration loader empty?"
            )
        samples = torch.cat(self._samples, dim=1) if self._samples else None
        self._set_range(self._low, self._high, samples)
        self.observing = False
        self._samples = []
        self._low = self._high = None  # not buffers: they would stay on the calibration device

    def init_from_weight(self, weight: torch.Tensor) -> None:
        """Weights are known up front: set the range directly from them."""
        with torch.no_grad():
            flat = (
                weight.detach().reshape(weight.shape[0], -1)
                if self.channels > 1
                else weight.detach().reshape(1, -1)
            )
            self._set_range(flat.min(dim=1).values, flat.max(dim=1).values, flat)

    @torch.no_grad()
    def _observe(self, x: torch.Tensor) -> None:
        if self.per_channel and self.role == "activation" and self._low is None:
            self._resize(x.shape[1], x.device)
        if self.channels > 1:
            per_channel = x.detach().transpose(0, 1).reshape(self.channels, -1)
        else:
            per_channel = x.detach().reshape(1, -1)
        low, high = per_channel.min(dim=1).values, per_channel.max(dim=1).values
        self._low = low if self._low is None else torch.minimum(self._low, low)
        self._high = high if self._high is None else torch.maximum(self._high, high)
        if self.spec.range_init != "minmax" or self.spec.binarize:
            kept = sum(sample.shape[1] for sample in self._samples)
            room = min(per_channel.shape[1], _RESERVOIR // 16, _RESERVOIR - kept)
            if room > 0:
                columns = torch.randperm(per_channel.shape[1], device=per_channel.device)[:room]
                self._samples.append(per_channel[:, columns])

    @torch.no_grad()
    def _set_range(self, low: torch.Tensor, high: torch.Tensor, samples: torch.Tensor | None) -> None:
        """Pick qmin/qmax/scale/zero-point for the observed range; samples are [C, N]."""
        spec = self.spec
        low, high = low.float(), high.float()
        if spec.binarize == "scale_threshold":
            top = torch.quantile(samples.flatten().float(), 0.99) if samples is not None else high.max()
            self.scale.data = top.clamp_min(1e-6).reshape(1)
            self.calibrated = True
            return
        if spec.binarize:  # weights: computed from the weight on every call
            self.calibrated = True
            return
        if spec.range_init == "percentile" and samples is not None:
            q = torch.tensor([1 - spec.percentile / 100, spec.percentile / 100], device=samples.device)
            bounds = torch.quantile(samples.float(), q, dim=1)  # [2, C]
            low, high = torch.maximum(low, bounds[0]), torch.minimum(high, bounds[1])
        unsigned = (not spec.symmetric) or bool((low >= 0).all())
        levels = 2**spec.bits
        if unsigned:
            self.qmin, self.qmax = 0, levels - 1
        elif self.role == "weight":
            self.qmin, self.qmax = -(levels // 2 - 1), levels // 2 - 1  # narrow: no -128 overflow
        else:
            self.qmin, self.qmax = -(levels // 2), levels // 2 - 1
        if spec.range_init == "mse" and samples is not None:
            low, high = self._mse_range(low, high, samples.float())
        scale, zero_point = self._qparams(low, high)
        self.scale.data = scale
        self.zero_point.copy_(zero_point)
        self.calibrated = True

    def _qparams(self, low: torch.Tensor, high: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.spec.symmetric:
            if self.qmin == 0:
                scale = high.clamp_min(0) / self.qmax
            else:
                scale = torch.maximum(low.abs(), high.abs()) / self.qmax
            zero_point = torch.zeros_like(scale, dtype=torch.int32)
        else:
            low, high = low.clamp_max(0), high.clamp_min(0)
            scale = (high - low) / (self.qmax - self.qmin)
            zero_point = (
                (self.qmin - low / scale.clamp_min(1e-12)).round().clamp(self.qmin, self.qmax).to(torch.int32)
            )
        return scale.clamp_min(1e-8), zero_point

    def _mse_range(self, low: torch.Tensor, high: torch.Tensor, samples: torch.Tensor):
        """Shrink the range by the factor (per channel) that minimises quantization MSE."""
        best_err = torch.full_like(low, float("inf"))
        best_low, best_high = low.clone(), high.clone()
        for factor in _MSE_GRID:
            lo, hi = low * factor, high * factor
            scale, zp = self._qparams(lo, hi)
            q = torch.clamp(torch.round(samples / scale[:, None]) + zp[:, None], self.qmin, self.qmax)
            err = ((q - zp[:, None]) * scale[:, None] - samples).pow(2).mean(dim=1)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_low, best_high = torch.where(better, lo, best_low), torch.where(better, hi, best_high)
        return best_low, best_high

    # -- forward --------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing:
            self._observe(x)
            return x
        if self.spec.binarize == "scale_threshold":
            return _BinaryActivation.apply(x, self.scale, self.threshold)
        if self.spec.binarize:
            return self._binarize_weight(x)
        if not self.calibrated:
            raise RuntimeError(
                "quantizer used before calibration; apply policies with autocompress.apply_policy"
            )
        if self.spec.learn_scale and self.training:
            return self._lsq(x)
        return self._fake_quantize(x)

    def _broadcast(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.channels == 1:
            return t
        shape = [1] * x.dim()
        shape[0 if self.role == "weight" else 1] = -1
        return t.view(shape)

    def _fake_quantize(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.scale.detach().abs().clamp_min(1e-8)
        low8, high8 = (0, 255) if self.qmin >= 0 else (-128, 127)
        if (self.qmin, self.qmax) != (low8, high8):
            zp = self.zero_point.float()
            x = torch.clamp(
                x,
                self._broadcast((self.qmin - zp) * scale, x),
                self._broadcast((self.qmax - zp) * scale, x),
            )
        if self.channels > 1:
            axis = 0 if self.role == "weight" else 1
            return torch.fake_quantize_per_channel_affine(x, scale, self.zero_point, axis, low8, high8)
        return torch.fake_quantize_per_tensor_affine(x, scale, self.zero_point, low8, high8)

    def _lsq(self, x: torch.Tensor) -> torch.Tensor:
        """Learned step size (Esser et al.): same values as _fake_quantize, gradients for the scale."""
        per_scale = x.numel() / self.channels
        grad_factor = 1.0 / (per_scale * max(self.qmax, 1)) ** 0.5
        scale = self._broadcast(_scale_gradient(self.scale.abs().clamp_min(1e-8), grad_factor), x)
        zp = self._broadcast(self.zero_point.float(), x)
        q = torch.clamp(_round_ste(x / scale) + zp, self.qmin, self.qmax)
        return (q - zp) * scale

    def _binarize_weight(self, w: torch.Tensor) -> torch.Tensor:
        if self.spec.binarize == "xnor":
            alpha = w.abs().reshape(w.shape[0], -1).mean(dim=1).view([-1] + [1] * (w.dim() - 1))
        else:  # dorefa
            alpha = w.abs().mean()
        binary = torch.where(w >= 0, torch.ones_like(w), -torch.ones_like(w)) * alpha
        return (binary - w).detach() + w  # straight-through estimator

    # -- introspection --------------------------------------------------------
    def extra_repr(self) -> str:
        return f"{self.role}, {self.spec.short()}, range=[{self.qmin}, {self.qmax}]"
