"""Export benchmark: does a symbolic batch in ONNX cost latency in the static IR?

export() writes ONNX with a symbolic batch dimension (so values computed from the batch,
such as a class token expanded to it, stay computations and the IR can be reshaped for the
accuracy pass), then converts it to an IR with a static input shape. This compares, in ONE
run and the same alternating latency rounds, that IR against one converted from an ONNX
export with every dimension static, for FP32 and INT8 models (1 thread, f32 hint, batch 1).

    python benchmarks/export.py
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from autocompress import Finetune, LatencyConfig, Policy, Target, apply_policy
from autocompress.data import load_dataset, make_loaders
from autocompress.evaluators.child import ConvertToIR, run_jobs, unwrap
from autocompress.evaluators.runtime import Dataset
from autocompress.export import export_onnx
from autocompress.search.trial import compare_irs
from autocompress.zoo import pretrained


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args(argv)
    splits = load_dataset("mnist5k")
    train, _, test = make_loaders(splits, batch_size=64)
    shape = (1, *splits.input_shape)
    target = Target(threads=1, precision_hint="f32")
    data = Dataset(test)  # kept: its inputs file lives as long as it does
    print(
        "# symbolic-batch ONNX -> static IR vs static ONNX -> static IR; latency ratio < 1: symbolic is faster"
    )
    print(f"{'model':<22} {'symbolic / static':>18} {'outputs max diff':>17}")
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        for name, kwargs in (("resnet20", {"width": 2}), ("mobilenet_cat", {}), ("mnist_cnn", {})):
            model = pretrained(name, "mnist5k", **kwargs)
            for label, policy in (("FP32", Policy()), ("INT8", Policy.quantize(8, 8))):
                module = apply_policy(
                    model, policy, train, finetune=None if label == "FP32" else Finetune(0.1)
                ).module
                irs = []
                for kind in ("symbolic", "static"):
                    onnx_path, xml = (
                        Path(tmp) / f"{name}-{label}-{kind}.onnx",
                        Path(tmp) / f"{name}-{label}-{kind}.xml",
                    )
                    export_onnx(module, shape, onnx_path, symbolic_batch=kind == "symbolic")
                    unwrap(run_jobs([ConvertToIR(str(onnx_path), str(xml), list(shape))])[0])
                    irs.append(str(xml))
                logits, latency = compare_irs(
                    irs,
                    data.inputs_file(),
                    target,
                    LatencyConfig(rounds=args.rounds, min_iterations=200),
                )
                ratio = latency["ratios_to_first"][1] ** -1  # median over rounds of static / symbolic
                print(
                    f"{name + ' ' + label:<22} {ratio:>17.3f}x {float(np.max(np.abs(logits[0] - logits[1]))):>17.2g}"
                )
    print("ratio: median over alternating rounds of symbolic-batch IR latency / static IR latency (same run)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
