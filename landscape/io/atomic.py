"""Files that appear whole or not at all: written to a temporary beside the target, flushed to the
disk, renamed over it. On an OS error (a full disk, a read-only folder) the temporary is removed
and an existing file at the target is left as it was; the error says so in one line (RunFailure).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from landscape.errors import RunFailure


def written_path(path: str | Path) -> Path:
    """The file a write to `path` replaces: the one a symbolic link names, not the link (writing to
    `-o /dev/stdout` as root replaced the /dev/stdout link itself with a results file)."""
    path = Path(path)
    return path.resolve() if path.is_symlink() else path


@contextmanager
def replace_whole(path: str | Path, *, size: int | None = None, keep_suffix: bool = False) -> Iterator[Path]:
    """A temporary path to write `path`'s new contents to (`PATH.partial`, or `STEM.partial.SUFFIX`
    with `keep_suffix`, for writers that read the format from the suffix); renamed over `path` when
    the block ends. `size` (bytes, when known) is checked against the free space first."""
    path = written_path(path)
    tmp = path.with_name(f"{path.stem}.partial{path.suffix}" if keep_suffix else path.name + ".partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        free = free_bytes(path.parent)
        if size is not None and free is not None and free < size:
            raise RunFailure(
                f"cannot write {path}: {os.strerror(errno.ENOSPC)} (it needs {_mib(size)}, the disk has "
                f"{_mib(free)} free){_kept(path)}"
            )
        yield tmp
        with open(tmp, "rb+") as out:
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        left = _remove(tmp)
        raise RunFailure(f"cannot write {path}: {os_reason(exc)}{left}{_kept(path)}") from exc
    finally:
        _remove(tmp)


def _kept(path: Path) -> str:
    return f"; {path.name} as it was is untouched" if path.exists() else ""


def free_bytes(folder: Path) -> int | None:
    """Bytes that may still be written in `folder`'s file system (None where not known)."""
    try:
        st = os.statvfs(folder)
        privileged = os.geteuid() == 0  # root may use the blocks kept back for it
    except (OSError, AttributeError):  # no statvfs (Windows) or a folder it cannot stat
        return None
    return (st.f_bfree if privileged else st.f_bavail) * st.f_frsize


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 1024:.0f} KiB"


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
