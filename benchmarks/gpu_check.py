"""GPU check of issue 15: fine-tuning, calibration and distillation on ``device="cuda"``,
export and measurement on the CPU. For a machine with a CUDA device; on one without, it
says so and exits with status 2 before any work.

On the zoo ResNet-20 / MNIST-5k (baseline trained once, cached):

1. ``apply_policy`` of W8A8 QAT on the CPU and on CUDA (float32, bf16, fp16): fine-tune
   seconds and the compressed model's accuracy (torch, test split) for each; the model
   must come back on the CPU in float32 and export (ONNX + OpenVINO IR).
2. On CUDA with bf16: distillation into a half-width student (KD kept throughout), then
   pruning with recovery and L0 sparsity, then QAT (the teacher and the sparsity gates
   follow the student to the device); and the same with fp16 (GradScaler, gates skipping
   overflow steps).
3. A 2-trial search (compact space, Optuna) with ``device="cuda"``: trial fine-tune
   seconds, the confirmation, the Pareto table and the summary.
4. With ``--ray``: a 1-trial Ray search on a local Ray with ``resources_per_trial={"cpu": 1,
   "gpu": 1}``, where ``device="auto"`` is the trial's GPU.

    python benchmarks/gpu_check.py            # about 3-5 minutes on one GPU and 16 cores
    python benchmarks/gpu_check.py --ray
    python benchmarks/gpu_check.py --device cpu --model mnist_cnn --data digits --baseline-epochs 2
        # the same steps on the CPU on small data (fp16 and Ray left out): checks the script itself
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda", help="the device checked (cpu: the script's own check)")
    parser.add_argument("--model", default="resnet20", choices=["resnet20", "mnist_cnn"])
    parser.add_argument("--data", default="mnist5k", choices=["mnist5k", "digits"])
    parser.add_argument("--baseline-epochs", type=int, default=8)
    parser.add_argument("--epochs", type=float, default=1.0, help="QAT epochs of step 1")
    parser.add_argument(
        "--ray", action="store_true", help="also run a 1-trial search on a local Ray with a GPU"
    )
    args = parser.parse_args(argv)
    cuda = args.device.startswith("cuda")
    if cuda and (not torch.cuda.is_available() or torch.cuda.device_count() == 0):
        print(
            "gpu_check: no CUDA device is visible (torch.cuda.is_available() is False, torch "
            f"{torch.__version__}); run it on a machine with an NVIDIA GPU and a CUDA build of torch",
            file=sys.stderr,
        )
        return 2

    import autocompress
    from autocompress import Finetune, Policy, Target, apply_policy
    from autocompress.data import load_dataset, make_loaders
    from autocompress.policies import Distillation, LayerPolicy, LayerQuant, Pruning, Sparsity, Student
    from autocompress.training import evaluate_torch
    from autocompress.zoo import pretrained

    name = torch.cuda.get_device_name(torch.device(args.device)) if cuda else args.device
    print(f"device: {name}, torch {torch.__version__}", flush=True)
    train, val, test = make_loaders(load_dataset(args.data), batch_size=64)
    started = time.perf_counter()
    model = pretrained(args.model, args.data, epochs=args.baseline_epochs)
    print(f"baseline: {time.perf_counter() - started:.1f} s, accuracy {evaluate_torch(model, test):.4f}\n")
    failures: list[str] = []
    workdir = Path(tempfile.mkdtemp(prefix="autocompress-gpu-check-"))

    def check(label: str, compressed, seconds: float) -> None:
        module = compressed.module
        devices = {t.device.type for t in (*module.parameters(), *module.buffers())}
        dtypes = {p.dtype for p in module.parameters()}
        stages = {k: v for k, v in compressed.history.items() if isinstance(v, dict) and "seconds" in v}
        trained = ", ".join(f"{k} {v['seconds']:.1f} s" for k, v in stages.items())
        accuracy = evaluate_torch(module, test)
        try:
            autocompress.export(compressed, workdir / label.replace(" ", "_").replace("/", "-"))
            exported = "exported"
        except Exception as error:  # a failure is reported, and the check goes on
            exported = f"EXPORT FAILED: {type(error).__name__}: {error}"
            failures.append(f"{label}: {exported}")
        if devices != {"cpu"} or dtypes != {torch.float32}:
            failures.append(f"{label}: model came back on {devices} in {dtypes}")
        print(
            f"{label:<34} total {seconds:6.1f} s ({trained}); accuracy {accuracy:.4f}; "
            f"on {'/'.join(sorted(devices))} {'/'.join(str(d) for d in dtypes)}; {exported}",
            flush=True,
        )

    def run(label: str, policy: Policy, finetune: Finetune, **device) -> None:
        try:
            started = time.perf_counter()
            compressed = apply_policy(model, policy, train, finetune=finetune, **device)
            if cuda:
                torch.cuda.synchronize()
            check(label, compressed, time.perf_counter() - started)
        except Exception as error:
            failures.append(f"{label}: {type(error).__name__}: {error}")
            print(f"{label:<34} FAILED: {type(error).__name__}: {error}", flush=True)

    print(f"1. W8A8 QAT, fine-tune seconds on the CPU vs {args.device}")
    qat = Finetune(epochs=args.epochs)
    run("W8A8 cpu float32", Policy.quantize(8, 8), qat, device="cpu")
    run("W8A8 cpu bf16", Policy.quantize(8, 8), qat, device="cpu", autocast="bf16")
    run(f"W8A8 {args.device} float32", Policy.quantize(8, 8), qat, device=args.device)
    run(f"W8A8 {args.device} bf16", Policy.quantize(8, 8), qat, device=args.device, autocast="bf16")
    if cuda:
        run(f"W8A8 {args.device} fp16", Policy.quantize(8, 8), qat, device=args.device, autocast="fp16")

    print(f"\n2. distillation -> pruning + recovery + L0 sparsity -> QAT, on {args.device}")
    resnet = args.model == "resnet20"
    pipeline = Policy(
        student=Student(family="resnet" if resnet else "mnist_cnn", params={"width": 0.5}),
        distillation=Distillation(throughout=True, hint_weight=0.1 if resnet else 0.0),
        default=LayerPolicy(
            quantization=LayerQuant(), pruning=Pruning(ratio=0.25), sparsity=Sparsity(level=0.5, method="l0")
        ),
    )
    budget = Finetune(distill_epochs=1, recovery_epochs=0.5, epochs=0.5)
    run(f"pipeline {args.device} bf16", pipeline, budget, device=args.device, autocast="bf16")
    if cuda:
        run(f"pipeline {args.device} fp16", pipeline, budget, device=args.device, autocast="fp16")

    print(f"\n3. a 2-trial search on {args.device} (Optuna)", flush=True)
    try:
        started = time.perf_counter()
        result = autocompress.search(
            model,
            train,
            val,
            space="compact",
            n_trials=2,
            top_k=1,
            hardware_proposals=False,
            target=Target(threads=1, precision_hint="f32"),
            workdir=workdir / "search",
            progress=False,
            device=args.device,
        )
        print(f"search: {time.perf_counter() - started:.1f} s")
        for trial in result.trials:
            m = trial.measurements
            detail = (
                f"compress+fine-tune {m.seconds_compress:.1f} s, accuracy {m.accuracy:.4f}, "
                f"speedup {m.speedup:.2f}x"
                if m
                else trial.error
            )
            print(f"  trial {trial.number}: {trial.state}; {detail}")
            if trial.state == "FAIL":
                failures.append(f"search trial {trial.number}: {trial.error}")
        print(result.pareto_table() if result.pareto else "(no feasible trial)")
        print(result.summary())
    except Exception as error:
        failures.append(f"search: {type(error).__name__}: {error}")
        print(f"search FAILED: {type(error).__name__}: {error}")

    if args.ray and cuda:
        print(
            "\n4. a 1-trial Ray search, resources_per_trial={'cpu': 1, 'gpu': 1}, device='auto'", flush=True
        )
        try:
            from autocompress.search import Ray

            started = time.perf_counter()
            result = autocompress.search(
                model,
                train,
                val,
                space="compact",
                n_trials=1,
                confirm_fraction=0.0,
                hardware_proposals=False,
                target=Target(threads=1, precision_hint="f32"),
                workdir=workdir / "ray-search",
                progress=False,
                backend=Ray(resources_per_trial={"cpu": 1, "gpu": 1}),
            )
            trial = result.trials[0]
            print(f"ray search: {time.perf_counter() - started:.1f} s; trial {trial.state}")
            if trial.measurements is not None:
                print(f"  compress+fine-tune {trial.measurements.seconds_compress:.1f} s")
            else:
                failures.append(f"ray trial: {trial.error}")
        except Exception as error:
            failures.append(f"ray search: {type(error).__name__}: {error}")
            print(f"ray search FAILED: {type(error).__name__}: {error}")

    print(f"\nfiles in {workdir}")
    if failures:
        print(f"\n{len(failures)} FAILED:\n" + "\n".join(f"  {f}" for f in failures), file=sys.stderr)
        return 1
    print("\nall checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
