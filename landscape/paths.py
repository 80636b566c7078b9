"""Paths between checkpoints, the plane through three, and the PCA plane of a training trajectory.

No I/O here: the functions take whole states (name -> tensor, as fitted by io/checkpoint.py) and a
Problem, and evaluate points with the sweep engine. Every point of a curve through checkpoints
theta_0..theta_{n-1} is an affine combination sum_i w_i(t) theta_i with sum_i w_i = 1, i.e.
theta_0 + sum_{i>=1} w_i(t) (theta_i - theta_0): directions theta_i - theta_0 and coordinates w_{1:}(t),
so any sweep strategy (per-point loop, vmap, first-layer cache) evaluates it. Floating-point
buffers (BatchNorm running statistics) follow the same weights; integer buffers stay those of theta_0.

- Linear path theta(t) = (1-t) theta_0 + t theta_1 over the whole state, and its barrier
  max_t [L(theta(t)) - ((1-t) L(theta_0) + t L(theta_1))].
- Bezier curve (Garipov et al. 2018, "Loss Surfaces, Mode Connectivity, and Fast Ensembling of DNNs"):
  theta(t) = sum_i C(n-1, i) t^i (1-t)^(n-1-i) theta_i.
- BatchNorm recalibration at each point: running statistics recomputed on training data (cumulative
  average over batches, as torch.optim.swa_utils.update_bn does).
- The plane through three checkpoints: origin A, orthonormal axes from B - A and C - A (Gram-Schmidt).
- PCA trajectory (Li et al. 2018, "Visualizing the Loss Landscape of Neural Nets"): axes = top-2
  principal directions of the offsets theta_i - theta_final; each checkpoint projected on them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

from landscape.errors import ArgumentError, LandscapeError
from landscape.model_io import Inputs, call, rows, take
from landscape.problem import Problem
from landscape.strategies import STRATEGIES, Strategy, choose_strategy

State = Mapping[str, torch.Tensor]
CURVES = ("linear", "bezier")


# --------------------------------------------------------------------------- weights of a curve


def bezier_weights(t: torch.Tensor, count: int) -> torch.Tensor:
    """Bernstein weights [len(t), count]: C(n-1, i) t^i (1-t)^(n-1-i) for the Bezier curve through `count` points."""
    t = t.double()[:, None]
    i = torch.arange(count, dtype=torch.float64)[None]
    deg = count - 1
    binom = torch.tensor([math.comb(deg, k) for k in range(count)], dtype=torch.float64)[None]
    return binom * t**i * (1 - t) ** (deg - i)


def polyline_weights(t: torch.Tensor, count: int) -> torch.Tensor:
    """Weights [len(t), count] of the piecewise-linear path through `count` points, t in [0, 1] (equal segments)."""
    t = t.double().clamp(0, 1)
    seg = (t * (count - 1)).floor().clamp(max=count - 2).long()
    u = t * (count - 1) - seg
    w = torch.zeros(t.shape[0], count, dtype=torch.float64)
    rows = torch.arange(t.shape[0])
    w[rows, seg] = 1 - u
    w[rows, seg + 1] += u
    return w


def curve_weights(t: torch.Tensor, count: int, curve: str) -> torch.Tensor:
    """linear: the straight line (two points) or polyline (more); bezier: Bernstein weights."""
    if curve not in CURVES:
        raise ArgumentError("curve", curve, f"expected one of {', '.join(CURVES)}")
    if count < 2:
        raise LandscapeError("a path needs at least two checkpoints")
    return polyline_weights(t, count) if curve == "linear" else bezier_weights(t, count)


def barrier(t: torch.Tensor, loss: torch.Tensor) -> tuple[float, float]:
    """max_t [L(t) - ((1-t) L(0) + t L(1))] over the evaluated points (t[0] = 0, t[-1] = 1), and the t where it is."""
    t, loss = t.double(), loss.double()
    t0, t1 = float(t[0]), float(t[-1])
    s = (t - t0) / (t1 - t0) if t1 != t0 else torch.zeros_like(t)
    excess = loss - ((1 - s) * loss[0] + s * loss[-1])
    if not torch.isfinite(excess).any():
        return math.nan, math.nan
    i = int(torch.nan_to_num(excess, nan=-math.inf).argmax())
    return float(excess[i]), float(t[i])


# --------------------------------------------------------------------------- states


def flat_params(problem: Problem, state: State) -> torch.Tensor:
    """The trainable parameters of a whole state as one flat vector (problem's device and dtype)."""
    return problem.layout.flatten({n: state[n] for n in problem.layout.names}).to(problem.device, problem.dtype)


def combine_buffers(problem: Problem, states: Sequence[State], weights: torch.Tensor) -> dict[str, torch.Tensor]:
    """sum_i w_i buffer_i for floating buffers in the state dicts; integer buffers from the first state."""
    out = {}
    for name, buf in problem.buffers.items():
        if name not in states[0]:
            continue  # a non-persistent buffer: not in checkpoints, left as the model has it
        if torch.is_floating_point(buf):
            acc = torch.stack([float(w) * s[name].double() for w, s in zip(weights, states)]).sum(dim=0)
            out[name] = acc.to(buf.device, buf.dtype)
        else:
            out[name] = states[0][name].to(buf.device, buf.dtype)
    return out


def buffers_vary(problem: Problem, states: Sequence[State]) -> bool:
    """Whether any floating buffer differs between the states (else one buffer set serves every point)."""
    for name, buf in problem.buffers.items():
        if name in states[0] and torch.is_floating_point(buf):
            if any(not torch.equal(states[0][name], s[name]) for s in states[1:]):
                return True
    return False


def set_buffers(problem: Problem, values: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, value in values.items():
            problem.buffers[name].copy_(value)


def set_params(problem: Problem, flat: torch.Tensor) -> None:
    with torch.no_grad():
        params = problem.params()
        for name, view in problem.layout.unflatten(flat.to(problem.device, problem.dtype)).items():
            params[name].copy_(view)


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def recalibrate_bn(model: nn.Module, x: Inputs, batch_size: int) -> bool:
    """Recompute BatchNorm running statistics at the model's current weights from inputs `x`.

    Running stats are reset and re-estimated as a cumulative average over batches (momentum None), in
    train mode without gradients, then the model goes back to eval mode. Returns False when there is no BN.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return False
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    try:
        with torch.no_grad():
            for start in range(0, rows(x), batch_size):
                call(model, take(x, slice(start, start + batch_size)))
    finally:
        for m, mom in zip(bns, momenta):
            m.momentum = mom
        model.eval()
    return True


class _Points:
    """Evaluate affine combinations of whole states with one sweep strategy (buffers set per point when they vary)."""

    def __init__(
        self,
        problem: Problem,
        states: Sequence[State],
        *,
        strategy: str = "auto",
        warn: Callable[[str], None] = lambda msg: None,
        probe: torch.Tensor | None = None,
    ):
        self.problem = problem
        self.states = list(states)
        self.flats = [flat_params(problem, s) for s in self.states]
        self.base = problem.replace(theta=self.flats[0].clone())
        self.saved_buffers = {k: v.detach().clone() for k, v in problem.buffers.items()}
        n = len(self.states)
        if n > 1:
            dirs = torch.stack([(f.double() - self.flats[0].double()).cpu() for f in self.flats[1:]])
        else:
            dirs = torch.zeros(1, problem.layout.size, dtype=torch.float64)
        self.dirs = dirs
        candidates = STRATEGIES if strategy == "auto" else (strategy,)
        probe = probe if probe is not None else torch.zeros(min(4, 2), dirs.shape[0], dtype=torch.float64)
        self.choice = choose_strategy(self.base, dirs, probe, candidates=candidates, warn=warn)
        self.strategy: Strategy = self.choice.strategy
        self.varying = buffers_vary(problem, self.states)

    def coords(self, weights: torch.Tensor) -> torch.Tensor:
        return weights[:, 1:] if len(self.states) > 1 else torch.zeros(weights.shape[0], 1, dtype=torch.float64)

    def evaluate(
        self,
        weights: torch.Tensor,
        *,
        recalibrate: Inputs | None = None,
        on_point: Callable[[int], None] = lambda i: None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Loss (and accuracy) at each row of `weights` [T, n] (rows sum to 1)."""
        coords = self.coords(weights)
        p = self.problem
        if not self.varying and recalibrate is None:
            set_buffers(p, combine_buffers(p, self.states, weights[0]))
            ev = self.strategy.evaluate(coords)
            on_point(weights.shape[0])
            return ev.loss, ev.accuracy
        losses, accs = [], []
        for i in range(weights.shape[0]):
            if recalibrate is not None:
                set_params(p, self.base.theta + coords[i].to(p.device, p.dtype) @ self.dirs.to(p.device, p.dtype))
                recalibrate_bn(p.model, recalibrate, p.batch_size)
            else:
                set_buffers(p, combine_buffers(p, self.states, weights[i]))
            ev = self.strategy.evaluate(coords[i : i + 1])
            losses.append(ev.loss)
            if ev.accuracy is not None:
                accs.append(ev.accuracy)
            on_point(i + 1)
        return torch.cat(losses), (torch.cat(accs) if accs else None)

    def close(self) -> None:
        self.strategy.close()
        set_params(self.problem, self.problem.theta)
        set_buffers(self.problem, self.saved_buffers)


def state_losses(
    problem: Problem, states: Sequence[State], *, strategy: str = "loop", warn: Callable[[str], None] = lambda msg: None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Each state's own loss (and accuracy): its parameters with its own buffers."""
    pts = _Points(problem, states, strategy=strategy, warn=warn)
    try:
        eye = torch.eye(len(states), dtype=torch.float64)
        losses, accs = [], []
        for i in range(len(states)):
            set_buffers(problem, combine_buffers(problem, states, eye[i]))
            ev = pts.strategy.evaluate(pts.coords(eye[i : i + 1]))
            losses.append(ev.loss)
            if ev.accuracy is not None:
                accs.append(ev.accuracy)
        return torch.cat(losses), (torch.cat(accs) if accs else None)
    finally:
        pts.close()


@dataclass
class PathRun:
    """Loss (and accuracy) along a curve through checkpoints, its barrier, and each checkpoint's own loss."""

    t: torch.Tensor
    weights: torch.Tensor
    loss: torch.Tensor
    accuracy: torch.Tensor | None
    barrier: float
    barrier_t: float
    accuracy_barrier: float
    node_loss: torch.Tensor
    node_accuracy: torch.Tensor | None
    strategy: str
    recalibrated: bool


def evaluate_path(
    problem: Problem,
    states: Sequence[State],
    t: torch.Tensor,
    *,
    curve: str = "linear",
    recalibrate: Inputs | None = None,
    strategy: str = "auto",
    warn: Callable[[str], None] = lambda msg: None,
    on_point: Callable[[int], None] = lambda i: None,
) -> PathRun:
    """Loss along the curve through `states` at parameters t in [0, 1], over the whole state.

    `recalibrate`: training inputs on which BatchNorm statistics are recomputed at every point
    (then the buffers of the states are not used along the path).
    """
    weights = curve_weights(t, len(states), curve)
    pts = _Points(problem, states, strategy=strategy, warn=warn, probe=weights[: min(4, weights.shape[0]), 1:])
    try:
        loss, acc = pts.evaluate(weights, recalibrate=recalibrate, on_point=on_point)
        name = pts.strategy.name
    finally:
        pts.close()
    node_loss, node_acc = state_losses(problem, states, strategy=name)
    height, where = barrier(t, loss)
    acc_barrier = math.nan
    if acc is not None:
        # accuracy barrier: the largest drop below the straight line between the end points' accuracies
        drop, _ = barrier(t, -acc)
        acc_barrier = drop
    return PathRun(
        t=t.double(),
        weights=weights,
        loss=loss,
        accuracy=acc,
        barrier=height,
        barrier_t=where,
        accuracy_barrier=acc_barrier,
        node_loss=node_loss,
        node_accuracy=node_acc,
        strategy=name,
        recalibrated=recalibrate is not None and has_batchnorm(problem.model),
    )


# --------------------------------------------------------------------------- plane through three checkpoints


@dataclass
class PlaneAxes:
    """Orthonormal axes [2, P] (float64) through A, B, C with A at the origin, and the three points' coordinates [3, 2]."""

    axes: torch.Tensor
    points: torch.Tensor


def plane_axes(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> PlaneAxes:
    """Gram-Schmidt: e1 = (B-A)/|B-A|, e2 = the part of C-A orthogonal to e1, normalized (Garipov et al.'s view).

    Coordinates are in parameter-space distance, so the picture keeps the true angles and lengths.
    """
    a, b, c = a.double().cpu(), b.double().cpu(), c.double().cpu()
    u, v = b - a, c - a
    un = float(u.norm())
    if un == 0:
        raise LandscapeError("plane: the first two checkpoints are identical")
    e1 = u / un
    w = v - (v @ e1) * e1
    wn = float(w.norm())
    if wn <= 1e-9 * max(un, float(v.norm())):
        raise LandscapeError("plane: the three checkpoints lie on one line; they span no plane")
    e2 = w / wn
    axes = torch.stack([e1, e2])
    points = torch.stack([torch.zeros(2, dtype=torch.float64), axes @ u, axes @ v])
    return PlaneAxes(axes, points)


# --------------------------------------------------------------------------- PCA trajectory


@dataclass
class Trajectory:
    """PCA axes [2, P] of checkpoint offsets from the final one, explained variance, and the projections.

    coords [n, 2]: each checkpoint's position in the plane (the final one at the origin);
    residual [n]: |offset - projection|, relative [n]: residual / |offset| (0 where the offset is 0).
    """

    axes: torch.Tensor
    explained: torch.Tensor
    singular_values: torch.Tensor
    coords: torch.Tensor
    residual: torch.Tensor
    relative_residual: torch.Tensor
    centered: bool


def pca_axes(flats: Sequence[torch.Tensor], *, center: bool = False) -> Trajectory:
    """Top-2 principal directions of theta_i - theta_final (Li et al. 2018), and every checkpoint projected on them.

    Uncentered by default: the best plane through theta_final (the origin of the plot), which holds
    the offsets exactly when they lie in a plane. center=True subtracts the mean offset first, as
    Li et al.'s code does via sklearn's PCA. Explained variance is each component's share of the
    total squared (centered or not) offset. Signs are fixed so the first checkpoint has coordinates >= 0.
    """
    if len(flats) < 3:
        raise LandscapeError("trajectory: need at least three checkpoints (two offsets span the plane)")
    final = flats[-1].double().cpu()
    offsets = torch.stack([f.double().cpu() - final for f in flats])  # [n, P]; last row 0
    data = offsets[:-1]
    if center:
        data = data - data.mean(dim=0, keepdim=True)
    _, s, vh = torch.linalg.svd(data, full_matrices=False)
    if s.numel() < 2 or float(s[1]) <= 1e-12 * max(float(s[0]), 1e-300):
        raise LandscapeError("trajectory: the checkpoints' offsets span less than two dimensions")
    axes = vh[:2].clone()
    coords = offsets @ axes.T
    for k in range(2):
        if coords[0, k] < 0:
            axes[k] = -axes[k]
            coords[:, k] = -coords[:, k]
    energy = (s**2).sum()
    residual = (offsets - coords @ axes).norm(dim=1)
    norms = offsets.norm(dim=1)
    rel = torch.where(norms > 0, residual / norms.clamp_min(1e-300), torch.zeros_like(norms))
    return Trajectory(axes, (s[:2] ** 2) / energy, s[:2], coords, residual, rel, center)


def project(offsets: torch.Tensor, axes: torch.Tensor) -> torch.Tensor:
    """Coordinates [n, 2] of offsets [n, P] in the plane of orthonormal axes [2, P]."""
    return offsets.double() @ axes.double().T


def plane_losses(
    problem: Problem, axes: torch.Tensor, coords: torch.Tensor, *, strategy: str = "loop"
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Loss (and accuracy) at problem.theta + coords @ axes with the model's current buffers (the sweep's view)."""
    candidates = STRATEGIES if strategy == "auto" else (strategy,)
    choice = choose_strategy(problem, axes.double(), coords[:1].double(), candidates=candidates)
    try:
        ev = choice.strategy.evaluate(coords.double())
    finally:
        choice.strategy.close()
    return ev.loss, ev.accuracy
