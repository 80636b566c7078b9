"""`landscape hessian` end to end: the results file, its figures, and eigenvector axes for sweeps."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
from conftest import sample_problem

import landscape as ls
from landscape.axes import hessian_axes
from landscape.curvature.density import quadrature
from landscape.errors import LandscapeError
from landscape.io.curvature import read_curvature
from landscape.render.spectrum import spectrum_figure, spectrum_plotly


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _linreg_eigs() -> np.ndarray:
    p = sample_problem("linreg")
    xa = torch.cat([p.x, torch.ones(p.n, 1, dtype=p.x.dtype)], dim=1)
    return torch.linalg.eigvalsh(2.0 / p.n * xa.T @ xa).flip(0).numpy()


@pytest.fixture(scope="module")
def linreg_file(tmp_path_factory):
    from landscape.cli import main

    out = tmp_path_factory.mktemp("curv") / "linreg.h5"
    try:
        main(
            [
                "hessian",
                "--sample",
                "linreg",
                "--dtype",
                "float64",
                "--device",
                "cpu",
                "--trace",
                "--density",
                "--per-layer",
                "--top-k",
                "3",
                "--tol",
                "1e-8",
                "--probes",
                "3",
                "-o",
                str(out),
            ]
        )
    except SystemExit as exc:
        assert exc.code in (0, None)
    return out


def test_cli_writes_a_complete_curvature_file(linreg_file):
    curv = read_curvature(linreg_file)
    ev = _linreg_eigs()
    np.testing.assert_allclose(curv["eigenvalues"], ev[:3], rtol=1e-9)
    assert curv["converged"].all() and curv["eigenvectors"].shape == (3, 11)
    assert curv["trace"]["value"] == pytest.approx(ev.sum(), rel=1e-9)
    # 11 parameters: the whole matrix (11 products) costs less than the 3 x 80 asked for; its spectrum
    # is stored as one tridiagonal whose quadrature puts a node of weight 1/11 on every eigenvalue
    assert curv["lanczos"]["alpha"].shape == (1, 11)
    nodes, weights = quadrature(curv["lanczos"]["alpha"], curv["lanczos"]["beta"])
    np.testing.assert_allclose(np.sort(nodes[0])[::-1], ev, rtol=1e-9)
    np.testing.assert_allclose(weights[0], 1 / 11, rtol=1e-9)
    assert curv["trace"]["std_error"] == 0.0
    assert set(curv["layers"]) == {"weight", "bias"}
    assert curv["attrs"]["format"] == "landscape-results" and curv["attrs"]["kind"] == "hessian"
    assert curv["attrs"]["command"]
    with h5py.File(linreg_file, "r") as f:
        assert {"eigenvalues", "residuals", "eigenvectors", "trace", "lanczos", "density", "layers", "layout"} <= set(
            f["hessian"]
        )
        # the set-up (choosing the product method) timed apart from the work: here the whole matrix
        seconds = json.loads(f["hessian"].attrs["seconds"])
        assert set(seconds) == {"setup", "dense"} and all(t > 0 for t in seconds.values())
    assert not linreg_file.with_name(linreg_file.name + ".partial").exists()


def test_figures_from_the_file_alone(linreg_file, tmp_path):
    curv = read_curvature(linreg_file)
    for kind in ("density", "eigenvalues"):
        fig = spectrum_figure(curv, kind)
        fig.savefig(tmp_path / f"{kind}.png")
        assert (tmp_path / f"{kind}.png").stat().st_size > 1000
        assert spectrum_plotly(curv, kind).to_html(include_plotlyjs=False)
    spectrum_figure(curv, "density", sigma=0.1)  # redrawn from the stored tridiagonals
    with pytest.raises(LandscapeError, match="--kind"):
        spectrum_figure(curv, "contour")


def test_per_layer_eigenvalues_go_on_a_log_axis_only_when_positive_and_far_apart():
    def curv(layer_values):
        return {
            "eigenvalues": np.array([5.0, 2.0]),
            "residuals": np.zeros(2),
            "layers": {f"l{i}": {"eigenvalues": np.array(v)} for i, v in enumerate(layer_values)},
        }

    for values, log in (
        ([[900.0, 80.0], [0.5, 0.01]], True),
        ([[9.0, 8.0], [0.5, 0.2]], False),
        ([[900.0, 1.0], [0.5, -0.01]], False),
    ):
        ax = spectrum_figure(curv(values), "eigenvalues").axes[1]
        assert (ax.get_yscale() == "log") is log
        layout = spectrum_plotly(curv(values), "eigenvalues").layout
        assert (layout.yaxis2.type == "log") is log


def test_per_layer_densities_are_compared_by_shape():
    def runs(lam):  # SLQ on diag(lam): the layer's stored tridiagonals
        from landscape.curvature import slq

        r = slq(lambda V: V * torch.as_tensor(lam, dtype=torch.float64), len(lam), probes=3, steps=len(lam))
        return {"lanczos": {"alpha": r.alpha, "beta": r.beta}, "size": len(lam)}

    small, big = np.linspace(0.0, 0.3, 40), np.linspace(-20.0, 900.0, 40)
    curv = {**runs(np.concatenate([small, big])), "layers": {"a": runs(small), "b": runs(big)}}
    fig = spectrum_figure(curv, "density")
    assert len(fig.axes) == 3  # the whole model, then one small panel per layer
    for ax in fig.axes[1:]:
        x, y = ax.get_lines()[0].get_xdata(), ax.get_lines()[0].get_ydata()
        assert 0.98 < np.abs(x).max() < 1.1  # eigenvalue / max|eigenvalue|, plus the 5 sigma margin
        assert abs(np.trapezoid(y, x) - 1.0) < 0.02  # unit area kept
    assert "max|λ| 900" in fig.axes[2].get_title()


def test_cli_refuses_bad_options_and_existing_output(cli, linreg_file):
    r = cli("hessian", "--sample", "linreg", "-o", linreg_file)
    assert r.code == 2 and "exists" in r.err
    r = cli("hessian", "--sample", "linreg", "--which", "smallest", "-o", linreg_file.with_name("x.h5"))
    assert r.code == 2 and "--which" in r.err
    r = cli("hessian", "--sample", "linreg", "--curvature", "hvp", "-o", linreg_file.with_name("x.h5"))
    assert r.code == 2 and "--curvature" in r.err


def test_cli_ggn_on_mlp_subset(cli, tmp_path):
    out = tmp_path / "ggn.h5"
    r = cli(
        "hessian",
        "--sample",
        "mlp",
        "--samples",
        "64",
        "--curvature",
        "ggn",
        "--top-k",
        "2",
        "--which",
        "both",
        "--device",
        "cpu",
        "-o",
        out,
    )
    assert r.code == 0, r.err
    curv = read_curvature(out)
    assert curv["curvature"] == "ggn"
    assert curv["eigenvalues"].shape == (4,)
    assert curv["eigenvalues"].min() > -1e-4 * curv["eigenvalues"].max()  # PSD up to float32 rounding


def test_cli_fisher_on_mlp_subset(cli, tmp_path):
    out, fig = tmp_path / "fisher.h5", tmp_path / "fisher.png"
    r = cli(
        "hessian",
        "--sample",
        "mlp",
        "--samples",
        "64",
        "--curvature",
        "fisher",
        "--top-k",
        "3",
        "--trace",
        "--device",
        "cpu",
        "-o",
        out,
    )
    assert r.code == 0, r.err
    assert "empirical Fisher eigenvalues" in r.out
    curv = read_curvature(out)
    assert curv["curvature"] == "fisher" and curv["eigenvalues"].shape == (3,)
    assert curv["trace"]["value"] >= curv["eigenvalues"].sum() * (1 - 1e-4)  # PSD: the trace holds the top three
    assert cli("plot", out, "--kind", "eigenvalues", "-o", fig).code == 0 and fig.stat().st_size > 0
    r = cli("info", out)
    assert r.code == 0 and "│ curvature" in r.out and "fisher" in r.out
    r = cli(
        "hessian", "--sample", "mlp", "--curvature", "fisher", "--method", "double-backward", "-o", tmp_path / "x.h5"
    )
    assert r.code != 0 and "--method 'double-backward': applies to the Hessian only" in r.err


def test_hessian_axes_fresh_and_from_file(linreg_file):
    p = sample_problem("linreg")
    axes = hessian_axes(p, 2, tol=1e-8)
    dirs, attrs = axes.directions, axes.attrs
    assert dirs.shape == (2, 11) and dirs.dtype == torch.float64
    np.testing.assert_allclose(dirs.norm(dim=1).numpy(), 1.0, rtol=1e-12)
    ev = _linreg_eigs()
    assert attrs[0]["kind"] == "hessian" and attrs[0]["eigenvalue"] == pytest.approx(ev[0], rel=1e-9)
    assert "Hessian eigenvector 1" in attrs[0]["label"]
    from_file = ls.axes_from(p, ls.load(linreg_file), 2)
    stored, sattrs = from_file.directions, from_file.attrs
    assert torch.allclose(stored.abs(), dirs.abs(), atol=1e-8)
    assert sattrs[1]["eigenvalue"] == pytest.approx(ev[1], rel=1e-9)
    other = sample_problem("mlp", samples=10)
    with pytest.raises(LandscapeError, match="another model"):
        ls.axes_from(other, ls.load(linreg_file), 2)
