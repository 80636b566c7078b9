"""Process-wide settings that the command-line process (not the library) makes for itself.

glibc's malloc hands large freed blocks back to the kernel (anything over its mmap threshold, and
the free top of the heap over its trim threshold), so a forward pass whose temporaries are a few MB
or more page-faults all of them in again on every call: on the bundled CNN (1,797 digits) that was
~500,000 page faults and a quarter of the time in the kernel over 80 passes, and passes took 1.3 to
2x longer than with the memory kept. `keep_freed_memory` raises both thresholds, so freed memory is
reused; the process's resident size stays at its peak instead of shrinking between passes.
"""

from __future__ import annotations

import ctypes

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
