"""Batched evaluation of the dataset-mean loss (and accuracy) at many points theta + c @ D.

One module per strategy family (`loop`, `vmap`, `firstlayer`, `fusedgraph`, `mlpchain`), each
strategy declaring when it applies (`build` raises `NotApplicable`); `registry` names them,
`probe` times them on the first grid points and keeps the fastest, `run` evaluates a grid into
a sink chunk by chunk. Nothing here does I/O.
"""

from landscape.strategies.base import (
    BuildContext,
    Evaluation,
    NotApplicable,
    Strategy,
    evaluate_shrinking,
    memory_budget,
    points_per_call,
)
from landscape.strategies.firstlayer import FirstLayerStrategy, FirstLayerVmapStrategy, find_first_layer
from landscape.strategies.fusedgraph import FirstLayerFusedStrategy, FusedStrategy
from landscape.strategies.grid import axis_grid, check_grid_fits, grid_coords
from landscape.strategies.loop import LoopStrategy
from landscape.strategies.mlpchain import MlpStrategy
from landscape.strategies.probe import LOOP_MARGIN, PROBE_POINTS, Choice, choose_strategy, fastest_or_loop
from landscape.strategies.registry import REGISTRY, STRATEGIES, build_strategy
from landscape.strategies.run import (
    MemorySink,
    Pick,
    SweepReport,
    SweepSink,
    evaluate_points,
    pick_to_resume,
    run_sweep,
)
from landscape.strategies.vmap import VmapStrategy

__all__ = [
    "LOOP_MARGIN",
    "PROBE_POINTS",
    "REGISTRY",
    "STRATEGIES",
    "BuildContext",
    "Choice",
    "Evaluation",
    "FirstLayerFusedStrategy",
    "FirstLayerStrategy",
    "FirstLayerVmapStrategy",
    "FusedStrategy",
    "LoopStrategy",
    "MemorySink",
    "MlpStrategy",
    "NotApplicable",
    "Pick",
    "Strategy",
    "SweepReport",
    "SweepSink",
    "VmapStrategy",
    "axis_grid",
    "check_grid_fits",
    "build_strategy",
    "choose_strategy",
    "evaluate_points",
    "evaluate_shrinking",
    "fastest_or_loop",
    "find_first_layer",
    "grid_coords",
    "memory_budget",
    "pick_to_resume",
    "points_per_call",
    "run_sweep",
]
