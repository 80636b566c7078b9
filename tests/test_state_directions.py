"""Directions over the BatchNorm running statistics too (Li et al.'s --dir_type states): every
strategy's value against the loss of the model with its weights moved and its statistics scaled by
1 + a (+ b), computed here directly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
from conftest import sample_problem
from torch.func import functional_call

import landscape as ls


def _truth(problem, axes, a: float, b: float, scales: tuple[float, float]) -> float:
    d = axes.directions.double()
    params = problem.layout.unflatten(problem.theta + a * d[0] + b * d[1])
    factor = 1 + scales[0] * a + scales[1] * b
    buffers = {n: v * factor if v.is_floating_point() and v.dim() <= 1 else v for n, v in problem.buffers.items()}
    with torch.no_grad():
        out = functional_call(problem.model, (params, buffers), (problem.x,))
    return float(nn.functional.cross_entropy(out, problem.y))


@pytest.mark.parametrize("strategy", ["loop", "vmap", "fused", "firstlayer-fused"])
def test_state_directions_scale_the_statistics_with_the_point(strategy):
    problem = sample_problem("cnn", samples=200)
    before = {n: v.clone() for n, v in problem.buffers.items()}
    axes = ls.random_axes(problem, 2, ignore=("none", "biasbn"), seed=2, states=True)
    assert axes.settings["states"] is True and "scaled by 1 + a" in axes.attrs[0]["buffers"]
    res = ls.sweep(problem, axes, x=(-0.4, 0.4, 3), y=(-0.4, 0.4, 3), strategy=strategy)
    assert res.settings["states"] is True
    for i, a in enumerate(res.coords[0]):
        for j, b in enumerate(res.coords[1]):
            assert res.loss[i, j] == pytest.approx(_truth(problem, axes, a, b, (1.0, 0.0)), rel=1e-9), (a, b)
    weights_only = ls.sweep(problem, ls.random_axes(problem, 2, ignore=("none", "biasbn"), seed=2), x=(-0.4, 0.4, 3),
                            y=(-0.4, 0.4, 3), strategy=strategy)  # fmt: skip
    assert not np.allclose(res.loss[0], weights_only.loss[0])  # the statistics moved along x...
    np.testing.assert_allclose(res.loss[1], weights_only.loss[1], rtol=1e-12)  # ...and not at x = 0
    assert all(torch.equal(problem.buffers[n], v) for n, v in before.items())  # the model's own are back


def test_states_with_biasbn_moves_nothing_and_says_so(cli, tmp_path):
    # one strategy named for both: under `auto` the probe's timings decide which strategy evaluates which
    # point, and strategies agree to rounding, not bit for bit (the comparison below is exact)
    same = ("--x", "-1:1:3", "--strategy", "loop")
    r = cli("sweep", "--sample", "cnn", "--dir-type", "states", *same, "-o", tmp_path / "s.h5")
    assert r.code == 0 and "stay fixed" in r.err
    r = cli("sweep", "--sample", "cnn", *same, "-o", tmp_path / "w.h5")
    assert np.array_equal(ls.load(tmp_path / "s.h5").loss, ls.load(tmp_path / "w.h5").loss)


def test_cli_states_resume_and_refusals(cli, tmp_path):
    out = tmp_path / "s.h5"
    args = ["sweep", "--sample", "cnn", "--dir-type", "states", "--ignore", "none", "--x", "-0.5:0.5:5", "-o", out]
    assert cli(*args).code == 0
    assert cli(*args, "--resume").code == 0  # the same settings: nothing left to do
    r = cli("sweep", "--sample", "cnn", "--ignore", "none", "--x", "-0.5:0.5:5", "-o", out, "--resume")
    assert r.code == 2 and "states" in r.err  # made with state directions: a weights-only resume is refused
    ends = ls.load(out)
    assert ends.settings["states"] is True and ends.axes.attrs[0]["buffers"].startswith("states")
    r = cli(
        "sweep",
        "--sample",
        "cnn",
        "--dir-type",
        "states",
        "--to",
        ends.provenance["checkpoint"],
        "-o",
        tmp_path / "t.h5",
    )
    assert r.code == 2 and "--dir-type states" in r.err
    r = cli("sweep", "--sample", "cnn", "--dir-type", "stats", "-o", tmp_path / "u.h5")
    assert r.code == 2 and "--dir-type" in r.err


def test_an_earlier_sweeps_state_directions_are_reused_as_they_were():
    problem = sample_problem("cnn", samples=200)
    axes = ls.random_axes(problem, 2, ignore=("none", "biasbn"), seed=2, states=True)
    first = ls.sweep(problem, axes, x=(-0.4, 0.4, 3), y=(-0.4, 0.4, 3), strategy="loop")
    again = ls.axes_from(problem, first)
    assert again.settings["states"] is True
    # the same directions, statistics moving the same way: the same numbers
    np.testing.assert_array_equal(
        ls.sweep(problem, again, x=(-0.4, 0.4, 3), y=(-0.4, 0.4, 3), strategy="loop").loss, first.loss
    )
    with pytest.raises(ls.ArgumentError, match="states"):
        ls.axes_from(problem, first, 2, to=problem.theta.clone())
