"""Spectral density by stochastic Lanczos quadrature (Ghorbani, Krishnan & Xiao, ICML 2019; Lin, Saad & Yang 2016).

For each of n_v Rademacher probes v (normalized), m Lanczos steps with full re-orthogonalization give a
symmetric tridiagonal T. With T = Y diag(theta) Y^T, the Gauss quadrature nodes are theta_j and the
weights tau_j = Y[0, j]^2, so v^T f(H) v ~= sum_j tau_j f(theta_j). The smoothed density is

    phi(t) = (1/n_v) sum_v sum_j tau_j^(v) N(t; theta_j^(v), sigma^2)

an estimate of (1/n) sum_i N(t; lambda_i, sigma^2). The per-probe (alpha, beta) are kept so the
density can be redrawn with another sigma or grid by `density_from_lanczos`, without any product.
Probes run in lockstep, so every step multiplies n_v vectors in one call; when their bases
([n_v, m, n]) would pass `basis_bytes`, in consecutive groups that fit (the same numbers); when not
even one probe's basis fits, one after another without re-orthogonalization (see `slq`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from landscape.curvature.basis import KrylovBasis, basis_dtype, row_bytes
from landscape.curvature.lanczos import LANCZOS_FLOAT64_BYTES, REORTH_KEEP, blas_threads, tridiagonal_eigh
from landscape.curvature.trace import rademacher

MatMat = Callable[[torch.Tensor], torch.Tensor]
RANK_TOL = 1e-3  # an eigenvalue with |lambda| <= RANK_TOL * max |lambda| counts as zero in the numerical rank
RESOLVED_TOL = 1e-6  # a Ritz value whose error bound is under this x max |lambda| is a resolved eigenvalue
OUTLIER_GAP = 1.5  # outliers end at the largest ratio between neighbouring resolved eigenvalues, if at least this
SLQ_BASIS_BYTES = 2 << 30  # default bytes of the probes' bases held at once; more probes run in groups


@dataclass(frozen=True)
class LanczosRuns:
    """Per-probe tridiagonals: alpha [n_v, m], beta [n_v, m - 1]; NaN after a probe's early breakdown."""

    alpha: np.ndarray
    beta: np.ndarray
    matvecs: int
    seed: int
    reorthogonalized: bool = True  # False: the three-term recurrence alone (a basis too large to keep; see `slq`)


@dataclass(frozen=True)
class SpectrumCounts:
    """Eigenvalue counts read from the quadrature: P times the spectral mass of a region, the mean over
    probes with its standard error (each probe's count is an unbiased estimate: E[(u.v)^2] = 1/P)."""

    size: int
    rank: float  # eigenvalues with |lambda| > rank_threshold
    rank_std_error: float
    rank_threshold: float
    outliers: float  # eigenvalues above each probe's bulk edge, by their weight (degenerate outliers counted too)
    outliers_std_error: float
    outliers_ritz: int  # resolved Ritz values above the bulk's edge, the median over probes
    bulk_edge: float  # the top of the bulk, the median over probes (NaN: the whole spectrum resolved)

    def as_attrs(self) -> dict[str, float | int]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "size"}


def _mean_and_error(values: np.ndarray) -> tuple[float, float]:
    n = values.size
    return float(values.mean()), float(values.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan


def resolved_outliers(alpha: np.ndarray, beta: np.ndarray, scale: float) -> tuple[int, float, float]:
    """One probe's outliers, the bulk's edge as it sees them, and the probe's spectral mass above the edge. The Ritz values Lanczos has resolved as
    single eigenvalues (error bound beta_k |y_k[-1]| at most RESOLVED_TOL * scale, from its first
    k = m - 1 steps, whose next beta is stored) above the largest one it has not, with that one, sorted
    down: the edge is the lower side of the largest ratio between neighbours when that is at least
    OUTLIER_GAP (a gap in the spectrum), and the values above it are the outliers; else there are none.
    The mass is that quadrature's too: the m-step one has a bulk node above the (m-1)-step edge (interlacing)."""
    m = int(np.sum(np.isfinite(alpha)))
    if m < 3:
        return 0, math.nan, math.nan
    theta, Y = tridiagonal_eigh(alpha[: m - 1], beta[: m - 2])
    assert Y is not None
    bound = np.abs(beta[m - 2] * Y[-1])
    unresolved = theta[bound > RESOLVED_TOL * scale]
    if unresolved.size == 0:  # every Ritz value resolved: the whole spectrum is seen, no bulk to stand out of
        return 0, math.nan, math.nan
    top = np.sort(theta[theta >= unresolved.max()])[::-1]
    top = top[top > 0]
    ratios = top[:-1] / top[1:] if top.size >= 2 else np.zeros(0)
    j = int(np.argmax(ratios)) if ratios.size else 0
    if not ratios.size or ratios[j] < OUTLIER_GAP:
        return 0, float(top[0]) if top.size else float(unresolved.max()), 0.0
    edge = float(top[j + 1])
    weights = Y[0] ** 2
    return j + 1, edge, float(weights[theta > edge].sum() / weights.sum())


def spectrum_counts(
    alpha: np.ndarray,
    beta: np.ndarray,
    nodes: list[np.ndarray],
    weights: list[np.ndarray],
    size: int,
    rank_tol: float = RANK_TOL,
) -> SpectrumCounts:
    """The numerical rank and the outliers beyond the bulk (Sagun et al. 2017) of a P = `size` operator, from
    SLQ's tridiagonals and their quadrature. The rank counts the spectral mass with |lambda| above
    `rank_tol` * max |lambda|. Outliers are the top eigenvalues above the largest gap among those each
    probe's Lanczos run resolves on its own (`resolved_outliers`); the count by weight (P x their
    spectral mass) also counts repeated ones."""
    scale = max(float(np.abs(t).max()) for t in nodes)
    threshold = rank_tol * scale
    rank = np.array([size * float(w[np.abs(t) > threshold].sum()) for t, w in zip(nodes, weights)])
    alpha, beta = np.atleast_2d(alpha), np.atleast_2d(beta)
    with blas_threads(1):
        seen = [resolved_outliers(a, b, scale) for a, b in zip(alpha, beta)]
    edges = np.array([e for _, e, _ in seen])
    by_weight = np.array([size * mass for _, _, mass in seen if np.isfinite(mass)])
    (r, r_se) = _mean_and_error(rank)
    o, o_se = _mean_and_error(by_weight) if by_weight.size else (math.nan, math.nan)
    ritz = int(np.median([n for n, _, _ in seen])) if seen else 0
    edge = float(np.nanmedian(edges)) if np.isfinite(edges).any() else math.nan
    return SpectrumCounts(size, r, r_se, threshold, o, o_se, ritz, edge)


@dataclass(frozen=True)
class Density:
    """A smoothed spectral density on a grid: the probe mean, each probe's curve, and the quadrature."""

    grid: np.ndarray  # [G]
    values: np.ndarray  # [G] mean over probes
    per_probe: np.ndarray  # [n_v, G]
    sigma: float
    nodes: list[np.ndarray]  # per probe
    weights: list[np.ndarray]  # per probe, each sums to 1
    counts: SpectrumCounts | None = None  # rank and outliers, when the operator's size is known

    @property
    def std_error(self) -> np.ndarray:
        """Pointwise standard error of the mean over probes (0 with one probe)."""
        p = self.per_probe.shape[0]
        return self.per_probe.std(axis=0, ddof=1) / math.sqrt(p) if p > 1 else np.zeros_like(self.values)


def orthonormal_probes(R: torch.Tensor) -> torch.Tensor:
    """Rows of R orthonormalized in consecutive groups of at most n = R.shape[1].

    Each row keeps E[q q^T] = I/n (the Rademacher distribution is invariant under signed
    permutations of the coordinates, and so is Gram-Schmidt), so every probe's quadrature stays an
    unbiased estimate of tr f(H)/n; probes of one group are orthogonal, which lowers the variance of
    their mean, and a full group of n probes gives tr f(H)/n exactly.
    """
    n = R.shape[1]
    groups = [torch.linalg.qr(chunk.T).Q.T for chunk in torch.split(R, n)]
    return torch.cat(groups).contiguous()


def slq(
    matmat: MatMat,
    n: int,
    *,
    probes: int = 10,
    steps: int = 80,
    seed: int = 0,
    device: torch.device | str = "cpu",
    basis_bytes: int = SLQ_BASIS_BYTES,
    basis: str = "auto",
    basis_device: torch.device | str | None = None,
) -> LanczosRuns:
    """Run `probes` Lanczos processes of `steps` steps in lockstep from Rademacher vectors (Ghorbani et al. 2019),
    orthonormalized in groups of n (`orthonormal_probes`): still unbiased, less variance, exact when probes >= n.
    When n * n <= probes * steps (tiny models), n probes of n steps are run instead: the exact density.

    Full re-orthogonalization within each probe's basis (in `basis` dtype: 'auto' is float64 while one
    probe's basis fits `basis_bytes` and `LANCZOS_FLOAT64_BYTES`, else float32); a probe that breaks down (its Krylov space is
    invariant: e.g. n <= steps) stops there, its remaining entries NaN, its quadrature then exact.
    At most `basis_bytes` of bases are held at once: beyond it the probes run in groups, in order.

    When not even one probe's basis fits `basis_bytes` (a 124M-parameter model: 80 steps are 40 GB in
    float32), the probes run one after another with the plain three-term recurrence, no basis kept
    (`reorthogonalized` False). The tridiagonals then lose orthogonality and repeat converged Ritz values,
    but Gauss quadrature of a smooth function from finite-precision Lanczos stays accurate: the copies
    share the weight of the eigenvalue they repeat (Knizhnerman 1996; Meurant & Strakos 2006; the
    analysis of SLQ without re-orthogonalization in Chen, Trogdon & Ubaru 2021). Probes whose float64
    vectors do not fit `basis_bytes` together are drawn one by one, normalized, not orthogonalized to
    each other (at that size random probes are nearly orthogonal: |cos| ~ 1/sqrt(n)).

    Example:
        >>> A = torch.diag(torch.linspace(0, 1, 50, dtype=torch.float64))
        >>> runs = slq(lambda V: V @ A, 50, probes=2, steps=10)
        >>> runs.alpha.shape
        (2, 10)
    """
    p = int(probes)
    if n * n <= p * int(steps):  # n orthonormal probes of n steps give the exact spectrum within the budget
        p, steps = n, n
    steps = max(1, min(int(steps), n))
    dtype = basis_dtype(basis, steps, n, min(int(basis_bytes), LANCZOS_FLOAT64_BYTES))
    row = row_bytes(n, dtype)
    per_probe = steps * row + 3 * n * 8  # its basis, and its vector, product and previous vector (float64)
    reorthogonalized = per_probe <= basis_bytes
    group = max(1, min(p, int(basis_bytes) // (per_probe if reorthogonalized else 3 * n * 8)))
    gen = torch.Generator().manual_seed(int(seed) + 7919)
    together = p * n * 8 <= basis_bytes  # all the probes at once, orthonormalized in groups of n
    V_all = orthonormal_probes(rademacher(p, n, gen, device)) if together else None
    alpha = np.full((p, steps), np.nan)
    beta = np.full((p, max(steps - 1, 0)), np.nan)
    matvecs = 0
    for start in range(0, p, group):
        rows = slice(start, min(p, start + group))
        if V_all is not None:
            V = V_all[rows]
        else:
            V = rademacher(rows.stop - rows.start, n, gen, device)
            V /= V.norm(dim=1, keepdim=True)
        bases = (
            [KrylovBasis(n, dtype, basis_device or V.device) for _ in range(V.shape[0])] if reorthogonalized else None
        )
        matvecs += _lockstep(matmat, V, steps, alpha[rows], beta[rows], bases)
    return LanczosRuns(alpha=alpha, beta=beta, matvecs=matvecs, seed=int(seed), reorthogonalized=reorthogonalized)


def _lockstep(
    matmat: MatMat,
    V: torch.Tensor,
    steps: int,
    alpha: np.ndarray,
    beta: np.ndarray,
    bases: list[KrylovBasis] | None,
) -> int:
    """Lanczos from each row of V (unit vectors, updated in place), all in one product call per step,
    filling alpha [p, steps] and beta [p, steps - 1] (views); returns the products made. With `bases`
    (one per row) every new vector is re-orthogonalized against its probe's basis; without, only
    against the previous vector (the three-term recurrence)."""
    p, n = V.shape
    prev = torch.zeros_like(V)
    active = np.ones(p, dtype=bool)
    prev_beta = np.zeros(p)
    matvecs = 0
    for j in range(steps):
        live = np.flatnonzero(active)
        if live.size == 0:
            break
        W = matmat(V[live]).to(torch.float64)
        matvecs += live.size
        for r, i in enumerate(live):
            w = W[r]
            q = V[i]
            a = float(w @ q)
            w = w - a * q
            if j:
                w -= prev_beta[i] * prev[i]
            b = float(w.norm())
            if bases is not None:  # a second pass only when the first cancelled much of w (as in `lanczos`)
                bases[i].append(q)
                before = b
                bases[i].project_out(w)
                b = float(w.norm())
                if b < REORTH_KEEP * before:
                    bases[i].project_out(w)
                    b = float(w.norm())
            alpha[i, j] = a
            scale = max(abs(a), float(np.nanmax(np.abs(alpha[i, : j + 1]))), 1e-300)
            if j + 1 < steps:
                if b <= 1e-10 * scale:
                    active[i] = False
                else:
                    beta[i, j] = b
                    prev_beta[i] = b
                    prev[i] = q
                    V[i] = w / b
        del W
    return matvecs


def quadrature(alpha: np.ndarray, beta: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Gauss quadrature nodes and weights of each probe's tridiagonal (NaN padding dropped)."""
    alpha = np.atleast_2d(np.asarray(alpha, dtype=np.float64))
    beta = np.atleast_2d(np.asarray(beta, dtype=np.float64)) if np.size(beta) else np.zeros((alpha.shape[0], 0))
    nodes, weights = [], []
    with blas_threads(1):
        for a, b in zip(alpha, beta):
            m = int(np.sum(np.isfinite(a)))
            theta, Y = tridiagonal_eigh(a[:m], b[: m - 1])
            assert Y is not None
            w = Y[0] ** 2
            nodes.append(theta)
            weights.append(w / w.sum())
    return nodes, weights


def default_sigma(nodes: list[np.ndarray]) -> float:
    """A smoothing width that resolves a few hundred features across the spectrum: 0.2% of its span."""
    lo = min(float(t.min()) for t in nodes)
    hi = max(float(t.max()) for t in nodes)
    return 2e-3 * max(hi - lo, 1e-12 * max(abs(hi), 1.0))


def default_grid(nodes: list[np.ndarray], sigma: float, points: int = 2000) -> np.ndarray:
    lo = min(float(t.min()) for t in nodes)
    hi = max(float(t.max()) for t in nodes)
    pad = 5.0 * sigma
    return np.linspace(lo - pad, hi + pad, points)


def gaussian_mixture(grid: np.ndarray, nodes: np.ndarray, weights: np.ndarray, sigma: float) -> np.ndarray:
    """sum_j w_j N(grid; nodes_j, sigma^2), in chunks of nodes to bound memory."""
    out = np.zeros_like(grid, dtype=np.float64)
    norm = 1.0 / (sigma * math.sqrt(2.0 * math.pi))
    for s in range(0, nodes.size, 256):
        d = (grid[:, None] - nodes[None, s : s + 256]) / sigma
        out += (np.exp(-0.5 * d * d) * weights[None, s : s + 256]).sum(axis=1) * norm
    return out


def density_from_lanczos(
    alpha: np.ndarray,
    beta: np.ndarray,
    grid: np.ndarray | None = None,
    sigma: float | None = None,
    points: int = 2000,
    size: int | None = None,
) -> Density:
    """The SLQ density (Ghorbani et al. 2019) from stored per-probe tridiagonals; no model needed.

    sigma defaults to `default_sigma` (0.2% of the spectrum's span); the grid to `points` points
    spanning the nodes plus 5 sigma. With the operator's `size` also the rank and outlier counts.
    """
    nodes, weights = quadrature(alpha, beta)
    sigma = float(sigma) if sigma else default_sigma(nodes)
    grid = np.asarray(grid, dtype=np.float64) if grid is not None else default_grid(nodes, sigma, points)
    per = np.stack([gaussian_mixture(grid, t, w, sigma) for t, w in zip(nodes, weights)])
    counts = spectrum_counts(alpha, beta, nodes, weights, size) if size else None
    return Density(
        grid=grid, values=per.mean(axis=0), per_probe=per, sigma=sigma, nodes=nodes, weights=weights, counts=counts
    )


def exact_density(eigenvalues: np.ndarray, grid: np.ndarray, sigma: float) -> np.ndarray:
    """(1/n) sum_i N(grid; lambda_i, sigma^2): the exactly smoothed spectrum, for checks."""
    ev = np.asarray(eigenvalues, dtype=np.float64)
    return gaussian_mixture(grid, ev, np.full(ev.size, 1.0 / ev.size), sigma)


def l1_distance(grid: np.ndarray, f: np.ndarray, g: np.ndarray) -> float:
    """Integral of |f - g| over the grid (trapezoid rule); 0..2 for two densities."""
    trapezoid = getattr(np, "trapezoid", None) or getattr(np, "trapz")  # noqa: B009 (numpy < 2 has only trapz)
    return float(trapezoid(np.abs(f - g), grid))
