"""Scale benchmark: what one trial costs, where the time goes, and how it grows with the model.

Part 1, cost of one trial per model (each model in a fresh process, so that its peak memory
is its own; the fastest of --repeats trials, each stage on its own): the zoo ResNet-20 on MNIST-5k (1x28x28), and a ResNet-18 and a ResNet-50 laid
out as torchvision's at 3x224x224 (random init, random labels: this part times, it does not
train to accuracy). The policy is INT8 everywhere with 50% of every prunable group's
channels removed (L2), fine-tuned for --steps steps of --batch samples. Columns:

- capture+compress: apply_policy without its fine-tune (graph capture, pruning, BatchNorm
  folding, quantizers, calibration on --batch-sized batches);
- fine-tune per 1k samples: the QAT fine-tune's seconds per 1000 training samples;
- export: ONNX export, graph fingerprint, parameter and FLOPs counts;
- convert: ONNX -> OpenVINO IR; infer: the IR on the --val validation samples;
- timed: the alternating latency rounds against the baseline (search.trial.TRIAL_LATENCY);
- peak RSS: of the process that trains (torch) and of the OpenVINO worker.
Then every cost as a ratio to the zoo ResNet-20's, beside the ratio of FLOPs.

Part 2, the lean trial loop (zoo ResNet-20, the search's own Trial): the same policies run
in alternation with the persistent measurement worker a search uses and with a fresh
worker process per trial (the loop before), in ONE run. Overhead per trial = trial wall
time - compression and fine-tuning - validation inference - timed latency rounds (what is
neither compressing, training nor measuring); its median for each, and the ratio.

    python benchmarks/scale.py                       # all three models, then the loop
    python benchmarks/scale.py --models resnet20,resnet18 --steps 2 --loop-trials 6
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

MODELS = ("resnet20", "resnet18", "resnet50")


# -- torchvision's ResNet layout, defined here (the PyPI torchvision wheel is a CUDA build) ------
class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(inplanes, planes * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(inplanes, planes * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


def _downsample(inplanes: int, outplanes: int, stride: int) -> nn.Module | None:
    if stride == 1 and inplanes == outplanes:
        return None
    return nn.Sequential(nn.Conv2d(inplanes, outplanes, 1, stride, bias=False), nn.BatchNorm2d(outplanes))


class ResNet(nn.Module):
    def __init__(self, block: type, layers: list[int], num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes, stages = 64, []
        for index, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers)):
            stride = 1 if index == 0 else 2
            stage = [block(inplanes, planes, stride)]
            inplanes = planes * block.expansion
            stage += [block(inplanes, planes) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512 * block.expansion, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def model_and_data(name: str, batch: int, steps: int, val: int):
    """(model, train loader, validation loader)."""
    from autocompress.data import load_dataset, make_loaders
    from autocompress.zoo import pretrained

    if name == "resnet20":
        splits = load_dataset("mnist5k")
        train, _, _ = make_loaders(splits, batch_size=batch)
        inputs, targets = splits.val.tensors
        validation = torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(inputs[:val], targets[:val]), batch_size=64
        )
        return pretrained("resnet20", "mnist5k"), train, validation
    torch.manual_seed(0)
    model = ResNet(BasicBlock, [2, 2, 2, 2]) if name == "resnet18" else ResNet(Bottleneck, [3, 4, 6, 3])
    generator = torch.Generator().manual_seed(0)

    def synthetic(count: int) -> torch.utils.data.TensorDataset:
        images = torch.randn(count, 3, 224, 224, generator=generator)
        return torch.utils.data.TensorDataset(images, torch.randint(0, 1000, (count,), generator=generator))

    train = torch.utils.data.DataLoader(synthetic(batch * steps), batch_size=batch, shuffle=True)
    return model.eval(), train, torch.utils.data.DataLoader(synthetic(val), batch_size=16)


def the_policy(ratio: float = 0.5, criterion: str = "l2"):
    """INT8 everywhere, ``ratio`` of every prunable group's channels removed (the classifier keeps its outputs)."""
    from autocompress.policies import LayerPolicy, Policy, Pruning

    int8 = Policy.quantize(8, 8).default
    if ratio == 0:
        return Policy(default=int8)
    pruned = LayerPolicy(quantization=int8.quantization, pruning=Pruning(ratio=ratio, criterion=criterion))
    return Policy(default=pruned, overrides={"fc": int8})


def latency_setup(model, train, validation, target, *, max_drop: float, steps: int, **options):
    """The search's trial setup for a latency objective: what every trial here shares."""
    from autocompress.core import Finetune
    from autocompress.evaluators.runtime import Dataset
    from autocompress.search.objectives import AccuracyConstraint, parse_objectives
    from autocompress.search.trial import TrialSetup

    return TrialSetup(
        model=model,
        train_loader=train,
        val=Dataset(validation),
        objectives=parse_objectives("latency"),
        constraint=AccuracyConstraint(max_drop),
        finetune=Finetune(max_steps=steps),
        target=target,
        **options,
    )


def one_model(name: str, args) -> dict:
    """Part 1 for one model, in this (fresh) process."""
    from autocompress.core import apply_policy
    from autocompress.search.trial import LocalMeasure

    torch.set_num_threads(args.torch_threads)
    model, train, validation = model_and_data(name, args.batch, args.steps, args.val)
    setup = latency_setup(model, train, validation, args.target, max_drop=0.01, steps=args.steps)
    measure = LocalMeasure(setup.val.inputs_file(), args.target)
    row: dict = {"model": name, "input": "x".join(map(str, setup.input_shape))}
    try:
        with tempfile.TemporaryDirectory(prefix="autocompress-scale-") as tmp:
            baseline = setup.measure_baseline(Path(tmp) / "baseline", measure)
            row.update(parameters=baseline.parameters, flops=baseline.flops, baseline_ms=baseline.latency_ms)
            costs = []
            for repeat in range(
                args.repeats
            ):  # the fastest of the repeats: one run can meet a neighbour's load
                started = time.perf_counter()
                compressed = apply_policy(
                    model, the_policy(), train, finetune=setup.finetune, calibration_batches=2
                )
                total = time.perf_counter() - started
                finetune = compressed.history["finetune"]
                exported = setup.export(compressed.module, Path(tmp) / f"candidate{repeat}", total)
                onnx_path = Path(exported.onnx_path)
                started = time.perf_counter()
                measured = measure.candidate(
                    onnx_path, onnx_path.with_name("model.xml"), against=baseline.ir_path, latency=True
                )
                measure_seconds = time.perf_counter() - started
                costs.append(
                    dict(
                        compress=total - finetune["seconds"],
                        finetune_per_1k=1000 * finetune["seconds"] / (finetune["steps"] * args.batch),
                        export=exported.seconds_export,
                        convert=measured.seconds["convert"],
                        infer=measured.seconds["infer"],
                        timed=measured.seconds["timed"],
                        measure_other=measure_seconds - sum(measured.seconds.values()),
                    )
                )
            row.update({key: min(cost[key] for cost in costs) for key in costs[0]})
    finally:
        measure.close()
    row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    row["worker_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return row


def lean_loop(args) -> list[dict]:
    """Part 2: the same policies, alternating a persistent worker and a fresh worker per trial."""
    from autocompress.evaluators.child import RuntimeWorker
    from autocompress.search.trial import LocalMeasure, Trial

    model, train, validation = model_and_data("resnet20", 64, 1, 500)
    setup = latency_setup(
        model, train, validation, args.target, max_drop=0.05, steps=10, early_stop_margin=None
    )
    choices = [(0.0, "l2"), (0.25, "l1"), (0.5, "l2"), (0.375, "l1")]
    policies = [the_policy(*choices[i % len(choices)]) for i in range(args.loop_trials)]

    class FreshWorkerPerTrial(RuntimeWorker):
        """The loop before: a new worker process (and a new compilation of the baseline) per trial."""

        def run(self, jobs, *, timeout=600):
            try:
                return super().run(jobs, timeout=timeout)
            finally:
                self.close()

    inputs = setup.val.inputs_file()
    arms = {
        "persistent worker": LocalMeasure(inputs, args.target),
        "worker per trial": LocalMeasure(inputs, args.target, worker=FreshWorkerPerTrial()),
    }
    rows = []
    with tempfile.TemporaryDirectory(prefix="autocompress-loop-") as tmp:
        baseline = setup.measure_baseline(Path(tmp) / "baseline", arms["persistent worker"])
        trial = Trial(setup, baseline, baseline.logits())
        for index, policy in enumerate(policies):
            order = list(arms.items()) if index % 2 == 0 else list(arms.items())[::-1]
            for arm, measure in order:
                started = time.perf_counter()
                outcome = trial(policy, Path(tmp) / f"{arm.split()[0]}-{index}", measure=measure)
                wall = time.perf_counter() - started
                m = outcome.measurements
                if m is None:
                    print(f"# trial {index} ({arm}) {outcome.state}: {outcome.error}", flush=True)
                    continue
                measuring = m.seconds_infer + (m.seconds_timed or 0)
                rows.append(
                    {
                        "arm": arm,
                        "trial": index,
                        "wall": wall,
                        "compress": m.seconds_compress,
                        "measuring": measuring,
                        "overhead": wall - m.seconds_compress - measuring,
                        "outside_compress": wall - m.seconds_compress,
                    }
                )
    for measure in arms.values():
        measure.close()
    return rows


def print_scale(rows: list[dict]) -> None:
    columns = [
        ("model", "{}"),
        ("input", "{}"),
        ("parameters", "{:,}"),
        ("flops", "{:.3g}"),
        ("baseline_ms", "{:.2f}"),
        ("compress", "{:.2f}"),
        ("finetune_per_1k", "{:.1f}"),
        ("export", "{:.2f}"),
        ("convert", "{:.2f}"),
        ("infer", "{:.2f}"),
        ("timed", "{:.2f}"),
        ("measure_other", "{:.2f}"),
        ("peak_rss_mb", "{:.0f}"),
        ("worker_peak_rss_mb", "{:.0f}"),
    ]
    _table([[fmt.format(row[key]) for key, fmt in columns] for row in rows], [key for key, _ in columns])
    print("\n# growth: each cost as a ratio to the first model's", flush=True)
    first = rows[0]
    keys = ["flops", "compress", "finetune_per_1k", "export", "convert", "infer", "timed", "peak_rss_mb"]
    _table(
        [[row["model"], *(f"{row[k] / first[k]:.1f}x" for k in keys)] for row in rows],
        ["model", *keys],
    )


def print_loop(rows: list[dict]) -> None:
    print("\n# lean loop, zoo ResNet-20: seconds per trial (medians; overhead = wall - compress - measuring)")
    medians = {}
    table = []
    for arm in dict.fromkeys(r["arm"] for r in rows):
        mine = [r for r in rows if r["arm"] == arm]
        medians[arm] = {
            k: statistics.median(r[k] for r in mine) for k in mine[0] if k not in ("arm", "trial")
        }
        table.append([arm, str(len(mine)), *(f"{medians[arm][k]:.2f}" for k in medians[arm])])
    _table(table, ["arm", "trials", *next(iter(medians.values()))])
    if len(medians) == 2:
        (a, ma), (b, mb) = medians.items()
        print(
            f"# overhead, {b} / {a}: {mb['overhead'] / ma['overhead']:.2f}x; outside compression and "
            f"fine-tuning (measuring included): {mb['outside_compress'] / ma['outside_compress']:.2f}x",
            flush=True,
        )


def _table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
    for line in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(line, widths)), flush=True)


def main(argv: list[str] | None = None) -> int:
    from autocompress import Target

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--val", type=int, default=64, help="validation samples")
    parser.add_argument("--torch-threads", type=int, default=2)
    parser.add_argument(
        "--repeats", type=int, default=2, help="trials per model in part 1; the fastest counts"
    )
    parser.add_argument("--loop-trials", type=int, default=8, help="policies in part 2 (0: skip it)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # part 1 for one model, in a fresh process
    args = parser.parse_args(argv)
    args.target = Target(threads=1, precision_hint="f32")
    if args.one:
        print(json.dumps(one_model(args.one, args)), flush=True)
        return 0
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    cpu_name = next((line.split(":", 1)[1].strip() for line in cpu.splitlines() if "Model name" in line), "?")
    print(
        f"# {platform.node()}: {cpu_name}; torch {torch.__version__} ({args.torch_threads} threads); OpenVINO f32 "
        f"hint, 1 thread, batch 1; fine-tune {args.steps} steps x {args.batch} samples; {args.val} validation "
        "samples",
        flush=True,
    )
    rows = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        if name not in MODELS:
            parser.error(f"unknown model {name!r}; choose among {', '.join(MODELS)}")
        command = [sys.executable, __file__, "--one", name, *[a for a in (argv or sys.argv[1:])]]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"# {name} failed:\n{done.stderr[-3000:]}", flush=True)
            continue
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"# {name}: done", flush=True)
    if rows:
        print_scale(rows)
    if args.loop_trials:
        print_loop(lean_loop(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
