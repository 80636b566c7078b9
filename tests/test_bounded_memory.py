"""Memory bounded by design: the Lanczos basis in blocks and float32, SLQ without a basis, Hutch++ probes in groups,
roughness directions made a chunk at a time; each against exact eigenvalues or the unbounded computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import sample_problem

import landscape.curvature.basis as basis_module
from landscape.curvature import hutchpp, lanczos, slq
from landscape.curvature.analysis import CurvatureSettings, rows_that_fit
from landscape.curvature.basis import KrylovBasis
from landscape.curvature.density import exact_density, l1_distance, quadrature
from landscape.directions import RandomDirections, random_directions
from landscape.measures import KnownPoints, compute_roughness


def spectrum_matrix(n: int = 400, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A Hessian-like symmetric matrix (a bulk near zero, a few outliers, some negative) with its eigenvalues."""
    gen = torch.Generator().manual_seed(seed)
    ev = torch.cat(
        [
            torch.tensor([50.0, 31.0, 20.0, 12.0, 9.0, 7.5], dtype=torch.float64),
            torch.rand(n - 6, generator=gen, dtype=torch.float64) * 1.5 - 0.3,
        ]
    )
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    return Q @ torch.diag(ev) @ Q.T, torch.sort(ev, descending=True).values


def test_basis_in_blocks_projects_as_one_matrix(monkeypatch):
    monkeypatch.setattr(basis_module, "BLOCK_BYTES", 3 * 50 * 8)  # three rows per block
    gen = torch.Generator().manual_seed(1)
    Q, _ = torch.linalg.qr(torch.randn(50, 7, generator=gen, dtype=torch.float64))
    B = KrylovBasis(50, torch.float64, "cpu")
    for q in Q.T:
        B.append(q)
    assert B.rows == 7 and B.block_rows == 3 and len(B._blocks) == 3
    w = torch.randn(50, generator=gen, dtype=torch.float64)
    expected = w - Q @ (Q.T @ w)
    B.project_out(w)
    torch.testing.assert_close(w, expected, rtol=0, atol=1e-13)
    W = torch.randn(4, 50, generator=gen, dtype=torch.float64)
    expected = W - (W @ Q) @ Q.T
    B.project_out_rows(W)
    torch.testing.assert_close(W, expected, rtol=0, atol=1e-13)
    for i in range(7):  # a row is a view of where it is kept
        assert torch.equal(B.row(i), Q[:, i])
    Y = torch.randn(7, 2, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(B.take_combinations(Y), Y.T @ Q.T, rtol=0, atol=1e-13)
    assert B.rows == 0 and not B._blocks  # handed out: the basis holds nothing more


@pytest.mark.parametrize("basis", ["float64", "float32"])
def test_lanczos_with_a_blocked_or_float32_basis_finds_the_exact_top5(monkeypatch, basis):
    monkeypatch.setattr(basis_module, "BLOCK_BYTES", 5 * 400 * 8)
    A, ev = spectrum_matrix()
    r = lanczos(lambda V: V.to(A.dtype) @ A, 400, k=5, tol=1e-6, basis=basis)
    np.testing.assert_allclose(r.eigenvalues, ev[:5].numpy(), rtol=1e-9 if basis == "float64" else 1e-6)
    assert r.all_converged
    assert r.eigenvectors is not None and r.eigenvectors.dtype == getattr(torch, basis)
    v = r.eigenvectors.double()
    residual = (v @ A - torch.as_tensor(r.eigenvalues)[:, None] * v).norm(dim=1) / torch.as_tensor(r.eigenvalues)
    assert float(residual.max()) < (1e-5 if basis == "float64" else 1e-4)


def test_a_start_pair_handed_over_is_freed_after_the_first_step_and_gives_the_same_eigenpairs():
    """`start=op.take_probe` (a function): Lanczos holds the probe and its product (two P-sized float64
    vectors) for its first step only; a pair passed as it is gives the same numbers."""
    import weakref

    A, ev = spectrum_matrix()
    v = torch.randn(400, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    pair = (v, v @ A)
    alive, seen = [], weakref.ref(pair[1])
    handed = [pair]
    del pair

    def matmat(V):
        alive.append(seen() is not None)
        return V @ A

    r = lanczos(matmat, 400, k=5, tol=1e-8, start=lambda: handed.pop())
    assert not handed and alive and not any(alive)  # gone from the first product Lanczos made itself
    same = lanczos(lambda V: V @ A, 400, k=5, tol=1e-8, start=(v, v @ A))
    np.testing.assert_allclose(r.eigenvalues, ev[:5].numpy(), rtol=1e-10)
    np.testing.assert_array_equal(r.eigenvalues, same.eigenvalues)


def test_float32_lanczos_holds_no_vector_beside_its_basis_and_keeps_the_accuracy():
    """In a float32 basis the product is taken of the basis's own row and the working vector is float32:
    during each product, no P-sized tensor lives outside the basis (two float64 vectors did). Float32
    products of a known spectrum still give the top 5 to the tolerance."""
    import gc

    from landscape.curvature.basis import KrylovBasis

    A, ev = spectrum_matrix()
    A32 = A.float()
    gc.collect()
    known = {t.untyped_storage().data_ptr() for t in (A, A32, ev)}
    outside: list[int] = []

    def matmat(V: torch.Tensor) -> torch.Tensor:
        assert V.dtype == torch.float32
        live = {
            o.untyped_storage().data_ptr(): o.untyped_storage().nbytes()
            for o in gc.get_objects()
            if isinstance(o, torch.Tensor) and 400 in o.shape
        }
        (basis,) = [o for o in gc.get_objects() if isinstance(o, KrylovBasis)]
        held = {b.untyped_storage().data_ptr() for b in basis._blocks} | known
        assert V.untyped_storage().data_ptr() in held  # the row itself, not a copy
        outside.append(sum(size for ptr, size in live.items() if ptr not in held))
        return V @ A32

    r = lanczos(matmat, 400, k=5, tol=1e-4, basis="float32")
    assert r.all_converged and len(outside) == r.matvecs and max(outside) == 0, outside
    np.testing.assert_allclose(r.eigenvalues, ev[:5].numpy(), rtol=1e-5)
    v = r.eigenvectors.double()
    residual = (v @ A - torch.as_tensor(r.eigenvalues)[:, None] * v).norm(dim=1) / torch.as_tensor(r.eigenvalues)
    assert float(residual.max()) < 1e-4


def test_float32_vectors_are_dotted_in_float64():
    """Lanczos's alphas and norms: a float32 dot of 3M entries is off by 2e-4 (its tolerance), not these."""
    from landscape.curvature.lanczos import dot, norm

    a = torch.full((3_000_000,), 0.1, dtype=torch.float32)
    # the truth in closed form: a float64 dot of the 3M entries is itself off by 4e-12 on some machines (MKL on AMD)
    exact = 3_000_000 * float(a[0]) ** 2
    assert abs(dot(a, a) - exact) < 1e-12 * exact
    assert norm(a) == pytest.approx(exact**0.5, rel=1e-13)


def test_auto_basis_is_float64_only_while_it_fits():
    from landscape.curvature.basis import basis_dtype

    assert basis_dtype("auto", 100, 1000, 2 << 30) == torch.float64
    assert basis_dtype("auto", 100, 10_000_000, 2 << 30) == torch.float32  # 8 GB in float64
    assert basis_dtype("float64", 100, 10_000_000, 2 << 30) == torch.float64


def test_the_lanczos_basis_is_capped_to_the_memory_and_said():
    settings = CurvatureSettings(top_k=5)
    n = 124_000_000
    rows, said = rows_that_fit(settings, n, room=10 << 30)  # float32 rows of 0.5 GB: 21 fit
    assert rows == (10 << 30) // (4 * n) and said is not None and "a basis of 21 vectors" in said
    assert "restarts" in said and "after 100 products" in said
    assert rows_that_fit(settings, 1000, room=10 << 30) == (None, None)
    # never below what a restart needs: the wanted pairs and 3 more
    assert rows_that_fit(settings, n, room=1)[0] == 8
    assert rows_that_fit(CurvatureSettings(top_k=5, which="both"), n, room=1)[0] == 13


@pytest.mark.parametrize(("which", "rows"), [("largest", 12), ("both", 20)])
def test_thick_restart_in_a_capped_basis_finds_the_exact_eigenpairs(monkeypatch, which, rows):
    """A basis of 12 rows (20 for both ends, whose bottom lies in the bulk) restarts, keeping its best Ritz vectors, and
    reaches the eigenpairs of the full decomposition (eigh) that an uncapped run reaches; the basis
    never holds more than its cap."""
    A, ev = spectrum_matrix(400, seed=3)
    exact = torch.linalg.eigvalsh(A).numpy()
    most = 0
    append = basis_module.KrylovBasis.append

    def counted(self, q):
        nonlocal most
        append(self, q)
        most = max(most, self.rows)

    monkeypatch.setattr(basis_module.KrylovBasis, "append", counted)
    capped = lanczos(lambda V: V @ A, 400, k=3, which=which, tol=1e-9, max_iter=400, max_rows=rows, seed=1)
    assert most == rows and capped.all_converged and capped.matvecs > rows
    top = exact[::-1][:3]
    want = np.concatenate([top, exact[:3]]) if which == "both" else top
    np.testing.assert_allclose(capped.eigenvalues, want, rtol=1e-8, atol=1e-8)
    v = capped.eigenvectors
    assert v is not None
    residual = (v @ A - torch.as_tensor(capped.eigenvalues)[:, None] * v).norm(dim=1)
    assert float(residual.max()) < 1e-6 * float(ev.abs().max())
    np.testing.assert_allclose((v @ v.T).numpy(), np.eye(len(want)), atol=1e-8)
    whole = lanczos(lambda V: V @ A, 400, k=3, which=which, tol=1e-9, max_iter=400, seed=1)
    np.testing.assert_allclose(capped.eigenvalues, whole.eigenvalues, rtol=1e-9)

    wrote: list[bool] = []

    def into_rows(V: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:  # as CurvatureOperator.matmat
        wrote.append(out is not None)
        return V @ A if out is None else out.copy_(V @ A)

    written = lanczos(into_rows, 400, k=3, which=which, tol=1e-9, max_iter=400, max_rows=rows, seed=1, into=True)
    np.testing.assert_array_equal(written.eigenvalues, capped.eigenvalues)  # the products written into the next row
    assert written.matvecs == capped.matvecs and torch.equal(written.eigenvectors, v)
    assert sum(wrote) > len(wrote) / 2 and not all(wrote)  # into the basis, but not where a restart follows


def test_a_capped_basis_that_runs_out_of_products_says_so():
    A, _ = spectrum_matrix(400, seed=3)
    r = lanczos(lambda V: V @ A, 400, k=5, tol=1e-12, max_iter=12, max_rows=9, seed=1)
    assert r.matvecs == r.iterations == 12 and not r.all_converged


def test_hutchpp_probes_in_groups_give_the_same_estimate():
    A, ev = spectrum_matrix(300, seed=2)
    widths: list[int] = []
    dtypes: set[torch.dtype] = set()

    def matmat(V: torch.Tensor) -> torch.Tensor:
        widths.append(V.shape[0])
        dtypes.add(V.dtype)
        return V.to(A.dtype) @ A

    whole = hutchpp(matmat, 300, matvecs=30, seed=4)
    assert max(widths) == whole.probes and whole.probes >= 9
    widths.clear()
    dtypes.clear()
    # a float32 basis: probes and products in float32, 8 bytes per entry for both
    one_by_one = hutchpp(matmat, 300, matvecs=30, seed=4, group_bytes=8 * 300, basis="float32")
    assert max(widths) == 1 and one_by_one.matvecs == whole.matvecs == 30
    assert dtypes == {torch.float32}  # the probes too: half the memory of float64 ones
    assert one_by_one.value == pytest.approx(whole.value, rel=1e-6)
    assert one_by_one.std_error == pytest.approx(whole.std_error, rel=1e-4)
    assert abs(whole.value - float(ev.sum())) < 4 * whole.std_error


def test_slq_without_reorthogonalization_keeps_an_accurate_density():
    """No basis kept (not even one probe's fits): the tridiagonals lose orthogonality, but the smoothed density
    stays as close to the exact one as with full re-orthogonalization, and the low moments agree."""
    n = 2000
    A, ev = spectrum_matrix(n, seed=3)
    full = slq(lambda V: V @ A, n, probes=6, steps=60, seed=1)
    bare = slq(lambda V: V @ A, n, probes=6, steps=60, seed=1, basis_bytes=20 * n * 8)
    assert full.reorthogonalized and not bare.reorthogonalized
    assert bare.alpha.shape == (6, 60) and bare.matvecs == 360 and np.isfinite(bare.alpha).all()
    # without re-orthogonalization converged outliers repeat (ghosts), splitting their weight
    nodes, weights = quadrature(bare.alpha, bare.beta)
    assert max(int(np.sum(np.abs(t - 50.0) < 1e-6)) for t in nodes) >= 2
    from landscape.curvature import density_from_lanczos

    d_full = density_from_lanczos(full.alpha, full.beta)
    d_bare = density_from_lanczos(bare.alpha, bare.beta, grid=d_full.grid, sigma=d_full.sigma)
    truth = exact_density(ev.numpy(), d_full.grid, d_full.sigma)
    dist_full = l1_distance(d_full.grid, d_full.values, truth)
    dist_bare = l1_distance(d_full.grid, d_bare.values, truth)
    assert dist_bare < max(2 * dist_full, 0.05), (dist_bare, dist_full)
    # moments: each probe's sum_j tau_j theta_j^k is v^T A^k v, the same from both runs (same probes)
    for k in (1, 2, 3):
        m_full = np.mean([np.sum(w * t**k) for t, w in zip(*quadrature(full.alpha, full.beta))])
        m_bare = np.mean([np.sum(w * t**k) for t, w in zip(nodes, weights)])
        assert m_bare == pytest.approx(m_full, rel=1e-6)


def test_slq_probes_drawn_one_by_one_when_they_do_not_fit_together():
    n = 500
    A, _ = spectrum_matrix(n, seed=4)
    widths: list[int] = []

    def matmat(V: torch.Tensor) -> torch.Tensor:
        widths.append(V.shape[0])
        return V @ A

    runs = slq(matmat, n, probes=4, steps=10, seed=0, basis_bytes=2 * n * 8)  # not even 4 probe vectors together
    assert max(widths) == 1 and not runs.reorthogonalized and np.isfinite(runs.alpha).all()


def test_roughness_over_direction_chunks_equals_all_directions_at_once():
    p = sample_problem("mlp", samples=200)
    whole = compute_roughness(p, random_directions(7, p.theta, p.layout, seed=5), 0.2, 6, strategy="loop")
    chunked = RandomDirections(7, p.theta, p.layout, seed=5, chunk=3)
    assert [c.shape[0] for c in chunked.chunks()] == [3, 3, 1]
    res = compute_roughness(p, chunked, 0.2, 6, strategy="loop")
    torch.testing.assert_close(res.loss, whole.loss, rtol=0, atol=0)
    assert res.index.ri == whole.index.ri
    # a resumed run: the first chunk and part of the second known, the rest evaluated
    done = torch.zeros(7 * 7, dtype=torch.bool)
    done[:25] = True
    seen: list[torch.Tensor] = []
    known = KnownPoints(whole.loss.flatten().clone(), None, done)
    part = compute_roughness(p, chunked, 0.2, 6, strategy="auto", known=known, on_chunk=lambda i, v: seen.append(i))
    assert sorted(torch.cat(seen).tolist()) == list(range(25, 49))
    torch.testing.assert_close(part.loss, whole.loss, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize(
    "norm,ignore", [("filter", "biasbn"), ("layer", "none"), ("model", "none"), ("none", "biasbn")]
)
def test_directions_drawn_tensor_by_tensor_equal_one_whole_draw(monkeypatch, norm, ignore):
    import landscape.directions as directions

    p = sample_problem("cnn", samples=16)
    gen = torch.Generator().manual_seed(9)
    whole = directions.normalize(directions.gaussian(p.layout, gen), p.theta.double(), p.layout, norm, ignore)
    monkeypatch.setattr(directions, "DRAW", 48)  # draws that straddle every tensor boundary
    out = torch.empty(p.layout.size, dtype=torch.float64)
    directions.normalized_gaussian_into(out, p.theta, p.layout, torch.Generator().manual_seed(9), norm, ignore)
    torch.testing.assert_close(out, whole, rtol=1e-15 if norm != "model" else 1e-14, atol=0)
    f32 = random_directions(1, p.theta, p.layout, seed=9, norm=norm, ignore=ignore, dtype=torch.float32)[0]
    torch.testing.assert_close(f32, whole.float(), rtol=2e-7, atol=0)


def _sweep_file(path):
    import h5py

    with h5py.File(path, "r") as f:
        return f["sweep/loss"][()], f["sweep/done"][()]


def test_bfloat16_directions_are_evaluated_as_stored_and_resume_alike(cli, tmp_path):
    import h5py

    from landscape.io.results import read_axes
    from landscape.measures import loss_at

    args = ("sweep", "--sample", "mlp", "--x", "-1:1:4", "--y", "-1:1:3", "--store-dtype", "bfloat16")
    whole = tmp_path / "whole.h5"
    assert cli(*args, "--strategy", "loop", "-o", whole).code == 0
    axes = read_axes(whole)
    assert axes.directions.dtype == torch.float32
    assert torch.equal(axes.directions, axes.directions.bfloat16().float())  # bfloat16 values, widened exactly
    with h5py.File(whole, "r") as f:
        assert f["axes/x"].dtype == np.uint16 and f["axes/x"].attrs["stored_as"] == "bfloat16"
    loss, done = _sweep_file(whole)
    p = sample_problem("mlp")
    xs, ys = np.linspace(-1, 1, 4), np.linspace(-1, 1, 3)
    for i, j in [(0, 0), (3, 2), (1, 1)]:
        point = p.theta + float(xs[i]) * axes.directions[0] + float(ys[j]) * axes.directions[1]
        assert loss[i, j] == pytest.approx(loss_at(p, point), rel=1e-5)
    cut = tmp_path / "cut.h5"
    cut.write_bytes(whole.read_bytes())
    with h5py.File(cut, "r+") as f:  # a run killed halfway
        f["sweep/done"][2:] = False
        f["sweep/loss"][2:] = np.nan
        f.attrs["complete"] = False
    assert cli(*args, "--strategy", "loop", "-o", cut, "--resume").code == 0
    np.testing.assert_array_equal(_sweep_file(cut)[0], loss)


def test_bfloat16_eigenvectors_open_and_serve_as_axes(cli, tmp_path):
    from landscape.io.curvature import read_curvature

    out = tmp_path / "h.h5"
    assert cli("hessian", "--sample", "mlp", "--top-k", "2", "--store-dtype", "bfloat16", "-o", out).code == 0
    full = tmp_path / "h32.h5"
    assert cli("hessian", "--sample", "mlp", "--top-k", "2", "-o", full).code == 0
    v16, v32 = (read_curvature(f)["eigenvectors"] for f in (out, full))
    assert v16.dtype == np.float32 and np.abs(v16 - v32).max() <= 2**-8 * np.abs(v32).max()
    res = cli("sweep", "--sample", "mlp", "--axes-from", out, "--x", "-1:1:3", "-o", tmp_path / "s.h5")
    assert res.code == 0, res.err
    assert cli("info", out).code == 0
    bad = cli("hessian", "--sample", "mlp", "--store-dtype", "float16", "-o", tmp_path / "x.h5")
    assert bad.code != 0 and "--store-dtype 'float16'" in bad.err


def test_a_trace_sketch_cut_to_the_memory_spends_its_products_on_probes():
    from landscape.curvature.analysis import sketch_that_fits

    A, ev = spectrum_matrix(300, seed=6)
    full = hutchpp(lambda V: V @ A, 300, matvecs=30, seed=2)
    cut = hutchpp(lambda V: V @ A, 300, matvecs=30, seed=2, max_sketch=5)
    assert full.sketch <= 20 and full.sketch + full.probes == 29  # one product: the sketch's pilot
    assert (cut.sketch, cut.probes) == (5, 24)
    assert cut.matvecs == full.matvecs == 30
    assert abs(cut.value - float(ev.sum())) < 4 * cut.std_error
    settings = CurvatureSettings(trace=True, trace_matvecs=60)
    assert sketch_that_fits(settings, 124_000_000, room=10 << 30)[0] == (10 << 30) // (4 * 124_000_000)
    assert sketch_that_fits(settings, 1000, room=10 << 30) == (None, None)


def test_basis_options_from_the_command_line_give_the_exact_eigenvalues(cli, tmp_path):
    from landscape.io.curvature import read_curvature

    p = sample_problem("mlp", samples=200)

    def f(t):
        out = torch.func.functional_call(p.model, (p.layout.unflatten(t), p.buffers), (p.x,))
        return p.loss_fn(out, p.y)

    exact = torch.linalg.eigvalsh(torch.func.hessian(f)(p.theta)).flip(0)[:3].numpy()
    load = ("--sample", "mlp", "--samples", "200", "--dtype", "float64", "--top-k", "3", "--tol", "1e-8")
    for extra in (("--basis-dtype", "float32"), ("--basis-dtype", "float64", "--basis-on-host")):
        out = tmp_path / f"{extra[1]}.h5"
        res = cli("hessian", *load, *extra, "-o", out)
        assert res.code == 0, res.err
        np.testing.assert_allclose(read_curvature(out)["eigenvalues"], exact, rtol=1e-5)
    bad = cli("hessian", "--sample", "mlp", "--basis-dtype", "float16", "-o", tmp_path / "x.h5")
    assert bad.code != 0 and "--basis-dtype 'float16'" in bad.err


def test_a_model_whose_basis_does_not_fit_restarts_to_the_exact_eigenvalues(monkeypatch):
    """`ls.hessian` on a machine with room for 9 basis vectors (a real model's Hessian, exact by
    torch.func.hessian + eigh): it says the basis is capped, restarts, and converges to the truth."""
    import landscape as ls
    import landscape.curvature.analysis as analysis

    p = sample_problem("mlp", samples=200)

    def f(t):
        out = torch.func.functional_call(p.model, (p.layout.unflatten(t), p.buffers), (p.x,))
        return p.loss_fn(out, p.y)

    exact = torch.linalg.eigvalsh(torch.func.hessian(f)(p.theta)).flip(0)[:3].numpy()
    monkeypatch.setattr(analysis, "basis_room", lambda settings, device, world=None: (device, 9 * 8 * p.theta.numel()))
    said: list[str] = []
    r = ls.hessian(p, top_k=3, tol=1e-8, max_iter=300, say=said.append)
    assert any("a basis of 9 vectors fits in memory" in line for line in said), said
    eigen = r.model.eigen
    assert eigen is not None and eigen.all_converged and eigen.matvecs > 9
    np.testing.assert_allclose(eigen.eigenvalues, exact, rtol=1e-6)


def test_a_large_model_keeps_less_freed_memory():
    """The CLI keeps freed blocks up to 1 GiB for reuse (small models' temporaries are not page-faulted
    in again), but not the weight-sized vectors of a large model, whose kept holes fragmented the heap
    (a 124M-parameter Hessian was killed at 24.4 GB; 20.9 GiB with them handed back)."""
    from landscape.host import KEEP_BYTES, LARGE_MODEL_KEEP_BYTES, kept_bytes

    assert kept_bytes(11_000_000 * 4) == KEEP_BYTES  # ResNet-18 in float32: kept as before
    big = 124_000_000 * 4
    assert kept_bytes(big) == LARGE_MODEL_KEEP_BYTES < big  # a weight-sized vector goes back to the kernel
    assert kept_bytes(10 * KEEP_BYTES) == LARGE_MODEL_KEEP_BYTES


def test_vmap_stacks_points_within_two_weight_vectors():
    """The vmap strategies' stacked points take at most 2 P or 128 MB on any device (so a sweep holds at most
    4 P-sized vectors beyond a forward pass): a 9M-parameter model gets one point per call, and vmap is
    not built for it; a small model still stacks many."""
    from torch import nn

    from landscape import Problem
    from landscape.strategies import build_strategy
    from landscape.strategies.base import NotApplicable, points_per_call

    torch.manual_seed(0)
    x, y = torch.randn(8, 3000), torch.randint(0, 10, (8,))
    large = Problem(nn.Sequential(nn.Linear(3000, 3000), nn.ReLU(), nn.Linear(3000, 10)), (x, y))
    assert large.layout.size > 9_000_000
    assert points_per_call(large, 1 << 30) == 1
    assert points_per_call(large, 48 << 30) == 1  # a GPU's budget (60% of its free memory) stacks no more
    directions = torch.zeros(2, large.layout.size)
    with pytest.raises(NotApplicable, match="one point per call"):
        build_strategy("vmap", large, directions, points_per_call=points_per_call(large, 1 << 30))
    small = sample_problem("mlp")
    assert points_per_call(small, 1 << 30) == 64


def test_the_trace_sketch_leaves_room_for_the_eigenvectors_held_beside_it(monkeypatch):
    """top-k with --trace: Lanczos's eigenvectors stay held while Hutch++ runs, so its sketch takes the rows
    they leave of the basis room (the run's peak stays that of Lanczos), and the trace is still right."""
    import landscape.curvature.analysis as analysis
    from landscape.curvature.analysis import estimate_block

    p = sample_problem("mlp", samples=200)
    rows = 12
    monkeypatch.setattr(analysis, "basis_room", lambda settings, device, world=None: (device, rows * 8 * p.layout.size))
    both = estimate_block(p, CurvatureSettings(top_k=3, trace=True, trace_matvecs=60))
    alone = estimate_block(p, CurvatureSettings(top_k=0, trace=True, trace_matvecs=60))
    assert both.eigen is not None and both.eigen.eigenvectors is not None
    assert both.eigen.eigenvectors.dtype == torch.float64  # rows of the room's size
    assert (both.trace.sketch, alone.trace.sketch) == (rows - 3, rows)
    assert both.trace.matvecs == alone.trace.matvecs == 60

    def f(t):
        out = torch.func.functional_call(p.model, (p.layout.unflatten(t), p.buffers), (p.x,))
        return p.loss_fn(out, p.y)

    exact = float(torch.trace(torch.func.hessian(f)(p.theta)))
    assert abs(both.trace.value - exact) < 4 * both.trace.std_error + 1e-9 * abs(exact)
