"""Faults while writing and in user code: one line, the right exit code, nothing half-written, an
existing complete file untouched, and no crash of HDF5 on a full disk."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from landscape.errors import RunFailure
from landscape.io.h5file import write_atomically


def _full_disk(monkeypatch):
    """Every fsync fails as on a full disk (after the bytes were handed to the OS)."""

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_space)


def test_full_disk_leaves_an_existing_file_untouched_and_no_partial(tmp_path, monkeypatch):
    target = tmp_path / "out.h5"
    with write_atomically(target) as f:
        f["x"] = np.arange(3.0)
    before = target.read_bytes()
    _full_disk(monkeypatch)
    with pytest.raises(
        RunFailure, match=r"cannot write .*out\.h5: No space left on device; out\.h5 as it was is untouched"
    ):
        with write_atomically(target) as f:
            f["x"] = np.arange(5.0)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.h5"]


def test_cli_full_disk_is_one_line_exit_1(cli, tmp_path, monkeypatch):
    out = tmp_path / "line.h5"
    assert cli("sweep", "--sample", "linreg", "--x", "-1:1:5", "-o", out).code == 0
    before = out.read_bytes()
    _full_disk(monkeypatch)
    for args in (
        ("sweep", "--sample", "linreg", "--x", "-1:1:7", "--force", "-o", out),
        ("hessian", "--sample", "linreg", "--top-k", "1", "-o", tmp_path / "h.h5"),
        ("roughness", "--sample", "linreg", "--directions", "2", "-o", tmp_path / "r.h5"),
    ):
        res = cli(*args)
        assert res.code == 1, res.err
        lines = [line for line in res.err.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and "No space left on device" in lines[0], res.err
        assert "Traceback" not in res.err
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["line.h5"]


def test_unexpected_error_is_one_line_and_debug_shows_the_traceback(cli, tmp_path, monkeypatch):
    import landscape.cli.files as files

    def broken(*args, **kwargs):
        raise KeyError("something inside")

    out = tmp_path / "a.h5"
    assert cli("sweep", "--sample", "linreg", "--x", "-1:1:3", "-o", out).code == 0
    monkeypatch.setattr(files, "describe", broken)
    res = cli("info", out)
    assert res.code == 1
    assert res.err.strip().splitlines()[-1].startswith("error: KeyError: 'something inside' (run with --debug")
    with pytest.raises(KeyError):
        cli("info", out, "--debug")
    assert "--debug" in cli("--help").out


@pytest.mark.skipif(sys.platform != "linux" or os.geteuid() != 0, reason="needs root to mount a small tmpfs")
def test_real_full_disk_no_crash(tmp_path):
    """A 200 KiB tmpfs, nearly full: sweep, hessian and roughness end with one line and exit 1, not a
    segmentation fault inside HDF5 (which its clean-up after a failed write caused)."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        (mnt / "fill").write_bytes(b"\0" * 190_000)
        for args in (
            ["sweep", "--sample", "mlp", "--x", "-1:1:21", "--y", "-1:1:21"],
            ["hessian", "--sample", "mlp", "--top-k", "1"],
            ["roughness", "--sample", "linreg", "--directions", "4"],
        ):
            out = mnt / f"{args[0]}.h5"
            res = subprocess.run(
                [sys.executable, "-m", "landscape", *args, "-o", str(out)], capture_output=True, text=True
            )
            assert res.returncode == 1, (args, res.returncode, res.stderr[-500:])
            assert "No space left on device" in res.stderr and "Traceback" not in res.stderr
            left = sorted(p.name for p in mnt.iterdir() if p.name != "fill")
            # roughness keeps its last good points file (what --resume reads); nothing else is left
            assert not left or left == ["roughness.h5.points"], left
            for name in left:
                with h5py.File(mnt / name, "r") as f:
                    assert f.attrs["kind"] == "points"
                (mnt / name).unlink()
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def test_read_only_folder_is_one_line(cli, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):  # root writes anywhere: a read-only mount is the real test
            mnt = tmp_path / "romnt"
            mnt.mkdir()
            if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(mnt)]).returncode:
                pytest.skip("root, and no read-only mount possible")
            folder = mnt
        res = cli("sweep", "--sample", "linreg", "--x", "-1:1:3", "-o", folder / "a.h5")
        assert res.code == 1
        assert "cannot write" in res.err and "Traceback" not in res.err and "left behind" not in res.err
        assert not list(Path(folder).iterdir())
    finally:
        if folder != tmp_path / "ro":
            subprocess.run(["umount", str(folder)], capture_output=True)
        (tmp_path / "ro").chmod(0o755)


def test_h5_left_readable_after_full_disk(tmp_path, monkeypatch):
    target = tmp_path / "ok.h5"
    with write_atomically(target) as f:
        f["x"] = np.arange(3.0)
    _full_disk(monkeypatch)
    with pytest.raises(RunFailure):
        with write_atomically(target) as f:
            f["x"] = np.arange(4.0)
    with h5py.File(target, "r") as f:
        assert f["x"][()].tolist() == [0.0, 1.0, 2.0]
