"""Curvature of the dataset-mean loss: Hessian, GGN and empirical-Fisher product operators, Lanczos top-k, Hutch++ trace, SLQ density.

Numerical core only (plain functions on tensors, no I/O); results are frozen dataclasses that carry
their error bars. landscape.io.curvature stores them; landscape.render.spectrum draws them.
"""

from landscape.curvature.analysis import BlockResult, CurvatureRun, CurvatureSettings, run_curvature, top_eigenvectors
from landscape.curvature.density import Density, LanczosRuns, density_from_lanczos, slq
from landscape.curvature.lanczos import Eigenpairs, lanczos
from landscape.curvature.operators import CURVATURES, METHODS, CurvatureOperator, layer_blocks
from landscape.curvature.trace import TraceEstimate, hutchpp

__all__ = [
    "BlockResult",
    "CURVATURES",
    "CurvatureOperator",
    "CurvatureRun",
    "CurvatureSettings",
    "Density",
    "Eigenpairs",
    "LanczosRuns",
    "METHODS",
    "TraceEstimate",
    "density_from_lanczos",
    "hutchpp",
    "lanczos",
    "layer_blocks",
    "run_curvature",
    "slq",
    "top_eigenvectors",
]
