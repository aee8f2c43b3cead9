"""Search benchmark: the constrained policy search against NNCF post-training INT8.

Zoo ResNet-20 (wide) on MNIST-5k, accuracy drop <= 1 pt on the validation split,
objective = OpenVINO latency at true FP32 precision ("f32") on 1 thread, in ONE run:

- NNCF PTQ INT8 of the FP32 IR (the usual one-knob answer);
- searches at an equal trial budget: joint (TPE, per-layer bits + per-group pruning),
  random (same space), condensa (uniform level-set first, then joint below it),
  quantization-only and pruning-only spaces. Every search starts with the same
  enqueued points (uniform INT8, then INT8 + uniform pruning where the space prunes).

Each search's best policy is then re-measured side by side with FP32 and NNCF INT8 in
the same alternating latency rounds, and scored on the held-out test split.

    python benchmarks/search.py                       # width 2, 12 trials per search
    python benchmarks/search.py --width 1 --trials 8 --searches joint,random
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import autocompress
from autocompress import LatencyConfig, Target, export
from autocompress.data import load_dataset, make_loaders
from autocompress.evaluators.artifact import ExportedModel
from autocompress.evaluators.runtime import Dataset, OpenVINOAccuracy, OpenVINOLatency
from autocompress.search import SEARCH_FINETUNE, SearchResult
from autocompress.zoo import pretrained

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quantization import nncf_int8  # noqa: E402  (sibling benchmark script)

SEARCHES = {
    # name: (space, sampler, strategy)
    "joint (TPE)": ("joint", "auto", "direct"),
    "random": ("joint", "random", "direct"),
    "condensa": ("joint", "auto", "condensa"),
    "quantization only": ("quantization", "auto", "direct"),
    "pruning only": ("pruning", "auto", "direct"),
}
KEYS = {
    "joint": "joint (TPE)",
    "random": "random",
    "condensa": "condensa",
    "quantization": "quantization only",
    "pruning": "pruning only",
}


def trials_to_95(result: SearchResult) -> int | None:
    """1-based count of trials until a feasible one reached 95% of the final best speedup."""
    feasible = [t for t in result.trials if t.feasible]
    if not feasible:
        return None
    final = max(t.measurements.speedup for t in feasible)
    for index, t in enumerate(result.trials, start=1):
        if t.feasible and t.measurements.speedup >= 0.95 * final:
            return index
    return None


def overhead(result: SearchResult) -> float | None:
    """Median seconds per finished trial spent outside apply_policy (export, IR, measurement)."""
    values = [
        t.seconds - (t.measurements.seconds_compress or 0)
        for t in result.trials
        if t.state == "COMPLETE" and t.seconds
    ]
    return statistics.median(values) if values else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--width", type=float, default=2.0)
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--searches", default=",".join(KEYS), help=f"comma-separated among {', '.join(KEYS)}")
    parser.add_argument("--baseline-epochs", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-drop", type=float, default=0.01)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    chosen = [KEYS[k.strip()] for k in args.searches.split(",") if k.strip()]

    splits = load_dataset("mnist5k")
    train, val, test = make_loaders(splits, batch_size=64)
    started = time.perf_counter()
    model = pretrained("resnet20", "mnist5k", epochs=args.baseline_epochs, width=args.width)
    print(
        f"baseline resnet20 width {args.width:g} ready in {time.perf_counter() - started:.0f} s", flush=True
    )
    target = Target(threads=args.threads, precision_hint="f32")

    with tempfile.TemporaryDirectory(prefix="bench-search-") as tmp:
        root = args.workdir or Path(tmp)
        fp32 = export(model, root / "fp32", input_shape=splits.input_shape)
        calibration = splits.train.tensors[0][:300].numpy()
        artifacts: dict[str, ExportedModel] = {
            "FP32": fp32,
            "NNCF PTQ INT8": nncf_int8(fp32, calibration, root / "nncf", 300),
        }
        results: dict[str, SearchResult] = {}
        for name in chosen:
            space, sampler, strategy = SEARCHES[name]
            t0 = time.perf_counter()
            result = autocompress.search(
                model,
                train,
                val,
                test_loader=test,
                objective="latency",
                max_accuracy_drop=args.max_drop,
                target=target,
                space=space,
                sampler=sampler,
                strategy=strategy,
                n_trials=args.trials,
                workdir=root / name.split()[0],
                finetune=SEARCH_FINETUNE,
                seed=0,
                progress=False,
            )
            results[name] = result
            print(f"[{name}] {time.perf_counter() - t0:.0f} s: {result.message}", flush=True)
            if result.best is not None and result.feasible:
                ir = Path(result.best.measurements.ir_path)
                artifacts[name] = ExportedModel(
                    onnx_path=ir.with_suffix(".onnx"), ir_path=ir, input_shape=fp32.input_shape
                )

        data = Dataset(test)
        accuracy = {
            name: OpenVINOAccuracy(data, target=target)(a)["accuracy"] for name, a in artifacts.items()
        }
        latency = OpenVINOLatency(
            target, LatencyConfig(rounds=args.rounds, min_iterations=200, min_seconds=0.5)
        ).compare(artifacts)

    nncf = latency["NNCF PTQ INT8"]
    print(
        f"\nresnet20 width {args.width:g}, MNIST-5k; constraint: validation drop <= {100 * args.max_drop:g} pt; "
        f"{args.trials} trials per search; OpenVINO f32 hint, {args.threads} thread(s), batch 1, {args.rounds} alternating rounds\n"
    )
    header = f"{'variant':<20} {'test acc':>8} {'Δ pt':>6} {'lat ms':>8} {'vs FP32':>8} {'vs NNCF':>8} {'to 95%':>6} {'feasible':>8} {'wall s':>7} {'ovh s/trial':>11}  best policy"
    print(header)
    print("-" * len(header))
    for name, measured in latency.items():
        speedup = 1.0 / measured["ratio_to_first"]
        vs_nncf = nncf["median_ms"] / measured["median_ms"]
        r = results.get(name)
        extra = ""
        if r is not None:
            from autocompress.search.result import summarize_policy

            feasible = sum(t.feasible for t in r.trials)
            ovh = overhead(r)
            extra = f" {trials_to_95(r) or '-':>6} {f'{feasible}/{len(r.trials)}':>8} {r.seconds:>7.0f} {ovh if ovh is None else f'{ovh:.1f}':>11}  {summarize_policy(r.best.params)}"
        else:
            extra = f" {'':>6} {'':>8} {'':>7} {'':>11}"
        print(
            f"{name:<20} {100 * accuracy[name]:>7.2f}% {100 * (accuracy[name] - accuracy['FP32']):>+6.2f} "
            f"{measured['median_ms']:>8.4f} {speedup:>7.2f}x {vs_nncf:>7.2f}x{extra}"
        )
    for name in chosen:
        if name not in artifacts:
            print(f"{name}: no feasible policy ({results[name].message})")
    print(
        "\nvs FP32 / vs NNCF: latency ratios measured side by side in this run (median over rounds); "
        "to 95%: trials until a feasible one reached 95% of the search's final best (validation) speedup; "
        "ovh: median seconds per finished trial outside apply_policy (ONNX export, IR conversion, accuracy, latency)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
