"""Hessian rank and outliers from SLQ (Sagun et al. 2017; Papyan 2019), against closed forms and exact
spectra: a linear regression whose Hessian 2 X^T X / n has a designed spectrum, and the digits MLP's
exact Hessian (torch.func.hessian + eigh)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from conftest import designed_regression, sample_problem
from torch.func import functional_call, hessian

import landscape as ls
from landscape.curvature.density import RANK_TOL


def test_designed_spectrum_rank_and_outliers():
    outliers = np.array([50.0, 30.0, 20.0, 12.0, 8.0])
    bulk = np.linspace(0.5, 2.0, 1495)  # P = 2000: more than probes x steps, so estimated, not computed whole
    eigenvalues = np.concatenate([outliers, bulk, np.zeros(500)])
    problem = designed_regression(eigenvalues)
    h = (2 * problem.x.T @ problem.x / problem.n).numpy()  # the closed form of this Hessian
    np.testing.assert_allclose(np.linalg.eigvalsh(h), np.sort(eigenvalues), atol=1e-9)  # the design holds
    res = ls.hessian(problem, top_k=1, density=True, probes=20, steps=80, seed=3)
    c = res.model.density.counts
    assert c.size == 2000
    assert c.rank == pytest.approx(1500, abs=4 * c.rank_std_error)
    # a probe's null-space mass is chi^2_500 / 2000: a standard deviation of 2000 sqrt(2 * 500) / 2000 = 32
    # eigenvalues per probe, 7 over 20 probes
    assert 3 < c.rank_std_error < 15
    assert c.outliers_ritz == 5
    assert c.outliers == pytest.approx(5, abs=4 * c.outliers_std_error)
    assert 1.9 < c.bulk_edge <= 2.0 + 1e-9  # a Ritz value of the bulk, within it
    assert c.rank_threshold == pytest.approx(RANK_TOL * 50)


def test_a_spectrum_without_a_gap_has_no_outliers():
    problem = designed_regression(np.linspace(1.0, 3.0, 1000))
    c = ls.hessian(problem, top_k=1, density=True, probes=8, steps=60).model.density.counts
    assert c.outliers_ritz == 0
    assert c.rank == pytest.approx(1000, rel=1e-9)  # no eigenvalue near zero: every probe's whole mass


def test_digits_mlp_against_its_exact_hessian(tmp_path, cli):
    problem = sample_problem("mlp")

    def loss(theta):
        return problem.loss_fn(functional_call(problem.model, problem.layout.unflatten(theta), (problem.x,)), problem.y)

    ev = np.sort(np.linalg.eigvalsh(hessian(loss)(problem.theta).numpy()))[::-1]
    r = cli("hessian", "--sample", "mlp", "--dtype", "float64", "--density", "--top-k", "1", "-o", tmp_path / "h.h5")
    assert r.code == 0, r.err
    assert "numerical rank" in " ".join(r.out.split())
    with h5py.File(tmp_path / "h.h5") as f:
        attrs = dict(f["hessian/density"].attrs)
    exact_rank = int((np.abs(ev) > attrs["rank_threshold"]).sum())
    assert attrs["rank"] == pytest.approx(exact_rank, abs=4 * attrs["rank_std_error"])
    # 10 classes: C - 1 = 9 outliers (Papyan 2019); the exact spectrum's largest gap among its top is after the 9th
    top = ev[:20]
    assert int(np.argmax(top[:-1] / top[1:])) + 1 == 9
    assert attrs["outliers_ritz"] == 9
    assert ev[9] <= attrs["bulk_edge"] < ev[8]
    r = cli("metrics", tmp_path / "h.h5", "--fail-if", "hessian.density.outliers_ritz > 20")
    assert r.code == 0, r.err
    assert ls.load(tmp_path / "h.h5").model.density.counts.outliers_ritz == 9  # read back from the tridiagonals
