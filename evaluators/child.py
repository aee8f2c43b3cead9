"""Run OpenVINO / ONNX Runtime jobs in a child process (see evaluators.runtime_worker), so that a runtime crash
or an abort at exit never takes the (torch) parent process down."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

WORKER_MODULE = "evaluators.runtime_worker"
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # makes `-m evaluators...` importable


def _tail(text: str, lines: int = 20) -> str:
    return "\n".join((text or "").strip().splitlines()[-lines:])


def run_jobs(jobs: list[dict], *, timeout: float = 600, workdir: str | os.PathLike | None = None) -> list[dict]:
    """Run jobs ({"op", "args"}) in order in one fresh worker; returns one result dict per job.

    Raises RuntimeError (exit code + last stderr lines) if the worker crashes, times out or writes no response.
    A job that failed inside the worker is an {"op", "error", "traceback"} entry: see unwrap().
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_ROOT, env.get("PYTHONPATH")) if p)
    with tempfile.TemporaryDirectory(prefix="ov-worker-", dir=workdir) as tmp:
        req, resp = os.path.join(tmp, "request.json"), os.path.join(tmp, "response.json")
        with open(req, "w", encoding="utf-8") as f:
            json.dump({"jobs": list(jobs)}, f)
        cmd = [sys.executable, "-m", WORKER_MODULE, req, resp]
        try:
            proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, errors="replace", timeout=timeout)
        except subprocess.TimeoutExpired as e:
            err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
            raise RuntimeError(f"OpenVINO worker timed out after {timeout} s; stderr tail:\n{_tail(err)}") from None
        if proc.returncode != 0 or not os.path.exists(resp):
            raise RuntimeError(f"OpenVINO worker exited with code {proc.returncode}; stderr tail:\n"
                               f"{_tail(proc.stderr or proc.stdout)}")
        with open(resp, encoding="utf-8") as f:
            results = json.load(f)["results"]
    if len(results) != len(jobs):
        raise RuntimeError(f"OpenVINO worker returned {len(results)} results for {len(jobs)} jobs")
    return results


def unwrap(result: dict) -> dict:
    """Return a job's result, or raise RuntimeError if the job failed in the worker."""
    if "error" in result:
        raise RuntimeError(f"{result.get('op', 'job')} failed in the OpenVINO worker: {result['error']}")
    return result
