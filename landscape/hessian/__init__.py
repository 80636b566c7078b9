"""Curvature of the dataset-mean loss: Hessian, GGN and empirical-Fisher product operators, Lanczos top-k, Hutch++ trace, SLQ density.

Numerical core only (plain functions on tensors, no I/O); results are frozen dataclasses that carry
their error bars. landscape.io.curvature stores them; landscape.render.spectrum draws them.
"""

from landscape.hessian.analysis import BlockResult, CurvatureResult, CurvatureSettings, hessian_axes, run_curvature
from landscape.hessian.density import Density, LanczosRuns, density_from_lanczos, slq
from landscape.hessian.lanczos import Eigenpairs, lanczos
from landscape.hessian.operators import CURVATURES, METHODS, CurvatureOperator, layer_blocks
from landscape.hessian.trace import TraceEstimate, hutchpp

__all__ = [
    "BlockResult", "CURVATURES", "CurvatureOperator", "CurvatureResult", "CurvatureSettings", "Density",
    "Eigenpairs", "LanczosRuns", "METHODS", "TraceEstimate", "density_from_lanczos", "hessian_axes", "hutchpp",
    "lanczos", "layer_blocks", "run_curvature", "slq",
]


def axes_from_curvature(path, problem, count: int = 2):
    """See landscape.hessian.axes.axes_from_curvature (imported lazily: it reads a results file)."""
    from landscape.hessian.axes import axes_from_curvature as impl

    return impl(path, problem, count)
