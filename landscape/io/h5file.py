"""Opening results files that another process may have open at the same moment, and writing them
whole or not at all.

HDF5 locks a file for as long as it is open: while `landscape info` (or a test) read a file, the
sweep writing it could not reopen it for its next chunk and died with "unable to lock file". Every
open here waits for such a lock to be released (readers and writers hold files for milliseconds).
"""

from __future__ import annotations

import errno
import io
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

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
    """A new HDF5 file that appears at `path` whole or not at all: HDF5 writes it through a `DiskImage`
    into `PATH.partial` (the folder made if needed), which is renamed over `path` when whole; on an OS
    error (full disk, read-only folder) the temporary is removed and an existing `path` untouched."""
    with replace_whole(path) as tmp, open(tmp, "w+b") as raw:
        yield from _through(raw, "w")


@contextmanager
def rewrite_atomically(path: str | Path) -> Iterator[h5py.File]:
    """An existing HDF5 file opened for changes and put back whole like `write_atomically`: a copy
    (`PATH.partial`) is changed and renamed over it, so a change that fails on the disk leaves the
    file as it was (HDF5 writing in place could leave it unreadable: a full disk in the middle of a
    metadata write broke a half-done sweep's file)."""
    path = Path(path)
    with replace_whole(path, size=path.stat().st_size) as tmp:
        shutil.copyfile(path, tmp)
        with open(tmp, "r+b") as raw:
            yield from _through(raw, "r+")


def _through(raw: io.BufferedIOBase, mode: str) -> Iterator[h5py.File]:
    image = DiskImage(raw)
    with h5py.File(image, mode) as f:
        yield f
    if image.refused is not None:
        raise image.refused


class DiskImage(io.RawIOBase):
    """The file object HDF5 writes a file through: its bytes go to `raw` on the disk as HDF5 writes
    them (no copy of the file in memory: a 124M-parameter sweep's directions are 1 GB), and a write
    the disk refuses (full) is kept in memory pages instead, so that HDF5 reads back what it wrote
    and closes cleanly; the refusal is raised after (`refused`). HDF5 never sees a failed write:
    after one, its clean-up crashed the process (segmentation fault)."""

    PAGE = 1 << 16

    def __init__(self, raw: io.BufferedIOBase):
        super().__init__()
        self.raw = raw
        self.pos = 0
        self.size = raw.seek(0, io.SEEK_END)
        self.refused: OSError | None = None
        self.pages: dict[int, bytearray] = {}  # after a refusal: every byte written since, by page

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = base + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def truncate(self, size: int | None = None) -> int:
        self.size = self.pos if size is None else size
        self.pages = {i: page for i, page in self.pages.items() if i * self.PAGE < self.size}
        if self.refused is None:
            try:
                self.raw.truncate(self.size)
            except OSError as exc:
                self.refused = exc
        return self.size

    def readinto(self, buffer: Any) -> int:
        n = self._read_at(self.pos, memoryview(buffer).cast("B"))
        self.pos += n
        return n

    def _read_at(self, offset: int, out: memoryview) -> int:
        """The bytes at `offset` as HDF5 wrote them (the disk's, then the pages kept over them) into `out`,
        up to the file's size; how many."""
        n = max(0, min(len(out), self.size - offset))
        self.raw.seek(offset)
        got = self.raw.readinto(out[:n]) or 0
        out[got:n] = bytes(n - got)  # beyond what reached the disk: zeros, as a sparse file reads
        for index in range(offset // self.PAGE, (offset + n - 1) // self.PAGE + 1) if self.pages and n else ():
            page = self.pages.get(index)
            if page is not None:
                lo, hi = max(offset, index * self.PAGE), min(offset + n, (index + 1) * self.PAGE)
                out[lo - offset : hi - offset] = page[lo - index * self.PAGE : hi - index * self.PAGE]
        return n

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        if self.refused is None:
            try:
                self.raw.seek(self.pos)
                self.raw.write(view)
            except OSError as exc:
                self.refused = exc
        if self.refused is not None:
            self._keep(view)
        self.pos += len(view)
        self.size = max(self.size, self.pos)
        return len(view)

    def _keep(self, view: memoryview) -> None:
        for index in range(self.pos // self.PAGE, (self.pos + len(view) - 1) // self.PAGE + 1):
            page = self.pages.get(index)
            if page is None:  # the page as it reads now, then this write over it
                page = bytearray(self.PAGE)
                self._read_at(index * self.PAGE, memoryview(page))
                self.pages[index] = page
            lo, hi = max(self.pos, index * self.PAGE), min(self.pos + len(view), (index + 1) * self.PAGE)
            page[lo - index * self.PAGE : hi - index * self.PAGE] = view[lo - self.pos : hi - self.pos]
