"""The `mlp` sweep strategy: which models it takes, and its values against a direct per-point pass."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from landscape.directions import random_directions
from landscape.losses import cross_entropy
from landscape.mlp import MlpChain, features_first_loss
from landscape.problem import make_problem
from landscape.strategies import NotApplicable, build_strategy, grid_coords


class Functional(nn.Module):
    """An MLP written as a forward with functional activations."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(6, 5), nn.Linear(5, 3, bias=False)

    def forward(self, x):
        return self.b(F.leaky_relu(self.a(x), 0.2).tanh())


class Residual(Functional):
    def forward(self, x):
        h = self.a(x)
        return self.b(h + torch.relu(h))


def chain_of(model: nn.Module) -> MlpChain | None:
    return MlpChain.of(model, {n for n, _ in model.named_parameters()})


def test_which_models_are_mlps():
    seq = chain_of(nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.GELU(), nn.Dropout(0.1), nn.Linear(3, 2)))
    assert seq is not None and seq.flatten and [p for p, _ in seq.linears] == ["1.", "4."] and len(seq.steps) == 3
    relu = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    assert chain_of(relu).steps[1].inplace and not relu[1].inplace  # a copy runs in place, the model is untouched
    fun = chain_of(Functional())
    assert fun is not None and not fun.flatten and [p for p, _ in fun.linears] == ["a.", "b."]
    assert chain_of(nn.Linear(3, 1)).linears[0][0] == ""  # linear / logistic regression
    for other in (
        Residual(),  # a value read twice
        nn.Sequential(nn.Linear(4, 3), nn.Softmax(dim=1)),  # not elementwise
        nn.Sequential(nn.Linear(4, 6), nn.Unflatten(1, (2, 3)), nn.LayerNorm([2, 3]), nn.Flatten(), nn.Linear(6, 2)),
        nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3, track_running_stats=False), nn.Linear(3, 2)),  # batch stats
        nn.Sequential(nn.LayerNorm(4), nn.Linear(4, 3)),  # the data does not go straight into a Linear
        nn.Sequential(nn.ReLU(), nn.Linear(4, 3)),  # the data does not go straight into a Linear
        nn.Sequential(nn.Conv1d(1, 2, 3), nn.Flatten(), nn.Linear(4, 2)),
    ):
        assert chain_of(other) is None, other
    norms = chain_of(nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3), nn.BatchNorm1d(3, affine=False), nn.Linear(3, 2)))
    assert norms is not None and [p for p, _ in norms.layers] == ["0.", "1.", "2.", "3."]
    assert chain_of(nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3, elementwise_affine=False), nn.Linear(3, 2)))
    frozen = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    assert MlpChain.of(frozen, {"0.weight", "0.bias", "2.weight"}) is None  # a Linear parameter outside the sweep


def test_features_first_loss_is_cross_entropy_and_argmax_with_ties():
    torch.manual_seed(1)
    out = torch.randn(5, 4, 30, dtype=torch.float64).round()  # rounded: many tied maxima
    out[2] = 0.0  # every class tied: argmax says class 0
    y = torch.randint(0, 4, (30,))
    loss, correct = features_first_loss(out, y, "cross-entropy", classification=True)
    for k in range(5):
        logits = out[k].T
        assert loss[k].item() == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-12)
        assert correct[k].item() == (logits.argmax(-1) == y).sum().item()
    target = torch.randn(30, 4, dtype=torch.float64)
    mse, none = features_first_loss(out, target, "mse", classification=False)
    assert none is None
    assert mse.tolist() == pytest.approx([F.mse_loss(out[k].T, target).item() for k in range(5)], rel=1e-12)


def _tabular() -> nn.Module:
    """An MLP with every normalization the chain takes, BatchNorm statistics away from 0 and 1, and
    norm weights away from 1 and 0 (the directions move them too: `ignore='none'`)."""
    model = nn.Sequential(
        nn.Linear(6, 8), nn.LayerNorm(8), nn.GELU(), nn.Dropout(0.2),
        nn.Linear(8, 8), nn.BatchNorm1d(8), nn.ReLU(),
        nn.Linear(8, 8, bias=False), nn.LayerNorm(8, bias=False), nn.SiLU(),
        nn.Linear(8, 8), nn.BatchNorm1d(8, affine=False), nn.LayerNorm(8, elementwise_affine=False),
        nn.Linear(8, 3),
    )  # fmt: skip
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.LayerNorm, nn.BatchNorm1d)) and m.weight is not None:
                m.weight.uniform_(0.5, 2.0)
            if isinstance(m, (nn.LayerNorm, nn.BatchNorm1d)) and m.bias is not None:
                m.bias.normal_()
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.3, 3.0)
    return model


@pytest.mark.parametrize("case", ["classes", "regression", "images", "norms"])
def test_mlp_strategy_matches_direct_pass(case):
    torch.manual_seed(0)
    if case == "classes":
        model, x, y, loss = Functional(), torch.randn(70, 6), torch.randint(0, 3, (70,)), cross_entropy
    elif case == "regression":
        model = nn.Sequential(nn.Linear(6, 8), nn.SiLU(), nn.Linear(8, 2))
        x, y, loss = torch.randn(70, 6), torch.randn(70, 2), F.mse_loss
    else:
        model = nn.Sequential(
            nn.Flatten(),
            nn.Linear(12, 7),
            nn.ReLU(),
            nn.Linear(7, 7),
            nn.Tanh(),
            nn.Linear(7, 7),
            nn.ELU(),
            nn.Linear(7, 4),
        )
        x, y, loss = torch.randn(70, 1, 3, 4), torch.randint(0, 4, (70,)), cross_entropy
    if case == "norms":
        model, x, y, loss = _tabular(), torch.randn(70, 6), torch.randint(0, 3, (70,)), cross_entropy
    problem = make_problem(
        model, model.state_dict(), x, y, loss, device=torch.device("cpu"), dtype=torch.float64, batch_size=32
    )
    dirs = random_directions(2, problem.theta, problem.layout, seed=2, ignore="none")
    coords = grid_coords([torch.linspace(-1, 1, 5), torch.linspace(-0.5, 1.0, 2)])
    strat = build_strategy("mlp", problem, dirs, points_per_call=3)  # calls of 3, 3, 3, 1 points; batches of 32, 32, 6
    res = strat.evaluate(coords)
    strat.close()
    for i, c in enumerate(coords):
        with torch.no_grad():
            out = functional_call(
                problem.model, (problem.layout.unflatten(problem.theta + c @ dirs), problem.buffers), (x.double(),)
            )
        assert res.loss[i].item() == pytest.approx(loss(out, problem.y).item(), rel=1e-10)
        if problem.classification:
            assert res.accuracy[i].item() == (out.argmax(-1) == problem.y).double().mean().item()
        else:
            assert res.accuracy is None


def test_mlp_strategy_says_why_not():
    model = nn.Sequential(nn.Linear(6, 3))
    x, y = torch.randn(20, 6), torch.randint(0, 3, (20,))

    def users_loss(out, target):
        return F.cross_entropy(out, target)

    for loss, dtype, why in (
        (users_loss, torch.float32, "built-in cross-entropy"),
        (cross_entropy, torch.bfloat16, "float32 or float64"),
    ):
        problem = make_problem(model, model.state_dict(), x, y, loss, device=torch.device("cpu"), dtype=dtype)
        dirs = random_directions(1, problem.theta, problem.layout, seed=0)
        with pytest.raises(NotApplicable, match=why):
            build_strategy("mlp", problem, dirs)


@pytest.mark.parametrize("norm", [nn.LayerNorm, nn.BatchNorm1d])
def test_torchvision_mlp_with_norms_takes_the_mlp_strategy_with_the_loops_values(norm):
    """torchvision.ops.MLP (Linear, norm, SiLU, dropout per block), the BatchNorm's statistics from a few
    training batches: the mlp strategy takes it and gives the loop's losses and accuracies, with directions
    on every parameter."""
    import numpy as np
    import torchvision

    import landscape as ls

    torch.manual_seed(0)
    model = torchvision.ops.MLP(12, [32, 32, 4], norm_layer=norm, activation_layer=nn.SiLU, dropout=0.1)
    with torch.no_grad():
        for _ in range(5):
            model(torch.randn(64, 12) * 2 + 1)  # in training mode: running statistics away from 0 and 1
    model.eval()
    problem = ls.Problem(model, (torch.randn(300, 12), torch.randint(0, 4, (300,))), dtype=torch.float64)
    axes = ls.random_axes(problem, 2, seed=1, ignore="none")
    loop, fast = (
        ls.sweep(problem, axes, x=(-1, 1, 5), y=(-1, 1, 4), strategy=s, warn=lambda m: None) for s in ("loop", "mlp")
    )
    assert fast.run["strategy"] == "mlp" and loop.run["strategy"] == "loop"
    np.testing.assert_allclose(fast.loss, loop.loss, rtol=1e-12)
    np.testing.assert_array_equal(fast.accuracy, loop.accuracy)
