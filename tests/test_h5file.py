"""Results files opened while another process has them open (a sweep writing, `landscape info` reading)."""

from __future__ import annotations

import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from landscape.errors import LandscapeError
from landscape.io.h5file import open_h5

HOLD = (
    "import h5py, sys, time; f = h5py.File(sys.argv[1], 'r'); print('open', flush=True); time.sleep(float(sys.argv[2]))"
)


def _held(path, seconds: float) -> subprocess.Popen:
    """Another process that keeps `path` open for reading for `seconds`."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "open"
    return proc


def test_writer_waits_for_a_reader(tmp_path):
    path = tmp_path / "r.h5"
    with h5py.File(path, "w") as f:
        f["a"] = np.zeros(3)
    proc = _held(path, 0.5)
    with pytest.raises(OSError, match="lock"):  # what the sweep died of before
        h5py.File(path, "r+")
    start = time.monotonic()
    with open_h5(path, "r+") as f:
        f["a"][...] = 1.0
    assert time.monotonic() - start > 0.1 and proc.wait() == 0
    proc.stdout.close()
    with h5py.File(path, "r") as f:
        assert f["a"][()].tolist() == [1.0, 1.0, 1.0]


def test_lock_held_too_long_is_one_line(tmp_path):
    path = tmp_path / "r.h5"
    with h5py.File(path, "w") as f:
        f["a"] = np.zeros(3)
    proc = _held(path, 3)
    with pytest.raises(LandscapeError, match="another process has kept the file open"):
        open_h5(path, "r+", wait=0.3)
    proc.kill()
    proc.wait()
    proc.stdout.close()


def test_file_system_without_locks_says_what_to_do(tmp_path, monkeypatch):
    """Some network file systems cannot lock: HDF5 then fails every open; the error says how to go on."""

    def no_locks(*args, **kwargs):
        raise OSError(
            38,
            "Unable to synchronously open file (unable to lock file, errno = 38, error message = 'Function not implemented')",
        )

    monkeypatch.setattr(h5py, "File", no_locks)
    with pytest.raises(LandscapeError, match="HDF5_USE_FILE_LOCKING=FALSE"):
        open_h5(tmp_path / "x.h5", "r")
