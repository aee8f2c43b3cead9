"""Where and how latency is measured: plain, JSON-friendly settings (no torch, no openvino import)."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields
from typing import Any

PRECISION_HINTS = (None, "f32", "bf16", "f16")
# OpenVINO's devices (names are case-sensitive): a hardware one, with an index where there
# are several ("GPU.1"), or a virtual one over a list of them ("AUTO:GPU,CPU", "BATCH:GPU(4)").
HARDWARE_DEVICES = ("CPU", "GPU", "NPU")
VIRTUAL_DEVICES = ("AUTO", "MULTI", "HETERO", "BATCH")
_HARDWARE = re.compile(rf"(?:{'|'.join(HARDWARE_DEVICES)})(?:\.\d+)?")
# In a virtual device's list: "-CPU" (all but it, AUTO), "GPU(4)" (a batch size, BATCH).
_LISTED = re.compile(rf"-?{_HARDWARE.pattern}(?:\(\d+\))?")
INT32_MAX = 2**31 - 1  # OpenVINO's integer properties (INFERENCE_NUM_THREADS, NUM_STREAMS) are int32


def _check_int(
    cls_name: str, name: str, value: Any, minimum: int, allow_none: bool = False, maximum: int | None = None
) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        allowed = f"an int >= {minimum}" + (" or None" if allow_none else "")
        raise ValueError(f"{cls_name}.{name} must be {allowed}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{cls_name}.{name} must be an int from {minimum} to {maximum}, got {value!r}")


def is_device_name(name: str) -> bool:
    """Whether ``name`` is an OpenVINO device name: CPU, GPU, NPU (GPU.1), or AUTO, MULTI,
    HETERO or BATCH, alone or over a list of those (AUTO:GPU,CPU; BATCH:GPU(4))."""
    head, colon, rest = name.partition(":")
    if not colon:
        return bool(_HARDWARE.fullmatch(name)) or name in VIRTUAL_DEVICES
    return head in VIRTUAL_DEVICES and all(_LISTED.fullmatch(part) for part in rest.split(","))


def _from_dict(cls, d: dict):
    if not isinstance(d, dict):
        raise ValueError(f"{cls.__name__}.from_dict expects a dict, got {type(d).__name__}")
    names = [f.name for f in fields(cls)]
    unknown = sorted(set(d) - set(names))
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown field(s) {unknown}; allowed fields: {names}")
    return cls(**d)


@dataclass(frozen=True)
class Target:
    """Where latency is measured: an OpenVINO device and how it is driven."""

    device: str = "CPU"
    threads: int | None = None  # INFERENCE_NUM_THREADS; None = runtime default
    batch: int = 1
    # INFERENCE_PRECISION_HINT: "f32", "bf16", "f16" or None (runtime default;
    # this CPU runs FP32 IR in bf16 by default, and maps "f16" to bf16 as it has no FP16 compute).
    precision_hint: str | None = None
    num_streams: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.device, str) or not is_device_name(self.device):
            raise ValueError(
                f"Target.device must be an OpenVINO device name: {', '.join(HARDWARE_DEVICES)} (GPU.1 for a second "
                f"GPU), or {', '.join(VIRTUAL_DEVICES)} over them (AUTO:GPU,CPU); got {self.device!r}"
            )
        _check_int("Target", "threads", self.threads, 1, allow_none=True, maximum=INT32_MAX)
        _check_int("Target", "batch", self.batch, 1)
        _check_int("Target", "num_streams", self.num_streams, 1, maximum=INT32_MAX)
        if self.precision_hint not in PRECISION_HINTS:
            raise ValueError(
                f"Target.precision_hint must be one of {list(PRECISION_HINTS)}, got {self.precision_hint!r}"
            )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Target:
        return _from_dict(cls, d)

    def ov_config(self) -> dict[str, str]:
        cfg = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": str(self.num_streams)}
        if self.threads is not None:
            cfg["INFERENCE_NUM_THREADS"] = str(self.threads)
        if self.precision_hint is not None:
            cfg["INFERENCE_PRECISION_HINT"] = self.precision_hint
        return cfg


@dataclass(frozen=True)
class LatencyConfig:
    """Measurement protocol: warm-up, then `rounds` alternating rounds over all models."""

    warmup_iterations: int = 20
    rounds: int = 5
    # A round runs at least this many inferences and at least this long: the time decides for
    # models under 12 ms; more iterations would only make a large model slow to time.
    min_iterations: int = 20
    min_seconds: float = 0.25
    seed: int = 0  # for the random input when none is given

    def __post_init__(self) -> None:
        _check_int("LatencyConfig", "warmup_iterations", self.warmup_iterations, 0)
        _check_int("LatencyConfig", "rounds", self.rounds, 1)
        _check_int("LatencyConfig", "min_iterations", self.min_iterations, 1)
        _check_int("LatencyConfig", "seed", self.seed, 0)
        if (
            isinstance(self.min_seconds, bool)
            or not isinstance(self.min_seconds, (int, float))
            or not 0 <= self.min_seconds < math.inf  # NaN compares False: refused too
        ):
            raise ValueError(
                f"LatencyConfig.min_seconds must be a finite number >= 0, got {self.min_seconds!r}"
            )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> LatencyConfig:
        return _from_dict(cls, d)
