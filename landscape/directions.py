"""Axes of a landscape plot: normalized random directions and the line to another checkpoint.

Random directions follow Li et al. 2018, "Visualizing the Loss Landscape of Neural Nets":
d ~ N(0, I) shaped like every parameter tensor, then rescaled so each filter (slice along
dim 0) of d has the norm of the matching filter of the weights:
d_i <- d_i * ||theta_i|| / (||d_i|| + 1e-10).
"""

from __future__ import annotations

import torch

from landscape.errors import ArgumentError
from landscape.names import IGNORES, NORMS
from landscape.params import Layout

EPS = 1e-10


def gaussian(layout: Layout, generator: torch.Generator) -> torch.Tensor:
    """A flat N(0, I) vector, drawn tensor by tensor in float64 on the CPU (same numbers on any device)."""
    return torch.randn(layout.size, generator=generator, dtype=torch.float64)


def normalize(direction: torch.Tensor, theta: torch.Tensor, layout: Layout, norm: str, ignore: str) -> torch.Tensor:
    """Rescale `direction` to the weights `theta` (each tensor once) and zero 1-D tensors if ignore='biasbn'.

    A tensor with one dimension or fewer counts as a single filter under filter normalization.
    """
    if norm not in NORMS:
        raise ArgumentError("norm", norm, f"expected one of {', '.join(NORMS)}")
    if ignore not in IGNORES:
        raise ArgumentError("ignore", ignore, f"expected one of {', '.join(IGNORES)}")
    out = direction.clone()
    d_parts = layout.unflatten(out)
    w_parts = layout.unflatten(theta.to(out.dtype))
    for name, shape in zip(layout.names, layout.shapes):
        d, w = d_parts[name], w_parts[name]
        if ignore == "biasbn" and len(shape) <= 1:
            d.zero_()
        elif norm == "filter" and len(shape) > 1:
            dn = d.reshape(shape[0], -1).norm(dim=1)
            wn = w.reshape(shape[0], -1).norm(dim=1)
            d.mul_((wn / (dn + EPS)).reshape(-1, *([1] * (len(shape) - 1))))
        elif norm in ("filter", "layer"):
            d.mul_(w.norm() / (d.norm() + EPS))
    if norm == "model":
        out.mul_(theta.to(out.dtype).norm() / (out.norm() + EPS))
    return out


def random_directions(
    count: int, theta: torch.Tensor, layout: Layout, *, seed: int, norm: str = "filter", ignore: str = "biasbn"
) -> torch.Tensor:
    """`count` normalized Gaussian directions [count, P] in float64, reproducible from `seed`."""
    gen = torch.Generator().manual_seed(seed)
    theta64 = theta.detach().to("cpu", torch.float64)
    if count == 0:
        return torch.empty(0, layout.size, dtype=torch.float64)
    return torch.stack([normalize(gaussian(layout, gen), theta64, layout, norm, ignore) for _ in range(count)])


def line_to(theta: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """Direction of the straight line from `theta` (coordinate 0) to `other` (coordinate 1)."""
    return other.detach().to("cpu", torch.float64) - theta.detach().to("cpu", torch.float64)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine of the angle between two flat directions (0 when either is zero)."""
    denom = float(a.norm() * b.norm())
    return float(a @ b) / denom if denom > 0 else 0.0
