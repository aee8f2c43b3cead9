"""Does the delivered policy keep its accuracy promise on data it never selected on?

Searches (models x seeds) on MNIST-5k, each run twice in ONE process, side by side:

- "point": the constraint decided on the measured validation drop, the search's best
  delivered as is (confidence=None, confirm_fraction=0: the behaviour before confirmation);
- "confirmed": the defaults: the constraint on the drop's one-sided 90% upper bound, half
  of the validation data held back, the top 3 feasible trials fine-tuned again and the
  first that keeps the constraint there delivered;
- with --variants, also "confirm-0.3" / "confirm-0.5": the same with 30% / 50% held back
  (what a larger confirmation split costs and buys).

For each: whether a policy was delivered as feasible, its drop on the 1000-image test
split (paired with the baseline, with 90% bounds), whether the promise (drop <= 1 pt)
held there, the test speedup and the wall time. The share of delivered policies that
held is printed with a Wilson interval.

    python benchmarks/constraint.py                       # 2 models x 5 seeds, 8 trials each
    python benchmarks/constraint.py --seeds 3 --trials 6
    python benchmarks/constraint.py --trials 6 --variants confirm-0.3,confirm-0.5
    python benchmarks/constraint.py --space joint --variants confirmed --models mnist_cnn
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import subprocess
import tempfile
import time

import autocompress
from autocompress import Target
from autocompress.data import load_dataset, make_loaders
from autocompress.zoo import pretrained

MODELS = {"mnist_cnn": {}, "resnet20 (width 0.5)": {"width": 0.5}}
ZOO = {"mnist_cnn": "mnist_cnn", "resnet20 (width 0.5)": "resnet20"}
VARIANTS = {
    "point": dict(confidence=None, confirm_fraction=0.0),
    "confirmed": dict(),  # the defaults
    "confirm-0.3": dict(confirm_fraction=0.3),  # the defaults otherwise, with the split named
    "confirm-0.5": dict(confirm_fraction=0.5),
}


def wilson(successes: int, n: int, z: float = 1.645) -> tuple[float, float]:
    """90% Wilson score interval of a proportion."""
    if n == 0:
        return (math.nan, math.nan)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--space", default="compact")
    parser.add_argument("--models", default=",".join(MODELS), help=f"of: {', '.join(MODELS)}")
    parser.add_argument("--variants", default="point,confirmed", help=f"of: {', '.join(VARIANTS)}")
    args = parser.parse_args()
    variants = args.variants.split(",")
    models = args.models.split(",")
    if not models or not set(models) <= set(MODELS):
        parser.error(f"--models: a comma-separated list of {', '.join(MODELS)}, got {args.models!r}")
    if not variants or not set(variants) <= set(VARIANTS):
        parser.error(f"--variants: a comma-separated list of {', '.join(VARIANTS)}, got {args.variants!r}")

    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model_name = next(
        (line.split(":", 1)[1].strip() for line in cpu.splitlines() if "Model name" in line), "?"
    )
    print(f"# {platform.node()}: {model_name}; OpenVINO f32 hint, 1 thread, batch 1")
    print(
        f"# {len(models)} models x {args.seeds} seeds, {args.trials} trials, space {args.space}, max drop 1 pt"
    )
    data = load_dataset("mnist5k")
    train, val, test = make_loaders(data)
    rows = []
    for label in models:
        model = pretrained(ZOO[label], "mnist5k", **MODELS[label])
        for seed in range(args.seeds):
            for variant in variants:  # side by side: the same model, seed and machine state
                options = VARIANTS[variant]
                with tempfile.TemporaryDirectory(prefix="autocompress-constraint-") as workdir:
                    started = time.perf_counter()
                    result = autocompress.search(
                        model,
                        train,
                        val,
                        test_loader=test,
                        space=args.space,
                        n_trials=args.trials,
                        max_accuracy_drop=0.01,
                        target=Target(threads=1, precision_hint="f32"),
                        seed=seed,
                        workdir=workdir,
                        progress=False,
                        **options,
                    )
                    seconds = time.perf_counter() - started
                t = result.test or {}
                row = dict(
                    model=label,
                    seed=seed,
                    variant=variant,
                    delivered=result.feasible,
                    test_drop=t.get("drop"),
                    bounds=(t.get("drop_low"), t.get("drop_high")),
                    held=t.get("held"),
                    speedup=t.get("speedup"),
                    seconds=seconds,
                )
                rows.append(row)
                drop = f"{100 * row['test_drop']:.2f}" if row["test_drop"] is not None else "-"
                print(
                    f"{label:22s} seed {seed} {variant:9s}: delivered {str(row['delivered']):5s} "
                    f"test drop {drop} pt (90% {100 * row['bounds'][0]:.2f}..{100 * row['bounds'][1]:.2f}) "
                    f"held {row['held']}  speedup {row['speedup']:.2f}x  {seconds:.0f} s",
                    flush=True,
                )

    print(
        "\nvariant    | searches | delivered feasible | promise held on test (of delivered) | 90% CI     "
        "| median test speedup | median wall s"
    )
    for variant in variants:
        mine = [r for r in rows if r["variant"] == variant]
        delivered = [r for r in mine if r["delivered"]]
        held = sum(bool(r["held"]) for r in delivered)
        low, high = wilson(held, len(delivered))
        speedups = [r["speedup"] for r in delivered if r["speedup"]]
        print(
            f"{variant:10s} | {len(mine):8d} | {len(delivered):18d} | "
            f"{held}/{len(delivered)} = {held / max(1, len(delivered)):.0%}{'':18s}| {low:.2f}-{high:.2f} "
            f"| {statistics.median(speedups) if speedups else float('nan'):19.2f} "
            f"| {statistics.median(r['seconds'] for r in mine):.0f}"
        )
    pairs = {(r["model"], r["seed"]): {} for r in rows}
    for r in rows:
        pairs[(r["model"], r["seed"])][r["variant"]] = r
    reference = variants[0]
    for variant in variants[1:]:
        ratios = [
            p[variant]["speedup"] / p[reference]["speedup"]
            for p in pairs.values()
            if p[variant]["delivered"] and p[reference]["delivered"]
        ]
        if ratios:
            print(
                f"\nmedian test speedup ratio {variant}/{reference}: "
                f"{statistics.median(ratios):.3f} over {len(ratios)} paired searches"
            )


if __name__ == "__main__":
    main()
