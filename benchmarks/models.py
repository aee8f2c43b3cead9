"""Models from a popular model library, compressed as a user brings them.

Per model (Hugging Face transformers, random init from small configs for 28x28 MNIST,
trained here for --epochs on MNIST-5k's 3000 training images), in ONE run:

- FP32: the trained model, exported (captured with torch.fx, or torch.export where fx
  cannot trace it);
- ours INT8: every Conv/Linear W8A8, quantization-aware fine-tune (--finetune epochs);
- ours prune+INT8: 50% of every prunable group's channels removed (L1), then W8A8;
- NNCF INT8: post-training quantization of the FP32 IR (nncf.quantize; the transformer
  model type for the attention models, as NNCF recommends);
- search: a 2-trial search of the compact space (1-pt constraint), to show it runs.

Every IR is scored on the 1000-image test split and timed side by side in alternating
rounds (OpenVINO, f32 hint, 1 thread, batch 1). A step that fails prints its error and
the others go on.

    python benchmarks/models.py
    python benchmarks/models.py --models hf_vit --epochs 1
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

import autocompress
from autocompress import Finetune, Policy, Target, apply_policy, export
from autocompress.data import load_dataset, make_loaders
from autocompress.evaluators.artifact import ExportedModel
from autocompress.graph import capture
from autocompress.policies import LayerPolicy, LayerQuant, Pruning
from autocompress.training import train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quantization import nncf_int8  # noqa: E402  (sibling benchmark script)
from side_by_side import score_and_time  # noqa: E402


def _vit(kind: str):
    import transformers

    config = dict(
        image_size=28,
        patch_size=4,  # 49 patches
        num_channels=1,
        hidden_size=192,  # DeiT-tiny's width and heads, 4 of its 12 layers
        num_hidden_layers=4,
        num_attention_heads=3,
        intermediate_size=768,
        num_labels=10,
    )
    if kind == "deit":
        return transformers.DeiTForImageClassification(transformers.DeiTConfig(**config))
    return transformers.ViTForImageClassification(transformers.ViTConfig(**config))


def _resnet():
    import transformers

    config = transformers.ResNetConfig(
        num_channels=1, embedding_size=32, hidden_sizes=[32, 64, 128], depths=[1, 1, 1], layer_type="basic",
        num_labels=10,
    )  # fmt: skip
    return transformers.ResNetForImageClassification(config)


def _convnext():
    import transformers

    config = transformers.ConvNextConfig(
        num_channels=1,
        patch_size=2,
        num_stages=3,
        hidden_sizes=[32, 64, 128],
        depths=[1, 1, 2],
        num_labels=10,
    )
    return transformers.ConvNextForImageClassification(config)


MODELS = {  # name: (builder, attention model)
    "hf_vit": (lambda: _vit("vit"), True),
    "hf_deit": (lambda: _vit("deit"), True),
    "hf_resnet": (_resnet, False),
    "hf_convnext": (_convnext, False),
}
INT8 = LayerQuant()


def run_model(name: str, args, target: Target, root: Path) -> list[dict]:
    build, attention = MODELS[name]
    splits = load_dataset("mnist5k")
    train_loader, val, test = make_loaders(splits, batch_size=64)
    torch.manual_seed(0)
    started = time.perf_counter()
    try:
        model = build()
        loss = lambda outputs, y: F.cross_entropy(outputs.logits, y)  # noqa: E731
        train(model, train_loader, epochs=args.epochs, loss_fn=loss)
    except Exception as error:  # a config this library version rejects: the other models go on
        traceback.print_exc()
        return [dict(model=name, variant="(build, train)", note=f"FAILED: {type(error).__name__}: {error}")]
    model.eval()
    print(f"[{name}] trained in {time.perf_counter() - started:.0f} s", flush=True)

    irs: dict[str, Path] = {}
    notes: dict[str, str] = {}

    def step(label: str, make) -> None:
        started = time.perf_counter()
        try:
            irs[label], note = make()
            notes[label] = f"{time.perf_counter() - started:.0f} s" + (f"; {note}" if note else "")
        except Exception as error:  # one failing step must not hide the others' figures
            notes[label] = f"FAILED: {type(error).__name__}: {str(error).splitlines()[0][:200]}"
            traceback.print_exc()
        print(f"[{name}] {label}: {notes[label]}", flush=True)

    example = next(iter(train_loader))[0][:1]
    step(
        "FP32",
        lambda: (export(capture(model, example), root / "fp32", input_shape=splits.input_shape).ir_path, ""),
    )
    finetune = Finetune(epochs=args.finetune, recovery_epochs=args.finetune)
    for label, policy in (
        ("ours INT8", Policy(default=LayerPolicy(quantization=INT8))),
        ("ours prune+INT8", Policy(default=LayerPolicy(quantization=INT8, pruning=Pruning(ratio=0.5)))),
    ):

        def make(policy=policy, label=label):
            compressed = apply_policy(model, policy, train_loader, finetune=finetune)
            skipped = len(compressed.history.get("pruning_skipped", {}))
            note = f"{skipped} groups left unpruned" if policy.default.pruning else ""
            return export(compressed, root / label.replace(" ", "_")).ir_path, note

        step(label, make)
    if "FP32" in irs:
        calibration = splits.train.tensors[0][:300].numpy()

        def nncf():
            fp32 = ExportedModel(
                onnx_path=irs["FP32"], ir_path=irs["FP32"], input_shape=(1, *splits.input_shape)
            )
            model_type = "transformer" if attention else None
            quantized = nncf_int8(fp32, calibration, root / "nncf", 300, model_type=model_type)
            return quantized.ir_path, f"model_type={model_type}"

        step("NNCF INT8", nncf)

    def search():
        result = autocompress.search(
            model,
            train_loader,
            val,
            space="compact",
            n_trials=2,
            max_accuracy_drop=0.01,
            finetune=Finetune(epochs=args.finetune / 2, recovery_epochs=args.finetune / 2),
            final_finetune=None,
            target=target,
            hardware_proposals=False,
            workdir=root / "search",
            progress=False,
        )
        done = sum(t.state == "COMPLETE" for t in result.trials)
        best = result.best
        if best is None or best.measurements is None:
            raise RuntimeError(f"{done}/2 trials complete, nothing delivered: {result.message[:150]}")
        return Path(best.measurements.ir_path), f"{done}/2 trials complete, feasible={result.feasible}"

    step("search (2 trials)", search)

    rows = [dict(model=name, variant=label, note=notes[label]) for label in notes if label not in irs]
    if "FP32" not in irs:
        return rows
    ms, drops = score_and_time(irs, test, target, args.rounds)  # FP32 is the first: the reference
    for n, drop in drops.items():
        rows.append(
            dict(
                model=name,
                variant=n,
                accuracy=drop.accuracy,
                drop=drop.drop,
                speedup=ms["FP32"] / ms[n],
                vs_nncf=ms["NNCF INT8"] / ms[n] if "NNCF INT8" in ms else float("nan"),
                ms=ms[n],
                note=notes[n],
            )
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--epochs", type=float, default=3.0, help="training of the FP32 model")
    parser.add_argument("--finetune", type=float, default=1.0, help="QAT / recovery epochs of our variants")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        parser.error(f"unknown models {unknown}; use among {', '.join(MODELS)}")
    target = Target(threads=1, precision_hint="f32")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-models-") as tmp:
        for name in models:
            rows += run_model(name, args, target, Path(tmp) / name)
    print(
        f"\n{'model':<12} {'variant':<18} {'test acc':>8} {'drop pt':>8} {'speedup':>8} {'vs NNCF':>8} "
        f"{'ms':>8}  notes"
    )
    for r in rows:
        if "speedup" not in r:
            print(
                f"{r['model']:<12} {r['variant']:<18} {'-':>8} {'-':>8} {'-':>8} {'-':>8} {'-':>8}  {r['note']}"
            )
            continue
        print(
            f"{r['model']:<12} {r['variant']:<18} {r['accuracy']:>8.4f} {100 * r['drop']:>8.2f} "
            f"{r['speedup']:>7.2f}x {r['vs_nncf']:>7.2f}x {r['ms']:>8.4f}  {r['note']}"
        )
    print(
        "speedup: FP32 latency / variant latency, medians of alternating rounds in this run (test inputs); "
        "drop: FP32 test accuracy - variant's (1000 images: about +-0.5 pt)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
