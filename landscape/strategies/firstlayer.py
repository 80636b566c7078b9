"""`firstlayer`, `firstlayer-vmap`: the first layer is linear in the coordinates, so its outputs at
every point are Y0 + sum_k c_k Y_k with Y0 = layer(x; W0), Y_k = layer(x; D_k), computed once; the
rest of the network runs per point (`loop`) or K points per call (`vmap`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from landscape.fused import norm_affine
from landscape.layers import linear_in_own_weights
from landscape.model_io import Inputs, call
from landscape.problem import Problem
from landscape.strategies.base import (
    BuildContext,
    Evaluation,
    NotApplicable,
    Strategy,
    caches_per_sample,
    keyword_inputs,
    points_within,
)
from landscape.strategies.loop import LoopStrategy
from landscape.strategies.vmap import VmapStrategy, check_several_points_fit

FIRST_LAYER_POINTS = 8  # points whose first-layer outputs one product of a `firstlayer` strategy forms ...
FIRST_LAYER_CPU_BLOCK = 32 << 20  # ... within this many bytes on a CPU


def find_first_layer(problem: Problem) -> tuple[str, nn.Module] | None:
    """The Linear/Conv module that receives the raw input x, if the model starts with one and calls it once."""
    probe, _ = problem.head(2)
    if not isinstance(probe, torch.Tensor):
        return None  # keyword inputs (token ids and masks): the first layer is not fed by one input tensor
    hits: list[tuple[str, nn.Module]] = []
    calls: dict[str, int] = {}
    handles = []

    def hook(name: str, module: nn.Module) -> Callable[[nn.Module, tuple[Any, ...]], None]:
        def fn(mod: nn.Module, args: tuple[Any, ...]) -> None:
            calls[name] = calls.get(name, 0) + 1
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
    if not hits or not linear_in_own_weights(hits[0][1]):
        return None  # a subclass, hook or parametrization (weight norm) computes more than the stock layer
    if calls[hits[0][0]] > 1:
        return None  # applied again, to other inputs than x (a layer shared across steps or branches)
    owned = set(_param_names(hits[0]))
    if not owned or not owned <= set(problem.layout.names):
        return None
    return hits[0]


def reads_weights_elsewhere(problem: Problem, first: tuple[str, nn.Module]) -> bool:
    """Whether the loss depends on the first layer's weights other than through its call (a tied
    decoder, another module sharing them): the loss on a few rows with the layer's output given and
    its weights NaN differs from the loss with them."""
    x, y = problem.head(2)
    layer = first[1]
    params = list(layer.parameters(recurse=False))
    saved = [p.detach().clone() for p in params]
    with torch.no_grad():
        given = layer(x)
        want = problem.loss_fn(call(problem.model, x), y)
        layer.forward = lambda *_: given
        try:
            for p in params:
                p.fill_(float("nan"))
            got = problem.loss_fn(call(problem.model, x), y)
        finally:
            del layer.forward
            for p, s in zip(params, saved, strict=True):
                p.copy_(s)
    return not torch.allclose(got, want, rtol=0, atol=0, equal_nan=True)


def writes_its_inputs(problem: Problem) -> str | None:
    """Why the first layer's output cannot be cached from the raw input: the model changes its input in
    place before the layer reads it (`x /= 255` in forward)."""
    return "the model writes into its input in place" if problem.writes_inputs else None


class FirstLayerCache:
    """The first layer's outputs at the checkpoint and along each direction, per batch of the data.

    The layer is linear in its weights, so at theta + sum_k c_k D_k its output is
    Y0 + sum_k c_k Y_k with Y0 = layer(x; W0, b0) and Y_k = layer(x; D_k weight, D_k bias).
    An eval-mode BatchNorm after it whose own weights do not move (`norm`: zero directions, the
    default ignore="biasbn") is an affine map y * s + t fixed for the whole sweep, so it is
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
        self.want_channels_last = (
            channels_last  # 2-D conv outputs stored channels-innermost (`channels_last`: they are)
        )
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
                assert isinstance(xb, torch.Tensor)  # `find_first_layer` ruled out keyword inputs
                xm = xb.to(problem.theta.dtype)
                # channels innermost for a 2-D conv, so every point's output comes out channels-last: oneDNN
                # then writes each product in that order, and it is copied as it is (stacking the products
                # and permuting them after took 2x the time: SqueezeNet's 1024 images, 343 against 148 ms)
                self.channels_last = self.want_channels_last and isinstance(self.layer, nn.Conv2d)
                if self.channels_last:
                    xm = xm.contiguous(memory_format=torch.channels_last)
                weights = [(theta[w_name], theta[b_name] if has_bias else None)] + [
                    (dirs[w_name][j], dirs[b_name][j] if has_bias else None) for j in range(directions.shape[0])
                ]
                stacked: torch.Tensor | None = None  # [1 + k, B, ...], or [1 + k, B, H, W, C] channels-last
                for j, (weight, bias) in enumerate(weights):
                    out = self._apply(xm, weight, bias)
                    if self.channels_last:
                        out = out.permute(0, 2, 3, 1)
                    if stacked is None:
                        stacked = out.new_empty((len(weights), *out.shape))
                    if scale is None:
                        stacked[j].copy_(out)
                    else:  # the folded norm's scale per channel: the last dimension channels-last, else the second
                        torch.mul(out, scale.to(out.dtype).view(self._channel_view(out)), out=stacked[j])
                assert stacked is not None
                if shift is not None:
                    stacked[0] += shift.to(stacked.dtype).view(self._channel_view(stacked[0]))
                self.per_batch.append(stacked)

    def _channel_view(self, out: torch.Tensor) -> tuple[int, ...]:
        """The shape a per-channel vector takes to scale one point's output `out` ([B, C, ...], or [B, H, W, C])."""
        return (-1,) if self.channels_last else (-1,) + (1,) * (out.dim() - 2)

    def _apply(self, xb: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if isinstance(self.layer, nn.Linear):
            return F.linear(xb, weight, bias)
        conv: Any = self.layer
        out: torch.Tensor = conv._conv_forward(xb, weight, bias)
        return out

    def point_bytes(self) -> int:
        """Bytes of one point's outputs for the largest batch."""
        return max(t[0].numel() * t.element_size() for t in self.per_batch) if self.per_batch else 0

    def outputs(self, batch_index: int, coords: torch.Tensor) -> torch.Tensor:
        """The layer's output for one batch at each point: coords [K, k] -> [K, B, ...] in the model's dtype."""
        coef = torch.cat([coords.new_ones(coords.shape[0], 1), coords], dim=1)
        out: torch.Tensor = torch.tensordot(coef, self.per_batch[batch_index], dims=1).to(self.dtype)
        return out.permute(0, 1, 4, 2, 3) if self.channels_last else out

    def replace_forward(self, source: Callable[[], torch.Tensor | None]) -> None:
        """Make the target module return `source()` instead of computing its output."""
        self.target.forward = lambda _x: source()

    def restore_forward(self) -> None:
        del self.target.forward


def _param_names(named: tuple[str, nn.Module]) -> tuple[str, ...]:
    """Flat-layout names of a module's own parameters."""
    name, module = named
    prefix = f"{name}." if name else ""
    return tuple(prefix + n for n, _ in module.named_parameters(recurse=False))


def cache_bytes_first_layer(problem: Problem, first: tuple[str, nn.Module], k: int) -> int:
    """Memory the first-layer cache would take (outputs for the whole data set, 1 + k copies)."""
    x, _ = problem.head(1)
    assert isinstance(x, torch.Tensor)
    with torch.no_grad():
        out: torch.Tensor = first[1](x)
    return int(out.numel() * problem.n * (1 + k) * problem.theta.element_size())


def first_layer_of(problem: Problem, directions: torch.Tensor, budget: int) -> tuple[str, nn.Module]:
    """The first layer a `firstlayer` strategy caches; NotApplicable without one, ValueError when its cache would not fit."""
    first = find_first_layer(problem)
    if first is None:
        raise NotApplicable(
            "the model does not start with a stock Linear/Conv layer fed directly by the input (not a subclass with "
            "its own forward, hooks or a parametrization)"
        )
    if cache_bytes_first_layer(problem, first, directions.shape[0]) > budget:
        raise ValueError("the first layer's cached outputs would not fit the memory budget")
    return first


class FirstLayerStrategy(LoopStrategy):
    """The per-point loop with the first layer's output assembled from cached products, K points'
    outputs per product (one pass over the cache for K points: the combination reads 1 + k times
    the data it writes, which made it 15% of a point's time on the CNN sample)."""

    name = "firstlayer"

    @classmethod
    def rules_out(cls, problem: Problem) -> str | None:
        return keyword_inputs(problem) or caches_per_sample(problem) or writes_its_inputs(problem)

    @classmethod
    def build(cls, problem: Problem, directions: torch.Tensor, ctx: BuildContext) -> Strategy:
        first = first_layer_of(problem, directions, ctx.memory_budget)
        return cls(problem, directions, first, ctx.batch_size, memory_budget=ctx.memory_budget)

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
        # the cached layer's weights need not be written per point (up to half a point's time on a
        # wide-input MLP) unless the model reads them elsewhere: a tied decoder, a module sharing them
        self.skip = frozenset() if reads_weights_elsewhere(problem, first) else self.cache.owned
        self._current: torch.Tensor | None = None
        self.k = points_within(
            self.cache.point_bytes(), FIRST_LAYER_POINTS, problem.device, memory_budget // 4, FIRST_LAYER_CPU_BLOCK
        )

    def evaluate_points(self, coords: torch.Tensor, whole_calls: bool = False) -> Evaluation:
        self.cache.refresh()
        self.cache.replace_forward(lambda: self._current)
        try:
            return super().evaluate_points(coords, whole_calls)
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

    @classmethod
    def rules_out(cls, problem: Problem) -> str | None:
        return keyword_inputs(problem) or caches_per_sample(problem) or writes_its_inputs(problem)

    @classmethod
    def build(cls, problem: Problem, directions: torch.Tensor, ctx: BuildContext) -> Strategy:
        check_several_points_fit(problem, ctx)
        first = first_layer_of(problem, directions, ctx.memory_budget)
        return cls(problem, directions, first, ctx.points_per_call, ctx.batch_size)

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

    def evaluate_points(self, coords: torch.Tensor, whole_calls: bool = False) -> Evaluation:
        self.cache.replace_forward(lambda: self.first_out)
        try:
            return super().evaluate_points(coords, whole_calls)
        finally:
            self.cache.restore_forward()

    def shrink(self) -> str | None:
        return self.fewer_points()  # the cache is laid out per batch; the loop strategy is the fallback

    def close(self) -> None:
        self.cache.per_batch.clear()
        super().close()
