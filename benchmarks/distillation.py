"""Distillation benchmark: students of the zoo ResNet-20 (wide) teacher on MNIST-5k.

In ONE run: students at several widths/depths trained with the same budget three ways
(plain cross-entropy from random init, KD from random init, KD from teacher init),
then the full KD -> prune -> QAT pipeline; accuracy of the deployed IR, FLOPs, and
OpenVINO latency and IR size relative to the teacher at FP32 (same alternating rounds).

    python benchmarks/distillation.py
    python benchmarks/distillation.py --distill-epochs 3 --rounds 5
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from autocompress import Finetune, LatencyConfig, Target, apply_policy, export
from autocompress.data import load_dataset, make_loaders
from autocompress.evaluators.runtime import Dataset, OpenVINOAccuracy, OpenVINOLatency
from autocompress.evaluators.size import ModelSize
from autocompress.policies import Distillation, LayerPolicy, Policy, Pruning, Student
from autocompress.zoo import pretrained

STUDENTS = {  # name -> params relative to the teacher
    "w1/2 d3": {"width": 0.5, "blocks": [3, 3, 3]},
    "w1/4 d3": {"width": 0.25, "blocks": [3, 3, 3]},
    "w1/2 d1": {"width": 0.5, "blocks": [1, 1, 1]},
    "w1/4 d1": {"width": 0.25, "blocks": [1, 1, 1]},
}
TRAININGS = {  # label -> (distillation alpha, init from teacher)
    "CE, random init": (0.0, False),
    "KD, random init": (0.9, False),
    "KD, teacher init": (0.9, True),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--teacher-width", type=float, default=2.0)
    parser.add_argument("--baseline-epochs", type=int, default=8)
    parser.add_argument("--distill-epochs", type=float, default=3.0)
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--pipeline-student", default="w1/2 d1", choices=list(STUDENTS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--round-seconds", type=float, default=1.0)
    args = parser.parse_args(argv)

    splits = load_dataset("mnist5k")
    train, _, test = make_loaders(splits, batch_size=64)
    teacher = pretrained("resnet20", "mnist5k", epochs=args.baseline_epochs, width=args.teacher_width)
    data = Dataset(test)
    f32 = Target(threads=args.threads, precision_hint="f32")
    finetune = Finetune(epochs=0, distill_epochs=args.distill_epochs)

    with tempfile.TemporaryDirectory(prefix="bench-distill-") as tmp:
        root = Path(tmp)
        exported = {"teacher FP32": export(teacher, root / "teacher", input_shape=splits.input_shape)}
        targets = {"teacher FP32": f32}
        rows: dict[str, dict] = {}
        for student_name, params in STUDENTS.items():
            for training, (alpha, init) in TRAININGS.items():
                policy = Policy(
                    student=Student(family="resnet", params=params, init_from_teacher=init),
                    distillation=Distillation(temperature=args.temperature, alpha=alpha),
                )
                started = time.perf_counter()
                compressed = apply_policy(teacher, policy, train, finetune=finetune)
                name = f"{student_name} | {training}"
                exported[name] = export(compressed, root / f"s{len(exported)}")
                targets[name] = f32
                rows[name] = {"seconds": time.perf_counter() - started}
                print(f"{name}: trained in {rows[name]['seconds']:.0f} s", flush=True)

        # The full pipeline: distill into the student, prune 25% of its filters, QAT to INT8.
        int8 = Policy.quantize(8, 8).default.quantization
        pipeline = Policy(
            student=Student(family="resnet", params=STUDENTS[args.pipeline_student]),
            distillation=Distillation(temperature=args.temperature),
            default=LayerPolicy(quantization=int8, pruning=Pruning(ratio=0.25)),
            overrides={"fc": LayerPolicy(quantization=int8)},
        )
        started = time.perf_counter()
        schedule = Finetune(
            epochs=1, lr=1e-4, distill_epochs=args.distill_epochs, recovery_epochs=1, rewind_lr=1e-2
        )
        compressed = apply_policy(teacher, pipeline, train, finetune=schedule)
        name = f"{args.pipeline_student} | KD -> prune 25% -> QAT INT8"
        exported[name] = export(compressed, root / "pipeline")
        targets[name] = Target(threads=args.threads)
        rows[name] = {"seconds": time.perf_counter() - started}
        print(f"{name}: done in {rows[name]['seconds']:.0f} s", flush=True)

        rows = {"teacher FP32": {}, **rows}
        for name, artifact in exported.items():
            rows[name]["accuracy"] = OpenVINOAccuracy(data, target=targets[name])(artifact)["accuracy"]
            rows[name].update(ModelSize()(artifact))
        config = LatencyConfig(rounds=args.rounds, min_iterations=200, min_seconds=args.round_seconds)
        for name, measured in OpenVINOLatency(f32, config).compare(exported, targets=targets).items():
            rows[name]["speedup"] = 1.0 / measured["ratio_to_first"]
            rows[name]["latency_ms"] = measured["median_ms"]

    base = rows["teacher FP32"]
    print(
        f"\nTeacher: ResNet-20 width {args.teacher_width:g} on MNIST-5k ({base['flops'] / 1e6:.0f} MFLOPs); "
        f"students trained {args.distill_epochs:g} epochs, T={args.temperature:g}\n"
    )
    header = f"{'model | training':<48} {'acc OV':>7} {'Δ pt':>6} {'MFLOPs':>7} {'fewer FLOPs':>11} {'speedup':>8} {'smaller':>8}"
    print(header)
    print("-" * len(header))
    for name, row in rows.items():
        print(
            f"{name:<48} {100 * row['accuracy']:>6.2f}% {100 * (row['accuracy'] - base['accuracy']):>+6.2f} "
            f"{row['flops'] / 1e6:>7.1f} {base['flops'] / row['flops']:>10.1f}x {row['speedup']:>7.2f}x "
            f"{base['ir_weights_bytes'] / row['ir_weights_bytes']:>7.1f}x"
        )
    print(
        "\nspeedup: OpenVINO latency vs the teacher at f32, median over alternating rounds in one process "
        f"({args.threads} thread(s), batch 1); smaller: IR weights (.bin); FLOPs per sample (torch FlopCounterMode)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
