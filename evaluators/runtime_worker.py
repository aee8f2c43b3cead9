"""OpenVINO / ONNX Runtime side of the evaluators, run in a child process.

    (started by autocompress.evaluators.child) REQUEST.json RESPONSE.json    one request, then exit
    (started by autocompress.evaluators.child) --serve                      requests until stdin closes

REQUEST is {"jobs": [{"op": OP, "args": {...}}, ...]}; RESPONSE gets {"results": [...]}, one entry per job
in order.  A job that raises gives {"op", "error": "ExcType: message", "traceback"} and the later jobs still run.
With --serve each request is one JSON line on stdin and its response one JSON line on stdout (anything else
the runtime prints goes to stderr), and compiled models are kept between requests (see _compiled).

This module must never import torch: a process mixing torch training with several compiled OpenVINO models
has aborted at exit on this machine, so everything runtime-related lives here, and
`autocompress.evaluators.child.run_jobs` starts it in a fresh interpreter by file (see child.py).

All functions take and return plain, JSON-friendly data.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import statistics
import sys
import tempfile
import time
import traceback
from typing import Any

import numpy as np

from autocompress.evaluators.metrics import to_jsonable
from autocompress.evaluators.target import LatencyConfig, Target

# Layer types whose runtime precision tells whether the heavy compute ran in int8 / bf16 / f32.
COMPUTE_LAYER_TYPES = ("Convolution", "GroupConvolution", "Deconvolution", "MatMul", "FullyConnected")

_OV = None
_ORT = None
_CORE = None
# Compiled models by (file, its mtime and size, batch, target): a search's baseline IR is compiled
# once per worker instead of once per trial. A few entries: one model compiled at the
# validation batch and at the target's batch; candidates are new files each trial.
_COMPILED: dict[tuple, tuple[Any, list[int]]] = {}
_COMPILED_ENTRIES = 4


def _ov():
    """Import openvino once, with its telemetry off for this (worker) process's life.

    openvino_telemetry has no opt-out environment variable; it is declared off in CI
    (disable_in_ci=True checks CI=true). Without it, importing openvino creates ~/intel/{stats,
    openvino_ga_cid}, and every openvino.convert_model call spends about 0.35 s on telemetry
    (measured here: 0.52 s vs 0.17 s for a ResNet-20 ONNX file). The worker is a process of its
    own, so CI=true is set for all of it (never in the user's process: run_jobs starts this file).
    """
    global _OV
    if _OV is None:
        os.environ["CI"] = "true"
        import openvino

        _OV = openvino
    return _OV


def _ort():
    """Import onnxruntime once; its telemetry writes $XDG_CACHE_HOME/Microsoft (default ~/.cache) at import."""
    global _ORT
    if _ORT is None:
        if not os.environ.get("XDG_CACHE_HOME"):
            os.environ["XDG_CACHE_HOME"] = os.path.join(tempfile.gettempdir(), "autocompress-runtime-cache")
        import onnxruntime

        onnxruntime.disable_telemetry_events()
        onnxruntime.set_default_logger_severity(3)
        _ORT = onnxruntime
    return _ORT


def _core():
    global _CORE
    if _CORE is None:
        _CORE = _ov().Core()
    return _CORE


# --------------------------------------------------------------------------------------------- helpers


def _compiled(xml_path: str, batch: int, tgt: Target):
    """(compiled model, static input shape) of an IR at ``batch`` on ``tgt``, compiled once while
    the file is unchanged (its mtime and size are in the key)."""
    stat = os.stat(xml_path)
    key = (
        os.path.realpath(xml_path),
        stat.st_mtime_ns,
        stat.st_size,
        int(batch),
        json.dumps(tgt.to_dict(), sort_keys=True),
    )
    hit = _COMPILED.pop(key, None)
    if hit is None:
        core = _core()
        model, shape = _read_with_batch(core, xml_path, batch)
        hit = (core.compile_model(model, tgt.device, tgt.ov_config()), shape)
    _COMPILED[key] = hit  # most recently used last
    while len(_COMPILED) > _COMPILED_ENTRIES:
        del _COMPILED[next(iter(_COMPILED))]
    return hit


def _read_with_batch(core, xml_path: str, batch: int):
    """Read a one-input model and make its input static with batch `batch` (reshaping only if needed)."""
    model = core.read_model(xml_path)
    if len(model.inputs) != 1:
        raise ValueError(f"expected a model with one input, got {len(model.inputs)}")
    ps = model.inputs[0].get_partial_shape()
    if any(d.is_dynamic for d in list(ps)[1:]):
        raise ValueError(
            f"model input shape {ps} is dynamic beyond the batch dim; "
            "convert with convert_to_ir(input_shape=...)"
        )
    shape = [int(batch)] + [int(d.get_length()) for d in list(ps)[1:]]
    if ps.is_dynamic or int(ps[0].get_length()) != batch:
        model.reshape(shape)
    return model, shape


def _type_name(t) -> str:
    return t.to_string() if hasattr(t, "to_string") else str(t)


def _runtime_precision(compiled) -> dict[str, dict[str, int]]:
    summary: dict[str, dict[str, int]] = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        if "layerType" not in rt or "runtimePrecision" not in rt:
            continue
        layer = rt["layerType"].astype(str)
        if layer not in COMPUTE_LAYER_TYPES:
            continue
        prec = rt["runtimePrecision"].astype(str)
        summary.setdefault(layer, {})
        summary[layer][prec] = summary[layer].get(prec, 0) + 1
    return summary


# A timed model cycles through this many different input batches. Latency depends on the
# input here: two INT8 MNIST CNNs (float first conv; an INT8 classifier, or a float one) took
# 50 and 42 us on the same standard-normal input (the search had the first 15% slower), and
# 51 and 50 us cycling through 16 digits; single digits moved the second between 42 and 48 us.
TIMING_SAMPLES = 16
TIMING_INPUT_BYTES = 64 << 20  # fewer batches when they would take more memory than this


def _timing_inputs(shape: list[int], seed: int, inputs_npy: str | None) -> np.ndarray:
    """(k, *shape): the batches a timed model cycles through: consecutive batches of the rows
    of ``inputs_npy`` (the user's data; repeated when there are too few), else seeded
    standard-normal ones."""
    batch_bytes = 4 * math.prod(shape)
    count = max(1, min(TIMING_SAMPLES, TIMING_INPUT_BYTES // max(1, batch_bytes)))
    if inputs_npy is None:
        return np.random.default_rng(seed).standard_normal([count, *shape]).astype(np.float32)
    data = np.load(inputs_npy, mmap_mode="r")
    if list(data.shape[1:]) != list(shape[1:]):
        raise ValueError(
            f"inputs {inputs_npy} have sample shape {list(data.shape[1:])}, model expects {shape[1:]}"
        )
    if len(data) == 0:
        raise ValueError(f"{inputs_npy} holds no samples")
    count = min(count, max(1, len(data) // shape[0]))
    rows = np.arange(count * shape[0]) % len(data)
    return np.ascontiguousarray(data[rows], dtype=np.float32).reshape(count, *shape)


def _cycling(request: Any, inputs: np.ndarray) -> tuple[Any, Any]:
    """A call that copies the next of ``inputs`` into the request's input and runs it, as a
    deployed model is fed new data each call (the copy is part of every model's time alike),
    and what must stay alive while it is used."""
    buffer = np.array(inputs[0])
    tensor = _ov().Tensor(buffer)  # shares buffer's memory
    request.set_input_tensor(tensor)
    batches = itertools.cycle(inputs)

    def run() -> None:
        np.copyto(buffer, next(batches))
        request.infer()

    return run, (buffer, tensor)


def _timed_round(run, min_iterations: int, min_seconds: float) -> tuple[float, int]:
    """One round: at least min_iterations calls and at least min_seconds. Returns (seconds per call, calls)."""
    n = 0
    clock = time.perf_counter
    t0 = clock()
    while True:
        run()
        n += 1
        if n >= min_iterations and clock() - t0 >= min_seconds:
            break
    return (clock() - t0) / n, n


def _alternating_rounds(runs: list, cfg: LatencyConfig) -> tuple[list[list[float]], list[int]]:
    """Warm every model up, then cfg.rounds rounds over all models, rotating the order each round."""
    for run in runs:
        for _ in range(cfg.warmup_iterations):
            run()
    k = len(runs)
    per_round = [[0.0] * cfg.rounds for _ in range(k)]
    iterations = [0] * k
    for r in range(cfg.rounds):
        for i in [(r + j) % k for j in range(k)]:
            sec, n = _timed_round(runs[i], cfg.min_iterations, cfg.min_seconds)
            per_round[i][r] = sec * 1e3
            iterations[i] += n
    return per_round, iterations


def _summaries(per_round: list[list[float]], iterations: list[int]) -> tuple[list[dict], list[float] | None]:
    out = []
    for rounds_ms, n in zip(per_round, iterations):
        med = statistics.median(rounds_ms)
        out.append(
            {
                "median_ms": med,
                "min_ms": min(rounds_ms),
                "max_ms": max(rounds_ms),
                "spread": (max(rounds_ms) - min(rounds_ms)) / med if med > 0 else 0.0,
                "rounds_ms": rounds_ms,
                "iterations": n,
            }
        )
    ratios = None
    if len(per_round) > 1:
        first = per_round[0]
        per_round_ratios = [[a / b for a, b in zip(ms, first)] for ms in per_round]
        ratios = [statistics.median(r) for r in per_round_ratios]
        for summary, r in zip(out, per_round_ratios):
            summary["ratio_interval"], summary["ratio_confidence"] = median_interval(r)
    return out, ratios


def median_interval(values: list[float], confidence: float = 0.9) -> tuple[list[float] | None, float | None]:
    """A distribution-free interval for the median of what ``values`` sample: the k-th smallest
    to the k-th largest, with the largest k whose coverage 1 - 2 P(Binomial(n, 1/2) < k) is at
    least ``confidence`` (k = 1 when none is: then its own, lower coverage is returned).
    Five alternating rounds give [min, max] at 93.75 %. (None, None) for one value."""
    n = len(values)
    if n < 2:
        return None, None

    def coverage(k: int) -> float:
        return 1.0 - 2.0 * sum(math.comb(n, i) for i in range(k)) / 2.0**n

    k = 1
    while k + 1 <= n // 2 and coverage(k + 1) >= confidence:
        k += 1
    ordered = sorted(values)
    return [ordered[k - 1], ordered[n - k]], coverage(k)


# --------------------------------------------------------------------------------------------- jobs


def runtime_info() -> dict:
    """Versions and the time this process spent importing openvino."""
    t0 = time.perf_counter()
    ov = _ov()
    return {
        "openvino": ov.get_version(),
        "python": sys.version.split()[0],
        "pid": os.getpid(),
        "openvino_import_seconds": time.perf_counter() - t0,
        "devices": ov.Core().available_devices,
        "torch_imported": "torch" in sys.modules,
    }


def convert_to_ir(
    onnx_path: str, xml_path: str, input_shape: list[int], compress_to_fp16: bool = False
) -> dict:
    """ONNX -> OpenVINO IR with a static input shape (dynamic shapes cost FP32 2-8 %, INT8 20-50 % here).

    openvino.convert_model (not Core.read_model) runs the offline transformations that fold
    QDQ weights into int8 constants: the .bin is ~4x smaller for an INT8 model.
    """
    ov = _ov()
    t0 = time.perf_counter()
    model = ov.convert_model(onnx_path, input=[int(d) for d in input_shape])
    if len(model.inputs) != 1:
        raise ValueError(f"expected a model with one input, got {len(model.inputs)}")
    os.makedirs(os.path.dirname(os.path.abspath(xml_path)), exist_ok=True)
    ov.save_model(model, xml_path, compress_to_fp16=bool(compress_to_fp16))
    seconds = time.perf_counter() - t0
    bin_path = os.path.splitext(xml_path)[0] + ".bin"
    return {
        "xml": xml_path,
        "bin_bytes": os.path.getsize(bin_path) if os.path.exists(bin_path) else 0,
        "xml_bytes": os.path.getsize(xml_path),
        "seconds": seconds,
    }


def infer(
    xml_path: str, inputs_npy: str, outputs_npy: str, target: dict | None = None, batch_size: int = 256
) -> dict:
    """Run the IR on all inputs (N, ...) float32 in batches, save the first output (logits) to outputs_npy.

    The model is reshaped to batch min(batch_size, N); the last partial batch is zero-padded and the padding
    dropped, so one compiled model serves every batch.  Uses target's device and config (precision hint
    included), so accuracy is measured on what is deployed.
    """
    tgt = Target.from_dict(target or {})
    t0 = time.perf_counter()
    data = np.load(inputs_npy).astype(np.float32, copy=False)
    n = int(data.shape[0])
    if n == 0:
        raise ValueError(f"{inputs_npy} holds no samples")
    bs = max(1, min(int(batch_size), n))
    compiled, shape = _compiled(xml_path, bs, tgt)
    if list(data.shape[1:]) != shape[1:]:
        raise ValueError(
            f"inputs {inputs_npy} have sample shape {list(data.shape[1:])}, model expects {shape[1:]}"
        )
    request = compiled.create_infer_request()
    outs = []
    for start in range(0, n, bs):
        chunk = data[start : start + bs]
        m = chunk.shape[0]
        if m < bs:
            chunk = np.concatenate([chunk, np.zeros((bs - m,) + chunk.shape[1:], np.float32)])
        request.infer({0: np.ascontiguousarray(chunk)})
        outs.append(np.array(request.get_output_tensor(0).data[:m], copy=True))
    logits = np.concatenate(outs)
    os.makedirs(os.path.dirname(os.path.abspath(outputs_npy)), exist_ok=True)
    np.save(outputs_npy, logits)
    return {"n": n, "seconds": time.perf_counter() - t0, "batch_size": bs, "output_shape": list(logits.shape)}


def measure_latency(
    xml_paths: list[str],
    target: dict | list[dict] | None = None,
    config: dict | None = None,
    inputs_npy: str | None = None,
) -> dict:
    """Latency of one or more IRs, measured in alternating rounds (see LatencyConfig).

    Every model is compiled with its target's ov_config() on its device at its batch and driven through one
    infer request, fed a new input each call (cycling through batches of inputs_npy, else seeded random ones:
    see TIMING_SAMPLES). ``target`` is one target
    for all models or a list with one per model (e.g. the same IR at f32 and at bf16, compared fairly).
    """
    if isinstance(xml_paths, str) or not xml_paths:
        raise ValueError("xml_paths must be a non-empty list of paths")
    targets = target if isinstance(target, list) else [target] * len(xml_paths)
    if len(targets) != len(xml_paths):
        raise ValueError(
            f"got {len(targets)} targets for {len(xml_paths)} models; pass one target or one per model"
        )
    targets = [Target.from_dict(t or {}) for t in targets]
    cfg = LatencyConfig.from_dict(config or {})
    runs, info, keep = [], [], []
    for path, tgt in zip(xml_paths, targets):
        t0 = time.perf_counter()
        compiled, shape = _compiled(path, tgt.batch, tgt)
        compile_s = time.perf_counter() - t0
        request = compiled.create_infer_request()
        run, alive = _cycling(request, _timing_inputs(shape, cfg.seed, inputs_npy))
        keep.append((compiled, alive))
        runs.append(run)
        info.append(
            {
                "xml": path,
                "target": tgt.to_dict(),
                "input_shape": shape,
                "compile_seconds": compile_s,
                "inference_precision": _type_name(compiled.get_property("INFERENCE_PRECISION_HINT")),
                "runtime_precision": _runtime_precision(compiled),
            }
        )
    timed_from = time.perf_counter()
    per_round, iterations = _alternating_rounds(runs, cfg)
    timed_seconds = time.perf_counter() - timed_from
    stats, ratios = _summaries(per_round, iterations)
    models = [{**meta, **s} for meta, s in zip(info, stats)]
    out: dict[str, Any] = {"models": models, "config": cfg.to_dict(), "timed_seconds": timed_seconds}
    if ratios is not None:
        out["ratios_to_first"] = ratios
    return out


def _fast_mean(values: list[float], share: float = 0.5) -> float:
    """Mean of the fastest ``share`` of the runs. A run whose threads a neighbour's load
    preempted adds a spike (milliseconds on a 10 us kernel were seen here with 4 loaded
    processes on 2 cores), which this drops even when a third of the runs are hit; a run
    reports whole microseconds, and the mean over many runs resolves below that."""
    ordered = sorted(values)
    kept = ordered[: max(1, round(len(ordered) * share))]
    return sum(kept) / len(kept)


def _per_inference_us(samples: list[float], runs: int) -> float:
    """A node's time per inference: its fast mean over the inferences it ran in, times the
    share of the ``runs`` it ran in. OpenVINO ran the MNIST CNN's INT8 input quantization in
    1 or 2 of 201 inferences here; one saved profile charged it 17.6 us in every one (a
    fifth of the model), which doubled its first conv's INT8 time in the latency model and
    put 4 of the search's 10 trials outside +-10% (2 when replayed without it)."""
    return _fast_mean(samples) * min(1.0, len(samples) / runs) if samples else 0.0


def profile_layers(
    xml_paths: list[str],
    target: dict | None = None,
    iterations: int = 200,
    rounds: int = 4,
    warmup_iterations: int = 20,
    inputs_npy: str | None = None,
) -> dict:
    """Per-node execution times of IRs (or ONNX files) from OpenVINO's profiling (PERF_COUNT).

    Each model is compiled and run alone: with many models compiled at once and alternated, the
    per-node times here grew by 1.3-2x (and their sum passed the measured latency) while the
    latency measured with profiling off did not. So the models run one after the other, in
    ``rounds`` passes (each compiling the model again) so that a burst of neighbour load during one
    pass does not decide a model's profile; each pass runs ``iterations`` / ``rounds`` times. One
    run's times are whole microseconds (a small conv takes 5-50 us here), so they are averaged over
    runs. Only nodes that executed are returned, in execution order, each with the names of the
    original (IR) layers the plugin fused into it: what maps a kernel back to the model's layers.
    """
    ov = _ov()
    if isinstance(xml_paths, str) or not xml_paths:
        raise ValueError("xml_paths must be a non-empty list of paths")
    for name, value in (("iterations", iterations), ("rounds", rounds)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    tgt = Target.from_dict(target or {})
    core = ov.Core()
    per_pass = -(-iterations // rounds)
    times: list[dict[str, list[float]]] = [{} for _ in xml_paths]
    meta: list[dict[str, tuple[str, str]]] = [{} for _ in xml_paths]
    fused: list[dict[str, dict[str, str]]] = [{} for _ in xml_paths]
    for _ in range(rounds):
        for index, path in enumerate(xml_paths):
            model, shape = _read_with_batch(core, path, tgt.batch)
            compiled = core.compile_model(model, tgt.device, {**tgt.ov_config(), "PERF_COUNT": "YES"})
            for op in compiled.get_runtime_model().get_ordered_ops():
                rt = op.get_rt_info()
                fused[index][op.get_friendly_name()] = {
                    key: rt[key].astype(str)
                    for key in ("originalLayersNames", "runtimePrecision")
                    if key in rt
                }
            request = compiled.create_infer_request()
            run, alive = _cycling(request, _timing_inputs(shape, 0, inputs_npy))
            for _ in range(int(warmup_iterations)):
                run()
            for _ in range(per_pass):
                run()
                for info in request.get_profiling_info():
                    if info.status != info.Status.EXECUTED:
                        continue
                    times[index].setdefault(info.node_name, []).append(info.real_time.total_seconds() * 1e6)
                    meta[index].setdefault(info.node_name, (info.node_type, info.exec_type))
            del request, compiled, run, alive
    out = []
    total_runs = per_pass * rounds
    for index, path in enumerate(xml_paths):
        nodes = []
        for name, samples in times[index].items():
            node_type, exec_type = meta[index][name]
            rt = fused[index].get(name, {})
            original = [n for n in rt.get("originalLayersNames", "").split(",") if n]
            nodes.append(
                {
                    "name": name,
                    "node_type": node_type,
                    "exec_type": exec_type,
                    "runtime_precision": rt.get("runtimePrecision"),
                    "mean_us": _per_inference_us(samples, total_runs),
                    "median_us": statistics.median(samples),
                    "runs": len(samples),
                    "original_names": original or [name],
                }
            )
        out.append({"xml": path, "nodes": nodes, "total_us": sum(n["mean_us"] for n in nodes)})
    return {"models": out, "target": tgt.to_dict(), "iterations": total_runs, "rounds": rounds}


def measure_ort_latency(
    onnx_paths: list[str],
    threads: int | None = None,
    config: dict | None = None,
    inputs_npy: str | None = None,
    batch: int = 1,
) -> dict:
    """The same alternating-round protocol with onnxruntime (CPUExecutionProvider)."""
    ort = _ort()
    cfg = LatencyConfig.from_dict(config or {})
    if isinstance(onnx_paths, str) or not onnx_paths:
        raise ValueError("onnx_paths must be a non-empty list of paths")
    runs, info = [], []
    for path in onnx_paths:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads) if threads else 0
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        t0 = time.perf_counter()
        sess = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
        create_s = time.perf_counter() - t0
        inp = sess.get_inputs()[0]
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
        shape[0] = int(batch)
        feeds = itertools.cycle([{inp.name: x} for x in _timing_inputs(shape, cfg.seed, inputs_npy)])
        runs.append(lambda sess=sess, feeds=feeds: sess.run(None, next(feeds)))
        info.append({"onnx": path, "input_shape": shape, "session_seconds": create_s})
    per_round, iterations = _alternating_rounds(runs, cfg)
    stats, ratios = _summaries(per_round, iterations)
    out: dict[str, Any] = {
        "models": [{**meta, **s} for meta, s in zip(info, stats)],
        "threads": threads,
        "config": cfg.to_dict(),
        "onnxruntime": ort.__version__,
    }
    if ratios is not None:
        out["ratios_to_first"] = ratios
    return out


OPS = {
    "runtime_info": runtime_info,
    "convert_to_ir": convert_to_ir,
    "infer": infer,
    "measure_latency": measure_latency,
    "profile_layers": profile_layers,
    "measure_ort_latency": measure_ort_latency,
}


def run_job(job: dict) -> dict:
    op = job.get("op") if isinstance(job, dict) else None
    try:
        if op not in OPS:
            raise ValueError(f"unknown op {op!r}; allowed: {sorted(OPS)}")
        args = job.get("args") or {}
        if not isinstance(args, dict):
            raise ValueError(f"args of {op} must be an object, got {type(args).__name__}")
        return OPS[op](**args)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, the next jobs still run
        return {
            "op": op,
            "error": f"{type(exc).__name__}: {exc}".strip(),
            "traceback": traceback.format_exc(),
        }


def serve(requests, responses) -> int:
    """Answer requests (one JSON line each) until ``requests`` ends; one JSON line per response."""
    for line in requests:
        try:
            jobs = json.loads(line)["jobs"]
            if not isinstance(jobs, list):
                raise TypeError("jobs is not a list")
        except (ValueError, KeyError, TypeError) as error:
            response: dict[str, Any] = {"error": f'expected {{"jobs": [...]}} on one line: {error}'}
        else:
            response = {"results": [to_jsonable(run_job(job)) for job in jobs]}
        responses.write(json.dumps(response) + "\n")
        responses.flush()
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv == ["--serve"]:
        # The protocol gets a private copy of stdout; fd 1 then points at stderr, so nothing the
        # runtime or a library prints can corrupt a response.
        responses = os.fdopen(os.dup(1), "w", encoding="utf-8")
        os.dup2(2, 1)
        return serve(sys.stdin, responses)
    if len(argv) != 2:
        print(
            "usage: python -m autocompress.evaluators.runtime_worker REQUEST.json RESPONSE.json",
            file=sys.stderr,
        )
        return 2
    request_path, response_path = argv
    with open(request_path, encoding="utf-8") as f:
        request = json.load(f)
    jobs = request.get("jobs", []) if isinstance(request, dict) else None
    if not isinstance(jobs, list):
        print(f'{request_path}: expected {{"jobs": [...]}}', file=sys.stderr)
        return 2
    results = [to_jsonable(run_job(job)) for job in jobs]
    tmp = response_path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"results": results}, f)
    os.replace(tmp, response_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
