"""landscape: loss surfaces, curvature and roughness of PyTorch models, from Python or the command line.

>>> import torch, landscape as ls
>>> problem = ls.Problem(torch.nn.Linear(4, 3), (torch.randn(64, 4), torch.randint(0, 3, (64,))))
>>> surf = ls.sweep(problem, ls.random_axes(problem, 1, seed=0), x=(-1, 1, 11))
>>> surf.loss.shape
(11,)

See docs/api.md for every function, with an example each.
"""

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "landscape.api": (
        "align", "axes_from", "fit_curve", "hessian", "on_data_sets", "path", "plan_plane", "plan_sweep", "plan_trajectory", "plane", "roughness",
        "run_planned", "sharpness", "sweep", "track", "trajectory",
    ),
    "landscape.axes": ("Axes", "hessian_axes", "random_axes", "stored_axes"),
    "landscape.data": ("Columns",),
    "landscape.errors": ("ArgumentError", "LandscapeError"),
    "landscape.problem": ("Problem",),
    "landscape.progress": ("show_messages",),
    "landscape.results": (
        "Alignment", "AnalysisResult", "CurvatureResult", "PathResult", "RoughnessResult", "SharpnessResult", "SweepResult",
        "TrackResult", "load",
    ),
}  # fmt: skip
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

if TYPE_CHECKING:
    from landscape.api import (
        align,
        axes_from,
        fit_curve,
        hessian,
        on_data_sets,
        path,
        plan_plane,
        plan_sweep,
        plan_trajectory,
        plane,
        roughness,
        run_planned,
        sharpness,
        sweep,
        track,
        trajectory,
    )  # fmt: skip
    from landscape.axes import Axes, hessian_axes, random_axes, stored_axes
    from landscape.data import Columns
    from landscape.errors import ArgumentError, LandscapeError
    from landscape.problem import Problem
    from landscape.progress import show_messages
    from landscape.results import (
        Alignment,
        AnalysisResult,
        CurvatureResult,
        PathResult,
        RoughnessResult,
        SharpnessResult,
        SweepResult,
        TrackResult,
        load,
    )  # fmt: skip


def __getattr__(name: str) -> Any:
    """The API on first use, so `landscape --help` (which imports this package) loads no torch."""
    if name not in _WHERE:
        raise AttributeError(f"module 'landscape' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


__all__ = [
    "__version__",
    "Alignment",
    "AnalysisResult",
    "ArgumentError",
    "Axes",
    "Columns",
    "CurvatureResult",
    "LandscapeError",
    "PathResult",
    "Problem",
    "RoughnessResult",
    "SharpnessResult",
    "SweepResult",
    "TrackResult",
    "align",
    "axes_from",
    "fit_curve",
    "hessian",
    "hessian_axes",
    "load",
    "on_data_sets",
    "path",
    "plan_plane",
    "plan_sweep",
    "plan_trajectory",
    "plane",
    "random_axes",
    "roughness",
    "run_planned",
    "sharpness",
    "show_messages",
    "stored_axes",
    "sweep",
    "track",
    "trajectory",
]
