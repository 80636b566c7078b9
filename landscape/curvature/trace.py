"""Trace of a symmetric operator by Hutch++ with a Krylov sketch, with a standard error.

Hutch++ (Meyer, Musco, Musco & Woodruff, SOSA 2021) computes the trace of the top eigenspace Q
exactly and estimates the rest by Hutchinson on the deflated operator (I - QQ^T) H (I - QQ^T):

    tr(H) = tr(Q^T H Q) + (1/l) sum_i g_i^T (I - QQ^T) H (I - QQ^T) g_i    (l Rademacher probes g_i)

Its original sketch, Q = orth(H S) for a random S, costs two products per column. Here Q is the
Krylov space of j Lanczos steps from a random vector: one product per column, tr(Q^T H Q) is the sum
of the Lanczos alphas (free), and j steps of Lanczos find the outliers of a Hessian far better than
one product with a random block (Chen & Hallman, "Krylov-aware stochastic trace estimation", 2023).
The budget of m products allows at most j = m - l steps, l = m/3 (on the sample models this made the
error at a fixed budget 2-4x smaller than the random sketch: docs/hessian.md); from 30 products on,
the sketch stops sooner when its steps no longer pay for the probes they take (`SketchPays`: a
spectrum without outliers), at the cost of one pilot product. Q does not depend on the probes g_i, so
the estimate stays unbiased; the standard error is that of the Hutchinson mean (sample std / sqrt(l)),
conditional on Q, and 0 when the budget covers the whole space.
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
PROBE_GROUP_BYTES = 1 << 30  # Hutchinson probes and their products (in the basis dtype) held at once ...
PROBE_GROUP_FLOOR = 128 << 20  # ... and no more than 4 P-sized vectors of them (2 probes), or this for a small model
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


MIN_SKETCH = 6  # Lanczos steps the sketch takes before it may stop: a Hessian's outliers show in the first few
PAST_BEST, PAST_MARGIN = 6, 1.15  # it stops when its last steps all expect this much more variance than its best
ADAPTIVE_FROM = 30  # budgets from which the sketch's length is chosen as it runs (below, its pilot product costs
# more than a choice among so few steps saves: at 19 products the MLP's median error went from 1.9 to 2.2%)


class SketchPays:
    """Whether the Krylov sketch should take another step, or leave the rest of the budget to the probes.

    Hutchinson on the deflated rest R = (I - QQ^T) H (I - QQ^T) has a variance of about 2 ||R||_F^2 / l
    with l probes, the products the budget leaves. After each step that expected variance is noted; the
    sketch stops once it has stood PAST_MARGIN above its least for PAST_BEST steps (a step pays while it
    removes more of ||R||_F^2 than one probe fewer costs; looking back over several steps, not one, lets
    an outlier that Lanczos finds a few steps on still be found). ||R||_F^2 is estimated as ||R z||^2 for one
    Gaussian pilot z whose product Hz is made at the first step: with H Q = Q T + b q' e^T (the Lanczos relation;
    q', the next vector), R z = (I - QQ^T) Hz - b (q_j^T z) q', so each step costs two dot products, not
    a product. On a Hessian without outliers (a network at random initialization) every step removes
    little, and Hutch++'s fixed split (2/3 of 60 products on the sketch) gave a larger standard error
    than 60 plain Hutchinson probes would: PyHessian's 13 probes on torchvision's ShuffleNetV2 had 0.81,
    landscape's 60 products 0.58. The pilot is not one of the probes, so Q is independent of them and
    the estimate stays unbiased; it and its product are freed when the sketch ends (the probe groups
    that follow hold at least as much)."""

    def __init__(self, matmat: MatMat, n: int, budget: int, seed: int) -> None:
        self.matmat, self.n, self.seed, self.budget = matmat, n, seed, budget
        self.z: torch.Tensor | None = None  # the pilot and its product: made at the first step, like its vector
        self.hz: torch.Tensor | None = None
        self.hz_norm2 = 0.0
        self.in_basis = 0.0  # ||Q^T Hz||^2
        self.rests: list[float] = []  # the estimate of ||R||_F^2 after each step
        self.variances: list[float] = []  # ... over the probes the budget would leave: the variance to expect

    def _pilot(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z and Hz, in the dtype and on the device of the Lanczos vectors (drawn in float64: the same draws)."""
        if self.z is None or self.hz is None:
            gen = torch.Generator().manual_seed(int(self.seed) + 2)
            self.z = torch.randn(self.n, generator=gen, dtype=torch.float64).to(like.device, like.dtype)
            self.hz = self.matmat(self.z[None])[0].to(like.dtype)
            self.hz_norm2 = dot(self.hz, self.hz)
        return self.z, self.hz

    def __call__(self, q: torch.Tensor, w: torch.Tensor, b: float) -> bool:
        z, hz = self._pilot(q)
        self.in_basis += dot(q, hz) ** 2
        along = dot(q, z)  # q_j^T z
        rest = self.hz_norm2 - self.in_basis + (b * along) ** 2 - 2.0 * along * dot(w, hz)
        self.rests.append(max(rest, 0.0))
        steps = len(self.rests)
        self.variances.append(self.rests[-1] / max(1, self.budget - steps))
        if steps < MIN_SKETCH:
            return False
        return min(self.variances[-PAST_BEST:]) > PAST_MARGIN * min(self.variances)

    def close(self) -> None:
        self.z = self.hz = None


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
    adaptive: bool = True,
) -> TraceEstimate:
    """Hutch++ with a Krylov sketch and a budget of `matvecs` products: at most m - m/3 Lanczos steps (fewer
    when they stop paying, `SketchPays`, with `adaptive` and m >= ADAPTIVE_FROM), the rest probes.

    `start`, a random vector and its product already made (e.g. `CurvatureOperator.probe`), starts
    the Lanczos run and saves a product. With n <= matvecs the trace is exact from n products.
    Memory: the Lanczos basis (`basis`, `basis_device`: see `lanczos`), and the Hutchinson probes with
    their products in groups of at most `group_bytes` and 4 P-sized vectors, or 128 MB for a small model
    (one probe at least), in the basis dtype: +-1 is exact in float32, a float32 basis is no more precise
    than that, and the probes' sums are taken in float64 (at 124M parameters float64 probes, products and
    their elementwise product were 6 P-sized float32 vectors beside the basis). `max_sketch` caps the
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
    pays = adaptive and matvecs >= ADAPTIVE_FROM
    budget = matvecs - 1 if pays else matvecs
    steps = budget - max(2, budget // 3)  # the most: Hutch++'s split of the budget
    if max_sketch is not None and steps > max_sketch:  # a smaller sketch, the budget's rest spent on probes
        steps = max(1, int(max_sketch))
    enough = SketchPays(matmat, n, budget, seed) if pays else None
    # up to `steps` Lanczos steps (tol 0), fewer when further steps no longer pay (`SketchPays`); its basis
    # spans the sketch Q and tr(Q^T H Q) = tr(T), the sum of the alphas
    krylov_run = krylov(
        matmat, n, k=steps, tol=0.0, max_iter=steps, seed=seed, device=device, start=start,
        basis=basis, basis_device=basis_device, into=into, enough=enough,
    )  # fmt: skip
    if enough is not None:
        enough.close()
    probes = budget - len(krylov_run.alphas)
    Q = krylov_run.basis
    exact = float(np.sum(krylov_run.alphas))
    gen = torch.Generator().manual_seed(int(seed) + 1)
    # the probes in groups whose vectors and products fit `group_bytes`: drawn in order from one generator
    dtype = Q.dtype
    vector = torch.finfo(dtype).bits // 8 * n
    group = max(1, min(probes, min(int(group_bytes), max(PROBE_GROUP_FLOOR, 4 * vector)) // (2 * vector)))
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
    spent = krylov_run.matvecs + probes + (1 if enough is not None else 0)
    return TraceEstimate(exact + float(samples.mean()), se, spent, len(krylov_run.alphas), probes, exact)
