"""Sweep values against an independent per-point loop, for every strategy and sample."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
import torch.nn as nn
from conftest import sample_problem
from torch.func import functional_call

from landscape.directions import random_directions
from landscape.fused import FoldedNorm
from landscape.io.results import read_sweep
from landscape.io.samples import sample
from landscape.losses import cross_entropy, mse
from landscape.problem import Problem, make_problem
from landscape.strategies import (
    LOOP_MARGIN,
    PROBE_POINTS,
    STRATEGIES,
    NotApplicable,
    build_strategy,
    choose_strategy,
    fastest_or_loop,
    find_first_layer,
    grid_coords,
)
from landscape.strategies.firstlayer import reads_weights_elsewhere

SAMPLES = ("mlp", "cnn", "transformer", "linreg")
UNCOMPILED = tuple(n for n in STRATEGIES if n != "compiled")  # `compiled` takes tens of seconds to build: its own tests


def direct_loss(problem, flat: torch.Tensor) -> tuple[float, float]:
    """Truth: the whole data set in one pass at weights `flat`, via functional_call (no engine code)."""
    params = problem.layout.unflatten(flat)
    with torch.no_grad():
        out = functional_call(
            problem.model, (params, problem.buffers), (problem.x.clone(),)
        )  # a model may write into it
        loss = float(problem.loss_fn(out, problem.y))
        acc = float((out.argmax(-1) == problem.y).double().mean()) if problem.classification else float("nan")
    return loss, acc


@pytest.mark.parametrize("name", SAMPLES)
@pytest.mark.parametrize("strategy", UNCOMPILED)
def test_strategy_matches_direct_loop_2d_nonsquare(name, strategy):
    problem = sample_problem(name, samples=300)
    dirs = random_directions(2, problem.theta, problem.layout, seed=3)
    coords = grid_coords([torch.linspace(-1, 1, 3), torch.linspace(-0.5, 1.0, 2)])
    try:
        strat = build_strategy(strategy, problem, dirs, points_per_call=4)
    except NotApplicable:
        # the transformer starts with an embedding (no linear first layer); only the CNN has BatchNorm to fold;
        # only the MLP and linear regression are chains of Linear layers
        assert (
            (strategy.startswith("firstlayer") and name == "transformer")
            or (strategy.endswith("fused") and name != "cnn")
            or (strategy == "mlp" and name in ("cnn", "transformer"))
        )
        return
    res = strat.evaluate(coords)
    strat.close()
    for i, c in enumerate(coords):
        loss, acc = direct_loss(problem, problem.theta + c @ dirs)
        assert res.loss[i].item() == pytest.approx(loss, rel=1e-6)
        if problem.classification:
            assert res.accuracy[i].item() == pytest.approx(acc, abs=1e-12)
    # the model holds the checkpoint again
    assert torch.equal(problem.layout.flatten(problem.params()), problem.theta)


@pytest.mark.parametrize("sample", ["mlp", "cnn"])
def test_small_batches_weighted_exactly(sample):
    """A last batch smaller than the others must count by its size, not as one equal batch."""
    problem = sample_problem(sample, samples=250, batch_size=64)
    dirs = random_directions(1, problem.theta, problem.layout, seed=1)
    coords = torch.tensor([[0.3]], dtype=torch.float64)
    for name in UNCOMPILED:
        try:
            strat = build_strategy(name, problem, dirs)
        except NotApplicable:
            # the MLP has no BatchNorm to fold, the CNN is not an MLP
            assert (name.endswith("fused") and sample == "mlp") or (name == "mlp" and sample == "cnn")
            continue
        got = strat.evaluate(coords).loss.item()
        strat.close()
        assert got == pytest.approx(direct_loss(problem, problem.theta + 0.3 * dirs[0])[0], rel=1e-10)


@pytest.mark.parametrize("ignore", ["biasbn", "none"])
def test_first_layer_norm_folded_into_cache_only_when_it_does_not_move(ignore):
    """The BatchNorm after the CNN's first conv joins the cached products when its directions are zero
    (the default); with directions on it (--ignore none) its scale moves per point and it runs per point."""
    problem = sample_problem("cnn", samples=150, batch_size=64)  # 3 batches, the last one short
    dirs = random_directions(2, problem.theta, problem.layout, seed=5, ignore=ignore)
    coords = torch.tensor([[0.4, -0.3], [1.0, 0.9], [-0.7, 0.2], [0.0, 0.0], [-1.0, -1.0]], dtype=torch.float64)
    strat = build_strategy("firstlayer-fused", problem, dirs)
    assert isinstance(strat.cache.target, FoldedNorm) == (ignore == "biasbn")
    assert strat.k >= coords.shape[0]  # all five points' first-layer outputs from one product per batch
    res = strat.evaluate(coords)
    strat.close()
    for i, c in enumerate(coords):
        loss, acc = direct_loss(problem, problem.theta + c @ dirs)
        assert res.loss[i].item() == pytest.approx(loss, rel=1e-9)
        assert res.accuracy[i].item() == pytest.approx(acc, abs=1e-12)
    assert torch.equal(problem.layout.flatten(problem.params()), problem.theta)


def test_first_layer_norm_in_cache_follows_buffers_written_between_calls():
    """`path` writes each point's BatchNorm statistics (interpolated or recalibrated) into the model
    between calls: the cached products that hold the first norm must follow them."""
    problem = sample_problem("cnn", samples=100)
    dirs = random_directions(2, problem.theta, problem.layout, seed=4)
    strat = build_strategy("firstlayer-fused", problem, dirs)
    assert isinstance(strat.cache.target, FoldedNorm)
    norm = strat.cache.target.norm
    c = torch.tensor([[0.3, -0.6]], dtype=torch.float64)
    before = strat.evaluate(c).loss.item()
    saved = norm.running_mean.clone(), norm.running_var.clone()
    with torch.no_grad():
        norm.running_mean.add_(0.5)
        norm.running_var.mul_(2.0)
    try:
        after = strat.evaluate(c).loss.item()
        assert after == pytest.approx(direct_loss(problem, problem.theta + c[0] @ dirs)[0], rel=1e-10)
        assert after != pytest.approx(before, rel=1e-6)
    finally:
        with torch.no_grad():
            norm.running_mean.copy_(saved[0])
            norm.running_var.copy_(saved[1])
        strat.close()


@pytest.mark.parametrize("layers", ["linear-bn1d", "conv1d-bn1d"])
def test_first_layer_norm_folded_into_cache_for_other_layer_kinds(layers):
    """Linear + BatchNorm1d on [B, C] and Conv1d + BatchNorm1d on [B, C, L] are folded, and the
    per-channel scale lands on the right axis."""
    torch.manual_seed(0)
    if layers == "linear-bn1d":
        model, x = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3)), torch.randn(40, 6)
    else:
        model = nn.Sequential(nn.Conv1d(2, 4, 3), nn.BatchNorm1d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 5, 3))
        x = torch.randn(40, 2, 7)
    bn = model[1]
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    bn.weight.data.uniform_(0.5, 2)
    bn.bias.data.uniform_(-1, 1)
    model.eval()
    problem = make_problem(
        model,
        model.state_dict(),
        x,
        torch.randint(0, 3, (40,)),
        cross_entropy,
        device=torch.device("cpu"),
        dtype=torch.float64,
        batch_size=16,
    )
    dirs = random_directions(2, problem.theta, problem.layout, seed=2)
    coords = torch.tensor([[0.5, -0.5], [-1.0, 0.3], [0.9, 0.9]], dtype=torch.float64)
    for name in ("fused", "firstlayer-fused"):  # the norm folded per point into the layer, or into the cache
        strat = build_strategy(name, problem, dirs)
        assert any(isinstance(m, FoldedNorm) for m in strat.forward.modules())
        if name == "firstlayer-fused":
            assert isinstance(strat.cache.target, FoldedNorm)
        res = strat.evaluate(coords)
        strat.close()
        for i, c in enumerate(coords):
            assert res.loss[i].item() == pytest.approx(direct_loss(problem, problem.theta + c @ dirs)[0], rel=1e-10)


def test_first_layer_found_only_when_fed_by_input():
    assert find_first_layer(sample_problem("mlp", samples=8))[0] == "0"
    assert find_first_layer(sample_problem("cnn", samples=8))[0] == "0"
    assert find_first_layer(sample_problem("transformer", samples=8)) is None


def _every_strategy_matches_the_direct_loop(problem, norm: str = "filter") -> list[str]:
    """Every uncompiled strategy that builds for the problem gives the direct loop's loss on a 3 x 2
    grid; the names of those that built."""
    dirs = random_directions(2, problem.theta, problem.layout, seed=3, norm=norm)
    coords = grid_coords([torch.linspace(-1, 1, 3), torch.linspace(-1, 1, 2)])
    ran = []
    for strategy in UNCOMPILED:
        try:
            strat = build_strategy(strategy, problem, dirs, points_per_call=4)
        except NotApplicable:
            continue
        res = strat.evaluate(coords)
        strat.close()
        ran.append(strategy)
        for i, c in enumerate(coords):
            assert res.loss[i].item() == pytest.approx(direct_loss(problem, problem.theta + c @ dirs)[0], rel=1e-9)
    return ran


class _Scaled(nn.Linear):  # computes more than F.linear of its weights (a scaled or quantized Linear)
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * (1 + self.weight.pow(2).sum())


class _ScaledConv(nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * (1 + self.weight.pow(2).sum())


def _old_style_weight_norm(layer: nn.Module) -> nn.Module:
    with pytest.warns(FutureWarning):  # recomputes `weight` from weight_g and weight_v in a forward pre-hook
        return nn.utils.weight_norm(layer)


@pytest.mark.parametrize(
    "wrap",
    [
        lambda layer: _Scaled(4, 16) if isinstance(layer, nn.Linear) else _ScaledConv(4, 16, 3),
        _old_style_weight_norm,
        nn.utils.parametrizations.weight_norm,
    ],
    ids=["subclass", "weight-norm-hook", "weight-norm-parametrized"],
)
def test_fast_paths_leave_layers_that_compute_more_than_the_stock_layer_to_the_model(wrap):
    """The fast paths compute a Linear, Conv or BatchNorm from its weights themselves: on a subclass
    with its own forward, a pre-hook or a parametrization they gave values 16 apart from the loop's
    (firstlayer, mlp) or folded a stale weight into a BatchNorm. Every strategy that still runs
    matches the loop; those that cannot compute such a layer say so."""
    torch.manual_seed(0)
    mlp = nn.Sequential(wrap(nn.Linear(4, 16)), nn.ReLU(), nn.Linear(16, 3))
    cnn = nn.Sequential(  # the second conv's BatchNorm would be folded into it
        nn.Conv2d(3, 4, 3), nn.ReLU(), wrap(nn.Conv2d(4, 16, 3)), nn.BatchNorm2d(16), nn.Flatten(), nn.Linear(256, 3)
    )
    for model, x in ((mlp, torch.randn(24, 4)), (cnn, torch.randn(24, 3, 8, 8))):
        model = model.double().eval()
        y = torch.randint(0, 3, (24,))
        problem = make_problem(model, model.state_dict(), x, y, cross_entropy, device="cpu", dtype=torch.float64)
        ran = _every_strategy_matches_the_direct_loop(problem, norm="layer")
        assert "vmap" in ran and not {"firstlayer", "mlp"} & set(ran if model is mlp else ()), ran


class _Twice(nn.Module):  # the same layer applied to x and again to its own output
    def __init__(self) -> None:
        super().__init__()
        self.fc, self.head = nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.fc(torch.tanh(self.fc(x)))))


class _TiedAutoencoder(nn.Module):  # the decoder reads the first layer's weight
    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(torch.tanh(self.enc(x)), self.enc.weight.t())


@pytest.mark.parametrize("model", [_Twice, _TiedAutoencoder])
def test_a_first_layer_applied_twice_or_read_elsewhere_gives_the_loops_values(model):
    """firstlayer returned the cached output for every call of the layer (0.35 off on a layer applied
    twice) and did not write its weights (0.21 off where a tied decoder reads them): now it leaves the
    first and writes the weights the model reads elsewhere."""
    torch.manual_seed(0)
    x = torch.randn(32, 8)
    y = torch.randint(0, 3, (32,)) if model is _Twice else x
    loss = cross_entropy if model is _Twice else mse
    problem = make_problem(model(), model().state_dict(), x, y, loss, device="cpu", dtype=torch.float64)
    first = find_first_layer(problem)
    assert (first is None) == (model is _Twice)
    assert first is None or reads_weights_elsewhere(problem, first)
    plain = sample_problem("mlp", samples=8)  # whose first layer's weights need no writing per point
    assert not reads_weights_elsewhere(plain, find_first_layer(plain))
    _every_strategy_matches_the_direct_loop(problem)


class _HalvesItsInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x /= 2.0  # in place, as `x /= 255` in a user's forward: it halved the stored data at every pass
        return self.body(x)


def test_a_model_that_writes_into_its_input_gets_the_data_as_given_at_every_point():
    """The loop's center loss came out 1.0896 for a true 1.0872, and shifted with every pass over the data."""
    torch.manual_seed(0)
    model = _HalvesItsInput().double()
    x, y = torch.randn(32, 4, dtype=torch.float64), torch.randint(0, 3, (32,))
    said: list[str] = []
    problem = make_problem(model, model.state_dict(), x.clone(), y, cross_entropy, device="cpu", dtype=torch.float64,
                           say=said.append)  # fmt: skip
    assert said == ["the model writes into its inputs in place: each batch is copied before it runs"]
    with torch.no_grad():
        want = float(nn.functional.cross_entropy(model.body(x / 2), y))
    assert direct_loss(problem, problem.theta)[0] == pytest.approx(want, rel=1e-12)  # the truth ran on a copy too
    assert "firstlayer" not in _every_strategy_matches_the_direct_loop(problem)  # it caches the layer from raw x
    assert torch.equal(problem.x, x)


def test_probe_keeps_fastest_and_its_values():
    problem = sample_problem("mlp", samples=200)
    dirs = random_directions(2, problem.theta, problem.layout, seed=0)
    coords = grid_coords([torch.linspace(-1, 1, 2), torch.linspace(-1, 1, 2)])
    choice = choose_strategy(problem, dirs, coords)
    assert choice.strategy.name == fastest_or_loop(choice.timings)
    for i, c in enumerate(coords):
        assert choice.probe_result.loss[i].item() == pytest.approx(
            direct_loss(problem, problem.theta + c @ dirs)[0], rel=1e-9
        )
    choice.strategy.close()


def test_loop_kept_unless_clearly_beaten():
    """Probe timings jitter by a few percent: another strategy must beat the plain loop by LOOP_MARGIN."""
    close = 1.0 / LOOP_MARGIN + 0.01
    assert fastest_or_loop({"loop": 1.0, "vmap": close}) == "loop"
    assert fastest_or_loop({"loop": 1.0, "vmap": 0.9, "mlp": 0.3}) == "mlp"
    assert fastest_or_loop({"vmap": 1.0, "fused": 0.99}) == "fused"  # no loop among the candidates


def test_probe_wastes_no_points_when_it_has_enough(monkeypatch):
    """Each probe point is evaluated by one candidate and kept; only the shared warm-up point is
    repeated, by each candidate (it may have been evaluated once before, while tuning the batch size),
    and the tuning passes at batch sizes the run does not use."""
    import landscape.strategies.probe as sweep_module

    problem = sample_problem("mlp", samples=200)
    dirs = random_directions(2, problem.theta, problem.layout, seed=0)
    coords = grid_coords([torch.linspace(-1, 1, 20), torch.linspace(-1, 1, 10)])
    evaluated: list[int] = []
    real = sweep_module.evaluate_shrinking

    def counting(strat, c, warn):
        evaluated.append(c.shape[0])
        return real(strat, c, warn)

    real_pass = sweep_module._Probe.loop_pass

    tuning: list[int] = []

    def counting_pass(self, directions):  # tuning the batch size evaluates one fresh point per pass
        one_pass = real_pass(self, directions)

        def counted(size):
            tuning.append(size)
            return one_pass(size)

        return counted

    monkeypatch.setattr(sweep_module, "evaluate_shrinking", counting)
    monkeypatch.setattr(sweep_module._Probe, "loop_pass", counting_pass)
    choice = choose_strategy(problem, dirs, coords, repeats=2)
    choice.strategy.close()
    candidates = len(choice.timings)
    # the tuning passes at the run's batch size are kept; those at other sizes are its only extra work
    evaluated += [1 for size in tuning if size == choice.strategy.batch_size]
    assert coords.shape[0] + candidates - 1 <= sum(evaluated) <= coords.shape[0] + candidates
    for i in range(0, coords.shape[0], 7):
        loss, acc = direct_loss(problem, problem.theta + coords[i] @ dirs)
        assert choice.probe_result.loss[i].item() == pytest.approx(loss, rel=1e-9)
        assert choice.probe_result.accuracy[i].item() == pytest.approx(acc, abs=1e-12)


def test_probe_points_are_stored_as_the_probe_evaluates_them():
    """A kill during the probe lost all its work (16 s on one model): its points were stored only
    once a strategy was picked. Now each probe step's values reach the sink at once, before the
    pick is recorded, and they are the points' true values."""
    from landscape.strategies import MemorySink, run_sweep

    class Recording(MemorySink):
        def __init__(self, coords, classification):
            super().__init__(coords, classification)
            self.events: list[tuple[str, int]] = []

        def write(self, flat_index, loss, accuracy):
            self.events.append(("write", len(flat_index)))
            super().write(flat_index, loss, accuracy)

        def chose(self, pick):
            self.events.append(("chose", 0))
            super().chose(pick)

    problem = sample_problem("mlp", samples=200)
    dirs = random_directions(2, problem.theta, problem.layout, seed=0)
    axes = [np.linspace(-1, 1, 15), np.linspace(-1, 1, 12)]
    sink = Recording(axes, problem.classification)
    run_sweep(problem, dirs, sink)
    at = sink.events.index(("chose", 0))
    before = [n for kind, n in sink.events[:at]]
    assert len(before) >= 3 and sum(before) == min(PROBE_POINTS, 15 * 12), sink.events
    assert sink.done.all()
    for i in (0, 1, 2, 60, 179):  # the warm-up's point, stage-one points, and later ones
        c = torch.tensor([axes[0][i // 12], axes[1][i % 12]], dtype=dirs.dtype)
        loss, acc = direct_loss(problem, problem.theta + c @ dirs)
        assert sink.loss.reshape(-1)[i] == pytest.approx(loss, rel=1e-5)


def test_parse_range():
    from landscape.cli.options import parse_range
    from landscape.strategies import axis_grid

    assert axis_grid(*parse_range("-1:1:5", "--x")).tolist() == [-1.0, -0.5, 0.0, 0.5, 1.0]
    assert axis_grid(*parse_range("-1:1:51", "--x"))[25].item() == 0.0
    assert axis_grid(*parse_range("0.5:0.5:1", "--x")).tolist() == [0.5]


@pytest.mark.parametrize("name", SAMPLES)
def test_cli_sweep_matches_direct_loop(name, cli, tmp_path):
    """The CLI's file, read back: loss[i, j] is the loss at (x[i], y[j]) on a non-square grid."""
    out = tmp_path / "s.h5"
    r = cli(
        "sweep",
        "--sample",
        name,
        "--x",
        "-1:1:4",
        "--y",
        "-0.5:0.5:3",
        "--samples",
        "200",
        "--dtype",
        "float64",
        "--device",
        "cpu",
        "-o",
        out,
    )
    assert r.code == 0, r.err
    s = read_sweep(out)
    assert s["loss"].shape == (4, 3) and s["done"].all() and s["attrs"]["complete"]
    problem = sample_problem(name, samples=200)
    import h5py

    with h5py.File(out) as f:
        dx, dy = (torch.from_numpy(f["axes"][n][()]) for n in ("x", "y"))
        assert f["axes/x"].attrs["normalization"] == "filter"
    for i, a in enumerate(s["coords"]["x"]):
        for j, b in enumerate(s["coords"]["y"]):
            loss, acc = direct_loss(problem, problem.theta + a * dx + b * dy)
            assert s["loss"][i, j] == pytest.approx(loss, rel=1e-6)
            if s["accuracy"] is not None:
                assert s["accuracy"][i, j] == pytest.approx(acc)


def test_cli_sweep_1d_and_line_to_other_checkpoint(cli, tmp_path):
    from landscape.io.samples import sample

    s = sample("mlp")
    out = tmp_path / "line.h5"
    r = cli(
        "sweep",
        "--sample",
        "mlp",
        "--to",
        s["checkpoints"][2],
        "--x",
        "0:1:5",
        "--dtype",
        "float64",
        "--samples",
        "300",
        "-o",
        out,
    )
    assert r.code == 0, r.err
    sw = read_sweep(out)
    assert sw["loss"].shape == (5,)
    assert sw["axis_attrs"]["x"]["kind"] == "interpolation"
    end = sample_problem("mlp", samples=300, checkpoint=s["checkpoints"][2])
    start = sample_problem("mlp", samples=300)
    assert sw["loss"][0] == pytest.approx(direct_loss(start, start.theta)[0], rel=1e-9)
    assert sw["loss"][-1] == pytest.approx(direct_loss(end, end.theta)[0], rel=1e-9)
    assert np.all(np.isfinite(sw["loss"]))


def test_out_of_memory_shrinks_and_goes_on():
    """An OOM (as CUDA raises it) halves the points per call, then the batch size, and the values stay right."""
    from landscape.strategies import VmapStrategy, evaluate_shrinking

    problem = sample_problem("mlp", samples=120, batch_size=120)
    dirs = random_directions(2, problem.theta, problem.layout, seed=0)
    coords = grid_coords([torch.linspace(-1, 1, 3), torch.linspace(-1, 1, 3)])

    class Tight(VmapStrategy):
        def evaluate(self, coords, whole_calls=False):
            if self.k > 2 or self.batch_size > 60:
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
            return super().evaluate(coords, whole_calls)

    strat = Tight(problem, dirs, points_per_call=16)
    said = []
    res = evaluate_shrinking(strat, coords, said.append)
    assert said == [
        "out of memory: going on with 8 points per call",
        "out of memory: going on with 4 points per call",
        "out of memory: going on with 2 points per call",
        "out of memory: going on with 1 point per call",
        "out of memory: going on with batch size 60",
    ]
    for i, c in enumerate(coords):
        assert res.loss[i].item() == pytest.approx(direct_loss(problem, problem.theta + c @ dirs)[0], rel=1e-9)


def test_bfloat16_close_to_float32():
    """bfloat16 sweeps (weights formed in float32): error under 2% of the loss range (measured: < 0.8%)."""
    grid = grid_coords([torch.linspace(-1, 1, 3), torch.linspace(-1, 1, 3)])
    values = {}
    for dtype in ("float32", "bfloat16"):
        problem = sample_problem("mlp", dtype=dtype, samples=300)
        dirs = random_directions(2, problem.theta, problem.layout, seed=0)
        strat = build_strategy("loop", problem, dirs)
        values[dtype] = strat.evaluate(grid).loss
        strat.close()
    a, b = values["float32"], values["bfloat16"]
    assert (b - a).abs().max() < 0.02 * (a.max() - a.min())


def test_fused_strategies_run_in_bfloat16():
    """Below float32 BatchNorm is not folded (it would round differently); the rest of the rewrite runs."""
    problem = sample_problem("cnn", dtype="bfloat16", samples=200)
    dirs = random_directions(2, problem.theta, problem.layout, seed=0)
    grid = grid_coords([torch.linspace(-1, 1, 3), torch.linspace(-1, 1, 2)])
    values = {}
    for name in ("loop", "fused", "firstlayer-fused"):
        strat = build_strategy(name, problem, dirs)
        values[name] = strat.evaluate(grid).loss
        strat.close()
    ref = values["loop"]
    for name in ("fused", "firstlayer-fused"):
        assert (values[name] - ref).abs().max() < 0.02 * (ref.max() - ref.min())


def _slow_loss(seconds: float):
    """The built-in cross-entropy, `seconds` slower per call: a costly model without a costly test."""
    import time

    def loss(out, y):
        time.sleep(seconds)
        return cross_entropy(out, y)

    return loss


def test_probe_cost_stays_within_its_share_of_a_short_run():
    """On a short run of a costly model (49 points of ResNet-18: the probe was the whole run, 1.5x
    the plain loop's time) the probe tries only what the run can pay for: the plain loop alone here,
    the others said to be untried (or ruled out by their modules), and every point's value kept."""
    problem = sample_problem("cnn", dtype="float32", samples=64)
    problem = problem.replace(loss_fn=_slow_loss(0.3))  # over the budget's floor (PROBE_FLOOR) per point
    dirs = random_directions(2, problem.theta, problem.layout, seed=0).to(problem.dtype)
    coords = grid_coords([torch.linspace(-1, 1, 3), torch.linspace(-1, 1, 3)]).to(problem.dtype)
    start = time.perf_counter()
    choice = choose_strategy(problem, dirs, coords, total_points=coords.shape[0])
    seconds = time.perf_counter() - start
    choice.strategy.close()
    assert choice.strategy.name == "loop"
    assert set(choice.timings) == {"loop"}
    assert {"fused", "firstlayer", "vmap"} <= set(choice.untried) | set(choice.inapplicable)
    assert "mlp" in choice.inapplicable  # a custom loss on a CNN: its modules rule it out, it is not "untried"
    assert not choice.probe_result.loss.isnan().any()
    # every point once at about the loop's pace: no batch sizes or warm-ups of other candidates paid for
    assert seconds < 1.5 * coords.shape[0] * choice.timings["loop"] + 1.0


def test_probe_tries_every_candidate_on_a_long_run():
    problem = sample_problem("cnn", dtype="float32", samples=64)
    dirs = random_directions(2, problem.theta, problem.layout, seed=0).to(problem.dtype)
    coords = grid_coords([torch.linspace(-1, 1, 8), torch.linspace(-1, 1, 8)]).to(problem.dtype)
    choice = choose_strategy(problem, dirs, coords, total_points=100_000, candidates=UNCOMPILED)
    choice.strategy.close()
    assert choice.untried == ()
    assert {"loop", "vmap", "fused", "firstlayer-fused"} <= set(choice.timings) | set(choice.dropped)


@pytest.mark.slow  # the compile takes 30-50 s on 2 cores
def test_compiled_strategy_matches_direct_loop():
    """`--strategy compiled`: the loop through torch.compile(model); new points reuse the compiled graph
    (the weights are written in place), the last short batch included."""
    pytest.importorskip("torch._inductor")
    problem = sample_problem("mlp", dtype="float32", samples=250, batch_size=100)  # the last batch is 50
    dirs = random_directions(2, problem.theta, problem.layout, seed=3).float()
    coords = grid_coords([torch.linspace(-1, 1, 3), torch.linspace(-0.5, 1.0, 2)]).float()
    strat = build_strategy("compiled", problem, dirs)
    res = strat.evaluate(coords)
    strat.close()
    for i, c in enumerate(coords):
        loss, acc = direct_loss(problem, problem.theta + c.to(problem.theta) @ dirs)
        assert res.loss[i].item() == pytest.approx(loss, rel=1e-5)
        assert res.accuracy[i].item() == pytest.approx(acc, abs=1e-12)
    assert torch.equal(problem.layout.flatten(problem.params()), problem.theta)


def test_auto_tries_compiled_only_when_the_run_pays_for_its_compile():
    """A compile costs tens of seconds: the probe leaves it untried on a run of unknown length or one
    too short for it to pay back, and never builds it there."""
    problem = sample_problem("mlp", dtype="float32", samples=200)
    dirs = random_directions(2, problem.theta, problem.layout, seed=0).float()
    coords = grid_coords([torch.linspace(-1, 1, 6), torch.linspace(-1, 1, 6)]).float()
    for total in (None, 10_000):  # 10,000 points of a sub-millisecond model: seconds, not the minutes a compile needs
        choice = choose_strategy(problem, dirs, coords, total_points=total, candidates=("loop", "vmap", "compiled"))
        choice.strategy.close()
        assert "compiled" in choice.untried and "compiled" not in choice.timings


def test_the_probe_cost_is_stored_and_said(cli, tmp_path):
    """The probe's points are kept, so its cost is its wall time over those points at the winner's pace
    (the number its budget bounds), not its wall time: both are stored, the cost is what the line says."""
    import json

    import h5py

    out = tmp_path / "s.h5"
    r = cli("sweep", "--sample", "mlp", "--x", "-1:1:21", "--y", "-1:1:21", "-o", out)
    assert r.code == 0, r.err
    with h5py.File(out) as f:
        wall, cost = float(f["sweep"].attrs["probe_seconds"]), float(f["sweep"].attrs["probe_excess_seconds"])
        untried = json.loads(f["sweep"].attrs["strategy_untried"])
    # a compile never pays on a run of seconds (what else the budget reached depends on the machine's load)
    assert "compiled" in untried and "not tried, the run being too short to pay for trying them: " in r.err
    assert 0.0 <= cost <= wall
    assert f"probe cost {cost:.2g} s" in r.err


def test_a_line_to_another_checkpoint_moves_the_batchnorm_statistics_too(tmp_path, cli, monkeypatch):
    """`--to` on BatchNorm models: the point x=1 is the other checkpoint, its running statistics
    included, so its loss is that checkpoint's own; in between both move linearly. A torchvision
    ResNet-18 (random init, its statistics drawn apart) against direct forward passes, every strategy;
    and the CLI on the sample CNN against the other checkpoint's own sweep."""
    import landscape as ls

    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=5)
    x, y = torch.randn(12, 3, 32, 32), torch.randint(0, 5, (12,))
    start = {k: v.clone() for k, v in model.state_dict().items()}
    end = {k: (v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v.clone()) for k, v in start.items()}
    for k in end:
        if k.endswith("running_var"):
            end[k] = start[k] * (0.5 + torch.rand_like(start[k]))

    def own(state, t=None):
        twin = torchvision.models.resnet18(num_classes=5)
        twin.load_state_dict(
            state
            if t is None
            else {k: torch.lerp(start[k], end[k], t) if start[k].is_floating_point() else start[k] for k in start}
        )
        with torch.no_grad():
            return float(torch.nn.functional.cross_entropy(twin.eval()(x), y))

    problem = ls.Problem(model, (x, y)).along_line_to(end)
    assert problem.buffer_line is not None
    flat = problem.layout.flatten({n: end[n] for n in problem.layout.names})
    axes = ls.random_axes(problem, 1, to=flat)
    want = [own(start), own(None, 0.5), own(end)]
    # vmap stacks one point per call of an 11M-parameter model on a CPU, and is refused; here it runs
    monkeypatch.setattr("landscape.strategies.base.STACKED_WEIGHTS_FLOOR", 1 << 30)
    for strategy in ("loop", "fused", "vmap", "auto"):
        line = ls.sweep(problem, axes, x=(0, 1, 3), strategy=strategy)
        np.testing.assert_allclose(line.loss, want, rtol=2e-4, err_msg=strategy)
    assert all(torch.equal(b, start[n]) for n, b in model.named_buffers())  # the checkpoint's own back

    other = sample("cnn")["checkpoints"][2]
    res = cli("sweep", "--sample", "cnn", "--to", other, "--x", "0:1:3", "-o", tmp_path / "to.h5")
    assert res.code == 0 and "buffers (BatchNorm statistics) follow x" in res.err, res.err
    assert cli("sweep", "--sample", "cnn", "--checkpoint", other, "--x", "-1:1:3", "-o", tmp_path / "own.h5").code == 0
    line, at_other = ls.load(tmp_path / "to.h5"), ls.load(tmp_path / "own.h5")
    assert line.loss[-1] == pytest.approx(at_other.loss[1], rel=1e-5)
    assert line.accuracy[-1] == pytest.approx(at_other.accuracy[1])
    assert line.axes.attrs[0]["buffers"] == "interpolated"


def test_points_are_filled_from_the_checkpoint_outward_and_the_probe_is_said():
    """An interrupted sweep holds the region around the checkpoint, not a corner: points are written
    in order of their distance from it (the probe's points first: the nearest, in the order its
    candidates take them); the probe is announced as "choosing strategy", then the strategy's name."""
    from landscape.strategies import REGISTRY, MemorySink, run_sweep
    from landscape.strategies.probe import PROBE_POINTS

    problem = sample_problem("mlp", dtype="float32", samples=256)
    directions = random_directions(2, problem.theta, problem.layout, seed=0)
    axes = [np.linspace(-1, 1, 21), np.linspace(-2, 0.5, 21)]
    order: list[np.ndarray] = []

    class Recording(MemorySink):
        def write(self, flat_index, loss, accuracy):
            order.append(np.asarray(flat_index))
            super().write(flat_index, loss, accuracy)

    sink = Recording(axes, problem.classification)
    stages: list[str] = []
    run_sweep(problem, directions, sink, chunk_seconds=0.01, on_stage=stages.append)
    xs, ys = np.meshgrid(*axes, indexing="ij")
    distance = np.hypot(xs, ys).reshape(-1)
    written = np.concatenate(order)
    assert sink.done.all() and sorted(written.tolist()) == list(range(distance.size))
    nearest = np.argsort(distance, kind="stable")
    assert set(written[:PROBE_POINTS].tolist()) == set(nearest[:PROBE_POINTS].tolist())
    assert (np.diff(distance[written[PROBE_POINTS:]]) >= 0).all()
    assert stages[0] == "choosing strategy" and stages[1] in REGISTRY


def test_a_lone_survivor_of_the_shortlist_is_not_timed_again():
    """With one candidate left after stage 1 there is nothing to compare: stage 2 evaluates nothing
    (on a 3-point sweep its 2 x 16 repeated points were a third of the probe's cost)."""
    from landscape.strategies.probe import _Probe

    problem = sample_problem("mlp", dtype="float32", samples=64)
    directions = random_directions(1, problem.theta, problem.layout, seed=0)
    coords = torch.linspace(-1, 1, 3, dtype=torch.float64)[:, None]
    probe = _Probe(problem, coords, warn=lambda m: None, total_points=3)
    probe.built = {"loop": build_strategy("loop", problem, directions)}
    probe.first = {"loop": 0.01}
    probe.final_stage(repeats=2)
    assert probe.timings == {"loop": 0.01} and not probe.kept.have.any()


def test_a_candidates_warm_up_point_is_priced_at_the_loops_pace_not_the_fastest():
    """A candidate's warm-up repeats the far point, cold, at a pace not yet known: the budget prices it at
    the loop's (a U-Net's firstlayer and vmap, priced at firstlayer-fused's 14 ms, took 40-45 ms each),
    so on a run whose budget one such point would overrun, it is left untried."""
    from landscape.strategies.base import Evaluation
    from landscape.strategies.probe import PROBE_SHARE, _Probe

    problem = sample_problem("mlp", dtype="float32", samples=64)
    directions = random_directions(2, problem.theta, problem.layout, seed=0).float()
    coords = grid_coords([torch.linspace(-1, 1, 8), torch.linspace(-1, 1, 8)]).float()
    total, fast, slow = 10_000, 0.001, 1.0
    assert PROBE_SHARE * total * fast < slow  # the budget holds a point at the fastest pace, not at the loop's
    probe = _Probe(problem, coords, warn=lambda m: None, total_points=total)
    probe.first = {"loop": slow}  # the tuning pass at the run's batch size, at the far point
    probe.kept.put(probe.far, Evaluation(torch.ones(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64)))
    probe.warm = {"firstlayer-fused": fast}  # a fast candidate already seen
    built: list[str] = []

    def build(name):
        built.append(name)
        return build_strategy(name, problem, directions)

    probe.warm_up(("loop", "vmap"), build)
    for strat in probe.built.values():
        strat.close()
    assert built == ["loop"] and probe.untried == ["vmap"]


def test_the_loop_is_not_timed_again_when_its_tuning_pass_shows_it_far_behind():
    """The loop, timed warm while the batch size was tuned, is not timed on stage-1 points when another
    candidate's first point ran over SHORTLIST_FACTOR times faster (a timm EfficientNet's loop at 5x its
    firstlayer-fused pace: a third of the probe's cost); the other is timed, and the loop left out."""
    from landscape.strategies.probe import SHORTLIST_FACTOR, _Probe

    problem = sample_problem("mlp", dtype="float32", samples=64)
    directions = random_directions(2, problem.theta, problem.layout, seed=0).float()
    coords = grid_coords([torch.linspace(-1, 1, 8), torch.linspace(-1, 1, 8)]).float()
    probe = _Probe(problem, coords, warn=lambda m: None, total_points=10_000)
    probe.built = {name: build_strategy(name, problem, directions) for name in ("loop", "vmap")}
    slow = 1.0
    probe.first = {"loop": slow}  # the tuning pass at the run's batch size
    probe.warm = {"vmap": slow / (2 * SHORTLIST_FACTOR)}
    timed: list[str] = []
    real = probe.timed
    probe.timed = lambda name, strat, points: timed.append(name) or real(name, strat, points)  # type: ignore[method-assign]
    probe.shortlist(repeats=2)
    assert timed == ["vmap"] and list(probe.built) == ["vmap"] and probe.timings["loop"] == slow
    for strat in probe.built.values():
        strat.close()


def test_the_tuning_pass_at_the_far_point_is_the_loops_warm_up_and_the_reference(monkeypatch):
    """The batch size's tuning runs its first pass at the far point: at the run's size that pass is the
    loop's warm-up and every candidate's reference (a pass of the loop saved), and a candidate whose
    values differ from it is still dropped."""
    import landscape.strategies.probe as probe_module
    from landscape.strategies.base import Evaluation

    problem = sample_problem("mlp", dtype="float32", samples=200)
    assert problem.auto_batch
    dirs = random_directions(2, problem.theta, problem.layout, seed=0).float()
    coords = grid_coords([torch.linspace(-1, 1, 9), torch.linspace(-1, 1, 9)]).float()
    far = int(coords.norm(dim=1).argmax())

    def cap_only(problem, one_pass, **kwargs):
        one_pass(problem.batch_size)
        return problem.batch_size

    evaluated: list[tuple[str, list[int]]] = []
    real_evaluate = probe_module._Probe.evaluate

    def recording(self, name, strat, idx):
        evaluated.append((name, idx.tolist()))
        return real_evaluate(self, name, strat, idx)

    real_build = probe_module.build_strategy

    def building(name, *args, **kwargs):
        strat = real_build(name, *args, **kwargs)
        if name == "vmap":  # computes something else
            real = strat.evaluate

            def shifted(c, whole_calls=False):
                out = real(c, whole_calls)
                return Evaluation(out.loss + 1.0, out.accuracy)

            strat.evaluate = shifted  # type: ignore[method-assign]
        return strat

    monkeypatch.setattr(probe_module, "tune_batch_size", cap_only)
    monkeypatch.setattr(probe_module._Probe, "evaluate", recording)
    monkeypatch.setattr(probe_module, "build_strategy", building)
    choice = choose_strategy(problem, dirs, coords, candidates=("loop", "vmap"), warn=lambda m: None)
    choice.strategy.close()
    assert ("loop", [far]) not in evaluated and ("vmap", [far]) in evaluated
    assert "disagree" in choice.dropped["vmap"] and choice.strategy.name == "loop"
    loss, _ = direct_loss(problem, problem.theta + coords[far] @ dirs)
    assert choice.probe_result.loss[far].item() == pytest.approx(loss, rel=1e-5)


def test_a_fused_graph_that_computes_something_else_is_caught_by_the_probe_or_by_its_own_check(monkeypatch):
    """Under the probe the plain loop's value at the far point checks every candidate, so a fused build
    does not run the model to check itself (a cold pass of the model on 64 samples); named alone, it does."""
    import landscape.strategies.fusedgraph as fusedgraph
    from landscape.errors import ArgumentError

    problem = sample_problem("cnn", dtype="float32", samples=64)
    dirs = random_directions(2, problem.theta, problem.layout, seed=0).float()
    coords = grid_coords([torch.linspace(-1, 1, 5), torch.linspace(-1, 1, 5)]).float()
    real_forward = FoldedNorm.forward
    monkeypatch.setattr(FoldedNorm, "forward", lambda self, x: real_forward(self, x) + 0.5)
    checks: list[int] = []
    real_logits = fusedgraph.logits_of
    monkeypatch.setattr(fusedgraph, "logits_of", lambda out: checks.append(1) or real_logits(out))
    choice = choose_strategy(problem, dirs, coords, candidates=("loop", "fused"), warn=lambda m: None)
    choice.strategy.close()
    assert "disagree" in choice.dropped["fused"] and choice.strategy.name == "loop" and checks == []
    with pytest.raises(ArgumentError, match="the fused graph's outputs differ from the model's"):
        choose_strategy(problem, dirs, coords, candidates=("fused",), warn=lambda m: None)
    assert checks


class _Uneven(nn.Module):
    """Sleeps 2 ms per call until `fast_until` (a quiet spell), 25 ms after: the probe's fastest points
    are far from the run's pace."""

    def __init__(self) -> None:
        super().__init__()
        self.fast_until = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.002 if time.perf_counter() < self.fast_until else 0.025)
        return x


def test_the_probe_cost_is_counted_at_the_winners_pace_not_at_its_luckiest_point():
    """On a shared machine the fastest of dozens of timings is a lucky one: counted at it, the probe's
    cost was mostly the gap between that point and the run's real pace (19% of a timm ViT's sweep,
    4% at the pace its winner kept)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), _Uneven())
    problem = Problem(model, (torch.randn(8, 3), torch.randint(0, 4, (8,))), "cross-entropy", dtype="float32")
    dirs = random_directions(2, problem.theta, problem.layout, seed=0).float()
    coords = grid_coords([torch.linspace(-1, 1, 20), torch.linspace(-1, 1, 20)]).float()
    model[1].fast_until = time.perf_counter() + 0.15  # the probe's first points
    start = time.perf_counter()
    choice = choose_strategy(problem, dirs, coords[:PROBE_POINTS], total_points=400, candidates=("loop", "firstlayer"))
    wall = time.perf_counter() - start
    choice.strategy.close()
    # counted at the luckiest pace (2 ms) the cost is about 90% of the probe's wall time; the run's pace is 25 ms
    assert 0.0 <= choice.excess < 0.25 * wall, (choice.excess, wall, choice.timings)


@pytest.mark.parametrize(
    "rounds, want",
    [
        ([{64: 1.0, 32: 0.7, 16: 0.7, 4: 0.6}], 64),  # one round: one lucky pass is no evidence
        (
            [
                {64: 1.0, 32: 1.0, 16: 1.0, 4: 0.6},
                {64: 1.0, 32: 1.0, 16: 1.0, 4: 1.2},
                {64: 1.0, 32: 1.0, 16: 1.0, 4: 0.6},
            ],
            64,
        ),
        (
            [
                {64: 1.0, 32: 0.8, 16: 0.7, 4: 1.0},
                {64: 0.8, 32: 0.7, 16: 0.5, 4: 0.8},
                {64: 1.2, 32: 1.0, 16: 0.9, 4: 1.3},
            ],
            16,
        ),
        (
            [{64: 1.0, 32: 0.8, 16: 1.0, 4: 1.0}, {64: 2.0, 32: 1.7, 16: 2.0, 4: 2.0}],
            32,
        ),  # a slow spell hits a whole round
    ],
)
def test_a_smaller_batch_is_taken_only_when_every_round_shows_it_clearly_faster(rounds, want):
    """Batch sizes are compared with the cap within each round (a busy spell slows a whole round) and a
    smaller one is taken only when it beat the cap by over 10% in every one of two rounds or more:
    a single lucky pass at 1/16 of a timm ViT's batch once made its sweep 17% slower. When the
    budget affords one round only, none is run."""
    from types import SimpleNamespace

    from landscape.strategies.probe import tune_batch_size

    passes = iter([(64, 1.0), *(pair for r in rounds for pair in r.items())])  # the cap's warm-up, then each round

    def one_pass(size: int) -> float:
        expected, seconds = next(passes)
        assert size == expected
        return seconds

    per_round = 3 * 1.0  # the other sizes' passes, at the cap's warm-up time each
    budget = [per_round * len(rounds)]  # the probe affords these rounds

    def affords(seconds: float) -> bool:
        if seconds > budget[0]:
            return False
        budget[0] -= per_round  # the round asked for is run
        return True

    problem = SimpleNamespace(batch_size=64, n=100)
    assert tune_batch_size(problem, one_pass, affords=affords) == want  # type: ignore[arg-type]
    # a lone round decides nothing, so it is not run either
    assert list(passes) == (list(rounds[0].items()) if len(rounds) < 2 else [])
