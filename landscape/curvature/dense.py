"""Exact estimates for a small operator: its whole matrix from one product per parameter, then eigh.

A per-layer block of a small model (a LayerNorm, an attention projection, a classifier head) often
has fewer parameters than the iterative estimators would spend products on it (60 for the trace,
probes x steps for the density). Then n products with the unit vectors give the whole matrix, and
its eigendecomposition gives the top-k, the trace and the density exactly, for fewer products. The
results take the same shapes as the iterative ones (Eigenpairs, TraceEstimate, LanczosRuns), so
the results file, the figures and the tables need nothing new.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from landscape.curvature.density import LanczosRuns
from landscape.curvature.lanczos import Eigenpairs, fixed_sign, residual_floor, wanted_indices
from landscape.curvature.trace import EXACT, TraceEstimate

MatMat = Callable[[torch.Tensor], torch.Tensor]
DENSE_LIMIT = 1024  # parameters: an 8 MB matrix, and the exact density's Lanczos run stays under a second


def planned_products(
    n: int, *, top_k: int, which: str, trace_matvecs: int | None, probes: int | None, steps: int | None
) -> int:
    """About how many products the iterative estimators would spend on an operator of size n."""
    total = 0
    if top_k > 0:
        total += max(20, 3 * top_k) * (2 if which == "both" else 1)
    if trace_matvecs:
        total += trace_matvecs
    if probes and steps:
        total += min(probes * steps, n * n)
    return total


def use_dense(n: int, planned: int) -> bool:
    """The whole matrix costs n products: take it when that is no more than planned and it is small."""
    return n <= min(planned, DENSE_LIMIT)


def dense_matrix(matmat: MatMat, n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The operator as a symmetric float64 matrix, from its products with the n unit vectors."""
    H = matmat(torch.eye(n, dtype=torch.float64, device=device)).to(torch.float64)
    return 0.5 * (H + H.T)


def exact_eigenpairs(
    H: torch.Tensor,
    spectrum: tuple[torch.Tensor, torch.Tensor],
    *,
    k: int,
    which: str,
    tol: float,
    vectors: bool = True,
    precision: float = 2.2e-16,
) -> Eigenpairs:
    """The wanted eigenpairs of a dense symmetric matrix from its `torch.linalg.eigh` (largest first; with
    'both', then the most negative), with their residuals ||Hv - lambda v|| (never below the floor the
    products' relative `precision` sets: H itself is only that accurate)."""
    w, U = spectrum
    idx = torch.from_numpy(wanted_indices(w.cpu().numpy(), max(1, min(int(k), H.shape[0])), which)).to(w.device)
    lam, V = w[idx], U[:, idx].T.contiguous()
    residuals = (V @ H - lam[:, None] * V).norm(dim=1).cpu().numpy()
    floor = residual_floor(precision, float(w.abs().max())) if w.numel() else 0.0
    return Eigenpairs(
        eigenvalues=lam.cpu().numpy(),
        residuals=np.maximum(residuals, floor),
        floor=floor,
        converged=np.ones(lam.numel(), dtype=bool),
        eigenvectors=fixed_sign(V) if vectors else None,
        iterations=0,
        matvecs=H.shape[0],
        which=which,
        tol=float(tol),
    )


def exact_trace(H: torch.Tensor) -> TraceEstimate:
    """The trace of the whole matrix (standard error 0), in the shape of a Hutch++ estimate."""
    value = float(torch.diagonal(H).sum())
    return TraceEstimate(value, 0.0, H.shape[0], H.shape[0], 0, value, EXACT)


def exact_runs(eigenvalues: torch.Tensor | np.ndarray, seed: int = 0) -> LanczosRuns:
    """One 'probe' whose Gauss quadrature is the exact spectrum: every eigenvalue a node of weight 1/n.

    Lanczos on diag(lambda) from the unit vector with equal entries (the same tridiagonal as on the
    matrix itself from U 1/sqrt(n)) with full re-orthogonalization; it stops early when eigenvalues
    repeat, and the repeated one's node then carries its multiplicity / n.
    """
    lam = torch.as_tensor(np.asarray(eigenvalues, dtype=np.float64))
    n = lam.numel()
    Q = torch.zeros(n, n, dtype=torch.float64)
    q = torch.full((n,), n**-0.5, dtype=torch.float64)
    alpha = np.full((1, n), np.nan)
    beta = np.full((1, max(n - 1, 0)), np.nan)
    scale = max(float(lam.abs().max()), 1e-300)
    b_prev = 0.0
    for j in range(n):
        Q[j] = q
        w = lam * q
        a = float(w @ q)
        w = w - a * q - (b_prev * Q[j - 1] if j else 0.0)
        for _ in range(2):
            w = w - Q[: j + 1].T @ (Q[: j + 1] @ w)
        alpha[0, j] = a
        b = float(w.norm())
        if j + 1 == n or b <= 1e-12 * scale:
            break
        beta[0, j] = b_prev = b
        q = w / b
    return LanczosRuns(alpha=alpha, beta=beta, matvecs=0, seed=int(seed))
