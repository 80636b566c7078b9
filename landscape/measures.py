"""Roughness and sharpness of the loss around a checkpoint. Plain functions on tensors; no I/O.

- Roughness index (Wang et al., "Roughness Index for Loss Landscapes of Neural Network Models of
  PDEs"): M random normalized directions delta_j, profiles f_j(alpha_k) = L(theta + alpha_k delta_j)
  on alpha_k = -l + k*2l/m, k = 0..m; normalized total variation
  T_j = sum_k |f_j(alpha_{k+1}) - f_j(alpha_k)| / (2l * (max f_j - min f_j));
  mu = mean T_j, sigma = sample std of T_j, RI = sigma / mu.
  Closed forms: a quadratic bowl seen from its minimum (m even) gives T_j = 1/l for every j, so RI = 0;
  a monotone profile gives T_j = 1/(2l).
- SAM sharpness (Foret et al. 2021, "Sharpness-Aware Minimization"): L(theta + rho g/||g||) - L(theta).
- epsilon-sharpness (Keskar et al. 2017, "On Large-Batch Training ... Sharp Minima"):
  100 * (max_{|y_i| <= eps(|theta_i| + 1)} L(theta + y) - L(theta)) / (1 + L(theta)),
  the maximum found here by projected (sign-)gradient ascent in the box.
- Loss Landscape Analysis ratios from a Hessian spectrum: re = |lambda_min / lambda_max| and
  K = |sum_{lambda<0} |lambda w|^0.5 / sum_{lambda>0} (lambda w)^0.5| with SLQ weights w.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from landscape.directions import RandomDirections
from landscape.model_io import call_functional, differentiable_model, twice_differentiable
from landscape.names import CHUNK_SECONDS
from landscape.problem import Problem
from landscape.strategies import Evaluation, Pick, evaluate_points

# --------------------------------------------------------------------------- roughness index


def roughness_alphas(span: float, steps: int) -> torch.Tensor:
    """alpha_k = -l + k * 2l / m for k = 0..m (float64); exactly 0 at k = m/2 when m is even."""
    if steps < 1:
        raise ValueError("steps must be at least 1")
    k = torch.arange(steps + 1, dtype=torch.float64)
    return span * (2 * k - steps) / steps


def roughness_coords(count: int, alphas: torch.Tensor) -> torch.Tensor:
    """Coordinates [count * (m+1), count]: row j*(m+1)+k is alpha_k on axis j and 0 elsewhere.

    Evaluated with one strategy over all `count` directions, so every profile comes from one batched sweep.
    """
    n = alphas.shape[0]
    coords = torch.zeros(count * n, count, dtype=torch.float64)
    rows = torch.arange(count * n)
    coords[rows, rows // n] = alphas.double().repeat(count)
    return coords


def total_variation(profiles: torch.Tensor, span: float) -> torch.Tensor:
    """Normalized total variation T_j of each profile row [M, m+1] (float64); NaN for a flat or non-finite profile."""
    p = profiles.double()
    tv = (p[:, 1:] - p[:, :-1]).abs().sum(dim=1)
    rng = p.max(dim=1).values - p.min(dim=1).values
    t = tv / (2 * span * rng)
    bad = ~torch.isfinite(p).all(dim=1) | (rng <= 0)
    return torch.where(bad, torch.full_like(t, math.nan), t)


@dataclass(frozen=True)
class RoughnessIndex:
    """RI = sigma / mu over the finite T_j (sample std, ddof = 1), and how many directions it used."""

    ri: float
    mu: float
    sigma: float
    used: int
    dropped: int


def roughness_index(t: torch.Tensor) -> RoughnessIndex:
    """Wang et al.'s roughness index from per-direction normalized total variations (NaNs dropped)."""
    t = t.double()
    ok = t[torch.isfinite(t)]
    used = int(ok.numel())
    if used == 0:
        return RoughnessIndex(math.nan, math.nan, math.nan, 0, int(t.numel()))
    mu = float(ok.mean())
    sigma = float(ok.std(correction=1)) if used > 1 else math.nan
    return RoughnessIndex(sigma / mu if mu else math.nan, mu, sigma, used, int(t.numel()) - used)


@dataclass
class RoughnessRun:
    """Profiles [M, m+1] of loss (and accuracy), their T_j [M], the index, and how they were evaluated."""

    alphas: torch.Tensor
    loss: torch.Tensor
    accuracy: torch.Tensor | None
    t: torch.Tensor
    index: RoughnessIndex
    strategy: str
    timings: dict[str, float]
    center_loss: float


@dataclass(frozen=True)
class KnownPoints:
    """Profile points evaluated before (flat index j*(m+1)+k): values, and which of them are real."""

    loss: torch.Tensor  # [M*(m+1)] float64
    accuracy: torch.Tensor | None
    done: torch.Tensor  # [M*(m+1)] bool


def compute_roughness(
    problem: Problem,
    directions: torch.Tensor | RandomDirections,
    span: float,
    steps: int,
    *,
    strategy: str = "auto",
    on_progress: Callable[[int, int], None] = lambda done, total: None,
    warn: Callable[[str], None] = lambda msg: None,
    known: KnownPoints | None = None,
    on_chunk: Callable[[torch.Tensor, Evaluation], None] = lambda idx, values: None,
    chunk_seconds: float = CHUNK_SECONDS,
) -> RoughnessRun:
    """Evaluate all M x (m+1) profile points with one sweep strategy and compute RI, over directions
    [M, P] or made chunk by chunk (`RandomDirections`: memory for a chunk, not M x P; the strategy the
    probe picks on the first chunk runs the others, unprobed).

    `known` holds the points a killed run already evaluated (flat index j*(m+1)+k): only the others
    are evaluated, and `on_chunk` hears of each batch of new values (the CLI stores them, so a killed
    run can be resumed).
    """
    chunks = [directions] if isinstance(directions, torch.Tensor) else directions.chunks()
    count = directions.shape[0] if isinstance(directions, torch.Tensor) else directions.count
    alphas = roughness_alphas(span, steps)
    n = alphas.shape[0]
    total = count * n
    loss = torch.full((total,), math.nan, dtype=torch.float64)
    acc = torch.full((total,), math.nan, dtype=torch.float64) if problem.classification else None
    have = torch.zeros(total, dtype=torch.bool)
    if known is not None:
        have = known.done.clone()
        loss[have] = known.loss[have]
        if acc is not None and known.accuracy is not None:
            acc[have] = known.accuracy[have]
    todo_all = np.flatnonzero(~have.numpy())
    on_progress(total - len(todo_all), total)
    strategy_name, timings = "none", {}
    picks: list[Pick] = []
    first = 0  # the chunk's first direction
    for D in chunks:
        m = D.shape[0]
        offset = first * n
        todo = todo_all[(todo_all >= offset) & (todo_all < offset + m * n)] - offset
        later = int(np.sum(todo_all >= offset + m * n))
        first += m
        if not len(todo):
            continue

        def keep(idx: np.ndarray, values: Evaluation | None, offset: int = offset) -> np.ndarray:
            if values is None:
                return np.zeros(0, dtype=np.int64)
            at = torch.from_numpy(idx + offset)
            _put(loss, acc, at, values)
            on_chunk(at, values)
            return idx

        def progress(left: int, later: int = later) -> None:
            on_progress(total - left - later, total)

        def where(i: int, offset: int = offset) -> str:
            return f"direction {(i + offset) // n + 1}, alpha {float(alphas[i % n]):.4g}"

        choice = evaluate_points(
            problem, D, roughness_coords(m, alphas), todo, keep, strategy=strategy, on_progress=progress, chunk_seconds=chunk_seconds,
            warn=warn, earlier=picks[-1] if picks else None, on_choice=picks.append, where=where,
        )  # fmt: skip
        if strategy_name == "none":
            strategy_name, timings = choice.strategy.name, choice.timings
    loss2 = loss.reshape(count, n)
    loss2 = torch.where(torch.isfinite(loss2), loss2, torch.full_like(loss2, math.nan))
    t = total_variation(loss2, span)
    center = _center_loss(loss2, alphas)
    return RoughnessRun(
        alphas=alphas,
        loss=loss2,
        accuracy=acc.reshape(count, n) if acc is not None else None,
        t=t,
        index=roughness_index(t),
        strategy=strategy_name,
        timings=timings,
        center_loss=center,
    )


def _put(loss: torch.Tensor, acc: torch.Tensor | None, idx: torch.Tensor, ev: Evaluation) -> None:
    loss[idx] = ev.loss
    if acc is not None and ev.accuracy is not None:
        acc[idx] = ev.accuracy


def _center_loss(loss: torch.Tensor, alphas: torch.Tensor) -> float:
    zero = torch.nonzero(alphas == 0)
    if zero.numel() == 0 or loss.shape[0] == 0:
        return math.nan
    return float(loss[0, int(zero[0])])


# --------------------------------------------------------------------------- gradients and sharpness


def loss_and_grad(problem: Problem, flat: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Dataset-mean loss at trainable parameters `flat` and its gradient [P] (batches weighted by their terms)."""
    differentiable_model(problem.model)
    leaf = flat.detach().to(problem.device, problem.dtype).clone().requires_grad_(True)
    grad = torch.zeros_like(leaf)
    total = 0.0
    for xb, yb, w in problem.batches():
        params = problem.layout.unflatten(leaf)
        with twice_differentiable():  # dense gradients of sparse embeddings, among others
            out = call_functional(problem.model, (params, problem.buffers), xb)
        lb = problem.loss_fn(out, yb) * w
        (g,) = torch.autograd.grad(lb, leaf)
        grad += g
        total += float(lb.detach())
    return total, grad.detach()


def loss_at(problem: Problem, flat: torch.Tensor) -> float:
    """Dataset-mean loss at trainable parameters `flat` (buffers as in the model)."""
    with torch.no_grad():
        params = problem.layout.unflatten(flat.detach().to(problem.device, problem.dtype))
        total = 0.0
        for xb, yb, w in problem.batches():
            out = call_functional(problem.model, (params, problem.buffers), xb)
            total += float(problem.loss_fn(out, yb)) * w
    return total


@dataclass(frozen=True)
class SamSharpness:
    """L(theta + rho g/||g||) - L(theta) (Foret et al.), with the two losses and ||g||."""

    sharpness: float
    loss: float
    perturbed_loss: float
    grad_norm: float
    rho: float


def sam_sharpness(problem: Problem, rho: float = 0.05) -> SamSharpness:
    """SAM sharpness (Foret et al. 2021): the loss rise after one ascent step of length rho along the gradient."""
    loss, g = loss_and_grad(problem, problem.theta)
    gn = float(g.double().norm())
    if gn == 0 or not math.isfinite(gn):
        return SamSharpness(0.0 if gn == 0 else math.nan, loss, loss, gn, rho)
    up = loss_at(problem, problem.theta + rho * g / gn)
    return SamSharpness(up - loss, loss, up, gn, rho)


@dataclass(frozen=True)
class EpsilonSharpness:
    """Keskar et al.'s epsilon-sharpness (percent), the largest loss found in the box, and the ascent trace."""

    sharpness: float
    loss: float
    max_loss: float
    epsilon: float
    steps: int
    trace: tuple[float, ...]


def epsilon_sharpness(
    problem: Problem, epsilon: float = 1e-3, steps: int = 20, *, seed: int = 0, step_fraction: float | None = None
) -> EpsilonSharpness:
    """epsilon-sharpness (Keskar et al. 2017): 100 * (max_box L - L) / (1 + L), box |y_i| <= eps (|theta_i| + 1).

    The maximum is sought by projected sign-gradient ascent: y <- clip(y + a w sign(grad), -w, w) with w the
    box half-widths and a = 2.5 / steps (so a corner is reachable), started from a seeded uniform point of
    the box (at an exact minimum the gradient is zero and an ascent from theta would not move); the best
    point seen, theta included, is kept. A lower bound on the true maximum, like Keskar et al.'s L-BFGS-B search.
    """
    theta = problem.theta.detach()
    width = epsilon * (theta.abs() + 1)
    a = step_fraction if step_fraction is not None else 2.5 / max(steps, 1)
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(theta.shape, generator=gen, dtype=torch.float64).to(theta.device, theta.dtype)
    y = (2 * u - 1) * width
    base = loss_at(problem, theta)
    value, g = loss_and_grad(problem, theta + y)
    best = max(base, value) if math.isfinite(value) else base
    trace = [base, value]
    for i in range(steps):
        y = torch.maximum(torch.minimum(y + a * width * torch.sign(g), width), -width)
        if i == steps - 1:
            value = loss_at(problem, theta + y)
        else:
            value, g = loss_and_grad(problem, theta + y)
        trace.append(value)
        if math.isfinite(value) and value > best:
            best = value
    return EpsilonSharpness(100.0 * (best - base) / (1.0 + base), base, best, epsilon, steps, tuple(trace))


# --------------------------------------------------------------------------- Loss Landscape Analysis ratios


@dataclass(frozen=True)
class LlaRatios:
    """re = |lambda_min / lambda_max| and K (share of negative curvature, SLQ-weighted)."""

    re: float
    k: float


def lla_ratios(
    eigenvalues: np.ndarray | None = None,
    nodes: Sequence[np.ndarray] | None = None,
    weights: Sequence[np.ndarray] | None = None,
) -> LlaRatios:
    """Loss Landscape Analysis ratios from extreme eigenvalues and/or per-probe SLQ nodes and weights.

    re = |lambda_min / lambda_max| from `eigenvalues` when they hold both signs' extremes, else from the
    extreme SLQ nodes (Ritz values, which bracket the spectrum well); K = |sum_{lambda<0} |lambda w|^0.5 /
    sum_{lambda>0} (lambda w)^0.5| over the pooled nodes, each probe's weights divided by the number of
    probes. Per-probe nodes/weights come from landscape.curvature.density.quadrature.
    """
    re = math.nan
    pooled_nodes = np.concatenate([np.asarray(n, dtype=np.float64).ravel() for n in nodes]) if nodes else np.zeros(0)
    ev = np.asarray(eigenvalues, dtype=np.float64).ravel() if eigenvalues is not None else np.zeros(0)
    ev = ev[np.isfinite(ev)]
    source = ev if ev.size and ev.min() < 0 < ev.max() else (pooled_nodes if pooled_nodes.size else ev)
    source = source[np.isfinite(source)]
    if source.size and source.max() != 0:
        re = abs(float(source.min()) / float(source.max()))
    k = math.nan
    if nodes and weights:
        nd = pooled_nodes
        wt = np.concatenate([np.asarray(w, dtype=np.float64).ravel() / len(weights) for w in weights])
        lw = nd * wt
        pos = np.sqrt(lw[nd > 0]).sum()
        neg = np.sqrt(np.abs(lw[nd < 0])).sum()
        k = abs(float(neg / pos)) if pos > 0 else math.nan
    return LlaRatios(re, k)


def curvature_numbers(curv: Mapping[str, Any]) -> dict[str, float]:
    """lambda_max (with its residual), the trace (with its standard error) and the LLA ratios from a
    `landscape.io.curvature.read_curvature` dict (or the same keys from a fresh run); those it holds."""
    numbers: dict[str, float] = {}
    ev = curv.get("eigenvalues")
    if ev is not None and np.size(ev):
        numbers["lambda_max"] = float(np.max(ev))
        if curv.get("residuals") is not None:
            numbers["lambda_max_residual"] = float(np.asarray(curv["residuals"])[int(np.argmax(ev))])
    tr = curv.get("trace")
    if tr is not None:
        numbers["trace"] = float(tr["value"])
        if tr.get("std_error") is not None:
            numbers["trace_std_error"] = float(tr["std_error"])
    nodes = weights = None
    if curv.get("lanczos") is not None:
        from landscape.curvature.density import quadrature

        nodes, weights = quadrature(curv["lanczos"]["alpha"], curv["lanczos"]["beta"])
    if ev is not None or nodes is not None:
        r = lla_ratios(eigenvalues=ev, nodes=nodes, weights=weights)
        if math.isfinite(r.re):
            numbers["lla_re"] = r.re
        if math.isfinite(r.k):
            numbers["lla_k"] = r.k
    return numbers


def with_theta(problem: Problem, theta: torch.Tensor) -> Problem:
    """The same problem centred at other trainable parameters (the model is shared, not copied)."""
    return problem.replace(theta=theta.detach().to(problem.device, problem.dtype).clone())
