"""Matrix-free curvature operators: products with the Hessian, the GGN or the empirical Fisher of the dataset-mean loss.

The loss is L(theta) = sum_b (|b| / N) * loss_fn(model(x_b; theta), y_b), |b| the terms the batch's
loss averages (rows, or counted targets: `Problem.terms`), so a product is the weighted sum of
per-batch products: exact for any batch size, the last batch included.

Ways to multiply by the Hessian:

- double backward: g = grad(L, theta, create_graph=True), then Hv = grad(g . v, theta)
  (with one batch, the graph of g is built once and kept, so a product is one backward pass; then
  no other method can be faster and none is timed);
- forward-over-reverse: Hv = jvp(grad(L), theta, v) with torch.func; with several batches it and
  the fresh-graph double backward are timed on the first product and the faster is kept.

A method that raises (torch 2.13's `jvp(grad(mse))` on a linear model raises "ZeroTensors are
immutable") is dropped and the others are used. On a GPU several vectors are multiplied per call
(`is_grads_batched` / `vmap`) in chunks of `max_vectors` when that times faster; on a CPU one at a time. The loss must be deterministic (no dropout,
BN in train mode, augmentation): a fresh forward pass must match the kept graph's, and the timed
methods' products of one vector must agree.

The generalized Gauss-Newton G = sum_b w_b J_b^T H_out,b J_b (J: Jacobian of the model output,
H_out: Hessian of the loss in the output) is positive semi-definite for convex losses and is
multiplied with reverse mode only: Jv by the double-vjp trick, then H_out (Jv), then J^T(.).

The empirical Fisher F = (1/N) sum_i g_i g_i^T (g_i: the gradient of sample i's own loss, the loss
function applied to that sample alone) is positive semi-definite and needs no second derivatives:
when all the per-sample gradients fit in FISHER_CACHE_BYTES they are made once (one `vmap` of `grad`
per batch, a loop over the samples when the model does not vmap) and kept, and F v = (1/N) G^T (G v) is
two matrix products; otherwise F v = (1/N) J^T (J v) with J the Jacobian of the batch's per-sample
losses, by reverse mode as for the GGN, in the memory of a few gradients.

Many processes (torchrun): each rank's problem holds its shard of the data, batches are weighted
by |b|/N with the GLOBAL N, and every product is summed over the ranks (`World.all_sum_`), so every
rank gets exactly the full-data product and runs the same algorithm on it. Every decision that
changes the sequence of collective calls (which method, batched or looped vectors, one batch or
several, a method dropped) is made from numbers summed over the ranks, so all ranks decide alike.

Nothing here does I/O; vectors in and out are on the problem's device, float64 or float32 (the caller's).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from landscape.distributed import World
from landscape.errors import ArgumentError, LandscapeError
from landscape.losses import is_builtin
from landscape.model_io import (
    Inputs,
    call_functional,
    differentiable_model,
    logits_of,
    map_inputs,
    take,
    twice_differentiable,
    vmapped,
)
from landscape.names import CURVATURES, METHODS
from landscape.params import Layout
from landscape.problem import Problem

FISHER_CACHE_BYTES = 1 << 30  # per-sample gradients kept between products up to this size (all batches, per rank)
KEPT = ("double-backward-cached", "ggn-cached", "fisher-cached")  # per-batch state built once, kept between products
SLOW_FACTOR = 3.0  # a method whose first (cold) product takes this many times the fastest warm one is not timed again


def layer_blocks(layout: Layout) -> dict[str, tuple[str, ...]]:
    """Parameter tensors grouped by the module that owns them ('0.weight', '0.bias' -> '0'), in layout order."""
    blocks: dict[str, list[str]] = {}
    for name in layout.names:
        key = name.rsplit(".", 1)[0] if "." in name else name
        blocks.setdefault(key, []).append(name)
    return {k: tuple(v) for k, v in blocks.items()}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / max(float(a.norm()), float(b.norm()), 1e-300))


def _agree_tol(dtype: torch.dtype) -> float:
    return {torch.float64: 1e-8, torch.float32: 1e-4}.get(dtype, 3e-2)


class CurvatureOperator:
    """The symmetric matrix H (Hessian), G (GGN) or F (empirical Fisher) of the dataset-mean loss, restricted to a block.

    `names` picks the parameter tensors the operator acts on (default all, in layout order); the
    vector it multiplies is those tensors flattened and concatenated. `matvecs` counts the
    products the algorithms asked for (one per vector); `setup_matvecs` the ones spent measuring
    the methods and checking determinism. `probe` is the set-up's vector (seeded by `probe_seed`)
    and its product by the chosen method, which Lanczos can take as its first step.

    With a `world` of several ranks, `problem` holds this rank's part of the data (see
    `landscape.distributed.shard_problem`) and the operator is that of the union of the parts:
    batches are weighted by |b|/n_total (default: `problem.terms` summed over the ranks) and products
    are summed over the ranks. Every rank must construct the operator and call its products in
    the same order. `n_total` alone (one process: the count of terms and of samples, equal for one
    class per sample) gives a shard's share of the full product.

    Example (linear regression, whose Hessian is 2 XᵀX / n):
        >>> import torch, landscape as ls
        >>> x = torch.randn(32, 3, dtype=torch.float64)
        >>> model = torch.nn.Linear(3, 1, bias=False).double()
        >>> problem = ls.Problem(model, (x, torch.randn(32, 1, dtype=torch.float64)), loss="mse")
        >>> op = CurvatureOperator(problem)
        >>> V = torch.eye(3, dtype=torch.float64)
        >>> torch.allclose(op.matmat(V), 2 * x.T @ x / 32)
        True
        >>> op.close()
    """

    def __init__(
        self,
        problem: Problem,
        *,
        curvature: str = "hessian",
        names: Sequence[str] | None = None,
        method: str = "auto",
        batch_size: int | None = None,
        max_vectors: int = 16,
        check: bool = True,
        world: World | None = None,
        n_total: int | None = None,
        probe_seed: int = 12345,
        batched_vectors: bool | None = None,
    ) -> None:
        if curvature not in CURVATURES:
            raise ArgumentError("curvature", curvature, f"expected one of {', '.join(CURVATURES)}")
        if method != "auto" and method not in METHODS:
            raise ArgumentError("method", method, f"expected auto or one of {', '.join(METHODS)}")
        differentiable_model(problem.model)
        self.problem = problem
        self.curvature = curvature
        names = tuple(names) if names is not None else problem.layout.names
        unknown = [n for n in names if n not in problem.layout.names]
        if unknown:
            raise LandscapeError(f"unknown parameter tensor(s): {', '.join(unknown)}")
        self.names = names
        self.sub = Layout(names, tuple(problem.layout.shapes[problem.layout.names.index(n)] for n in names))
        full = problem.layout.unflatten(problem.theta.detach())
        self.fixed = {n: t for n, t in full.items() if n not in names}
        # the weights the products differentiate at: theta itself when the block is the whole model (never
        # changed in place here; a copy would be one more P-sized vector)
        whole = names == problem.layout.names
        self.u0 = problem.theta.detach() if whole else self.sub.flatten(full).detach().clone()
        self.size = self.sub.size
        self.dtype = problem.dtype
        self.device = problem.device
        self.world = world or World()
        # the global N of the batch weights |b|/N: the ranks' counts of the loss's terms (rows, or counted
        # targets: `Problem.terms`) summed; and their samples, each of which weighs 1/n in the empirical Fisher
        terms, samples = (n_total, n_total) if n_total else self._summed([problem.terms, problem.n])
        self.n_total, self.n_samples = int(terms), int(samples)
        self.batch_size = batch_size or problem.batch_size
        self.max_vectors = max(1, int(max_vectors))
        self.matvecs = 0
        self.setup_matvecs = 0
        self.timings: dict[str, float] = {}
        self.dropped: dict[str, str] = {}
        self.gradient_seconds: float | None = None
        # vmap several vectors per call? On a GPU decided by timing the first chunks; on a CPU never: it
        # ran 2-4x slower per vector there (sample MLP and CNN, a 235k MLP), and its first use imports
        # sympy (through torch's symbolic shapes: 1.1 s)
        self._batched = (
            batched_vectors if batched_vectors is not None else (None if problem.device.type != "cpu" else False)
        )
        self._chunk_seconds: dict[str, float] = {}
        self._cache: list[Any] | None = None
        # the kept-graph methods only when every rank's data is one batch (the same candidates on all ranks)
        self._single_batch = self._summed([float(problem.n > self.batch_size)])[0] == 0
        if curvature != "hessian" and method != "auto":
            raise ArgumentError("method", method, "applies to the Hessian only (curvature hessian)")
        if curvature == "ggn":
            candidates: tuple[str, ...] = ("ggn-cached", "ggn") if self._single_batch else ("ggn",)
        elif curvature == "fisher":  # cached when every rank's per-sample gradients fit (decided alike on all ranks)
            fits = problem.n * self.size * torch.finfo(self.dtype).bits // 8 <= FISHER_CACHE_BYTES
            candidates = ("fisher-cached", "fisher") if self._summed([float(not fits)])[0] == 0 else ("fisher",)
        else:
            candidates = METHODS if method == "auto" else (method,)
            if not self._single_batch:
                if method == "double-backward-cached":
                    raise ArgumentError("method", method, "needs the data in one batch (raise the batch size)")
                candidates = tuple(c for c in candidates if c != "double-backward-cached")
        self.probe_seed = int(probe_seed)
        self.probe: tuple[torch.Tensor, torch.Tensor] | None = None  # (v, H v) by the chosen method: reusable
        self.method = self._choose(candidates, check)

    # ---- the loss as a function of the block ------------------------------------------------
    def _loss(self, u: torch.Tensor, xb: Inputs, yb: torch.Tensor, w: float) -> torch.Tensor:
        return w * self.problem.loss_fn(self._forward(u, xb), yb)

    def _forward(self, u: torch.Tensor | list[torch.Tensor], xb: Inputs) -> Any:
        """The model's output at block weights `u` (flat, or the block's tensors in layout order: views of
        it that the products then differentiate with respect to), through twice-differentiable kernels."""
        tensors = self.sub.unflatten(u) if isinstance(u, torch.Tensor) else dict(zip(self.sub.names, u))
        params = {**self.fixed, **tensors}
        with twice_differentiable():  # the fused attention kernels and hardsigmoid have no double backward
            return call_functional(self.problem.model, (params, self.problem.buffers), xb)

    def _logits(self, out: Any) -> torch.Tensor:
        """The output as the one tensor the GGN and Fisher differentiate through (a built-in loss reads its logits)."""
        if isinstance(out, torch.Tensor):
            return out
        if is_builtin(self.problem.loss_fn):
            return logits_of(out)
        raise LandscapeError(
            f"curvature {self.curvature} needs the model's output as one tensor, or a built-in loss (which reads "
            f"its logits); the model returns {type(out).__name__}: use the hessian, or a model that returns the logits"
        )

    def _batches(self) -> Iterator[tuple[Inputs, torch.Tensor, float]]:
        """(x_b, y_b, |b| / n_total) over this rank's data (|b| the batch's terms: rows, or counted targets):
        the ranks' weighted sums add up to the dataset mean."""
        for xb, yb, w in self.problem.batches(self.batch_size):
            yield xb, yb, w * self.problem.terms / self.n_total

    # ---- agreement between ranks (no-ops for one process) -----------------------------------
    def _summed(self, values: Sequence[float]) -> list[float]:
        """Numbers summed over the ranks: the same list on every rank, for decisions all must share."""
        if self.world.size == 1:
            return [float(v) for v in values]
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        return self.world.all_sum_(t).tolist()

    def _try_product(self, method: str, v: torch.Tensor) -> tuple[torch.Tensor | None, str]:
        """The summed product by `method`, or (None, why) on every rank when it raised on any rank."""
        try:
            local, why = self._apply(method, v, reduce=False), ""
        except LandscapeError:
            raise
        except Exception as exc:  # e.g. "ZeroTensors are immutable" from jvp(grad) on a linear MSE model
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            local, why = None, msg[:200]
        if self._summed([float(bool(why))])[0] > 0:
            return None, why or "failed on another process"
        assert local is not None
        return self.world.all_sum_(local), ""

    # ---- public products --------------------------------------------------------------------
    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """H v for one vector [size] (out in v's dtype)."""
        return self.matmat(v[None])[0]

    def matmat(self, V: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """H V^T for vectors stacked as rows [k, size] (float64 or float32, out in V's dtype: a new tensor,
        or written into `out` [k, size], which must not overlap V: e.g. the next row of a Krylov basis, so
        that no P-sized product is held beside it); counts k products."""
        t0 = time.perf_counter()
        out = self._apply(self.method, V, out=out)
        self._require_finite(out)  # one pass over the products: a NaN must stop a run, not end up in a file
        per_vector = (time.perf_counter() - t0) / max(V.shape[0], 1)
        self.timings[self.method] = min(self.timings.get(self.method, math.inf), per_vector)  # the fastest seen
        self.matvecs += V.shape[0]
        return out

    def _apply(
        self, method: str, V: torch.Tensor, reduce: bool = True, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        V = V.to(self.device)
        k = V.shape[0]
        if k == 1:  # Lanczos's case: no chunks to time or fill (a tenth of an MLP product's time went there)
            one = self._products(method, V.to(self.dtype), out=out)
            one = one if out is not None else one.to(V.dtype)
            return self.world.all_sum_(one) if reduce else one
        res = out if out is not None else torch.empty(V.shape, dtype=V.dtype, device=self.device)
        step = self.max_vectors
        if k > 1 and self._batched is None:
            step = max(1, min(self.max_vectors, k // 2))  # the first two chunks measure batched against a loop
        start = 0
        while start < k:
            chunk = V[start : start + step].to(self.dtype)
            self._timed_products(method, chunk, out=res[start : start + chunk.shape[0]])
            start += chunk.shape[0]
            if self._batched is not None:
                step = self.max_vectors
        return self.world.all_sum_(res) if reduce else res

    def _timed_products(self, method: str, V: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Products of a chunk into `out`; while undecided, time batched (vmap) and looped chunks and keep the
        faster."""
        if V.shape[0] == 1 or self._batched is not None:
            return self._products(method, V, batched=bool(self._batched) and V.shape[0] > 1, out=out)
        mode = "batched" if "batched" not in self._chunk_seconds else "loop"
        t0 = time.perf_counter()
        try:
            out = self._products(method, V, batched=mode == "batched", out=out)
        except Exception:
            if mode == "loop":
                raise
            self._chunk_seconds["batched"] = math.inf
            return self._timed_products(method, V, out)
        self._chunk_seconds[mode] = (time.perf_counter() - t0) / V.shape[0]
        if len(self._chunk_seconds) == 2:  # every rank decides on the times summed over the ranks
            batched, loop = self._summed([self._chunk_seconds["batched"], self._chunk_seconds["loop"]])
            self._batched = batched < loop
        return out

    def _products(
        self, method: str, V: torch.Tensor, batched: bool = False, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The products of the rows of V summed over the batches: a new tensor in the working dtype, or
        written into `out` (any float dtype)."""
        if method == "forward-over-reverse":
            return _into(out, self._for(V, batched))
        if method in KEPT:
            if self._cache is None:
                self._cache = [self._state(method, xb, yb, w) for xb, yb, w in self._batches()]
            states = iter(self._cache)
        else:
            states = (self._state(method, xb, yb, w) for xb, yb, w in self._batches())
        total: torch.Tensor | None = None
        for st in states:  # summed in place: no 0 + tensor copy for the usual single batch
            part = self._product(method, st, V, batched, out if total is None else None)
            total = part if total is None else total.add_(part)
        assert total is not None
        return total

    # ---- double backward, GGN and empirical Fisher (autograd) ---------------------------------
    def _state(self, method: str, xb: Inputs, yb: torch.Tensor, w: float) -> Any:
        if method == "fisher-cached":
            G, out = self._per_sample_gradients(xb, yb)
            return (G, 1 / self.n_samples, out)  # F_b = (1/N) sum_i g_i g_i^T: each sample weighs 1/N
        with torch.enable_grad():
            u = self.u0.detach().requires_grad_(True)  # a leaf sharing u0's memory
            # the block's tensors as the forward reads them: products are gradients with respect to these, each
            # written into its place in the result (a gradient with respect to u would put per-tensor pieces
            # together into one more P-sized tensor)
            pieces = list(self.sub.unflatten(u).values())
            if method == "fisher":  # F_b v = (1/N) J^T (J v), J: the Jacobian of the batch's per-sample losses
                out = self._logits(self._forward(pieces, xb))
                losses = self._per_sample_losses(out, yb)
                dummy = torch.zeros_like(losses, requires_grad=True)
                jt = torch.autograd.grad(_dot(losses, dummy), u, create_graph=True)[0]
                return (pieces, losses, dummy, jt, 1 / self.n_samples)
            if method.startswith("ggn"):
                out = self._logits(self._forward(pieces, xb))
                z = out.detach().requires_grad_(True)
                gz = torch.autograd.grad(w * self.problem.loss_fn(z, yb), z, create_graph=True)[0]
                dummy = torch.zeros_like(out, requires_grad=True)
                jt = torch.autograd.grad(_dot(out, dummy), u, create_graph=True)[0]
                return (pieces, out, z, gz, dummy, jt)
            out = self._forward(pieces, xb)
            g = torch.autograd.grad(w * self.problem.loss_fn(out, yb), u, create_graph=True)[0]
            return (pieces, g, _kept(out))

    @staticmethod
    def _vjp(output: torch.Tensor, inp: torch.Tensor, V: torch.Tensor, batched: bool) -> torch.Tensor:
        """Rows V_i^T d(output)/d(inp) [k, *inp.shape]; zeros where unused."""
        rows = torch.empty(V.shape[0], inp.numel(), dtype=inp.dtype, device=inp.device)
        return _vjp_into(output, [inp], V, batched, rows).view(V.shape[0], *inp.shape)

    def _product(
        self, method: str, state: Any, V: torch.Tensor, batched: bool, into: torch.Tensor | None = None
    ) -> torch.Tensor:
        if method == "fisher-cached":
            G, w, _ = state
            return _into(into, (G @ V.T).T @ G * w)  # rows (1/N) G^T G v
        with torch.enable_grad():
            if method == "fisher":
                pieces, losses, dummy, jt, w = state
                jv = self._vjp(jt, dummy, V, batched)  # J v, [k, |b|]: each sample's g_i . v
                return self._vjp_pieces(losses, pieces, jv, batched, into).mul_(w)
            if method.startswith("ggn"):
                pieces, out, z, gz, dummy, jt = state
                jv = self._vjp(jt, dummy, V, batched)  # J v, [k, *out.shape]
                hz = self._vjp(gz, z, jv, batched)  # H_out J v
                return self._vjp_pieces(out, pieces, hz, batched, into)  # J^T H_out J v
            pieces, g, _ = state
            return self._vjp_pieces(g, pieces, V, batched, into)

    def _vjp_pieces(
        self,
        output: torch.Tensor,
        pieces: list[torch.Tensor],
        V: torch.Tensor,
        batched: bool,
        into: torch.Tensor | None,
    ) -> torch.Tensor:
        """Rows V_i^T d(output)/d(block) [k, size], from the block's tensors, written into `into` (a new tensor
        when None)."""
        if into is None:
            into = torch.empty(V.shape[0], self.size, dtype=self.dtype, device=self.device)
        return _vjp_into(output, pieces, V, batched, into)

    def _per_sample_gradients(self, xb: Inputs, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gradients of each sample's own loss on the block, [|b|, size], and the batch's outputs."""

        def one(u: torch.Tensor, x: Inputs, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            out = self._logits(self._forward(u, map_inputs(lambda t: t[None], x)))
            return self.problem.loss_fn(out, y[None]), out[0].detach()

        per_sample = torch.func.grad(one, has_aux=True)
        try:
            with vmapped():
                G, out = torch.func.vmap(per_sample, in_dims=(None, 0, 0))(self.u0, xb, yb)
        except LandscapeError:
            raise
        except Exception:  # a model vmap cannot batch (data-dependent control flow, in-place batch ops): one at a time
            rows = [per_sample(self.u0, take(xb, i), yb[i]) for i in range(yb.shape[0])]
            G, out = torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows])
        return G.detach(), out

    def _per_sample_losses(self, out: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        """The loss function applied to each sample alone, [|b|] (in the graph of `out`)."""
        try:
            with vmapped():
                return torch.func.vmap(lambda o, y: self.problem.loss_fn(o[None], y[None]))(out, yb)
        except Exception:  # a loss vmap cannot batch: one sample at a time
            return torch.stack([self.problem.loss_fn(out[i : i + 1], yb[i : i + 1]) for i in range(out.shape[0])])

    # ---- forward-over-reverse (torch.func) --------------------------------------------------
    def _for(self, V: torch.Tensor, batched: bool) -> torch.Tensor:
        total = torch.zeros(V.shape, dtype=self.dtype, device=self.device)
        for xb, yb, w in self._batches():
            grad_fn = torch.func.grad(lambda u, xb=xb, yb=yb, w=w: self._loss(u, xb, yb, w))

            def hvp(v: torch.Tensor, grad_fn: Callable[[torch.Tensor], torch.Tensor] = grad_fn) -> torch.Tensor:
                out: torch.Tensor = torch.func.jvp(grad_fn, (self.u0,), (v,))[1]
                return out

            with vmapped():
                total += torch.func.vmap(hvp)(V) if batched else torch.stack([hvp(v) for v in V])
        return total

    # ---- measurement ------------------------------------------------------------------------
    def gradient(self) -> torch.Tensor:
        """The gradient of the dataset-mean loss on the block (float64); also timed for the HVP ratio."""
        t0 = time.perf_counter()
        total = torch.zeros(self.size, dtype=self.dtype, device=self.device)
        for xb, yb, w in self._batches():
            with torch.enable_grad():
                u = self.u0.detach().requires_grad_(True)  # a leaf sharing u0's memory
                total += torch.autograd.grad(self._loss(u, xb, yb, w), u)[0]
        total = self.world.all_sum_(total.to(torch.float64))
        self.gradient_seconds = time.perf_counter() - t0
        return total

    def _none_works(self) -> LandscapeError:
        """The error when every candidate method failed its first product: why each did, and what to try."""
        why = "; ".join(f"{k}: {v}" for k, v in self.dropped.items())
        if all("forward AD" in reason for reason in self.dropped.values()):  # forward-over-reverse alone was tried
            hint = " (an operation without a forward-mode derivative in PyTorch: --method double-backward needs none)"
        elif self.curvature != "fisher" and ("not implemented" in why or "does not support" in why):
            hint = (
                " (an operation without second derivatives in PyTorch: the empirical Fisher, curvature fisher,"
                " needs first derivatives only)"
            )
        else:
            hint = ""
        return LandscapeError(f"no curvature product works for this model: {why}{hint}")

    def _choose(self, candidates: Sequence[str], check: bool) -> str:
        """The product method: the kept graph when the data is one batch, else the faster of the others.

        The kept-graph methods do strictly less work per product than the others (which redo the
        forward pass and the first backward for every product), so when one is a candidate and runs,
        it is taken after a single product and the others are not timed. Otherwise each candidate is
        timed on one random vector (a warm-up, then one timed product) and the fastest is kept; a
        candidate whose warm-up alone is SLOW_FACTOR times the fastest timed product is not timed again.
        Either way the loss must be a deterministic function of the weights (no dropout, BN in train
        mode or random augmentation), or no estimate would mean anything: a fresh forward pass must
        match the kept graph's, and the other methods' repeated products must agree.
        """
        gen = torch.Generator().manual_seed(self.probe_seed)
        v = torch.randn(1, self.size, generator=gen, dtype=torch.float64).to(self.device)
        kept = [c for c in candidates if c in KEPT]
        if kept:
            name = kept[0]
            t0 = time.perf_counter()
            first, why = self._try_product(name, v)  # builds the graph, then one product
            if first is not None:
                self.timings[name] = time.perf_counter() - t0  # cold: matmat keeps the fastest product seen
                self.setup_matvecs += 1
                self._require_finite(first)
                if check:
                    self._check_kept_graph()
                self.probe = (v[0], first[0])
                return name
            self.dropped[name] = why
            self._cache = None
            candidates = [c for c in candidates if c != name]
            if not candidates:
                raise self._none_works()
        self.gradient()  # timed (gradient_seconds), and it warms up the allocator for the candidates' timings
        results: dict[str, torch.Tensor] = {}  # the candidates, timed warm
        checked: dict[str, torch.Tensor] = {}  # every product made, for the agreement check
        tol = _agree_tol(self.dtype)
        for name in candidates:
            t0 = time.perf_counter()
            first, why = self._try_product(name, v)  # warm-up
            cold = time.perf_counter() - t0
            if first is None:
                self.dropped[name] = why
                continue
            self.setup_matvecs += 1
            self._require_finite(first)
            checked[name] = first
            fastest = min((self.timings[k] for k in results), default=math.inf)
            if self._summed([float(cold > SLOW_FACTOR * fastest)])[0] > 0:  # decided alike on every rank
                self.timings[name] = cold  # its first product alone was far slower than the fastest: not timed again
                continue
            t0 = time.perf_counter()
            second, why = self._try_product(name, v)
            if second is None:
                self.dropped[name] = why
                continue
            self.timings[name] = time.perf_counter() - t0
            self.setup_matvecs += 1
            if check and _rel(first, second) > tol:
                raise LandscapeError(
                    f"the loss is not deterministic: two products of the same vector differ by {_rel(first, second):.1e} "
                    "(relative); remove dropout, BN in train mode or random augmentation from the model and data"
                )
            results[name] = second
        if not results:
            raise self._none_works()
        if check:
            ref_name = next(iter(results))
            for name, r in checked.items():
                if _rel(results[ref_name], r) > tol:
                    raise LandscapeError(
                        f"the loss is not deterministic: products by {ref_name} and {name} differ by "
                        f"{_rel(results[ref_name], r):.1e} (relative); remove dropout, BN in train mode or random augmentation"
                    )
        if self.world.size > 1:  # the mean time over the ranks, the same on every rank
            means = self._summed([self.timings[k] for k in results])
            self.timings.update({k: t / self.world.size for k, t in zip(results, means)})
        best = min(results, key=lambda k: self.timings[k])
        self.probe = (v[0], results[best][0])
        return best

    def take_probe(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The set-up's (v, H v), handed over to an estimator's first step and no longer held here: passed
        as `start=op.take_probe` (the function), nothing keeps these two P-sized float64 vectors after it."""
        probe, self.probe = self.probe, None
        return probe

    @staticmethod
    def _require_finite(product: torch.Tensor) -> None:
        lo, hi = torch.aminmax(product)  # NaN and infinities show in these two (no mask of the product's size)
        if not bool(torch.isfinite(lo) & torch.isfinite(hi)):
            raise LandscapeError("the curvature product is NaN or infinite at this checkpoint (is the loss finite?)")

    def _check_kept_graph(self) -> None:
        """A fresh forward pass must give the kept graph's outputs (else the loss is not deterministic)."""
        assert self._cache is not None
        tol = _agree_tol(self.dtype)
        worst = 0.0
        with torch.no_grad():
            for (xb, _, _), state in zip(self._batches(), self._cache):
                fresh = self._forward(self.u0, xb)
                fresh = self._logits(fresh) if self.curvature != "hessian" else _kept(fresh)
                worst = max(worst, _rel(fresh, state[2].detach()))  # the kept outputs (every method's state[2])
        worst = self._summed([worst])[0]  # every rank decides alike
        if worst > tol:
            raise LandscapeError(
                f"the loss is not deterministic: two forward passes at the same weights differ by {worst:.1e} "
                "(relative); remove dropout, BN in train mode or random augmentation from the model and data"
            )

    @property
    def hvp_seconds(self) -> float:
        return self.timings[self.method]

    @property
    def ratio(self) -> float:
        """Seconds per product over seconds per gradient (both on the whole data set, the fastest seen).

        When no gradient was timed yet (the kept-graph method needs none), one is timed now: a
        diagnostic, so it is paid only when asked for (on every rank alike: the gradient is summed).
        """
        if self.gradient_seconds is None:
            self.gradient()  # one: after the products the allocator is warm (a second cost 1.4 s of a 40 s ViT run)
        return self.hvp_seconds / max(self.gradient_seconds or math.inf, 1e-12)

    def info(self) -> dict[str, Any]:
        """What the operator measured and chose, for the results file and the summary."""
        ratio = self.ratio  # may time the gradient first
        return {
            "curvature": self.curvature,
            "method": self.method,
            "seconds_per_product": self.timings,
            "dropped_methods": self.dropped,
            "gradient_seconds": self.gradient_seconds,
            "product_to_gradient_ratio": ratio,
            "setup_matvecs": self.setup_matvecs,
            "batched_vectors": self._batched,
            "seconds_per_vector_in_chunks": self._chunk_seconds,
            "size": self.size,
            "samples": self.n_samples,
            "processes": self.world.size,
        }

    def close(self) -> None:
        """Drop the kept graph (memory)."""
        self._cache = None


MatMat = Callable[[torch.Tensor], torch.Tensor]


def _kept(out: Any) -> torch.Tensor:
    """The tensor of a model output kept to check that a fresh forward pass gives the same (any output:
    the logits where they are found, else its first floating-point tensor)."""
    try:
        return logits_of(out)
    except LandscapeError:
        leaves = [
            t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor) and t.is_floating_point()
        ]
        if not leaves:
            raise
        return leaves[0]


def _vjp_into(
    output: torch.Tensor, inputs: Sequence[torch.Tensor], V: torch.Tensor, batched: bool, into: torch.Tensor
) -> torch.Tensor:
    """Rows V_i^T d(output)/d(inputs), batched over i (vmap) or looped, written into `into` [k, sum of the
    inputs' sizes], each input's gradient copied into its columns and let go of at once (the pieces never
    all live beside the result); zeros where unused."""
    if not output.requires_grad:
        return into.zero_()
    for i in range(1 if batched else V.shape[0]):
        if batched:
            with vmapped():  # is_grads_batched runs the backward under vmap
                found = torch.autograd.grad(
                    output, inputs, grad_outputs=V, retain_graph=True, is_grads_batched=True, allow_unused=True
                )
        else:  # <output, v> with v itself as its gradient: the numbers of grad_outputs=v, whose first use imports
            # torch's symbolic shapes and sympy (1.1 s, a third of a small model's top-5 run), and not v times 1
            # (torch's dot: a copy of v held through the backward)
            found = torch.autograd.grad(_Contraction.apply(output, V[i]), inputs, retain_graph=True, allow_unused=True)
        grads: list[torch.Tensor | None] = list(found)
        del found
        dest = into if batched else into[i]
        start = 0
        for j, inp in enumerate(inputs):
            part = dest[..., start : start + inp.numel()]
            grad, grads[j] = grads[j], None
            if grad is None:
                part.zero_()
            else:
                part.copy_(grad.reshape(part.shape))
                del grad
            start += inp.numel()
    return into


def _into(out: torch.Tensor | None, result: torch.Tensor) -> torch.Tensor:
    """`result`, or copied into `out` when one is given."""
    return result if out is None else out.copy_(result)


class _Contraction(torch.autograd.Function):
    """<output, v> as one number, whose gradient with respect to `output` is v itself: for the gradient of
    this number alone (`autograd.grad` of it, seeded with 1). torch's dot hands on v times that 1, a new
    tensor of v's size (one P-sized vector more at a Hessian-vector product's peak)."""

    @staticmethod
    def forward(ctx: Any, output: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        v = v.reshape(output.shape).to(output.dtype)
        ctx.save_for_backward(v)
        return torch.dot(output.reshape(-1), v.reshape(-1))

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (v,) = ctx.saved_tensors
        return v, None


def _dot(output: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """<output, v> as one number, whose gradient is the vector-Jacobian product v^T d(output) (a dot, not
    (output * v).sum(): no product of the two is formed), differentiable again (`_Contraction` is not)."""
    return torch.dot(output.reshape(-1), v.reshape(-1).to(output.dtype))
