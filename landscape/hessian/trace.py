"""Trace of a symmetric operator by Hutch++ (Meyer, Musco, Musco & Woodruff, SOSA 2021), with a standard error.

Hutch++ splits the budget of m products into three: S (n x m/3, Rademacher) sketches the range,
Q = orth(H S) captures the top eigenspace, whose trace tr(Q^T H Q) is computed exactly, and the rest
is estimated by Hutchinson on the deflated operator (I - QQ^T) H (I - QQ^T) with l Rademacher probes G:

    tr(H) ~= tr(Q^T H Q) + (1/l) sum_i g_i^T (I - QQ^T) H (I - QQ^T) g_i

A Hessian is a few outliers plus a bulk, so the deflated part has a small Frobenius norm and the
error falls like 1/m instead of Hutchinson's 1/sqrt(m). The standard error is that of the Hutchinson
mean (sample std / sqrt(l)), conditional on Q; it is 0 when the sketch spans the whole space.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

MatMat = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class TraceEstimate:
    """tr(H) with its standard error and the products spent (sketch + low-rank + probes)."""

    value: float
    std_error: float
    matvecs: int
    sketch: int
    probes: int
    exact_part: float  # tr(Q^T H Q), the part computed exactly


def rademacher(rows: int, n: int, gen: torch.Generator, device: torch.device | str = "cpu") -> torch.Tensor:
    """Rows of independent +-1 entries (float64)."""
    return (torch.randint(0, 2, (rows, n), generator=gen, dtype=torch.int8).to(torch.float64) * 2 - 1).to(device)


def hutchpp(matmat: MatMat, n: int, *, matvecs: int = 60, seed: int = 0, device: torch.device | str = "cpu") -> TraceEstimate:
    """Hutch++ (Meyer et al. 2021) with a budget of `matvecs` products: sketch s = m/3, probes l = m - 2s.

    Example:
        >>> A = torch.diag(torch.arange(1.0, 201.0, dtype=torch.float64))
        >>> est = hutchpp(lambda V: V @ A, 200, matvecs=30)
        >>> abs(est.value - 20100.0) < 4 * est.std_error + 1e-6
        True
    """
    gen = torch.Generator().manual_seed(int(seed))
    matvecs = max(3, int(matvecs))
    s = min(n, matvecs // 3)
    used = 0
    if n <= matvecs:  # the budget covers a basis: the trace is exact from n products
        E = torch.eye(n, dtype=torch.float64, device=device)
        value = float(torch.diagonal(matmat(E).to(torch.float64)).sum())
        return TraceEstimate(value, 0.0, n, n, 0, value)
    S = rademacher(s, n, gen, device)
    Y = matmat(S).to(torch.float64)
    used += s
    Q, _ = torch.linalg.qr(Y.T)  # [n, s]
    HQ = matmat(Q.T.contiguous()).to(torch.float64)  # [s, n]
    used += s
    exact = float((Q.T * HQ).sum())
    probes = max(2, matvecs - 2 * s)
    G = rademacher(probes, n, gen, device)
    G = G - (G @ Q) @ Q.T
    HG = matmat(G).to(torch.float64)
    used += probes
    HG = HG - (HG @ Q) @ Q.T
    samples = (G * HG).sum(dim=1)
    mean = float(samples.mean())
    se = float(samples.std(unbiased=True)) / math.sqrt(probes)
    return TraceEstimate(exact + mean, se, used, s, probes, exact)
