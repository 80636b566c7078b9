"""Curvature against exact truth: torch.func.hessian + eigh in float64 on the samples, closed forms for linreg."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import sample_problem

from landscape import Problem
from landscape.curvature import CurvatureOperator, density_from_lanczos, hutchpp, lanczos, layer_blocks, slq
from landscape.curvature.analysis import CurvatureSettings, estimate_block, run_curvature
from landscape.curvature.dense import exact_runs
from landscape.curvature.density import exact_density, l1_distance, quadrature
from landscape.curvature.trace import rademacher
from landscape.errors import LandscapeError
from landscape.problem import make_problem

_CACHE: dict = {}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread: on 2 shared cores, two spinning threads made products 10-100x slower and noisy."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def exact(name: str, samples: int | None):
    """(problem, H) with the exact Hessian of the dataset-mean loss by torch.func.hessian (float64), cached."""
    key = (name, samples)
    if key not in _CACHE:
        p = sample_problem(name, samples=samples)

        def f(t):
            out = torch.func.functional_call(p.model, (p.layout.unflatten(t), p.buffers), (p.x,))
            return p.loss_fn(out, p.y)

        _CACHE[key] = (p, torch.func.hessian(f)(p.theta))
    return _CACHE[key]


def linreg_closed_form(p) -> torch.Tensor:
    """F.mse_loss mean over N*1 outputs of [x,1] @ [w,b]: H = 2/N * Xa^T Xa, parameters ordered (weight, bias)."""
    xa = torch.cat([p.x, torch.ones(p.n, 1, dtype=p.x.dtype)], dim=1)
    return 2.0 / p.n * xa.T @ xa


# ---- operators ------------------------------------------------------------------------------


def test_linreg_operator_matches_closed_form_and_survives_jvp_failure():
    p = sample_problem("linreg")
    H = linreg_closed_form(p)
    op = CurvatureOperator(p)
    V = torch.randn(4, op.size, dtype=torch.float64)
    assert torch.allclose(op.matmat(V), V @ H, rtol=1e-12, atol=1e-12)
    # jvp(grad(mse)) on a linear model raised "ZeroTensors are immutable" in torch 2.13: it must be dropped, not fatal
    if "forward-over-reverse" in op.dropped:
        assert op.method != "forward-over-reverse"
    fwd = CurvatureOperator(p, method="double-backward")
    assert torch.allclose(fwd.matmat(V), V @ H, rtol=1e-12, atol=1e-12)


def test_uneven_batches_are_weighted_exactly():
    p, H = exact("mlp", 120)
    V = torch.randn(3, H.shape[0], dtype=torch.float64)
    for method in ("double-backward", "forward-over-reverse"):
        op = CurvatureOperator(p, batch_size=7, method=method)  # 120 = 17*7 + 1: last batch of one
        assert torch.allclose(op.matmat(V), V @ H, rtol=1e-10, atol=1e-12)


def test_products_written_into_given_rows_are_the_products():
    """`matmat(V, out=rows)` (Lanczos writes each product into its basis's next row, with no product
    vector beside the basis): the same numbers, summed over uneven batches, in out's dtype, for each
    curvature and Hessian method; V is left as it was."""
    p, H = exact("mlp", 120)
    V = torch.randn(3, H.shape[0], dtype=torch.float64)
    kept = V.clone()
    for curvature, method in (("hessian", "double-backward"), ("hessian", "forward-over-reverse"),
                              ("hessian", "auto"), ("ggn", "auto"), ("fisher", "auto")):  # fmt: skip
        for batch_size in (7, 120):
            op = CurvatureOperator(p, batch_size=batch_size, curvature=curvature, method=method)
            plain = op.matmat(V)
            if curvature == "hessian":
                assert torch.allclose(plain, V @ H, rtol=1e-10, atol=1e-12)
            rows = torch.full_like(V, math.nan)
            assert op.matmat(V, out=rows) is rows
            assert torch.allclose(rows, plain, rtol=1e-12, atol=1e-14), (curvature, method, batch_size)
            one = torch.full((1, V.shape[1]), math.nan, dtype=torch.float32)
            assert torch.allclose(op.matmat(V[:1], out=one), plain[:1].float(), rtol=1e-6, atol=1e-7)
            assert torch.equal(V, kept)
            op.close()


class _Tagger(nn.Module):
    """Token embeddings, a 2-layer LSTM, a class per sequence from its last step."""

    def __init__(self):
        super().__init__()
        self.emb, self.rnn, self.out = (
            nn.Embedding(30, 6),
            nn.LSTM(6, 8, num_layers=2, batch_first=True),
            nn.Linear(8, 3),
        )

    def forward(self, ids):
        return self.out(self.rnn(self.emb(ids))[0][:, -1])


def test_lstm_products_in_float32_are_the_exact_hessians():
    """An LSTM in float32 on the CPU, where PyTorch picks oneDNN's kernel, which has no forward-mode
    derivative: the products run through PyTorch's own LSTM, so every method gives the exact Hessian's
    products (float64 truth by torch.func.hessian), forward-over-reverse among them."""
    torch.manual_seed(0)
    model, ids, y = _Tagger(), torch.randint(0, 30, (40, 7)), torch.randint(0, 3, (40,))
    p = Problem(model, (ids, y), loss="cross-entropy", dtype="float32")
    truth = Problem(model, (ids, y), loss="cross-entropy", dtype="float64")

    def f(t):
        out = torch.func.functional_call(truth.model, (truth.layout.unflatten(t), truth.buffers), (truth.x,))
        return truth.loss_fn(out, truth.y)

    H = torch.func.hessian(f)(truth.theta)
    V = torch.randn(3, H.shape[0], dtype=torch.float64)
    want = V @ H
    assert torch.backends.mkldnn.enabled
    for method, batch_size in (("double-backward-cached", None), ("double-backward", 16), ("forward-over-reverse", 16)):
        op = CurvatureOperator(p, method=method, batch_size=batch_size)
        got = op.matmat(V).double()
        assert (got - want).norm() <= 1e-5 * want.norm(), method
        op.close()
    assert torch.backends.mkldnn.enabled  # set back after each LSTM call


class _Prototypes(nn.Module):
    """Class scores from distances to learned prototypes: torch.cdist has no forward-mode derivative."""

    def __init__(self):
        super().__init__()
        self.embed, self.protos = nn.Linear(5, 4), nn.Parameter(torch.randn(3, 4))

    def forward(self, x):
        return -torch.cdist(self.embed(x), self.protos)


def test_a_model_without_forward_mode_derivatives_is_told_to_use_double_backward():
    """`--method forward-over-reverse` on an operation with no forward-mode derivative: the error says the
    double backward needs none (it used to blame missing second derivatives, which this model has); auto
    takes the double backward and gives the exact Hessian's products."""
    torch.manual_seed(0)
    p = Problem(_Prototypes(), (torch.randn(30, 5), torch.randint(0, 3, (30,))), dtype="float64")
    with pytest.raises(
        LandscapeError, match=r"forward-mode derivative in PyTorch: --method double-backward needs none"
    ):
        CurvatureOperator(p, method="forward-over-reverse")

    def f(t):
        return p.loss_fn(torch.func.functional_call(p.model, (p.layout.unflatten(t), p.buffers), (p.x,)), p.y)

    V = torch.randn(2, p.layout.size, dtype=torch.float64)
    H = torch.func.jacrev(torch.func.jacrev(f))(p.theta)  # torch.func.hessian is forward-over-reverse too
    assert torch.allclose(CurvatureOperator(p).matmat(V), V @ H, rtol=1e-10, atol=1e-12)


def test_a_loss_without_second_derivatives_is_told_the_empirical_fisher_needs_none():
    """A multi-class hinge loss (F.multi_margin_loss: PyTorch has no derivative of its backward) fails every
    Hessian product, the kept graph's and the others' alike: the error names the Fisher, which then gives
    (1/N) sum_i g_i g_i^T from the per-sample gradients, without PyTorch's warning that vmap loops over it."""
    torch.manual_seed(0)
    x, y = torch.randn(20, 5), torch.randint(0, 3, (20,))
    p = Problem(
        nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)), (x, y), F.multi_margin_loss, dtype="float64"
    )
    for method in ("auto", "double-backward-cached"):
        with pytest.raises(LandscapeError, match=r"without second derivatives in PyTorch: the empirical Fisher"):
            CurvatureOperator(p, method=method)

    def sample_loss(t, xi, yi):
        out = torch.func.functional_call(p.model, (p.layout.unflatten(t), p.buffers), (xi[None],))
        return F.multi_margin_loss(out, yi[None])

    G = torch.stack([torch.func.grad(sample_loss)(p.theta, p.x[i], p.y[i]) for i in range(len(x))])
    V = torch.randn(2, p.layout.size, dtype=torch.float64)
    with warnings.catch_warnings(record=True) as caught:  # vmapped per-sample gradients: PyTorch's loop, unsaid
        warnings.simplefilter("always")
        got = CurvatureOperator(p, curvature="fisher").matmat(V)
    assert torch.allclose(got, V @ (G.T @ G / len(x)), rtol=1e-10, atol=1e-12)
    assert not [w for w in caught if "performance drop" in str(w.message)]


def test_batched_and_looped_products_agree():
    p, H = exact("mlp", 120)
    V = torch.randn(9, H.shape[0], dtype=torch.float64)
    assert CurvatureOperator(p)._batched is False  # on a CPU one vector at a time (batched ran 2-4x slower)
    for batched in (None, True):  # None: the first two chunks time batched against looped (a GPU's way)
        op = CurvatureOperator(p, max_vectors=4, batched_vectors=batched)
        op._batched = batched  # the CPU's default set aside, to run the GPU's path here
        out = op.matmat(V)
        assert op._batched is not None
        assert torch.allclose(out, V @ H, rtol=1e-10, atol=1e-12)
        assert op.matvecs == 9


class _Noisy(nn.Module):
    def __init__(self, on: bool):
        super().__init__()
        self.lin, self.on = nn.Linear(4, 3), on

    def forward(self, x):
        return F.dropout(self.lin(x), p=0.5, training=self.on)  # dropout even in eval mode, when on


@pytest.mark.parametrize("batch_size", [None, 7])  # the kept graph's check; the re-forwarding methods' check
def test_nondeterministic_loss_is_refused(batch_size):
    x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    with pytest.raises(LandscapeError, match="^data: the loss is not deterministic"):  # by the problem's own check
        make_problem(_Noisy(True), _Noisy(True).state_dict(), x, y, F.cross_entropy, device="cpu", dtype=torch.float64)
    model = _Noisy(False)  # random only after that check: the operator's own (the kept graph's, the re-forwarding's)
    p = make_problem(model, model.state_dict(), x, y, F.cross_entropy, device=torch.device("cpu"), dtype=torch.float64)
    model.on = True
    with pytest.raises(LandscapeError, match="not deterministic"):
        CurvatureOperator(p, batch_size=batch_size)


def test_kept_graph_is_taken_after_one_product():
    p = sample_problem("mlp", samples=60)
    op = CurvatureOperator(p)
    assert op.method == "double-backward-cached" and op.setup_matvecs == 1
    assert op.gradient_seconds is None  # the ratio is a diagnostic, timed only when asked for
    assert 0 < op.info()["product_to_gradient_ratio"] < math.inf and op.gradient_seconds is not None
    v, hv = op.probe  # the set-up's product, for Lanczos to reuse
    assert torch.allclose(hv, op.matvec(v), rtol=1e-12, atol=0)


def test_lanczos_reuses_a_given_first_product():
    n = 40
    gen = torch.Generator().manual_seed(0)
    B = torch.randn(n, n, generator=gen, dtype=torch.float64)
    A = B + B.T
    calls: list[int] = []

    def mm(V):
        calls.append(V.shape[0])
        return V @ A

    ref = lanczos(mm, n, k=3, tol=1e-10, seed=3)
    made = sum(calls)
    calls.clear()
    v = torch.randn(n, generator=torch.Generator().manual_seed(3), dtype=torch.float64)  # lanczos' own seeded start
    got = lanczos(mm, n, k=3, tol=1e-10, start=(2.5 * v, 2.5 * v @ A))
    assert sum(calls) == made - 1 and got.matvecs == ref.matvecs
    np.testing.assert_allclose(got.eigenvalues, ref.eigenvalues, rtol=1e-12)
    np.testing.assert_allclose(got.eigenvalues, torch.linalg.eigvalsh(A).flip(0)[:3].numpy(), rtol=1e-9)


def test_ggn_matches_closed_form_and_is_psd():
    p = sample_problem("mlp", samples=60)
    op = CurvatureOperator(p, curvature="ggn")

    def out_fn(t):
        return torch.func.functional_call(p.model, (p.layout.unflatten(t), p.buffers), (p.x,))

    J = torch.func.jacrev(out_fn)(p.theta)  # [N, C, P]
    prob = torch.softmax(out_fn(p.theta), dim=-1)  # cross-entropy mean: H_out,n = (diag p - p p^T) / N
    Hout = (torch.diag_embed(prob) - prob[:, :, None] * prob[:, None, :]) / p.n
    G = torch.einsum("ncp,ncd,ndq->pq", J, Hout, J)
    V = torch.randn(3, op.size, dtype=torch.float64)
    assert torch.allclose(op.matmat(V), V @ G, rtol=1e-9, atol=1e-12)
    ev = torch.linalg.eigvalsh(G)
    r = lanczos(op.matmat, op.size, k=3, tol=1e-8)
    np.testing.assert_allclose(r.eigenvalues, ev.flip(0)[:3].numpy(), rtol=1e-6)
    assert float(ev.min()) > -1e-10 * float(ev.max())


def test_ggn_equals_hessian_for_linear_regression():
    p = sample_problem("linreg")
    H = linreg_closed_form(p)
    op = CurvatureOperator(p, curvature="ggn")
    V = torch.randn(3, op.size, dtype=torch.float64)
    assert torch.allclose(op.matmat(V), V @ H, rtol=1e-12, atol=1e-12)


def per_sample_fisher(p) -> torch.Tensor:
    """(1/N) sum_i g_i g_i^T from a plain loop of autograd gradients of each sample's own loss."""
    rows = []
    for i in range(p.n):
        t = p.theta.detach().clone().requires_grad_(True)
        out = torch.func.functional_call(p.model, (p.layout.unflatten(t), p.buffers), (p.x[i : i + 1],))
        rows.append(torch.autograd.grad(p.loss_fn(out, p.y[i : i + 1]), t)[0])
    G = torch.stack(rows)
    return G.T @ G / p.n


def test_fisher_of_linear_regression_matches_closed_form():
    p = sample_problem("linreg")  # loss (x.w + b - y)^2 per sample: g_i = 2 r_i [x_i, 1], F = 4/N Xa^T diag(r^2) Xa
    xa = torch.cat([p.x, torch.ones(p.n, 1, dtype=p.x.dtype)], dim=1)
    r = (p.model(p.x) - p.y).reshape(-1).detach()
    F_exact = 4.0 / p.n * xa.T @ (r[:, None] ** 2 * xa)
    for batch_size in (None, 37):  # one batch (kept) and uneven batches
        op = CurvatureOperator(p, curvature="fisher", batch_size=batch_size)
        V = torch.randn(4, op.size, dtype=torch.float64)
        assert op.method == "fisher-cached"
        assert torch.allclose(op.matmat(V), V @ F_exact, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("name,samples", [("mlp", 50), ("cnn", 24)])
def test_fisher_matches_a_per_sample_loop_cached_or_not(monkeypatch, name, samples):
    p = sample_problem(name, samples=samples)
    F_exact = per_sample_fisher(p)
    ev = torch.linalg.eigvalsh(F_exact)
    assert float(ev.min()) > -1e-12 * float(ev.max())  # PSD
    cached = CurvatureOperator(p, curvature="fisher", batch_size=16)
    monkeypatch.setattr("landscape.curvature.operators.FISHER_CACHE_BYTES", 0)
    fresh = CurvatureOperator(p, curvature="fisher", batch_size=16)
    assert (cached.method, fresh.method) == ("fisher-cached", "fisher")
    V = torch.randn(3, cached.size, dtype=torch.float64)
    for op in (cached, fresh):
        assert torch.allclose(op.matmat(V), V @ F_exact, rtol=1e-10, atol=1e-14)
    r = lanczos(cached.matmat, cached.size, k=3, tol=1e-8)
    np.testing.assert_allclose(r.eigenvalues, ev.flip(0)[:3].numpy(), rtol=1e-7)


def test_fisher_of_a_model_vmap_cannot_batch_falls_back_to_a_loop():
    class Branchy(nn.Module):  # .item() in forward: vmap raises, the per-sample loop does not
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(x) if float(x.sum().item()) > -1e9 else -self.lin(x)

    torch.manual_seed(0)
    model = Branchy().double()
    x, y = torch.randn(20, 4, dtype=torch.float64), torch.randint(0, 3, (20,))
    p = make_problem(model, model.state_dict(), x, y, F.cross_entropy, device=torch.device("cpu"), dtype=torch.float64)
    op = CurvatureOperator(p, curvature="fisher")
    V = torch.randn(2, op.size, dtype=torch.float64)
    assert torch.allclose(op.matmat(V), V @ per_sample_fisher(p), rtol=1e-10, atol=1e-14)


# ---- Lanczos --------------------------------------------------------------------------------


@pytest.mark.parametrize("name,samples", [("mlp", 300), ("linreg", None)])
def test_top5_eigenpairs_match_exact(name, samples):
    p, H = exact(name, samples)
    if name == "linreg":
        assert torch.allclose(H, linreg_closed_form(p), rtol=1e-12, atol=1e-12)
    ev = torch.linalg.eigvalsh(H).flip(0).numpy()
    op = CurvatureOperator(p)
    r = lanczos(op.matmat, op.size, k=5, tol=1e-6)
    assert r.all_converged
    np.testing.assert_allclose(r.eigenvalues, ev[:5], rtol=1e-6)
    V = r.eigenvectors
    true_res = (V @ H - torch.from_numpy(r.eigenvalues)[:, None] * V).norm(dim=1).numpy()
    assert np.all(true_res <= 1e-6 * np.abs(r.eigenvalues) + 1e-12)
    np.testing.assert_allclose(r.residuals, true_res, rtol=1e-2, atol=1e-11)  # the stored residual is the true one
    assert r.matvecs <= 60


def test_lanczos_both_ends_of_an_indefinite_matrix():
    gen = torch.Generator().manual_seed(3)
    Qm, _ = torch.linalg.qr(torch.randn(300, 300, generator=gen, dtype=torch.float64))
    lam = torch.cat([torch.tensor([50.0, 20.0, 10.0, -30.0, -8.0]), torch.linspace(-1, 1, 295)]).to(torch.float64)
    A = Qm @ torch.diag(lam) @ Qm.T
    r = lanczos(lambda V: V @ A, 300, k=2, which="both", tol=1e-9)
    np.testing.assert_allclose(r.eigenvalues, [50.0, 20.0, -30.0, -8.0], rtol=1e-8)


def test_a_product_going_nan_midway_is_a_clear_error():
    A = torch.diag(torch.arange(1.0, 51.0, dtype=torch.float64))
    calls = {"n": 0}

    def matmat(V: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        out = V @ A
        return out * float("nan") if calls["n"] == 7 else out

    with pytest.raises(LandscapeError, match="NaN or infinite"):  # caught at the tridiagonal solve
        lanczos(matmat, 50, k=3, tol=1e-12)
    problem = sample_problem("linreg")
    op = CurvatureOperator(problem)
    V = torch.ones(2, op.size, dtype=torch.float64)
    V[1, 0] = float("inf")
    with pytest.raises(LandscapeError, match="NaN or infinite"):  # the operator checks every product
        op.matmat(V)


@pytest.mark.parametrize("block", ["0", "2"])
def test_per_layer_eigenvalues_are_those_of_the_exact_diagonal_block(block):
    p, H = exact("mlp", 300)
    names = layer_blocks(p.layout)[block]
    idx = torch.cat([torch.arange(p.layout.size)[p.layout.block(n)] for n in names])
    ev = torch.linalg.eigvalsh(H[idx][:, idx]).flip(0).numpy()
    op = CurvatureOperator(p, names=names)
    assert op.size == idx.numel()
    r = lanczos(op.matmat, op.size, k=5, tol=1e-7)
    np.testing.assert_allclose(r.eigenvalues, ev[:5], rtol=1e-6)


# ---- trace and density ----------------------------------------------------------------------


def test_hutchpp_trace_within_three_standard_errors():
    p, H = exact("mlp", 300)
    exact_trace = float(torch.trace(H))
    op = CurvatureOperator(p)
    est = hutchpp(op.matmat, op.size, matvecs=60, seed=1)
    assert est.matvecs == 60 and est.std_error > 0
    assert abs(est.value - exact_trace) <= 3 * est.std_error
    assert abs(est.value - exact_trace) <= 0.02 * abs(exact_trace)


def test_hutchpp_is_exact_when_the_sketch_spans_everything():
    p = sample_problem("linreg")
    op = CurvatureOperator(p)
    est = hutchpp(op.matmat, op.size, matvecs=60)
    assert est.std_error == 0.0
    assert math.isclose(est.value, float(torch.trace(linreg_closed_form(p))), rel_tol=1e-12)


def test_hutchpp_is_exact_on_a_low_rank_operator():
    """The Krylov sketch of a rank-3 operator becomes invariant after 4 steps: it holds the whole range,
    the deflated rest is 0, and so are the error and the standard error."""
    gen = torch.Generator().manual_seed(0)
    U = torch.linalg.qr(torch.randn(200, 3, generator=gen, dtype=torch.float64))[0]
    A = U @ torch.diag(torch.tensor([5.0, -2.0, 0.5], dtype=torch.float64)) @ U.T
    est = hutchpp(lambda V: V @ A, 200, matvecs=30, seed=3)
    # the sketch may stop once it holds the range (its pilot sees nothing left): the rest goes to probes
    assert est.matvecs == 30 and 4 <= est.sketch <= 20 and est.sketch + est.probes == 29
    assert math.isclose(est.value, 3.5, rel_tol=1e-10)
    assert est.std_error < 1e-10


def test_hutchpp_krylov_sketch_beats_a_random_sketch_at_a_small_budget():
    """At 19 products (PyHessian stopped there on the MLP), over 30 seeds on the exact MLP Hessian, the
    median error is below 2% and under 0.6 times that of Hutch++ with its original random sketch
    (Q = orth(HS), S: 6 Rademacher columns, then 7 Rademacher probes; the same budget)."""
    p, H = exact("mlp", 300)
    n, tr = H.shape[0], float(torch.trace(H))
    mm = lambda V: V @ H  # noqa: E731
    ours, random_sketch = [], []
    for seed in range(30):
        ours.append(abs(hutchpp(mm, n, matvecs=19, seed=seed).value - tr) / tr)
        gen = torch.Generator().manual_seed(seed)
        Q = torch.linalg.qr(mm(rademacher(6, n, gen)).T)[0]
        G = rademacher(7, n, gen)
        G = G - (G @ Q) @ Q.T
        random_sketch.append(abs(float(torch.trace(Q.T @ H @ Q)) + float((G * mm(G)).sum(1).mean()) - tr) / tr)
    assert np.median(ours) < 0.02
    assert np.median(ours) < 0.6 * np.median(random_sketch)


def test_the_sketch_pilot_estimates_the_deflated_rest_from_the_lanczos_relation():
    """SketchPays's ||R z||^2 after j steps, from dot products alone, equals ||(I - QQ^T) H (I - QQ^T) z||^2
    computed with the basis Q and a product."""
    from landscape.curvature.lanczos import krylov
    from landscape.curvature.trace import SketchPays

    p, H = exact("mlp", 300)
    n = H.shape[0]
    mm = lambda V: V @ H  # noqa: E731
    pays = SketchPays(mm, n, budget=10**6, seed=3)
    for steps in (1, 7, 25):
        pays.rests.clear(), pays.variances.clear()
        pays.in_basis = 0.0
        run = krylov(mm, n, k=steps, tol=0.0, max_iter=steps, seed=5, enough=pays)
        z = pays.z  # the pilot, made at the first step in the Lanczos vectors' dtype, and kept
        assert z is not None and z.dtype == torch.float64
        Q = torch.stack([run.basis.row(i) for i in range(run.basis.rows)])
        rest = z - Q.T @ (Q @ z)
        hz = H @ rest
        want = float((hz - Q.T @ (Q @ hz)).square().sum())
        assert len(pays.rests) == steps
        assert pays.rests[-1] == pytest.approx(want, rel=1e-9)


def _rms_errors(A: torch.Tensor, truth: float, seeds: int) -> tuple[dict[bool, float], dict[bool, list[int]], float]:
    """RMS error of hutchpp at 60 products with a fixed and an adaptive sketch, their sketch lengths, and the
    adaptive one's mean error."""
    rms, sketches, mean = {}, {}, 0.0
    for adaptive in (False, True):
        runs = [hutchpp(lambda V: V @ A, A.shape[0], matvecs=60, seed=s, adaptive=adaptive) for s in range(seeds)]
        errors = np.array([r.value - truth for r in runs])
        rms[adaptive], sketches[adaptive] = float(np.sqrt(np.mean(errors**2))), [r.sketch for r in runs]
        mean = float(errors.mean())
    return rms, sketches, mean


def test_on_a_spectrum_without_outliers_the_sketch_stops_early_and_the_error_shrinks():
    """A flat spectrum (uniform on [-1, 2], as a network's at random initialization has no outliers): Lanczos
    steps remove little, so the sketch stops after a few and leaves the products to probes. Over 40 seeds
    the error is unbiased and its RMS under 0.75 of Hutch++'s fixed split's (measured: 4.8 against 8.3)."""
    gen = torch.Generator().manual_seed(0)
    n = 1000
    U = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))[0]
    ev = torch.empty(n, dtype=torch.float64).uniform_(-1.0, 2.0, generator=gen)
    rms, sketches, mean = _rms_errors((U * ev) @ U.T, float(ev.sum()), 40)
    assert set(sketches[False]) == {40} and max(sketches[True]) <= 20
    assert rms[True] < 0.75 * rms[False]
    assert abs(mean) < 3 * rms[True] / math.sqrt(40)


def test_on_a_hessian_with_outliers_the_sketch_keeps_its_length():
    """The exact MLP Hessian (a few large outliers over a bulk): the sketch's steps keep paying, it runs
    its full length in most seeds and the error stays that of the fixed split (30 seeds)."""
    p, H = exact("mlp", 300)
    rms, sketches, _ = _rms_errors(H, float(torch.trace(H)), 30)
    assert np.median(sketches[True]) == 40
    assert rms[True] < 1.2 * rms[False]


def test_slq_density_close_to_exactly_smoothed_spectrum():
    """L1 distance (integral of |phi_SLQ - phi_exact| dt, 0..2) with the default sigma (0.2% of the span)."""
    p, H = exact("mlp", 300)
    ev = torch.linalg.eigvalsh(H).numpy()
    op = CurvatureOperator(p)
    runs = slq(op.matmat, op.size, probes=10, steps=80, seed=0)
    assert runs.alpha.shape == (10, 80) and runs.matvecs == 800
    d = density_from_lanczos(runs.alpha, runs.beta)
    dist = l1_distance(d.grid, d.values, exact_density(ev, d.grid, d.sigma))
    assert dist <= 0.01, dist
    assert abs(np.trapezoid(d.values, d.grid) - 1.0) < 1e-3 if hasattr(np, "trapezoid") else True
    # redraw with another width from the stored tridiagonals alone
    d2 = density_from_lanczos(runs.alpha, runs.beta, sigma=5 * d.sigma)
    assert l1_distance(d2.grid, d2.values, exact_density(ev, d2.grid, d2.sigma)) <= dist + 1e-9


def test_slq_in_groups_within_a_memory_budget_gives_the_same_runs():
    gen = torch.Generator().manual_seed(5)
    Qm, _ = torch.linalg.qr(torch.randn(120, 120, generator=gen, dtype=torch.float64))
    A = Qm @ torch.diag(torch.linspace(-1.0, 4.0, 120, dtype=torch.float64)) @ Qm.T
    widths = []

    def matmat(V: torch.Tensor) -> torch.Tensor:
        widths.append(V.shape[0])
        return V @ A

    whole = slq(matmat, 120, probes=7, steps=12, seed=3)
    assert max(widths) == 7
    widths.clear()
    grouped = slq(
        matmat, 120, probes=7, steps=12, seed=3, basis_bytes=3 * (12 + 3) * 120 * 8
    )  # 3 probes at a time (bases, vectors)
    assert max(widths) == 3 and grouped.matvecs == whole.matvecs == 84
    np.testing.assert_allclose(grouped.alpha, whole.alpha, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(grouped.beta, whole.beta, rtol=1e-12, atol=1e-12)


def test_density_from_lanczos_needs_no_operator():
    # the tridiagonal of a 2x2 diagonal matrix diag(1, 3) from v = (1, 1)/sqrt 2: alpha = (2, 2), beta = (1,)
    d = density_from_lanczos(np.array([[2.0, 2.0]]), np.array([[1.0]]), grid=np.linspace(0, 4, 4001), sigma=0.05)
    np.testing.assert_allclose(sorted(d.nodes[0]), [1.0, 3.0], atol=1e-12)
    np.testing.assert_allclose(d.weights[0], [0.5, 0.5], atol=1e-12)
    np.testing.assert_allclose(d.values, exact_density(np.array([1.0, 3.0]), d.grid, 0.05), atol=1e-12)


def test_slq_on_psd_linreg_puts_no_node_below_zero():
    p = sample_problem("linreg")
    op = CurvatureOperator(p)
    runs = slq(op.matmat, op.size, probes=4, steps=80)
    d = density_from_lanczos(runs.alpha, runs.beta)
    assert min(float(t.min()) for t in d.nodes) > 0
    ev = torch.linalg.eigvalsh(linreg_closed_form(p)).numpy()
    for t in d.nodes:  # n <= steps: each probe's quadrature is exact, its nodes the eigenvalues
        np.testing.assert_allclose(np.sort(t), ev, rtol=1e-9)


@pytest.mark.slow
def test_cnn_with_batchnorm_top5():
    p, H = exact("cnn", 100)
    ev = torch.linalg.eigvalsh(H).flip(0).numpy()
    op = CurvatureOperator(p)
    r = lanczos(op.matmat, op.size, k=5, tol=1e-7)
    np.testing.assert_allclose(r.eigenvalues, ev[:5], rtol=1e-6)


def test_exact_runs_put_every_eigenvalue_at_weight_one_over_n():
    lam = np.array([3.0, -1.0, 0.5, 2.0, 0.5, 0.5, 7.0])  # 0.5 three times
    nodes, weights = quadrature(exact_runs(lam).alpha, exact_runs(lam).beta)
    order = np.argsort(nodes[0])
    np.testing.assert_allclose(nodes[0][order], [-1.0, 0.5, 2.0, 3.0, 7.0], atol=1e-12)
    np.testing.assert_allclose(weights[0][order], np.array([1, 3, 1, 1, 1]) / 7, atol=1e-12)


def test_a_small_block_is_computed_whole_and_exactly():
    """MLP block '2' (330 parameters) with the default density (10 x 80 products planned): the whole
    block from 330 products; eigenvalues, trace and density those of the exact diagonal block."""
    p, H = exact("mlp", 300)
    names = layer_blocks(p.layout)["2"]
    idx = torch.cat([torch.arange(p.layout.size)[p.layout.block(n)] for n in names])
    ev = torch.linalg.eigvalsh(H[idx][:, idx]).numpy()
    settings = CurvatureSettings(top_k=3, trace=True, density=True)
    block = estimate_block(p, settings, names)
    assert block.operator["dense"] and block.operator["matvecs"] == 330
    np.testing.assert_allclose(block.eigen.eigenvalues, ev[::-1][:3], rtol=1e-10)
    assert block.eigen.residuals.max() < 1e-10 * ev.max()
    assert block.trace.value == pytest.approx(ev.sum(), rel=1e-10) and block.trace.std_error == 0.0
    d = density_from_lanczos(block.lanczos.alpha, block.lanczos.beta)
    assert l1_distance(d.grid, d.values, exact_density(ev, d.grid, d.sigma)) < 1e-6
    assert not estimate_block(p, CurvatureSettings(top_k=3, trace=True), layer_blocks(p.layout)["0"]).operator["dense"]


def test_progress_hears_of_every_product():
    """`on_products` (the CLI's progress display) is told of every product, with the estimate it serves."""
    p = sample_problem("mlp", dtype="float32", samples=200)
    seen: dict[str, int] = {}

    def hear(stage: str, n: int) -> None:
        seen[stage] = seen.get(stage, 0) + n

    res = run_curvature(p, CurvatureSettings(top_k=2, trace=True, trace_matvecs=12, per_layer=True), on_products=hear)
    assert set(seen) == {
        "model: eigenvalues",
        "model: trace",
        "layer 0 (1/2): eigenvalues",
        "layer 0 (1/2): trace",
        "layer 2 (2/2): eigenvalues",
        "layer 2 (2/2): trace",
    }
    assert seen["model: eigenvalues"] + seen["model: trace"] == res.model.operator["matvecs"]
    assert seen["layer 2 (2/2): eigenvalues"] + seen["layer 2 (2/2): trace"] == res.layers["2"].operator["matvecs"]


@pytest.mark.slow
def test_transformer_per_layer_blocks():
    p, H = exact("transformer", 100)
    for key, names in layer_blocks(p.layout).items():
        idx = torch.cat([torch.arange(p.layout.size)[p.layout.block(n)] for n in names])
        ev = torch.linalg.eigvalsh(H[idx][:, idx]).flip(0).numpy()
        op = CurvatureOperator(p, names=names)
        r = lanczos(op.matmat, op.size, k=min(3, op.size), tol=1e-8)
        np.testing.assert_allclose(r.eigenvalues, ev[: r.eigenvalues.size], rtol=1e-6, atol=1e-10 * abs(ev[0])), key


def test_residuals_never_fall_below_the_precision_floor(tmp_path):
    """Linear regression in float32 (H = 2 X'X / n, closed form): Lanczos stops with computed residuals
    far below what float32 products can show; the reported residual is the floor (100 eps |lambda_max|),
    flagged, and it bounds the true residual and eigenvalue error against the exact float64 H."""
    import landscape as ls

    g = torch.Generator().manual_seed(3)
    x = torch.randn(200, 6, generator=g) * torch.tensor([3.0, 2.0, 1.5, 1.0, 0.5, 0.2])
    y = torch.randn(200, 1, generator=g)
    model = torch.nn.Linear(6, 1, bias=False)
    problem = ls.Problem(model, (x, y), loss="mse")
    curv = ls.hessian(problem, top_k=2, tol=1e-4, say=lambda m: None)
    eig = curv.model.eigen
    assert eig is not None and eig.floor == pytest.approx(100 * torch.finfo(torch.float32).eps * eig.eigenvalues[0])
    assert eig.at_floor.all() and (eig.residuals == eig.floor).all()
    X = x.double()
    H = 2 * X.T @ X / X.shape[0]
    exact = torch.linalg.eigvalsh(H).flip(0)[:2].numpy()
    V = eig.eigenvectors.double()
    true_residuals = (V @ H - torch.from_numpy(eig.eigenvalues)[:, None] * V).norm(dim=1).numpy()
    assert (true_residuals <= eig.residuals).all()
    assert (np.abs(eig.eigenvalues - exact) <= eig.residuals).all()
    curv.save(tmp_path / "c.h5")
    back = ls.load(tmp_path / "c.h5").model.eigen
    assert back.floor == eig.floor and back.at_floor.all()
    # float64 products: the floor is 1e9 times lower, and stored with the file
    problem64 = ls.Problem(model, (x.double(), y.double()), loss="mse", dtype="float64")
    eig64 = ls.hessian(problem64, top_k=2, tol=1e-4, say=lambda m: None).model.eigen
    assert eig64 is not None and eig64.floor < 1e-12 * eig64.eigenvalues[0]


def test_the_gradient_through_the_flat_vector_is_put_together_once():
    """A product differentiates through `Layout.unflatten`: sliced per tensor, each slice's gradient was
    a zero-filled P-sized tensor of its own (52 for a 4-layer GPT-2; 4-5x the time of a 16M-parameter
    Hessian-vector product). Now every tensor's view comes from one split, whose gradient is one
    P-sized tensor, and the values are those of the slices."""
    from landscape.params import Layout

    layout = Layout(("a", "b", "c"), ((2, 3), (4,), (1, 2, 2)))
    flat = torch.randn(layout.size, dtype=torch.float64, requires_grad=True)
    views = layout.unflatten(flat)
    sources = set()
    for name, view in views.items():
        assert torch.equal(view.detach().reshape(-1), flat.detach()[layout.block(name)])
        node = view.grad_fn
        while node is not None and "Split" not in node.name():
            node = node.next_functions[0][0]
        sources.add(node)
    assert len(sources) == 1 and None not in sources
    weights = {n: torch.randn_like(v) for n, v in views.items()}
    (g,) = torch.autograd.grad(sum((views[n] * weights[n]).sum() for n in views), flat)
    assert torch.equal(g, layout.flatten(weights))
    assert layout.unflatten(torch.zeros(5, layout.size))["a"].shape == (5, 2, 3)  # leading dims kept


class _Bags(nn.Module):
    """Token ids -> a sparse embedding's mean, an EmbeddingBag's mean over non-padding ids and another's
    max -> classes."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(12, 3, sparse=True)
        self.bag = nn.EmbeddingBag(12, 2, mode="mean", padding_idx=0, sparse=True)
        self.top = nn.EmbeddingBag(12, 2, mode="max")
        self.head = nn.Linear(7, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.emb(ids).mean(1), self.bag(ids), self.top(ids)], 1))


def test_sparse_embeddings_and_embedding_bags_have_a_hessian_and_a_gradient():
    """A sparse embedding failed every product and the gradient ("reshape is not implemented for sparse
    tensors"); an EmbeddingBag has no double backward in PyTorch at all. Truth: the same loss written
    with indexing and a masked mean, its exact Hessian by torch.func.hessian."""
    import landscape as ls
    from landscape.measures import loss_and_grad

    torch.manual_seed(0)
    model = _Bags().double()
    ids, y = torch.randint(0, 12, (24, 5)), torch.randint(0, 3, (24,))
    ids[0] = 0  # a bag of padding alone
    problem = ls.Problem(model, (ids, y), dtype="float64")

    def truth(flat: torch.Tensor) -> torch.Tensor:
        p = problem.layout.unflatten(flat)
        keep = (ids != 0).double().unsqueeze(-1)
        bag = (p["bag.weight"][ids] * keep).sum(1) / keep.sum(1).clamp_min(1)
        features = torch.cat([p["emb.weight"][ids].mean(1), bag, p["top.weight"][ids].amax(1)], 1)
        return F.cross_entropy(F.linear(features, p["head.weight"], p["head.bias"]), y)

    exact = torch.linalg.eigvalsh(torch.func.hessian(truth)(problem.theta))
    result = ls.hessian(problem, top_k=2, tol=1e-10, trace=True, trace_matvecs=400)
    np.testing.assert_allclose(result.eigenvalues, exact.flip(0)[:2].numpy(), rtol=1e-8)
    assert result.trace == pytest.approx(float(exact.sum()), rel=1e-8)
    _, grad = loss_and_grad(problem, problem.theta)
    torch.testing.assert_close(grad, torch.func.grad(truth)(problem.theta), rtol=1e-10, atol=1e-12)
    assert model.emb.sparse and model.bag.sparse  # the model itself is left as it was
