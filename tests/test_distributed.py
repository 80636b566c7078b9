"""torchrun with 2 ranks (gloo, CPU) gives the same grid as one process; a killed 2-rank run resumes with 1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from landscape.distributed import World
from landscape.io.results import read_sweep

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
GRID = [
    "--sample",
    "cnn",
    "--x",
    "-1:1:9",
    "--y",
    "-1:1:5",
    "--dtype",
    "float64",
    "--samples",
    "400",
    "--device",
    "cpu",
]


def torchrun(n: int, *args: str, env: dict[str, str] | None = None, **kw) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={n}",
        "-m",
        "landscape",
        *args,
    ]
    return subprocess.Popen(
        cmd, env=env or ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, **kw
    )


def single(*args: str) -> None:
    res = subprocess.run([sys.executable, "-m", "landscape", *args], env=ENV, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]


def test_shard_covers_everything_once():
    for n in (0, 1, 5, 7):
        for size in (1, 2, 3):
            parts = [range(n)[World(rank=r, size=size).shard(n)] for r in range(size)]
            assert [i for p in parts for i in p] == list(range(n))


def test_two_ranks_equal_one_process(tmp_path):
    from landscape.io.samples import sample

    data = np.load(sample("cnn")["data"])  # a second data set, evaluated on the grid too (--eval-data)
    np.savez(tmp_path / "test.npz", x=data["x"][-300:], y=data["y"][-300:])
    sets = ["--eval-data", f"test={tmp_path / 'test.npz'}"]
    single("sweep", *GRID, *sets, "-o", str(tmp_path / "one.h5"))
    proc = torchrun(2, "sweep", *GRID, *sets, "-o", str(tmp_path / "two.h5"))
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out.decode()
    a, b = read_sweep(tmp_path / "one.h5"), read_sweep(tmp_path / "two.h5")
    np.testing.assert_allclose(b["loss"], a["loss"], rtol=1e-6)
    np.testing.assert_allclose(b["accuracy"], a["accuracy"], rtol=1e-6)
    assert b["sweep_attrs"]["world_size"] == 2 and b["attrs"]["complete"]
    with h5py.File(tmp_path / "one.h5") as one, h5py.File(tmp_path / "two.h5") as two:
        np.testing.assert_allclose(two["data_sets/loss"][()], one["data_sets/loss"][()], rtol=1e-6)
        assert one["data_sets/loss"].shape == (2, 9, 5)


def _done(path: Path) -> int:
    try:
        with h5py.File(path, "r") as f:
            return int(f["sweep/done"][()].sum())
    except (OSError, KeyError):
        return 0


def _kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants (as a batch system ends a job), found through /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    todo, tree = [pid], []
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    for p in tree:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_killed_two_rank_run_resumes_with_one(tmp_path):
    grid = [*GRID[:2], "--x", "-1:1:31", "--y", "-1:1:21", *GRID[6:], "--strategy", "loop"]
    path = tmp_path / "killed.h5"
    proc = torchrun(2, "sweep", *grid, "-o", str(path))
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None and _done(path) == 0:
        time.sleep(0.05)
    if proc.poll() is not None:  # say why: finished too soon, or torchrun failed to start
        pytest.fail(f"exited ({proc.returncode}) before it could be killed:\n{proc.stdout.read().decode()[-3000:]}")
    _kill_tree(proc.pid)  # torchrun starts each worker in its own session: killing its group left them running
    proc.wait()
    part = read_sweep(path)
    assert 0 < part["done"].sum() < part["done"].size and not part["attrs"]["complete"]
    single("sweep", *grid, "--resume", "-o", str(path))
    single("sweep", *grid, "-o", str(tmp_path / "whole.h5"))
    a, b = read_sweep(path), read_sweep(tmp_path / "whole.h5")
    assert a["attrs"]["complete"]
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-10)


FACTORY_OF_RANK = '''
import os, time
import torch.nn as nn

def make():
    """A linear model; on rank 1 the factory raises (FAIL) or never returns (STALL)."""
    if os.environ.get("RANK") == "1":
        if os.environ.get("LANDSCAPE_TEST_RANK1") == "stall":
            time.sleep(10_000)
        raise ValueError("rank 1 cannot build the model")
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
'''

LOSS_OF_RANK = '''
import os
import torch.nn.functional as F

calls = 0

def loss(out, y):
    """Cross-entropy; on rank 1 it raises after a few calls (the grid's first chunks are done by then)."""
    global calls
    calls += 1
    if os.environ.get("RANK") == "1" and calls > 20:
        raise ValueError("rank 1's loss gave up")
    return F.cross_entropy(out, y)
'''


def _tiny_model_files(tmp_path: Path) -> list[str]:
    import torch
    import torch.nn as nn

    (tmp_path / "factory.py").write_text(FACTORY_OF_RANK)
    torch.manual_seed(0)
    torch.save(nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).state_dict(), tmp_path / "w.pt")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.normal(size=(60, 1, 4, 4)).astype("float32"), y=rng.integers(0, 3, 60))
    return ["--model", f"{tmp_path / 'factory.py'}:make", "--checkpoint", str(tmp_path / "w.pt"),
            "--data", str(tmp_path / "d.npz"), "--device", "cpu"]  # fmt: skip


def _errors(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("error:")]


def test_a_sigterm_while_the_error_is_reported_does_not_cut_it(tmp_path, monkeypatch):
    """torchrun sends SIGTERM to every rank once one has failed. A rank that was already writing its own
    error line got a KeyboardInterrupt in the middle of it, and torchrun's summary lost the line (seen
    once in CI). Now that SIGTERM is only noted: the line reaches stderr and torchrun's error file."""
    from landscape.cli import main, options

    error_file = tmp_path / "error.json"
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(error_file))
    print_line = options.tagged

    def terminated_while_printing(*args, **kw):
        os.kill(os.getpid(), signal.SIGTERM)
        print_line(*args, **kw)

    monkeypatch.setattr(options, "tagged", terminated_while_printing)
    before = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(SystemExit) as stopped:
            main(["info", str(tmp_path / "missing.h5")])
    finally:
        signal.signal(signal.SIGTERM, before)
    assert stopped.value.code == 2
    assert "missing.h5" in json.loads(error_file.read_text())["message"]["message"]


def test_a_sigterm_while_an_error_unwinds_the_stack_is_only_noted():
    """The race CI saw twice: rank 0's PeersLost was still unwinding (a context manager's exit) when
    torchrun's SIGTERM came, and the KeyboardInterrupt replaced it. With no error on its way, SIGTERM
    still stops the run."""
    from landscape.cli import Sigterm

    before = signal.getsignal(signal.SIGTERM)
    try:
        sigterm = Sigterm()
        with pytest.raises(ValueError, match="the error on its way"):
            try:
                raise ValueError("the error on its way")
            finally:
                os.kill(os.getpid(), signal.SIGTERM)
                sum(range(1000))  # the handler runs between bytecodes
        assert sigterm.came
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            sum(range(1000))
    finally:
        signal.signal(signal.SIGTERM, before)


@pytest.mark.parametrize("command", ["sweep", "hessian"])
def test_a_rank_that_fails_to_load_is_named_in_rank_0s_output(tmp_path, command):
    """Rank 1's error reached only its own stderr; rank 0, stopped by torchrun, said 'interrupted'.
    Now rank 0 says which rank failed and why, torchrun's summary carries both lines, no file is left."""
    out_file = tmp_path / "out.h5"
    proc = torchrun(
        2, command, *_tiny_model_files(tmp_path), "-o", str(out_file), env={**ENV, "LANDSCAPE_TEST_RANK1": "fail"}
    )
    out = proc.communicate(timeout=300)[0].decode()
    assert proc.returncode != 0
    why = (
        "--model "
        + str(tmp_path / "factory.py")
        + ":make: the factory raised ValueError: rank 1 cannot build the model"
    )
    assert f"error: rank 1 of 2: {why}" in _errors(out), out
    assert f"error: rank 0 of 2: stopped because rank 1 failed: {why}" in _errors(out), out
    assert f"traceback : rank 0 of 2: stopped because rank 1 failed: {why}" in out  # torchrun's summary
    assert not out_file.exists()


def test_a_stalled_rank_ends_the_run_after_the_timeout(tmp_path):
    """One rank that never answers made the others wait for gloo's 30 minutes; --dist-timeout bounds
    the wait, and rank 0 names the rank that did not come."""
    out_file = tmp_path / "out.h5"
    start = time.time()
    proc = torchrun(
        2, "sweep", *_tiny_model_files(tmp_path), "--dist-timeout", "5", "-o", str(out_file),
        env={**ENV, "LANDSCAPE_TEST_RANK1": "stall"},
    )  # fmt: skip
    out = proc.communicate(timeout=300)[0].decode()
    assert proc.returncode != 0 and time.time() - start < 120, out
    said = (
        "error: rank 0 of 2: rank 1 stopped answering: it did not reach exchange 1 of the run within --dist-timeout 5 s"
    )
    assert any(line.startswith(said) for line in _errors(out)), out
    assert not out_file.exists()


def test_a_rank_failing_mid_sweep_keeps_the_points_and_resume_finishes(tmp_path):
    """Rank 1's loss raises after the first chunks: rank 0 says why and what it kept; one process finishes it."""
    loss = tmp_path / "loss.py"
    loss.write_text(LOSS_OF_RANK)
    out_file = tmp_path / "cut.h5"
    grid = [*GRID[:2], "--x", "-1:1:21", "--y", "-1:1:11", *GRID[6:], "--strategy", "loop", "--loss", f"{loss}:loss"]
    proc = torchrun(2, "sweep", *grid, "-o", str(out_file))
    out = proc.communicate(timeout=300)[0].decode()
    assert proc.returncode != 0
    rank0 = [line for line in _errors(out) if line.startswith("error: rank 0 of 2: stopped because rank 1 failed:")]
    assert rank0 and "ValueError: rank 1's loss gave up" in rank0[0], out
    kept = _done(out_file)
    assert 0 < kept < 231 and f"{kept} of 231 points are in {out_file}" in out, out
    single("sweep", *grid, "--resume", "-o", str(out_file))
    single("sweep", *grid, "-o", str(tmp_path / "whole.h5"))
    np.testing.assert_allclose(read_sweep(out_file)["loss"], read_sweep(tmp_path / "whole.h5")["loss"], rtol=1e-12)
