"""The sweep strategies by name (the probe tries the loop first, then the others in `probe.PROMISE`'s order).

A new strategy is one new module (a `Strategy` subclass with a `name` and a `build` that raises
`NotApplicable` where it has nothing to offer) and one line here.
"""

from __future__ import annotations

from typing import Any

import torch

from landscape.problem import Problem
from landscape.strategies.base import BuildContext, NotApplicable, Strategy
from landscape.strategies.compiled import CompiledStrategy
from landscape.strategies.firstlayer import FirstLayerStrategy, FirstLayerVmapStrategy
from landscape.strategies.fusedgraph import FirstLayerFusedStrategy, FusedStrategy
from landscape.strategies.loop import LoopStrategy
from landscape.strategies.mlpchain import MlpStrategy
from landscape.strategies.vmap import VmapStrategy

REGISTRY: dict[str, type[Strategy]] = {
    cls.name: cls
    for cls in (
        LoopStrategy,
        VmapStrategy,
        FirstLayerStrategy,
        FirstLayerVmapStrategy,
        FusedStrategy,
        FirstLayerFusedStrategy,
        MlpStrategy,
        CompiledStrategy,
    )
}
STRATEGIES: tuple[str, ...] = tuple(REGISTRY)  # as landscape.names.STRATEGIES (a test checks)


def build_strategy(
    name: str,
    problem: Problem,
    directions: torch.Tensor,
    *,
    points_per_call: int = 16,
    memory_budget: int = 1 << 30,
    batch_size: int | None = None,
    layouts: str = "",
    timed_layouts: dict[Any, str] | None = None,
    checked: bool = False,
) -> Strategy:
    """Construct strategy `name`; raises NotApplicable (a ValueError) when it cannot run this model."""
    if name not in REGISTRY:
        raise ValueError(f"unknown strategy {name!r}; expected one of {', '.join(STRATEGIES)}")
    why = REGISTRY[name].rules_out(problem)  # what the modules tell, before any build
    if why is not None:
        raise NotApplicable(why)
    ctx = BuildContext(
        points_per_call, memory_budget, batch_size, layouts, {} if timed_layouts is None else timed_layouts, checked
    )
    return REGISTRY[name].build(problem, directions, ctx)
