"""The timed probe that picks a sweep strategy per run: batch size first, then every strategy that
applies, timed on real grid points whose values are kept."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from landscape.errors import ArgumentError, LandscapeError, PointFailure, one_line
from landscape.problem import Problem
from landscape.strategies.base import (
    Evaluation,
    NotApplicable,
    Strategy,
    agree,
    evaluate_shrinking,
    memory_budget,
    points_per_call,
)
from landscape.strategies.registry import STRATEGIES, build_strategy

PROBE_POINTS = 128  # grid points a caller hands the probe: each is evaluated once, by one candidate, and stored
SHORTLIST_POINTS = 4  # the probe's first stage times each strategy on this many points ...
SHORTLIST_FACTOR = 3.0  # ... and drops those this many times slower than the fastest
STAGE2_POINTS = 16  # the second stage times each survivor on this many points (enough to fill a vmap call) ...
STAGE2_SECONDS = 0.5  # ... best of `repeats` runs, fewer once a candidate has spent this long
PROBE_SHARE = 0.03  # stage 2 may cost this share of the run's estimated time over the fastest candidate's
LOOP_MARGIN = 1.05  # another strategy replaces the plain loop only when its probe was this many times faster:
# probe timings jitter by about that much, and on the transformer sample vmap (0.9x the loop over
# 300 points) won the probe in one run of two


def tune_batch_size(problem: Problem, one_pass: Callable[[int], float], rounds: int = 3, margin: float = 0.9) -> int:
    """The batch size whose forward passes over the whole data set are fastest (cache effects make
    the whole set in one batch slower for some models on a CPU); `one_pass(size)` times one pass.

    The sizes are timed in interleaved rounds (the best of `rounds` per size), so a busy spell on
    the machine hits every size alike, and a size below the cap is taken only when it is clearly
    faster (under `margin` times the cap's time): a lucky pass once made the transformer sample run
    at half its batch, 15% slower.
    """
    cap = problem.batch_size
    sizes = sorted({min(problem.n, s) for s in (cap, cap // 2, cap // 4, cap // 16) if s >= 1}, reverse=True)
    if len(sizes) == 1:
        return sizes[0]
    best = dict.fromkeys(sizes, math.inf)
    for _ in range(rounds):
        for size in sizes:
            best[size] = min(best[size], one_pass(size))
    fastest = min(sizes, key=lambda s: best[s])
    return fastest if best[fastest] < margin * best[sizes[0]] else sizes[0]


@dataclass
class Choice:
    """The strategy picked for a run, the seconds per point each candidate took, and why others dropped out."""

    strategy: Strategy
    timings: dict[str, float] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)
    inapplicable: dict[str, str] = field(default_factory=dict)  # nothing to offer this model (not a failure)
    probe_coords: torch.Tensor | None = None
    probe_result: Evaluation | None = None
    seconds: float = 0.0  # the probe's wall time, tuning the batch size included
    switches: list[str] = field(default_factory=list)  # the run's moves to a faster strategy (Recheck)


def choose_strategy(
    problem: Problem,
    directions: torch.Tensor,
    probe_coords: torch.Tensor,
    *,
    candidates: tuple[str, ...] = STRATEGIES,
    budget: int | None = None,
    repeats: int = 2,
    total_points: int | None = None,
    warn: Callable[[str], None] = lambda msg: warnings.warn(msg, stacklevel=2),
    batch_size: int | None = None,
    on_values: Callable[[torch.Tensor, Evaluation], None] | None = None,
) -> Choice:
    """Time each candidate on `probe_coords` (real grid points) and keep the fastest that agrees with the others.

    When the user named no batch size (`problem.auto_batch`), the batch size is tuned first. Every
    candidate evaluates the same point first (a warm-up, and the agreement check); then each is
    timed on fresh probe points, so with enough of them (1 + 4 per candidate + 32 per survivor)
    no probe work is wasted: the values of every probe point are returned (from whichever
    candidate evaluated it; the winner fills in any left) so the caller can store them. With one
    candidate nothing is timed. `total_points` (the run's size) bounds the probe's cost: on a run
    of a second or two, timing slow candidates again would cost more than the fastest one saves.
    `batch_size` (a resumed run's) is used untuned; `on_values(indices, values)` hears each probe
    point's values as soon as they are known (for the caller to store them at once).
    """
    budget = memory_budget(problem.device) if budget is None else budget
    probe = _Probe(problem, probe_coords, warn, on_values)
    if batch_size is None:
        tune = problem.auto_batch and len(candidates) > 1
        batch_size = tune_batch_size(problem, probe.loop_pass(directions)) if tune else problem.batch_size
        probe.keep_tuned(batch_size)
    k = points_per_call(problem, budget, batch_size)
    for name in candidates:
        try:
            probe.built[name] = build_strategy(
                name, problem, directions, points_per_call=k, memory_budget=budget, batch_size=batch_size
            )
        except NotApplicable as exc:
            probe.inapplicable[name] = str(exc)
        except Exception as exc:  # a model the strategy cannot run: fall back, say why
            probe.dropped[name] = one_line(exc)
    if len(probe.built) == 1:
        (only,) = probe.built.values()
        return Choice(only, dropped=probe.dropped, inapplicable=probe.inapplicable)
    probe.warm_up()
    probe.shortlist(total_points, repeats)
    probe.final_stage(repeats)
    if not probe.built:
        if (
            "loop" in probe.dropped
        ):  # the plain forward pass itself failed: the model's or loss's failure, not a strategy's
            raise PointFailure(f"the model or loss failed on the probe's first points: {probe.dropped['loop']}")
        raise _none_can_run(candidates, {**probe.inapplicable, **probe.dropped})
    return probe.choice(fastest_or_loop({n: probe.timings[n] for n in probe.built}))


class _Probe:
    """The probe's state as its stages run: the candidates still in, their timings, why others left,
    and the values of the probe points evaluated so far."""

    def __init__(
        self,
        problem: Problem,
        coords: torch.Tensor,
        warn: Callable[[str], None],
        on_values: Callable[[torch.Tensor, Evaluation], None] | None = None,
    ) -> None:
        self.problem, self.coords, self.warn = problem, coords, warn
        self.built: dict[str, Strategy] = {}
        self.dropped: dict[str, str] = {}
        self.inapplicable: dict[str, str] = {}
        self.timings: dict[str, float] = {}
        self.first: dict[str, float] = {}
        self.kept = _ProbeValues(coords, problem.classification, on_values)
        self.tuned: list[tuple[int, torch.Tensor, Evaluation]] = []  # (batch size, points, values) of the tuning passes

    def loop_pass(self, directions: torch.Tensor) -> Callable[[int], float]:
        """Times one pass of the plain loop over the data at a batch size, on a fresh probe point;
        `keep_tuned` keeps the values of the passes at the batch size the run uses (so tuning costs
        little work of its own; a point's value at another batch size differs, by rounding or, for a
        loss that is not a mean over samples, by more)."""
        loop = build_strategy("loop", self.problem, directions)

        def one_pass(size: int) -> float:
            loop.batch_size = size
            idx = self.kept.take(len(self.tuned) + 1)[-1:]  # a point no pass has used
            start = time.perf_counter()
            try:
                values = loop.evaluate(self.coords[idx])
            finally:
                loop.write_params(self.problem.theta)
            seconds = time.perf_counter() - start
            self.tuned.append((size, idx, values))
            return seconds

        return one_pass

    def keep_tuned(self, batch_size: int) -> None:
        """The tuning passes' values at `batch_size`, kept as probe points' values."""
        for size, idx, values in self.tuned:
            if size == batch_size:
                self.kept.put(idx, values)
        self.tuned.clear()

    def drop(self, name: str, why: str, message: str) -> None:
        self.dropped[name] = why
        self.warn(message)
        self.built.pop(name).close()

    def evaluate(self, name: str, strat: Strategy, idx: torch.Tensor) -> tuple[Evaluation, float] | None:
        """`strat`'s values at probe points `idx` and the seconds per point, None (dropped) if it raised."""
        try:
            t0 = time.perf_counter()
            res = evaluate_shrinking(strat, self.coords[idx], self.warn)
            seconds = (time.perf_counter() - t0) / len(idx)
        except Exception as exc:
            why = one_line(exc)
            self.drop(name, why, f"sweep strategy {name} cannot run this model ({why}); falling back")
            return None
        finally:
            strat.write_params(self.problem.theta)
        return res, seconds

    def warm_up(self) -> None:
        """Every candidate evaluates the point farthest from the checkpoint (vmap tracing, the
        allocator), where a strategy that computes something else would show it: each must agree
        with the first."""
        far = torch.tensor([int(self.coords.norm(dim=1).argmax()) if self.coords.numel() else 0])
        reference: Evaluation | None = None
        for name, strat in list(self.built.items()):
            out = self.evaluate(name, strat, far)
            if out is None:
                continue
            if reference is None:
                reference = out[0]
                self.kept.put(far, reference)
            elif not agree(reference.loss, out[0].loss, self.problem.dtype):
                self.drop(
                    name,
                    "its values disagree with the other strategies",
                    f"sweep strategy {name} gives values that disagree with the others; not using it",
                )

    def timed(self, name: str, strat: Strategy, points: int) -> float | None:
        """Seconds per point of `strat` on the next `points` probe points (their values kept), None if it raised."""
        idx = self.kept.take(points)
        out = self.evaluate(name, strat, idx)
        if out is None:
            return None
        self.kept.put(idx, out[0])
        return out[1]

    def shortlist(self, total_points: int | None, repeats: int) -> None:
        """Stage 1: a few points each, so a slow candidate costs little; those far behind the fastest,
        or whose stage-2 timing would cost the run more than its share, are not timed further."""
        for name, strat in list(self.built.items()):
            seconds = self.timed(name, strat, SHORTLIST_POINTS)
            if seconds is not None:
                self.first[name] = seconds
        fastest = min(self.first.values(), default=0.0)
        # stage 2 times the candidates close to the fastest, nearest first, while what they would cost
        # over running the fastest alone stays within PROBE_SHARE of the run's estimated time
        allowance = math.inf if total_points is None else PROBE_SHARE * total_points * fastest
        for name in sorted(self.built, key=lambda n: self.first[n]):
            excess = (self.first[name] - fastest) * STAGE2_POINTS * repeats
            if self.first[name] > SHORTLIST_FACTOR * fastest or excess > allowance:
                self.timings[name] = self.first[name]
                self.built.pop(name).close()
            else:
                allowance -= excess

    def final_stage(self, repeats: int) -> None:
        """Stage 2: the best of `repeats` runs of each survivor, each on fresh points."""
        for name, strat in list(self.built.items()):
            best, spent = math.inf, 0.0
            for _ in range(max(1, repeats)):
                seconds = self.timed(name, strat, STAGE2_POINTS)
                if seconds is None:
                    break
                best, spent = min(best, seconds), spent + seconds * STAGE2_POINTS
                if spent > STAGE2_SECONDS:
                    break
            if name in self.built:  # the best run of either stage: no candidate dropped in stage 1 beats it
                self.timings[name] = min(best, self.first.get(name, math.inf))

    def choice(self, best_name: str) -> Choice:
        """`best_name` as the run's strategy (the others closed), with the probe points no candidate reached filled in."""
        for name, strat in self.built.items():
            if name != best_name:
                strat.close()
        winner = self.built[best_name]
        rest = self.kept.missing()
        if len(rest):
            self.kept.put(rest, evaluate_shrinking(winner, self.coords[rest], self.warn))
        return Choice(winner, self.timings, self.dropped, self.inapplicable, self.coords, self.kept.result())


def fastest_or_loop(timings: dict[str, float]) -> str:
    """The candidate with the least seconds per point, unless the plain loop is within LOOP_MARGIN of it."""
    best = min(timings, key=lambda n: timings[n])
    if "loop" in timings and timings[best] * LOOP_MARGIN > timings["loop"]:
        return "loop"
    return best


class _ProbeValues:
    """The probe points' values as the candidates evaluate them: each point is kept from the first
    strategy that evaluated it, so no probe work is thrown away while fresh points last."""

    def __init__(
        self,
        coords: torch.Tensor,
        classification: bool,
        on_values: Callable[[torch.Tensor, Evaluation], None] | None = None,
    ) -> None:
        self.on_values = on_values
        n = coords.shape[0]
        self.loss = torch.full((n,), math.nan, dtype=torch.float64)
        self.accuracy = torch.full((n,), math.nan, dtype=torch.float64) if classification else None
        self.have = torch.zeros(n, dtype=torch.bool)

    def take(self, count: int) -> torch.Tensor:
        """Indices of the next `count` points not yet evaluated; once those run out, evaluated ones
        again (their values are not kept twice)."""
        fresh = torch.nonzero(~self.have).flatten()[:count]
        if len(fresh) == count:
            return fresh
        done = torch.nonzero(self.have).flatten()
        pool = done if len(done) else fresh  # nothing evaluated yet: repeats of a point give equal values
        if len(pool) == 0:
            return fresh
        return torch.cat([fresh, pool[torch.arange(count - len(fresh)) % len(pool)]])

    def put(self, idx: torch.Tensor, res: Evaluation) -> None:
        new = ~self.have[idx]
        target = idx[new]
        self.loss[target] = res.loss[new]
        if self.accuracy is not None and res.accuracy is not None:
            self.accuracy[target] = res.accuracy[new]
        self.have[target] = True
        if self.on_values is not None and len(target):
            fresh = Evaluation(res.loss[new], None if res.accuracy is None else res.accuracy[new])
            self.on_values(target, fresh)

    def missing(self) -> torch.Tensor:
        return torch.nonzero(~self.have).flatten()

    def result(self) -> Evaluation:
        return Evaluation(self.loss.clone(), None if self.accuracy is None else self.accuracy.clone())


def _none_can_run(candidates: tuple[str, ...], why: dict[str, str]) -> LandscapeError:
    if len(candidates) == 1:
        return ArgumentError(
            "strategy", candidates[0], f"cannot run this model: {why.get(candidates[0], 'unknown reason')}"
        )
    return LandscapeError("no sweep strategy can run this model: " + "; ".join(f"{n}: {m}" for n, m in why.items()))
