"""torchrun with 2 ranks (gloo, CPU) gives the same grid as one process; a killed 2-rank run resumes with 1."""

from __future__ import annotations

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


def torchrun(n: int, *args: str, **kw) -> subprocess.Popen:
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
        cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, **kw
    )


def single(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "landscape", *args], env=ENV, check=True, capture_output=True)


def test_shard_covers_everything_once():
    for n in (0, 1, 5, 7):
        for size in (1, 2, 3):
            parts = [range(n)[World(rank=r, size=size).shard(n)] for r in range(size)]
            assert [i for p in parts for i in p] == list(range(n))


def test_two_ranks_equal_one_process(tmp_path):
    single("sweep", *GRID, "-o", str(tmp_path / "one.h5"))
    proc = torchrun(2, "sweep", *GRID, "-o", str(tmp_path / "two.h5"))
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out.decode()
    a, b = read_sweep(tmp_path / "one.h5"), read_sweep(tmp_path / "two.h5")
    np.testing.assert_allclose(b["loss"], a["loss"], rtol=1e-6)
    np.testing.assert_allclose(b["accuracy"], a["accuracy"], rtol=1e-6)
    assert b["sweep_attrs"]["world_size"] == 2 and b["attrs"]["complete"]


def _done(path: Path) -> int:
    try:
        with h5py.File(path, "r") as f:
            return int(f["sweep/done"][()].sum())
    except (OSError, KeyError):
        return 0


def test_killed_two_rank_run_resumes_with_one(tmp_path):
    grid = [*GRID[:2], "--x", "-1:1:31", "--y", "-1:1:21", *GRID[6:], "--strategy", "loop"]
    path = tmp_path / "killed.h5"
    proc = torchrun(2, "sweep", *grid, "-o", str(path))
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None and _done(path) == 0:
        time.sleep(0.05)
    if proc.poll() is not None:  # say why: finished too soon, or torchrun failed to start
        pytest.fail(f"exited ({proc.returncode}) before it could be killed:\n{proc.stdout.read().decode()[-3000:]}")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    part = read_sweep(path)
    assert 0 < part["done"].sum() < part["done"].size and not part["attrs"]["complete"]
    single("sweep", *grid, "--resume", "-o", str(path))
    single("sweep", *grid, "-o", str(tmp_path / "whole.h5"))
    a, b = read_sweep(path), read_sweep(tmp_path / "whole.h5")
    assert a["attrs"]["complete"]
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-10)
