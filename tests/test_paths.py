"""Paths between checkpoints, the plane through three, and the PCA trajectory."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
import torch.nn as nn
from conftest import sample_problem

from landscape.io.checkpoint import fit_state_dict, read_state_dict
from landscape.io.samples import sample
from landscape.measures import loss_at
from landscape.paths import (
    barrier,
    bezier_weights,
    evaluate_path,
    flat_params,
    pca_axes,
    plane_axes,
    plane_losses,
    polyline_weights,
    project,
    recalibrate_bn,
    state_losses,
)


def states_of(problem, paths):
    return [fit_state_dict(read_state_dict(p), problem.model, p) for p in paths]


def test_weights_rows_sum_to_one_and_bezier2_is_the_line():
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    line = torch.stack([1 - t, t], dim=1)
    assert torch.allclose(bezier_weights(t, 2), line)
    assert torch.allclose(polyline_weights(t, 2), line)
    for w in (bezier_weights(t, 4), polyline_weights(t, 4)):
        assert torch.allclose(w.sum(dim=1), torch.ones(11, dtype=torch.float64))
    w = polyline_weights(torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64), 3)
    assert torch.allclose(w, torch.eye(3, dtype=torch.float64))
    mid = bezier_weights(torch.tensor([0.5], dtype=torch.float64), 3)
    assert torch.allclose(mid, torch.tensor([[0.25, 0.5, 0.25]], dtype=torch.float64))


def test_barrier_closed_form():
    t = torch.linspace(0, 1, 5, dtype=torch.float64)
    loss = torch.tensor([1.0, 2.0, 4.0, 1.5, 0.0], dtype=torch.float64)
    height, where = barrier(t, loss)
    assert height == pytest.approx(4.0 - 0.5) and where == 0.5
    convex = (t - 0.5) ** 2
    assert barrier(t, convex)[0] == pytest.approx(0.0)


@pytest.mark.parametrize("name", ["cnn", "mlp"])
def test_line_end_points_equal_own_losses(name):
    """The straight line over the whole state (BN buffers too) starts and ends at the checkpoints' own losses."""
    ckpts = sample(name)["checkpoints"]
    a, b = ckpts[0], ckpts[-1]
    p = sample_problem(name, samples=300, checkpoint=a)
    pb = sample_problem(name, samples=300, checkpoint=b)
    res = evaluate_path(p, states_of(p, [a, b]), torch.linspace(0, 1, 5, dtype=torch.float64))
    own_a = loss_at(p, p.theta)
    own_b = loss_at(pb, pb.theta)
    assert float(res.loss[0]) == pytest.approx(own_a, rel=1e-10)
    assert float(res.loss[-1]) == pytest.approx(own_b, rel=1e-10)
    assert torch.allclose(res.node_loss, torch.tensor([own_a, own_b], dtype=torch.float64), rtol=1e-10)
    # the problem is left as it was
    assert torch.equal(p.layout.flatten(p.params()), p.theta)
    assert float(res.loss[2]) != pytest.approx(own_a)


def test_bezier_with_two_points_is_the_line_and_three_points_match_direct():
    ckpts = sample("mlp")["checkpoints"]
    p = sample_problem("mlp", samples=200, checkpoint=ckpts[0])
    t = torch.linspace(0, 1, 7, dtype=torch.float64)
    two = states_of(p, [ckpts[0], ckpts[-1]])
    lin = evaluate_path(p, two, t, curve="linear")
    bez = evaluate_path(p, two, t, curve="bezier")
    assert torch.allclose(lin.loss, bez.loss, rtol=1e-12)
    three = states_of(p, [ckpts[0], ckpts[2], ckpts[-1]])
    res = evaluate_path(p, three, torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64), curve="bezier")
    f = [flat_params(p, s) for s in three]
    assert float(res.loss[1]) == pytest.approx(loss_at(p, 0.25 * f[0] + 0.5 * f[1] + 0.25 * f[2]), rel=1e-10)


def test_bn_recalibration_sets_data_statistics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).double().eval()
    x = torch.randn(50, 3, dtype=torch.float64)
    assert recalibrate_bn(model, x, batch_size=50)
    h = model[0](x).detach()
    assert torch.allclose(model[1].running_mean, h.mean(0))
    assert torch.allclose(model[1].running_var, h.var(0, unbiased=True))
    assert not model.training and model[1].momentum == 0.1
    assert not recalibrate_bn(nn.Linear(2, 2), x[:, :2], 10)


def test_recalibrated_path_on_cnn():
    ckpts = sample("cnn")["checkpoints"]
    p = sample_problem("cnn", samples=200, checkpoint=ckpts[0])
    before = {k: v.clone() for k, v in p.buffers.items()}
    res = evaluate_path(
        p, states_of(p, [ckpts[0], ckpts[-1]]), torch.linspace(0, 1, 3, dtype=torch.float64), recalibrate=p.x
    )
    assert res.recalibrated and torch.isfinite(res.loss).all()
    for k, v in p.buffers.items():
        assert torch.equal(v, before[k])


def test_plane_axes_orthonormal_and_points_reproduce_checkpoints():
    gen = torch.Generator().manual_seed(0)
    a, b, c = (torch.randn(50, dtype=torch.float64, generator=gen) for _ in range(3))
    pa = plane_axes(a, b, c)
    assert torch.allclose(pa.axes @ pa.axes.T, torch.eye(2, dtype=torch.float64), atol=1e-12)
    for point, target in zip(pa.points, (a, b, c)):
        assert torch.allclose(a + point @ pa.axes, target, atol=1e-12)
    assert pa.points[1, 1] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(Exception, match="one line"):
        plane_axes(a, b, a + 2 * (b - a))


def test_pca_reproduces_in_plane_synthetic_trajectory():
    gen = torch.Generator().manual_seed(1)
    final = torch.randn(40, dtype=torch.float64, generator=gen)
    u, v = torch.randn(40, dtype=torch.float64, generator=gen), torch.randn(40, dtype=torch.float64, generator=gen)
    ab = [(3.0, 1.0), (2.0, -0.5), (1.2, 0.7), (0.3, 0.1), (0.0, 0.0)]
    flats = [final + x * u + y * v for x, y in ab]
    tr = pca_axes(flats)
    assert torch.allclose(tr.axes @ tr.axes.T, torch.eye(2, dtype=torch.float64), atol=1e-12)
    offsets = torch.stack([f - final for f in flats])
    assert torch.allclose(tr.coords @ tr.axes, offsets, atol=1e-10)
    assert torch.allclose(project(offsets, tr.axes), tr.coords)
    assert float(tr.residual.max()) < 1e-10
    assert float(tr.explained.sum()) == pytest.approx(1.0)
    assert float(tr.explained[0]) >= float(tr.explained[1])
    assert (tr.coords[0] >= 0).all()
    # the centered variant spans the same plane here
    centered = pca_axes(flats, center=True).axes
    assert torch.allclose(centered @ tr.axes.T @ tr.axes, centered, atol=1e-10)


def test_pca_off_plane_residual_reported():
    gen = torch.Generator().manual_seed(2)
    flats = [torch.randn(30, dtype=torch.float64, generator=gen) for _ in range(5)]
    tr = pca_axes(flats)
    assert float(tr.relative_residual[:-1].max()) > 0.01
    assert float(tr.explained.sum()) < 1.0


def test_projected_loss_equals_own_loss_in_plane_without_buffers():
    ckpts = sample("mlp")["checkpoints"][-3:]
    p = sample_problem("mlp", samples=200, checkpoint=ckpts[-1])
    states = states_of(p, ckpts)
    tr = pca_axes([flat_params(p, s) for s in states])  # three checkpoints: they lie in the plane exactly
    own, _ = state_losses(p, states)
    proj, _ = plane_losses(p, tr.axes, tr.coords)
    assert torch.allclose(own, proj, rtol=1e-8)


def test_cli_path_plane_trajectory(cli, tmp_path):
    res = cli(
        "path",
        "--sample",
        "mlp",
        "--points",
        "5",
        "--samples",
        "200",
        "-o",
        tmp_path / "p.h5",
        "--figure",
        tmp_path / "p.png",
    )
    assert res.code == 0, res.err
    assert "barrier" in res.out
    with h5py.File(tmp_path / "p.h5", "r") as f:
        assert f["path/loss"].shape == (5,) and "barrier" in f["path"].attrs
    res = cli(
        "plane",
        "--sample",
        "mlp",
        "--samples",
        "200",
        "--x",
        "-5:25:4",
        "--y",
        "-5:20:3",
        "-o",
        tmp_path / "pl.h5",
        "--figure",
        tmp_path / "pl.png",
    )
    assert res.code == 0, res.err
    with h5py.File(tmp_path / "pl.h5", "r") as f:
        assert f["sweep/loss"].shape == (4, 3) and f["sweep/done"][()].all()
        assert np.allclose(f["plane/own_loss"][()], f["plane/plane_loss"][()], rtol=1e-4)
    res = cli(
        "trajectory",
        "--sample",
        "mlp",
        "--samples",
        "200",
        "--x",
        "-5:30:3",
        "--y",
        "-6:5:3",
        "-o",
        tmp_path / "t.h5",
        "--figure",
        tmp_path / "t.png",
    )
    assert res.code == 0, res.err
    assert "explained variance" in res.out
    with h5py.File(tmp_path / "t.h5", "r") as f:
        assert f["trajectory/coords"].shape == (5, 2)
        assert f["trajectory/gap"].shape == (5,)
    for name in ("p.png", "pl.png", "t.png"):
        assert (tmp_path / name).stat().st_size > 0
    bad = cli("plane", "--sample", "mlp", sample("mlp")["checkpoints"][0], "-o", tmp_path / "x.h5")
    assert bad.code == 2 and "three" in bad.err


def test_bn_recalibrate_recalibrates_the_ends_too_and_the_figure_says_so(cli, tmp_path):
    """path --bn-recalibrate: every point's BatchNorm statistics are recomputed on the training data,
    the ends included, so t=0 is the first checkpoint with recalibrated statistics (computed here
    directly), not its own loss; the own losses are stored beside it, and the figure says which is which."""
    import matplotlib

    matplotlib.use("Agg")
    from landscape.io.analysis_store import read_group
    from landscape.io.samples import sample
    from landscape.render.analysis import path_figure

    s = sample("cnn")
    a = s["checkpoints"][0]
    res = cli(
        "path", a, s["checkpoint"], "--sample", "cnn", "--bn-recalibrate", "--points", "3", "-o", tmp_path / "p.h5"
    )
    assert res.code == 0, res.err
    g = read_group(tmp_path / "p.h5", "path")
    assert g.attrs["buffers"] == "recalibrated"
    problem = sample_problem("cnn", dtype="float32")
    model = problem.model
    model.load_state_dict(torch.load(a, weights_only=True))
    with torch.no_grad():
        own = float(torch.nn.functional.cross_entropy(model(problem.x), problem.y))
        bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
        model.train()
        model(problem.x)  # one batch: the whole data set (1,797 samples)
        model.eval()
        recalibrated = float(torch.nn.functional.cross_entropy(model(problem.x), problem.y))
    assert g.arrays["loss"][0] == pytest.approx(recalibrated, rel=1e-5)
    assert g.arrays["node_loss"][0] == pytest.approx(own, rel=1e-5)
    assert abs(recalibrated - own) > 1e-3  # the two differ: the figure must say which it shows
    fig = path_figure(tmp_path / "p.h5")
    ax = fig.axes[0]
    assert "recalibrated on the training data at every point, the ends too" in ax.get_title()
    assert "checkpoints' own loss (with their own BN statistics)" in [t.get_text() for t in ax.get_legend().get_texts()]
