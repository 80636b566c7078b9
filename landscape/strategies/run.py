"""A sweep run: every grid point a sink has not done yet, evaluated chunk by chunk with the strategy
the probe picks, each chunk handed to the sink (in memory, or a results file that a killed run resumes).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

import numpy as np
import torch

from landscape.distributed import World
from landscape.errors import ArgumentError, LandscapeError, PointFailure, RunFailure, one_line
from landscape.names import CHUNK_SECONDS
from landscape.pick import Pick, pick_to_resume
from landscape.problem import Problem
from landscape.strategies.base import Evaluation, Strategy, evaluate_shrinking, memory_budget, points_per_call
from landscape.strategies.grid import grid_coords
from landscape.strategies.probe import PROBE_POINTS, Choice, choose_strategy
from landscape.strategies.recheck import Recheck
from landscape.strategies.registry import STRATEGIES, build_strategy


class SweepSink(Protocol):
    """Where a sweep's values go: the grid's coordinates and `done` mask, written chunk by chunk."""

    coords: list[np.ndarray]

    @property
    def done(self) -> np.ndarray:
        """Which grid points hold values."""

    def write(self, flat_index: np.ndarray, loss: np.ndarray, accuracy: np.ndarray | None) -> None:
        """Store values at flat grid indices and mark them done."""

    @property
    def picked(self) -> Pick | None:
        """The strategy an earlier run on this sink picked (a resumed file), or None."""

    def chose(self, pick: Pick) -> None:
        """Record the strategy the probe picked, before any point of it is stored."""

    def finish(self, attrs: Mapping[str, Any]) -> None:
        """Record how the sweep ran."""

    def values(self) -> tuple[np.ndarray, np.ndarray | None]:
        """The loss and accuracy grids as they stand (NaN where not done)."""


class MemorySink:
    """A sweep's values in numpy arrays (the library's default: nothing is written to disk)."""

    def __init__(self, coords: list[np.ndarray], classification: bool) -> None:
        shape = tuple(len(c) for c in coords)
        self.coords = [np.asarray(c, dtype=np.float64) for c in coords]
        self.loss = np.full(shape, np.nan)
        self.accuracy = np.full(shape, np.nan) if classification else None
        self.done = np.zeros(shape, dtype=bool)
        self.attrs: dict[str, Any] = {}

    def write(self, flat_index: np.ndarray, loss: np.ndarray, accuracy: np.ndarray | None) -> None:
        self.loss.reshape(-1)[flat_index] = loss
        if self.accuracy is not None and accuracy is not None:
            self.accuracy.reshape(-1)[flat_index] = accuracy
        self.done.reshape(-1)[flat_index] = True

    picked: Pick | None = None

    def chose(self, pick: Pick) -> None:
        self.attrs["strategy"] = pick.name

    def finish(self, attrs: Mapping[str, Any]) -> None:
        self.attrs.update(attrs)

    def values(self) -> tuple[np.ndarray, np.ndarray | None]:
        return self.loss.copy(), None if self.accuracy is None else self.accuracy.copy()


@dataclass
class SweepReport:
    """What a finished (or interrupted) sweep did: for the CLI to print and the file to keep."""

    strategy: str
    batch_size: int | None = None
    points_per_call: int | None = None
    layouts: str = ""  # the fused strategies' convolution layouts (`Pick.layouts`)
    timings: dict[str, float] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)
    inapplicable: dict[str, str] = field(default_factory=dict)
    untried: tuple[str, ...] = ()  # candidates the probe's budget did not reach
    points: int = 0
    seconds: float = 0.0
    probe_seconds: float = 0.0
    probe_excess_seconds: float = 0.0  # the probe's cost: its seconds over its points at the winner's pace
    switches: list[str] = field(default_factory=list)
    nonfinite: int = 0

    def attrs(self, world_size: int = 1) -> dict[str, Any]:
        """How the sweep ran, as the results file's /sweep attributes record it."""
        return {
            "strategy": self.strategy,
            "batch_size": self.batch_size or 0,
            "points_per_call": self.points_per_call or 0,
            "conv_layouts": self.layouts,
            "strategy_timings_s_per_point": self.timings,
            "strategy_dropped": self.dropped,
            "strategy_inapplicable": self.inapplicable,
            "strategy_untried": list(self.untried),
            "seconds": self.seconds,
            "probe_seconds": self.probe_seconds,
            "probe_excess_seconds": self.probe_excess_seconds,
            "strategy_switches": self.switches,
            "world_size": world_size,
        }


def run_sweep(
    problem: Problem,
    directions: torch.Tensor,
    sink: SweepSink | None,
    *,
    strategy: str = "auto",
    chunk_seconds: float = CHUNK_SECONDS,
    on_progress: Callable[[int, int], None] = lambda done, total: None,
    warn: Callable[[str], None] = lambda msg: None,
    world: World = World(),
    on_stage: Callable[[str], None] = lambda stage: None,
) -> SweepReport:
    """Evaluate every grid point the store has not done yet, writing after each chunk; `on_stage`
    hears "choosing strategy" while the probe runs and the strategy's name once it is chosen.

    Under torchrun every rank calls this; rank 0 holds the sink (others pass None), the grid
    points of each chunk are split over the ranks and gathered back to rank 0, which writes them.
    """
    grid, done = world.broadcast((sink.coords, sink.done) if world.main and sink is not None else None)
    coords = grid_coords([torch.from_numpy(c) for c in grid])
    todo = np.flatnonzero(~done.reshape(-1))
    # nearest the checkpoint first: an interrupted run holds the region around it, not a corner of the grid
    todo = todo[np.argsort(coords[todo].norm(dim=1).numpy(), kind="stable")]
    total = int(done.size)
    on_progress(total - len(todo), total)
    report = SweepReport(strategy="none")
    if len(todo) == 0:  # every point done (a resumed run whose last write landed): mark it complete, keep how it ran
        if world.main and sink is not None:
            sink.finish({})
        return report
    start = time.perf_counter()

    def keep(idx: np.ndarray, values: Evaluation | None) -> np.ndarray:
        return _gather_and_store(world, sink, idx, values, report)

    def progress(left: int) -> None:
        on_progress(total - left, total)

    def chose(pick: Pick) -> None:  # kept with the points, so that --resume goes on with the same strategy
        on_stage(pick.name)
        if world.main and sink is not None:
            sink.chose(pick)

    named = None if problem.auto_batch else problem.batch_size
    earlier = world.broadcast(pick_to_resume(strategy, sink.picked, named) if world.main and sink is not None else None)
    on_stage(earlier.name if earlier else "choosing strategy")
    choice = evaluate_points(
        problem, directions, coords, todo, keep, strategy=strategy, chunk_seconds=chunk_seconds,
        on_progress=progress, warn=warn, world=world, on_choice=chose, earlier=earlier,
    )  # fmt: skip
    report.strategy, report.timings, report.dropped = choice.strategy.name, choice.timings, choice.dropped
    report.batch_size, report.points_per_call = choice.strategy.batch_size, choice.strategy.k
    report.layouts = choice.strategy.layouts
    report.inapplicable, report.probe_seconds, report.switches = choice.inapplicable, choice.seconds, choice.switches
    report.untried, report.probe_excess_seconds = choice.untried, choice.excess
    report.seconds = time.perf_counter() - start
    if world.main and sink is not None:
        sink.finish(report.attrs(world.size))
    return report


def evaluate_points(
    problem: Problem,
    directions: torch.Tensor,
    coords: torch.Tensor,
    todo: np.ndarray,
    keep: Callable[[np.ndarray, Evaluation | None], np.ndarray],
    *,
    strategy: str = "auto",
    chunk_seconds: float = CHUNK_SECONDS,
    on_progress: Callable[[int], None] = lambda left: None,
    warn: Callable[[str], None] = lambda msg: None,
    world: World = World(),
    where: Callable[[int], str] | None = None,
    on_choice: Callable[[Pick], None] = lambda pick: None,
    earlier: Pick | None = None,
) -> Choice:
    """Evaluate the points `coords[todo]` with the strategy a probe on the first of them picks, in
    chunks of about `chunk_seconds`, handing each rank's values to `keep(indices, values)`.

    `keep` runs on every rank (under torchrun it gathers to rank 0) and returns the indices it
    stored (rank 0; the others are told). In one process the probe's points are kept as the probe
    evaluates them, so a kill during the probe loses none. `on_progress` hears how many points are
    left. `earlier` (a resumed run's pick) is run with its batch size and points per call, unprobed.
    Every call after the probe has the strategy's points per call (`whole_calls`), so a point's value
    does not depend on the chunks. Returns the probe's choice, with `strategy` the one every rank
    ran (rank 0's) and closed. When the model or loss raises at a point, PointFailure says which
    (`where(index)` names it; default: its coordinates).
    """
    candidates = (earlier.name,) if earlier else STRATEGIES if strategy == "auto" else (strategy,)
    # each rank probes its own share of the first points (their values are kept), so no rank repeats
    # another's work; on a grid too small to share, every rank probes the same points and rank 0's count
    probe = todo[: min(len(todo), PROBE_POINTS * world.size)]
    shared = len(probe) >= world.size
    mine = probe[world.shard(len(probe))] if shared else probe
    streamed: list[np.ndarray] = []

    def kept_now(i: torch.Tensor, values: Evaluation) -> None:  # one process: each probe step's points, stored
        streamed.append(keep(mine[i.numpy()], values))

    probe_start = time.perf_counter()
    try:
        choice = choose_strategy(
            problem,
            directions,
            coords[mine],
            candidates=candidates,
            total_points=max(1, len(todo) // world.size),
            warn=warn,
            batch_size=earlier.batch_size if earlier else None,
            on_values=kept_now if world.size == 1 else None,
            layouts=earlier.layouts if earlier else "",
        )
    except LandscapeError:
        raise
    except Exception as exc:  # the model or loss, run before any point to size batches and calls
        raise point_failure("the first points (while the probe sized and timed the strategies)", exc) from exc
    choice.seconds = time.perf_counter() - probe_start
    if earlier and earlier.points_per_call:
        choice.strategy.k = earlier.points_per_call
    chosen = world.broadcast(_pick_of(choice.strategy))
    budget = memory_budget(problem.device)

    def build(
        name: str,
    ) -> Strategy:  # rank 0's pick on another rank, or a strategy a check times: the run's batch size
        return build_strategy(
            name,
            problem,
            directions,
            points_per_call=points_per_call(problem, budget, chosen.batch_size),
            memory_budget=budget,
            batch_size=chosen.batch_size,
            layouts=chosen.layouts if name == chosen.name else "",
        )

    if (chosen.name, chosen.batch_size, chosen.layouts) != (
        choice.strategy.name,
        choice.strategy.batch_size,
        choice.strategy.layouts,
    ):  # rank 0's, on every rank
        choice.strategy.close()
        choice.strategy = build(chosen.name)
    strat = choice.strategy
    strat.k = chosen.points_per_call or strat.k
    on_choice(chosen)

    # a strategy the user named is run as named; `auto` is re-checked against the loop (or, when
    # the loop won, the probe's runner-up) as the run goes, except when it goes on with a resumed run's
    # pick: a check chunk's values come from another strategy (equal to rounding, not bit for bit), and a
    # resumed run is to equal the run never stopped (a loaded machine made one check, and 4 points differ)
    other = None if strategy != "auto" or earlier is not None else _other_candidate(chosen.name, choice.timings)
    recheck = Recheck(strat, other, build, choice.timings, len(todo), world.size, chunk_seconds)
    try:
        if world.size == 1:
            stored = np.concatenate(streamed) if streamed else np.zeros(0, dtype=np.int64)
        else:
            stored = world.broadcast(keep(mine, choice.probe_result if shared or world.main else None))
        if len(stored):
            todo = todo[~np.isin(todo, stored)]
            on_progress(len(todo))
        total, last = len(todo), chosen.name
        named = where or _grid_point(coords)
        # a point that a strategy the user named cannot run: its fault, or the model's? the loop says
        loop = partial(build, "loop") if strategy != "auto" and chosen.name != "loop" and world.size == 1 else None
        failure = partial(_failure_at, named, loop, chosen.name, problem, coords)
        while len(todo):
            name, size = world.broadcast(recheck.plan(total - len(todo), len(todo)) if world.main else None)
            used = recheck.strategy(name)
            if name != last:  # the other strategy's model weights are put back before this one runs
                recheck.held[last].write_params(problem.theta)
                last = name
            idx = todo[:size]
            mine = idx[world.shard(len(idx))]
            t0 = time.perf_counter()
            result = _evaluate_chunk(used, coords, mine, keep, warn, world, failure, named)
            seconds = time.perf_counter() - t0
            keep(mine, result)
            todo = todo[size:]
            before = recheck.current
            recheck.timed(name, max(len(mine), 1), seconds, total - len(todo))
            if recheck.current != before:  # a resumed run goes on with the strategy in use when it stopped
                now = recheck.held[recheck.current]
                on_choice(_pick_of(now))
            on_progress(len(todo))
    finally:
        recheck.close()
    choice.strategy = recheck.held[recheck.current]
    choice.switches = [s.text() for s in recheck.switches]
    return choice


def _failure_at(
    where: Callable[[int], str],
    loop: Callable[[], Strategy] | None,
    name: str,
    problem: Problem,
    coords: torch.Tensor,
    i: int,
    exc: Exception,
) -> Exception:
    """The error for the point `i` that the strategy `name` failed to evaluate alone: the model's or
    loss's; or, with a `loop` to check a strategy the user named, the strategy's when the plain loop
    runs the point (vmap on an LSTM, which "the model or loss failed" would misname)."""
    if loop is None:
        return point_failure(where(i), exc)
    plain = loop()
    try:
        plain.evaluate(coords[i : i + 1])
    except Exception as mine:
        return point_failure(where(i), mine)
    finally:
        plain.write_params(problem.theta)
        plain.close()
    return ArgumentError(
        "strategy",
        name,
        f"cannot run this model ({one_line(exc)}); auto picks a strategy that can, loop runs any model",
    )


def _pick_of(strat: Strategy) -> Pick:
    return Pick(strat.name, strat.batch_size, strat.k, strat.layouts)


def _other_candidate(chosen: str, timings: dict[str, float]) -> str | None:
    """What a run re-checks its strategy against: the plain loop, or when the loop won, the fastest other the probe timed."""
    if chosen != "loop":
        return "loop"
    rest = {n: t for n, t in timings.items() if n != "loop"}
    return min(rest, key=lambda n: rest[n]) if rest else None


def _evaluate_chunk(
    strat: Strategy,
    coords: torch.Tensor,
    mine: np.ndarray,
    keep: Callable[[np.ndarray, Evaluation | None], np.ndarray],
    warn: Callable[[str], None],
    world: World,
    failure: Callable[[int, Exception], Exception],
    where: Callable[[int], str],
) -> Evaluation | None:
    """This rank's points of a chunk; when the model or loss raises, the points are tried one at a
    time (one process), those before the failing one kept, and the failing one named by `failure`."""
    if not len(mine):
        return None
    try:
        return evaluate_shrinking(strat, coords[mine], warn, whole_calls=True)
    except RunFailure:
        raise
    except Exception as exc:
        if len(mine) == 1:
            raise failure(int(mine[0]), exc) from exc
        if world.size > 1:
            raise point_failure(f"one of {len(mine)} points from {where(int(mine[0]))}", exc) from exc
        together = exc
    parts: list[Evaluation] = []
    for j in range(len(mine)):
        try:
            parts.append(evaluate_shrinking(strat, coords[mine[j : j + 1]], warn, whole_calls=True))
        except RunFailure:
            raise
        except Exception as exc:
            if parts:
                keep(mine[:j], concat(parts))
            raise failure(int(mine[j]), exc) from exc
    warn(f"{len(mine)} points together failed ({one_line(together)}); one at a time they ran")
    return concat(parts)


def point_failure(where: str, exc: BaseException) -> PointFailure:
    """Where the model or loss failed, and why, in one line."""
    why = exc.option_message() if isinstance(exc, ArgumentError) else one_line(exc)
    return PointFailure(f"the model or loss failed at {where}: {why}")


def _grid_point(coords: torch.Tensor) -> Callable[[int], str]:
    """Names a point of a sweep's grid by its coordinates."""
    return lambda i: "the point (" + ", ".join(f"{float(v):.6g}" for v in coords[i]) + ")"


def concat(parts: list[Evaluation]) -> Evaluation:
    """Evaluations of consecutive points as one."""
    accuracy = [p.accuracy for p in parts if p.accuracy is not None]
    return Evaluation(torch.cat([p.loss for p in parts]), torch.cat(accuracy) if len(accuracy) == len(parts) else None)


def _gather_and_store(
    world: World, sink: SweepSink | None, mine: np.ndarray, result: Evaluation | None, report: SweepReport
) -> np.ndarray:
    """Every rank's (indices, values) to rank 0, which stores them: the indices stored (on rank 0; none elsewhere)."""
    parts = world.gather((mine, result)) or []
    if not world.main or sink is None:
        return np.zeros(0, dtype=np.int64)
    stored = []
    for part_idx, part in parts:
        if part is not None:
            _store(sink, part_idx, part, report)
            stored.append(part_idx)
    return np.concatenate(stored) if stored else np.zeros(0, dtype=np.int64)


def _store(sink: SweepSink, idx: np.ndarray, result: Evaluation, report: SweepReport) -> None:
    loss = result.loss.numpy().copy()
    bad = ~np.isfinite(loss)
    report.nonfinite += int(bad.sum())
    loss[bad] = np.nan
    acc = result.accuracy.numpy().copy() if result.accuracy is not None else None
    if acc is not None:
        acc[bad] = np.nan
    sink.write(idx, loss, acc)
    report.points += len(idx)
