"""Search benchmark: does the search beat what an engineer would set by hand?

Per model (zoo ResNet-20 wide, the zoo depthwise/concat net, the MNIST CNN; MNIST-5k),
objective = OpenVINO latency at true FP32 precision ("f32") on 1 thread, accuracy drop
<= 1 pt, the same trial budget for every search, in ONE run per model:

- rule: the engineer's rule. Uniform INT8 + uniform pruning on the grid 0..0.75 in steps
  of 0.125 (7 trials, the search's per-trial fine-tune); the fastest point feasible on the
  validation data (measured drop) is then fine-tuned with the final budget, as ours is;
- rule-bound: the same grid under the searches' own selection (the constraint at
  --confidence, half held back, up to 3 confirmed after the final fine-tune): what the
  rule delivers with the same guarantee as the searches;
- NNCF PTQ INT8 of the FP32 IR (the usual one-knob answer);
- random, TPE: the joint space, without hardware-aware proposals;
- FLOPs proxy: the joint space with FLOPs as the objective (TPE), then measured;
- ours: the joint space with hardware-aware proposals (TPE);
- ours-condensa: the same after Condensa's first stage (the highest uniform INT8 pruning
  level meeting the constraint, a third of the trials), every ratio capped at that level.
The searches use the default selection: the constraint on the drop's one-sided upper
bound at --confidence (default 0.9; "none": on the measured drop, as the rule decides),
--confirm-fraction (default 0.5, the library's) of the validation data held back, up to 3 candidates
confirmed on it after a final fine-tune. With --confidence none the searches and the rule
decide alike, so "vs rule" compares the searches alone; with 0.9 "vs bound" does.

Every delivered model, FP32 and NNCF INT8 are then scored on the 1000-image test split
(drop paired with FP32, 90% bounds) and timed side by side in alternating rounds.

    python benchmarks/search.py                          # 3 models, 16 trials per search
    python benchmarks/search.py --models mnist_cnn --trials 8 --methods rule,tpe,ours
    python benchmarks/search.py --confidence none --methods rule,ours
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import autocompress
from autocompress import Target, export
from autocompress.core import apply_policy
from autocompress.data import load_dataset, make_loaders
from autocompress.search import SearchResult
from autocompress.search.result import summarize_policy
from autocompress.search.settings import FINAL_FINETUNE, SearchSettings
from autocompress.search_spaces import Dimension, SearchSpace, build_space
from autocompress.zoo import pretrained

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quantization import nncf_int8, require_nncf  # noqa: E402  (sibling benchmark script)
from side_by_side import score_and_time  # noqa: E402

MODELS = {
    "resnet20_w2": ("resnet20", {"width": 2}),
    "mobilenet_cat": ("mobilenet_cat", {}),
    "mnist_cnn": ("mnist_cnn", {}),
}
METHODS = ("rule", "rule-bound", "nncf", "random", "tpe", "flops", "ours", "ours-condensa")
RULE_GRID = tuple(i * 0.125 for i in range(7))  # 0 .. 0.75


class FlopsRatio:
    """The FLOPs-proxy objective: the candidate's FLOPs over the baseline's (minimised)."""

    name = "flops"

    def __init__(self, baseline_flops: int) -> None:
        self.baseline_flops = baseline_flops

    def __call__(self, measurements) -> float:
        return measurements.flops / self.baseline_flops


def rule_space(model, example) -> SearchSpace:
    """Uniform INT8 + one uniform pruning ratio: the compact space with bits fixed, the grid enqueued."""
    space = build_space(model, "compact", example_input=example)
    space = space.fix(weight_bits=8, activation_bits=8, pruning_criterion="l1")
    grid = Dimension("pruning_ratio", choices=RULE_GRID)
    return dataclasses.replace(
        space,
        dimensions=tuple(grid if d.name == "pruning_ratio" else d for d in space.dimensions),
        start_points=tuple({"pruning_ratio": r} for r in RULE_GRID),
    )


def trials_to_95(result: SearchResult) -> int | None:
    """1-based count of trials until a feasible one reached 95% of the search's best validation speedup."""
    feasible = [t for t in result.trials if t.feasible]
    if not feasible:
        return None
    final = max(t.measurements.speedup for t in feasible)
    return next(
        i for i, t in enumerate(result.trials, 1) if t.feasible and t.measurements.speedup >= 0.95 * final
    )


def run_model(label: str, args, target: Target, root: Path) -> list[dict]:
    name, kwargs = MODELS[label]
    splits = load_dataset("mnist5k")
    train, val, test = make_loaders(splits, batch_size=64)
    model = pretrained(name, "mnist5k", **kwargs)
    example = next(iter(train))[0][:1]
    fp32 = export(model, root / "fp32", input_shape=splits.input_shape)
    irs: dict[str, Path] = {"FP32": Path(fp32.ir_path)}
    info: dict[str, dict] = {}
    common = dict(
        test_loader=None,
        objective="latency",
        max_accuracy_drop=0.01,
        target=target,
        n_trials=args.trials,
        progress=False,
        seed=args.seed,
        confidence=args.confidence,
        confirm_fraction=args.confirm_fraction,
    )
    for method in args.methods:
        started = time.perf_counter()
        if method == "nncf":
            calibration = splits.train.tensors[0][:300].numpy()
            irs["nncf"] = Path(nncf_int8(fp32, calibration, root / "nncf", 300).ir_path)
            info["nncf"] = {"seconds": time.perf_counter() - started}
            continue
        options = dict(common, workdir=root / method)
        if method == "rule":
            options.update(
                space=rule_space(model, example),
                n_trials=len(RULE_GRID),
                confidence=None,
                confirm_fraction=0.0,
                hardware_proposals=False,
            )
        elif method == "rule-bound":  # the rule's grid under the searches' own selection
            options.update(
                space=rule_space(model, example), n_trials=len(RULE_GRID), hardware_proposals=False
            )
        elif method == "random":
            options.update(space="joint", sampler="random", hardware_proposals=False)
        elif method == "tpe":
            options.update(space="joint", hardware_proposals=False)
        elif method == "flops":
            from autocompress.evaluators.size import count_flops

            flops = count_flops(model, (1, *splits.input_shape))
            options.update(space="joint", objective=FlopsRatio(flops), hardware_proposals=False)
        elif method == "ours":
            options.update(space="joint", hardware_proposals=True)
        elif method == "ours-condensa":  # first the rule's answer by a level-set search, then below it
            options.update(space="joint", hardware_proposals=True, strategy="condensa")
        result = autocompress.search(model, train, val, **options)
        # A search that confirmed (or found) nothing feasible still delivers its closest candidate, marked
        # infeasible: it is timed and tested too (was the rejection right?), but not counted
        # in "ours vs the rule".
        best = result.best if result.feasible or method != "rule" else None
        if (
            best is not None and method == "rule"
        ):  # the same final fine-tune as ours (rule-bound's confirmation gives it)
            tuned = apply_policy(model, best.policy, train, finetune=FINAL_FINETUNE)
            irs[method] = Path(export(tuned, root / "rule-final", input_shape=splits.input_shape).ir_path)
        elif best is not None:
            irs[method] = Path(best.measurements.ir_path)
        policy = summarize_policy(best.params) if best is not None else f"none: {result.message[:80]}"
        info[method] = {
            "seconds": time.perf_counter() - started,
            "to95": trials_to_95(result),
            "policy": policy if result.feasible else f"delivered marked infeasible: {policy}",
            "trials": len(result.trials),
            "confirmed": result.feasible,
        }
        if result.hardware and "latency_model_prequential" in result.hardware:
            fit = result.hardware["latency_model_prequential"]  # each trial predicted before the refit on it
            info[method]["latency_model"] = fit
        print(f"[{label} {method}] {info[method]['seconds']:.0f} s: {result.message[:160]}", flush=True)

    ms, drops = score_and_time(irs, test, target, args.rounds)
    rows = []
    for n, drop in drops.items():
        rows.append(
            dict(
                model=label,
                method=n,
                speedup=ms["FP32"] / ms[n],
                vs_rule=ms["rule"] / ms[n] if "rule" in ms else float("nan"),
                vs_bound=ms["rule-bound"] / ms[n] if "rule-bound" in ms else float("nan"),
                drop=drop,
                held=drop.drop <= 0.01,
                **info.get(n, {}),
            )
        )
    return rows


def print_table(rows: list[dict]) -> None:
    print(
        f"\n{'model':<14} {'method':<10} {'test speedup':>12} {'vs rule':>8} {'vs bound':>8} {'test drop pt (90% bounds)':>28} "
        f"{'held':>5} {'to 95%':>6} {'wall s':>7}  policy"
    )
    for r in rows:
        d = r["drop"]
        print(
            f"{r['model']:<14} {r['method']:<10} {r['speedup']:>11.2f}x {r['vs_rule']:>7.2f}x {r['vs_bound']:>7.2f}x "
            f"{f'{100 * d.drop:.2f} ({100 * d.low:.2f}..{100 * d.high:.2f})':>28} {str(r['held']):>5} "
            f"{r.get('to95') or '-':>6} {r.get('seconds', float('nan')):>7.0f}  {r.get('policy', '')}",
            flush=True,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--confidence",
        type=lambda text: None if text.lower() == "none" else float(text),
        default=0.9,
        help="the searches' (and rule-bound's) constraint level; 'none': the measured drop, as the rule",
    )
    parser.add_argument(
        "--confirm-fraction",
        type=float,
        default=SearchSettings.confirm_fraction,
        help="the share of the validation data the searches (and rule-bound) hold back to confirm on",
    )
    parser.add_argument(
        "--workdir", type=Path, help="keep every search's folder here (default: a temporary one)"
    )
    args = parser.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown or args.trials > 16:
        parser.error(f"methods among {', '.join(METHODS)}; at most 16 trials")
    if "nncf" in args.methods:
        require_nncf("leave nncf out of --methods")
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    cpu_name = next((line.split(":", 1)[1].strip() for line in cpu.splitlines() if "Model name" in line), "?")
    flags = next((line for line in cpu.splitlines() if line.startswith("Flags")), "")
    print(
        f"# {platform.node()}: {cpu_name}; avx512_vnni={'avx512_vnni' in flags}; OpenVINO f32 hint, 1 thread, "
        f"batch 1; {args.trials} trials per search (the rule: {len(RULE_GRID)}); max drop 1 pt; searches decide "
        f"on {'the measured drop' if args.confidence is None else f'the {args.confidence:.0%} upper bound'}, "
        f"{args.confirm_fraction:.0%} of the validation data held back to confirm on",
        flush=True,
    )
    target = Target(threads=1, precision_hint="f32")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-search-") as tmp:
        tmp = args.workdir or tmp
        for label in [m.strip() for m in args.models.split(",") if m.strip()]:
            model_rows = run_model(label, args, target, Path(tmp) / label)
            print_table(model_rows)  # each model's rows as soon as they are measured: a killed run keeps them
            rows += model_rows

    print_table(rows)
    for r in rows:
        fit = r.get("latency_model")
        if fit and fit.get("n"):
            print(
                f"{r['model']} {r['method']}: latency model, each trial predicted before it was refitted on it: "
                f"median error {100 * fit['median_abs_rel_error']:.1f}%, {100 * fit['within_10pct']:.0f}% within "
                f"+-10% ({fit['n']} trials)"
            )
    for column, what in (("vs_rule", "the rule"), ("vs_bound", "the rule under the same selection")):
        ours = [
            r[column] for r in rows if r["method"] == "ours" and r["confirmed"] and np.isfinite(r[column])
        ]
        if ours:
            print(
                f"ours vs {what}: median test speedup ratio {statistics.median(ours):.2f} over {len(ours)} models"
            )
    print(
        "speedups: FP32 latency / model latency, medians of alternating rounds measured side by side in this "
        "run on the test inputs; drop: FP32 test accuracy - model's, paired bootstrap; held: drop <= 1 pt; "
        "to 95%: trials until a feasible one reached 95% of that search's best validation speedup."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
