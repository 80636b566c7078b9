"""`landscape metrics`: the flat table of numbers and the --fail-if CI gate."""

from __future__ import annotations

import json
import math

import h5py
import numpy as np
import pytest
import torch
from conftest import sample_problem

from landscape.errors import LandscapeError
from landscape.io.analysis_store import Group, read_group, write_results
from landscape.metrics import Condition, check, collect, matches, parse_condition


def fake_file(path, ri=0.25, extra_groups=None):
    groups = {
        "roughness": Group(
            numbers={"ri": ri, "mu": 9.0},
            arrays={"alphas": np.zeros(3), "loss": np.zeros((2, 3)), "total_variation": np.ones(2)},
            attrs={"norm": "filter"},
        )
    }
    groups.update(extra_groups or {})
    return write_results(path, kind="roughness", attrs={"checkpoint": "x.pt"}, settings={"span": 0.1}, groups=groups)


@pytest.mark.parametrize(
    "text, name, op, bound",
    [
        ("lambda_max > 50", "lambda_max", ">", 50.0),
        ("roughness.ri>=0.3", "roughness.ri", ">=", 0.3),
        ("50 < lambda_max", "lambda_max", ">", 50.0),
        ("  sam != -1e-3 ", "sam", "!=", -1e-3),
        ("x <= .5", "x", "<=", 0.5),
        ("x == inf", "x", "==", math.inf),
    ],
)
def test_parse_condition(text, name, op, bound):
    c = parse_condition(text)
    assert (c.name, c.op, c.bound) == (name, op, bound)


@pytest.mark.parametrize(
    "text", ["lambda_max >> 5", "__import__('os').system('true') > 1", "ri > abc", "ri", "> 5", "a > 1 and b < 2"]
)
def test_parse_condition_rejects(text):
    with pytest.raises(LandscapeError, match="--fail-if"):
        parse_condition(text)


def test_matches_full_and_trailing_parts():
    assert matches("ri", "roughness.ri")
    assert matches("roughness.ri", "roughness.ri")
    assert not matches("i", "roughness.ri")
    assert not matches("lambda_max", "track.lambda_max_peak")


def test_check_exactly_at_the_bound():
    tables = {"a.h5": {"roughness.ri": 0.5}}
    assert not check([parse_condition("ri > 0.5")], tables)
    assert check([parse_condition("ri >= 0.5")], tables)
    assert check([parse_condition("ri > 0.4999")], tables)
    nan = check([parse_condition("ri > 1")], {"a.h5": {"roughness.ri": math.nan}})
    assert nan and "NaN" in nan[0].message()
    with pytest.raises(LandscapeError, match="no number named"):
        check([Condition("rii", ">", 1.0, "rii > 1")], tables)


def test_collect_groups_and_sweep(tmp_path, cli):
    f = fake_file(
        tmp_path / "a.h5", extra_groups={"hessian": Group(arrays={"eigenvalues": np.array([3.0, -1.0, 7.5])})}
    )
    table = collect(f)
    assert table["roughness.ri"] == 0.25 and table["roughness.mu"] == 9.0
    assert table["hessian.lambda_max"] == 7.5 and table["hessian.lambda_k"] == -1.0
    assert "hessian.lambda_min" not in table  # not known to be the smallest: no `which` says so
    assert "roughness.norm" not in table
    res = cli("sweep", "--sample", "linreg", "--x", "-1:1:5", "-o", tmp_path / "s.h5")
    assert res.code == 0, res.err
    sweep = collect(tmp_path / "s.h5")
    assert "sweep.loss_center" in sweep and "sweep.loss_min" in sweep


def test_round_trip_group(tmp_path):
    f = fake_file(tmp_path / "a.h5")
    g = read_group(f, "roughness")
    assert g.numbers["ri"] == 0.25 and g.attrs["norm"] == "filter" and g.arrays["loss"].shape == (2, 3)
    with h5py.File(f, "r") as h:
        assert h.attrs["format"] == "landscape-results" and h.attrs["complete"]
    assert not list(tmp_path.glob("*.partial"))


def test_cli_fail_if_exit_codes(cli, tmp_path):
    f = fake_file(tmp_path / "a.h5", ri=0.25)
    ok = cli("metrics", f, "--fail-if", "ri > 0.3")
    assert ok.code == 0, ok.err
    assert "roughness.ri" in ok.out
    bad = cli("metrics", f, "--fail-if", "ri > 0.3", "--fail-if", "roughness.ri > 0.2")
    assert bad.code == 1
    assert "roughness.ri = 0.25" in bad.err and "ri > 0.2" in bad.err
    edge = cli("metrics", f, "--fail-if", "ri > 0.25")
    assert edge.code == 0
    typo = cli("metrics", f, "--fail-if", "rough > 1")
    assert typo.code == 2 and "no number named" in typo.err
    syntax = cli("metrics", f, "--fail-if", "ri >> 1")
    assert syntax.code == 2


def test_cli_metrics_json(cli, tmp_path):
    f = fake_file(tmp_path / "a.h5", ri=math.nan)
    res = cli("metrics", f, "--json")
    assert res.code == 0
    payload = json.loads(res.out)
    assert payload["numbers"][str(f)]["roughness.ri"] is None  # strict JSON: NaN as null
    assert payload["passed"]
    res = cli("metrics", f, "--json", "--fail-if", "mu < 10")
    assert res.code == 1
    assert json.loads(res.out)["broken"][0]["name"] == "roughness.mu"


def test_cli_roughness_gate_end_to_end(cli, tmp_path):
    out = tmp_path / "r.h5"
    assert cli("roughness", "--sample", "linreg", "--directions", "5", "--steps", "10", "-o", out).code == 0
    ri = collect(out)["roughness.ri"]
    assert cli("metrics", out, "--fail-if", f"ri > {ri * 1.01}").code == 0
    assert cli("metrics", out, "--fail-if", f"ri > {ri * 0.99}").code == 1


LOSS_THAT_OVERFLOWS = """
import torch.nn.functional as F

def loss(out, y):
    '''mse, infinite where it passes 100 (a diverged corner of the grid)'''
    value = F.mse_loss(out, y)
    return value * float("inf") if float(value) > 100 else value
"""


def test_a_gate_on_a_grid_with_nonfinite_points_is_broken(cli, tmp_path):
    """loss_max over the finite points alone passed a gate on a mostly infinite grid: every bound on
    such a file breaks, unless --allow-nonfinite; a bound on the count itself is checked as it is."""
    (tmp_path / "overflow.py").write_text(LOSS_THAT_OVERFLOWS)
    out = tmp_path / "s.h5"
    loss = f"{tmp_path / 'overflow.py'}:loss"
    assert cli("sweep", "--sample", "linreg", "--loss", loss, "--x", "-4:4:9", "-o", out).code == 0
    with h5py.File(out, "r") as f:
        stored = f["sweep/loss"][()]
    bad = int((~np.isfinite(stored)).sum())
    assert bad == 2  # the linreg sample's loss at -4 and 4 is 169
    finite_max = float(np.nanmax(stored))
    res = cli("metrics", out, "--fail-if", f"loss_max > {finite_max * 2}")
    assert res.code == 1, res.err
    assert f"{bad} point(s) of its loss grids are NaN or infinite" in res.err and "--allow-nonfinite" in res.err
    assert cli("metrics", out, "--fail-if", f"loss_max > {finite_max * 2}", "--allow-nonfinite").code == 0
    assert cli("metrics", out, "--fail-if", "nonfinite_points > 0").code == 1
    assert cli("metrics", out, "--fail-if", f"nonfinite_points > {bad}").code == 0
    # the roughness profiles count too
    rough = tmp_path / "r.h5"
    assert (
        cli("roughness", "--sample", "linreg", "--loss", loss, "--span", "4", "--directions", "3", "-o", rough).code
        == 0
    )
    res = cli("metrics", rough, "--json")
    assert json.loads(res.out)["numbers"][str(rough)]["roughness.nonfinite_points"] > 0
    assert cli("metrics", rough, "--fail-if", "ri > 1e9").code == 1


def test_lambda_min_is_stored_only_where_it_was_computed(cli, tmp_path):
    """With the default --which largest the least eigenvalue found is the k-th largest: it is named
    lambda_k, and a gate on lambda_min is refused by name, not passed on a positive number. With
    --which both lambda_min is the most negative eigenvalue (the sample MLP has negative curvature,
    checked against its exact Hessian's least eigenvalue)."""
    top = cli(
        "hessian",
        "--sample",
        "mlp",
        "--samples",
        "256",
        "--top-k",
        "2",
        "--dtype",
        "float64",
        "-o",
        tmp_path / "top.h5",
    )
    assert top.code == 0, top.err
    table = collect(tmp_path / "top.h5")
    assert "hessian.lambda_min" not in table and table["hessian.lambda_k"] > 0
    gate = cli("metrics", tmp_path / "top.h5", "--fail-if", "lambda_min < 0")
    assert gate.code == 2 and "lambda_min" in gate.err
    both = cli("hessian", "--sample", "mlp", "--samples", "256", "--top-k", "2", "--which", "both", "--dtype", "float64", "--tol", "1e-8",
               "-o", tmp_path / "both.h5")  # fmt: skip
    assert both.code == 0, both.err
    table = collect(tmp_path / "both.h5")
    problem = sample_problem("mlp", samples=256)
    theta = problem.theta.clone()

    def loss(t: torch.Tensor) -> torch.Tensor:
        params = problem.layout.unflatten(t)
        return torch.nn.functional.cross_entropy(
            torch.func.functional_call(problem.model, params, (problem.x,)), problem.y
        )

    exact = torch.linalg.eigvalsh(torch.func.hessian(loss)(theta))
    assert exact[0] < 0
    assert table["hessian.lambda_min"] == pytest.approx(float(exact[0]), rel=1e-4, abs=1e-9)
    assert table["hessian.lambda_max"] == pytest.approx(float(exact[-1]), rel=1e-6)
    assert cli("metrics", tmp_path / "both.h5", "--fail-if", "lambda_min < 0").code == 1
