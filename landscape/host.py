"""Process-wide settings that the command-line process (not the library) makes for itself.

glibc's malloc hands large freed blocks back to the kernel (anything over its mmap threshold, and
the free top of the heap over its trim threshold), so a forward pass whose temporaries are a few MB
or more page-faults all of them in again on every call: on the bundled CNN (1,797 digits) that was
~500,000 page faults and a quarter of the time in the kernel over 80 passes, and passes took 1.3 to
2x longer than with the memory kept. `keep_freed_memory` raises both thresholds, so freed memory is
reused; the process's resident size stays at its peak instead of shrinking between passes.

`exit_now` ends the process without the interpreter's teardown, which after `import torch` alone took
0.3-0.5 s.
"""

from __future__ import annotations

import ctypes
import os
import sys
from typing import NoReturn

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
KEEP_BYTES = 1 << 30
LARGE_VECTOR_BYTES = 256 << 20  # a model whose weights take this much keeps less (see `kept_bytes`)
LARGE_MODEL_KEEP_BYTES = 32 << 20  # glibc's own largest mmap threshold on 64-bit


def kept_bytes(vector_bytes: int) -> int:
    """The freed blocks to keep for a model whose weights take `vector_bytes`: KEEP_BYTES, or for a large
    model 32 MB (glibc's own steady state), so that weight-sized temporaries go back to the kernel. Kept,
    those of a 124M-parameter Hessian (0.5-1 GB each) fragmented the heap: a top-5 run was killed at
    24.4 GB; half a vector as the limit peaked at 23.1 GiB for top-5 + trace, 32 MB at 20.9 GiB."""
    return KEEP_BYTES if vector_bytes < LARGE_VECTOR_BYTES else LARGE_MODEL_KEEP_BYTES


def keep_freed_memory(limit: int = KEEP_BYTES) -> bool:
    """Make glibc keep up to `limit` bytes of freed memory for reuse; False where there is no glibc."""
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018  (glibc only: musl and macOS have other allocators)
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # both at once: setting either one alone turns off glibc's own adjustment of the other
    return bool(mallopt(M_MMAP_THRESHOLD, limit)) and bool(mallopt(M_TRIM_THRESHOLD, limit))


def exit_now(code: str | int | None = 0) -> NoReturn:
    """End the process as `sys.exit(code)` would, without the interpreter's teardown.

    A process that has imported torch spends 0.3-0.5 s in its teardown (every module's objects freed one
    by one, C++ static destructors), and touches 130 MB more memory there, on `python -c "import torch"`
    alone; after a command, 0.3-1 s and 100-145 MB (a U-Net's Hessian, a ResNet-50 sweep). What
    finishing needs still runs: objects in reference cycles are collected (their finalizers close what
    they hold), the exit handlers (`atexit`: logging, multiprocessing's workers, coverage) run, and the
    output is flushed. While a non-daemon thread runs, the ordinary exit, which waits for it, is taken.
    """
    import atexit
    import gc
    import threading

    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        sys.exit(code)
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:  # sys.exit("message"): the message on stderr, status 1
        print(code, file=sys.stderr)
        status = 1
    gc.collect()
    atexit._run_exitfuncs()  # the handlers the ordinary exit runs, in the same order
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):  # a closed pipe (`| head`): status 120, as the ordinary exit gives
            status = status or 120
    os._exit(status & 0xFF)
