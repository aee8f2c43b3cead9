"""Depthwise benchmark: what each lever buys on the zoo's depthwise/concat net, on this target.

The net (MobileNetCat: stem, three inverted-residual blocks, a concat block, ~10k
parameters) runs in about 0.1 ms at FP32 on MNIST-5k here, so its time is mostly the cost
per OpenVINO node, not arithmetic. In ONE run: uniform INT8, uniform pruning (float and
INT8), and students distilled from it (shallower: inverted-residual blocks removed, and
narrower), each with the search's per-trial fine-tune or the final one (--finetune final);
then the test drop (paired with FP32, 90% bounds) and latency, all IRs timed side by side in
alternating rounds. The students' family is defined here only (a width multiplier and
blocks replaced by identities), not registered by the library: it answers whether a
student family would be worth searching on this net.

    python benchmarks/depthwise.py
    python benchmarks/depthwise.py --finetune final --rounds 9
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

from torch import nn

from autocompress import LatencyConfig, Target, apply_policy, export
from autocompress.data import load_dataset, make_loaders
from autocompress.distillation import register_student_family
from autocompress.evaluators.runtime import Dataset
from autocompress.policies import LayerPolicy, LayerQuant, Policy, Pruning, Student
from autocompress.search.objectives import AccuracyConstraint
from autocompress.search.settings import FINAL_FINETUNE, SEARCH_FINETUNE
from autocompress.search.trial import compare_irs
from autocompress.zoo import MobileNetCat, pretrained

FAMILY = "depthwise_benchmark"
RESIDUAL_BLOCKS = ("block1", "block3")  # shape-preserving: replaceable by identities


def _student(teacher: nn.Module, params: dict) -> nn.Module:
    """MobileNetCat at ``width`` of the zoo's channels, ``drop``: residual blocks replaced by identities."""
    drop = params.get("drop", ())
    if not set(drop) <= set(RESIDUAL_BLOCKS):
        raise ValueError(f"drop must name blocks among {RESIDUAL_BLOCKS}, got {drop!r}")
    student = MobileNetCat(
        in_channels=teacher.conv1.in_channels,
        num_classes=teacher.fc.out_features,
        width=params.get("width", 1.0),
    )
    for name in drop:
        setattr(student, name, nn.Identity())  # same names elsewhere: the teacher's weights copy over
    return student


VARIANTS = {  # label -> (pruning ratio, student params or None)
    "prune 0.25": (0.25, None),
    "prune 0.5": (0.5, None),
    "student -block1": (0.0, {"drop": ["block1"]}),
    "student -block3": (0.0, {"drop": ["block3"]}),
    "student -block1,3": (0.0, {"drop": ["block1", "block3"]}),
    "student w0.75": (0.0, {"width": 0.75}),
    "student w0.75 -block1": (0.0, {"width": 0.75, "drop": ["block1"]}),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--finetune", choices=("search", "final"), default="search")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    finetune = SEARCH_FINETUNE if args.finetune == "search" else FINAL_FINETUNE
    register_student_family(FAMILY, _student, replace=True)

    splits = load_dataset("mnist5k")
    train, _, test = make_loaders(splits, batch_size=64)
    teacher = pretrained("mobilenet_cat", "mnist5k")
    int8 = LayerPolicy(quantization=LayerQuant())  # the search's INT8: per-channel weights
    print(f"# {args.finetune} fine-tune ({finetune}); test split of {len(test.dataset)} images", flush=True)
    with tempfile.TemporaryDirectory(prefix="autocompress-depthwise-") as tmp:
        root = Path(tmp)
        irs = {"FP32": export(teacher, root / "fp32", input_shape=splits.input_shape).ir_path}
        policies = {"INT8": Policy(default=int8)}
        for label, (ratio, params) in VARIANTS.items():
            student = Student(FAMILY, params) if params else None
            pruning = Pruning(ratio=ratio, criterion="l2") if ratio else None
            for precision, base in (("float", LayerPolicy()), ("INT8", int8)):
                policies[f"{label} {precision}"] = Policy(
                    default=dataclasses.replace(base, pruning=pruning), student=student
                )
        for name, policy in policies.items():
            started = time.perf_counter()
            model = apply_policy(teacher, policy, train, finetune=finetune)
            irs[name] = export(model, root / f"m{len(irs)}", input_shape=splits.input_shape).ir_path
            print(f"[{name}] applied and exported in {time.perf_counter() - started:.0f} s", flush=True)
        data = Dataset(test)
        names = list(irs)
        logits, latency = compare_irs(
            [str(irs[n]) for n in names],
            data.inputs_file(),
            Target(threads=1, precision_hint="f32"),  # as the search benchmark measures
            LatencyConfig(rounds=args.rounds, min_iterations=200, min_seconds=0.5),
        )
    constraint = AccuracyConstraint(0.01, confidence=0.9)
    ms = [m["median_ms"] for m in latency["models"]]
    print(f"\n{'model':28s} {'speedup':>8s} {'median ms':>10s}   test drop pt (90% bounds)")
    for i, name in enumerate(names):
        drop = constraint.assess(None, logits[0], logits[i], data.targets)
        bounds = f"{100 * drop.drop:+.2f} ({100 * drop.low:+.2f}..{100 * drop.high:+.2f})"
        print(f"{name:28s} {ms[0] / ms[i]:7.2f}x {ms[i]:10.4f}   {bounds}")
    print(
        "speedup: FP32 latency / model latency, medians of alternating rounds in this run "
        "(OpenVINO f32 hint, 1 thread, batch 1); drop: FP32 test accuracy - model's, paired bootstrap"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
