"""A local pyarrow filesystem whose writes are atomic, for Ray Tune's experiment directory.

Tune copies its driver state (experiment_state-*.json, the searcher's pickle) into the
experiment directory in the background, by plain overwrite. A driver SIGKILLed during a copy
left a truncated state file, and the experiment could not be restored (seen here in about 1
of 5 kills right after a trial finished). Written to a temporary file beside the target and
renamed over it on close, every file in the directory is either the old one or the new one.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import pyarrow
import pyarrow.fs


class _AtomicFile:
    """A binary file that becomes ``path`` only when closed whole."""

    def __init__(self, path: str) -> None:
        directory, name = os.path.split(path)
        os.makedirs(directory or ".", exist_ok=True)
        fd, self._staging = tempfile.mkstemp(prefix=f".{name}.", suffix=".partial", dir=directory or ".")
        self._file = os.fdopen(fd, "wb")
        self._path = path
        self.closed = False

    def write(self, data: Any) -> int:
        return self._file.write(data)

    def flush(self) -> None:
        self._file.flush()

    def tell(self) -> int:
        return self._file.tell()

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._file.close()
        os.replace(self._staging, self._path)


class AtomicLocalHandler(pyarrow.fs.FileSystemHandler):
    """pyarrow's LocalFileSystem, except that output streams are written aside and renamed."""

    def __init__(self) -> None:
        self._local = pyarrow.fs.LocalFileSystem()

    def __reduce__(self):  # shipped to Ray workers with the storage settings
        return (AtomicLocalHandler, ())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AtomicLocalHandler)

    def __hash__(self) -> int:
        return hash(AtomicLocalHandler)

    def get_type_name(self) -> str:
        return "autocompress-atomic-local"

    def normalize_path(self, path: str) -> str:
        return self._local.normalize_path(path)

    def get_file_info(self, paths):
        return self._local.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self._local.get_file_info(selector)

    def create_dir(self, path: str, recursive: bool) -> None:
        self._local.create_dir(path, recursive=recursive)

    def delete_dir(self, path: str) -> None:
        self._local.delete_dir(path)

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self._local.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self) -> None:
        raise OSError("refusing to delete the contents of the root directory")

    def delete_file(self, path: str) -> None:
        self._local.delete_file(path)

    def move(self, src: str, dest: str) -> None:
        self._local.move(src, dest)

    def copy_file(self, src: str, dest: str) -> None:
        with self._local.open_input_stream(src) as source, self.open_output_stream(dest, None) as target:
            while chunk := source.read(1 << 20):
                target.write(chunk)

    def open_input_stream(self, path: str):
        return self._local.open_input_stream(path)

    def open_input_file(self, path: str):
        return self._local.open_input_file(path)

    def open_output_stream(self, path: str, metadata):
        return pyarrow.PythonFile(_AtomicFile(path), mode="w")

    def open_append_stream(self, path: str, metadata):
        return self._local.open_append_stream(path)


def atomic_local_filesystem() -> pyarrow.fs.FileSystem:
    return pyarrow.fs.PyFileSystem(AtomicLocalHandler())
