"""Opening results files that another process may have open at the same moment.

HDF5 locks a file for as long as it is open: while `landscape info` (or a test) read a file, the
sweep writing it could not reopen it for its next chunk and died with "unable to lock file". Every
open here waits for such a lock to be released (readers and writers hold files for milliseconds).
"""

from __future__ import annotations

import errno
import time
from pathlib import Path

import h5py

from landscape.errors import LandscapeError

LOCK_WAIT_S = 30.0


def open_h5(path: str | Path, mode: str = "r", wait: float = LOCK_WAIT_S) -> h5py.File:
    """`h5py.File(path, mode)`, retried for up to `wait` seconds while another process holds its lock."""
    deadline = time.monotonic() + wait
    delay = 0.005
    while True:
        try:
            return h5py.File(path, mode)
        except OSError as exc:
            if not _locked(exc):
                raise
            if time.monotonic() > deadline:
                raise LandscapeError(f"{path}: another process has kept the file open (locked) for {wait:.0f} s") from exc
        time.sleep(delay)
        delay = min(2 * delay, 0.1)


def _locked(exc: OSError) -> bool:
    return exc.errno == errno.EAGAIN or "unable to lock file" in str(exc)
