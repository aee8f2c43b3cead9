"""Pruning benchmark: structured filter pruning (physically thinned) vs unstructured sparsity.

Zoo ResNet-20 (wide) on MNIST-5k, in ONE run:
- 25/50/75% of filters removed in every prunable group, for each criterion, fine-tuned
  with the same budget: accuracy of the deployed IR;
- OpenVINO latency of the thinned models at FP32 (f32) and INT8 (prune -> QAT), and of
  50%/90% unstructured sparsity, all in the same alternating rounds against the dense
  FP32 model; IR sizes and non-zeros.

Latency depends on the shapes only, so it is measured once per ratio (L1-pruned model).

    python benchmarks/pruning.py
    python benchmarks/pruning.py --width 1 --criteria l1,taylor --finetune-epochs 0.5
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

from autocompress import Finetune, LatencyConfig, Target, apply_policy, export
from autocompress.data import load_dataset, make_loaders
from autocompress.evaluators.runtime import Dataset, OpenVINOAccuracy, OpenVINOLatency
from autocompress.evaluators.size import ModelSize
from autocompress.policies import LayerPolicy, Policy, Pruning, Sparsity
from autocompress.zoo import pretrained

CRITERIA = ("l1", "l2", "geometric_median", "bn_scale", "taylor")
RATIOS = (0.25, 0.5, 0.75)


def pruning_policy(ratio: float, criterion: str, quantize: bool = False) -> Policy:
    base = Policy.quantize(8, 8).default if quantize else LayerPolicy()
    pruned = LayerPolicy(quantization=base.quantization, pruning=Pruning(ratio=ratio, criterion=criterion))
    # The classifier keeps its outputs (it is the model's output, never pruned).
    return Policy(default=pruned, overrides={"fc": base})


def sparsity_policy(level: float) -> Policy:
    return Policy(default=LayerPolicy(sparsity=Sparsity(level=level)), overrides={"fc": LayerPolicy()})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--width", type=float, default=2.0)
    parser.add_argument("--baseline-epochs", type=int, default=8)
    parser.add_argument("--finetune-epochs", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=1e-3, help="fine-tuning lr after pruning")
    parser.add_argument("--criteria", default=",".join(CRITERIA))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--round-seconds", type=float, default=1.0)
    args = parser.parse_args(argv)

    splits = load_dataset("mnist5k")
    train, _, test = make_loaders(splits, batch_size=64)
    model = pretrained("resnet20", "mnist5k", epochs=args.baseline_epochs, width=args.width)
    finetune = Finetune(epochs=args.finetune_epochs, lr=args.lr)
    data = Dataset(test)
    f32 = Target(threads=args.threads, precision_hint="f32")
    default = Target(threads=args.threads)

    with tempfile.TemporaryDirectory(prefix="bench-prune-") as tmp:
        root = Path(tmp)
        fp32 = export(model, root / "dense", input_shape=splits.input_shape)
        qat = Finetune(epochs=0.5, lr=1e-4)  # QAT of a trained model wants a small lr
        dense_int8 = export(
            apply_policy(model, Policy.quantize(8, 8), train, finetune=qat), root / "dense-int8"
        )
        timed = {"dense FP32": fp32, "dense INT8": dense_int8}
        targets = {"dense FP32": f32, "dense INT8": default}
        accuracy_rows = []
        for criterion in args.criteria.split(","):
            for ratio in RATIOS:
                started = time.perf_counter()
                compressed = apply_policy(model, pruning_policy(ratio, criterion), train, finetune=finetune)
                seconds = time.perf_counter() - started
                exported = export(compressed, root / f"{criterion}-{ratio}")
                accuracy = OpenVINOAccuracy(data, target=f32)(exported)["accuracy"]
                accuracy_rows.append((criterion, ratio, accuracy, seconds, ModelSize()(exported)))
                print(f"{criterion:>16} {ratio:.0%}: accuracy {accuracy:.2%} ({seconds:.0f} s)", flush=True)
                if criterion == args.criteria.split(",")[0]:
                    timed[f"pruned {ratio:.0%} FP32"] = exported
                    targets[f"pruned {ratio:.0%} FP32"] = f32
                    # prune -> recover (float, same budget) -> calibrate -> short QAT
                    prune_then_qat = dataclasses.replace(
                        qat, recovery_epochs=args.finetune_epochs, rewind_lr=args.lr
                    )
                    int8 = apply_policy(
                        model, pruning_policy(ratio, criterion, quantize=True), train, finetune=prune_then_qat
                    )
                    timed[f"pruned {ratio:.0%} INT8"] = export(int8, root / f"{criterion}-{ratio}-int8")
                    targets[f"pruned {ratio:.0%} INT8"] = default
        for level in (0.5, 0.9):
            sparse = apply_policy(model, sparsity_policy(level), train, finetune=finetune)
            timed[f"sparse {level:.0%} FP32"] = export(sparse, root / f"sparse-{level}")
            targets[f"sparse {level:.0%} FP32"] = f32

        config = LatencyConfig(rounds=args.rounds, min_iterations=200, min_seconds=args.round_seconds)
        latency = OpenVINOLatency(default, config).compare(timed, targets=targets)
        accuracy_of = {}
        for name, artifact in timed.items():
            accuracy_of[name] = OpenVINOAccuracy(data, target=targets[name])(artifact)["accuracy"]
        sizes = {name: ModelSize()(artifact) for name, artifact in timed.items()}

    dense = accuracy_of["dense FP32"]
    print(
        f"\nResNet-20 width {args.width:g} on MNIST-5k, dense FP32 accuracy {dense:.2%}; "
        f"fine-tune {args.finetune_epochs:g} epoch(s) at lr {args.lr:g} after compression\n"
    )
    print(f"{'criterion':<17}" + "".join(f"{f'{r:.0%} pruned':>14}" for r in RATIOS))
    for criterion in args.criteria.split(","):
        cells = [f"{100 * a:>13.2f}%" for c, r, a, _, _ in accuracy_rows if c == criterion]
        print(f"{criterion:<17}" + "".join(cells))
    print("\n(accuracy of the deployed IR, FP32)\n")
    header = f"{'variant':<20} {'acc OV':>7} {'lat ms':>8} {'spread':>7} {'speedup':>8} {'IR bin KiB':>11} {'params':>9} {'non-zero':>9}"
    print(header)
    print("-" * len(header))
    for name in timed:
        m, z = latency[name], sizes[name]
        print(
            f"{name:<20} {100 * accuracy_of[name]:>6.2f}% {m['median_ms']:>8.4f} {m['spread']:>6.0%} "
            f"{1 / m['ratio_to_first']:>7.2f}x {z['ir_weights_bytes'] / 1024:>11.1f} {z['parameters']:>9,} {z['nonzero_parameters']:>9,}"
        )
    print(
        "\nspeedup: vs dense FP32 at f32 precision, median over alternating rounds in one process; "
        "INT8 rows run at the runtime default precision."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
