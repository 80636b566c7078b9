"""Roughness index and sharpness against closed forms and a direct loop."""

from __future__ import annotations

import itertools
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import ctrl_c_reaches_it, sample_problem

from landscape.directions import random_directions
from landscape.measures import (
    KnownPoints,
    compute_roughness,
    epsilon_sharpness,
    lla_ratios,
    loss_and_grad,
    loss_at,
    roughness_alphas,
    roughness_coords,
    roughness_index,
    sam_sharpness,
    total_variation,
    with_theta,
)
from landscape.paths import set_params

ROOT = Path(__file__).resolve().parents[1]


def linreg_at_minimum():
    """The linear-regression sample moved to its exact least-squares minimum (a quadratic bowl), and H."""
    p = sample_problem("linreg")
    x = p.x.numpy()
    a = np.hstack([x, np.ones((x.shape[0], 1))])
    sol, *_ = np.linalg.lstsq(a, p.y.numpy(), rcond=None)
    flat = p.layout.flatten({"weight": torch.from_numpy(sol[:-1].T.copy()), "bias": torch.from_numpy(sol[-1].copy())})
    q = with_theta(p, flat)
    set_params(q, q.theta)
    hess = 2.0 / x.shape[0] * a.T @ a  # MSE with one output; layout order: weight (10), bias (1)
    return q, hess


def test_alphas_symmetric_with_exact_zero():
    a = roughness_alphas(0.1, 20)
    assert a.shape == (21,)
    assert a[0] == -0.1 and a[-1] == 0.1 and a[10] == 0.0
    assert torch.allclose(a[1:] - a[:-1], torch.full((20,), 0.01, dtype=torch.float64))


def test_coords_one_hot_rows():
    a = roughness_alphas(0.5, 2)
    c = roughness_coords(3, a)
    assert c.shape == (9, 3)
    assert torch.equal(c[3:6, 1], a) and c[3:6, [0, 2]].abs().sum() == 0


def test_total_variation_closed_forms():
    span = 0.1
    a = roughness_alphas(span, 20)
    bowl = 3.0 * a**2 + 1.0
    monotone = torch.exp(a * 7)
    wiggle = torch.sin(a * 200)
    flat = torch.ones_like(a)
    t = total_variation(torch.stack([bowl, monotone, wiggle, flat]), span)
    assert t[0] == pytest.approx(1 / span, rel=1e-12)
    assert t[1] == pytest.approx(1 / (2 * span), rel=1e-12)
    assert t[2] > 1 / span  # oscillation: more variation than a bowl
    assert math.isnan(float(t[3]))


def test_roughness_index_sample_std_and_nan():
    t = torch.tensor([1.0, 2.0, 3.0, math.nan])
    ri = roughness_index(t)
    assert ri.mu == pytest.approx(2.0)
    assert ri.sigma == pytest.approx(1.0)  # ddof = 1
    assert ri.ri == pytest.approx(0.5)
    assert (ri.used, ri.dropped) == (3, 1)
    assert roughness_index(torch.full((5,), 4.0)).ri == 0.0


def test_linreg_bowl_every_t_is_one_over_span():
    """A quadratic bowl seen from its minimum: T_j = 1/l for every direction, RI = 0."""
    q, _ = linreg_at_minimum()
    span = 0.1
    dirs = random_directions(12, q.theta, q.layout, seed=3, norm="filter", ignore="none")
    res = compute_roughness(q, dirs, span, 20, strategy="loop")
    assert torch.allclose(res.t, torch.full((12,), 1 / span, dtype=torch.float64), rtol=1e-9)
    assert res.index.ri < 1e-9
    assert res.loss.shape == (12, 21)


def test_linreg_sample_checkpoint_close_to_bowl():
    p = sample_problem("linreg")
    dirs = random_directions(10, p.theta, p.layout, seed=0)
    res = compute_roughness(p, dirs, 0.1, 20)
    assert torch.allclose(res.t, torch.full((10,), 10.0, dtype=torch.float64), rtol=0.05)
    assert res.index.ri < 0.05


def test_against_direct_loop_on_nonconvex_sample():
    p = sample_problem("mlp", samples=200)
    span, steps, m = 0.3, 6, 4
    dirs = random_directions(m, p.theta, p.layout, seed=1)
    res = compute_roughness(p, dirs, span, steps)  # auto: whichever strategy is fastest
    alphas = [-span + k * 2 * span / steps for k in range(steps + 1)]
    for j in range(m):
        prof = [loss_at(p, p.theta + a * dirs[j].to(p.dtype)) for a in alphas]
        assert np.allclose(res.loss[j].numpy(), prof, rtol=1e-9, atol=1e-12)
        tv = sum(abs(prof[k + 1] - prof[k]) for k in range(steps)) / (2 * span * (max(prof) - min(prof)))
        assert float(res.t[j]) == pytest.approx(tv, rel=1e-9)
    ts = [float(v) for v in res.t]
    mu = sum(ts) / m
    sigma = math.sqrt(sum((v - mu) ** 2 for v in ts) / (m - 1))
    assert res.index.ri == pytest.approx(sigma / mu, rel=1e-9)
    # the model holds the checkpoint again afterwards
    assert torch.equal(p.layout.flatten(p.params()), p.theta)


def test_gradient_matches_finite_difference():
    p = sample_problem("mlp", samples=100)
    loss, g = loss_and_grad(p, p.theta)
    assert loss == pytest.approx(loss_at(p, p.theta), rel=1e-12)
    v = torch.randn(p.layout.size, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    h = 1e-5
    fd = (loss_at(p, p.theta + h * v) - loss_at(p, p.theta - h * v)) / (2 * h)
    assert float(g @ v) == pytest.approx(fd, rel=1e-6)


def test_sam_sharpness_closed_form_on_quadratic():
    """L(theta + rho g/|g|) - L(theta) = rho |g| + rho^2/2 ghat^T H ghat exactly for a quadratic."""
    p = sample_problem("linreg")
    _, hess = linreg_at_minimum()
    rho = 0.05
    s = sam_sharpness(p, rho)
    _, g = loss_and_grad(p, p.theta)
    gh = (g / g.norm()).numpy()
    expected = rho * float(g.norm()) + 0.5 * rho**2 * gh @ hess @ gh
    assert s.sharpness == pytest.approx(expected, rel=1e-8)
    assert s.perturbed_loss - s.loss == pytest.approx(s.sharpness)


def test_epsilon_sharpness_bounded_by_best_corner():
    """At the minimum of a convex quadratic the box maximum is at a corner; ascent finds a near-best one."""
    q, hess = linreg_at_minimum()
    eps = 1e-2
    res = epsilon_sharpness(q, eps, steps=20)
    w = (eps * (q.theta.abs() + 1)).numpy()
    best = max(0.5 * (np.array(s) * w) @ hess @ (np.array(s) * w) for s in itertools.product((-1.0, 1.0), repeat=11))
    found = res.max_loss - res.loss
    assert 0 < found <= best * (1 + 1e-9)
    assert found >= 0.8 * best
    assert res.sharpness == pytest.approx(100 * found / (1 + res.loss))


def test_lla_ratios():
    r = lla_ratios(eigenvalues=np.array([-2.0, 1.0, 10.0]))
    assert r.re == pytest.approx(0.2)
    nodes = [np.array([-1.0, 4.0]), np.array([-1.0, 4.0])]
    weights = [np.array([0.5, 0.5]), np.array([0.5, 0.5])]
    r = lla_ratios(eigenvalues=np.array([4.0]), nodes=nodes, weights=weights)
    assert r.k == pytest.approx(math.sqrt(0.25 * 1) * 2 / (math.sqrt(0.25 * 4) * 2))
    assert r.re == pytest.approx(0.25)  # only the top eigenvalue given: the extremes come from the nodes
    assert math.isnan(lla_ratios(nodes=[np.array([1.0, 2.0])], weights=[np.array([0.5, 0.5])]).k) is False


def test_cli_roughness_writes_group(cli, tmp_path):
    out = tmp_path / "r.h5"
    fig = tmp_path / "r.png"
    res = cli("roughness", "--sample", "linreg", "--directions", "6", "--steps", "10", "-o", out, "--figure", fig)
    assert res.code == 0, res.err
    assert "roughness index" in res.out
    with h5py.File(out, "r") as f:
        g = f["roughness"]
        assert g["loss"].shape == (6, 11)
        assert g["total_variation"].shape == (6,)
        assert 0 <= g.attrs["ri"] < 0.05
        assert f.attrs["kind"] == "roughness" and f.attrs["complete"]
    assert fig.stat().st_size > 0
    again = cli("roughness", "--sample", "linreg", "--directions", "6", "-o", out)
    assert again.code == 2 and "--force" in again.err


def test_known_points_are_kept_and_only_the_rest_evaluated():
    """A resumed run: the points given as known are not evaluated again, the rest are, and the profiles
    equal those of one uninterrupted run."""
    p = sample_problem("mlp", samples=200)
    dirs = random_directions(5, p.theta, p.layout, seed=2)
    whole = compute_roughness(p, dirs, 0.2, 8, strategy="loop")
    flat_loss, flat_acc = whole.loss.reshape(-1), whole.accuracy.reshape(-1)
    done = torch.zeros(flat_loss.numel(), dtype=torch.bool)
    done[::3] = True
    known = KnownPoints(torch.where(done, flat_loss, torch.nan), torch.where(done, flat_acc, torch.nan), done)
    seen: list[torch.Tensor] = []
    part = compute_roughness(p, dirs, 0.2, 8, strategy="loop", known=known, on_chunk=lambda idx, v: seen.append(idx))
    assert torch.equal(torch.sort(torch.cat(seen)).values, torch.nonzero(~done).flatten())
    assert torch.allclose(part.loss, whole.loss, rtol=1e-12) and torch.allclose(part.accuracy, whole.accuracy)
    assert part.index.ri == pytest.approx(whole.index.ri, rel=1e-12)


def _points_done(path) -> int:
    try:
        with h5py.File(path, "r") as f:
            return int(f["done"][()].sum())
    except (OSError, KeyError):
        return 0


def test_cli_roughness_resumes_an_interrupted_run(cli, tmp_path):
    """Ctrl-C leaves OUTPUT.points; --resume finishes the run with the numbers of an uninterrupted one and
    removes the points file; a run without --resume, or with other settings, is refused."""
    args = [
        "roughness",
        "--sample",
        "cnn",
        "--samples",
        "400",
        "--directions",
        "20",
        "--strategy",
        "loop",
        "--save-every",
        "0.05",
        "--device",
        "cpu",
    ]
    out, points = tmp_path / "r.h5", tmp_path / "r.h5.points"
    proc = subprocess.Popen(
        [sys.executable, "-m", "landscape", *args, "-o", str(out)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=ctrl_c_reaches_it,
    )
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and _points_done(points) == 0:
        time.sleep(0.05)
    assert proc.poll() is None, "finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    err = proc.stderr.read()
    assert proc.wait() == 130 and "run the same command with --resume" in err
    kept = _points_done(points)
    assert 0 < kept < 420 and not out.exists()
    assert cli(*args, "-o", out).code == 2  # points of a killed run: neither kept nor silently overwritten
    other = cli(*args, "--steps", "10", "-o", out, "--resume")
    assert other.code == 2 and "other settings" in other.err
    resumed = cli(*args, "-o", out, "--resume")
    assert resumed.code == 0 and f"{kept} of 420 points already done" in resumed.err
    assert not points.exists()
    assert cli(*args, "-o", tmp_path / "whole.h5").code == 0
    with h5py.File(out, "r") as f, h5py.File(tmp_path / "whole.h5", "r") as g:
        np.testing.assert_allclose(f["roughness/loss"][()], g["roughness/loss"][()], rtol=1e-12)
        assert f["roughness"].attrs["ri"] == pytest.approx(g["roughness"].attrs["ri"], rel=1e-12)


def test_cli_sharpness_and_gate(cli, tmp_path):
    out = tmp_path / "s.h5"
    res = cli("sharpness", "--sample", "linreg", "--dtype", "float64", "--hessian", "-o", out)
    assert res.code == 0, res.err
    with h5py.File(out, "r") as f:
        g = f["sharpness"].attrs
        assert g["sam"] > 0 and g["epsilon_sharpness"] >= 0
        _, hess = linreg_at_minimum()
        assert g["lambda_max"] == pytest.approx(float(np.linalg.eigvalsh(hess).max()), rel=1e-4)
        assert g["trace"] == pytest.approx(float(np.trace(hess)), rel=0.05)
    lam = float(np.linalg.eigvalsh(hess).max())
    assert cli("metrics", out, "--fail-if", f"lambda_max > {lam * 1.01}").code == 0
    assert cli("metrics", out, "--fail-if", f"lambda_max > {lam * 0.99}").code == 1
    fisher = tmp_path / "fisher.h5"  # another matrix's lambda_max must not pass for the Hessian's
    assert cli("hessian", "--sample", "linreg", "--curvature", "fisher", "--top-k", "1", "-o", fisher).code == 0
    res = cli("sharpness", "--sample", "linreg", "--curvature", fisher, "-o", tmp_path / "s2.h5")
    assert res.code != 0 and "holds the empirical Fisher, not the Hessian" in res.err
    assert not (tmp_path / "s2.h5").exists()


def test_cli_track_linreg_constant_hessian(cli, tmp_path):
    out = tmp_path / "t.h5"
    res = cli(
        "track",
        "--sample",
        "linreg",
        "--dtype",
        "float64",
        "--lr",
        "0.02",
        "--steps",
        "0,5,20,75,300",
        "-o",
        out,
        "--figure",
        tmp_path / "t.png",
    )
    assert res.code == 0, res.err
    _, hess = linreg_at_minimum()
    with h5py.File(out, "r") as f:
        lam = f["track/lambda_max"][()]
        assert np.allclose(lam, np.linalg.eigvalsh(hess).max(), rtol=1e-4)  # a quadratic: the same H everywhere
        assert f["track"].attrs["edge_of_stability"] == pytest.approx(100.0)
        assert list(f["track/step"][()]) == [0, 5, 20, 75, 300]
    assert (tmp_path / "t.png").stat().st_size > 0
