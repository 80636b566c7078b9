"""Trace of a symmetric operator by Hutch++ with a Krylov sketch, with a standard error.

Hutch++ (Meyer, Musco, Musco & Woodruff, SOSA 2021) computes the trace of the top eigenspace Q
exactly and estimates the rest by Hutchinson on the deflated operator (I - QQ^T) H (I - QQ^T):

    tr(H) = tr(Q^T H Q) + (1/l) sum_i g_i^T (I - QQ^T) H (I - QQ^T) g_i    (l Rademacher probes g_i)

Its original sketch, Q = orth(H S) for a random S, costs two products per column. Here Q is the
Krylov space of j Lanczos steps from a random vector: one product per column, tr(Q^T H Q) is the sum
of the Lanczos alphas (free), and j steps of Lanczos find the outliers of a Hessian far better than
one product with a random block (Chen & Hallman, "Krylov-aware stochastic trace estimation", 2023).
The budget of m products is split j = m - l, l = m/3. On the sample models this made the error at a
fixed budget 2-4x smaller than the random sketch (docs/hessian.md). Q does not depend on the probes
g_i, so the estimate stays unbiased; the standard error is that of the Hutchinson mean (sample std /
sqrt(l)), conditional on Q, and 0 when the budget covers the whole space.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from landscape.curvature.lanczos import Start, dot, krylov
from landscape.names import EXACT_TRACE as EXACT

MatMat = Callable[[torch.Tensor], torch.Tensor]
PROBE_GROUP_BYTES = 1 << 30  # Hutchinson probes and their products (in the basis dtype) held at once
HUTCHPP = "Hutch++ (Meyer et al. 2021) with a Krylov sketch (Chen & Hallman 2023)"


@dataclass(frozen=True)
class TraceEstimate:
    """tr(H) with its standard error and the products spent (Krylov sketch + probes)."""

    value: float
    std_error: float
    matvecs: int
    sketch: int  # Lanczos steps spanning Q
    probes: int  # Hutchinson probes on the deflated rest
    exact_part: float  # tr(Q^T H Q), the part computed exactly
    method: str = HUTCHPP


def rademacher(
    rows: int, n: int, gen: torch.Generator, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """Rows of independent +-1 entries (the same draws in any dtype; made in place: one tensor of the
    result's size, not the three temporaries of (x * 2 - 1))."""
    return torch.randint(0, 2, (rows, n), generator=gen, dtype=torch.int8).to(device, dtype).mul_(2).sub_(1)


def hutchpp(
    matmat: MatMat,
    n: int,
    *,
    matvecs: int = 60,
    seed: int = 0,
    device: torch.device | str = "cpu",
    start: Start = None,
    basis: str = "auto",
    basis_device: torch.device | str | None = None,
    group_bytes: int = PROBE_GROUP_BYTES,
    max_sketch: int | None = None,
    into: bool = False,
) -> TraceEstimate:
    """Hutch++ with a Krylov sketch and a budget of `matvecs` products: l = m/3 probes, m - l Lanczos steps.

    `start`, a random vector and its product already made (e.g. `CurvatureOperator.probe`), starts
    the Lanczos run and saves a product. With n <= matvecs the trace is exact from n products.
    Memory: the Lanczos basis (`basis`, `basis_device`: see `lanczos`), and the Hutchinson probes with
    their products in groups of at most `group_bytes` (one probe at least), in the basis dtype: +-1 is
    exact in float32, a float32 basis is no more precise than that, and the probes' sums are taken in
    float64 (at 124M parameters float64 probes, products and their elementwise product were 6 P-sized
    float32 vectors beside the basis). `max_sketch` caps the
    sketch's steps (the rows its basis may hold); the products it leaves go to more probes. `into`: matmat
    takes `out=` (see `lanczos`).

    Example:
        >>> A = torch.diag(torch.arange(1.0, 201.0, dtype=torch.float64))
        >>> est = hutchpp(lambda V: V @ A, 200, matvecs=30)
        >>> abs(est.value - 20100.0) < 4 * est.std_error + 1e-6
        True
    """
    matvecs = max(3, int(matvecs))
    if n <= matvecs:  # the budget covers a basis: the trace is exact from n products
        E = torch.eye(n, dtype=torch.float64, device=device)
        value = float(torch.diagonal(matmat(E).to(torch.float64)).sum())
        return TraceEstimate(value, 0.0, n, n, 0, value, EXACT)
    probes = max(2, matvecs // 3)
    steps = matvecs - probes
    if max_sketch is not None and steps > max_sketch:  # a smaller sketch, the budget's rest spent on probes
        steps = max(1, int(max_sketch))
        probes = matvecs - steps
    # exactly `steps` Lanczos steps (tol 0), unless the Krylov space turns out invariant; its basis spans
    # the sketch Q and tr(Q^T H Q) = tr(T), the sum of the alphas
    krylov_run = krylov(
        matmat, n, k=steps, tol=0.0, max_iter=steps, seed=seed, device=device, start=start,
        basis=basis, basis_device=basis_device, into=into,
    )  # fmt: skip
    Q = krylov_run.basis
    exact = float(np.sum(krylov_run.alphas))
    gen = torch.Generator().manual_seed(int(seed) + 1)
    # the probes in groups whose vectors and products fit `group_bytes`: drawn in order from one generator
    dtype = Q.dtype
    group = max(1, min(probes, int(group_bytes) // (2 * torch.finfo(dtype).bits // 8 * n)))
    parts: list[float] = []
    for first in range(0, probes, group):
        G = rademacher(min(group, probes - first), n, gen, device, dtype)
        Q.project_out_rows(G)
        HG = matmat(G).to(dtype)
        Q.project_out_rows(HG)
        parts.extend(dot(g, hg) for g, hg in zip(G, HG))
        del G, HG
    samples = torch.tensor(parts, dtype=torch.float64)
    se = float(samples.std(unbiased=True)) / math.sqrt(probes)
    return TraceEstimate(
        exact + float(samples.mean()), se, krylov_run.matvecs + probes, len(krylov_run.alphas), probes, exact
    )
