"""`landscape sweep --axes-from surface.h5`: the directions of an earlier sweep evaluated again, as
they are (Li et al.'s --dir_file), around the same or another checkpoint, and from the API."""

from __future__ import annotations

import h5py
import numpy as np
import torch
from conftest import sample_problem

import landscape as ls
from landscape.io.results import read_sweep
from landscape.io.samples import sample

GRID = ("--x", "-1:1:5", "--y", "-1:1:3", "--strategy", "loop", "--dtype", "float64")


def _directions(path) -> np.ndarray:
    with h5py.File(path, "r") as f:
        return np.stack([f[f"axes/{n}"][()] for n in ("x", "y") if f"axes/{n}" in f])


def test_a_sweeps_directions_evaluated_again_give_its_numbers(cli, tmp_path):
    first, again = tmp_path / "first.h5", tmp_path / "again.h5"
    # one named strategy: under auto the probe's timings decide which strategy evaluates which point, and
    # strategies agree to rounding, not bit for bit
    one = ("--strategy", "loop")
    assert cli("sweep", "--sample", "mlp", *GRID, *one, "--seed", "5", "--norm", "layer", "-o", first).code == 0
    res = cli("sweep", "--sample", "mlp", *GRID, *one, "--axes-from", first, "-o", again)
    assert res.code == 0, res.err
    np.testing.assert_array_equal(_directions(again), _directions(first))
    a, b = read_sweep(first), read_sweep(again)
    np.testing.assert_array_equal(b["loss"], a["loss"])  # the same plane, the same numbers (seed 0 would differ)
    assert b["axis_attrs"]["x"]["source"] == str(first) and b["axis_attrs"]["x"]["normalization"] == "layer"
    with h5py.File(again, "r") as f:
        settings = f.attrs["settings"]
    assert '"axes": "sweep"' in settings and '"norm": "layer"' in settings and '"seed": 5' in settings
    # resuming is checked against the same file's directions; another file is refused by name
    assert cli("sweep", "--sample", "mlp", *GRID, *one, "--axes-from", first, "-o", again, "--resume").code == 0
    other = tmp_path / "other.h5"
    assert cli("sweep", "--sample", "mlp", *GRID, "--seed", "6", "-o", other).code == 0
    res = cli("sweep", "--sample", "mlp", *GRID, "--axes-from", other, "-o", again, "--resume")
    assert res.code == 2 and "made with other settings (the axes from changed: sha256" in res.errors[0], res.err


def test_the_same_plane_around_another_checkpoint(cli, tmp_path):
    """Another checkpoint of the same model: the directions are the earlier ones bit for bit (not drawn
    or normalized again around the new weights), and the centre is the new weights' own loss."""
    first, moved = tmp_path / "first.h5", tmp_path / "moved.h5"
    assert cli("sweep", "--sample", "mlp", *GRID, "-o", first).code == 0
    state = torch.load(sample("mlp")["checkpoint"], weights_only=True)
    gen = torch.Generator().manual_seed(0)
    state = {k: v + 0.05 * torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in state.items()}
    ckpt = tmp_path / "later.pt"
    torch.save(state, ckpt)
    res = cli("sweep", "--sample", "mlp", "--checkpoint", ckpt, *GRID, "--axes-from", first, "-o", moved)
    assert res.code == 0, res.err
    np.testing.assert_array_equal(_directions(moved), _directions(first))
    p = sample_problem("mlp")
    p.model.load_state_dict({k: v.double() for k, v in state.items()})
    with torch.no_grad():
        want = float(p.loss_fn(p.model(p.x), p.y))
    centre = read_sweep(moved)["loss"][2, 1]
    assert abs(centre - want) <= 1e-12 * abs(want) and abs(centre - read_sweep(first)["loss"][2, 1]) > 1e-3


def test_a_line_to_another_checkpoint_with_a_stored_direction_across(cli, tmp_path):
    """--to makes x the line; y is then the earlier sweep's first direction."""
    first, line = tmp_path / "first.h5", tmp_path / "line.h5"
    assert cli("sweep", "--sample", "mlp", *GRID, "-o", first).code == 0
    state = torch.load(sample("mlp")["checkpoint"], weights_only=True)
    other = tmp_path / "other.pt"
    torch.save({k: v * 1.1 for k, v in state.items()}, other)
    res = cli("sweep", "--sample", "mlp", *GRID, "--axes-from", first, "--to", other, "-o", line)
    assert res.code == 0, res.err
    np.testing.assert_array_equal(_directions(line)[1], _directions(first)[0])
    theta = np.concatenate([v.double().flatten().numpy() for v in state.values()])
    np.testing.assert_allclose(_directions(line)[0], 0.1 * theta, rtol=1e-6)  # the order of the model's own parameters


def test_reused_axes_refused_with_a_reason(cli, tmp_path):
    line, cnn = tmp_path / "line.h5", tmp_path / "cnn.h5"
    assert cli("sweep", "--sample", "mlp", "--x", "-1:1:3", "-o", line).code == 0
    assert cli("sweep", "--sample", "cnn", "--x", "-1:1:3", "--samples", "64", "-o", cnn).code == 0
    cases = [
        (("--axes-from", cnn), "its directions belong to another model (parameter names or shapes differ)"),
        (("--axes-from", line, "--y", "-1:1:3"), "holds 1 direction(s), 2 needed"),
        (("--axes-from", line, "--norm", "layer"), f"--axes-from {line} gives its directions as stored"),
    ]
    for args, said in cases:
        res = cli("sweep", "--sample", "mlp", "--x", "-1:1:3", *args, "-o", tmp_path / "out.h5")
        assert res.code == 2 and len(res.errors) == 1 and said in res.errors[0], res.err
        assert not (tmp_path / "out.h5").exists()
    rough = tmp_path / "rough.h5"
    assert cli("roughness", "--sample", "linreg", "--directions", "2", "--steps", "4", "-o", rough).code == 0
    res = cli("sweep", "--sample", "linreg", "--x", "-1:1:3", "--axes-from", rough, "-o", tmp_path / "out.h5")
    assert res.code == 2 and "holds neither a sweep's directions nor eigenvectors" in res.errors[0], res.err


def test_reused_axes_from_the_api(tmp_path):
    problem = sample_problem("mlp")
    surface = ls.sweep(problem, ls.random_axes(problem, 2, seed=3), x=(-1, 1, 3), y=(-1, 1, 3), strategy="loop")
    surface.save(tmp_path / "s.h5")
    again = ls.axes_from(problem, ls.load(tmp_path / "s.h5"), 2, source="s.h5")
    assert torch.equal(again.directions, surface.axes.directions) and again.settings["axes"] == "sweep"
    redone = ls.sweep(problem, again, x=(-1, 1, 3), y=(-1, 1, 3), strategy="loop")
    np.testing.assert_array_equal(redone.loss, surface.loss)


def _blocks(problem, row: torch.Tensor) -> dict[str, torch.Tensor]:
    """A flat vector's tensors, shaped as the model's."""
    layout = problem.layout
    return {n: row[layout.block(n)].double().view(shape) for n, shape in zip(layout.names, layout.shapes)}


def test_each_axis_has_its_own_normalization_from_the_same_draws():
    """--x-norm/--y-norm, --x-ignore/--y-ignore: the draws do not depend on them, so each axis is the
    direction a single setting would have made for it; the normalizations hold tensor by tensor."""
    p = sample_problem("mlp")
    mixed = ls.random_axes(p, 2, norm=("filter", "layer"), ignore=("biasbn", "none"), seed=3).directions
    assert torch.equal(mixed[0], ls.random_axes(p, 2, norm="filter", ignore="biasbn", seed=3).directions[0])
    assert torch.equal(mixed[1], ls.random_axes(p, 2, norm="layer", ignore="none", seed=3).directions[1])
    weights = _blocks(p, p.theta)
    for name, d in _blocks(p, mixed[0]).items():  # filter: each row (output unit) has its weights' norm; biases 0
        w = weights[name]
        if w.dim() == 1:
            assert not d.any()
        else:
            torch.testing.assert_close(d.flatten(1).norm(dim=1), w.flatten(1).norm(dim=1), rtol=1e-6, atol=1e-9)
    for name, d in _blocks(p, mixed[1]).items():  # layer: each tensor has its weights' norm, biases too
        assert d.any()
        torch.testing.assert_close(d.norm(), weights[name].norm(), rtol=1e-6, atol=1e-9)


def test_the_same_direction_on_both_axes():
    p = sample_problem("mlp")
    same = ls.random_axes(p, 2, seed=4, same_dir=True)
    assert torch.equal(same.directions[0], same.directions[1]) and same.settings["same_dir"] is True
    assert torch.equal(same.directions[0], ls.random_axes(p, 1, seed=4).directions[0])
    own = ls.random_axes(p, 2, seed=4, same_dir=True, norm=("filter", "layer")).directions
    assert torch.equal(own[1], ls.random_axes(p, 1, seed=4, norm="layer").directions[0])  # x's draw, y's norm


def test_per_axis_options_from_the_command_line(cli, tmp_path):
    out = tmp_path / "mixed.h5"
    args = ("sweep", "--sample", "mlp", "--x", "-1:1:3", "--y", "-1:1:3", "--x-norm", "layer", "--y-ignore", "none")
    assert cli(*args, "-o", out).code == 0
    s = read_sweep(out)
    assert s["axis_attrs"]["x"]["normalization"] == "layer" and s["axis_attrs"]["y"]["normalization"] == "filter"
    assert s["axis_attrs"]["x"]["ignore"] == "biasbn" and s["axis_attrs"]["y"]["ignore"] == "none"
    with h5py.File(out, "r") as f:
        settings = f.attrs["settings"]
    assert '"norm": "layer/filter"' in settings and '"ignore": "biasbn/none"' in settings
    assert cli(*args, "-o", out, "--resume").code == 0
    same = tmp_path / "same.h5"
    assert cli("sweep", "--sample", "mlp", "--x", "-1:1:3", "--y", "-1:1:3", "--same-dir", "-o", same).code == 0
    np.testing.assert_array_equal(_directions(same)[0], _directions(same)[1])
    other = tmp_path / "other.pt"
    torch.save(torch.load(sample("mlp")["checkpoint"], weights_only=True), other)
    cases = [
        (("--x", "-1:1:3", "--to", other, "--x-norm", "layer"), f"--x-norm applies to a random x axis; --to makes x the line to {other}"),
        (("--x", "-1:1:3", "--y-norm", "layer"), "--y-norm applies to the y axis, and this sweep has none (no --y)"),
        (("--x", "-1:1:3", "--same-dir"), "--same-dir: needs two random axes"),
        (("--x", "-1:1:3", "--y", "-1:1:3", "--axes", "hessian", "--x-ignore", "none"), "--x-ignore applies to random axes"),
        (("--x", "-1:1:3", "--x-norm", "fliter"), "--x-norm"),
    ]  # fmt: skip
    for extra, said in cases:
        res = cli("sweep", "--sample", "mlp", *extra, "-o", tmp_path / "bad.h5")
        assert res.code == 2 and len(res.errors) == 1 and said in res.errors[0], (extra, res.err)
        assert not (tmp_path / "bad.h5").exists()
