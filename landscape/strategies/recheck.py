"""The run's strategy, re-checked as the run goes: the probe's timings on two shared cores are noisy,
so the chosen strategy's own chunk timings are compared with another strategy's (the plain loop, or
the probe's runner-up when the loop won), timed again on a few real points now and then, and the
run moves to whichever is faster. Every point is evaluated once, whichever strategy ran it."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass

from landscape.names import CHUNK_SECONDS
from landscape.strategies.base import Strategy

RECHECK_MARGIN = 1.1  # the other strategy is tried when the current one runs this many times slower
# than the other's last timing, and takes over when it runs this many times faster
RECHECK_SECONDS = 0.3  # a check times the other strategy on about this many seconds of points ...
RECHECK_AT = (0.1, 0.35, 0.65)  # ... when the run passes these shares of its points ...
RECHECK_SHARE = 0.015  # ... and the check costs at most this share of the time the run has left
RECENT_CHUNKS = 3  # the current strategy's speed: the median of its last chunks


@dataclass(frozen=True)
class Switch:
    """The run moved from one strategy to another after `points` points, at these seconds per point."""

    points: int
    before: str
    after: str
    before_s: float
    after_s: float

    def text(self) -> str:
        return (
            f"after {self.points} points, {self.before} ({1e3 * self.before_s:.2g} ms/pt) gave way to"
            f" {self.after} ({1e3 * self.after_s:.2g} ms/pt)"
        )


class Recheck:
    """Which strategy runs the next chunk, and how many points: the current one in chunks of about
    `chunk_seconds`, or, when a check is due, the other one on a short chunk.

    `build(name)` makes a strategy the run does not hold yet (its first call, tracing and warming
    caches, is run untimed); `step` is the multiple every chunk's size has (points per call times ranks).
    """

    def __init__(
        self,
        chosen: Strategy,
        other: str | None,
        build: Callable[[str], Strategy],
        timings: dict[str, float],
        total: int,
        ranks: int = 1,
        chunk_seconds: float = CHUNK_SECONDS,
    ) -> None:
        self.held: dict[str, Strategy] = {chosen.name: chosen}
        self.current, self.other = chosen.name, other
        self.build, self.total, self.ranks, self.chunk_seconds = build, total, ranks, chunk_seconds
        self.seconds: dict[str, list[float]] = {n: [t] for n, t in timings.items() if n in (chosen.name, other)}
        self.checks = list(RECHECK_AT)
        self.switches: list[Switch] = []
        self.cold: set[str] = set()  # built for a check, its first call not run yet
        self.due = False  # a check whose strategy was warming up

    def strategy(self, name: str) -> Strategy:
        """The strategy `name`, built on first use."""
        if name not in self.held:
            self.held[name] = self.build(name)
            self.cold.add(name)
        return self.held[name]

    def speed(self, name: str) -> float | None:
        """Seconds per point: the median of the current strategy's last chunks, the other's last check."""
        times = self.seconds.get(name)
        if not times:
            return None
        return statistics.median(times[-RECENT_CHUNKS:]) if name == self.current else times[-1]

    def plan(self, done: int, left: int) -> tuple[str, int]:
        """(strategy, points) for the next chunk, after `done` of the run's points with `left` to go."""
        name = self.other if self.other is not None and self._check_due(done, left) else self.current
        try:
            strat = self.strategy(name)
        except Exception:  # built once by the probe, it fails now (memory): the run goes on without checks
            self.other, self.due, name = None, False, self.current
            strat = self.held[name]
        step = max(1, strat.k) * self.ranks
        if name in self.cold:
            return name, min(left, step)  # the warm-up call: its points are kept, its time is not
        per_point = self.speed(name)
        seconds = self.chunk_seconds if name == self.current else RECHECK_SECONDS
        size = 1 if per_point is None else math.ceil(self.ranks * seconds / max(per_point, 1e-9))
        size = max(1, min(left, 1024 * self.ranks, size))
        return name, min(left, math.ceil(size / step) * step)

    def _check_due(self, done: int, left: int) -> bool:
        if self.due:
            return True
        mine, theirs = self.speed(self.current), self.speed(self.other or "")
        if mine is not None and theirs is not None and mine > RECHECK_MARGIN * theirs:
            return True  # the current strategy runs slower than the other did when last timed
        passed = [share for share in self.checks if done >= share * self.total]
        if not passed:
            return False
        self.checks = self.checks[len(passed) :]
        # a check is worth its cost only on a run long enough: at most RECHECK_SHARE of the time left
        return mine is not None and RECHECK_SECONDS <= RECHECK_SHARE * left * mine / self.ranks

    def timed(self, name: str, points: int, seconds: float, done: int) -> None:
        """`name` ran `points` points (this rank's share) in `seconds`; `done` points of the run are done."""
        if name in self.cold:
            self.cold.discard(name)
            self.due = name != self.current
            return
        self.seconds.setdefault(name, []).append(seconds / max(points, 1))
        if name == self.current:
            return
        self.due = False
        mine, theirs = self.speed(self.current), self.speed(name)
        if mine is not None and theirs is not None and theirs * RECHECK_MARGIN < mine:
            self.switches.append(Switch(done, self.current, name, mine, theirs))
            self.seconds[self.current] = [mine]
            self.current, self.other = name, self.current

    def close(self) -> None:
        for strat in self.held.values():
            strat.close()
