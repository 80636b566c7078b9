"""Training the bend of a curve between two checkpoints so that the loss along it is low (Garipov et
al. 2018, "Loss Surfaces, Mode Connectivity, and Fast Ensembling of DNNs").

The curve is theta(t) = (1-t)^2 A + 2t(1-t) bend + t^2 B (quadratic Bezier) or the polygonal chain
A -> bend -> B (t = 1/2 at the bend); A and B stay fixed. Each step draws t ~ U(0, 1) and a minibatch
of the training data, and takes an SGD step (momentum) on the bend for the loss at theta(t), which is
an unbiased step on the loss averaged along the curve. The bend starts at the midpoint (A + B) / 2,
where the curve is the straight line. BatchNorm layers run on batch statistics while training, as in
Garipov et al. (their running statistics are not used, and the model's are not touched); the curve is
then evaluated with the statistics recomputed at every point. No I/O here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn as nn

from landscape.errors import ArgumentError
from landscape.model_io import Inputs, call_functional, rows, take
from landscape.paths import curve_weights, flat_params
from landscape.problem import Problem

State = Mapping[str, torch.Tensor]
TRAINABLE_CURVES = {"bezier": "bezier", "polychain": "linear"}  # the name for users -> curve_weights' name


@dataclass(frozen=True)
class CurveFit:
    """The trained bend (flat, over the problem's parameters) and the loss of every training step."""

    bend: torch.Tensor
    step_loss: torch.Tensor
    step_t: torch.Tensor


def fit_bend(
    problem: Problem,
    a: State,
    b: State,
    x: Inputs,
    y: torch.Tensor,
    *,
    curve: str = "bezier",
    steps: int = 500,
    lr: float = 0.05,
    momentum: float = 0.9,
    batch_size: int = 128,
    seed: int = 0,
    on_step: Callable[[int], None] = lambda i: None,
) -> CurveFit:
    """The bend of the curve from `a` to `b` trained on (x, y) for `steps` SGD steps."""
    if curve not in TRAINABLE_CURVES:
        raise ArgumentError("curve", curve, f"a trained curve is one of {', '.join(TRAINABLE_CURVES)}")
    if steps < 1:
        raise ArgumentError("steps", steps, "must be at least 1")
    if not lr > 0:
        raise ArgumentError("lr", lr, "must be positive")
    if batch_size < 1:
        raise ArgumentError("batch_size", batch_size, "must be positive")
    master = problem.theta.dtype
    ends = [flat_params(problem, s).to(master) for s in (a, b)]
    bend = ((ends[0] + ends[1]) / 2).clone().requires_grad_(True)
    opt = torch.optim.SGD([bend], lr=lr, momentum=momentum)
    buffers = {n: buf.detach().clone() for n, buf in problem.model.named_buffers()}
    norms = [m for m in problem.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    gen = torch.Generator().manual_seed(seed)
    n = rows(x)
    losses, ts = torch.empty(steps, dtype=torch.float64), torch.empty(steps, dtype=torch.float64)
    for m in norms:
        m.train()
    try:
        for step in range(steps):
            t = torch.rand(1, generator=gen, dtype=torch.float64)
            w = curve_weights(t, 3, TRAINABLE_CURVES[curve])[0].to(master)
            idx = torch.randperm(n, generator=gen)[: min(batch_size, n)]
            idx = idx.to(y.device)
            theta = w[0] * ends[0] + w[1] * bend + w[2] * ends[1]
            params = {k: v.to(problem.dtype) for k, v in problem.layout.unflatten(theta).items()}
            # BatchNorm in train mode updates the running statistics it is given: copies, not the model's
            out = call_functional(problem.model, (params, {k: v.clone() for k, v in buffers.items()}), take(x, idx))
            loss = problem.loss_fn(out, y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses[step], ts[step] = float(loss.detach()), float(t)
            on_step(step + 1)
    finally:
        for m in norms:
            m.eval()
    return CurveFit(bend.detach(), losses, ts)


def bend_state(problem: Problem, a: State, b: State, bend: torch.Tensor) -> dict[str, torch.Tensor]:
    """A whole state at the bend: its parameters, the other entries averaged between A and B (floating
    ones; integer ones are A's)."""
    out = {
        k: ((v.double() + b[k].double()) / 2).to(v.dtype) if v.is_floating_point() else v.clone() for k, v in a.items()
    }
    for name, value in problem.layout.unflatten(bend).items():
        out[name] = value.detach().to(a[name].dtype).clone()
    return out
