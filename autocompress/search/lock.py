"""One driver per search: an exclusive lock on the search's workdir.

The lock is an ``flock`` on ``<workdir>/.autocompress-driver.lock``: the kernel releases
it when its process ends, also by SIGKILL. So a driver that finds the lock free knows
the driver before it is gone, and that the trials it left RUNNING are orphans to retry
at once (without waiting for a heartbeat to go stale); a second driver on a running
search is refused with a message naming the one that runs.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: no lock, as before (heartbeats still recover trials)
    fcntl = None

LOCK_FILE = ".autocompress-driver.lock"


class SearchBusy(ValueError):
    """Another live process drives this search."""


class DriverLock:
    """``with DriverLock(workdir):`` holds the search's lock, or raises SearchBusy."""

    def __init__(self, workdir: str | Path) -> None:
        self.path = Path(workdir) / LOCK_FILE
        self.file = None

    @property
    def owner(self) -> str:
        """Who holds the lock: this host and the workdir (what a trial records as its driver)."""
        return f"{socket.gethostname()}:{self.path.parent.resolve()}"

    def __enter__(self) -> DriverLock:
        if fcntl is None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "a+")  # noqa: SIM115 - held open for the search's duration
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = _describe(self.file.read())
            self.file.close()
            self.file = None
            raise SearchBusy(
                f"the search in {self.path.parent} is running in another process ({holder}); wait for it to "
                "finish or stop it, then resume; or give this search another workdir"
            ) from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}))
        self.file.flush()
        return self

    def __exit__(self, *exc) -> None:
        if self.file is not None:
            self.file.close()  # closing releases the flock
            self.file = None


def _describe(text: str) -> str:
    try:
        holder = json.loads(text)
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder["since"]))
        return f"pid {holder['pid']} on {holder['host']}, since {since}"
    except (ValueError, KeyError, TypeError):
        return "its pid is unknown"
