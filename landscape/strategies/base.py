"""What every sweep strategy shares: the interface, the loop over a problem's batches, memory sizing.

A strategy evaluates the dataset-mean loss (and accuracy) at points theta + c @ D, `k` points per
call: `per_call` prepares what the call's batches share, `on_batch` gives the k mean losses and
numbers of correct predictions on one batch. `build` says whether it applies to a problem
(raising `NotApplicable` when it has nothing to offer) and constructs it. Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from landscape.model_io import Inputs, output_numel
from landscape.problem import Problem


@dataclass(frozen=True)
class BuildContext:
    """What a strategy may use: points per call (vmap-like strategies), a memory budget in bytes, a batch
    size, the convolution layouts a resumed run used (`Pick.layouts`), those other builds of the
    probe timed (`timed_layouts`, {convolution module: layout}, filled in by the fused strategies), and
    whether the caller checks the strategy's values against the plain loop's (`checked`: the probe does,
    at a point of its own, so a build need not run the model to check itself)."""

    points_per_call: int = 16
    memory_budget: int = 1 << 30
    batch_size: int | None = None
    layouts: str = ""
    timed_layouts: dict[Any, str] = field(default_factory=dict, compare=False)
    checked: bool = False


class NotApplicable(ValueError):
    """The strategy has nothing to offer for this model (no first layer, nothing to fuse): skipped quietly."""


@dataclass
class Evaluation:
    """Loss and accuracy (NaN-free only where finite) at a batch of points."""

    loss: torch.Tensor  # float64 [n]
    accuracy: torch.Tensor | None  # float64 [n] or None for non-classification tasks


def keyword_inputs(problem: Problem) -> str | None:
    """Why a strategy that feeds one input tensor cannot run this model: it takes keyword inputs."""
    x, _ = problem.head(1)
    return None if isinstance(x, torch.Tensor) else "the model takes keyword inputs (no single input tensor)"


def caches_per_sample(problem: Problem) -> str | None:
    """Why a strategy that caches products for every sample cannot run: the data are streamed (too large to hold)."""
    return None if problem.in_memory else "the data are streamed, and it caches products for every sample"


class Strategy:
    """Evaluates points theta + coords @ directions on the whole data set of a problem, `k` points
    per call: `per_call` prepares what the call's batches share (the points' weights), `on_batch`
    gives the k mean losses and numbers of correct predictions (or None) on one batch."""

    name = "base"
    k = 1
    warm_up_seconds = 0.0  # what a first call costs beyond a point's evaluation (a compile), as the probe expects
    build_points = 0.0  # what building it costs, in points' time (a point: a forward pass over the data)
    layouts = ""  # the fused strategies' convolution layouts, as `Pick.layouts` keeps them

    @classmethod
    def build(cls, problem: Problem, directions: torch.Tensor, ctx: BuildContext) -> Strategy:
        """This strategy for `problem`; raises NotApplicable when it has nothing to offer this model."""
        return cls(problem, directions, ctx.batch_size)

    @classmethod
    def rules_out(cls, problem: Problem) -> str | None:
        """Why this strategy cannot apply, where that shows without building it (no tracing, no
        forward pass); None when only a build can tell. For the candidates a probe does not try."""
        return None

    def __init__(self, problem: Problem, directions: torch.Tensor, batch_size: int | None = None):
        self.problem = problem
        self.directions = directions.to(problem.device, problem.theta.dtype)  # [k, P]
        self.batch_size = batch_size or problem.batch_size
        self.forward: Callable[..., Any] = problem.model  # what the loop strategies call
        params = problem.params()
        self._slots = [
            (name, params[name], problem.layout.block(name), shape)
            for name, shape in zip(problem.layout.names, problem.layout.shapes)
        ]

    @torch.no_grad()
    def evaluate(self, coords: torch.Tensor, whole_calls: bool = False) -> Evaluation:
        """Loss and accuracy at the points (`evaluate_points`); where the problem's buffers move with the
        point (`Problem.buffer_line`: along the x axis to another checkpoint, or with state directions
        on x and y), the points of each such position in turn, with the buffers set there, and the
        checkpoint's own buffers back after."""
        moves = self.problem.buffer_line
        if moves is None:
            return self.evaluate_points(coords, whole_calls)
        loss = torch.empty(coords.shape[0], dtype=torch.float64)
        accuracy = torch.empty_like(loss) if self.problem.classification else None
        lead = coords[:, : moves.dims]  # the coordinates the buffers depend on: x, or x and y
        try:
            for key in torch.unique(lead, dim=0):
                rows = torch.nonzero((lead == key).all(dim=1)).flatten()
                moves.apply_at(tuple(float(v) for v in key))
                ev = self.evaluate_points(coords[rows], whole_calls)
                loss[rows] = ev.loss
                if accuracy is not None and ev.accuracy is not None:
                    accuracy[rows] = ev.accuracy
        finally:
            moves.apply_at((0.0,) * moves.dims)
        return Evaluation(loss, accuracy)

    @torch.no_grad()
    def evaluate_points(self, coords: torch.Tensor, whole_calls: bool = False) -> Evaluation:
        """Loss and accuracy at the points with the buffers as they are; `whole_calls` pads the last
        call to `k` points (copies of the last), so that every call has one shape and a point's value
        does not depend on how the points were split into chunks (the kernels' rounding depends on the
        shape, not on the other points): a resumed run then computes each point as a run never
        stopped would."""
        p = self.problem
        n = coords.shape[0]
        coords = coords.to(p.device, p.theta.dtype)
        if whole_calls and n % self.k:
            coords = torch.cat([coords, coords[-1:].expand(self.k - n % self.k, -1)])
        loss = torch.zeros(coords.shape[0], dtype=torch.float64, device=p.device)
        correct = torch.zeros_like(loss)
        for start in range(0, coords.shape[0], self.k):
            c = coords[start : start + self.k]
            at = slice(start, start + c.shape[0])
            shared = self.per_call(c)
            for bi, (xb, yb, w) in enumerate(p.batches(self.batch_size)):
                lb, cb = self.on_batch(shared, bi, xb, yb, c)
                loss[at] += lb.double() * w  # w: the batch's share of the loss's terms (rows, or counted tokens)
                if cb is not None:
                    correct[at] += cb.double()
        return Evaluation(loss[:n].cpu(), (correct[:n] / p.terms).cpu() if p.classification else None)

    def per_call(self, c: torch.Tensor) -> Any:
        raise NotImplementedError

    def on_batch(
        self, shared: Any, batch_index: int, xb: Inputs, yb: torch.Tensor, c: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    def write_params(self, flat: torch.Tensor, skip: frozenset[str] = frozenset()) -> None:
        """Copy a flat weight vector into the model's parameters, in place."""
        with torch.no_grad():
            for name, param, block, shape in self._slots:
                if name not in skip:
                    param.copy_(flat[block].view(shape))

    def shrink(self) -> str | None:
        """Use less memory after an out-of-memory error: say how, or None when it cannot."""
        if self.batch_size > 1:
            self.batch_size //= 2
            return f"batch size {self.batch_size}"
        return None

    def fewer_points(self) -> str | None:
        """Halve the points per call; None once there is one."""
        if self.k > 1:
            self.k //= 2
            return f"{self.k} point{'s' if self.k > 1 else ''} per call"
        return None

    def close(self) -> None:
        """Put the checkpoint weights back into the model."""
        self.write_params(self.problem.theta)


def points_within(per_point: int, most: int, device: torch.device, budget: int, cpu_block: int) -> int:
    """Points per call (1 to `most`) whose `per_point` bytes of temporaries fit `budget`, and on a CPU
    also `cpu_block` (blocks that stay in cache ran faster than larger ones)."""
    limit = min(budget, cpu_block) if device.type == "cpu" else budget
    return max(1, min(most, limit // max(per_point, 1)))


def memory_budget(device: torch.device) -> int:
    """Bytes a strategy may use for stacked weights and caches: 60% of the free GPU memory, 1 GiB on CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(0.6 * free)
    return 1 << 30


STACKED_WEIGHTS_FLOOR = 128 << 20  # the vmap strategies' stacked points take at most this, or 2 P


def points_per_call(problem: Problem, memory_budget: int, batch_size: int | None = None) -> int:
    """How many points the vmap strategies stack per call: bounded by weights and activations memory.

    Each point takes its weights and their update (2 P-sized vectors). The points of a call take at most
    2 P or 128 MB, whichever is more, so that a sweep holds at most 4 P-sized vectors beyond a forward
    pass (theta and the directions are the other 3), on a GPU as on a CPU: within 1 GiB, the probe's try
    of vmap on a ResNet-50 (23.5M parameters) held 1.6 P more than the loop, and a 10M-parameter GPT-2's
    sweep ran 9 points per call, 12.7 P (60% of a GPU's free memory would have stacked up to 64). A
    model over about 8M parameters gets one point per call (no vmap: it was slower than the loop on
    those tried on a CPU, 110 against 60 ms a point on that ResNet-50); one of 1M stacks up to 16."""
    weights = problem.layout.size * problem.theta.element_size()
    memory_budget = min(memory_budget, max(STACKED_WEIGHTS_FLOOR, 2 * weights))
    with torch.no_grad():
        out = problem.forward(problem.head(1)[0])
    per_point = weights * 2
    per_point += (
        8 * output_numel(out) * (batch_size or problem.batch_size) * problem.theta.element_size()
    )  # rough activation allowance
    return int(max(1, min(64, memory_budget // max(per_point, 1))))


def evaluate_shrinking(
    strat: Strategy, coords: torch.Tensor, warn: Callable[[str], None], whole_calls: bool = False
) -> Evaluation:
    """`strat.evaluate`, retried with less memory after each out-of-memory error (GPU)."""
    while True:
        try:
            return strat.evaluate(coords, whole_calls)
        except torch.OutOfMemoryError:
            how = strat.shrink()
            if how is None:
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            warn(f"out of memory: going on with {how}")


def agree(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> bool:
    tol = {torch.float64: 1e-9, torch.float32: 1e-3}.get(dtype, 3e-2)
    both = torch.isfinite(a) & torch.isfinite(b)
    return bool(torch.equal(torch.isfinite(a), torch.isfinite(b))) and bool(
        torch.allclose(a[both], b[both], rtol=tol, atol=tol)
    )
