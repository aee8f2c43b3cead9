"""Scratch folders in the system's temp directory that a killed process does not leave behind.

A folder made here records its owner (host and pid). Making one first removes this host's
folders of the same kind whose owner is gone: a trial worker or a search killed by SIGKILL
cannot clean up after itself (each kill in the test suite left a trial folder and a data
folder in /tmp, 76 in two days), and a trial folder holds the candidate's ONNX and IR,
as large as the model.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import tempfile
from pathlib import Path

OWNER_FILE = ".autocompress-owner"


def scratch_dir(prefix: str) -> Path:
    """A new folder ``<tmp>/<prefix>...`` owned by this process; the caller removes it when
    done. Folders of the same prefix whose owner died on this host are removed first."""
    sweep(prefix)
    path = Path(tempfile.mkdtemp(prefix=prefix))
    claim(path)
    return path


def claim(path: Path) -> None:
    """Record this process as the owner of ``path``: again after copying another folder's
    contents into it (a restored checkpoint brings its dead maker's record, and the next
    sweep would remove the folder under the process using it)."""
    (path / OWNER_FILE).write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))


def sweep(prefix: str) -> list[Path]:
    """Remove this host's ``<tmp>/<prefix>*`` folders whose owner process is gone; a folder
    without an owner record (someone else's, or one being made) is left alone."""
    host = socket.gethostname()
    removed = []
    for folder in Path(tempfile.gettempdir()).glob(f"{glob.escape(prefix)}*"):
        try:
            owner = json.loads((folder / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(owner, dict) or owner.get("host") != host or _alive(owner.get("pid")):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def _alive(pid: object) -> bool:
    """Whether a process with this pid exists here (an unreadable pid counts as alive)."""
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
