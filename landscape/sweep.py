"""Batched evaluation of the dataset-mean loss (and accuracy) at many points theta + c @ D.

The strategies share one interface, `Strategy.evaluate(coords) -> (loss, accuracy)`, and one loop
(k points per call, each call over the data's batches); they differ in `per_call` and `on_batch`:

- `loop`: one point at a time, weights written in place, one pass over the data per point;
- `vmap`: K points per call, `torch.func.functional_call` under `torch.vmap` over stacked weights;
- `firstlayer`: the first layer (Linear/Conv fed directly by x) is linear in the coordinates, so its
  output at every point is Y0 + sum_k c_k Y_k with Y0 = layer(x; W0), Y_k = layer(x; D_k), computed once
  (and formed for several points per product); the rest of the network runs per point as in `loop`;
- `fused`, `firstlayer-fused`: `loop` and `firstlayer` through `landscape.fused`'s rewrite of the
  model (BatchNorm folded into the layer before it, ReLUs in place, channels-last data for 2-D convs;
  a BatchNorm after the first layer whose weights do not move goes into the cached products);
- `mlp`: for a chain of Linear layers and elementwise activations with a built-in loss, K points per
  call without the model: the first layer as in `firstlayer`, the rest as batched products in a
  features-first layout (`landscape.mlp`).

`choose_strategy` times each one on the first grid points and keeps the fastest (each probe point's
value is kept from the candidate that evaluated it, so the probe costs no extra points). Nothing
here does I/O.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import fx

from landscape.errors import LandscapeError
from landscape.fused import NORMS, FoldedNorm, channels_last_input, fuse_for_inference, has_conv2d, norm_affine
from landscape.mlp import MlpChain, features_first_loss, loss_kind
from landscape.model_io import (
    Inputs,
    call,
    call_functional,
    logits_of,
    math_attention,
    output_numel,
    predictions_correct,
    take,
)
from landscape.problem import Problem

STRATEGIES = ("loop", "vmap", "firstlayer", "firstlayer-vmap", "fused", "firstlayer-fused", "mlp")
PROBE_POINTS = 128  # grid points a caller hands the probe: each is evaluated once, by one candidate, and stored
SHORTLIST_POINTS = 4  # the probe's first stage times each strategy on this many points ...
SHORTLIST_FACTOR = 3.0  # ... and drops those this many times slower than the fastest
STAGE2_POINTS = 16  # the second stage times each survivor on this many points (enough to fill a vmap call) ...
STAGE2_SECONDS = 0.5  # ... best of `repeats` runs, fewer once a candidate has spent this long
PROBE_SHARE = 0.03  # a short run's probe may cost this share of the run's estimated time ...
CLOSE_FACTOR = 1.3  # ... so then only candidates this close to the fastest are timed again
LOOP_MARGIN = 1.05  # another strategy replaces the plain loop only when its probe was this many times faster:
# probe timings jitter by about that much, and on the transformer sample vmap (0.9x the loop over
# 300 points) won the probe in one run of two
MLP_CPU_BLOCK = 4 << 20  # bytes of one layer's activations for the K points of an `mlp` call on a CPU
FIRST_LAYER_POINTS = 8  # points whose first-layer outputs one product of a `firstlayer` strategy forms ...
FIRST_LAYER_CPU_BLOCK = 32 << 20  # ... within this many bytes on a CPU


class NotApplicable(ValueError):
    """The strategy has nothing to offer for this model (no first layer, nothing to fuse): skipped quietly."""


@dataclass
class Evaluation:
    """Loss and accuracy (NaN-free only where finite) at a batch of points."""

    loss: torch.Tensor  # float64 [n]
    accuracy: torch.Tensor | None  # float64 [n] or None for non-classification tasks


class Strategy:
    """Evaluates points theta + coords @ directions on the whole data set of a problem, `k` points
    per call: `per_call` prepares what the call's batches share (the points' weights), `on_batch`
    gives the k mean losses and numbers of correct predictions (or None) on one batch."""

    name = "base"
    k = 1

    def __init__(self, problem: Problem, directions: torch.Tensor, batch_size: int | None = None):
        self.problem = problem
        self.directions = directions.to(problem.device, problem.theta.dtype)  # [k, P]
        self.batch_size = batch_size or problem.batch_size
        self.forward: Callable[..., Any] = problem.model  # what the loop strategies call
        params = problem.params()
        self._slots = [
            (name, params[name], problem.layout.block(name), shape)
            for name, shape in zip(problem.layout.names, problem.layout.shapes)
        ]

    @torch.no_grad()
    def evaluate(self, coords: torch.Tensor) -> Evaluation:
        p = self.problem
        coords = coords.to(p.device, p.theta.dtype)
        loss = torch.zeros(coords.shape[0], dtype=torch.float64, device=p.device)
        correct = torch.zeros_like(loss)
        for start in range(0, coords.shape[0], self.k):
            c = coords[start : start + self.k]
            at = slice(start, start + c.shape[0])
            shared = self.per_call(c)
            for bi, (xb, yb, _) in enumerate(p.batches(self.batch_size)):
                lb, cb = self.on_batch(shared, bi, xb, yb, c)
                loss[at] += lb.double() * yb.shape[0]
                if cb is not None:
                    correct[at] += cb.double()
        return Evaluation((loss / p.n).cpu(), (correct / p.n).cpu() if p.classification else None)

    def per_call(self, c: torch.Tensor) -> Any:
        raise NotImplementedError

    def on_batch(
        self, shared: Any, batch_index: int, xb: Inputs, yb: torch.Tensor, c: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    def write_params(self, flat: torch.Tensor, skip: frozenset[str] = frozenset()) -> None:
        """Copy a flat weight vector into the model's parameters, in place."""
        with torch.no_grad():
            for name, param, block, shape in self._slots:
                if name not in skip:
                    param.copy_(flat[block].view(shape))

    def shrink(self) -> str | None:
        """Use less memory after an out-of-memory error: say how, or None when it cannot."""
        if self.batch_size > 1:
            self.batch_size //= 2
            return f"batch size {self.batch_size}"
        return None

    def fewer_points(self) -> str | None:
        """Halve the points per call; None once there is one."""
        if self.k > 1:
            self.k //= 2
            return f"{self.k} point{'s' if self.k > 1 else ''} per call"
        return None

    def close(self) -> None:
        """Put the checkpoint weights back into the model."""
        self.write_params(self.problem.theta)


class LoopStrategy(Strategy):
    """One point per forward pass over the data, weights updated in place."""

    name = "loop"
    skip: frozenset[str] = frozenset()

    def per_call(self, c: torch.Tensor) -> None:
        self.write_point(c[0])

    def on_batch(
        self, shared: None, batch_index: int, xb: Inputs, yb: torch.Tensor, c: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.point_loss(xb, yb)

    def write_point(self, c: torch.Tensor) -> None:
        """Write the weights theta + D^T c into the model (but the tensors in `skip`)."""
        self.write_params(torch.addmv(self.problem.theta, self.directions.T, c), self.skip)

    def point_loss(self, xb: Inputs, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Mean loss and number of correct predictions (classification) on one batch at the written weights."""
        out = call(self.forward, xb)
        correct = predictions_correct(out, yb) if self.problem.classification else None
        return self.problem.loss_fn(out, yb), correct


class VmapStrategy(Strategy):
    """K points per call: stacked weights through functional_call under torch.vmap."""

    name = "vmap"
    feeds_first_layer = False  # True: the first layer's per-point outputs are passed in, not computed

    def __init__(self, problem: Problem, directions: torch.Tensor, points_per_call: int = 16, batch_size: int | None = None):
        super().__init__(problem, directions, batch_size)
        self.k = points_per_call
        model, buffers, loss_fn, cls = problem.model, problem.buffers, problem.loss_fn, problem.classification

        def one(params: dict[str, torch.Tensor], xb: Inputs, yb: torch.Tensor, first_out: torch.Tensor | None):
            self.first_out = first_out  # read by the first layer's replaced forward (FirstLayerVmapStrategy)
            out = call_functional(model, (params, buffers), xb)
            loss = loss_fn(out, yb)
            correct = predictions_correct(out, yb) if cls else torch.zeros((), device=yb.device)
            return loss, correct

        self._batched = torch.vmap(one, in_dims=(0, None, None, 0 if self.feeds_first_layer else None))
        self.first_out: torch.Tensor | None = None

    def shrink(self) -> str | None:
        """Halve the points per call, then the batch size."""
        return self.fewer_points() or super().shrink()

    def first_layer_outputs(self, batch_index: int, c: torch.Tensor) -> torch.Tensor | None:
        """Per-point outputs of the first layer for one batch, [K, B, ...] (None: computed by the model)."""
        return None

    def per_call(self, c: torch.Tensor) -> dict[str, torch.Tensor]:
        flat = self.problem.theta + c @ self.directions  # [K, P]
        return {k: v.to(self.problem.dtype) for k, v in self.problem.layout.unflatten(flat).items()}

    def on_batch(
        self, shared: dict[str, torch.Tensor], batch_index: int, xb: Inputs, yb: torch.Tensor, c: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        with math_attention():  # fused attention has no batching rule: vmap would loop over the points
            return self._batched(shared, xb, yb, self.first_layer_outputs(batch_index, c))


def find_first_layer(problem: Problem) -> tuple[str, nn.Module] | None:
    """The Linear/Conv module that receives the raw input x, if the model starts with one."""
    if not isinstance(problem.x, torch.Tensor):
        return None  # keyword inputs (token ids and masks): the first layer is not fed by one input tensor
    hits: list[tuple[str, nn.Module]] = []
    probe = problem.x[:2]
    handles = []

    def hook(name: str, module: nn.Module):
        def fn(mod, args):
            if not hits and args and args[0] is probe:
                hits.append((name, mod))

        return fn

    for name, module in problem.model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            handles.append(module.register_forward_pre_hook(hook(name, module)))
    try:
        with torch.no_grad():
            problem.model(probe)
    finally:
        for h in handles:
            h.remove()
    if not hits:
        return None
    owned = set(_param_names(hits[0]))
    if not owned or not owned <= set(problem.layout.names):
        return None
    return hits[0]


class FirstLayerCache:
    """The first layer's outputs at the checkpoint and along each direction, per batch of the data.

    The layer is linear in its weights, so at theta + sum_k c_k D_k its output is
    Y0 + sum_k c_k Y_k with Y0 = layer(x; W0, b0) and Y_k = layer(x; D_k weight, D_k bias).
    An eval-mode BatchNorm after it whose own weights do not move (`norm`: zero directions, the
    default `--ignore biasbn`) is an affine map y * s + t fixed for the whole sweep, so it is
    folded into the products: Y0 = BN(layer(x; W0, b0)), Y_k = s * layer(x; D_k). `target` is the
    module whose forward the cached outputs replace (the layer, or the graph's layer+norm module).
    The norm's statistics and weights are checked before every use (`refresh`): the commands over
    checkpoints write each point's BatchNorm buffers, and then the products are made again.
    """

    def __init__(
        self,
        problem: Problem,
        directions: torch.Tensor,
        first: tuple[str, nn.Module],
        batch_size: int,
        channels_last: bool = False,
        norm: tuple[str, nn.Module] | None = None,
        target: nn.Module | None = None,
    ):
        name, self.layer = first
        self.target = target or self.layer
        self.owned = frozenset(_param_names(first) + (_param_names(norm) if norm else ()))
        self.norm = norm[1] if norm else None
        self.problem, self.directions, self.batch_size = problem, directions, batch_size
        self.want_channels_last = channels_last  # 2-D conv outputs stored channels-innermost (`channels_last`: they are)
        self.channels_last = False
        self.prefix = f"{name}." if name else ""
        self.per_batch: list[torch.Tensor] = []  # [1 + k, B, ...], or [1 + k, B, H, W, C] channels-last
        self._folded: tuple[torch.Tensor, torch.Tensor] | None = None  # the norm's (scale, shift) in the products
        self._build()

    def _affine(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self.norm is None:
            return None
        with torch.no_grad():
            return norm_affine(self.norm)

    def refresh(self) -> None:
        """Make the products again if the folded norm's map (from its statistics and weights) changed since."""
        now = self._affine()
        if now is not None and self._folded is not None and not all(map(torch.equal, now, self._folded)):
            self._build()

    def _build(self) -> None:
        problem, directions = self.problem, self.directions
        theta = problem.layout.unflatten(problem.theta)
        dirs = problem.layout.unflatten(directions)
        w_name, b_name = self.prefix + "weight", self.prefix + "bias"
        has_bias = b_name in self.owned
        self.dtype = problem.dtype
        self.per_batch.clear()
        self._folded = self._affine()
        scale, shift = self._folded or (None, None)
        with torch.no_grad():  # at the weights' precision (float32 when the model runs in bfloat16)
            for xb, _, _ in problem.batches(self.batch_size):
                xm = xb.to(problem.theta.dtype)
                outs = [self._apply(xm, theta[w_name], theta[b_name] if has_bias else None)]
                for j in range(directions.shape[0]):
                    outs.append(self._apply(xm, dirs[w_name][j], dirs[b_name][j] if has_bias else None))
                stacked = torch.stack(outs)
                if scale is not None and shift is not None:  # per channel: dimension 2 of [1 + k, B, C, ...]
                    view = (1, 1, -1) + (1,) * (stacked.dim() - 3)
                    stacked *= scale.to(stacked.dtype).view(view)
                    stacked[0] += shift.to(stacked.dtype).view(view[1:])
                self.channels_last = self.want_channels_last and stacked.dim() == 5
                if self.channels_last:  # channels innermost, so every point's output comes out channels-last
                    stacked = stacked.permute(0, 1, 3, 4, 2).contiguous()
                self.per_batch.append(stacked)

    def _apply(self, xb: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if isinstance(self.layer, nn.Linear):
            return F.linear(xb, weight, bias)
        return self.layer._conv_forward(xb, weight, bias)  # type: ignore[attr-defined]

    def point_bytes(self) -> int:
        """Bytes of one point's outputs for the largest batch."""
        return max(t[0].numel() * t.element_size() for t in self.per_batch) if self.per_batch else 0

    def outputs(self, batch_index: int, coords: torch.Tensor) -> torch.Tensor:
        """The layer's output for one batch at each point: coords [K, k] -> [K, B, ...] in the model's dtype."""
        coef = torch.cat([coords.new_ones(coords.shape[0], 1), coords], dim=1)
        out = torch.tensordot(coef, self.per_batch[batch_index], dims=1).to(self.dtype)
        return out.permute(0, 1, 4, 2, 3) if self.channels_last else out

    def replace_forward(self, source: Callable[[], torch.Tensor | None]) -> None:
        """Make the target module return `source()` instead of computing its output."""
        self.target.forward = lambda _x: source()  # type: ignore[method-assign]

    def restore_forward(self) -> None:
        del self.target.forward


def points_within(per_point: int, most: int, device: torch.device, budget: int, cpu_block: int) -> int:
    """Points per call (1 to `most`) whose `per_point` bytes of temporaries fit `budget`, and on a CPU
    also `cpu_block` (blocks that stay in cache ran faster than larger ones)."""
    limit = min(budget, cpu_block) if device.type == "cpu" else budget
    return max(1, min(most, limit // max(per_point, 1)))


def _param_names(named: tuple[str, nn.Module]) -> tuple[str, ...]:
    """Flat-layout names of a module's own parameters."""
    name, module = named
    prefix = f"{name}." if name else ""
    return tuple(prefix + n for n, _ in module.named_parameters(recurse=False))


def cache_bytes_first_layer(problem: Problem, first: tuple[str, nn.Module], k: int) -> int:
    """Memory the first-layer cache would take (outputs for the whole data set, 1 + k copies)."""
    with torch.no_grad():
        out = first[1](problem.x[:1])
    return out.numel() * problem.n * (1 + k) * problem.theta.element_size()


class FirstLayerStrategy(LoopStrategy):
    """The per-point loop with the first layer's output assembled from cached products, K points'
    outputs per product (one pass over the cache for K points: the combination reads 1 + k times
    the data it writes, which made it 15% of a point's time on the CNN sample)."""

    name = "firstlayer"

    def __init__(
        self,
        problem: Problem,
        directions: torch.Tensor,
        first: tuple[str, nn.Module],
        batch_size: int | None = None,
        channels_last: bool = False,
        norm: tuple[str, nn.Module] | None = None,
        target: nn.Module | None = None,
        memory_budget: int = 1 << 30,
    ):
        super().__init__(problem, directions, batch_size)
        self.cache = FirstLayerCache(problem, self.directions, first, self.batch_size, channels_last, norm, target)
        self.skip = self.cache.owned
        self._current: torch.Tensor | None = None
        self.k = points_within(self.cache.point_bytes(), FIRST_LAYER_POINTS, problem.device, memory_budget // 4, FIRST_LAYER_CPU_BLOCK)

    def evaluate(self, coords: torch.Tensor) -> Evaluation:
        self.cache.refresh()
        self.cache.replace_forward(lambda: self._current)
        try:
            return super().evaluate(coords)
        finally:
            self.cache.restore_forward()

    def per_call(self, c: torch.Tensor) -> None:
        return None  # each point's weights are written in `on_batch`, next to its forward pass

    def on_batch(
        self, shared: None, batch_index: int, xb: Inputs, yb: torch.Tensor, c: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        outputs = self.cache.outputs(batch_index, c)
        losses, correct = [], []
        for j in range(c.shape[0]):
            self.write_point(c[j])
            self._current = outputs[j]
            lb, cb = self.point_loss(xb, yb)
            losses.append(lb)
            correct.append(cb)
        self._current = None
        return torch.stack(losses), (torch.stack(correct) if self.problem.classification else None)  # type: ignore[arg-type]

    def shrink(self) -> str | None:
        return self.fewer_points()  # the cache is laid out per batch; the loop strategy is the fallback

    def close(self) -> None:
        self.cache.per_batch.clear()
        super().close()


class FirstLayerVmapStrategy(VmapStrategy):
    """K points per call under vmap, with the first layer's outputs assembled from cached products."""

    name = "firstlayer-vmap"
    feeds_first_layer = True

    def __init__(
        self,
        problem: Problem,
        directions: torch.Tensor,
        first: tuple[str, nn.Module],
        points_per_call: int = 16,
        batch_size: int | None = None,
    ):
        super().__init__(problem, directions, points_per_call, batch_size)
        self.cache = FirstLayerCache(problem, self.directions, first, self.batch_size)

    def first_layer_outputs(self, batch_index: int, c: torch.Tensor) -> torch.Tensor:
        return self.cache.outputs(batch_index, c)

    def evaluate(self, coords: torch.Tensor) -> Evaluation:
        self.cache.replace_forward(lambda: self.first_out)
        try:
            return super().evaluate(coords)
        finally:
            self.cache.restore_forward()

    def shrink(self) -> str | None:
        return self.fewer_points()  # the cache is laid out per batch; the loop strategy is the fallback

    def close(self) -> None:
        self.cache.per_batch.clear()
        super().close()


def _fused_graph(problem: Problem, keep: frozenset[nn.Module] = frozenset()) -> fx.GraphModule:
    """`fuse_for_inference`'s graph of the problem's model, or NotApplicable when it would not help."""
    why = "no BatchNorm after a Conv/Linear to fold and no 2-D convolution (or torch.fx cannot trace the model)"
    model = problem.model
    if not isinstance(problem.x, torch.Tensor):
        raise NotApplicable("the model takes keyword inputs")
    if not has_conv2d(model) and not any(isinstance(m, NORMS) for m in model.modules()):
        raise NotApplicable(why)  # known without tracing (a first trace took up to 0.17 s)
    fused = fuse_for_inference(model, keep, fold=problem.dtype in (torch.float32, torch.float64))
    folded = fused is not None and any(isinstance(m, FoldedNorm) for m in fused.modules())
    if fused is None or not (folded or has_conv2d(model)):  # ReLUs in place alone gained under 5%: not worth probing
        raise NotApplicable(why)
    return fused


def _use_fused(strat: LoopStrategy, fused: fx.GraphModule, layout_x: bool = True) -> None:
    """Point a loop strategy at a fused graph (and, with `layout_x`, at a copy of its problem with
    channels-last data for 2-D convs), after checking on a few samples that it gives the model's outputs."""
    p = strat.problem
    x = channels_last_input(p.x) if layout_x and has_conv2d(p.model) else p.x
    with torch.no_grad():
        want, got = logits_of(p.model(p.x[:64])), logits_of(fused(x[:64]))
    if not _agree(want.double().flatten(), got.double().flatten(), p.dtype):
        raise ValueError("the fused graph's outputs differ from the model's")
    strat.forward = fused
    if x is not p.x:  # the same problem with its data in the layout the fused graph prefers
        strat.problem = replace(p, x=x)


class FusedStrategy(LoopStrategy):
    """The per-point loop through the model's graph with BatchNorm folded and ReLUs in place."""

    name = "fused"

    def __init__(self, problem: Problem, directions: torch.Tensor, batch_size: int | None = None):
        super().__init__(problem, directions, batch_size)
        _use_fused(self, _fused_graph(problem))


class FirstLayerFusedStrategy(FirstLayerStrategy):
    """`firstlayer` through the fused graph. A BatchNorm right after the first layer whose weights
    have zero directions is folded into the cached products (and its pass over the activations
    saved); otherwise the first layer is kept out of the folding, its output being cached."""

    name = "firstlayer-fused"

    def __init__(
        self,
        problem: Problem,
        directions: torch.Tensor,
        first: tuple[str, nn.Module],
        batch_size: int | None = None,
        memory_budget: int = 1 << 30,
    ):
        fused = _fused_graph(problem)
        names = {m: n for n, m in problem.model.named_modules()}
        pair = next((m for m in fused.modules() if isinstance(m, FoldedNorm) and m.layer is first[1]), None)
        norm = (names[pair.norm], pair.norm) if pair is not None else None
        if norm is not None and any(directions[:, problem.layout.block(n)].any() for n in _param_names(norm)):
            # its weights move, so its scale differs per point: the first layer stays out of the folding
            # and the norm runs per point on the cached outputs
            fused, pair, norm = _fused_graph(problem, keep=frozenset([first[1]])), None, None
        super().__init__(
            problem, directions, first, batch_size, channels_last=has_conv2d(problem.model),
            norm=norm, target=pair, memory_budget=memory_budget,
        )
        _use_fused(self, fused, layout_x=False)  # x itself is not read: the cache is channels-last


class MlpStrategy(Strategy):
    """K points per call for an MLP (`landscape.mlp`): the first layer's outputs from products computed
    once, every later layer one batched product, activations laid out [K, features, B]."""

    name = "mlp"

    def __init__(
        self,
        problem: Problem,
        directions: torch.Tensor,
        points_per_call: int = 16,
        memory_budget: int = 1 << 30,
        batch_size: int | None = None,
    ):
        super().__init__(problem, directions, batch_size)
        if problem.dtype not in (torch.float32, torch.float64):
            raise NotApplicable("it runs in float32 or float64 only")
        if not isinstance(problem.x, torch.Tensor):
            raise NotApplicable("the model takes keyword inputs")
        chain = MlpChain.of(problem.model, set(problem.layout.names))
        if chain is None:
            raise NotApplicable("the model is not a chain of Linear layers and elementwise activations")
        last = chain.linears[-1][1].out_features
        kind = loss_kind(problem.loss_fn, problem.y, last)
        if kind is None:
            raise NotApplicable("it needs the built-in cross-entropy (class indices) or mse loss")
        self.chain, self.kind = chain, kind
        theta = problem.layout.unflatten(problem.theta)
        dirs = problem.layout.unflatten(self.directions)
        self.stacks = []  # per Linear: [1 + k, out, in (+ 1 for the bias)], the checkpoint then each direction
        for prefix, layer in chain.linears:
            stack = torch.cat([theta[f"{prefix}weight"][None], dirs[f"{prefix}weight"]])
            if layer.bias is not None:
                bias = torch.cat([theta[f"{prefix}bias"][None], dirs[f"{prefix}bias"]])
                stack = torch.cat([stack, bias[..., None]], dim=2)
            self.stacks.append(stack)
        first_bias = chain.linears[0][1].bias is not None
        self.first_out: list[torch.Tensor] = []  # per batch: [1 + k, out, B]
        with torch.no_grad():
            for xb, _, _ in problem.batches(self.batch_size):
                xf = (xb.flatten(1) if chain.flatten else xb).to(problem.theta.dtype)
                w = self.stacks[0]
                out = w[..., :-1] @ xf.T + w[..., -1:] if first_bias else w @ xf.T
                self.first_out.append(out)
        widest = max(layer.out_features for _, layer in chain.linears)
        per_point = widest * min(self.batch_size, problem.n) * problem.theta.element_size()
        # on a CPU, blocks that stay in cache: on the digits MLP K = 8-32 ran 1.2x K = 64
        self.k = points_within(per_point, points_per_call, problem.device, memory_budget // 3, MLP_CPU_BLOCK)

    def per_call(self, c: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The points' coefficients [K, 1 + k] and the weights of every Linear after the first."""
        coef = torch.cat([c.new_ones(c.shape[0], 1), c], dim=1)
        return coef, [(coef @ s.flatten(1)).view(c.shape[0], *s.shape[1:]) for s in self.stacks[1:]]

    def on_batch(
        self, shared: tuple[torch.Tensor, list[torch.Tensor]], batch_index: int, xb: torch.Tensor, yb: torch.Tensor, c: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        coef, weights = shared
        first = self.first_out[batch_index]
        h = (coef @ first.flatten(1)).view(c.shape[0], *first.shape[1:])
        layer_weights = iter(weights)
        for step in self.chain.steps[1:]:
            if isinstance(step, tuple):
                w = next(layer_weights)
                h = torch.baddbmm(w[..., -1:], w[..., :-1], h) if step[1].bias is not None else torch.bmm(w, h)
            else:
                h = step(h)
        return features_first_loss(h, yb, self.kind, self.problem.classification)

    def shrink(self) -> str | None:
        return self.fewer_points()  # the outputs are cached per batch; the loop strategy is the fallback

    def close(self) -> None:
        self.first_out.clear()
        super().close()


def build_strategy(
    name: str,
    problem: Problem,
    directions: torch.Tensor,
    *,
    points_per_call: int = 16,
    memory_budget: int = 1 << 30,
    batch_size: int | None = None,
) -> Strategy:
    """Construct strategy `name`; raises ValueError when it cannot run this model."""
    if name == "loop":
        return LoopStrategy(problem, directions, batch_size)
    if name == "vmap":
        return VmapStrategy(problem, directions, points_per_call, batch_size)
    if name == "fused":
        return FusedStrategy(problem, directions, batch_size)
    if name == "mlp":
        return MlpStrategy(problem, directions, points_per_call, memory_budget, batch_size)
    if name in ("firstlayer", "firstlayer-vmap", "firstlayer-fused"):
        first = find_first_layer(problem)
        if first is None:
            raise NotApplicable("the model does not start with a Linear/Conv layer fed directly by the input")
        if cache_bytes_first_layer(problem, first, directions.shape[0]) > memory_budget:
            raise ValueError("the first layer's cached outputs would not fit the memory budget")
        if name == "firstlayer":
            return FirstLayerStrategy(problem, directions, first, batch_size, memory_budget=memory_budget)
        if name == "firstlayer-fused":
            return FirstLayerFusedStrategy(problem, directions, first, batch_size, memory_budget)
        return FirstLayerVmapStrategy(problem, directions, first, points_per_call, batch_size)
    raise ValueError(f"unknown strategy {name!r}; expected one of {', '.join(STRATEGIES)}")


def memory_budget(device: torch.device) -> int:
    """Bytes a strategy may use for stacked weights and caches: 60% of the free GPU memory, 1 GiB on CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(0.6 * free)
    return 1 << 30


def points_per_call(problem: Problem, memory_budget: int, batch_size: int | None = None) -> int:
    """How many points the vmap strategies stack per call: bounded by weights and activations memory."""
    with torch.no_grad():
        out = problem.forward(take(problem.x, slice(0, 1)))
    per_point = problem.layout.size * problem.theta.element_size() * 2
    per_point += 8 * output_numel(out) * (batch_size or problem.batch_size) * problem.theta.element_size()  # rough activation allowance
    return int(max(1, min(64, memory_budget // max(per_point, 1))))


def tune_batch_size(problem: Problem, rounds: int = 3, margin: float = 0.9) -> int:
    """The batch size whose forward passes over the whole data set are fastest (cache effects make
    the whole set in one batch slower for some models on a CPU).

    The sizes are timed in interleaved rounds (the best of `rounds` per size), so a busy spell on
    the machine hits every size alike, and a size below the cap is taken only when it is clearly
    faster (under `margin` times the cap's time): a lucky pass once made the transformer sample run
    at half its batch, 15% slower.
    """
    cap = problem.batch_size
    sizes = sorted({min(problem.n, s) for s in (cap, cap // 2, cap // 4, cap // 16) if s >= 1}, reverse=True)
    if len(sizes) == 1:
        return sizes[0]
    best = dict.fromkeys(sizes, math.inf)
    with torch.no_grad():
        for _ in range(rounds):
            for size in sizes:
                start = time.perf_counter()
                for xb, yb, _ in problem.batches(size):
                    problem.loss_fn(problem.forward(xb), yb).item()
                best[size] = min(best[size], time.perf_counter() - start)
    fastest = min(sizes, key=lambda s: best[s])
    return fastest if best[fastest] < margin * best[sizes[0]] else sizes[0]


@dataclass
class Choice:
    """The strategy picked for a run, the seconds per point each candidate took, and why others dropped out."""

    strategy: Strategy
    timings: dict[str, float] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)
    inapplicable: dict[str, str] = field(default_factory=dict)  # nothing to offer this model (not a failure)
    probe_coords: torch.Tensor | None = None
    probe_result: Evaluation | None = None


def choose_strategy(
    problem: Problem,
    directions: torch.Tensor,
    probe_coords: torch.Tensor,
    *,
    candidates: tuple[str, ...] = STRATEGIES,
    budget: int | None = None,
    repeats: int = 2,
    total_points: int | None = None,
    warn: Callable[[str], None] = lambda msg: warnings.warn(msg, stacklevel=2),
) -> Choice:
    """Time each candidate on `probe_coords` (real grid points) and keep the fastest that agrees with the others.

    When the user named no batch size (`problem.auto_batch`), the batch size is tuned first. Every
    candidate evaluates the same point first (a warm-up, and the agreement check); then each is
    timed on fresh probe points, so with enough of them (1 + 4 per candidate + 32 per survivor)
    no probe work is wasted: the values of every probe point are returned (from whichever
    candidate evaluated it; the winner fills in any left) so the caller can store them. With one
    candidate nothing is timed. `total_points` (the run's size) bounds the probe's cost: on a run
    of a second or two, timing slow candidates again would cost more than the fastest one saves.
    """
    budget = memory_budget(problem.device) if budget is None else budget
    batch_size = tune_batch_size(problem) if problem.auto_batch and len(candidates) > 1 else problem.batch_size
    k = points_per_call(problem, budget, batch_size)
    built: dict[str, Strategy] = {}
    dropped: dict[str, str] = {}
    inapplicable: dict[str, str] = {}
    for name in candidates:
        try:
            built[name] = build_strategy(
                name, problem, directions, points_per_call=k, memory_budget=budget, batch_size=batch_size
            )
        except NotApplicable as exc:
            inapplicable[name] = str(exc)
        except Exception as exc:  # a model the strategy cannot run: fall back, say why
            dropped[name] = _one_line(exc)
    if not built:
        raise _none_can_run(candidates, {**inapplicable, **dropped})
    if len(built) == 1:
        (only,) = built.values()
        return Choice(only, dropped=dropped, inapplicable=inapplicable)
    timings: dict[str, float] = {}
    first: dict[str, float] = {}
    kept = _ProbeValues(probe_coords, problem.classification)

    def drop(name: str, why: str, message: str) -> None:
        dropped[name] = why
        warn(message)
        built.pop(name).close()

    # warm-up (vmap tracing, allocator) on the point farthest from the checkpoint, where a strategy
    # that computes something else would show it: every candidate must agree with the first
    far = int(probe_coords.norm(dim=1).argmax()) if probe_coords.numel() else 0
    reference: Evaluation | None = None
    for name, strat in list(built.items()):
        try:
            res = evaluate_shrinking(strat, probe_coords[far : far + 1], warn)
        except Exception as exc:
            drop(name, _one_line(exc), f"sweep strategy {name} cannot run this model ({_one_line(exc)}); falling back")
            continue
        finally:
            strat.write_params(problem.theta)
        if reference is None:
            reference = res
            kept.put(torch.tensor([far]), res)
        elif not _agree(reference.loss, res.loss, problem.dtype):
            drop(name, "its values disagree with the other strategies", f"sweep strategy {name} gives values that disagree with the others; not using it")

    def timed(name: str, strat: Strategy, points: int) -> float | None:
        """Seconds per point of `strat` on the next `points` probe points (their values kept), None if it raised."""
        idx = kept.take(points)
        try:
            t0 = time.perf_counter()
            res = evaluate_shrinking(strat, probe_coords[idx], warn)
            seconds = (time.perf_counter() - t0) / len(idx)
        except Exception as exc:
            drop(name, _one_line(exc), f"sweep strategy {name} cannot run this model ({_one_line(exc)}); falling back")
            return None
        finally:
            strat.write_params(problem.theta)
        kept.put(idx, res)
        return seconds

    for name, strat in list(built.items()):  # stage 1: a few points each, so a slow candidate costs little
        seconds = timed(name, strat, SHORTLIST_POINTS)
        if seconds is not None:
            first[name] = seconds
    fastest = min(first.values(), default=0.0)
    factor = SHORTLIST_FACTOR
    if total_points is not None and fastest > 0:  # what stage 2 would cost over running the fastest alone
        excess = sum(first[n] - fastest for n in built) * STAGE2_POINTS * repeats
        if excess > PROBE_SHARE * total_points * fastest:
            factor = CLOSE_FACTOR
    for name in [n for n in built if first[n] > factor * fastest]:
        timings[name] = first[name]  # too slow on the first points: not timed further
        built.pop(name).close()
    for name, strat in list(built.items()):  # stage 2: best of `repeats` runs, each on fresh points
        best, spent = math.inf, 0.0
        for _ in range(max(1, repeats)):
            seconds = timed(name, strat, STAGE2_POINTS)
            if seconds is None:
                break
            best, spent = min(best, seconds), spent + seconds * STAGE2_POINTS
            if spent > STAGE2_SECONDS:
                break
        if name in built:
            timings[name] = best
    if not built:
        raise _none_can_run(candidates, {**inapplicable, **dropped})
    best_name = fastest_or_loop({n: timings[n] for n in built})
    for name, strat in built.items():
        if name != best_name:
            strat.close()
    winner = built[best_name]
    rest = kept.missing()
    if len(rest):  # probe points no candidate reached: the winner evaluates them
        kept.put(rest, evaluate_shrinking(winner, probe_coords[rest], warn))
    return Choice(winner, timings, dropped, inapplicable, probe_coords, kept.result())


def fastest_or_loop(timings: dict[str, float]) -> str:
    """The candidate with the least seconds per point, unless the plain loop is within LOOP_MARGIN of it."""
    best = min(timings, key=lambda n: timings[n])
    if "loop" in timings and timings[best] * LOOP_MARGIN > timings["loop"]:
        return "loop"
    return best


class _ProbeValues:
    """The probe points' values as the candidates evaluate them: each point is kept from the first
    strategy that evaluated it, so no probe work is thrown away while fresh points last."""

    def __init__(self, coords: torch.Tensor, classification: bool) -> None:
        n = coords.shape[0]
        self.loss = torch.full((n,), math.nan, dtype=torch.float64)
        self.accuracy = torch.full((n,), math.nan, dtype=torch.float64) if classification else None
        self.have = torch.zeros(n, dtype=torch.bool)

    def take(self, count: int) -> torch.Tensor:
        """Indices of the next `count` points not yet evaluated; once those run out, evaluated ones
        again (their values are not kept twice)."""
        fresh = torch.nonzero(~self.have).flatten()[:count]
        if len(fresh) == count:
            return fresh
        done = torch.nonzero(self.have).flatten()
        pool = done if len(done) else fresh  # nothing evaluated yet: repeats of a point give equal values
        if len(pool) == 0:
            return fresh
        return torch.cat([fresh, pool[torch.arange(count - len(fresh)) % len(pool)]])

    def put(self, idx: torch.Tensor, res: Evaluation) -> None:
        new = ~self.have[idx]
        target = idx[new]
        self.loss[target] = res.loss[new]
        if self.accuracy is not None and res.accuracy is not None:
            self.accuracy[target] = res.accuracy[new]
        self.have[target] = True

    def missing(self) -> torch.Tensor:
        return torch.nonzero(~self.have).flatten()

    def result(self) -> Evaluation:
        return Evaluation(self.loss.clone(), None if self.accuracy is None else self.accuracy.clone())


def evaluate_shrinking(strat: Strategy, coords: torch.Tensor, warn: Callable[[str], None]) -> Evaluation:
    """`strat.evaluate`, retried with less memory after each out-of-memory error (GPU)."""
    while True:
        try:
            return strat.evaluate(coords)
        except torch.OutOfMemoryError:
            how = strat.shrink()
            if how is None:
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            warn(f"out of memory: going on with {how}")


def _agree(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> bool:
    tol = {torch.float64: 1e-9, torch.float32: 1e-3}.get(dtype, 3e-2)
    both = torch.isfinite(a) & torch.isfinite(b)
    return bool(torch.equal(torch.isfinite(a), torch.isfinite(b))) and bool(
        torch.allclose(a[both], b[both], rtol=tol, atol=tol)
    )


def _none_can_run(candidates: tuple[str, ...], why: dict[str, str]) -> LandscapeError:
    if len(candidates) == 1:
        return LandscapeError(f"--strategy {candidates[0]} cannot run this model: {why.get(candidates[0], 'unknown reason')}")
    return LandscapeError("no sweep strategy can run this model: " + "; ".join(f"{n}: {m}" for n, m in why.items()))


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def grid_coords(axes: list[torch.Tensor]) -> torch.Tensor:
    """All grid points in row-major order (the last axis fastest): [prod(n_k), k] float64."""
    mesh = torch.meshgrid(*[a.double() for a in axes], indexing="ij")
    return torch.stack([m.reshape(-1) for m in mesh], dim=1)


def parse_range(text: str, option: str) -> torch.Tensor:
    """'a:b:n' -> n evenly spaced points from a to b (inclusive), as in Li et al.'s tool."""
    parts = text.split(":")
    try:
        if len(parts) != 3:
            raise ValueError
        a, b, n = float(parts[0]), float(parts[1]), int(parts[2])
    except ValueError:
        raise LandscapeError(f"{option} {text!r}: expected MIN:MAX:POINTS, e.g. -1:1:51") from None
    if n < 1 or not (math.isfinite(a) and math.isfinite(b)):
        raise LandscapeError(f"{option} {text!r}: need finite bounds and at least one point")
    if n == 1:
        return torch.tensor([a], dtype=torch.float64)
    t = torch.arange(n, dtype=torch.float64) / (n - 1)
    return a * (1 - t) + b * t  # exact 0 at the middle of a symmetric range
