"""`loop`: one point per forward pass over the data, the weights written into the model in place."""

from __future__ import annotations

import torch

from landscape.losses import correct_predictions
from landscape.model_io import Inputs, call
from landscape.strategies.base import Strategy


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
        """Write the weights theta + D^T c into the model (but the tensors in `skip`), tensor by tensor
        into the parameters' own memory: no P-sized vector of the point (half a GB at 124M parameters)."""
        theta, dirs = self.problem.theta, self.directions
        with torch.no_grad():
            for name, param, block, shape in self._slots:
                if name in self.skip:
                    continue
                if param.is_contiguous() and param.dtype == theta.dtype:
                    torch.addmv(theta[block], dirs[:, block].T, c, out=param.view(-1))
                else:  # channels-last, or bfloat16 weights formed in float32: through a temporary of its size
                    param.copy_(torch.addmv(theta[block], dirs[:, block].T, c).view(shape))

    def point_loss(self, xb: Inputs, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Mean loss and number of correct predictions (classification) on one batch at the written weights."""
        out = call(self.forward, xb)
        correct = correct_predictions(self.problem.loss_fn, out, yb) if self.problem.classification else None
        return self.problem.loss_fn(out, yb), correct
