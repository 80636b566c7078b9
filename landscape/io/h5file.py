"""Opening results files that another process may have open at the same moment.

HDF5 locks a file for as long as it is open: while `landscape info` (or a test) read a file, the
sweep writing it could not reopen it for its next chunk and died with "unable to lock file". Every
open here waits for such a lock to be released (readers and writers hold files for milliseconds).
"""

from __future__ import annotations

import errno
import io
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import h5py

from landscape.errors import LandscapeError
from landscape.io.atomic import replace_whole

LOCK_WAIT_S = 30.0


def open_h5(path: str | Path, mode: str = "r", wait: float = LOCK_WAIT_S) -> h5py.File:
    """`h5py.File(path, mode)`, retried for up to `wait` seconds while another process holds its lock."""
    deadline = time.monotonic() + wait
    delay = 0.005
    while True:
        try:
            return h5py.File(path, mode)
        except OSError as exc:
            code = _lock_errno(exc)
            if code in (errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise LandscapeError(
                    f"{path}: this file system cannot lock files; set HDF5_USE_FILE_LOCKING=FALSE to use it without locks"
                ) from exc
            if code not in (errno.EAGAIN, errno.EWOULDBLOCK):
                raise
            if time.monotonic() > deadline:
                raise LandscapeError(
                    f"{path}: another process has kept the file open (locked) for {wait:.0f} s"
                ) from exc
        time.sleep(delay)
        delay = min(2 * delay, 0.1)


def _lock_errno(exc: OSError) -> int | None:
    """The errno of HDF5's failure to lock a file (11: held by another process); None for other errors."""
    text = str(exc)
    if "unable to lock file" not in text:
        return None
    found = re.search(r"errno = (\d+)", text)
    return int(found.group(1)) if found else exc.errno


@contextmanager
def write_atomically(path: str | Path) -> Iterator[h5py.File]:
    """A new HDF5 file that appears at `path` whole or not at all: built in memory, written to
    `PATH.partial` (the folder made if needed) by plain file writes, renamed over `path`; on an
    OS error (full disk, read-only folder) the temporary is removed and an existing `path` untouched.
    HDF5 itself never writes to the disk here: after a failed write on a full disk, its clean-up
    crashed the process (segmentation fault)."""
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:  # HDF5 writes to memory: a full disk can't fail inside it (that crashed)
        yield f
    _commit(Path(path), buffer)


@contextmanager
def rewrite_atomically(path: str | Path) -> Iterator[h5py.File]:
    """An existing HDF5 file opened for changes in memory and put back whole like `write_atomically`:
    a change that fails on the disk leaves the file as it was (HDF5 writing in place could leave it
    unreadable: a full disk in the middle of a metadata write broke a half-done sweep's file)."""
    path = Path(path)
    buffer = io.BytesIO(path.read_bytes())
    with h5py.File(buffer, "r+") as f:
        yield f
    _commit(path, buffer)


def _commit(path: Path, buffer: io.BytesIO) -> None:
    """The bytes of `buffer` to `path`, whole or not at all; refused up front when the disk has not that much room."""
    with replace_whole(path, size=buffer.getbuffer().nbytes) as tmp:
        with open(tmp, "wb") as out:
            out.write(buffer.getbuffer())
