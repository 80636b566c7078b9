"""Hessian-eigenvector axes for sweeps: freshly computed, or read from a `landscape hessian` file.

The Loss Landscape Analysis paper shows that top-eigenvector axes avoid the batch-norm artefacts of
random filter-normalized ones; the plot along them shows the sharpest curvature directly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from landscape.errors import LandscapeError
from landscape.hessian.analysis import axis_attrs, hessian_axes
from landscape.problem import Problem

__all__ = ["axes_from_curvature", "hessian_axes"]


def axes_from_curvature(path: str | Path, problem: Problem, count: int = 2) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """The top-`count` stored eigenvectors of a curvature file as axes: [count, P] float64 CPU, attrs per axis.

    The file must hold eigenvectors for this model's parameter layout (same names and shapes).
    """
    from landscape.io.curvature import read_curvature

    curv = read_curvature(path)
    vecs = curv.get("eigenvectors")
    if vecs is None:
        raise LandscapeError(f"--axes-from {path}: holds no eigenvectors (run `landscape hessian` without --no-eigenvectors)")
    layout = curv.get("layout")
    if layout is not None and (layout.names != problem.layout.names or layout.shapes != problem.layout.shapes):
        raise LandscapeError(f"--axes-from {path}: its eigenvectors belong to another model (parameter names or shapes differ)")
    if vecs.shape[0] < count:
        raise LandscapeError(f"--axes-from {path}: holds {vecs.shape[0]} eigenvector(s), {count} needed (run with --top-k {count})")
    which = str(curv.get("eigen_attrs", {}).get("which", "largest"))
    dirs = torch.from_numpy(np.asarray(vecs[:count], dtype=np.float64)).clone()
    dirs = dirs / dirs.norm(dim=1, keepdim=True)
    attrs = axis_attrs(curv["eigenvalues"][:count], curv["residuals"][:count], int(curv["attrs"].get("seed", 0) or 0),
                       source=str(path), curvature=curv.get("curvature", "hessian"))
    for a in attrs:
        a["which"] = which
    return dirs, attrs
