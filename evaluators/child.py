"""Run OpenVINO / ONNX Runtime jobs in a child process (see autocompress.evaluators.runtime_worker), so that
a runtime crash or an abort at exit never takes the (torch) parent process down.

Jobs are typed (ConvertToIR, Infer, MeasureLatency, ProfileLayers, MeasureOrtLatency, RuntimeInfo); each
turns into the worker's JSON request ({"op", "args"}) only here.
"""

from __future__ import annotations

import dataclasses
import json
import os
import selectors
import shutil
import subprocess
import sys
import tempfile
import time
import weakref
from typing import IO, Any, ClassVar

from autocompress.evaluators.scratch import scratch_dir

_EVALUATORS_DIR = os.path.dirname(os.path.abspath(__file__))
WORKER_FILE = os.path.join(_EVALUATORS_DIR, "runtime_worker.py")
WORKER_PREFIX = "ov-worker-"

# The worker is loaded from its file under its package name, with `autocompress` and
# `autocompress.evaluators` registered as bare packages by directory: nothing on the user's
# sys.path (a folder named `evaluators` or `autocompress` in the working directory, say) can
# replace it, and autocompress/__init__, which imports torch, never runs in the worker.
# It also dies with the process that started it, even one killed by SIGKILL (Linux: a
# parent-death signal; a parent already gone by then is caught by the ppid check).
_BOOTSTRAP = """\
import ctypes, importlib.util, json, os, signal, sys, types
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
except (OSError, AttributeError):
    pass  # not Linux: the parent's timeout still bounds the worker
if os.getppid() != int(sys.argv[3]):
    sys.exit("the process that started this worker is gone")
if sys.path and sys.path[0] in ("", "."):
    del sys.path[0]  # `python -c` puts the working directory first
for name, path in json.loads(sys.argv[1]).items():
    package = types.ModuleType(name)
    package.__path__ = [path]
    sys.modules[name] = package
spec = importlib.util.spec_from_file_location("autocompress.evaluators.runtime_worker", sys.argv[2])
worker = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = worker
spec.loader.exec_module(worker)
sys.exit(worker.main(sys.argv[4:]))
"""


@dataclasses.dataclass(frozen=True)
class Job:
    """One request to the worker; subclasses name the worker function in ``op``."""

    op: ClassVar[str]

    def to_request(self) -> dict[str, Any]:
        return {"op": self.op, "args": dataclasses.asdict(self)}


@dataclasses.dataclass(frozen=True)
class ConvertToIR(Job):
    """ONNX -> OpenVINO IR with a static input shape."""

    op: ClassVar[str] = "convert_to_ir"
    onnx_path: str
    xml_path: str
    input_shape: list[int]
    compress_to_fp16: bool = False


@dataclasses.dataclass(frozen=True)
class Infer(Job):
    """Outputs of an IR on the inputs in an .npy file, written to another .npy file."""

    op: ClassVar[str] = "infer"
    xml_path: str
    inputs_npy: str
    outputs_npy: str
    target: dict[str, Any] | None = None
    batch_size: int = 256


@dataclasses.dataclass(frozen=True)
class MeasureLatency(Job):
    """Latency of IRs in alternating rounds (the first is the reference of ``ratios_to_first``)."""

    op: ClassVar[str] = "measure_latency"
    xml_paths: list[str]
    target: dict[str, Any] | list[dict[str, Any]] | None = None
    config: dict[str, Any] | None = None
    inputs_npy: str | None = None


@dataclasses.dataclass(frozen=True)
class ProfileLayers(Job):
    """Per-node execution times of IRs (or ONNX files) from OpenVINO's profiling (PERF_COUNT), alone, in passes.

    Each executed node of each compiled (fused) graph comes back with its mean time over the faster half
    of the runs (microseconds), its type, kernel and precision, and the original layer names fused into it.
    """

    op: ClassVar[str] = "profile_layers"
    xml_paths: list[str]
    target: dict[str, Any] | None = None
    iterations: int = 200
    rounds: int = 4
    warmup_iterations: int = 20
    inputs_npy: str | None = None


@dataclasses.dataclass(frozen=True)
class MeasureOrtLatency(Job):
    """Latency of ONNX files on ONNX Runtime, in alternating rounds."""

    op: ClassVar[str] = "measure_ort_latency"
    onnx_paths: list[str]
    threads: int | None = None
    config: dict[str, Any] | None = None
    inputs_npy: str | None = None
    batch: int = 1


@dataclasses.dataclass(frozen=True)
class RuntimeInfo(Job):
    """Versions, and whether the worker process imported torch (it must not)."""

    op: ClassVar[str] = "runtime_info"


def _tail(text: str, lines: int = 20) -> str:
    return "\n".join((text or "").strip().splitlines()[-lines:])


def worker_command(*arguments: str) -> list[str]:
    """The command line of one worker process: REQUEST.json RESPONSE.json, or --serve."""
    packages = {"autocompress": os.path.dirname(_EVALUATORS_DIR), "autocompress.evaluators": _EVALUATORS_DIR}
    return [
        sys.executable,
        "-c",
        _BOOTSTRAP,
        json.dumps(packages),
        WORKER_FILE,
        str(os.getpid()),
        *arguments,
    ]


def run_jobs(
    jobs: list[Job | dict],
    *,
    timeout: float = 600,
    workdir: str | os.PathLike | None = None,
    worker: RuntimeWorker | None = None,
) -> list[dict]:
    """Run jobs in order in one fresh worker (or in ``worker``, a persistent one); returns one
    result dict per job.

    Raises RuntimeError (exit code + last stderr lines) if the worker crashes, times out or writes no response.
    A job that failed inside the worker is an {"op", "error", "traceback"} entry: see unwrap().
    """
    if worker is not None:
        return worker.run(jobs, timeout=timeout)
    requests = [job.to_request() if isinstance(job, Job) else job for job in jobs]
    # In the system's temp directory the folder records its owner, so that one left by a
    # SIGKILLed process is swept by the next (17 had piled up in /tmp over two days).
    tmp = str(
        scratch_dir(WORKER_PREFIX) if workdir is None else tempfile.mkdtemp(prefix=WORKER_PREFIX, dir=workdir)
    )
    try:
        req, resp = os.path.join(tmp, "request.json"), os.path.join(tmp, "response.json")
        with open(req, "w", encoding="utf-8") as f:
            json.dump({"jobs": requests}, f)
        try:
            proc = subprocess.run(
                worker_command(req, resp),
                capture_output=True,
                text=True,
                errors="replace",
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as e:
            err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
            raise RuntimeError(
                f"OpenVINO worker timed out after {timeout} s; stderr tail:\n{_tail(err)}"
            ) from None
        if proc.returncode != 0 or not os.path.exists(resp):
            raise RuntimeError(
                f"OpenVINO worker exited with code {proc.returncode}; stderr tail:\n"
                f"{_tail(proc.stderr or proc.stdout)}"
            )
        with open(resp, encoding="utf-8") as f:
            results = json.load(f)["results"]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if len(results) != len(requests):
        raise RuntimeError(f"OpenVINO worker returned {len(results)} results for {len(requests)} jobs")
    return results


class RuntimeWorker:
    """One worker process kept for many requests (a search's trials): the interpreter start,
    the openvino import and the compilation of models measured again and again (the
    baseline) are paid once, not per trial. It is the same torch-free, isolated process as
    run_jobs' (it dies with this process); one that died or hung is replaced by a fresh one
    at the next request. Close it (or use it as a context manager) when done.
    """

    def __init__(self, workdir: str | os.PathLike | None = None) -> None:
        self.workdir = workdir
        self._process: subprocess.Popen | None = None
        self._stderr: IO[bytes] | None = None
        self._pending = b""
        self._reaper: weakref.finalize | None = None
        self.started = 0  # processes started so far (1 for a healthy search)

    def __getstate__(self) -> dict:  # a copy (pickled, e.g. to another process) starts its own worker
        return {"workdir": self.workdir}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["workdir"])

    def __enter__(self) -> RuntimeWorker:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def run(self, jobs: list[Job | dict], *, timeout: float = 600) -> list[dict]:
        """Like run_jobs. A worker found dead before it answered (killed while idle) is
        replaced and the request sent again once; a request a fresh worker dies on is an error."""
        requests = [job.to_request() if isinstance(job, Job) else job for job in jobs]
        line = (json.dumps({"jobs": requests}) + "\n").encode()
        reused = self._process is not None and self._process.poll() is None
        try:
            response = self._exchange(line, timeout)
        except _WorkerGone:
            if not reused:
                raise self._failure() from None
            self._stop()
            try:
                response = self._exchange(line, timeout)
            except _WorkerGone:
                raise self._failure() from None
        if "error" in response:
            raise RuntimeError(f"OpenVINO worker refused the request: {response['error']}")
        results = response["results"]
        if len(results) != len(requests):
            raise RuntimeError(f"OpenVINO worker returned {len(results)} results for {len(requests)} jobs")
        return results

    def close(self) -> None:
        """End the worker process (it finishes the request it is on, if any, within 5 s)."""
        process = self._process
        if process is not None and process.poll() is None:
            try:
                process.stdin.close()
                process.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                process.kill()
                process.wait()
        self._stop()

    def _start(self) -> subprocess.Popen:
        self._stop()
        self._stderr = tempfile.TemporaryFile(dir=self.workdir)
        self._process = subprocess.Popen(
            worker_command("--serve"), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr
        )
        # A worker whose owner is garbage-collected without close() does not outlive it.
        self._reaper = weakref.finalize(self, _reap, self._process)
        self.started += 1
        return self._process

    def _exchange(self, line: bytes, timeout: float) -> dict:
        process = (
            self._process if self._process is not None and self._process.poll() is None else self._start()
        )
        self._stderr.seek(0)
        self._stderr.truncate()  # the tail in an error is this request's
        try:
            process.stdin.write(line)
            process.stdin.flush()
        except (BrokenPipeError, OSError):
            raise _WorkerGone from None
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            while b"\n" not in self._pending:
                left = deadline - time.monotonic()
                if left <= 0 or not selector.select(left):
                    tail = self._stderr_tail()
                    self._stop()
                    raise RuntimeError(f"OpenVINO worker timed out after {timeout} s; stderr tail:\n{tail}")
                chunk = os.read(process.stdout.fileno(), 1 << 20)
                if not chunk:
                    raise _WorkerGone
                self._pending += chunk
        answer, self._pending = self._pending.split(b"\n", 1)
        return json.loads(answer)

    def _failure(self) -> RuntimeError:
        process = self._process
        code = process.wait() if process is not None else None
        error = RuntimeError(f"OpenVINO worker exited with code {code}; stderr tail:\n{self._stderr_tail()}")
        self._stop()
        return error

    def _stderr_tail(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return _tail(self._stderr.read().decode(errors="replace"))

    def _stop(self) -> None:
        if self._reaper is not None:
            self._reaper.detach()
            self._reaper = None
        if self._process is not None:
            if self._process.poll() is None:
                self._process.kill()
            self._process.wait()
            for pipe in (self._process.stdin, self._process.stdout):
                try:
                    pipe.close()
                except OSError:
                    pass
        if self._stderr is not None:
            self._stderr.close()
        self._process, self._stderr, self._pending = None, None, b""


def _reap(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
        process.wait()


class _WorkerGone(Exception):
    """The worker process ended (or its pipe broke) before it answered."""


def unwrap(result: dict) -> dict:
    """Return a job's result, or raise RuntimeError if the job failed in the worker."""
    if "error" in result:
        raise RuntimeError(f"{result.get('op', 'job')} failed in the OpenVINO worker: {result['error']}")
    return result
