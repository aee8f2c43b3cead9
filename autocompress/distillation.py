"""Knowledge distillation into smaller, searchable student architectures.

Pieces, each usable on its own:

- :func:`kd_loss`: Hinton et al.'s soft-target loss, ``T^2 * KL(p_teacher^T || p_student^T)``.
- :class:`DistillationLoss`: the ``(loss_fn, extra_loss)`` pair for
  :func:`autocompress.training.train` from a teacher and a :class:`autocompress.policies.Distillation`:
  ``alpha * KD + (1 - alpha) * task + hint_weight * hint``. The hint (FitNets) term is
  the MSE between teacher features and student features mapped by learned 1x1 convs;
  features are read with forward hooks. The projections must be trained with the
  student, and ``train`` optimizes ``model.parameters()``, so train
  :meth:`DistillationLoss.trainable` (a thin module holding the student *and* the
  projections, whose forward is the student's) and keep the bare student afterwards.
- Student families: ``register_student_family(name, builder)``; :func:`build_student`
  builds a :class:`autocompress.policies.Student` for a teacher and checks its output shape.
  Built in: ``"resnet"`` (zoo ResNet20 teachers; per-stage ``width`` relative to the
  teacher, ``blocks`` per stage, block ``kernel_size``) and ``"mnist_cnn"`` (zoo MnistCNN
  teachers; ``width`` relative to the teacher).
- :func:`init_from_teacher`: a warm start. The teacher is cut to the student's depth
  (first blocks of each stage), thinned to the student's widths by
  :func:`autocompress.pruning.prune` (L1, so residual-coupled channels are chosen
  consistently), then copied where shapes allow (kernels centre-cropped or zero-padded).
- :class:`Ensemble`: averaged logits of several students, one traceable/exportable graph.
- :func:`distill`: ``train`` with the distillation loss, in one call.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from autocompress.devices import Accelerator, placed, to_device
from autocompress.models import RESNET_KERNEL_SIZES, BasicBlock, MnistCNN, MobileNetCat, ResNet20
from autocompress.policies import Distillation, PolicyError, Student
from autocompress.training import TrainFn, train

__all__ = [
    "kd_loss",
    "DistillationLoss",
    "StudentBuilder",
    "register_student_family",
    "student_families",
    "build_student",
    "init_from_teacher",
    "recalibrate_batchnorm",
    "Ensemble",
    "distill",
]

StudentBuilder = Callable[[nn.Module, dict[str, Any]], nn.Module]
_RESNET_HINTS = ("layer1", "layer2", "layer3")
MAX_WIDTH = 4.0


# -- losses ---------------------------------------------------------------------------


def _check_temperature(temperature: float) -> float:
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, (int, float))
        or not math.isfinite(temperature)
        or temperature <= 0
    ):
        raise ValueError(f"distillation temperature must be a finite number > 0, got {temperature!r}")
    return float(temperature)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton KD: ``T^2 * KL(softmax(teacher/T) || softmax(student/T))``, mean over the batch.

    The T^2 factor keeps the soft-target gradients on the scale of the hard-label loss
    as T changes. The teacher logits are used as given (detach them if needed). Computed in
    float32 (logits from an autocast forward may be bfloat16 or float16).
    """
    t = _check_temperature(temperature)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"kd_loss: student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ in shape"
        )
    log_p_student = F.log_softmax(student_logits.float() / t, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / t, dim=1)
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True) * (t * t)


def _check_config(config: Distillation) -> Distillation:
    """Re-check the numbers: a Distillation built with model_construct/copy skips pydantic."""
    if not isinstance(config, Distillation):
        raise TypeError(
            f"distillation must be an autocompress.policies.Distillation, got {type(config).__name__}"
        )
    _check_temperature(config.temperature)
    if not 0.0 <= config.alpha <= 1.0:
        raise ValueError(f"distillation alpha must be in [0, 1], got {config.alpha!r}")
    if not config.hint_weight >= 0.0:
        raise ValueError(f"distillation hint_weight must be >= 0, got {config.hint_weight!r}")
    return config


class _WithProjections(nn.Module):
    """The student plus the hint projections, so ``train`` optimizes both; forward = student."""

    def __init__(self, student: nn.Module, projections: nn.ModuleDict) -> None:
        super().__init__()
        self.student = student
        self.projections = projections

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.student(x)


class DistillationLoss(nn.Module):
    """``loss_fn`` and ``extra_loss`` for :func:`autocompress.training.train`.

    ``loss_fn(outputs, targets) = (1 - alpha) * task_loss`` (cross-entropy by default);
    ``extra_loss(inputs, outputs) = alpha * kd_loss(outputs, teacher(inputs), T)
    + hint_weight * hint``. The teacher runs in eval mode under ``no_grad`` on the same
    inputs; it is not a submodule (its weights are never trained or returned by
    ``parameters()``).

    Hints (only when ``hint_weight > 0``): ``hint_layers`` maps student module names to
    teacher module names (default: layer1/layer2/layer3 when both models have them, as
    the zoo ResNets do). Each pair gets a learned 1x1 conv (a Linear for 2-D features)
    from student to teacher channels; if spatial sizes differ both features are
    average-pooled to the smaller one; the hint is the MSE averaged over pairs. Building
    the projections needs ``example_input`` (one batch) to see the feature shapes. The
    projections are this module's ``parameters()``; train :meth:`trainable` so the
    optimizer sees them, then keep the bare ``student``. Call :meth:`close` (or use
    ``with``) to remove the hooks.

    ``last`` holds the latest {"task", "kd", "hint"} values (floats) for logging.
    """

    def __init__(
        self,
        teacher: nn.Module,
        distillation: Distillation = Distillation(),
        *,
        student: nn.Module | None = None,
        hint_layers: Mapping[str, str] | None = None,
        task_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        example_input: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.config = _check_config(distillation)
        self.__dict__["teacher"] = teacher  # not registered: not trained, not in parameters()
        self.__dict__["student"] = student
        self.task_loss = task_loss or nn.CrossEntropyLoss()
        self.projections = nn.ModuleDict()
        self.pairs: dict[str, str] = {}
        self.last: dict[str, float] = {}
        self._student_features: dict[str, torch.Tensor] = {}
        self._teacher_features: dict[str, torch.Tensor] = {}
        self._handles: list[Any] = []
        if self.config.hint_weight > 0 or hint_layers:
            self._setup_hints(hint_layers, example_input)

    # -- hints ------------------------------------------------------------------------
    def _setup_hints(self, hint_layers: Mapping[str, str] | None, example_input: torch.Tensor | None) -> None:
        student, teacher = self.student, self.teacher
        if student is None:
            raise ValueError(
                "hint (feature) distillation needs the student: DistillationLoss(teacher, config, student=...)"
            )
        if hint_layers is None:
            s_names, t_names = dict(student.named_modules()), dict(teacher.named_modules())
            if not all(n in s_names and n in t_names for n in _RESNET_HINTS):
                raise ValueError(
                    f"hint_weight > 0 needs hint_layers={{student_module: teacher_module}} for "
                    f"{type(student).__name__} -> {type(teacher).__name__} (the default pairs "
                    f"{', '.join(_RESNET_HINTS)} exist only in resnet-style models)"
                )
            hint_layers = {n: n for n in _RESNET_HINTS}
        self.pairs = dict(hint_layers)
        if not self.pairs:
            raise ValueError("hint_layers is empty; give at least one {student_module: teacher_module} pair")
        for side, model, names in (
            ("student", student, self.pairs.keys()),
            ("teacher", teacher, self.pairs.values()),
        ):
            modules = dict(model.named_modules())
            for name in names:
                if name not in modules or name == "":
                    shown = ", ".join(n for n in modules if n)
                    raise ValueError(
                        f"hint layer {name!r} is not a module of the {side} ({type(model).__name__}); modules: {shown}"
                    )
        if example_input is None:
            raise ValueError(
                "hint distillation needs example_input (a batch of inputs) to size the 1x1 projections"
            )

        s_modules, t_modules = dict(student.named_modules()), dict(teacher.named_modules())
        for s_name, t_name in self.pairs.items():
            self._handles.append(
                s_modules[s_name].register_forward_hook(self._recorder(self._student_features, s_name))
            )
            self._handles.append(
                t_modules[t_name].register_forward_hook(self._recorder(self._teacher_features, t_name))
            )
        with torch.no_grad():
            _run_eval(student, example_input)
            _run_eval(teacher, example_input)
        for s_name, t_name in self.pairs.items():
            s_feat, t_feat = self._student_features.get(s_name), self._teacher_features.get(t_name)
            if s_feat is None or t_feat is None:
                side, name = ("student", s_name) if s_feat is None else ("teacher", t_name)
                raise ValueError(
                    f"hint layer {name!r} of the {side} is never called in forward (a container of a traced model?)"
                )
            if s_feat.dim() not in (2, 4) or s_feat.dim() != t_feat.dim():
                raise ValueError(
                    f"hint pair {s_name!r} -> {t_name!r}: features must both be (N, C) or (N, C, H, W), "
                    f"got {tuple(s_feat.shape)} and {tuple(t_feat.shape)}"
                )
            cs, ct = s_feat.shape[1], t_feat.shape[1]
            proj = nn.Conv2d(cs, ct, 1) if s_feat.dim() == 4 else nn.Linear(cs, ct)
            self.projections[_key(s_name)] = proj
        self._clear()

    @staticmethod
    def _recorder(store: dict[str, torch.Tensor], name: str):
        def hook(_module, _inputs, output):
            store[name] = output

        return hook

    def _clear(self) -> None:
        self._student_features.clear()
        self._teacher_features.clear()

    def hint_loss(self) -> torch.Tensor:
        """MSE between projected student features and teacher features of the last forward."""
        losses = []
        for s_name, t_name in self.pairs.items():
            if s_name not in self._student_features or t_name not in self._teacher_features:
                raise RuntimeError(
                    f"hint pair {s_name!r} -> {t_name!r}: no features recorded; run student and teacher first"
                )
            s_feat = self.projections[_key(s_name)](self._student_features[s_name])
            t_feat = self._teacher_features[t_name]
            if s_feat.dim() == 4 and s_feat.shape[2:] != t_feat.shape[2:]:
                size = (min(s_feat.shape[2], t_feat.shape[2]), min(s_feat.shape[3], t_feat.shape[3]))
                s_feat, t_feat = F.adaptive_avg_pool2d(s_feat, size), F.adaptive_avg_pool2d(t_feat, size)
            losses.append(F.mse_loss(s_feat, t_feat))
        return torch.stack(losses).mean()

    # -- the two callables for train() -------------------------------------------------
    def loss_fn(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        task = self.task_loss(outputs, targets)
        self.last["task"] = float(task.detach())
        return (1.0 - self.config.alpha) * task

    def extra_loss(self, inputs: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
        teacher = self.teacher
        with torch.no_grad():
            teacher_logits = _run_eval(teacher, inputs)
        kd = kd_loss(outputs, teacher_logits.detach(), self.config.temperature)
        self.last["kd"] = float(kd.detach())
        total = self.config.alpha * kd
        if self.pairs and self.config.hint_weight > 0:
            hint = self.hint_loss()
            self.last["hint"] = float(hint.detach())
            total = total + self.config.hint_weight * hint
        self._clear()
        return total

    def forward(self, inputs: torch.Tensor, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The whole loss for one batch (the student must have just run on ``inputs``)."""
        return self.loss_fn(outputs, targets) + self.extra_loss(inputs, outputs)

    def train_kwargs(self) -> dict[str, Callable]:
        """``{"loss_fn": ..., "extra_loss": ...}`` to splat into ``training.train``."""
        return {"loss_fn": self.loss_fn, "extra_loss": self.extra_loss}

    def trainable(self) -> nn.Module:
        """The module to pass to ``train``: student + projections, forward = the student's."""
        if self.student is None:
            raise ValueError("DistillationLoss was built without student=...; train the student itself")
        return _WithProjections(self.student, self.projections)

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._clear()

    def __enter__(self) -> DistillationLoss:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _key(module_name: str) -> str:
    return module_name.replace(".", "__")  # ModuleDict keys cannot contain dots


def _run_eval(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    was_training = model.training
    model.eval()
    try:
        return model(inputs)
    finally:
        model.train(was_training)


# -- student families -----------------------------------------------------------------

_FAMILIES: dict[str, StudentBuilder] = {}


def register_student_family(name: str, builder: StudentBuilder, *, replace: bool = False) -> StudentBuilder:
    """Register ``builder(teacher, params) -> nn.Module`` as student family ``name``.

    The builder should raise ``PolicyError``/``ValueError`` naming the param for bad
    params, and for teachers it cannot derive a student from. Returns ``builder``.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"student family name must be a non-empty string, got {name!r}")
    if not callable(builder):
        raise TypeError(
            f"student family {name!r}: builder must be callable(teacher, params), got {type(builder).__name__}"
        )
    if name in _FAMILIES and not replace and _FAMILIES[name] is not builder:
        raise ValueError(f"student family {name!r} is already registered; pass replace=True to override it")
    _FAMILIES[name] = builder
    return builder


def student_families() -> list[str]:
    """Names of the registered student families, sorted."""
    return sorted(_FAMILIES)


def build_student(
    teacher: nn.Module, student: Student, *, example_input: torch.Tensor | None = None
) -> nn.Module:
    """A freshly initialised student for ``teacher`` as ``student`` (a autocompress.policies.Student) says.

    Checks that the student's output shape equals the teacher's on ``example_input``
    (default: one 32x32 image with the teacher's input channels). Does not copy weights:
    call :func:`init_from_teacher` when ``student.init_from_teacher`` is set.
    """
    if not isinstance(student, Student):
        raise TypeError(f"student must be an autocompress.policies.Student, got {type(student).__name__}")
    if student.family not in _FAMILIES:
        raise PolicyError(
            f"unknown student family {student.family!r}; registered: {', '.join(student_families()) or '(none)'} "
            "(add one with autocompress.distillation.register_student_family)"
        )
    model = _FAMILIES[student.family](teacher, dict(student.params))
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"student family {student.family!r} returned {type(model).__name__}, not an nn.Module"
        )
    example = example_input if example_input is not None else _example_input(teacher)
    with torch.no_grad():
        try:
            teacher_out = _run_eval(teacher, example)
        except Exception as error:
            raise ValueError(
                f"the teacher fails on the example input of shape {tuple(example.shape)} "
                f"({type(error).__name__}: {error}); pass example_input=..."
            ) from error
        try:
            student_out = _run_eval(model, example)
        except Exception as error:
            raise PolicyError(
                f"student family {student.family!r} built a {type(model).__name__} that fails on the teacher's "
                f"example input of shape {tuple(example.shape)} ({type(error).__name__}: {error})"
            ) from error
    if tuple(student_out.shape) != tuple(teacher_out.shape):
        raise PolicyError(
            f"student family {student.family!r} built a {type(model).__name__} whose output shape "
            f"{tuple(student_out.shape)} differs from the teacher's output shape {tuple(teacher_out.shape)} "
            f"on an input of shape {tuple(example.shape)}"
        )
    return model


def _example_input(teacher: nn.Module) -> torch.Tensor:
    for module in teacher.modules():
        if isinstance(module, nn.Conv2d):
            return torch.zeros(1, module.in_channels, 32, 32)
        if isinstance(module, nn.Linear):
            return torch.zeros(1, module.in_features)
    raise ValueError(f"cannot guess an input for {type(teacher).__name__}; pass example_input=...")


def _check_params(family: str, params: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    unknown = [key for key in params if key not in allowed]
    if unknown:
        raise PolicyError(
            f"student family {family!r}: unknown param {unknown[0]!r}; allowed params: {', '.join(allowed)}"
        )


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_teacher(family: str, teacher: nn.Module, needed: type) -> None:
    if not isinstance(teacher, needed):
        raise PolicyError(
            f"student family {family!r} needs an {needed.__module__}.{needed.__name__} teacher, "
            f"got {type(teacher).__name__}; registered families: {', '.join(student_families())}"
        )


def _widths(family: str, value: Any, stages: int) -> tuple[float, ...]:
    allowed = f"a number in (0, {MAX_WIDTH:g}]" + (f" or {stages} per-stage numbers" if stages > 1 else "")
    if _number(value):
        widths = (float(value),) * stages
    elif (
        stages > 1 and isinstance(value, (list, tuple)) and len(value) == stages and all(map(_number, value))
    ):
        widths = tuple(float(v) for v in value)
    else:
        raise PolicyError(f"student family {family!r}: param 'width' must be {allowed}, got {value!r}")
    if not all(0 < w <= MAX_WIDTH for w in widths):
        raise PolicyError(
            f"student family {family!r}: param 'width' must be {allowed} (each > 0 and <= {MAX_WIDTH:g}), got {value!r}"
        )
    return widths


def _resnet_stage_channels(model: ResNet20) -> tuple[int, int, int]:
    return tuple(stage[0].conv2.out_channels for stage in (model.layer1, model.layer2, model.layer3))  # type: ignore[return-value]


def _resnet_student(teacher: nn.Module, params: dict[str, Any]) -> nn.Module:
    """Params relative to the teacher: width (x its per-stage channels), blocks, kernel_size."""
    family = "resnet"
    _check_teacher(family, teacher, ResNet20)
    _check_params(family, params, ("width", "blocks", "kernel_size"))
    widths = _widths(family, params.get("width", 1.0), 3)
    blocks = params.get("blocks", [len(teacher.layer1), len(teacher.layer2), len(teacher.layer3)])
    if isinstance(blocks, int) and not isinstance(blocks, bool):
        blocks = [blocks] * 3  # one int: that many blocks in every stage
    if not (
        isinstance(blocks, (list, tuple))
        and len(blocks) == 3
        and all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in blocks)
    ):
        raise PolicyError(
            f"student family {family!r}: param 'blocks' must be an int >= 1 or 3 ints >= 1 (blocks per stage), "
            f"got {params['blocks']!r}"
        )
    kernel_size = params.get("kernel_size", teacher.layer1[0].conv1.kernel_size[0])
    if isinstance(kernel_size, bool) or kernel_size not in RESNET_KERNEL_SIZES:
        raise PolicyError(
            f"student family {family!r}: param 'kernel_size' must be one of "
            f"{', '.join(map(str, RESNET_KERNEL_SIZES))}, got {kernel_size!r}"
        )
    channels = [max(1, round(c * w)) for c, w in zip(_resnet_stage_channels(teacher), widths)]
    # ResNet20 takes multipliers of 16/32/64; these give exactly the channels above.
    absolute = (channels[0] / 16, channels[1] / 32, channels[2] / 64)
    return ResNet20(
        in_channels=teacher.conv1.in_channels,
        num_classes=teacher.fc.out_features,
        width=absolute,
        blocks_per_stage=tuple(blocks),
        kernel_size=int(kernel_size),
    )


def _mnist_cnn_student(teacher: nn.Module, params: dict[str, Any]) -> nn.Module:
    """Param: width (x the teacher's channels)."""
    family = "mnist_cnn"
    _check_teacher(family, teacher, MnistCNN)
    _check_params(family, params, ("width",))
    (width,) = _widths(family, params.get("width", 1.0), 1)
    return MnistCNN(
        in_channels=teacher.conv1.in_channels,
        num_classes=teacher.fc.out_features,
        width=width * teacher.conv2.out_channels / 64,
    )


def _mobilenet_cat_student(teacher: nn.Module, params: dict[str, Any]) -> nn.Module:
    """Params: width (x the teacher's channels), blocks (inverted residual blocks kept, 1-3).

    Depth is the lever on this net: at about 0.1 ms it is bound by the cost per OpenVINO
    node, so INT8 and pruning barely move it (benchmarks/depthwise.py: INT8 1.05-1.16x
    FP32), while the student without its first block ran INT8 at 1.64x within 1 pt after
    the final fine-tune."""
    family = "mobilenet_cat"
    _check_teacher(family, teacher, MobileNetCat)
    _check_params(family, params, ("width", "blocks"))
    (width,) = _widths(family, params.get("width", 1.0), 1)
    blocks = params.get(
        "blocks", 1 + sum(not isinstance(b, nn.Identity) for b in (teacher.block1, teacher.block3))
    )
    if isinstance(blocks, bool) or blocks not in (1, 2, 3):
        raise PolicyError(
            f"student family {family!r}: param 'blocks' must be 1, 2 or 3 (inverted residual blocks kept), "
            f"got {blocks!r}"
        )
    return MobileNetCat(
        in_channels=teacher.conv1.in_channels,
        num_classes=teacher.fc.out_features,
        width=width * teacher.conv1.out_channels / 16,
        blocks=blocks,
    )


register_student_family("resnet", _resnet_student)
register_student_family("mnist_cnn", _mnist_cnn_student)
register_student_family("mobilenet_cat", _mobilenet_cat_student)


# -- warm start -----------------------------------------------------------------------


def init_from_teacher(
    student: nn.Module,
    teacher: nn.Module,
    example_input: torch.Tensor,
    *,
    data: Iterable | None = None,
    bn_batches: int = 10,
    device: str | torch.device = "auto",
) -> dict[str, Any]:
    """Copy the teacher's weights into ``student`` (in place) where shapes allow.

    1. Depth (resnet-style models, stages ``layer1..3`` of BasicBlocks): each stage of
       the teacher is cut to its first k blocks (the first holds the downsample). A
       stage where the student has more blocks than the teacher gets the extra blocks
       as identities (last BatchNorm's gamma and beta zeroed: zero-init residual).
    2. Width: every channel group (residual-coupled layers share one) whose leading
       layer is narrower in the student is thinned by ``autocompress.pruning.prune`` at
       ratio ``1 - student/teacher`` with the L1 criterion: the most important filters
       are kept, the same ones in every coupled layer, consumers lose matching inputs.
    3. Copy by name: every parameter and BatchNorm buffer of the same name and rank;
       channel dims take the leading overlap (a wider student keeps its random extra
       channels), kernels are centre-cropped (smaller kernel) or zero-padded (larger).
    4. With ``data`` ((inputs, targets) batches): BatchNorm running statistics are
       re-estimated on up to ``bn_batches`` batches (no gradient step). Removing
       channels shifts the inputs of every later BatchNorm, so the copied statistics are
       stale; on digits this takes a half-width ResNet student from chance (10%) to 24%
       before any training, and a student with half the last stage from 29% to 88%.
       This runs on ``device`` (see autocompress.devices); the rest on the CPU.

    Returns a report: ``copied``/``total`` parameter elements, ``fraction``, per tensor
    ``tensors`` ("full", "partial", "kernel-cropped", "kernel-padded" or "random"), the
    ``pruned`` groups ({group: (teacher channels, kept)}), ``identity_blocks`` and
    ``selection`` ("l1" when prune picked the channels, or why not) and
    ``bn_recalibrated`` (batches used, 0 without ``data``).
    """
    source = copy.deepcopy(teacher).eval()
    identity_blocks: list[str] = []
    if _is_resnet_like(source) and _is_resnet_like(student):
        for stage_name in _RESNET_HINTS:
            t_stage, s_stage = getattr(source, stage_name), getattr(student, stage_name)
            if len(s_stage) < len(t_stage):
                setattr(source, stage_name, nn.Sequential(*list(t_stage)[: len(s_stage)]))
            identity_blocks += [f"{stage_name}.{i}" for i in range(len(t_stage), len(s_stage))]

    pruned: dict[str, tuple[int, int]] = {}
    selection = "l1"
    try:
        from autocompress.pruning import prune, pruning_groups

        s_modules = dict(student.named_modules())
        ratios: dict[str, tuple[float, str]] = {}
        for group in pruning_groups(source, example_input):
            target = s_modules.get(group.name)
            keep = getattr(target, "out_channels", getattr(target, "out_features", None))
            if not group.prunable or keep is None or keep >= group.channels:
                continue
            ratios[group.name] = ((group.channels - keep) / group.channels, "l1")
            pruned[group.name] = (group.channels, keep)
        if ratios:
            source = prune(source, ratios, example_input)
    except Exception as error:  # untraceable or unsupported model: copy the leading channels
        pruned = {}
        selection = f"leading channels (pruning failed: {type(error).__name__}: {error})"

    source_state = source.state_dict()
    param_names = {name for name, _ in student.named_parameters()}
    copied = total = 0
    tensors: dict[str, str] = {}
    with torch.no_grad():
        for name, dst in student.state_dict().items():
            src = source_state.get(name)
            how = "random"
            if src is not None and src.dim() == dst.dim() and src.dtype == dst.dtype:
                count, how = _copy_overlap(dst, src)
                if name in param_names:
                    copied += count
            if name in param_names:
                total += dst.numel()
                tensors[name] = how
        for block_name in identity_blocks:
            block = student.get_submodule(block_name)
            block.bn2.weight.zero_()
            block.bn2.bias.zero_()
    recalibrated = recalibrate_batchnorm(student, data, bn_batches, device=device) if data is not None else 0
    return {
        "copied": copied,
        "total": total,
        "fraction": copied / total if total else 0.0,
        "tensors": tensors,
        "pruned": pruned,
        "identity_blocks": identity_blocks,
        "selection": selection,
        "bn_recalibrated": recalibrated,
    }


def recalibrate_batchnorm(
    model: nn.Module, data: Iterable, batches: int = 10, *, device: str | torch.device = "auto"
) -> int:
    """Re-estimate every BatchNorm's running mean/var on ``batches`` batches of ``data``.

    Forward passes only, under no_grad, with the rest of the model in eval mode; the
    statistics are the plain average over the batches. They run on ``device`` (see
    autocompress.devices; the model is moved there and back). Returns the batches used.
    """
    if batches < 1:
        raise ValueError(f"bn_batches must be >= 1, got {batches}")
    norms = [
        m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]
    if not norms:
        return 0
    target = Accelerator(device).torch_device
    was_training = model.training
    momenta = [m.momentum for m in norms]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches seen
        m.train()
    used = 0
    try:
        with placed(target, model), torch.no_grad():
            for batch in data:
                if used >= batches:
                    break
                model(to_device(batch[0] if isinstance(batch, (tuple, list)) else batch, target))
                used += 1
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.train(was_training)
    if used == 0:
        raise ValueError("recalibrate_batchnorm: the data loader yielded no batch")
    return used


def _is_resnet_like(model: nn.Module) -> bool:
    return all(
        isinstance(getattr(model, n, None), nn.Sequential)
        and all(isinstance(b, BasicBlock) for b in getattr(model, n))
        for n in _RESNET_HINTS
    )


def _copy_overlap(dst: torch.Tensor, src: torch.Tensor) -> tuple[int, str]:
    """Copy ``src`` into ``dst`` in place: leading overlap on dims 0-1, centre on the rest.

    Returns (elements copied, how). Spatial dims (>= 2) of a conv kernel are centre
    cropped when ``dst`` is smaller and zero-padded around the centre when larger.
    """
    if dst.dim() == 0:
        dst.copy_(src)
        return 1, "full"
    dst_index, src_index, padded, cropped = [], [], False, False
    for dim, (d, s) in enumerate(zip(dst.shape, src.shape)):
        if dim < 2:
            n = min(d, s)
            dst_index.append(slice(0, n))
            src_index.append(slice(0, n))
        elif d <= s:
            offset = (s - d) // 2
            dst_index.append(slice(0, d))
            src_index.append(slice(offset, offset + d))
            cropped |= d < s
        else:
            offset = (d - s) // 2
            dst_index.append(slice(offset, offset + s))
            src_index.append(slice(0, s))
            padded = True
    if padded:  # zero the border of the copied filters: the larger kernel computes the same
        dst[tuple(dst_index[:2])] = 0
    dst[tuple(dst_index)] = src[tuple(src_index)]
    count = dst[tuple(dst_index)].numel()
    if padded:
        how = "kernel-padded"
    elif cropped:
        how = "kernel-cropped"
    else:
        how = "full" if count == dst.numel() else "partial"
    return count, how


# -- ensembles and the one-call helper ------------------------------------------------


class Ensemble(nn.Module):
    """Averages the logits of its members: one graph (traces with torch.fx, exports to ONNX)."""

    def __init__(self, members: Iterable[nn.Module]) -> None:
        super().__init__()
        members = list(members)
        if not members:
            raise ValueError("Ensemble needs at least one member")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = self.members[0](x)
        for member in self.members[1:]:  # unrolled at trace time
            total = total + member(x)
        return total / len(self.members)


def distill(
    teacher: nn.Module,
    student: nn.Module,
    loader: Iterable,
    *,
    distillation: Distillation = Distillation(),
    epochs: float = 1,
    lr: float = 1e-3,
    optimizer: str = "adam",
    hint_layers: Mapping[str, str] | None = None,
    seed: int | None = 0,
    task_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    max_steps: int | None = None,
    weight_decay: float = 0.0,
    train_fn: TrainFn | None = None,
    device: str | torch.device = "auto",
    autocast: str | None = None,
) -> dict[str, float | int]:
    """Train ``student`` in place on ``loader`` with the distillation loss; train's stats
    (``train_fn``: the user's loop, ``device`` and ``autocast``, as in
    autocompress.training.train).

    The hint projections (when ``distillation.hint_weight > 0``) are trained alongside
    and discarded afterwards; the teacher is never modified (it runs on ``device`` during
    the training and is moved back afterwards, as the student is).
    """
    config = _check_config(distillation)
    example = None
    if config.hint_weight > 0 or hint_layers:
        batch = next(iter(loader))
        example = batch[0] if isinstance(batch, (tuple, list)) else batch
    if seed is not None:
        torch.manual_seed(seed)  # the projections' initialisation
    loss = DistillationLoss(
        teacher, config, student=student, hint_layers=hint_layers, task_loss=task_loss, example_input=example
    )
    try:
        return train(
            loss.trainable(),
            loader,
            epochs=epochs,
            lr=lr,
            optimizer=optimizer,
            weight_decay=weight_decay,
            max_steps=max_steps,
            seed=seed,
            train_fn=train_fn,
            stage="distillation",
            device=device,
            autocast=autocast,
            companions=[teacher],
            **loss.train_kwargs(),
        )
    finally:
        loss.close()
