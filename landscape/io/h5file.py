"""Opening results files that another process may have open at the same moment.

HDF5 locks a file for as long as it is open: while `landscape info` (or a test) read a file, the
sweep writing it could not reopen it for its next chunk and died with "unable to lock file". Every
open here waits for such a lock to be released (readers and writers hold files for milliseconds).
"""

from __future__ import annotations

import errno
import io
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import h5py

from landscape.errors import LandscapeError, RunFailure

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
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:  # HDF5 writes to memory: a full disk can't fail inside it (that crashed)
        yield f
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as out:
            out.write(buffer.getbuffer())
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        left = _remove(tmp)
        kept = f"; {path.name} as it was is untouched" if path.exists() else ""
        raise RunFailure(f"cannot write {path}: {os_reason(exc)}{left}{kept}") from exc
    finally:
        _remove(tmp)


def _remove(tmp: Path) -> str:
    """Remove a temporary file if it can be; what is left behind, for the message."""
    try:
        if os.path.lexists(tmp):
            tmp.unlink()
    except OSError as exc:
        return f" ({tmp.name} is left behind: {os_reason(exc)})"
    return ""


def os_reason(exc: OSError) -> str:
    """Why an OS call failed, in a few words (HDF5's own messages run over several lines)."""
    if exc.errno:
        return os.strerror(exc.errno)
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
