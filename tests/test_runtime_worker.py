"""The OpenVINO / ONNX Runtime worker: runs in a child process that never imports torch.

torch is used here only to build and export tiny ONNX models and reference outputs; every runtime call goes
through autocompress.evaluators.child.run_jobs.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from autocompress.evaluators.child import (
    ConvertToIR,
    Infer,
    MeasureLatency,
    MeasureOrtLatency,
    ProfileLayers,
    RuntimeInfo,
    RuntimeWorker,
    run_jobs,
    unwrap,
)
from autocompress.evaluators.runtime_worker import (
    TIMING_SAMPLES,
    _per_inference_us,
    _timing_inputs,
    median_interval,
)
from autocompress.evaluators.target import LatencyConfig, Target

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = {"warmup_iterations": 3, "rounds": 3, "min_iterations": 10, "min_seconds": 0.01}
F32 = {"precision_hint": "f32"}


class SmallNet(nn.Module):
    """Conv net for [N,1,28,28]; with quant=True, 8-bit fake-quant (QDQ) on every conv input and weight."""

    def __init__(self, quant: bool = False):
        super().__init__()
        self.quant = quant
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1, stride=2)
        self.fc = nn.Linear(32 * 14 * 14, 10)

    def _conv(self, conv: nn.Conv2d, x, signed: bool):
        w = conv.weight
        if self.quant:
            if signed:
                x = torch.fake_quantize_per_tensor_affine(x, 4.0 / 127, 0, -128, 127)
            else:
                x = torch.fake_quantize_per_tensor_affine(x, 4.0 / 255, 0, 0, 255)
            scale = (w.detach().abs().amax(dim=(1, 2, 3)) / 127).clamp_min(1e-8)
            zero = torch.zeros(w.shape[0], dtype=torch.int32)
            w = torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -128, 127)
        return F.conv2d(x, w, conv.bias, conv.stride, conv.padding)

    def forward(self, x):
        x = F.relu(self._conv(self.conv1, x, signed=True))
        x = F.relu(self._conv(self.conv2, x, signed=False))
        return self.fc(torch.flatten(x, 1))


def _export(model: nn.Module, path: str) -> str:
    with warnings.catch_warnings():  # the legacy (TorchScript) exporter warns on every call
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model.eval(),
            (torch.randn(1, 1, 28, 28),),
            path,
            dynamo=False,
            opset_version=17,
            input_names=["x"],
            output_names=["logits"],
            dynamic_axes={"x": {0: "batch"}},
        )
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """fp32 and QDQ ONNX models, converted to static-shape IR in one worker call."""
    d = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    fp32 = SmallNet()
    qdq = SmallNet(quant=True)
    qdq.load_state_dict(fp32.state_dict())
    paths = {"fp32_onnx": _export(fp32, str(d / "fp32.onnx")), "qdq_onnx": _export(qdq, str(d / "qdq.onnx"))}
    paths["fp32_xml"], paths["qdq_xml"] = str(d / "fp32.xml"), str(d / "qdq.xml")
    results = run_jobs(
        [
            ConvertToIR(onnx_path=paths["fp32_onnx"], xml_path=paths["fp32_xml"], input_shape=[1, 1, 28, 28]),
            ConvertToIR(onnx_path=paths["qdq_onnx"], xml_path=paths["qdq_xml"], input_shape=[1, 1, 28, 28]),
        ]
    )
    paths["convert"] = [unwrap(r) for r in results]
    return {"dir": d, "fp32": fp32, "qdq": qdq, **paths}


def _parameter_shape(xml_path: str) -> str:
    for layer in ET.parse(xml_path).getroot().iter("layer"):
        if layer.get("type") == "Parameter":
            return layer.find("data").get("shape")
    raise AssertionError("no Parameter layer")


def _constant_types(xml_path: str) -> set[str]:
    return {
        layer.find("data").get("element_type")
        for layer in ET.parse(xml_path).getroot().iter("layer")
        if layer.get("type") == "Const"
    }


# ------------------------------------------------------------------------------------------- Target


def test_target_roundtrip_and_ov_config():
    t = Target(threads=2, precision_hint="bf16", batch=4)
    assert Target.from_dict(t.to_dict()) == t
    assert t.ov_config() == {
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": "1",
        "INFERENCE_NUM_THREADS": "2",
        "INFERENCE_PRECISION_HINT": "bf16",
    }
    assert Target().ov_config() == {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1"}
    assert LatencyConfig.from_dict(LatencyConfig(rounds=7).to_dict()).rounds == 7


@pytest.mark.parametrize(
    "bad, field",
    [
        ({"precison_hint": "f32"}, "precison_hint"),
        ({"precision_hint": "int8"}, "precision_hint"),
        ({"threads": 0}, "threads"),
        ({"batch": True}, "batch"),
        ({"device": ""}, "device"),
        ({"device": "TPU"}, "device must be an OpenVINO device name: CPU, GPU, NPU"),
        ({"device": "cpu"}, "device"),  # OpenVINO's names are case-sensitive
        ({"device": "AUTO:TPU"}, "device"),
        ({"threads": 2**31}, "threads must be an int from 1 to 2147483647"),  # OpenVINO's int32
        ({"num_streams": 2**31}, "num_streams"),
    ],
)
def test_target_validation(bad, field):
    with pytest.raises(ValueError, match=field):
        Target.from_dict(bad)
    for seconds in (-1, math.nan, math.inf):
        with pytest.raises(ValueError, match="min_seconds must be a finite number"):
            LatencyConfig.from_dict({"min_seconds": seconds})


@pytest.mark.parametrize(
    "device", ["CPU", "GPU", "GPU.1", "NPU", "AUTO", "AUTO:GPU,CPU", "AUTO:-CPU", "BATCH:GPU(4)"]
)
def test_target_takes_openvino_device_names(device):
    assert Target(device=device, threads=2**31 - 1).device == device


# ------------------------------------------------------------------------------------------- worker


def test_worker_never_imports_torch(models):
    # The worker process as run_jobs starts it: after OpenVINO and ONNX Runtime work, still no torch.
    results = run_jobs(
        [
            MeasureLatency([models["fp32_xml"]], {}, FAST),
            MeasureOrtLatency([models["fp32_onnx"]], 1, FAST),
            RuntimeInfo(),
        ]
    )
    assert [unwrap(r) for r in results][-1]["torch_imported"] is False


def test_convert_to_ir_is_static(models):
    for key in ("fp32", "qdq"):
        res = models["convert"][0 if key == "fp32" else 1]
        assert res["bin_bytes"] > 0 and res["xml_bytes"] > 0 and res["seconds"] > 0
        assert _parameter_shape(models[f"{key}_xml"]) == "1,1,28,28"
    # save_model stores the fake-quantized conv weights as int8 constants; the fp32 IR keeps f32 (no fp16)
    assert _constant_types(models["qdq_xml"]) >= {"i8", "f32"}
    assert "i8" not in _constant_types(models["fp32_xml"]) and "f16" not in _constant_types(
        models["fp32_xml"]
    )


def test_infer_matches_torch_with_remainder(models, tmp_path):
    x = np.random.default_rng(1).standard_normal((37, 1, 28, 28)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    results = run_jobs(
        [
            Infer(
                xml_path=models["fp32_xml"],
                inputs_npy=str(tmp_path / "x.npy"),
                outputs_npy=str(tmp_path / "y16.npy"),
                target=F32,
                batch_size=16,
            ),
            Infer(
                xml_path=models["fp32_xml"],
                inputs_npy=str(tmp_path / "x.npy"),
                outputs_npy=str(tmp_path / "y256.npy"),
                target=F32,
            ),
            Infer(
                xml_path=models["qdq_xml"],
                inputs_npy=str(tmp_path / "x.npy"),
                outputs_npy=str(tmp_path / "q.npy"),
                target=F32,
                batch_size=16,
            ),
        ]
    )
    r16, r256, rq = (unwrap(r) for r in results)
    assert r16["n"] == 37 and r16["batch_size"] == 16 and r256["batch_size"] == 37
    with torch.no_grad():
        ref = models["fp32"](torch.from_numpy(x)).numpy()
        ref_q = models["qdq"](torch.from_numpy(x)).numpy()
    for name in ("y16", "y256"):
        y = np.load(tmp_path / f"{name}.npy")
        assert y.shape == (37, 10)
        np.testing.assert_allclose(y, ref, atol=1e-4, rtol=1e-4)
    # int8 kernels vs torch's float emulation of fake quant: same argmax nearly everywhere
    q = np.load(tmp_path / "q.npy")
    assert q.shape == (37, 10) and (q.argmax(1) == ref_q.argmax(1)).mean() >= 0.9


def test_measure_latency_alternating_rounds(models):
    res = unwrap(
        run_jobs(
            [
                MeasureLatency(
                    xml_paths=[models["fp32_xml"], models["qdq_xml"]],
                    target={**F32, "threads": 2},
                    config=FAST,
                )
            ]
        )[0]
    )
    assert res["config"]["rounds"] == 3
    fp32, qdq = res["models"]
    assert fp32["target"]["precision_hint"] == qdq["target"]["precision_hint"] == "f32"
    for m in (fp32, qdq):
        assert m["median_ms"] > 0 and m["min_ms"] <= m["median_ms"] <= m["max_ms"]
        assert len(m["rounds_ms"]) == 3 and m["iterations"] >= 3 * FAST["min_iterations"]
        assert m["spread"] >= 0
    assert res["ratios_to_first"][0] == pytest.approx(1.0)
    assert res["ratios_to_first"][1] > 0
    assert fp32["runtime_precision"]["Convolution"] == {"f32": 2}
    assert fp32["runtime_precision"]["FullyConnected"] == {"f32": 1}
    assert set(qdq["runtime_precision"]["Convolution"]) <= {"u8", "i8"}, qdq["runtime_precision"]
    assert fp32["inference_precision"] == "f32"


def test_measure_latency_takes_one_target_per_model(models):
    res = unwrap(
        run_jobs(
            [
                MeasureLatency(
                    xml_paths=[models["fp32_xml"], models["fp32_xml"]],
                    target=[F32, {"precision_hint": "bf16"}],
                    config=FAST,
                )
            ]
        )[0]
    )
    f32, bf16 = res["models"]
    assert f32["inference_precision"] == "f32" and bf16["inference_precision"] == "bf16"
    assert bf16["runtime_precision"]["Convolution"] == {"bf16": 2}
    with pytest.raises(RuntimeError, match="got 3 targets for 2 models"):
        unwrap(
            run_jobs([MeasureLatency(xml_paths=[models["fp32_xml"]] * 2, target=[F32] * 3, config=FAST)])[0]
        )


def test_measure_latency_batch_and_inputs(models, tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((3, 1, 28, 28), np.float32))
    res = unwrap(
        run_jobs(
            [
                MeasureLatency(
                    xml_paths=[models["fp32_xml"]],
                    target={"batch": 4},
                    config=FAST,
                    inputs_npy=str(tmp_path / "x.npy"),
                )
            ]
        )[0]
    )
    assert res["models"][0]["input_shape"] == [4, 1, 28, 28] and "ratios_to_first" not in res


def test_timed_models_cycle_through_batches_of_the_data(tmp_path):
    data = np.arange(40, dtype=np.float32).reshape(40, 1, 1, 1)
    np.save(tmp_path / "x.npy", data)
    batches = _timing_inputs([4, 1, 1, 1], 0, str(tmp_path / "x.npy"))
    # as many whole batches as the data hold (at most TIMING_SAMPLES)
    assert batches.shape == (10, 4, 1, 1, 1)
    assert batches.reshape(-1).tolist() == list(range(40))  # consecutive rows, each once
    few = _timing_inputs([3, 1, 1, 1], 0, str(tmp_path / "x.npy"))
    assert len(few) == 13 and len({float(b.sum()) for b in few}) == 13
    one = np.ones((2, 1, 1, 1), np.float32)
    np.save(tmp_path / "one.npy", one)
    assert _timing_inputs([4, 1, 1, 1], 0, str(tmp_path / "one.npy")).shape == (1, 4, 1, 1, 1)  # rows repeat
    drawn = _timing_inputs([1, 3, 8, 8], 5, None)
    assert drawn.shape == (TIMING_SAMPLES, 1, 3, 8, 8) and not np.allclose(drawn[0], drawn[1])
    assert _timing_inputs([1 << 21, 3, 8, 8], 5, None).shape[0] == 1  # a batch near the memory cap: one
    with pytest.raises(ValueError, match=r"sample shape \[1, 1, 1\], model expects \[1, 28, 28\]"):
        _timing_inputs([1, 1, 28, 28], 0, str(tmp_path / "x.npy"))


def test_ort_latency(models):
    res = unwrap(
        run_jobs(
            [MeasureOrtLatency(onnx_paths=[models["fp32_onnx"], models["qdq_onnx"]], threads=2, config=FAST)]
        )[0]
    )
    assert [m["median_ms"] > 0 for m in res["models"]] == [True, True]
    assert len(res["models"][1]["rounds_ms"]) == 3 and res["ratios_to_first"][0] == pytest.approx(1.0)


def test_ort_latency_on_the_data(models, tmp_path):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((5, 1, 28, 28)).astype(np.float32))
    res = unwrap(
        run_jobs(
            [
                MeasureOrtLatency(
                    [models["fp32_onnx"]], threads=1, config=FAST, inputs_npy=str(tmp_path / "x.npy")
                )
            ]
        )[0]
    )
    assert res["models"][0]["median_ms"] > 0 and res["models"][0]["input_shape"] == [1, 1, 28, 28]


def test_job_error_does_not_stop_later_jobs(tmp_path):
    results = run_jobs(
        [
            Infer(
                xml_path=str(tmp_path / "missing.xml"),
                inputs_npy=str(tmp_path / "no.npy"),
                outputs_npy=str(tmp_path / "y.npy"),
            ),
            {"op": "no_such_op", "args": {}},
            RuntimeInfo(),
        ]
    )
    assert len(results) == 3
    assert results[0]["error"].startswith("FileNotFoundError") and "Traceback" in results[0]["traceback"]
    with pytest.raises(RuntimeError, match="infer failed in the OpenVINO worker: FileNotFoundError"):
        unwrap(results[0])
    assert "unknown op" in results[1]["error"]
    assert unwrap(results[2])["openvino"]


def _fake_worker(tmp_path, monkeypatch, body: str) -> None:
    (tmp_path / "fake_worker.py").write_text(textwrap.dedent(body))
    monkeypatch.setattr("autocompress.evaluators.child.WORKER_FILE", str(tmp_path / "fake_worker.py"))


def test_crashing_child_raises_readable_error(tmp_path, monkeypatch):
    _fake_worker(
        tmp_path,
        monkeypatch,
        """
        import os, sys
        print("boom: corrupted size vs. prev_size", file=sys.stderr, flush=True)
        os._exit(134)
    """,
    )
    with pytest.raises(RuntimeError, match=r"(?s)exited with code 134.*corrupted size"):
        run_jobs([RuntimeInfo()])


def test_hanging_child_times_out(tmp_path, monkeypatch):
    _fake_worker(
        tmp_path,
        monkeypatch,
        """
        import sys, time
        print("still compiling", file=sys.stderr, flush=True)
        time.sleep(30)
    """,
    )
    with pytest.raises(RuntimeError, match="timed out after 1"):
        run_jobs([], timeout=1)


KILLED_PARENT = textwrap.dedent("""
    import sys
    from autocompress.evaluators.child import MeasureLatency, run_jobs

    config = {"warmup_iterations": 1, "rounds": 1000, "min_iterations": 1, "min_seconds": 1.0}
    run_jobs([MeasureLatency([sys.argv[1]], {}, config)])  # runs for ~1000 s unless killed
""")


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    if int(stat.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    return found


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc to find the worker")
def test_the_worker_dies_with_a_killed_parent(models):
    parent = subprocess.Popen([sys.executable, "-c", KILLED_PARENT, models["fp32_xml"]])
    try:
        deadline = time.monotonic() + 60
        while not _children(parent.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        workers = _children(parent.pid)
        assert workers, "the worker did not start"
        time.sleep(1.0)  # into its measurement
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 15
        while (
            any(os.path.exists(f"/proc/{w}") and _alive(w) for w in workers) and time.monotonic() < deadline
        ):
            time.sleep(0.1)
        assert not any(os.path.exists(f"/proc/{w}") and _alive(w) for w in workers), (
            "the worker outlived its parent"
        )
    finally:
        parent.kill()


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# -- the persistent worker (one per search) ---------------------------------------------------------


def test_persistent_worker_keeps_one_process_and_compiled_models(models):
    """One process answers every request, and a model timed again (a search's baseline) is
    not compiled again while its file is unchanged; rewriting the file recompiles it."""
    with RuntimeWorker() as worker:
        job = MeasureLatency([models["fp32_xml"], models["qdq_xml"]], F32, FAST)
        first, info1 = worker.run([job, RuntimeInfo()])
        second, info2 = worker.run([job, RuntimeInfo()])
        assert unwrap(info1)["pid"] == unwrap(info2)["pid"] and worker.started == 1
        assert not unwrap(info1)["torch_imported"]
        compile_first = [m["compile_seconds"] for m in unwrap(first)["models"]]
        compile_again = [m["compile_seconds"] for m in unwrap(second)["models"]]
        assert all(again < 0.2 * once for again, once in zip(compile_again, compile_first)), (
            compile_first,
            compile_again,
        )
        os.utime(models["qdq_xml"], ns=(time.time_ns(), time.time_ns()))  # a new file in its place
        third = unwrap(worker.run([job])[0])
        assert third["models"][1]["compile_seconds"] > 0.2 * compile_first[1]
        assert third["models"][0]["compile_seconds"] < 0.2 * compile_first[0]
    assert worker._process is None  # closed


def test_persistent_worker_replaces_a_killed_worker(models):
    """A worker killed between requests (OOM killer, a user's kill) is replaced and the
    request answered; nothing of the kill reaches the caller."""
    with RuntimeWorker() as worker:
        pid = unwrap(worker.run([RuntimeInfo()])[0])["pid"]
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
        again = unwrap(worker.run([RuntimeInfo()])[0])["pid"]
        assert again != pid and worker.started == 2


def test_persistent_worker_times_out_and_recovers(models):
    endless = {"warmup_iterations": 1, "rounds": 1000, "min_iterations": 1, "min_seconds": 1.0}
    with RuntimeWorker() as worker:
        with pytest.raises(RuntimeError, match="timed out after 2"):
            worker.run([MeasureLatency([models["fp32_xml"]], F32, endless)], timeout=2)
        assert worker._process is None  # the hung one is gone
        assert unwrap(worker.run([RuntimeInfo()])[0])["openvino"]  # and a fresh one answers


def test_persistent_worker_reports_a_crash_it_caused(tmp_path, monkeypatch):
    """A request a fresh worker dies on is an error naming the exit code and stderr, not retried forever."""
    _fake_worker(
        tmp_path,
        monkeypatch,
        """
        import os, sys
        sys.stdin.readline()
        print("boom: corrupted size vs. prev_size", file=sys.stderr, flush=True)
        os._exit(134)
    """,
    )
    with (
        RuntimeWorker() as worker,
        pytest.raises(RuntimeError, match=r"(?s)exited with code 134.*corrupted size"),
    ):
        worker.run([RuntimeInfo()])
    assert worker.started == 1


def test_a_malformed_request_is_refused_and_the_worker_goes_on():
    with RuntimeWorker() as worker:
        pid = unwrap(worker.run([RuntimeInfo()])[0])["pid"]
        assert "expected" in worker._exchange(b"not json\n", 5)["error"]
        assert unwrap(worker.run([RuntimeInfo()])[0])["pid"] == pid


@pytest.mark.parametrize(
    ("n", "coverage"), [(2, 0.5), (4, 0.875), (5, 0.9375), (7, 0.984375), (9, 0.9609375), (20, 0.95861053)]
)
def test_median_interval_coverage(n, coverage):
    """The order-statistic interval for a median: its coverage is exact, the widest k >= 90%."""
    values = [float(v) for v in np.random.default_rng(n).permutation(n)]
    (low, high), got = median_interval(values)
    assert got == pytest.approx(coverage, abs=1e-6)
    assert low <= float(np.median(values)) <= high
    assert median_interval([1.0]) == (None, None)


def test_median_interval_covers_the_median_at_its_rate():
    """Simulated: 5 rounds from a skewed distribution, the interval holds the true median
    about 93.75% of the time."""
    rng = np.random.default_rng(0)
    true_median = float(np.log(2))  # exponential(1)
    hits = sum(
        low <= true_median <= high
        for low, high in (median_interval(list(rng.exponential(size=5)))[0] for _ in range(4000))
    )
    assert abs(hits / 4000 - 0.9375) < 0.015


def test_a_forgotten_worker_does_not_outlive_its_owner_and_a_copy_starts_its_own():
    import gc
    import pickle

    worker = RuntimeWorker()
    pid = unwrap(worker.run([RuntimeInfo()])[0])["pid"]
    copy = pickle.loads(pickle.dumps(worker))  # e.g. shipped to another process: no shared pipes
    assert copy._process is None and copy.started == 0
    del worker
    gc.collect()
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid), "the worker outlived its owner"


def test_a_node_is_charged_per_inference_for_the_share_it_ran_in():
    assert _per_inference_us([17.0, 18.0], 200) == pytest.approx(17.0 * 2 / 200)  # ran in 2 of 200
    assert _per_inference_us([5.0] * 10 + [500.0] * 10, 20) == 5.0  # in all: the fast mean
    assert _per_inference_us([], 10) == 0.0


def test_profile_layers_counts_the_inferences_each_node_ran_in(models):
    (profile,) = unwrap(
        run_jobs([ProfileLayers([models["qdq_xml"]], F32, iterations=12, rounds=2, warmup_iterations=2)])[0]
    )["models"]
    assert profile["nodes"]
    for node in profile["nodes"]:
        assert 1 <= node["runs"] <= 12
        if node["runs"] == 12:
            assert node["mean_us"] <= node["median_us"] + 1e-9  # the fast half's mean
    assert profile["total_us"] == pytest.approx(sum(n["mean_us"] for n in profile["nodes"]))
