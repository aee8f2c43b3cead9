"""Depthwise benchmark: what each lever buys on the zoo's depthwise/concat net, on this target.

The net (MobileNetCat: stem, three inverted-residual blocks, a concat block, ~10k
parameters) runs in about 0.1 ms at FP32 on MNIST-5k here, so its time is mostly the cost
per OpenVINO node, not arithmetic. In ONE run: uniform INT8, uniform pruning (float and
INT8), and students distilled from it (the library's "mobilenet_cat" family: inverted
residual blocks removed, and narrower), each with the search's per-trial fine-tune or the
final one (--finetune final); then the test drop (paired with FP32, 90% bounds) and
latency, all IRs timed side by side in alternating rounds. ``--model mnist_cnn`` asks the
same of the MNIST CNN (pruning, and its family's narrower students).

    python benchmarks/depthwise.py
    python benchmarks/depthwise.py --finetune final --rounds 9
    python benchmarks/depthwise.py --model mnist_cnn --finetune final
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

from autocompress import Target, apply_policy, export
from autocompress.data import load_dataset, make_loaders
from autocompress.policies import LayerPolicy, LayerQuant, Policy, Pruning, Student
from autocompress.search.settings import FINAL_FINETUNE, SEARCH_FINETUNE
from autocompress.zoo import pretrained

sys.path.insert(0, str(Path(__file__).resolve().parent))
from side_by_side import score_and_time  # noqa: E402  (sibling benchmark module)

VARIANTS = {  # model -> label -> (pruning ratio, student params or None); students of the model's family
    "mobilenet_cat": {
        "prune 0.25": (0.25, None),
        "prune 0.5": (0.5, None),
        "student -block1": (0.0, {"blocks": 2}),
        "student -block1,3": (0.0, {"blocks": 1}),
        "student w0.75": (0.0, {"width": 0.75}),
        "student w0.75 -block1": (0.0, {"width": 0.75, "blocks": 2}),
    },
    "mnist_cnn": {
        "prune 0.125": (0.125, None),
        "prune 0.25": (0.25, None),
        "student w0.75": (0.0, {"width": 0.75}),
        "student w0.5": (0.0, {"width": 0.5}),
    },
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", choices=tuple(VARIANTS), default="mobilenet_cat")
    parser.add_argument("--finetune", choices=("search", "final"), default="search")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    finetune = SEARCH_FINETUNE if args.finetune == "search" else FINAL_FINETUNE

    splits = load_dataset("mnist5k")
    train, _, test = make_loaders(splits, batch_size=64)
    teacher = pretrained(args.model, "mnist5k")
    int8 = LayerPolicy(quantization=LayerQuant())  # the search's INT8: per-channel weights
    print(f"# {args.finetune} fine-tune ({finetune}); test split of {len(test.dataset)} images", flush=True)
    with tempfile.TemporaryDirectory(prefix="autocompress-depthwise-") as tmp:
        root = Path(tmp)
        irs = {"FP32": export(teacher, root / "fp32", input_shape=splits.input_shape).ir_path}
        policies = {"INT8": Policy(default=int8)}
        for label, (ratio, params) in VARIANTS[args.model].items():
            student = Student(args.model, params) if params else None
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
        ms, drops = score_and_time(irs, test, Target(threads=1, precision_hint="f32"), args.rounds)
    print(f"\n{'model':28s} {'speedup':>8s} {'median ms':>10s}   test drop pt (90% bounds)")
    for name, drop in drops.items():
        bounds = f"{100 * drop.drop:+.2f} ({100 * drop.low:+.2f}..{100 * drop.high:+.2f})"
        print(f"{name:28s} {ms['FP32'] / ms[name]:7.2f}x {ms[name]:10.4f}   {bounds}")
    print(
        "speedup: FP32 latency / model latency, medians of alternating rounds in this run "
        "(OpenVINO f32 hint, 1 thread, batch 1); drop: FP32 test accuracy - model's, paired bootstrap"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
