"""The timed probe that picks a sweep strategy per run: batch size first, then every strategy that
applies, timed on real grid points whose values are kept."""

from __future__ import annotations

import math
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from landscape.errors import ArgumentError, LandscapeError, PointFailure, one_line
from landscape.names import CHUNK_SECONDS
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
from landscape.strategies.registry import REGISTRY, STRATEGIES, build_strategy

PROBE_POINTS = 128  # grid points a caller hands the probe: each is evaluated once, by one candidate, and stored
SHORTLIST_POINTS = 4  # the probe's first stage times each strategy on up to this many points ...
SHORTLIST_SECONDS = 0.6  # ... fewer when these seconds of points are enough to time it (a costly model) ...
SHORTLIST_FACTOR = 3.0  # ... and drops those this many times slower than the fastest
STAGE2_POINTS = 16  # the second stage times each survivor on up to this many points (enough to fill a vmap call) ...
STAGE2_TARGET = 1.5  # ... fewer (down to 4, or a call's worth) when these seconds of points are enough ...
STAGE2_SECONDS = 0.5  # ... best of `repeats` runs, fewer once a candidate has spent this long
PROBE_SHARE = 0.04  # the probe may cost this share of the run's estimated time over the fastest candidate's
PROBE_FLOOR = 0.25  # ... or these many seconds, whichever is more: a tenth of the process's own start-up (torch's
# import), where a share of a sub-second run could not even build the candidates (the sample MLP's 3x strategy)
TUNING_SHARE = 0.25  # ... of which tuning the batch size may take this part (a strategy gains more than a size)
# tried in this order after the loop when the budget cannot try them all: the largest gains measured on the
# samples and the suite first
PROMISE = ("mlp", "firstlayer-fused", "fused", "firstlayer", "vmap", "firstlayer-vmap", "compiled")
FILL_POINTS = 4  # the winner's pace on this many probe points or more is the probe cost's measure (`_Probe.pace`)
LOOP_MARGIN = 1.05  # another strategy replaces the plain loop only when its probe was this many times faster:
# probe timings jitter by about that much, and on the transformer sample vmap (0.9x the loop over
# 300 points) won the probe in one run of two


def tune_batch_size(
    problem: Problem,
    one_pass: Callable[[int], float],
    rounds: int = 3,
    margin: float = 0.9,
    affords: Callable[[float], bool] = lambda seconds: True,
) -> int:
    """The batch size whose forward passes over the whole data set are fastest (cache effects make
    the whole set in one batch slower for some models on a CPU); `one_pass(size)` times one pass.

    The sizes are timed in interleaved rounds, and a size below the cap is taken only when it was
    clearly faster (under `margin` times the cap's time) than the cap in the same round, in every
    one of two rounds or more: one pass on two shared cores varies by 30% (a timm ViT, 0.32-0.55 s),
    and one lucky pass at 1/16 of the batch, compared with the cap's, made a 441-point sweep run at
    that size 17% slower than the whole batch. A first pass at the cap warms up (it is not compared:
    a cold pass once made a quarter of GPT-2's batch look 1.26x faster) and sizes the budget: each
    round runs only if `affords` the seconds its passes at the other sizes would take (about the
    cap's time each), the first only if two rounds fit: on a short run of a costly model trying sizes
    costs more than a better one could save, and a lone round (1.4 s of a timm ViT's 441-point
    probe) would be spent for nothing, since the cap is kept with fewer than two.
    """
    cap = problem.batch_size
    sizes = sorted({min(problem.n, s) for s in (cap, cap // 2, cap // 4, cap // 16) if s >= 1}, reverse=True)
    first = one_pass(sizes[0])
    if len(sizes) == 1:
        return sizes[0]
    ratios: dict[int, list[float]] = {size: [] for size in sizes[1:]}  # each size's time over the cap's, per round
    per_round = (len(sizes) - 1) * first
    for done in range(rounds):
        if not affords(per_round * (2 if done == 0 else 1)):  # one round alone decides nothing: start only if two fit
            break
        seconds = {size: one_pass(size) for size in sizes}
        for size in sizes[1:]:
            ratios[size].append(seconds[size] / seconds[sizes[0]])
    clear = [size for size, r in ratios.items() if len(r) >= 2 and max(r) < margin]
    return min(clear, key=lambda size: statistics.median(ratios[size])) if clear else sizes[0]


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
    untried: tuple[str, ...] = ()  # candidates the probe's budget did not reach (a short run of a costly model)
    excess: float = 0.0  # what the probe cost over evaluating its points at the winner's pace (`_Probe.pace`)
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
    layouts: str = "",
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
    point's values as soon as they are known (for the caller to store them at once). `layouts` (a
    resumed run's convolution layouts, with its one candidate) are used untimed.

    The probe's cost is bounded by design: what it spends over evaluating its points with the
    fastest strategy seen (tuning passes at other sizes, repeated warm-up points, builds, slower
    candidates' timings) stays within PROBE_SHARE of the run's estimated time (`total_points`
    times that strategy's seconds per point). Each step is taken only when its expected cost fits
    what is left; candidates the budget cannot try are recorded in `Choice.untried`. On a short run
    of a costly model that is the plain loop alone.
    """
    budget = memory_budget(problem.device) if budget is None else budget
    probe = _Probe(problem, probe_coords, warn, on_values, total_points)
    if batch_size is None:
        tune = problem.auto_batch and len(candidates) > 1
        if tune:
            batch_size = tune_batch_size(problem, probe.loop_pass(directions), affords=probe.affords_tuning)
        else:
            batch_size = problem.batch_size
        probe.keep_tuned(batch_size)
    k = points_per_call(problem, budget, batch_size)
    timed_layouts: dict[Any, str] = {}  # the fused strategies' convolution layouts, timed once for both

    def build(name: str) -> Strategy | None:
        try:
            return build_strategy(
                name,
                problem,
                directions,
                points_per_call=k,
                memory_budget=budget,
                batch_size=batch_size,
                layouts=layouts if len(candidates) == 1 else "",
                timed_layouts=timed_layouts,
                checked=probe.loop_is_reference,
            )
        except NotApplicable as exc:
            probe.inapplicable[name] = str(exc)
        except Exception as exc:  # a model the strategy cannot run: fall back, say why
            probe.dropped[name] = one_line(exc)
        return None

    if len(candidates) == 1:
        only = build(candidates[0])
        if only is None:
            raise _none_can_run(candidates, {**probe.inapplicable, **probe.dropped})
        return Choice(only, dropped=probe.dropped, inapplicable=probe.inapplicable)
    probe.warm_up(candidates, build)
    probe.shortlist(repeats)
    probe.final_stage(repeats)
    if not probe.built:
        if (
            "loop" in probe.dropped
        ):  # the plain forward pass itself failed: the model's or loss's failure, not a strategy's
            raise PointFailure(f"the model or loss failed on the probe's first points: {probe.dropped['loop']}")
        raise _none_can_run(candidates, {**probe.inapplicable, **probe.dropped})
    choice = probe.choice(fastest_or_loop({n: probe.timings[n] for n in probe.built}))
    choice.excess = max(0.0, probe.excess(pace=probe.pace()))
    return choice


class _Probe:
    """The probe's state as its stages run: the candidates still in, their timings, why others left,
    and the values of the probe points evaluated so far."""

    def __init__(
        self,
        problem: Problem,
        coords: torch.Tensor,
        warn: Callable[[str], None],
        on_values: Callable[[torch.Tensor, Evaluation], None] | None = None,
        total_points: int | None = None,
    ) -> None:
        self.problem, self.coords, self.warn = problem, coords, warn
        self.total_points = total_points
        self.start = time.perf_counter()
        self.untried: list[str] = []
        self.built: dict[str, Strategy] = {}
        self.dropped: dict[str, str] = {}
        self.inapplicable: dict[str, str] = {}
        self.timings: dict[str, float] = {}
        self.first: dict[str, float] = {}
        self.warm: dict[str, float] = {}
        self.kept = _ProbeValues(coords, problem.classification, on_values)
        # (batch size, points, values, seconds) of the tuning passes
        self.tuned: list[tuple[int, torch.Tensor, Evaluation, float]] = []
        self.filled: tuple[int, float] = (0, 0.0)  # the probe points the winner filled in, and its seconds
        # the point farthest from the checkpoint, where a strategy that computes something else would show it
        self.far = torch.tensor([int(coords.norm(dim=1).argmax()) if coords.numel() else 0])
        # whether the plain loop's value at `far` is what every other candidate's is checked against
        # (`warm_up`): then a build need not check itself against the model (`BuildContext.checked`)
        self.loop_is_reference = False

    # ---- the budget -------------------------------------------------------------------------
    def fastest(self) -> float:
        """The least seconds per point seen so far (any candidate, any stage, its cold warm-up point too:
        a bound on its pace that shrinks the budget as soon as a faster candidate shows; the tuning
        passes' too)."""
        seen = [*self.timings.values(), *self.first.values(), *self.warm.values(), *(t for _, _, _, t in self.tuned)]
        return min(seen, default=math.inf)

    def excess(self, kept: int | None = None, pace: float | None = None) -> float:
        """Seconds spent so far over evaluating the kept points at `pace` seconds per point (by default
        the fastest seen: a lower bound while the probe runs, which keeps its budget on the safe side)."""
        done = int(self.kept.have.sum()) if kept is None else kept
        return time.perf_counter() - self.start - done * (self.fastest() if pace is None else pace)

    def pace(self) -> float:
        """The winner's seconds per point as it filled in the probe points no candidate reached, when it
        filled FILL_POINTS or more, else the fastest seen. The fastest single timing is the luckiest of
        dozens on a shared machine: a timm ViT's loop ran 0.41 s/pt through a run whose fastest point
        took 0.34, and the probe cost it reported (19% of the run) was mostly that difference."""
        points, seconds = self.filled
        return seconds / points if points >= FILL_POINTS else self.fastest()

    def affords(self, seconds: float, share: float = 1.0, kept: int | None = None) -> bool:
        """Whether `seconds` more of probe cost stay within `share` of the probe's budget."""
        if self.total_points is None:
            return True
        allowance = share * max(PROBE_SHARE * self.total_points * self.fastest(), PROBE_FLOOR)
        return self.excess(kept) + seconds <= allowance

    def affords_tuning(self, seconds: float) -> bool:
        # while tuning, the passes at the cap count as kept (the cap is the size a skipped tuning keeps)
        at_cap = sum(1 for size, _, _, _ in self.tuned if size == self.tuned[0][0])
        return self.affords(seconds, TUNING_SHARE, kept=at_cap)

    def loop_pass(self, directions: torch.Tensor) -> Callable[[int], float]:
        """Times one pass of the plain loop over the data at a batch size, on a fresh probe point;
        `keep_tuned` keeps the values of the passes at the batch size the run uses (so tuning costs
        little work of its own; a point's value at another batch size differs, by rounding or, for a
        loss that is not a mean over samples, by more)."""
        loop = build_strategy("loop", self.problem, directions)

        def one_pass(size: int) -> float:
            loop.batch_size = size
            # a point no pass has used, the far one first: at the cap it is the loop's warm-up point (`warm_up`)
            idx = self.far if not self.tuned else self.kept.take(len(self.tuned) + 1, skip=self.far)[-1:]
            start = time.perf_counter()
            try:
                values = loop.evaluate(self.coords[idx])
            finally:
                loop.write_params(self.problem.theta)
            seconds = time.perf_counter() - start
            self.tuned.append((size, idx, values, seconds))
            return seconds

        return one_pass

    def keep_tuned(self, batch_size: int) -> None:
        """The tuning passes' values at `batch_size`, kept as probe points' values."""
        for size, idx, values, seconds in self.tuned:
            if size == batch_size:
                self.kept.put(idx, values)
                self.first["loop"] = min(self.first.get("loop", math.inf), seconds)
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

    def points_for(self, seconds: float, least: int, most: int) -> int:
        """Points enough to time a strategy for about `seconds` at the fastest pace seen: a point of a
        costly model is long enough to time on its own, and each one more costs a slower candidate more."""
        pace = self.fastest()
        return most if not math.isfinite(pace) or pace <= 0 else max(least, min(most, math.ceil(seconds / pace)))

    def warm_up(self, candidates: tuple[str, ...], build: Callable[[str], Strategy | None]) -> None:
        """Each candidate is built and evaluates the point farthest from the checkpoint (vmap tracing,
        the allocator), where a strategy that computes something else would show it: each must agree
        with the first. The plain loop goes first (its value there kept from the batch size's tuning when
        that ran at the run's size: a pass of the loop saved); the others, most promising first, while the
        budget affords a build and a repeated point (priced at the loop's pace, else at the fastest seen)."""
        far = self.far
        reference: Evaluation | None = None
        if "loop" in self.first and bool(self.kept.have[far].all()):  # the tuning's first pass, at the run's size
            reference = self.kept.at(far)
            self.loop_is_reference = True
        order = sorted(
            candidates, key=lambda n: -1 if n == "loop" else PROMISE.index(n) if n in PROMISE else len(PROMISE)
        )
        for name in order:
            kind = REGISTRY.get(name)
            first_call = kind.warm_up_seconds if kind else 0.0  # a compile
            building = self.fastest() * kind.build_points if kind and math.isfinite(self.fastest()) else 0.0
            # its point repeats the far point (all of it probe cost), cold, at a pace not yet known: priced at
            # the loop's, not at the fastest seen, which would take it to be as fast as the best (on a U-Net's
            # 441-point run firstlayer, vmap and firstlayer-vmap, priced at firstlayer-fused's 14 ms, took 40-45 ms)
            point = self.first.get("loop", self.fastest())  # the loop's is one of those `fastest` takes the least of
            unbounded = self.total_points is None and first_call > 0  # a run of unknown length may not pay it back
            if name != order[0] and (unbounded or not self.affords(point + first_call + building)):
                why = REGISTRY[name].rules_out(self.problem) if name in REGISTRY else None
                if why is None:
                    self.untried.append(name)
                else:
                    self.inapplicable[name] = why
                continue
            strat = build(name)
            if strat is None:
                continue
            self.built[name] = strat
            if name == "loop" and reference is not None:  # warm, and its value at the far point kept
                continue
            out = self.evaluate(name, strat, far)
            if out is None:
                continue
            self.warm[name] = out[1]  # a cold timing (tracing, allocations): a bound until stage 1 times it warm
            if reference is None:
                reference = out[0]
                self.kept.put(far, reference)
                self.first.setdefault(name, out[1])
                self.loop_is_reference = name == "loop"
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

    def shortlist(self, repeats: int) -> None:
        """Stage 1: a few points each, so a slow candidate costs little; those far behind the fastest,
        or whose stage-2 timing would cost the run more than the budget has left, are not timed further."""
        if len(self.built) == 1:  # the loop alone (the others inapplicable, failed or untried): nothing to compare
            self.timings = {n: self.first.get(n, math.inf) for n in self.built}
            return
        points = self.points_for(SHORTLIST_SECONDS, 1, SHORTLIST_POINTS)
        for name, strat in list(self.built.items()):
            # a candidate whose warm-up (a bound on its pace) says its timing would overrun the budget is not timed
            # (the fastest one costs nothing over the fastest pace: its points are kept); nor is one already
            # timed warm (the loop, by the batch size's tuning) that is far behind: timing the loop of a timm
            # EfficientNet on 4 more points, at 5x firstlayer-fused's pace, was a third of the probe's cost
            over = points * max(0.0, self.warm.get(name, 0.0) - self.fastest())
            if len(self.first) > 0 and name not in self.first and over > 0 and not self.affords(over):
                self.timings[name] = self.warm[name]
                self.built.pop(name).close()
                continue
            known = min(self.first.get(name, math.inf), self.warm.get(name, math.inf))
            if name in self.first and known > SHORTLIST_FACTOR * self.fastest():
                self.first[name] = known  # ranked below with the others' stage-1 timings (kept if they fail)
                continue
            seconds = self.timed(name, strat, points)
            if seconds is not None:
                self.first[name] = seconds
        # stage 2 times the candidates close to the fastest, nearest first, while what they would cost
        # over running the fastest alone fits in what is left of the budget
        ranked = sorted(self.built, key=lambda n: self.first[n])
        planned = 0.0
        for name in ranked[1:]:
            excess = (self.first[name] - self.first[ranked[0]]) * self.stage2_points(self.built[name]) * repeats
            if self.first[name] > SHORTLIST_FACTOR * self.first[ranked[0]] or not self.affords(planned + excess):
                self.timings[name] = self.first[name]
                self.built.pop(name).close()
            else:
                planned += excess

    def stage2_points(self, strat: Strategy) -> int:
        return max(self.points_for(STAGE2_TARGET, 4, STAGE2_POINTS), min(strat.k, STAGE2_POINTS))

    def final_stage(self, repeats: int) -> None:
        """Stage 2: the best of `repeats` runs of each survivor, each on fresh points. A lone survivor
        has nothing to be compared with: its stage-1 timing stands (on a 3-point sweep its two runs
        of 16 points, all repeats, were a third of the probe's cost)."""
        if len(self.built) == 1:
            (name,) = self.built
            self.timings[name] = self.first.get(name, self.warm.get(name, math.inf))
            return
        for name, strat in list(self.built.items()):
            best, spent = math.inf, 0.0
            points = self.stage2_points(strat)
            for _ in range(max(1, repeats)):
                seconds = self.timed(name, strat, points)
                if seconds is None:
                    break
                best, spent = min(best, seconds), spent + seconds * points
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
        # in pieces of about CHUNK_SECONDS (whole calls), each kept as it ends: on a slow model the probe's
        # last 100 points took a minute (GPT-2 small, 2 cores) and a kill lost them all
        per_point = self.timings.get(best_name, math.inf)
        calls = max(1, int(CHUNK_SECONDS / (per_point * winner.k))) if math.isfinite(per_point) and per_point > 0 else 1
        piece = calls * winner.k
        start_fill = time.perf_counter()
        for start in range(0, len(rest), piece):
            part = rest[start : start + piece]
            self.kept.put(part, evaluate_shrinking(winner, self.coords[part], self.warn))
        self.filled = (len(rest), time.perf_counter() - start_fill)
        return Choice(
            winner,
            self.timings,
            self.dropped,
            self.inapplicable,
            self.coords,
            self.kept.result(),
            untried=tuple(self.untried),
        )


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

    def take(self, count: int, skip: torch.Tensor | None = None) -> torch.Tensor:
        """Indices of the next `count` points not yet evaluated (nor in `skip`); once those run out,
        evaluated ones again (their values are not kept twice)."""
        free = ~self.have
        if skip is not None:
            free[skip] = False
        fresh = torch.nonzero(free).flatten()[:count]
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

    def at(self, idx: torch.Tensor) -> Evaluation:
        """The kept values at `idx`."""
        return Evaluation(self.loss[idx], None if self.accuracy is None else self.accuracy[idx])

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
