"""`vmap`: K points per call, stacked weights through `torch.func.functional_call` under `torch.vmap`."""

from __future__ import annotations

import torch

from landscape.losses import correct_predictions
from landscape.model_io import Inputs, call_functional, vmapped
from landscape.problem import Problem
from landscape.strategies.base import BuildContext, NotApplicable, Strategy


def check_several_points_fit(problem: Problem, ctx: BuildContext) -> None:
    """NotApplicable when the memory budget holds one point per call (`points_per_call`: its stacked
    weights and activations): no faster than the loop, and a copy of the weights more (a 124M-parameter
    sweep peaked 2 P higher while the probe tried vmap with one point than under the loop)."""
    if ctx.points_per_call <= 1:
        weights = problem.layout.size * problem.theta.element_size()
        raise NotApplicable(
            f"one point's weights ({weights / 2**30:.2f} GiB) and activations fill the memory budget: "
            "one point per call, no gain over the loop"
        )


class VmapStrategy(Strategy):
    """K points per call: stacked weights through functional_call under torch.vmap."""

    name = "vmap"
    feeds_first_layer = False  # True: the first layer's per-point outputs are passed in, not computed

    @classmethod
    def build(cls, problem: Problem, directions: torch.Tensor, ctx: BuildContext) -> Strategy:
        check_several_points_fit(problem, ctx)
        return cls(problem, directions, ctx.points_per_call, ctx.batch_size)

    def __init__(
        self, problem: Problem, directions: torch.Tensor, points_per_call: int = 16, batch_size: int | None = None
    ):
        super().__init__(problem, directions, batch_size)
        self.k = points_per_call
        model, buffers, loss_fn, cls = problem.model, problem.buffers, problem.loss_fn, problem.classification

        self.first_out: torch.Tensor | None = None

        def one(
            params: dict[str, torch.Tensor], xb: Inputs, yb: torch.Tensor, first_out: torch.Tensor | None
        ) -> tuple[torch.Tensor, torch.Tensor]:
            self.first_out = first_out  # read by the first layer's replaced forward (FirstLayerVmapStrategy)
            out = call_functional(model, (params, buffers), xb)
            loss = loss_fn(out, yb)
            correct = correct_predictions(loss_fn, out, yb) if cls else torch.zeros((), device=yb.device)
            return loss, correct

        self._batched = torch.vmap(one, in_dims=(0, None, None, 0 if self.feeds_first_layer else None))

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
        with vmapped():  # the probe's timing says what an operation without a batching rule costs
            loss, correct = self._batched(shared, xb, yb, self.first_layer_outputs(batch_index, c))
            return loss, correct
