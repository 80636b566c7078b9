"""`fused`, `firstlayer-fused`: `loop` and `firstlayer` through `landscape.fused`'s rewrite of the model
(BatchNorm folded into the layer before it, ReLUs in place, channels-last data for 2-D convs; a
BatchNorm after the first layer whose weights do not move goes into the cached products)."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import fx

from landscape.fused import (
    LAID_OUT_LEAST,
    NORMS,
    FoldedNorm,
    LaidOutConv,
    channels_last_input,
    choose_conv_layouts,
    conv_layouts,
    has_conv2d,
    rewrite_for_inference,
    set_conv_layouts,
    trace,
)
from landscape.model_io import logits_of
from landscape.problem import Problem
from landscape.strategies.base import BuildContext, NotApplicable, Strategy, agree, keyword_inputs
from landscape.strategies.firstlayer import FirstLayerStrategy, _param_names, first_layer_of
from landscape.strategies.loop import LoopStrategy

LAYOUT_POINTS = 4.0  # timing the convolutions' layouts costs about this many forward passes (2 runs of 2 layouts,
# fewer where one is far behind; one-tap convolutions untimed)
NOTHING_TO_FUSE = "no BatchNorm after a Conv/Linear to fold and no 2-D convolution"


def nothing_to_fuse(problem: Problem) -> str | None:
    """Why the fused graph cannot help, where the modules tell without tracing (a first trace took up to 0.17 s)."""
    if (why := keyword_inputs(problem)) is not None:
        return why
    if not has_conv2d(problem.model) and not any(isinstance(m, NORMS) for m in problem.model.modules()):
        return NOTHING_TO_FUSE
    return None


def _fused_graph(problem: Problem, keep: frozenset[nn.Module] = frozenset()) -> fx.GraphModule:
    """The problem's model traced and rewritten by `landscape.fused`, or NotApplicable saying why it would not help."""
    why = nothing_to_fuse(problem)
    if why is not None:
        raise NotApplicable(why)
    model = problem.model
    traced = trace(model)
    if isinstance(traced, str):
        raise NotApplicable(f"torch.fx cannot trace the model ({traced})")
    # the other 2-D convolutions in layouts of their own where the layouts are timed (`choose_conv_layouts`)
    fold, lay_out = problem.dtype in (torch.float32, torch.float64), problem.device.type == "cpu"
    changed = rewrite_for_inference(traced, model, keep, fold=fold, lay_out=lay_out)
    if not any(isinstance(m, FoldedNorm) for m in traced.modules()):
        if not changed:
            raise NotApplicable(
                "nothing to rewrite: no BatchNorm to fold (eval mode, after a Conv/Linear), no ReLU, and under"
                f" {LAID_OUT_LEAST} 2-D convolutions to lay out"
            )
        if not has_conv2d(model):  # ReLUs in place alone gained under 5%: not worth probing
            raise NotApplicable("no BatchNorm to fold (eval mode, after a Conv/Linear) and no 2-D convolution")
    return traced


def _use_fused(strat: LoopStrategy, fused: fx.GraphModule, ctx: BuildContext, layout_x: bool = True) -> None:
    """Point a loop strategy at a fused graph (and, with `layout_x`, at a copy of its problem with
    channels-last data for 2-D convs), each folded 2-D conv in the layout `ctx.layouts` names (a
    resumed run's) or else timed fastest on a batch of the data (or by another build of the probe),
    after checking on a few samples that it gives the model's outputs (unless `ctx.checked`)."""
    p = strat.problem
    conv2d = has_conv2d(p.model)
    batch, _ = p.head(strat.batch_size)
    assert isinstance(batch, torch.Tensor)  # `_fused_graph` ruled out keyword inputs
    if not (ctx.layouts and set_conv_layouts(fused, ctx.layouts)):
        choose_conv_layouts(fused, channels_last_input(batch) if conv2d else batch, known=ctx.timed_layouts)
    strat.layouts = conv_layouts(fused)
    if not ctx.checked:  # the model's own pass on 64 samples: 0.04-0.08 s of a MNASNet's build, cold
        head = batch[:64]
        with torch.no_grad():
            want, got = logits_of(p.model(head)), logits_of(fused(head))
        if not agree(want.double().flatten(), got.double().flatten(), p.dtype):
            raise ValueError("the fused graph's outputs differ from the model's")
    strat.forward = fused
    if layout_x and conv2d and p.in_memory:  # the same problem, its data in the layout the graph prefers
        assert isinstance(p.x, torch.Tensor)
        strat.problem = p.replace(x=channels_last_input(p.x))


class FusedStrategy(LoopStrategy):
    """The per-point loop through the model's graph with BatchNorm folded and ReLUs in place."""

    name = "fused"
    build_points = LAYOUT_POINTS

    @classmethod
    def build(cls, problem: Problem, directions: torch.Tensor, ctx: BuildContext) -> Strategy:
        return cls(problem, directions, ctx.batch_size, ctx)

    @classmethod
    def rules_out(cls, problem: Problem) -> str | None:
        return nothing_to_fuse(problem)

    def __init__(
        self, problem: Problem, directions: torch.Tensor, batch_size: int | None = None, ctx: BuildContext | None = None
    ) -> None:
        super().__init__(problem, directions, batch_size)
        _use_fused(self, _fused_graph(problem), ctx or BuildContext())


class FirstLayerFusedStrategy(FirstLayerStrategy):
    """`firstlayer` through the fused graph. A BatchNorm right after the first layer whose weights
    have zero directions is folded into the cached products (and its pass over the activations
    saved); otherwise the first layer is kept out of the folding, its output being cached."""

    name = "firstlayer-fused"
    build_points = LAYOUT_POINTS

    @classmethod
    def build(cls, problem: Problem, directions: torch.Tensor, ctx: BuildContext) -> Strategy:
        first = first_layer_of(problem, directions, ctx.memory_budget)
        return cls(problem, directions, first, ctx.batch_size, ctx.memory_budget, ctx)

    @classmethod
    def rules_out(cls, problem: Problem) -> str | None:
        return FirstLayerStrategy.rules_out(problem) or nothing_to_fuse(problem)

    def __init__(
        self,
        problem: Problem,
        directions: torch.Tensor,
        first: tuple[str, nn.Module],
        batch_size: int | None = None,
        memory_budget: int = 1 << 30,
        ctx: BuildContext | None = None,
    ):
        fused = _fused_graph(problem)
        names = {m: n for n, m in problem.model.named_modules()}
        # the graph's module that computes the first layer (folded with its norm, or laid out alone), whose
        # forward the cached outputs replace
        pair = next(
            (m for m in fused.modules() if isinstance(m, (FoldedNorm, LaidOutConv)) and m.layer is first[1]), None
        )
        norm = (names[pair.norm], pair.norm) if isinstance(pair, FoldedNorm) else None
        if norm is not None and any(directions[:, problem.layout.block(n)].any() for n in _param_names(norm)):
            # its weights move, so its scale differs per point: the first layer stays out of the folding
            # and the norm runs per point on the cached outputs
            fused, pair, norm = _fused_graph(problem, keep=frozenset([first[1]])), None, None
        super().__init__(
            problem,
            directions,
            first,
            batch_size,
            channels_last=has_conv2d(problem.model),
            norm=norm,
            target=pair,
            memory_budget=memory_budget,
        )
        _use_fused(
            self, fused, ctx or BuildContext(), layout_x=False
        )  # x itself is not read: the cache is channels-last
