"""`landscape sweep --axes hessian | --axes-from curv.h5`: eigenvector axes in a sweep file."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from landscape.io.results import read_sweep


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_sweep_along_hessian_axes(cli, tmp_path):
    curv = tmp_path / "curv.h5"
    r = cli(
        "hessian",
        "--sample",
        "linreg",
        "--dtype",
        "float64",
        "--device",
        "cpu",
        "--top-k",
        "2",
        "--tol",
        "1e-8",
        "-o",
        curv,
    )
    assert r.code == 0, r.err
    fresh, stored = tmp_path / "fresh.h5", tmp_path / "stored.h5"
    r = cli(
        "sweep",
        "--sample",
        "linreg",
        "--dtype",
        "float64",
        "--device",
        "cpu",
        "--axes",
        "hessian",
        "--x",
        "-1:1:5",
        "--y",
        "-1:1:3",
        "-o",
        fresh,
    )
    assert r.code == 0, r.err
    r = cli(
        "sweep",
        "--sample",
        "linreg",
        "--dtype",
        "float64",
        "--device",
        "cpu",
        "--axes-from",
        curv,
        "--x",
        "-1:1:5",
        "--y",
        "-1:1:3",
        "-o",
        stored,
    )
    assert r.code == 0, r.err
    a, b = read_sweep(fresh), read_sweep(stored)
    assert a["axis_attrs"]["x"]["kind"] == "hessian" and "Hessian eigenvector 1" in a["axis_attrs"]["x"]["label"]
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-8)
    # a quadratic loss along a unit eigenvector: (L(a) + L(-a)) / 2 - L(0) = lambda a^2 / 2 exactly
    lam = a["axis_attrs"]["x"]["eigenvalue"]
    line, xs = a["loss"][:, 1], a["coords"]["x"]
    np.testing.assert_allclose(0.5 * (line + line[::-1]) - line[2], 0.5 * lam * xs**2, rtol=1e-6, atol=1e-10)


def test_bad_axes_options(cli, tmp_path):
    r = cli("sweep", "--sample", "linreg", "--axes", "pca", "-o", tmp_path / "x.h5")
    assert r.code == 2 and "--axes" in r.err
    r = cli("sweep", "--sample", "linreg", "--axes-from", tmp_path / "missing.h5", "-o", tmp_path / "x.h5")
    assert r.code == 2 and "--axes-from" in r.err
