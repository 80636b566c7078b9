"""Batched evaluation of the dataset-mean loss (and accuracy) at many points theta + c @ D.

Three strategies share one interface, `Strategy.evaluate(coords) -> (loss, accuracy)`:

- `loop`: one point at a time, weights written in place, one pass over the data per point;
- `vmap`: K points per call, `torch.func.functional_call` under `torch.vmap` over stacked weights;
- `firstlayer`: the first layer (Linear/Conv fed directly by x) is linear in the coordinates, so its
  output at every point is Y0 + sum_k c_k Y_k with Y0 = layer(x; W0), Y_k = layer(x; D_k), computed once;
  the rest of the network runs per point as in `loop`.

`choose_strategy` times each one on the first grid points and keeps the fastest (their values are
kept, so the probe costs no extra points). Nothing here does I/O.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from landscape.errors import LandscapeError
from landscape.problem import Problem

STRATEGIES = ("loop", "vmap", "firstlayer")


@dataclass
class Evaluation:
    """Loss and accuracy (NaN-free only where finite) at a batch of points."""

    loss: torch.Tensor  # float64 [n]
    accuracy: torch.Tensor | None  # float64 [n] or None for non-classification tasks


def _accumulate(out: torch.Tensor, yb: torch.Tensor, problem: Problem) -> tuple[float, float]:
    """Summed loss and number correct of one batch (loss_fn returns a batch mean)."""
    loss = float(problem.loss_fn(out, yb)) * yb.shape[0]
    correct = float((out.argmax(-1) == yb).sum()) if problem.classification else 0.0
    return loss, correct


class Strategy:
    """Evaluates points theta + coords @ directions on the whole data set of a problem."""

    name = "base"

    def __init__(self, problem: Problem, directions: torch.Tensor):
        self.problem = problem
        self.directions = directions.to(problem.device, problem.theta.dtype)  # [k, P]
        self.batch_size = problem.batch_size

    def evaluate(self, coords: torch.Tensor) -> Evaluation:
        raise NotImplementedError

    def shrink(self) -> str | None:
        """Use less memory after an out-of-memory error: say how, or None when it cannot."""
        if self.batch_size > 1:
            self.batch_size //= 2
            return f"batch size {self.batch_size}"
        return None

    def close(self) -> None:
        """Put the checkpoint weights back into the model."""
        _write_params(self.problem, self.problem.theta)


def _write_params(problem: Problem, flat: torch.Tensor, skip: frozenset[str] = frozenset()) -> None:
    params = problem.params()
    for name, view in problem.layout.unflatten(flat).items():
        if name not in skip:
            params[name].copy_(view)


class LoopStrategy(Strategy):
    """One point per forward pass over the data, weights updated in place."""

    name = "loop"
    skip: frozenset[str] = frozenset()

    @torch.no_grad()
    def evaluate(self, coords: torch.Tensor) -> Evaluation:
        p = self.problem
        coords = coords.to(p.device, p.theta.dtype)
        losses, accs = [], []
        for c in coords:
            _write_params(p, torch.addmv(p.theta, self.directions.T, c), self.skip)
            total, correct = 0.0, 0.0
            for bi, (xb, yb, _) in enumerate(p.batches(self.batch_size)):
                self.before_batch(bi, c)
                lb, cb = _accumulate(p.model(xb), yb, p)
                total += lb
                correct += cb
            losses.append(total / p.n)
            accs.append(correct / p.n)
        return Evaluation(
            torch.tensor(losses, dtype=torch.float64),
            torch.tensor(accs, dtype=torch.float64) if p.classification else None,
        )

    def before_batch(self, batch_index: int, c: torch.Tensor) -> None:
        """Hook for subclasses (the first-layer cache)."""


class VmapStrategy(Strategy):
    """K points per call: stacked weights through functional_call under torch.vmap."""

    name = "vmap"

    def __init__(self, problem: Problem, directions: torch.Tensor, points_per_call: int = 16):
        super().__init__(problem, directions)
        self.k = points_per_call
        model, buffers, loss_fn, cls = problem.model, problem.buffers, problem.loss_fn, problem.classification

        def one(params: dict[str, torch.Tensor], xb: torch.Tensor, yb: torch.Tensor):
            out = functional_call(model, (params, buffers), (xb,))
            loss = loss_fn(out, yb)
            correct = (out.argmax(-1) == yb).sum() if cls else torch.zeros((), device=out.device)
            return loss, correct

        self._batched = torch.vmap(one, in_dims=(0, None, None))

    def shrink(self) -> str | None:
        if self.k > 1:
            self.k //= 2
            return f"{self.k} point{'s' if self.k > 1 else ''} per call"
        return super().shrink()

    @torch.no_grad()
    def evaluate(self, coords: torch.Tensor) -> Evaluation:
        p = self.problem
        coords = coords.to(p.device, p.theta.dtype)
        loss = torch.zeros(coords.shape[0], dtype=torch.float64, device=p.device)
        correct = torch.zeros_like(loss)
        for start in range(0, coords.shape[0], self.k):
            c = coords[start : start + self.k]
            flat = p.theta + c @ self.directions  # [K, P]
            params = {k: v.to(p.dtype) for k, v in p.layout.unflatten(flat).items()}
            for xb, yb, _ in p.batches(self.batch_size):
                lb, cb = self._batched(params, xb, yb)
                loss[start : start + c.shape[0]] += lb.double() * xb.shape[0]
                correct[start : start + c.shape[0]] += cb.double()
        return Evaluation((loss / p.n).cpu(), (correct / p.n).cpu() if p.classification else None)


def find_first_layer(problem: Problem) -> tuple[str, nn.Module] | None:
    """The Linear/Conv module that receives the raw input x, if the model starts with one."""
    hits: list[tuple[str, nn.Module]] = []
    probe = problem.x[:2]
    handles = []

    def hook(name: str, module: nn.Module):
        def fn(mod, args):
            if not hits and args and args[0] is probe:
                hits.append((name, mod))

        return fn

    for name, module in problem.model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            handles.append(module.register_forward_pre_hook(hook(name, module)))
    try:
        with torch.no_grad():
            problem.model(probe)
    finally:
        for h in handles:
            h.remove()
    if not hits:
        return None
    name, module = hits[0]
    prefix = f"{name}." if name else ""
    owned = {prefix + n for n, _ in module.named_parameters(recurse=False)}
    if not owned or not owned <= set(problem.layout.names):
        return None
    return name, module


class FirstLayerStrategy(LoopStrategy):
    """The per-point loop with the first layer's output assembled from cached products."""

    name = "firstlayer"

    def __init__(self, problem: Problem, directions: torch.Tensor, first: tuple[str, nn.Module]):
        super().__init__(problem, directions)
        name, self.layer = first
        prefix = f"{name}." if name else ""
        self.skip = frozenset(prefix + n for n, _ in self.layer.named_parameters(recurse=False))
        theta = problem.layout.unflatten(problem.theta)
        dirs = problem.layout.unflatten(self.directions)
        w_name, b_name = prefix + "weight", prefix + "bias"
        has_bias = b_name in self.skip
        self.cache: list[torch.Tensor] = []  # per batch: [1 + k, B, ...]
        with torch.no_grad():  # products at the weights' precision (float32 when the model runs in bfloat16)
            for xb, _, _ in problem.batches():
                xm = xb.to(problem.theta.dtype)
                outs = [self._apply(xm, theta[w_name], theta[b_name] if has_bias else None)]
                for j in range(self.directions.shape[0]):
                    outs.append(self._apply(xm, dirs[w_name][j], dirs[b_name][j] if has_bias else None))
                self.cache.append(torch.stack(outs))
        self._current: torch.Tensor | None = None

    def evaluate(self, coords: torch.Tensor) -> Evaluation:
        self.layer.forward = self._cached_forward  # type: ignore[method-assign]
        try:
            return super().evaluate(coords)
        finally:
            del self.layer.forward

    def _apply(self, xb: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        layer = self.layer
        if isinstance(layer, nn.Linear):
            return F.linear(xb, weight, bias)
        return layer._conv_forward(xb, weight, bias)  # type: ignore[attr-defined]

    def _cached_forward(self, _x: torch.Tensor) -> torch.Tensor:
        assert self._current is not None
        return self._current

    def before_batch(self, batch_index: int, c: torch.Tensor) -> None:
        cached = self.cache[batch_index]
        coef = torch.cat([c.new_ones(1), c])
        self._current = torch.tensordot(coef, cached, dims=1).to(self.problem.dtype)

    def shrink(self) -> str | None:
        return None  # the cache is laid out per batch; the loop strategy is the fallback

    def close(self) -> None:
        self.cache.clear()
        super().close()


def cache_bytes_first_layer(problem: Problem, first: tuple[str, nn.Module], k: int) -> int:
    """Memory the first-layer cache would take (outputs for the whole data set, 1 + k copies)."""
    with torch.no_grad():
        out = first[1](problem.x[:1])
    return out.numel() * problem.n * (1 + k) * out.element_size()


def build_strategy(
    name: str, problem: Problem, directions: torch.Tensor, *, points_per_call: int = 16, memory_budget: int = 1 << 30
) -> Strategy:
    """Construct strategy `name`; raises ValueError when it cannot run this model."""
    if name == "loop":
        return LoopStrategy(problem, directions)
    if name == "vmap":
        return VmapStrategy(problem, directions, points_per_call)
    if name == "firstlayer":
        first = find_first_layer(problem)
        if first is None:
            raise ValueError("the model does not start with a Linear/Conv layer fed directly by the input")
        if cache_bytes_first_layer(problem, first, directions.shape[0]) > memory_budget:
            raise ValueError("the first layer's cached outputs would not fit the memory budget")
        return FirstLayerStrategy(problem, directions, first)
    raise ValueError(f"unknown strategy {name!r}; expected one of {', '.join(STRATEGIES)}")


def memory_budget(device: torch.device) -> int:
    """Bytes a strategy may use for stacked weights and caches: 60% of the free GPU memory, 1 GiB on CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(0.6 * free)
    return 1 << 30


def points_per_call(problem: Problem, memory_budget: int) -> int:
    """How many points the vmap strategy stacks per call: bounded by weights and activations memory."""
    with torch.no_grad():
        out = problem.model(problem.x[:1])
    per_point = problem.layout.size * problem.theta.element_size() * 2
    per_point += 8 * out.numel() * problem.batch_size * out.element_size()  # rough activation allowance
    return int(max(1, min(64, memory_budget // max(per_point, 1))))


@dataclass
class Choice:
    """The strategy picked for a run, the seconds per point each candidate took, and why others dropped out."""

    strategy: Strategy
    timings: dict[str, float] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)
    probe_coords: torch.Tensor | None = None
    probe_result: Evaluation | None = None


def choose_strategy(
    problem: Problem,
    directions: torch.Tensor,
    probe_coords: torch.Tensor,
    *,
    candidates: tuple[str, ...] = STRATEGIES,
    budget: int | None = None,
    repeats: int = 3,
    warn: Callable[[str], None] = lambda msg: warnings.warn(msg, stacklevel=2),
) -> Choice:
    """Time each candidate on `probe_coords` (real grid points) and keep the fastest that agrees with loop.

    The winner's values at the probe points are returned so the caller can store them.
    With one candidate nothing is timed.
    """
    budget = memory_budget(problem.device) if budget is None else budget
    k = points_per_call(problem, budget)
    built: dict[str, Strategy] = {}
    dropped: dict[str, str] = {}
    for name in candidates:
        try:
            built[name] = build_strategy(name, problem, directions, points_per_call=k, memory_budget=budget)
        except Exception as exc:  # a model the strategy cannot run: fall back, say why
            dropped[name] = _one_line(exc)
    if not built:
        raise ValueError("no sweep strategy can run this model: " + "; ".join(f"{n}: {m}" for n, m in dropped.items()))
    if len(built) == 1:
        (only,) = built.values()
        return Choice(only, dropped=dropped)
    timings: dict[str, float] = {}
    results: dict[str, Evaluation] = {}
    reference: Evaluation | None = None
    for name, strat in list(built.items()):
        try:
            evaluate_shrinking(strat, probe_coords[:1], warn)  # warm-up (vmap tracing, allocator)
            res, timings[name] = _timed(strat, probe_coords, repeats, warn)
        except Exception as exc:
            dropped[name] = _one_line(exc)
            warn(f"sweep strategy {name} cannot run this model ({dropped[name]}); falling back")
            strat.close()
            del built[name]
            continue
        finally:
            _write_params(problem, problem.theta)
        if reference is None:
            reference = res
        elif not _agree(reference.loss, res.loss, problem.dtype):
            dropped[name] = "its values disagree with the per-point loop"
            warn(f"sweep strategy {name} gives values that disagree with the loop; not using it")
            strat.close()
            del built[name]
            continue
        results[name] = res
    if not built:
        raise ValueError("no sweep strategy can run this model: " + "; ".join(f"{n}: {m}" for n, m in dropped.items()))
    best = min(built, key=lambda n: timings[n])
    for name, strat in built.items():
        if name != best:
            strat.close()
    return Choice(built[best], timings, dropped, probe_coords, results[best])


def evaluate_shrinking(strat: Strategy, coords: torch.Tensor, warn: Callable[[str], None]) -> Evaluation:
    """`strat.evaluate`, retried with less memory after each out-of-memory error (GPU)."""
    while True:
        try:
            return strat.evaluate(coords)
        except torch.OutOfMemoryError:
            how = strat.shrink()
            if how is None:
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            warn(f"out of memory: going on with {how}")


def _timed(
    strat: Strategy, coords: torch.Tensor, repeats: int, warn: Callable[[str], None], budget_s: float = 0.5
) -> tuple[Evaluation, float]:
    """Values at `coords` and the best seconds per point over up to `repeats` runs (the minimum
    is the least disturbed by other work on the machine); stops repeating once `budget_s` is spent."""
    best, spent, res = float("inf"), 0.0, None
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        res = evaluate_shrinking(strat, coords, warn)
        elapsed = time.perf_counter() - start
        best, spent = min(best, elapsed), spent + elapsed
        if spent > budget_s:
            break
    assert res is not None
    return res, best / coords.shape[0]


def _agree(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> bool:
    tol = {torch.float64: 1e-9, torch.float32: 1e-3}.get(dtype, 3e-2)
    both = torch.isfinite(a) & torch.isfinite(b)
    return bool(torch.equal(torch.isfinite(a), torch.isfinite(b))) and bool(
        torch.allclose(a[both], b[both], rtol=tol, atol=tol)
    )


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def grid_coords(axes: list[torch.Tensor]) -> torch.Tensor:
    """All grid points in row-major order (the last axis fastest): [prod(n_k), k] float64."""
    mesh = torch.meshgrid(*[a.double() for a in axes], indexing="ij")
    return torch.stack([m.reshape(-1) for m in mesh], dim=1)


def parse_range(text: str, option: str) -> torch.Tensor:
    """'a:b:n' -> n evenly spaced points from a to b (inclusive), as in Li et al.'s tool."""
    parts = text.split(":")
    try:
        if len(parts) != 3:
            raise ValueError
        a, b, n = float(parts[0]), float(parts[1]), int(parts[2])
    except ValueError:
        raise LandscapeError(f"{option} {text!r}: expected MIN:MAX:POINTS, e.g. -1:1:51") from None
    if n < 1 or not (math.isfinite(a) and math.isfinite(b)):
        raise LandscapeError(f"{option} {text!r}: need finite bounds and at least one point")
    if n == 1:
        return torch.tensor([a], dtype=torch.float64)
    t = torch.arange(n, dtype=torch.float64) / (n - 1)
    return a * (1 - t) + b * t  # exact 0 at the middle of a symmetric range
