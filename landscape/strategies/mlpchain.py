"""`mlp`: for a chain of Linear layers, elementwise activations and per-feature normalizations with a
built-in loss, K points per call without calling the model (`landscape.mlp`): the first layer from
products computed once, every later layer one batched product in a features-first layout."""

from __future__ import annotations

import torch
import torch.nn as nn

from landscape.mlp import MlpChain, chain_leaves_only, features_first_loss, loss_kind, normalized_features
from landscape.model_io import Inputs
from landscape.problem import Problem
from landscape.strategies.base import (
    BuildContext,
    NotApplicable,
    Strategy,
    caches_per_sample,
    keyword_inputs,
    points_within,
)

NOT_A_CHAIN = "the model is not a chain of Linear layers, per-feature norms and elementwise activations"
MLP_CPU_BLOCK = 4 << 20  # bytes of one layer's activations for the K points of an `mlp` call on a CPU


class MlpStrategy(Strategy):
    """K points per call for an MLP (`landscape.mlp`): the first layer's outputs from products computed
    once, every later layer one batched product, activations laid out [K, features, B]."""

    name = "mlp"

    @classmethod
    def build(cls, problem: Problem, directions: torch.Tensor, ctx: BuildContext) -> Strategy:
        return cls(problem, directions, ctx.points_per_call, ctx.memory_budget, ctx.batch_size)

    @classmethod
    def rules_out(cls, problem: Problem) -> str | None:
        if (why := keyword_inputs(problem) or caches_per_sample(problem)) is not None:
            return why
        if not chain_leaves_only(problem.model):
            return NOT_A_CHAIN
        return None

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
        chain = MlpChain.of(problem.model, set(problem.layout.names))
        if chain is None:
            raise NotApplicable(NOT_A_CHAIN)
        last = chain.linears[-1][1].out_features
        kind = loss_kind(problem.loss_fn, problem.head(1)[1], last)
        if kind is None:
            raise NotApplicable("it needs the built-in cross-entropy (class indices) or mse loss")
        self.chain, self.kind = chain, kind
        # per layer, the checkpoint then each direction: [1 + k, out, in (+ 1 for the bias)] for a Linear,
        # [1 + k, features, 1 or 2] for a norm (its weight and bias; a BatchNorm's as a scale and a shift)
        self.stacks = [self._stack(problem, prefix, layer) for prefix, layer in chain.layers]
        first_bias = chain.linears[0][1].bias is not None
        self.first_out: list[torch.Tensor] = []  # per batch: [1 + k, out, B]
        with torch.no_grad():
            for xb, _, _ in problem.batches(self.batch_size):
                assert isinstance(xb, torch.Tensor)  # keyword inputs were ruled out (rules_out, by build_strategy)
                xf = (xb.flatten(1) if chain.flatten else xb).to(problem.theta.dtype)
                w = self.stacks[0]
                out = w[..., :-1] @ xf.T + w[..., -1:] if first_bias else w @ xf.T
                self.first_out.append(out)
        widest = max(layer.out_features for _, layer in chain.linears)
        per_point = widest * min(self.batch_size, problem.n) * problem.theta.element_size()
        # on a CPU, blocks that stay in cache: on the digits MLP K = 8-32 ran 1.2x K = 64
        self.k = points_within(per_point, points_per_call, problem.device, memory_budget // 3, MLP_CPU_BLOCK)

    def _stack(self, problem: Problem, prefix: str, layer: nn.Module) -> torch.Tensor:
        theta = problem.layout.unflatten(problem.theta)
        dirs = problem.layout.unflatten(self.directions)

        def rows(name: str, default: float | None = None) -> torch.Tensor:  # the checkpoint's, then the directions'
            if f"{prefix}{name}" in theta:
                return torch.cat([theta[f"{prefix}{name}"][None], dirs[f"{prefix}{name}"]])
            assert default is not None
            features = problem.buffers[f"{prefix}running_mean"].numel()
            fixed = torch.zeros(
                1 + self.directions.shape[0], features, dtype=problem.theta.dtype, device=problem.device
            )
            fixed[0] = default  # a BatchNorm without weights: scale 1, shift 0 at every point
            return fixed

        if isinstance(layer, nn.Linear):
            stack = rows("weight")
            return torch.cat([stack, rows("bias")[..., None]], dim=2) if layer.bias is not None else stack
        if isinstance(layer, nn.LayerNorm):
            return torch.stack([rows(n) for n in ("weight", "bias") if getattr(layer, n) is not None], dim=2)
        assert isinstance(layer, nn.BatchNorm1d)  # (h - mean) / sqrt(var + eps) * w + b: h * scale + shift
        mean, var = (problem.buffers[f"{prefix}running_{n}"].to(problem.theta.dtype) for n in ("mean", "var"))
        scale = rows("weight", 1.0) * (var + layer.eps).rsqrt()
        return torch.stack([scale, rows("bias", 0.0) - mean * scale], dim=2)

    def per_call(self, c: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The points' coefficients [K, 1 + k] and the weights of every layer after the first."""
        coef = torch.cat([c.new_ones(c.shape[0], 1), c], dim=1)
        return coef, [(coef @ s.flatten(1)).view(c.shape[0], *s.shape[1:]) for s in self.stacks[1:]]

    def on_batch(
        self,
        shared: tuple[torch.Tensor, list[torch.Tensor]],
        batch_index: int,
        xb: Inputs,
        yb: torch.Tensor,
        c: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        coef, weights = shared
        first = self.first_out[batch_index]
        h = (coef @ first.flatten(1)).view(c.shape[0], *first.shape[1:])
        layer_weights = iter(weights)
        for step in self.chain.steps[1:]:
            if not isinstance(step, tuple):
                h = step(h)
                continue
            w, layer = next(layer_weights), step[1]
            if isinstance(layer, nn.Linear):
                h = torch.baddbmm(w[..., -1:], w[..., :-1], h) if layer.bias is not None else torch.bmm(w, h)
            elif isinstance(layer, nn.LayerNorm):
                h = normalized_features(h, layer.eps).mul_(w[..., :1])
                h = h.add_(w[..., 1:]) if w.shape[-1] == 2 else h
            else:
                h = torch.addcmul(w[..., 1:], h, w[..., :1])  # a BatchNorm: the point's scale and shift
        return features_first_loss(h, yb, self.kind, self.problem.classification)

    def shrink(self) -> str | None:
        return self.fewer_points()  # the outputs are cached per batch; the loop strategy is the fallback

    def close(self) -> None:
        self.first_out.clear()
        super().close()
