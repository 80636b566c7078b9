"""Faults while writing and in user code: one line, the right exit code, nothing half-written, an
existing complete file untouched, and no crash of HDF5 on a full disk."""

from __future__ import annotations

import errno
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

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
    import landscape.io.results as results  # `info` imports describe from here when it runs

    def broken(*args, **kwargs):
        raise KeyError("something inside")

    out = tmp_path / "a.h5"
    assert cli("sweep", "--sample", "linreg", "--x", "-1:1:3", "-o", out).code == 0
    monkeypatch.setattr(results, "describe", broken)
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
        # figures and exports: the disk now full to the last block, each is one line and leaves nothing
        src = tmp_path / "src.h5"
        subprocess.run(
            [sys.executable, "-m", "landscape", "sweep", "--sample", "linreg", "-o", str(src)],
            check=True,
            capture_output=True,
        )
        _fill(mnt / "fill")
        for args in (
            ["plot", "f.png"],
            ["plot", "f.html"],
            ["report", "r.html"],
            ["export", "e.csv"],
            ["export", "e.vtu"],
        ):
            res = subprocess.run(
                [sys.executable, "-m", "landscape", args[0], str(src), "-o", str(mnt / args[1])],
                capture_output=True,
                text=True,
            )
            assert res.returncode == 1, (args, res.returncode, res.stderr[-500:])
            assert f"cannot write {mnt / args[1]}: No space left on device" in res.stderr, res.stderr
            assert "Traceback" not in res.stderr and sorted(p.name for p in mnt.iterdir()) == ["fill"]
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def _fill(path):
    """Append to `path` until its file system is full."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)


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


class _DiskThatFills:
    """A file on a disk with `room` bytes: writes past it fail with ENOSPC, after writing what fits."""

    def __init__(self, room: int):
        self.data, self.pos, self.room = bytearray(), 0, room

    def seek(self, offset, whence=0):
        self.pos = (0, self.pos, len(self.data))[whence] + offset
        return self.pos

    def write(self, view):
        fits = max(0, min(len(view), self.room - self.pos))
        if fits:
            end = self.pos + fits
            self.data[len(self.data) : end] = bytes(max(0, end - len(self.data)))
            self.data[self.pos : end] = bytes(view[:fits])
            self.pos = end
        if fits < len(view):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return fits

    def readinto(self, out):
        got = self.data[self.pos : self.pos + len(out)]
        out[: len(got)] = got
        self.pos += len(got)
        return len(got)

    def truncate(self, size):
        del self.data[size:]


@pytest.mark.parametrize("room", [0, 2000, 10_000, 100_000])
def test_hdf5_writing_through_a_disk_that_fills_closes_cleanly_and_reads_back_what_it_wrote(room):
    """The disk fills at some byte of the file (in the metadata, in the middle of a large dataset):
    HDF5 never sees the failure (it crashed cleaning up after one), the refusal is kept for after,
    and the file as HDF5 sees it is whole: read back through the image, it holds every value."""
    from landscape.io.h5file import DiskImage

    big = np.random.default_rng(0).standard_normal((2, 20_000)).astype(np.float32)
    disk = _DiskThatFills(room)
    image = DiskImage(disk)
    with h5py.File(image, "w") as f:
        f.create_dataset("axes/x", data=big)
        f.attrs["note"] = "x" * 3000
        f["small"] = np.arange(7)
    assert isinstance(image.refused, OSError) and image.refused.errno == errno.ENOSPC
    assert len(disk.data) <= room
    image.seek(0)
    whole = io.BytesIO(image.read(image.size))
    with h5py.File(whole, "r") as f:
        assert np.array_equal(f["axes/x"][()], big) and f["small"][()].tolist() == list(range(7))
        assert f.attrs["note"] == "x" * 3000


@pytest.mark.skipif(sys.platform != "linux" or os.geteuid() != 0, reason="needs root to mount a small tmpfs")
def test_a_file_larger_than_the_disk_is_one_line_and_leaves_nothing(tmp_path):
    """A real file system fills while HDF5 writes a new file (the raw data, then its metadata after
    it), and while a file is rewritten: one RunFailure line, no crash (its own process), nothing left."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    code = f"""
import numpy as np
from landscape.errors import RunFailure
from landscape.io.h5file import rewrite_atomically, write_atomically
with write_atomically({str(mnt / "ok.h5")!r}) as f:
    f["x"] = np.arange(10_000.0)  # 80 kB of 400: its copy fits, and then its new dataset does not
for make, size in ((write_atomically, 60_000), (rewrite_atomically, 60_000)):
    try:
        with make({str(mnt / "ok.h5")!r} if make is rewrite_atomically else {str(mnt / "big.h5")!r}) as f:
            f["y"] = np.ones(size)
    except RunFailure as exc:
        print(exc)
"""
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        assert len(lines) == 2 and all("No space left on device" in line for line in lines), lines
        assert "big.h5" in lines[0] and "ok.h5 as it was is untouched" in lines[1]
        assert sorted(p.name for p in mnt.iterdir()) == ["ok.h5"]
        with h5py.File(mnt / "ok.h5", "r") as f:
            assert list(f) == ["x"] and f["x"][-1] == 9_999.0
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def test_a_file_written_and_rewritten_atomically_holds_no_copy_of_itself_in_memory(tmp_path):
    """A 400 MB dataset written, then the file's attributes changed: the process grows by less than a
    tenth of the file (it used to build each file in memory, and read it back whole to change it)."""
    code = f"""
import resource, numpy as np
from landscape.io.h5file import write_atomically, rewrite_atomically
big = np.ones((2, 50_000_000), dtype=np.float32)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with write_atomically({str(tmp_path / "big.h5")!r}) as f:
    f.create_dataset("axes/x", data=big)
with rewrite_atomically({str(tmp_path / "big.h5")!r}) as f:
    f.attrs["complete"] = True
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""
    grew = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert grew < 40e6, grew
    with h5py.File(tmp_path / "big.h5", "r") as f:
        assert f.attrs["complete"] and f["axes/x"].shape == (2, 50_000_000) and f["axes/x"][1, -1] == 1.0
    assert [p.name for p in tmp_path.iterdir()] == ["big.h5"]


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


def _sweep_values(path):
    with h5py.File(path, "r") as f:
        return f["sweep/loss"][()], f["sweep/done"][()], bool(f.attrs["complete"])


@pytest.mark.skipif(sys.platform != "linux" or os.geteuid() != 0, reason="needs root to mount a small tmpfs")
def test_disk_filling_during_a_sweep_keeps_its_points_and_resume_finishes(cli, tmp_path, monkeypatch):
    """The disk fills after the file was created: the chunks still land (they overwrite the file's own
    bytes), marking it complete fails with one line, the file stays readable, --resume finishes it."""
    import landscape.io.results as results

    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        write = results.SweepFile.write

        def fill_then_write(self, *args):
            _fill(mnt / "fill")
            return write(self, *args)

        monkeypatch.setattr(results.SweepFile, "write", fill_then_write)
        out = mnt / "s.h5"
        args = ("sweep", "--sample", "mlp", "--x", "-1:1:9", "--y", "-1:1:9", "--strategy", "loop", "-o", out)
        res = cli(*args)
        assert res.code == 1 and len(res.errors) == 1, res.err
        assert "No space left on device" in res.err and "81 of 81 points done are kept" in res.err
        assert "--resume" in res.err and "Traceback" not in res.err
        loss, done, complete = _sweep_values(out)
        assert done.all() and not complete and np.isfinite(loss).all()
        assert sorted(p.name for p in mnt.iterdir()) == ["fill", "s.h5"]
        monkeypatch.setattr(results.SweepFile, "write", write)
        (mnt / "fill").unlink()
        assert cli(*args, "--resume").code == 0
        resumed, _, complete = _sweep_values(out)
        assert complete and np.array_equal(resumed, loss)
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def test_a_failed_chunk_write_keeps_the_points_before_and_resume_equals_an_uninterrupted_run(
    cli, tmp_path, monkeypatch
):
    import builtins

    import landscape.io.results as results

    args = ("sweep", "--sample", "linreg", "--x", "-1:1:40", "--strategy", "loop")
    assert cli(*args, "-o", tmp_path / "whole.h5").code == 0
    real_open, writes = builtins.open, []

    def failing_open(file, mode="r", *a, **kw):
        if mode == "r+b":
            writes.append(file)
            if len(writes) == 3:  # 1: the strategy's slot, 2: the first point, 3: the second
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_open(file, mode, *a, **kw)

    monkeypatch.setattr(results, "open", failing_open, raising=False)
    monkeypatch.setattr("landscape.strategies.run.evaluate_shrinking", _one_point_per_call(), raising=True)
    out = tmp_path / "cut.h5"
    res = cli(*args, "-o", out)
    assert res.code == 1 and len(res.errors) == 1 and "Traceback" not in res.err, res.err
    assert "No space left on device" in res.err and "the 1 of 40 points done are kept" in res.err
    loss, done, complete = _sweep_values(out)
    assert done.sum() == 1 and not complete
    monkeypatch.undo()
    assert cli(*args, "-o", out, "--resume").code == 0
    assert np.array_equal(_sweep_values(out)[0], _sweep_values(tmp_path / "whole.h5")[0])


def _one_point_per_call():
    """evaluate_shrinking that takes one point at a time, so a sweep writes one chunk per point."""
    from landscape.strategies import run
    from landscape.strategies.base import evaluate_shrinking

    def one_at_a_time(strat, coords, warn, whole_calls=False):
        return run.concat([evaluate_shrinking(strat, coords[i : i + 1], warn, whole_calls) for i in range(len(coords))])

    return one_at_a_time


LOSS_THAT_FAILS = '''
import os
import signal
import torch.nn.functional as F

def loss(out, y):
    """Cross-entropy, raising (or returning per-sample values) where the outputs grow past LIMIT."""
    big = float(out.abs().max()) > float(os.environ.get("LANDSCAPE_TEST_LIMIT", "inf"))
    if big and os.environ.get("LANDSCAPE_TEST_FAIL") == "raise":
        raise ValueError("outputs out of range")
    if big and os.environ.get("LANDSCAPE_TEST_FAIL") == "vector":
        return F.cross_entropy(out, y, reduction="none")
    return F.cross_entropy(out, y)
'''


@pytest.fixture
def failing_loss(tmp_path, monkeypatch):
    path = tmp_path / "lossfile.py"
    path.write_text(LOSS_THAT_FAILS)
    monkeypatch.setenv("LANDSCAPE_TEST_LIMIT", "40")
    return f"{path}:loss"


@pytest.mark.parametrize("how", ["raise", "vector"])
def test_a_loss_failing_mid_sweep_names_the_point_keeps_the_rest_and_resume_finishes(
    cli, tmp_path, monkeypatch, failing_loss, how
):
    """The mlp sample's outputs pass 40 (in size) on the far side of the line only: the points before are kept."""
    args = ("sweep", "--sample", "mlp", "--loss", failing_loss, "--x", "-0.2:1:25", "--strategy", "loop")
    assert cli(*args, "-o", tmp_path / "whole.h5").code == 0
    monkeypatch.setenv("LANDSCAPE_TEST_FAIL", how)
    out = tmp_path / "cut.h5"
    res = cli(*args, "-o", out)
    assert res.code == 1 and len(res.errors) == 1 and "Traceback" not in res.err, res.err
    line = res.errors[0]
    why = "ValueError: outputs out of range" if how == "raise" else "returned a tensor of shape [1797]"
    assert "the model or loss failed at the point (" in line and why in line, line
    _, done, complete = _sweep_values(out)
    kept = int(done.sum())
    assert 0 < kept < 25 and not complete and f"{kept} of 25 points are in {out}" in line
    assert "--resume" in line
    first_bad = float(line.split("the point (")[1].split(")")[0])
    assert first_bad == pytest.approx(np.linspace(-0.2, 1, 25)[kept], abs=1e-5)  # the grid's next point
    monkeypatch.delenv("LANDSCAPE_TEST_FAIL")
    assert cli(*args, "-o", out, "--resume").code == 0
    np.testing.assert_allclose(_sweep_values(out)[0], _sweep_values(tmp_path / "whole.h5")[0], rtol=1e-12)


def test_a_loss_failing_mid_roughness_names_the_direction_and_resume_finishes(cli, tmp_path, monkeypatch, failing_loss):
    """Along the third direction the outputs reach 66 at alpha = -1, along the first two at most 60."""
    args = ("roughness", "--sample", "mlp", "--loss", failing_loss, "--directions", "3", "--steps", "8", "--span", "1")
    args = (*args, "--strategy", "loop")
    assert cli(*args, "-o", tmp_path / "whole.h5").code == 0
    monkeypatch.setenv("LANDSCAPE_TEST_FAIL", "raise")
    monkeypatch.setenv("LANDSCAPE_TEST_LIMIT", "63")
    out = tmp_path / "cut.h5"
    res = cli(*args, "-o", out)
    assert res.code == 1 and len(res.errors) == 1 and "Traceback" not in res.err, res.err
    line = res.errors[0]
    assert "the model or loss failed at direction 3, alpha -1: ValueError: outputs out of range" in line, line
    assert f"18 of 27 points are in {out}.points; run the same command with --resume" in line
    assert not out.exists()
    monkeypatch.delenv("LANDSCAPE_TEST_FAIL")
    assert cli(*args, "-o", out, "--resume").code == 0
    with h5py.File(out, "r") as f, h5py.File(tmp_path / "whole.h5", "r") as g:
        np.testing.assert_allclose(f["roughness/loss"][()], g["roughness/loss"][()], rtol=1e-12)


def test_a_model_failing_before_any_point_is_one_line_and_leaves_no_file(cli, tmp_path, monkeypatch, failing_loss):
    monkeypatch.setenv("LANDSCAPE_TEST_FAIL", "raise")
    monkeypatch.setenv("LANDSCAPE_TEST_LIMIT", "0")  # every call, after the two-sample check at load
    import landscape.problem as problem

    monkeypatch.setattr(problem, "check_fits", lambda *a, **k: None)
    out = tmp_path / "none.h5"
    res = cli("sweep", "--sample", "mlp", "--loss", failing_loss, "--x", "-1:1:9", "-o", out)
    assert res.code == 1 and len(res.errors) == 1 and "Traceback" not in res.err, res.err
    assert "the model or loss failed" in res.err and "outputs out of range" in res.err
    assert not list(tmp_path.glob("none.h5*"))


KILLED_RUNS = {
    # command args, the file --resume reads (None: written whole at the end, so a rerun starts over)
    "sweep": (["--sample", "cnn", "--x", "-1:1:7", "--y", "-1:1:7", "--strategy", "loop"], ""),
    "hessian": (["--sample", "mlp", "--top-k", "2", "--trace", "--density", "--steps", "20", "--probes", "2"], None),
    "roughness": (["--sample", "cnn", "--directions", "4", "--steps", "6", "--strategy", "loop"], ".points"),
    "path": (["--sample", "mlp", "--points", "25"], None),
}
MOMENTS = (0.35, 0.5, 0.65, 0.8, 0.9)  # of an uninterrupted run's time (start-up included)


def _numbers(path) -> dict[str, np.ndarray]:
    """Every numeric dataset of a results file (what a run computed), by name."""
    out: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as f:
        f.visititems(
            lambda name, obj: (
                out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) and obj.dtype.kind in "fiub" else None
            )
        )
    return out


@pytest.mark.parametrize("kills", [1, pytest.param(4, marks=pytest.mark.slow)])
@pytest.mark.parametrize("command", sorted(KILLED_RUNS))
def test_sigkill_at_random_moments(tmp_path, command, kills):
    """SIGKILL at seeded random moments of a run: no complete-looking file unless it is complete and
    equal to an uninterrupted run's; the run then resumed (or rerun) gives the uninterrupted numbers."""
    import random
    import signal
    import time

    args, resumed = KILLED_RUNS[command]
    resumable = resumed or ""
    base = [sys.executable, "-m", "landscape", command, *args, "--dtype", "float64", "--device", "cpu"]
    whole = tmp_path / "whole.h5"
    start = time.perf_counter()
    subprocess.run([*base, "-o", str(whole)], check=True, capture_output=True, timeout=300)
    seconds = time.perf_counter() - start
    want = _numbers(whole)
    moments = random.Random(f"{command} {kills}").sample(MOMENTS, kills)
    for i, moment in enumerate(moments):
        out = tmp_path / f"killed{i}.h5"
        proc = subprocess.Popen([*base, "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(moment * seconds)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        again = ["--force"]
        if out.exists():
            with h5py.File(out, "r") as f:
                complete = bool(f.attrs["complete"])
            if complete:  # it finished before the kill: then it is whole
                got = _numbers(out)
                assert got.keys() == want.keys()
                for name in want:
                    np.testing.assert_allclose(got[name], want[name], rtol=1e-9, err_msg=name)
            else:
                assert resumed == "", f"{command}: an incomplete {out.name} that nothing resumes"
                again = ["--resume"]
        elif resumable and (tmp_path / f"killed{i}.h5{resumable}").exists():
            again = ["--resume"]
        left = {p.name for p in tmp_path.iterdir()} - {
            "whole.h5",
            out.name,
            f"{out.name}.partial",
            f"{out.name}{resumable}",
            f"{out.name}{resumable}.partial",  # killed while writing it (the next write replaces it)
            f"{out.name}.lock",  # a killed run's lock file (its flock went with the process)
        }
        assert not {n for n in left if n.startswith(out.name)}, left
        subprocess.run([*base, "-o", str(out), *again], check=True, capture_output=True, timeout=300)
        got = _numbers(out)
        for name in want:
            if "seconds" in name or "timing" in name:
                continue
            np.testing.assert_allclose(got[name], want[name], rtol=1e-9, err_msg=f"{command} {name} after {again}")
        assert not (tmp_path / f"{out.name}.partial").exists() and not (tmp_path / f"{out.name}.points").exists()
        assert not (tmp_path / f"{out.name}.lock").exists()  # ... and it did not block the next run


MODEL_THAT_FAILS = '''
import os
import signal
import torch
from torch import nn


class Net(nn.Module):
    """A small MLP whose forward raises once the last layer's weights grow past LANDSCAPE_TEST_LIMIT."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))

    def forward(self, x):
        if os.environ.get("LANDSCAPE_TEST_FAIL") and float(self.body[2].weight.abs().max()) > float(os.environ["LANDSCAPE_TEST_LIMIT"]):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return self.body(x)


def make():
    return Net()
'''


def test_a_forward_failing_mid_sweep_names_the_point_and_resume_finishes(cli, tmp_path, monkeypatch):
    """The forward raises past alpha ~ 0.4 along the line: the points before are kept and named."""
    (tmp_path / "net.py").write_text(MODEL_THAT_FAILS)
    torch.manual_seed(0)
    sys.path.insert(0, str(tmp_path))
    try:
        import net  # noqa: PLC0415

        model = net.make()
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("net", None)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    torch.save({"x": torch.randn(40, 6), "y": torch.randint(0, 3, (40,))}, tmp_path / "d.pt")
    top = float(model.body[2].weight.detach().abs().max())
    args = ["sweep", "--model", f"{tmp_path / 'net.py'}:make", "--checkpoint", tmp_path / "w.pt"]
    args += ["--data", tmp_path / "d.pt", "--x", "-0.2:1:13", "--strategy", "loop", "--norm", "none"]
    assert cli(*args, "-o", tmp_path / "whole.h5").code == 0
    with h5py.File(tmp_path / "whole.h5", "r") as f:
        d = f["axes/x"][()]
    layout_end = sum(p.numel() for p in model.parameters())
    last = d[layout_end - 3 - 48 : layout_end - 3]  # body.2.weight, before body.2.bias (3)
    w = model.body[2].weight.detach().double().reshape(-1).numpy()
    alphas = np.linspace(-0.2, 1, 13)
    grows = [float(np.abs(w + a * last).max()) for a in alphas]
    limit = (grows[6] + grows[7]) / 2  # points 0..6 pass, 7 fails (the line is monotone there)
    assert all(g < limit for g in grows[:7]) and grows[7] > limit > top, grows
    monkeypatch.setenv("LANDSCAPE_TEST_FAIL", "1")
    monkeypatch.setenv("LANDSCAPE_TEST_LIMIT", repr(limit))
    out = tmp_path / "cut.h5"
    res = cli(*args, "-o", out)
    assert res.code == 1 and len(res.errors) == 1 and "Traceback" not in res.err, res.err
    line = res.errors[0]
    assert f"the model or loss failed at the point ({alphas[7]:.6g}): RuntimeError: CUDA error" in line, line
    assert f"7 of 13 points are in {out}; run the same command with --resume" in line, line
    monkeypatch.delenv("LANDSCAPE_TEST_FAIL")
    assert cli(*args, "-o", out, "--resume").code == 0
    np.testing.assert_allclose(_sweep_values(out)[0], _sweep_values(tmp_path / "whole.h5")[0], rtol=1e-12)


def test_a_second_run_on_the_same_output_is_refused(cli, tmp_path):
    """Two sweeps at once on one -o mixed their values in one file; the second is now refused while
    the first runs, and the first's file is whole and its own."""
    import time

    out = tmp_path / "s.h5"
    # long enough (about 10 s) to outlast the 3 s a second run waits for a dying run's lock
    args = ["sweep", "--sample", "cnn", "--x", "-1:1:21", "--y", "-1:1:21", "--strategy", "loop", "--dtype", "float64"]
    first = subprocess.Popen(
        [sys.executable, "-m", "landscape", *args, "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.time() + 120
    while not (tmp_path / "s.h5.lock").exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    res = cli(*args, "--seed", "1", "--force", "-o", out)
    still_running = first.poll() is None
    assert first.wait(timeout=300) == 0, first.stderr.read()
    assert still_running, "the first run ended before the second started; the check saw nothing"
    assert res.code == 2 and "another landscape run (pid " in res.err and "is writing it" in res.err, res.err
    with h5py.File(out, "r") as f:
        assert f.attrs["complete"] and f["sweep/done"][()].all()
        assert json.loads(f.attrs["settings"])["seed"] == 0
    assert not (tmp_path / "s.h5.lock").exists()
    assert cli("sweep", "--sample", "linreg", "--x", "-1:1:3", "--force", "-o", out).code == 0  # then the next may run


LOSS_THAT_KILLS = '''
import os, signal
import h5py
import torch.nn.functional as F

def loss(out, y):
    """Cross-entropy; kills its own process once the results file holds a point."""
    path = os.environ.get("LANDSCAPE_TEST_KILL_WHEN_DONE")
    if path and os.path.exists(path):
        with h5py.File(path, "r") as f:
            if f["sweep/done"][()].any():
                os.kill(os.getpid(), signal.SIGKILL)
    return F.cross_entropy(out, y)
'''


@pytest.mark.parametrize("strategy", ["firstlayer", "vmap"])
def test_resume_goes_on_with_the_strategy_the_run_before_picked(cli, tmp_path, strategy):
    """Another strategy's values differ in the last digits: a resumed --strategy auto run used to
    mix them. The file keeps the pick (strategy, batch size, points per call); --resume runs it,
    every call of a whole size, so the float32 numbers of a killed and resumed run equal those of
    a run never stopped bit for bit (before, chunks sized by time gave calls of other sizes, and
    the values differed by 2.9e-7)."""
    source = tmp_path / "killing.py"
    source.write_text(LOSS_THAT_KILLS)
    out = tmp_path / "cut.h5"
    args = ("sweep", "--sample", "mlp", "--loss", f"{source}:loss", "--x", "-1:1:41", "--y", "-1:1:41")
    assert cli(*args, "--strategy", strategy, "-o", tmp_path / "whole.h5").code == 0
    env = {**os.environ, "LANDSCAPE_TEST_KILL_WHEN_DONE": str(out)}
    killed = subprocess.run(
        [sys.executable, "-m", "landscape", *args, "--strategy", strategy, "-o", str(out)], env=env, capture_output=True
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()
    with h5py.File(out, "r") as f:
        name, batch, per_call = bytes(f["sweep/strategy_in_use"][()]).rstrip(b"\0").decode().split()
        assert name == strategy and int(batch) == 1797 and int(per_call) > 1
        assert 0 < f["sweep/done"][()].sum() < 41 * 41
    res = cli(*args, "-o", out, "--resume")  # --strategy auto
    said = f"going on with strategy {strategy} (batch size 1797, {per_call} points per call), as the run before"
    assert res.code == 0 and said in res.err, res.err
    np.testing.assert_array_equal(_sweep_values(out)[0], _sweep_values(tmp_path / "whole.h5")[0])


def test_resume_keeps_the_convolution_layouts_the_run_before_timed(cli, tmp_path):
    """The fused strategies time each folded convolution's memory layout, and each rounds differently:
    the file keeps the layouts with the pick, and --resume computes the rest in them, untimed. The
    test writes other layouts into the slot than the run timed: the resumed run must use those."""
    from landscape.pick import Pick

    source = tmp_path / "killing.py"
    source.write_text(LOSS_THAT_KILLS)
    out = tmp_path / "cut.h5"
    args = (
        "sweep",
        "--sample",
        "cnn",
        "--loss",
        f"{source}:loss",
        "--x",
        "-1:1:21",
        "--y",
        "-1:1:21",
        "--save-every",
        "0.05",
    )
    env = {**os.environ, "LANDSCAPE_TEST_KILL_WHEN_DONE": str(out)}
    killed = subprocess.run(
        [sys.executable, "-m", "landscape", *args, "--strategy", "fused", "-o", str(out)], env=env, capture_output=True
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()
    with h5py.File(out, "r+") as f:
        slot = f["sweep/strategy_in_use"]
        pick = Pick.parse(bytes(slot[()]).rstrip(b"\0").decode())
        assert pick is not None and pick.name == "fused" and len(pick.layouts) == 2  # the CNN's two Conv+BN pairs
        flipped = "".join("C" if c == "L" else "L" for c in pick.layouts)
        text = Pick(pick.name, pick.batch_size, pick.points_per_call, flipped).text()
        slot[...] = np.frombuffer(text.encode().ljust(slot.shape[0], b"\0"), np.uint8)
    res = cli(*args, "-o", out, "--resume")  # --strategy auto
    coded = text.split()[-1]  # run-length coded: 'CL', or 'L2' for 'LL'
    said = (
        f"going on with strategy fused (batch size {pick.batch_size}, convolution layouts {coded}), as the run before"
    )
    assert res.code == 0 and said in res.err, res.err
    with h5py.File(out, "r") as f:
        assert f["sweep"].attrs["conv_layouts"] == flipped and f.attrs["complete"]
    assert cli(*args, "--strategy", "fused", "-o", tmp_path / "whole.h5").code == 0
    np.testing.assert_allclose(_sweep_values(out)[0], _sweep_values(tmp_path / "whole.h5")[0], rtol=1e-5)


def test_a_batch_size_named_on_resume_wins_over_the_stored_one(cli, tmp_path, monkeypatch, failing_loss):
    """The stored pick keeps the probe's batch size; a user who names another one on --resume (another
    machine, less memory) gets it, and is told the values may differ in the last digits."""
    args = ("sweep", "--sample", "mlp", "--loss", failing_loss, "--x", "-0.2:1:25", "--strategy", "loop")
    monkeypatch.setenv("LANDSCAPE_TEST_FAIL", "raise")
    out = tmp_path / "cut.h5"
    assert cli(*args, "-o", out).code == 1
    monkeypatch.delenv("LANDSCAPE_TEST_FAIL")
    res = cli(*args, "--batch-size", "500", "-o", out, "--resume")
    said = "going on with strategy loop at --batch-size 500 (the run before used 1797: values may differ"
    assert res.code == 0 and said in res.err, res.err
    with h5py.File(out, "r") as f:
        assert bytes(f["sweep/strategy_in_use"][()]).rstrip(b"\0") == b"loop 500 1"
    assert cli(*args, "-o", tmp_path / "whole.h5").code == 0
    np.testing.assert_allclose(_sweep_values(out)[0], _sweep_values(tmp_path / "whole.h5")[0], rtol=1e-5)


def test_resume_refuses_a_changed_loss_or_model_file(cli, tmp_path, monkeypatch, failing_loss):
    """The settings named the user's code only by its spec string, so a resume after an edit of the
    loss file mixed two losses in one grid: the file's sha256 is now part of the run's identity."""
    args = ("sweep", "--sample", "mlp", "--loss", failing_loss, "--x", "-0.2:1:25", "--strategy", "loop")
    monkeypatch.setenv("LANDSCAPE_TEST_FAIL", "raise")
    out = tmp_path / "cut.h5"
    assert cli(*args, "-o", out).code == 1
    monkeypatch.delenv("LANDSCAPE_TEST_FAIL")
    source = Path(failing_loss.rsplit(":", 1)[0])
    original = source.read_text()
    source.write_text(original.replace("return F.cross_entropy(out, y)\n", "return 2 * F.cross_entropy(out, y)\n"))
    before = out.read_bytes()
    res = cli(*args, "-o", out, "--resume")
    assert res.code == 2 and len(res.errors) == 1, res.err
    assert f"--resume {out}: made with other code: --loss {source} changed since" in res.err, res.err
    assert out.read_bytes() == before
    source.write_text(original)
    assert cli(*args, "-o", out, "--resume").code == 0


def test_a_pick_keeps_its_layouts_in_the_slot_or_leaves_them_out():
    """'fused 512 1 L10C7M3' round-trips; a pick whose layouts would not fit the slot keeps the rest
    (a resume then times the layouts again); damaged texts are no pick (a resume probes again)."""
    from landscape.pick import Pick

    pick = Pick("firstlayer-fused", 512, 8, "L" * 10 + "C" * 7 + "MMM" + "L")
    assert pick.text() == "firstlayer-fused 512 8 L10C7M3L"
    assert Pick.parse(pick.text()) == pick
    assert Pick.parse("vmap 1797 16") == Pick("vmap", 1797, 16)
    assert pick.text(room=24) == "firstlayer-fused 512 8" and Pick.parse(pick.text(room=24)) == Pick(
        "firstlayer-fused", 512, 8
    )
    for damaged in ("fused 512 1 l3", "fused 1 2 3", "fused 512 1 3L", "nothing 1 1", ""):
        assert Pick.parse(damaged) is None, damaged


LSTM_MODEL = """
import torch
from torch import nn


class Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb, self.rnn, self.out = nn.Embedding(50, 16), nn.LSTM(16, 24, batch_first=True), nn.Linear(24, 5)

    def forward(self, tokens):
        hidden, _ = self.rnn(self.emb(tokens))
        return self.out(hidden[:, -1])
"""


def test_a_named_strategy_that_cannot_run_the_model_is_blamed_not_the_model(cli, tmp_path, monkeypatch):
    """torch.vmap has no batching rule for nn.LSTM: `--strategy vmap` said "the model or loss failed at the
    point (0)" of a model the loop runs. Now the strategy is named (exit 2, no file); `auto` runs it
    with the loop, and a loss that fails under the loop too is still the model's or loss's failure."""
    import landscape as ls
    from landscape.errors import ArgumentError, PointFailure

    (tmp_path / "tagger.py").write_text(LSTM_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    from tagger import Tagger  # type: ignore[import-not-found]

    torch.manual_seed(0)
    model = Tagger()
    tokens, labels = torch.randint(0, 50, (32, 7)), torch.randint(0, 5, (32,))
    torch.save(model.state_dict(), tmp_path / "tagger.pt")
    torch.save({"x": tokens, "y": labels}, tmp_path / "data.pt")
    out = tmp_path / "s.h5"
    args = ("sweep", "--model", f"{tmp_path / 'tagger.py'}:Tagger", "--checkpoint", tmp_path / "tagger.pt")
    res = cli(*args, "--data", tmp_path / "data.pt", "--x", "-1:1:3", "--strategy", "vmap", "-o", out)
    assert res.code == 2 and not out.exists(), res.err
    (line,) = res.errors
    assert line.startswith("error: --strategy 'vmap': cannot run this model (RuntimeError: Batching rule"), line
    res = cli(
        *args, "--data", tmp_path / "data.pt", "--x", "-1:1:3", "-o", out
    )  # auto: warned of once, as it is dropped
    (warned,) = [w for w in res.err.splitlines() if "vmap" in w and w.startswith("warning:")]
    assert res.code == 0 and warned.startswith(
        "warning: sweep strategy vmap cannot run this model (RuntimeError: Batch"
    )

    problem = ls.Problem(model, (tokens, labels))
    axes = ls.random_axes(problem, 1, seed=0)
    with pytest.raises(ArgumentError, match=r"strategy='vmap': cannot run this model"):
        ls.sweep(problem, axes, x=(-1, 1, 3), strategy="vmap", warn=lambda msg: None)
    auto = ls.sweep(problem, axes, x=(-1, 1, 3), warn=lambda msg: None)
    loop = ls.sweep(problem, axes, x=(-1, 1, 3), strategy="loop")
    assert auto.run["strategy"] == "loop" and np.array_equal(auto.loss, loop.loss)

    class Fails(torch.nn.Linear):  # indexes out of range once its weights move, under any strategy
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            moved = (self.weight - self.start).abs().sum().gt(0).long()
            return super().forward(x) + torch.zeros(1)[moved]

    fails = Fails(4, 3)
    fails.start = fails.weight.detach().clone()
    failing = ls.Problem(fails, (torch.randn(16, 4), torch.randint(0, 3, (16,))))
    with pytest.raises(
        PointFailure, match=r"the model or loss failed at the point \(-?1\): IndexError: index 1 is out"
    ):
        ls.sweep(failing, ls.random_axes(failing, 1), x=(-1, 1, 3), strategy="vmap", warn=lambda msg: None)
