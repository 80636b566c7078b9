"""Lanczos with full re-orthogonalization: extreme eigenpairs of a symmetric operator from its products.

Lanczos (1950); with full re-orthogonalization as in Golub & Van Loan, "Matrix Computations", 10.1.
After m steps, H Q_m = Q_m T_m + beta_m q_{m+1} e_m^T with T_m symmetric tridiagonal; a Ritz pair
(theta, u = Q_m y) of T_m has residual ||H u - theta u|| = beta_m |y_m|, known without another product.
We stop when every wanted Ritz pair has residual <= tol * |theta| (with a floor at the precision of the
products). Extreme eigenvalues converge in far fewer products than power iteration with deflation.
When the basis may hold fewer rows than the steps need (a large model), a full basis restarts thick
(Wu & Simon 2000): the best Ritz vectors U = Q Y are kept and H U = U diag(theta) + q s^T with
s = beta_m Y[m, :] carries the decomposition on; the residual estimate stays beta |y_last|.

Plain functions on tensors; the tridiagonal eigenproblems use scipy's `eigh_tridiagonal` with BLAS
limited to one thread so it does not fight torch for the cores.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from landscape.curvature.basis import KrylovBasis, basis_dtype
from landscape.errors import LandscapeError
from landscape.names import WHICH

MatMat = Callable[..., torch.Tensor]  # rows [j, n] -> their products; with `into`, also out= rows to write them into
REORTH_KEEP = 0.5**0.5  # a re-orthogonalization pass that keeps this much of the vector's norm needs no second one


@functools.lru_cache(maxsize=1)
def _blas_controller() -> Any:
    """threadpoolctl's view of the loaded BLAS libraries, scanned once per process (a scan costs
    about a millisecond and a half), after scipy.linalg has loaded its BLAS: scipy is imported here,
    on first use, not with the module (0.25-0.5 s that `sweep`, `plot` and `info` do not need)."""
    import scipy.linalg  # noqa: F401  (its BLAS must be loaded before the scan)

    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover - threadpoolctl is a dependency
        return None
    return ThreadpoolController()


@contextlib.contextmanager
def blas_threads(n: int = 1) -> Iterator[None]:
    """Limit the BLAS threads of numpy/scipy inside the block (torch's own threads are left alone).

    Callers wrap a whole loop, not each small call (entering costs tens of microseconds).
    """
    controller = _blas_controller()
    if controller is None:  # pragma: no cover
        yield
        return
    with controller.limit(limits=n, user_api="blas"):
        yield


def tridiagonal_eigh(alpha: np.ndarray, beta: np.ndarray, vectors: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Eigenvalues (ascending) and eigenvectors of the symmetric tridiagonal matrix (alpha on, beta off the diagonal).

    Callers run it inside `blas_threads` (entered once around their loop).
    """
    alpha = np.asarray(alpha, dtype=np.float64)
    beta = np.asarray(beta, dtype=np.float64)
    if not (np.isfinite(alpha).all() and np.isfinite(beta).all()):  # a clear error, and scipy's own check skipped
        raise LandscapeError("a curvature product came out NaN or infinite (is the loss finite near these weights?)")
    if alpha.size == 1:
        return alpha.copy(), (np.ones((1, 1)) if vectors else None)
    from scipy.linalg import eigh_tridiagonal

    if vectors:
        w, y = eigh_tridiagonal(alpha, beta, lapack_driver="stemr", check_finite=False)
        return w, y
    return eigh_tridiagonal(alpha, beta, eigvals_only=True, check_finite=False), None


RESIDUAL_FLOOR = 100.0  # the precision floor of a residual, in epsilons of the products times |lambda_max|


@dataclass(frozen=True)
class Eigenpairs:
    """Eigenvalues with their trust: residuals ||Hv - lambda v||, a converged flag, iterations and products."""

    eigenvalues: np.ndarray  # [k] float64, largest first (with which='both': the largest, then the most negative)
    residuals: np.ndarray  # [k] float64, never below `floor`
    converged: np.ndarray  # [k] bool: residual <= tol * |lambda| (or the precision floor)
    eigenvectors: torch.Tensor | None  # [k, n] unit vectors (in the Lanczos basis dtype), or None
    iterations: int
    matvecs: int
    which: str
    tol: float
    # the least residual the products' precision can show (RESIDUAL_FLOOR eps |lambda_max|): a smaller
    # computed one (0, or 1e-31 under float32 products) is reported as this, an error bar never smaller
    # than the arithmetic allows
    floor: float = 0.0

    @property
    def at_floor(self) -> np.ndarray:
        """[k] bool: the residual is the precision floor (the computed one was smaller)."""
        return (self.floor > 0) & (np.asarray(self.residuals) <= self.floor)

    @property
    def all_converged(self) -> bool:
        return bool(self.converged.all())


def wanted_indices(theta: np.ndarray, k: int, which: str) -> np.ndarray:
    """Indices (into ascending theta) of the wanted eigenvalues: the k largest first, then (which='both')
    the k most negative."""
    m = theta.size
    top = np.arange(m - 1, max(m - 1 - k, -1), -1)
    if which == "largest":
        return top
    bottom = np.arange(0, min(k, m))
    bottom = bottom[~np.isin(bottom, top)]
    return np.concatenate([top, bottom])


def fixed_sign(vectors: torch.Tensor) -> torch.Tensor:
    """Rows flipped so that each one's largest-magnitude entry is positive: reproducible eigenvectors."""
    return vectors * pivot_signs(vectors)


def pivot_signs(vectors: torch.Tensor) -> torch.Tensor:
    """[k, 1]: the sign of each row's largest-magnitude entry (1 where it is 0), found row by row (one
    temporary of P, not k)."""
    pivot = torch.stack([row.abs().argmax() for row in vectors])
    signs = torch.sign(vectors.gather(1, pivot[:, None]))
    return torch.where(signs == 0, torch.ones_like(signs), signs)


RESTART_SPARE = 3  # a capped basis holds the wanted pairs and at least this many more: the new steps of a restart
Pair = tuple[torch.Tensor, torch.Tensor]
# a start vector and its product: as they are, or a function that hands them over (the caller then holds
# no reference, so these two P-sized float64 vectors are freed after the first step instead of held)
Start = Pair | Callable[[], Pair | None] | None
LANCZOS_FLOAT64_BYTES = 2 << 30  # an 'auto' basis stays float64 while max_iter rows of it fit this; else float32


@dataclass
class KrylovRun:
    """What a Lanczos run leaves: the tridiagonal (of the steps since the last restart), its last Ritz
    decomposition, and the basis."""

    alphas: list[float]
    betas: list[float]
    theta: np.ndarray
    Y: np.ndarray
    idx: np.ndarray
    residuals: np.ndarray
    converged: np.ndarray
    matvecs: int
    basis: KrylovBasis
    floor: float


def lanczos(
    matmat: MatMat,
    n: int,
    *,
    k: int = 5,
    which: str = "largest",
    tol: float = 1e-4,
    max_iter: int | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    vectors: bool = True,
    precision: float = 2.2e-16,
    start: Start = None,
    basis: str = "auto",
    basis_device: torch.device | str | None = None,
    max_rows: int | None = None,
    into: bool = False,
) -> Eigenpairs:
    """Top-k (which='largest') or top-k and bottom-k (which='both') eigenpairs of a symmetric operator.

    Lanczos iteration with full re-orthogonalization (Lanczos 1950; Golub & Van Loan 10.1), one
    product per step. `matmat` maps rows [j, n], in the basis dtype, to their products (a new tensor,
    which Lanczos updates in place); `precision` is the relative precision of those products (float32
    products: ~1.2e-7), which floors the attainable residual at 100 * precision * |lambda_max|. On
    breakdown (an invariant subspace found) a fresh random vector orthogonal to the basis continues the
    run, so repeated eigenvalues are not missed. `start`, a vector and its product already made (e.g.
    `CurvatureOperator.probe`, or `take_probe`, which hands them over), replaces the seeded start
    vector and saves the first product; it counts in `matvecs` all the same.

    Memory: the basis (one row per step) in `basis` dtype: 'auto' keeps float64 while max_iter rows fit
    `LANCZOS_FLOAT64_BYTES`, else float32; on `basis_device` (default `device`; 'cpu' keeps it in host
    memory beside a GPU). Besides it: one working vector in the basis dtype (the product, made the next
    vector; the others are read from the basis), the start pair until the first step, and what the
    product takes. Dot products and norms are summed in float64 either way. The eigenvectors come out
    in the basis dtype, formed in the basis's memory (k rows beyond it at most). `max_rows` caps the
    basis (what fits in memory): when it is full before the pairs converge, the run restarts thick (Wu
    & Simon 2000), keeping the best Ritz vectors, and goes on up to max_iter products. With `into`,
    matmat takes `out=` and writes the product there: the basis's next row, when the basis is on `device`
    (no working vector beside the basis then).

    Example:
        >>> A = torch.diag(torch.arange(1.0, 101.0, dtype=torch.float64))
        >>> r = lanczos(lambda V: V @ A, 100, k=3, tol=1e-8)
        >>> np.round(r.eigenvalues, 6).tolist()
        [100.0, 99.0, 98.0]
    """
    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}")
    k = max(1, min(int(k), n))
    run = krylov(
        matmat, n, k=k, which=which, tol=tol, max_iter=max_iter if max_iter is not None else max(100, 20 * k),
        seed=seed, device=device, precision=precision, start=start, basis=basis, basis_device=basis_device,
        max_rows=max_rows, into=into,
    )  # fmt: skip
    evecs = None
    if vectors:
        evecs = run.basis.take_combinations(torch.from_numpy(np.ascontiguousarray(run.Y[:, run.idx]))).to(device)
        evecs.div_(evecs.norm(dim=1, keepdim=True))
        evecs.mul_(pivot_signs(evecs))  # in place: k vectors of P, not three copies
    return Eigenpairs(
        eigenvalues=run.theta[run.idx].copy(),
        residuals=np.maximum(run.residuals, run.floor),
        converged=run.converged.copy(),
        eigenvectors=evecs,
        iterations=run.matvecs,  # one product per step, over all restarts
        matvecs=run.matvecs,
        which=which,
        tol=float(tol),
        floor=run.floor,
    )


def krylov(
    matmat: MatMat,
    n: int,
    *,
    k: int,
    which: str = "largest",
    tol: float,
    max_iter: int,
    seed: int = 0,
    device: torch.device | str = "cpu",
    precision: float = 2.2e-16,
    start: Start = None,
    basis: str = "auto",
    basis_device: torch.device | str | None = None,
    max_rows: int | None = None,
    into: bool = False,
    enough: Callable[[torch.Tensor, torch.Tensor, float], bool] | None = None,
) -> KrylovRun:
    """The Lanczos iteration of `lanczos` (which see), up to `max_iter` steps or until the k wanted Ritz
    pairs converge (tol 0: exactly max_iter steps, unless the space turns out invariant first); thick
    restarts when the basis reaches `max_rows` rows (at least the wanted pairs + RESTART_SPARE).
    `enough(q, w, b)`, asked after each step with its vector q and its residual w (orthogonal to the
    basis, of norm b), ends the run there when it says so (the trace's sketch: `trace.SketchPays`)."""
    want_count = k if which == "largest" else min(n, 2 * k)
    max_iter = max(int(min(n, max_iter)), min(n, want_count))
    rows_cap = max_iter if max_rows is None else min(max_iter, max(int(max_rows), want_count + RESTART_SPARE))
    gen = torch.Generator().manual_seed(int(seed))
    Q = KrylovBasis(n, basis_dtype(basis, max_iter, n, LANCZOS_FLOAT64_BYTES), basis_device or device)
    work = Q.dtype  # the working vector's dtype: a float32 basis is no more precise than a float32 vector
    into = into and Q.device == torch.device(device)  # products written into the basis's next row

    def floor_at(scale: float) -> float:  # the residual the products' precision allows at this |theta| scale
        return residual_floor(precision, scale)

    def fresh() -> torch.Tensor:  # drawn in float64 (the same draws whatever the basis dtype)
        q = torch.randn(n, generator=gen, dtype=torch.float64).to(device, work)
        for _ in range(2):
            Q.project_out(q)
        return q.div_(norm(q))

    alphas: list[float] = []
    betas: list[float] = []  # betas[j] couples q_j and q_{j+1}
    # after a thick restart: the kept Ritz values, and their coupling to the first vector after them
    head: tuple[np.ndarray, np.ndarray] | None = None
    known: torch.Tensor | None = None  # the product of the first vector, when given
    pair = start() if callable(start) else start
    if pair is None:
        q = fresh()
    else:
        v, hv = (t.to(device, work).reshape(n) for t in pair)
        size = norm(v)
        q, known = v / size, hv / size
        del v, hv, pair  # handed over (`Start`): freed once the first step has used `known`
    # The vectors q_j are read from the basis, not kept beside it: the product is taken of the stored row
    # (exactly q_j in a float64 basis; q_j rounded to float32 in a float32 one, so alpha and the recurrence
    # use the very vector whose product was taken, and the re-orthogonalization removes the rounding's
    # component right after). `prev` is q_{j-1}'s row, for the three-term recurrence.
    prev: int | None = None
    matvecs = 0
    theta = np.zeros(0)
    Y = np.zeros((0, 0))
    idx = np.zeros(0, dtype=int)
    res = np.zeros(0)
    ok = np.zeros(0, dtype=bool)
    with blas_threads(1):  # entered once: per step it cost more than a small model's product
        for step in range(max_iter):
            Q.append(q)
            q = Q.row(Q.rows - 1).to(device)  # the row itself (a view) where the basis is on `device`
            if known is not None:
                w = known.to(work)
            elif into and Q.rows < rows_cap:  # w becomes the next row (no restart before it is appended)
                w = matmat(q[None], out=Q.next_row()[None])[0]
            else:
                w = matmat(q[None])[0].to(work)  # updated in place below
            known = None
            matvecs += 1
            a = dot(w, q)
            w.sub_(q, alpha=a)
            if prev is not None:
                w.sub_(Q.row(prev).to(w.device), alpha=betas[-1])
            # "twice is enough" (Kahan, Parlett), the second pass only when the first cancelled much of w
            # (the DGKS test, as ARPACK does): each pass reads the whole basis twice, which on an 11M-parameter
            # model cost a third of the run when always done twice
            before = norm(w)
            Q.project_out(w)
            b = norm(w)
            if b < REORTH_KEEP * before:
                Q.project_out(w)
                b = norm(w)
            alphas.append(a)
            stop = enough is not None and enough(q, w, b)  # asked at every step: it may keep a record
            last = step + 1 == max_iter or stop
            if Q.rows >= want_count or last:  # before that, not all wanted pairs exist: no need to look
                theta, Y = _ritz(head, alphas, betas)
                floor = floor_at(float(np.abs(theta).max()))
                idx = wanted_indices(theta, k, which)
                res = b * np.abs(Y[-1, idx])
                ok = res <= np.maximum(tol * np.abs(theta[idx]), floor)
                if ok.all() or last:
                    break
            else:  # the breakdown test's scale: a bound on |theta| (Gershgorin) without solving for it
                floor = floor_at(max(abs(x) for x in alphas) + 2.0 * max(betas, default=0.0))
            prev = Q.rows - 1  # q, appended at the top of this step
            if b <= floor * 1e-3 or b == 0.0:  # invariant subspace: restart orthogonally, T becomes block-diagonal
                b = 0.0
                q = fresh()
            else:
                q = w.div_(b)
            del w  # q's only reference, so the basis's copy of it is the one held from the next step on
            if Q.rows < rows_cap:
                betas.append(b)
                continue
            # the basis is full: keep the best Ritz vectors U = Q Y_l; H U = U diag(theta_l) + q s^T with
            # s = b Y[-1, l], so [U, q] goes on as a Krylov decomposition (its matrix an arrowhead, then tridiagonal)
            keep = _kept(
                theta, idx, min(rows_cap - RESTART_SPARE, max(want_count, (rows_cap + want_count) // 2)), which
            )
            Q.keep_combinations(torch.from_numpy(np.ascontiguousarray(Y[:, keep])))
            head = (theta[keep].copy(), b * Y[-1, keep])
            alphas, betas, prev = [], [], None
    floor = floor_at(float(np.abs(theta).max())) if theta.size else 0.0
    return KrylovRun(alphas, betas, theta, Y, idx, res, ok, matvecs, Q, floor)


def _ritz(
    head: tuple[np.ndarray, np.ndarray] | None, alphas: list[float], betas: list[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Ritz values (ascending) and vectors of the projected matrix: tridiagonal, or after a thick restart
    diag(kept values) coupled to the next vector by s, then tridiagonal."""
    if head is None:
        theta, vecs = tridiagonal_eigh(np.array(alphas), np.array(betas))
        assert vecs is not None
        return theta, vecs
    kept, s = head
    m, h = len(kept) + len(alphas), len(kept)
    T = np.zeros((m, m))
    T[np.arange(h), np.arange(h)] = kept
    T[h, :h] = T[:h, h] = s
    T[np.arange(h, m), np.arange(h, m)] = alphas
    off = np.arange(h, m - 1)
    T[off, off + 1] = T[off + 1, off] = betas[: m - 1 - h]
    theta, vecs = np.linalg.eigh(T)
    return theta, vecs


def _kept(theta: np.ndarray, wanted: np.ndarray, count: int, which: str) -> np.ndarray:
    """Indices (into ascending theta) of the `count` Ritz vectors a thick restart keeps: the wanted ones
    and their nearest neighbours inward (the largest; with which='both' from both ends)."""
    m = theta.size
    if which == "largest":
        return np.arange(m - 1, m - 1 - count, -1)
    top = np.arange(m - 1, m - 1 - (count + 1) // 2, -1)
    bottom = np.arange(0, count // 2)
    return np.union1d(np.union1d(top, bottom), wanted)[::-1]


DOT_CHUNK = 1 << 19  # float32 vectors are dotted in float64 this many entries at a time: 4 MB temporaries,
# reused by the allocator (8 MB ones were page-faulted in anew: 53 ms against 10 ms for 11.2M entries)


def dot(a: torch.Tensor, b: torch.Tensor) -> float:
    """<a, b> summed in float64 whatever the vectors' dtype: a float32 dot of 10^8 entries loses about four
    digits, Lanczos's tolerance; converted a chunk at a time, not as two float64 copies."""
    if a.dtype == torch.float64 and b.dtype == torch.float64:
        return float(a @ b)
    total = torch.zeros((), dtype=torch.float64, device=a.device)
    for i in range(0, a.numel(), DOT_CHUNK):
        total += a[i : i + DOT_CHUNK].to(torch.float64) @ b[i : i + DOT_CHUNK].to(torch.float64)
    return float(total)


def norm(v: torch.Tensor) -> float:
    """||v||, in float64 whatever v's dtype (as `dot`)."""
    return float(v.norm()) if v.dtype == torch.float64 else math.sqrt(dot(v, v))


def residual_floor(precision: float, scale: float) -> float:
    """The least residual ||Hv - lambda v|| products of relative `precision` can show at |lambda_max| = `scale`."""
    return RESIDUAL_FLOOR * precision * max(scale, 1e-300)
