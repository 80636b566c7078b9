"""Grid points of a sweep: evenly spaced coordinates per axis, and every point of their product."""

from __future__ import annotations

import math

import torch

from landscape.errors import ArgumentError


def axis_grid(lo: float, hi: float, points: int, name: str = "x") -> torch.Tensor:
    """`points` evenly spaced values from `lo` to `hi` (inclusive), float64, as in Li et al.'s tool;
    exactly 0 at the middle of a symmetric range."""
    if not (isinstance(points, int) and points >= 1) or not (math.isfinite(lo) and math.isfinite(hi)):
        raise ArgumentError(name, (lo, hi, points), "need finite bounds and at least one point")
    if points == 1:
        return torch.tensor([float(lo)], dtype=torch.float64)
    t = torch.arange(points, dtype=torch.float64) / (points - 1)
    return lo * (1 - t) + hi * t


def grid_coords(axes: list[torch.Tensor]) -> torch.Tensor:
    """All grid points in row-major order (the last axis fastest): [prod(n_k), k] float64."""
    mesh = torch.meshgrid(*[a.double() for a in axes], indexing="ij")
    return torch.stack([m.reshape(-1) for m in mesh], dim=1)
