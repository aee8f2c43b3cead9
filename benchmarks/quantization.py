"""Quantization benchmark: our QAT policies against FP32, BF16 and NNCF's INT8, side by side.

For each zoo model on MNIST-5k, in ONE run: export FP32 and every compressed variant,
quantize the FP32 IR with NNCF (nncf.quantize, the optional `bench` dependency), then
measure all IRs in the same alternating latency rounds and print accuracy of the
deployed IR, latency ratios, and size.

    python benchmarks/quantization.py                       # ResNet-20 (wide) and MNIST CNN
    python benchmarks/quantization.py --models mnist_cnn --rounds 5
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

from autocompress import Finetune, LatencyConfig, Target, apply_policy, compressible_layers, export
from autocompress.cli import demo_policies
from autocompress.data import load_dataset, make_loaders
from autocompress.evaluators.artifact import ExportedModel
from autocompress.evaluators.runtime import Dataset, OpenVINOAccuracy, OpenVINOLatency
from autocompress.evaluators.size import ModelSize
from autocompress.policies import LayerPolicy, LayerQuant, Policy, TensorQuant
from autocompress.zoo import pretrained

MODELS = {
    "resnet20_wide": ("resnet20", {"width": 2.0}),
    "mnist_cnn": ("mnist_cnn", {}),
}


def policies(layers: list[str]) -> dict[str, Policy]:
    """First and last layers stay 8-bit in the low-bit policies: they are the most sensitive."""
    first, last = layers[0], layers[-1]

    def uniform(bits: int, learn: bool = False) -> LayerPolicy:
        return LayerPolicy(
            quantization=LayerQuant(
                weights=TensorQuant(
                    bits=bits, per_channel=True, range_init="mse" if bits < 8 else "minmax", learn_scale=learn
                ),
                activations=TensorQuant(bits=bits, symmetric=False, learn_scale=learn),
            )
        )

    demo = demo_policies(layers)
    return {
        "ours W8A8": demo["w8a8"],
        "ours mixed (4-bit inner W)": demo["mixed_w4_w8"],
        "ours W4A4 (learned)": Policy(
            default=uniform(4, learn=True), overrides={first: uniform(8), last: uniform(8)}
        ),
        "ours W6A6": Policy(default=uniform(6), overrides={first: uniform(8), last: uniform(8)}),
    }


_NNCF_SCRIPT = textwrap.dedent(
    """
    import sys, numpy as np, openvino as ov, nncf
    fp32_xml, calibration_npy, out_xml, subset, model_type = sys.argv[1:6]
    data = np.load(calibration_npy)
    model = ov.Core().read_model(fp32_xml)
    kind = nncf.ModelType.TRANSFORMER if model_type == "transformer" else None
    quantized = nncf.quantize(
        model, nncf.Dataset(list(data[:, None])), subset_size=int(subset), model_type=kind
    )
    ov.save_model(quantized, out_xml, compress_to_fp16=False)
    """
)


def require_nncf(leave_out: str = "") -> None:
    """Stop before any work when NNCF (the benchmarks' optional `bench` dependency) is missing:
    without this check a run found out only when it reached the NNCF row."""
    if importlib.util.find_spec("nncf") is None:
        raise SystemExit(
            "NNCF is not installed: pip install -c constraints.txt -e '.[bench]'"
            + (f", or {leave_out}" if leave_out else "")
        )


def nncf_int8(
    fp32: ExportedModel, calibration: np.ndarray, directory: Path, subset: int, model_type: str | None = None
) -> ExportedModel:
    """NNCF post-training INT8 of the FP32 IR, in a child process (OpenVINO stays out of this
    one); model_type="transformer": NNCF's placement for attention models."""
    directory.mkdir(parents=True, exist_ok=True)
    npy, xml = directory / "calibration.npy", directory / "model.xml"
    np.save(npy, calibration.astype(np.float32))
    subprocess.run(
        [
            sys.executable,
            "-c",
            _NNCF_SCRIPT,
            str(fp32.ir_path),
            str(npy),
            str(xml),
            str(subset),
            str(model_type),
        ],
        check=True,
        capture_output=True,
    )
    return ExportedModel(onnx_path=fp32.onnx_path, ir_path=xml, input_shape=fp32.input_shape)


def bench_model(key: str, args, workdir: Path) -> list[dict]:
    name, kwargs = MODELS[key]
    splits = load_dataset("mnist5k")
    train, _, test = make_loaders(splits, batch_size=64)
    started = time.perf_counter()
    model = pretrained(name, "mnist5k", epochs=args.baseline_epochs, **kwargs)
    print(f"[{key}] baseline ready in {time.perf_counter() - started:.0f} s", flush=True)

    exported: dict[str, ExportedModel] = {}
    fp32 = export(model, workdir / key / "fp32", input_shape=splits.input_shape)
    exported["FP32 (f32)"] = fp32
    exported["BF16 (runtime default)"] = fp32
    calibration = splits.train.tensors[0][: args.nncf_subset].numpy()
    exported["NNCF INT8 (PTQ)"] = nncf_int8(fp32, calibration, workdir / key / "nncf", args.nncf_subset)
    finetune_seconds = {}
    for label, policy in policies(compressible_layers(model)).items():
        started = time.perf_counter()
        compressed = apply_policy(model, policy, train, finetune=Finetune(epochs=args.finetune_epochs))
        finetune_seconds[label] = time.perf_counter() - started
        exported[label] = export(compressed, workdir / key / label.split()[1].strip("()"))
        print(f"[{key}] {label}: compressed in {finetune_seconds[label]:.0f} s", flush=True)

    f32 = Target(threads=args.threads, precision_hint="f32")
    default = Target(threads=args.threads)
    targets = {label: (f32 if label == "FP32 (f32)" else default) for label in exported}
    data = Dataset(test)
    rows = []
    for label, artifact in exported.items():
        accuracy = OpenVINOAccuracy(data, target=targets[label])(artifact)["accuracy"]
        rows.append({"model": key, "variant": label, "accuracy": accuracy, **ModelSize()(artifact)})
    config = LatencyConfig(rounds=args.rounds, min_iterations=200, min_seconds=args.round_seconds)
    latency = OpenVINOLatency(default, config).compare(exported, targets=targets)
    nncf_ms = latency["NNCF INT8 (PTQ)"]["rounds_ms"]
    for row in rows:
        measured = latency[row["variant"]]
        row.update(
            latency_ms=measured["median_ms"],
            spread=measured["spread"],
            speedup_vs_fp32=1.0 / measured["ratio_to_first"],
            ratio_to_nncf=float(np.median(np.array(measured["rounds_ms"]) / np.array(nncf_ms))),
            runtime_precision=measured["runtime_precision"],
        )
    return rows


def print_table(rows: list[dict]) -> None:
    fp32_accuracy = {r["model"]: r["accuracy"] for r in rows if r["variant"] == "FP32 (f32)"}
    header = f"{'model':<14} {'variant':<32} {'acc OV':>7} {'Δacc pt':>8} {'lat ms':>8} {'spread':>7} {'vs FP32':>8} {'vs NNCF':>8} {'IR bin KiB':>10}  compute precision"
    print(header)
    print("-" * len(header))
    for r in rows:
        precision = ", ".join(f"{layer} {'/'.join(kinds)}" for layer, kinds in r["runtime_precision"].items())
        print(
            f"{r['model']:<14} {r['variant']:<32} {100 * r['accuracy']:>6.2f}% {100 * (r['accuracy'] - fp32_accuracy[r['model']]):>+8.2f} "
            f"{r['latency_ms']:>8.4f} {r['spread']:>6.0%} {r['speedup_vs_fp32']:>7.2f}x {r['ratio_to_nncf']:>8.3f} "
            f"{r['ir_weights_bytes'] / 1024:>10.1f}  {precision}"
        )
    print(
        "\nvs FP32: speedup over the FP32 IR at f32 precision; vs NNCF: latency ratio to NNCF INT8 "
        "(< 1 is faster); medians over alternating rounds in one process; Δacc vs FP32 on the 1000-image test split."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated from {list(MODELS)}")
    parser.add_argument("--baseline-epochs", type=int, default=8)
    parser.add_argument("--finetune-epochs", type=float, default=1.0)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="OpenVINO inference threads (1 = least noise on a shared machine)",
    )
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--round-seconds", type=float, default=1.0)
    parser.add_argument("--nncf-subset", type=int, default=300)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    args = parser.parse_args(argv)
    require_nncf()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-quant-") as tmp:
        for key in args.models.split(","):
            rows += bench_model(key.strip(), args, Path(tmp))
    print()
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
