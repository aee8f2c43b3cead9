"""Command line: ``autocompress evaluate`` and ``autocompress demo``."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from autocompress.core import Finetune, ModelError, apply_policy, compressible_layers
from autocompress.data import DATASETS, load_dataset, make_loaders
from autocompress.evaluate import evaluate
from autocompress.zoo import parse_model_spec, pretrained
from evaluators.target import LatencyConfig, Target
from policies import LayerPolicy, LayerQuant, Policy, PolicyError, TensorQuant


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="autocompress", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    ev = commands.add_parser("evaluate", help="compress a model with a policy and print baseline vs compressed")
    ev.add_argument("--model", default="zoo:resnet20", help="zoo:NAME[:key=value,...], e.g. zoo:resnet20:width=2")
    ev.add_argument("--data", default="mnist5k", choices=DATASETS)
    ev.add_argument("--policy", required=True, type=Path, help="policy JSON (see policies.Policy)")
    _add_common(ev)

    demo = commands.add_parser("demo", help="compress the built-in ResNet-20 on MNIST-5k and print what was measured")
    demo.add_argument("--model", default="zoo:resnet20")
    demo.add_argument("--data", default="mnist5k", choices=DATASETS)
    _add_common(demo)

    args = parser.parse_args(argv)
    try:
        return _evaluate(args) if args.command == "evaluate" else _demo(args)
    except (PolicyError, ModelError, ValueError, FileNotFoundError) as error:
        print(f"autocompress: error: {error}", file=sys.stderr)
        return 2


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--epochs", type=float, default=1.0, help="fine-tuning epochs after compression")
    parser.add_argument("--lr", type=float, default=1e-4, help="fine-tuning learning rate")
    parser.add_argument("--baseline-epochs", type=int, default=8, help="training epochs of the cached baseline")
    parser.add_argument("--threads", type=int, default=None, help="OpenVINO inference threads (default: runtime)")
    parser.add_argument("--precision", choices=["f32", "bf16"], default=None, help="precision hint for float layers")
    parser.add_argument("--rounds", type=int, default=5, help="alternating latency rounds")
    parser.add_argument("--out", type=Path, default=None, help="directory for IR/ONNX files, policies and report.json")


def _setup(args):
    name, kwargs = parse_model_spec(args.model)
    started = time.perf_counter()
    model = pretrained(name, args.data, epochs=args.baseline_epochs, **kwargs)
    print(f"baseline {args.model} on {args.data}: ready in {time.perf_counter() - started:.1f} s", flush=True)
    train_loader, _, test_loader = make_loaders(load_dataset(args.data))
    target = Target(threads=args.threads, precision_hint=args.precision)
    return model, train_loader, test_loader, target


def _compress(model, policy: Policy, train_loader, args, label: str):
    started = time.perf_counter()
    compressed = apply_policy(model, policy, train_loader, finetune=Finetune(epochs=args.epochs, lr=args.lr))
    print(f"{label}: compressed and fine-tuned in {time.perf_counter() - started:.1f} s", flush=True)
    return compressed


def _report(models: dict, test_loader, target: Target, args, targets: dict | None = None) -> int:
    started = time.perf_counter()
    report = evaluate(
        models, test_loader, target=target, targets=targets, latency=LatencyConfig(rounds=args.rounds), workdir=args.out
    )
    print(f"measured in {time.perf_counter() - started:.1f} s\n")
    print(report.table())
    if args.out is not None:
        (args.out / "report.json").write_text(report.to_json() + "\n")
        print(f"\nwrote {args.out}/ (IR, ONNX, policies, report.json)")
    return 0


def _evaluate(args) -> int:
    policy = Policy.load(args.policy)
    model, train_loader, test_loader, target = _setup(args)
    print(policy.describe(), flush=True)
    compressed = _compress(model, policy, train_loader, args, "policy")
    return _report({"baseline": model, "compressed": compressed}, test_loader, target, args)


def demo_policies(layers: list[str]) -> dict[str, Policy]:
    """W8A8 everywhere, and a mixed policy: 4-bit weights in the inner layers, 8-bit in
    the first and last (the layers most sensitive to quantization)."""
    four_bit = LayerPolicy(
        quantization=LayerQuant(weights=TensorQuant(bits=4, per_channel=True, range_init="mse", learn_scale=True))
    )
    return {
        "w8a8": Policy.quantize(8, 8),
        "mixed_w4_w8": Policy.quantize(8, 8, overrides={name: four_bit for name in layers[1:-1]}),
    }


def _demo(args) -> int:
    model, train_loader, test_loader, target = _setup(args)
    # The same float model twice: at true FP32 and at the runtime's default (bf16 on CPUs with it).
    models: dict = {"fp32 (f32)": model, "fp32 (default)": model}
    targets = {"fp32 (f32)": dataclasses.replace(target, precision_hint="f32")}
    for name, policy in demo_policies(compressible_layers(model)).items():
        models[name] = _compress(model, policy, train_loader, args, name)
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            policy.save(args.out / f"policy_{name}.json")
    return _report(models, test_loader, target, args, targets)


if __name__ == "__main__":
    sys.exit(main())
