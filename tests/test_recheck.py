"""The run re-checks the probe's pick: a strategy that turns out slower than the plain loop gives way
to it during the run, every point keeps its true value, and a strategy the user named is kept."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from conftest import sample_problem
from test_sweep import direct_loss

import landscape.strategies.run as run_module
from landscape.directions import random_directions
from landscape.strategies import MemorySink, run_sweep
from landscape.strategies.probe import Choice
from landscape.strategies.recheck import Recheck
from landscape.strategies.registry import build_strategy

SLOW_S_PER_POINT = 0.005  # the slowed strategy's cost, far above the plain loop's on this sample


def _slowed_pick(monkeypatch, claimed_s_per_point: float) -> None:
    """The probe picks vmap, which its timing said was fast, but which then runs slower than the loop
    (as on a machine that got busy just after the probe)."""

    def choose(problem, directions, coords, **kw):
        strat = build_strategy("vmap", problem, directions, points_per_call=4, batch_size=problem.batch_size)
        real = strat.evaluate

        def slowed(c, whole_calls=False):
            time.sleep(SLOW_S_PER_POINT * c.shape[0])
            return real(c, whole_calls)

        strat.evaluate = slowed  # type: ignore[method-assign]
        return Choice(strat, {"vmap": claimed_s_per_point, "loop": 2 * claimed_s_per_point})

    monkeypatch.setattr(run_module, "choose_strategy", choose)


def test_a_pick_that_falls_behind_the_loop_gives_way_to_it(monkeypatch):
    problem = sample_problem("mlp", samples=200)
    dirs = random_directions(2, problem.theta, problem.layout, seed=0)
    _slowed_pick(monkeypatch, claimed_s_per_point=SLOW_S_PER_POINT / 5)
    axes = [np.linspace(-1, 1, 30), np.linspace(-1, 1, 20)]
    sink = MemorySink(axes, problem.classification)
    report = run_sweep(problem, dirs, sink, chunk_seconds=0.1)
    assert report.strategy == "loop", report
    assert len(report.switches) == 1 and "vmap" in report.switches[0] and "gave way to loop" in report.switches[0]
    assert sink.attrs["strategy"] == "loop"  # a resumed run goes on with the loop
    assert sink.attrs["strategy_switches"] == report.switches
    assert sink.done.all()
    loss = sink.loss.reshape(-1)
    for i in (0, 7, 100, 333, 599):  # points run by either strategy, and the check's
        c = torch.tensor([axes[0][i // 20], axes[1][i % 20]], dtype=dirs.dtype)
        assert loss[i] == pytest.approx(direct_loss(problem, problem.theta + c @ dirs)[0], rel=1e-9)


def test_a_strategy_the_user_named_is_not_replaced(monkeypatch):
    problem = sample_problem("mlp", samples=200)
    dirs = random_directions(2, problem.theta, problem.layout, seed=0)
    _slowed_pick(monkeypatch, claimed_s_per_point=SLOW_S_PER_POINT / 5)
    sink = MemorySink([np.linspace(-1, 1, 10), np.linspace(-1, 1, 8)], problem.classification)
    report = run_sweep(problem, dirs, sink, strategy="vmap", chunk_seconds=0.1)
    assert report.strategy == "vmap" and report.switches == []
    assert sink.done.all()


class _Named:
    def __init__(self, name: str, k: int = 1) -> None:
        self.name, self.k, self.batch_size, self.closed = name, k, 32, False

    def close(self) -> None:
        self.closed = True


def test_recheck_schedule_on_a_run_that_keeps_its_pace():
    """A current strategy that stays faster than the other is checked only at the scheduled shares
    of a long run, each check on about RECHECK_SECONDS of points, and never switched."""
    built: list[str] = []

    def build(name):
        built.append(name)
        return _Named(name)

    total = 100_000
    rc = Recheck(_Named("vmap", k=4), "loop", build, {"vmap": 1e-3, "loop": 4e-3}, total)  # type: ignore[arg-type]
    done, checks = 0, 0
    while done < total:
        name, size = rc.plan(done, total - done)
        assert size % 4 == 0 or size == total - done or name == "loop"
        checks += name == "loop"
        rc.timed(name, size, size * (1e-3 if name == "vmap" else 4e-3), done + size)
        done += size
    assert built == ["loop"]
    assert checks == 1 + 3  # the loop's untimed first call, then one check at each share
    assert rc.current == "vmap" and rc.switches == []


def test_recheck_skips_checks_on_a_short_run():
    """On a run whose time left is short, a check would cost more than its share: none is made."""
    rc = Recheck(_Named("vmap"), "loop", lambda n: _Named(n), {"vmap": 1e-3, "loop": 4e-3}, 400)  # type: ignore[arg-type]
    done = 0
    while done < 400:
        name, size = rc.plan(done, 400 - done)
        assert name == "vmap"
        rc.timed(name, size, size * 1e-3, done + size)
        done += size


def test_the_probes_last_points_are_stored_piece_by_piece(monkeypatch):
    """The probe points no candidate reached are filled by the winner in pieces of about CHUNK_SECONDS,
    each handed over as it ends (a kill lost up to 100 points of a slow model: GPT-2 small, a minute)."""
    import landscape.strategies.probe as probe_module
    from landscape.strategies.grid import grid_coords
    from landscape.strategies.probe import choose_strategy

    problem = sample_problem("mlp", samples=200)
    dirs = random_directions(2, problem.theta, problem.layout, seed=0)
    coords = grid_coords(
        [torch.linspace(-1, 1, 12, dtype=torch.float64), torch.linspace(-1, 1, 10, dtype=torch.float64)]
    )

    def probe(chunk: float):
        monkeypatch.setattr(probe_module, "CHUNK_SECONDS", chunk)
        seen: list[int] = []
        choice = choose_strategy(problem, dirs, coords, candidates=("loop", "vmap"), total_points=100_000, budget=1,
                                 on_values=lambda i, v: seen.append(len(i)))  # fmt: skip
        return seen, choice

    small, choice = probe(1e-9)
    big, _ = probe(1e3)
    assert sum(small) == sum(big) == 120
    assert small[-1] <= choice.strategy.k and big[-1] > choice.strategy.k  # the fill: in calls, or at once
    assert len(small) > len(big)
    loss = choice.probe_result.loss
    for i in (0, 57, 119):
        assert loss[i] == pytest.approx(
            direct_loss(problem, problem.theta + coords[i].to(dirs.dtype) @ dirs)[0], rel=1e-9
        )
