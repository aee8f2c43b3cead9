"""Scratch folders a killed process leaves in the temp directory are removed by the next one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import numpy as np

from autocompress.evaluators.runtime import Dataset
from autocompress.evaluators.scratch import OWNER_FILE, scratch_dir, sweep

MAKE_AND_WAIT = """
import sys, time
from autocompress.evaluators.scratch import scratch_dir
print(scratch_dir(sys.argv[1]), flush=True)
time.sleep(600)
"""


def _prefix() -> str:
    return f"autocompress-scratchtest-{uuid.uuid4().hex[:8]}-"


def test_a_killed_owners_folder_is_removed_and_a_living_owners_is_kept():
    prefix = _prefix()
    killed = subprocess.Popen(
        [sys.executable, "-c", MAKE_AND_WAIT, prefix], stdout=subprocess.PIPE, text=True
    )
    living = subprocess.Popen(
        [sys.executable, "-c", MAKE_AND_WAIT, prefix], stdout=subprocess.PIPE, text=True
    )
    try:
        orphan = Path(killed.stdout.readline().strip())
        kept = Path(living.stdout.readline().strip())
        (orphan / "model.onnx").write_bytes(b"x" * 1000)
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=30)
        foreign = Path(tempfile.mkdtemp(prefix=prefix))  # no owner record: not ours to remove
        mine = scratch_dir(prefix)
        try:
            assert not orphan.exists()
            assert kept.is_dir() and foreign.is_dir() and mine.is_dir()
            assert json.loads((mine / OWNER_FILE).read_text())["pid"] == os.getpid()
        finally:
            for folder in (kept, foreign, mine):
                subprocess.run(["rm", "-rf", str(folder)], check=True)
    finally:
        living.kill()
        living.wait(timeout=30)
        killed.kill()


def test_an_unreadable_owner_record_is_left_alone():
    prefix = _prefix()
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        (folder / OWNER_FILE).write_text("{not json")
        assert sweep(prefix) == []
        (folder / OWNER_FILE).write_text(json.dumps({"host": "elsewhere", "pid": 1}))
        assert sweep(prefix) == [] and folder.is_dir()
    finally:
        subprocess.run(["rm", "-rf", str(folder)], check=True)


def test_a_datasets_inputs_file_goes_with_it():
    data = Dataset([(np.zeros((4, 3), dtype=np.float32), np.arange(4))])
    folder = data.inputs_file().parent
    assert (folder / OWNER_FILE).is_file()
    del data
    assert not folder.exists()


def test_a_worker_folder_left_by_a_killed_process_is_removed_by_the_next_run():
    from autocompress.evaluators.child import WORKER_PREFIX, RuntimeInfo, run_jobs

    killed = subprocess.Popen(
        [sys.executable, "-c", MAKE_AND_WAIT, WORKER_PREFIX], stdout=subprocess.PIPE, text=True
    )
    orphan = Path(killed.stdout.readline().strip())
    (orphan / "request.json").write_text("{}")
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
    try:
        (result,) = run_jobs([RuntimeInfo()])
        assert "error" not in result
        assert not orphan.exists()
    finally:
        subprocess.run(["rm", "-rf", str(orphan)], check=True)


def test_a_trial_folder_restored_from_a_dead_workers_checkpoint_is_not_swept_under_its_new_owner(tmp_path):
    """A Ray trial restored from its checkpoint copies the first worker's folder, owner
    record included, into its own: it must claim it again, or the next trial to start sweeps
    it mid-measurement (seen once in CI: the restored trial's model.xml vanished)."""
    import shutil

    from autocompress.search.ray_backend import STAGE_FILE, _restore

    prefix = _prefix()
    killed = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
    saved = tmp_path / "checkpoint"  # the first worker's folder, as its checkpoint holds it
    saved.mkdir()
    (saved / STAGE_FILE).write_text(json.dumps({"stage": "exported"}))
    work = scratch_dir(prefix)
    record = json.loads((work / OWNER_FILE).read_text())
    (saved / OWNER_FILE).write_text(json.dumps({**record, "pid": killed.pid}))

    class Checkpoint:  # as tune.Checkpoint.to_directory: the saved folder's files copied in
        def to_directory(self, path: str) -> None:
            shutil.copytree(saved, path, dirs_exist_ok=True)

    try:
        assert _restore(Checkpoint(), work) == {"stage": "exported"}
        sweep(prefix)  # another trial starting
        assert work.is_dir() and json.loads((work / OWNER_FILE).read_text())["pid"] == os.getpid()
    finally:
        shutil.rmtree(work, ignore_errors=True)
