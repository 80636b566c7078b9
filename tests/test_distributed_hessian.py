"""Curvature with the data sharded over ranks: the shards' products add up to the full-data product,
and `torchrun --nproc-per-node 2 landscape hessian` (gloo, CPU) gives the numbers of one process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import sample_problem

from landscape.curvature import CurvatureOperator
from landscape.distributed import World, shard_problem
from landscape.errors import LandscapeError
from landscape.io.curvature import read_curvature

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize(
    ("curvature", "method"),
    [("hessian", "double-backward"), ("hessian", "forward-over-reverse"), ("ggn", "auto"), ("fisher", "auto")],
)
def test_shard_products_sum_to_the_full_product(curvature, method):
    full = sample_problem("mlp", samples=121)  # shards of 41, 40, 40 rows; batches of 16 leave uneven last batches
    V = torch.randn(3, full.layout.size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ref = CurvatureOperator(full, curvature=curvature, method=method, batch_size=16)
    parts = [shard_problem(World(rank=r, size=3), full) for r in range(3)]
    assert [p.n for p in parts] == [41, 40, 40] and torch.equal(torch.cat([p.x for p in parts]), full.x)
    ops = [CurvatureOperator(p, curvature=curvature, method=method, batch_size=16, n_total=full.n) for p in parts]
    assert _rel(sum(op.matmat(V) for op in ops), ref.matmat(V)) < 1e-12
    assert _rel(sum(op.gradient() for op in ops), ref.gradient()) < 1e-12
    assert all(op.info()["samples"] == full.n for op in ops)


def test_shard_problem_one_rank_and_too_few_samples():
    p = sample_problem("mlp", samples=3)
    assert shard_problem(World(), p) is p
    with pytest.raises(LandscapeError, match="3 samples cannot be shared by 4 processes"):
        shard_problem(World(rank=0, size=4), p)


ARGS = [
    "hessian",
    "--sample",
    "mlp",
    "--samples",
    "300",
    "--dtype",
    "float64",
    "--device",
    "cpu",
    "--top-k",
    "3",
    "--trace",
    "--density",
    "--probes",
    "2",
    "--steps",
    "10",
]


def test_two_ranks_equal_one_process(tmp_path):
    one, two = tmp_path / "one.h5", tmp_path / "two.h5"
    subprocess.run(
        [sys.executable, "-m", "landscape", *ARGS, "-o", str(one)],
        env=ENV,
        check=True,
        capture_output=True,
        timeout=120,
    )
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        "-m",
        "landscape",
        *ARGS,
        "-o",
        str(two),
    ]
    proc = subprocess.run(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=180)
    assert proc.returncode == 0, proc.stdout.decode()
    a, b = read_curvature(one), read_curvature(two)
    np.testing.assert_allclose(b["eigenvalues"], a["eigenvalues"], rtol=1e-6)
    assert b["converged"].all()
    np.testing.assert_allclose(b["trace"]["value"], a["trace"]["value"], rtol=1e-6)  # same seed, same probes
    np.testing.assert_allclose(b["lanczos"]["alpha"], a["lanczos"]["alpha"], rtol=1e-6)
    assert b["attrs"]["world_size"] == 2 and b["operator"]["processes"] == 2 and b["operator"]["samples"] == 300
    assert proc.stdout.decode().count("wrote") == 1  # rank 0 alone reports (and writes)
