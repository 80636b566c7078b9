"""A loss surface run: axes for a problem, then the grid evaluated chunk by chunk into a SweepFile."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from landscape.directions import cosine, line_to, random_directions
from landscape.io.results import SweepFile
from landscape.problem import Problem
from landscape.distributed import World
from landscape.sweep import (
    PROBE_POINTS,
    STRATEGIES,
    Choice,
    Evaluation,
    build_strategy,
    choose_strategy,
    evaluate_shrinking,
    grid_coords,
    memory_budget,
    points_per_call,
)

AXIS_NAMES = ("x", "y")


@dataclass(frozen=True)
class AxesSpec:
    """How the axes are made: random normalized directions, or x along the line to another checkpoint."""

    dims: int = 2
    norm: str = "filter"
    ignore: str = "biasbn"
    seed: int = 0
    to: str | None = None  # path of the second checkpoint: x runs from this checkpoint (0) to it (1)
    axes: str = "random"  # random, or hessian: top Hessian eigenvectors (unit vectors) instead of random directions
    axes_from: str | None = None  # a `landscape hessian` results file whose stored eigenvectors are the axes


def make_axes(
    problem: Problem, spec: AxesSpec, other_theta: torch.Tensor | None = None
) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """Directions [dims, P] (float64, CPU) and one attribute dict per axis for the results file."""
    randoms = spec.dims - (1 if other_theta is not None else 0)
    if (spec.axes == "hessian" or spec.axes_from) and randoms > 0:
        from landscape.hessian.axes import axes_from_curvature, hessian_axes

        if spec.axes_from:
            dirs, attrs = axes_from_curvature(spec.axes_from, problem, randoms)
        else:
            dirs, attrs = hessian_axes(problem, randoms, seed=spec.seed)
    else:
        dirs, attrs = _random_axes(problem, spec, randoms)
    if other_theta is not None:
        line = line_to(problem.theta, other_theta)
        dirs = torch.cat([line[None], dirs])
        attrs.insert(
            0,
            {
                "kind": "interpolation",
                "normalization": "none",
                "ignore": "none",
                "seed": spec.seed,
                "source": spec.to,
                "label": f"toward {spec.to}",
            },
        )
    if spec.dims == 2:
        attrs[0]["cosine_with_y"] = attrs[1]["cosine_with_x"] = cosine(dirs[0], dirs[1])
    return dirs, attrs


def _random_axes(problem: Problem, spec: AxesSpec, randoms: int) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """Normalized Gaussian directions (Li et al. 2018) and their attributes."""
    dirs = random_directions(randoms, problem.theta, problem.layout, seed=spec.seed, norm=spec.norm, ignore=spec.ignore)
    attrs = [
        {
            "kind": "random",
            "normalization": spec.norm,
            "ignore": spec.ignore,
            "seed": spec.seed,
            "source": f"gaussian direction {i + 1} of seed {spec.seed}",
            "label": f"{'filter-normalized' if spec.norm == 'filter' else spec.norm + '-normalized' if spec.norm != 'none' else 'unnormalized'} random direction {i + 1}",
        }
        for i in range(randoms)
    ]
    return dirs, attrs


@dataclass
class SweepReport:
    """What a finished (or interrupted) sweep did: for the CLI to print and the file to keep."""

    strategy: str
    timings: dict[str, float] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)
    inapplicable: dict[str, str] = field(default_factory=dict)
    points: int = 0
    seconds: float = 0.0
    nonfinite: int = 0


def run_sweep(
    problem: Problem,
    directions: torch.Tensor,
    store: SweepFile | None,
    *,
    strategy: str = "auto",
    chunk_seconds: float = 2.0,
    on_progress: Callable[[int, int], None] = lambda done, total: None,
    warn: Callable[[str], None] = lambda msg: None,
    world: World = World(),
) -> SweepReport:
    """Evaluate every grid point the store has not done yet, writing after each chunk.

    Under torchrun every rank calls this; rank 0 holds the store (others pass None), the grid
    points of each chunk are split over the ranks and gathered back to rank 0, which writes them.
    """
    grid, done = world.broadcast((store.coords, store.done) if world.main else None)
    coords = grid_coords([torch.from_numpy(c) for c in grid])
    todo = np.flatnonzero(~done.reshape(-1))
    total = int(done.size)
    on_progress(total - len(todo), total)
    report = SweepReport(strategy="none")
    if len(todo) == 0:
        return report
    start = time.perf_counter()

    def keep(idx: np.ndarray, values: Evaluation | None) -> np.ndarray:
        return _gather_and_store(world, store, idx, values, report)

    def progress(left: int) -> None:
        on_progress(total - left, total)

    choice = evaluate_points(
        problem, directions, coords, todo, keep,
        strategy=strategy, chunk_seconds=chunk_seconds, on_progress=progress, warn=warn, world=world,
    )  # fmt: skip
    report.strategy, report.timings, report.dropped = choice.strategy.name, choice.timings, choice.dropped
    report.inapplicable = choice.inapplicable
    report.seconds = time.perf_counter() - start
    if world.main:
        store.finish(
            {
                "strategy": report.strategy,
                "strategy_timings_s_per_point": report.timings,
                "strategy_dropped": report.dropped,
                "strategy_inapplicable": report.inapplicable,
                "seconds": report.seconds,
                "world_size": world.size,
            }
        )
    return report


def evaluate_points(
    problem: Problem,
    directions: torch.Tensor,
    coords: torch.Tensor,
    todo: np.ndarray,
    keep: Callable[[np.ndarray, Evaluation | None], np.ndarray],
    *,
    strategy: str = "auto",
    chunk_seconds: float = 2.0,
    on_progress: Callable[[int], None] = lambda left: None,
    warn: Callable[[str], None] = lambda msg: None,
    world: World = World(),
) -> Choice:
    """Evaluate the points `coords[todo]` with the strategy a probe on the first of them picks, in
    chunks of about `chunk_seconds`, handing each rank's values to `keep(indices, values)`.

    `keep` runs on every rank (under torchrun it gathers to rank 0) and returns the indices it
    stored (rank 0; the others are told). `on_progress` hears how many points are left. Returns the
    probe's choice, with `strategy` the one every rank ran (rank 0's) and closed.
    """
    candidates = STRATEGIES if strategy == "auto" else (strategy,)
    # each rank probes its own share of the first points (their values are kept), so no rank repeats
    # another's work; on a grid too small to share, every rank probes the same points and rank 0's count
    probe = todo[: min(len(todo), PROBE_POINTS * world.size)]
    shared = len(probe) >= world.size
    mine = probe[world.shard(len(probe))] if shared else probe
    choice = choose_strategy(
        problem, directions, coords[mine], candidates=candidates, total_points=max(1, len(todo) // world.size), warn=warn
    )
    chosen = world.broadcast(choice.strategy.name)
    if chosen != choice.strategy.name:  # every rank runs rank 0's choice
        choice.strategy.close()
        budget = memory_budget(problem.device)
        size = choice.strategy.batch_size
        choice.strategy = build_strategy(
            chosen, problem, directions, points_per_call=points_per_call(problem, budget, size), memory_budget=budget, batch_size=size
        )
    strat = choice.strategy
    try:
        stored = world.broadcast(keep(mine, choice.probe_result if shared or world.main else None))
        if len(stored):
            todo = todo[~np.isin(todo, stored)]
            on_progress(len(todo))
        per_point = choice.timings.get(chosen)
        while len(todo):
            size = 1 if per_point is None else max(1, min(len(todo), 1024 * world.size, math.ceil(world.size * chunk_seconds / max(per_point, 1e-9))))
            size = world.broadcast(size)
            idx = todo[:size]
            mine = idx[world.shard(len(idx))]
            t0 = time.perf_counter()
            result = evaluate_shrinking(strat, coords[mine], warn) if len(mine) else None
            per_point = (time.perf_counter() - t0) / max(len(mine), 1)
            keep(mine, result)
            todo = todo[size:]
            on_progress(len(todo))
    finally:
        strat.close()
    return choice


def _gather_and_store(world: World, store: SweepFile | None, mine: np.ndarray, result, report: SweepReport) -> np.ndarray:
    """Every rank's (indices, values) to rank 0, which stores them: the indices stored (on rank 0; none elsewhere)."""
    parts = world.gather((mine, result))
    if not world.main:
        return np.zeros(0, dtype=np.int64)
    stored = []
    for part_idx, part in parts:
        if part is not None:
            _store(store, part_idx, part, report)
            stored.append(part_idx)
    return np.concatenate(stored) if stored else np.zeros(0, dtype=np.int64)


def _store(store: SweepFile, idx: np.ndarray, result, report: SweepReport) -> None:
    loss = result.loss.numpy().copy()
    bad = ~np.isfinite(loss)
    report.nonfinite += int(bad.sum())
    loss[bad] = np.nan
    acc = result.accuracy.numpy().copy() if result.accuracy is not None else None
    if acc is not None:
        acc[bad] = np.nan
    store.write(idx, loss, acc)
    report.points += len(idx)
