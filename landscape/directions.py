"""Axes of a landscape plot: normalized random directions and the line to another checkpoint.

Random directions follow Li et al. 2018, "Visualizing the Loss Landscape of Neural Nets":
d ~ N(0, I) shaped like every parameter tensor, then rescaled so each filter (slice along
dim 0) of d has the norm of the matching filter of the weights:
d_i <- d_i * ||theta_i|| / (||d_i|| + 1e-10).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

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
    _check(norm, ignore)
    out = direction.clone()
    w_parts = layout.unflatten(theta.to(out.dtype))
    for name, d in layout.unflatten(out).items():
        _normalize_tensor(d, w_parts[name], norm, ignore)
    if norm == "model":
        out.mul_(theta.to(out.dtype).norm() / (out.norm() + EPS))
    return out


def _check(norm: str, ignore: str) -> None:
    if norm not in NORMS:
        raise ArgumentError("norm", norm, f"expected one of {', '.join(NORMS)}")
    if ignore not in IGNORES:
        raise ArgumentError("ignore", ignore, f"expected one of {', '.join(IGNORES)}")


def _normalize_tensor(d: torch.Tensor, w: torch.Tensor, norm: str, ignore: str) -> None:
    """One tensor of a direction rescaled in place to its weights (all but the 'model' norm's final scaling);
    `norm` and `ignore` checked by the caller."""
    shape = d.shape
    if ignore == "biasbn" and len(shape) <= 1:
        d.zero_()
    elif norm == "filter" and len(shape) > 1:
        dn = d.reshape(shape[0], -1).norm(dim=1)
        wn = w.reshape(shape[0], -1).norm(dim=1)
        d.mul_((wn / (dn + EPS)).reshape(-1, *([1] * (len(shape) - 1))))
    elif norm in ("filter", "layer"):
        d.mul_(w.norm() / (d.norm() + EPS))


DRAW = 1 << 20  # Gaussian numbers drawn per call when making a direction tensor by tensor (a multiple of 16)


def normalized_gaussian_into(
    out: torch.Tensor, theta: torch.Tensor, layout: Layout, gen: torch.Generator, norm: str, ignore: str
) -> None:
    """Write `normalize(gaussian(layout, gen), theta, ...)` into `out` [P] (any dtype), drawing and normalizing
    tensor by tensor in float64: the same numbers, without a whole float64 vector (on a 124M-parameter model,
    1 GB) beside the directions. torch's CPU Gaussian fills 16 numbers at a time from uniforms drawn in order,
    so draws of multiples of 16 (the last one at least 16 long) continue one long draw exactly."""
    _check(norm, ignore)
    P = layout.size
    carry = torch.empty(0, dtype=torch.float64)  # drawn beyond the last tensor, the start of the next
    drawn = written = 0
    sumsq = 0.0  # of the normalized float64 values (the 'model' norm scales them all at the end)
    for size, shape in zip(layout.numels, layout.shapes):
        buf = torch.empty(max(size, carry.numel()) + DRAW + 16, dtype=torch.float64)
        have = carry.numel()
        buf[:have] = carry
        while have < size:
            n = P - drawn if P - drawn < DRAW + 16 else DRAW
            torch.randn(n, generator=gen, dtype=torch.float64, out=buf[have : have + n])
            have, drawn = have + n, drawn + n
        carry = buf[size:have].clone()
        d = buf[:size].view(shape)
        w = theta[written : written + size].detach().to("cpu", torch.float64).view(shape)
        _normalize_tensor(d, w, norm, ignore)
        if norm == "model":
            sumsq += float((d * d).sum())
        out[written : written + size].copy_(d.reshape(-1))
        written += size
        del buf, d
    if norm == "model":
        scale = float(theta.detach().to("cpu", torch.float64).norm()) / (sumsq**0.5 + EPS)
        out.mul_(scale)


@dataclass(frozen=True)
class RandomDirections:
    """`count` normalized Gaussian directions, made chunk by chunk (the same numbers as `random_directions`):
    memory for `chunk` of them at a time, not count x P. Each is rounded to `dtype` (what the model sees)
    and handed out in float64."""

    count: int
    theta: torch.Tensor
    layout: Layout
    seed: int
    norm: str = "filter"
    ignore: str = "biasbn"
    chunk: int = 1
    dtype: torch.dtype = torch.float64

    def chunks(self) -> Iterator[torch.Tensor]:
        """The directions in order, [<= chunk, P] float64 at a time."""
        gen = torch.Generator().manual_seed(self.seed)
        for start in range(0, self.count, self.chunk):
            rows = torch.empty(min(self.chunk, self.count - start), self.layout.size, dtype=self.dtype)
            for row in rows:
                normalized_gaussian_into(row, self.theta, self.layout, gen, self.norm, self.ignore)
            yield rows.double()


def random_directions(
    count: int,
    theta: torch.Tensor,
    layout: Layout,
    *,
    seed: int,
    norm: str | Sequence[str] = "filter",
    ignore: str | Sequence[str] = "biasbn",
    dtype: torch.dtype = torch.float64,
    same: bool = False,
) -> torch.Tensor:
    """`count` normalized Gaussian directions [count, P] (made in float64, held in `dtype`), reproducible
    from `seed`. `norm` and `ignore` are one for all or one per direction (the draws do not depend on
    them); with `same` every direction is the first one's draw (Li et al.'s `--same_dir`)."""
    norms, ignores = per_direction(norm, count, "norm"), per_direction(ignore, count, "ignore")
    gen = torch.Generator().manual_seed(seed)
    out = torch.empty(count, layout.size, dtype=dtype)
    for i, row in enumerate(out):
        if same and i:
            gen.manual_seed(seed)
        normalized_gaussian_into(row, theta, layout, gen, norms[i], ignores[i])
    return out


def per_direction(value: str | Sequence[str], count: int, name: str) -> tuple[str, ...]:
    """One setting for each of `count` directions: `value` for all, or its items one by one."""
    if isinstance(value, str):
        return (value,) * count
    if len(value) != count:
        raise ArgumentError(name, tuple(value), f"one for each of the {count} random direction(s) expected")
    return tuple(value)


def line_to(theta: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """Direction of the straight line from `theta` (coordinate 0) to `other` (coordinate 1), on the CPU in their
    dtype (the difference of two float32 numbers rounded to float32 once, as in float64 then rounded)."""
    return other.detach().to("cpu") - theta.detach().to("cpu", other.dtype)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine of the angle between two flat directions (0 when either is zero)."""
    denom = float(a.norm() * b.norm())
    return float(a @ b) / denom if denom > 0 else 0.0
