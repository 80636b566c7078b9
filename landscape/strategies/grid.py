"""Grid points of a sweep: evenly spaced coordinates per axis, and every point of their product."""

from __future__ import annotations

import math
import os

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


BYTES_PER_POINT = 120  # what a sweep holds per grid point: loss, accuracy and done (the result's and the file's),
# the grid's coordinates, the copies a chunk's write makes, the settings' JSON of the coordinates


def check_grid_fits(shape: tuple[int, ...], memory: int | None = None) -> None:
    """Refuse a grid whose results could not be held in memory (half of this machine's), before any work."""
    if not all(isinstance(n, int) and n >= 1 for n in shape):
        return  # axis_grid says what is wrong with it
    memory = physical_memory() if memory is None else memory
    points = math.prod(shape)
    need = points * BYTES_PER_POINT
    if memory and need > memory // 2:
        names = ("x", "y")[: len(shape)]
        raise ArgumentError(
            names[-1],
            None,
            f"a grid of {' x '.join(f'{n:,}' for n in shape)}{f' = {points:,}' if len(shape) > 1 else ''} points needs about {need / 2**30:,.1f} GiB "
            f"of memory for its results, and this machine has {memory / 2**30:,.1f} GiB; use fewer points",
        )


def physical_memory() -> int | None:
    """This machine's memory in bytes (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None
