"""Many sweep points per call for an MLP: a chain of Linear layers and elementwise activations.

For such a model the sweep need not go through the model at all. At K points theta + c @ D:

- the first layer's output is Y0 + sum_j c_j Y_j from products computed once (it is linear in the
  weights), so the widest matrix product of the network is not repeated per point;
- every later layer is one batched product `W[K, out, in] @ h[K, in, B]` with its K weight
  matrices formed as coef @ [W0; D_1; ...] in one small product;
- activations are kept features-first ([K, features, B]), so each product has the long data
  axis as its last dimension, which is what BLAS is fast at; a per-point layout ([K, B, features])
  made the batched products of 32x10 matrices 4x slower on 2 CPU cores;
- the loss and accuracy are computed in that layout: cross-entropy as logsumexp minus the target's
  logit, and the predicted class as the first index of the maximum, found with `amax` (torch's
  `argmax` along a non-last dimension was 40x slower here).

On the bundled digits MLP (2 CPU cores) this evaluated about 8000 points/s where the per-point
loop did 2300-2500. `MlpChain.of` finds the chain with torch.fx; anything else is not an MLP here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import fx

from landscape.io.loss import cross_entropy

# modules and functions that act elementwise (so any memory layout is fine), without parameters
ELEMENTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Mish, nn.Tanh, nn.Sigmoid,
    nn.Softplus, nn.Hardtanh, nn.Identity, nn.Dropout,
)  # fmt: skip
ELEMENTWISE_FUNCTIONS = {
    F.relu, torch.relu, F.leaky_relu, F.elu, F.gelu, F.silu, F.mish, torch.tanh, F.tanh, torch.sigmoid,
    F.sigmoid, F.softplus, F.hardtanh,
}  # fmt: skip
ELEMENTWISE_METHODS = {"relu", "tanh", "sigmoid"}

Step = tuple[str, nn.Linear] | Callable[[torch.Tensor], torch.Tensor]


@dataclass
class MlpChain:
    """The model as a list of steps: (parameter name prefix, Linear) for a layer, a callable for an activation.
    `flatten` says that the input is flattened from dimension 1 before the first layer."""

    steps: list[Step]
    flatten: bool

    @property
    def linears(self) -> list[tuple[str, nn.Linear]]:
        return [s for s in self.steps if isinstance(s, tuple)]

    @classmethod
    def of(cls, model: nn.Module, names: set[str]) -> MlpChain | None:
        """The chain when `model` is one (traced by torch.fx), starts with a Linear (after an
        optional flatten) and all its Linear parameters are among `names`; else None."""
        if isinstance(model, nn.Linear):  # a linear or logistic regression: fx would trace into its forward
            return cls([("", model)], False) if {n for n, _ in model.named_parameters()} <= names else None
        leaves = [m for m in model.modules() if not any(True for _ in m.children())]
        if not all(isinstance(m, (nn.Linear, nn.Flatten, *ELEMENTWISE_MODULES)) for m in leaves):
            return None  # not worth tracing (a transformer's trace took 15-30 ms)
        try:
            graph = fx.symbolic_trace(model).graph
        except Exception:
            return None
        modules = dict(model.named_modules())
        steps: list[Step] = []
        flatten = False
        previous: fx.Node | None = None
        for node in graph.nodes:
            if node.op == "placeholder":
                if previous is not None:
                    return None
                previous = node
                continue
            if node.op == "output":
                return cls(steps, flatten) if steps and node.args[0] is previous and isinstance(steps[0], tuple) else None
            if not node.args or node.args[0] is not previous or _reads_other_nodes(node):
                return None
            step = _step(node, modules)
            if step == "flatten" and not steps and not flatten:
                flatten = True
            elif isinstance(step, tuple):
                prefix, layer = step
                owned = {prefix + n for n, _ in layer.named_parameters()}
                if not owned or not owned <= names:
                    return None
                steps.append(step)
            elif callable(step) and steps:
                steps.append(step)
            else:
                return None
            previous = node
        return None


def _reads_other_nodes(node: fx.Node) -> bool:
    """Whether the node takes a traced value other than its first argument (a branch, a residual)."""
    found: list[fx.Node] = []
    fx.node.map_arg((node.args[1:], node.kwargs), found.append)
    return bool(found)


def _step(node: fx.Node, modules: dict[str, nn.Module]) -> Step | str | None:
    """What one traced node does, if it belongs in an MLP chain."""
    if node.op == "call_module":
        module = modules[str(node.target)]
        if isinstance(module, nn.Linear):
            return f"{node.target}.", module
        if isinstance(module, nn.Flatten) and module.start_dim == 1 and module.end_dim == -1:
            return "flatten"
        if isinstance(module, ELEMENTWISE_MODULES):
            return module
        return None
    extra = tuple(node.args[1:])
    kwargs = {k: v for k, v in node.kwargs.items() if k != "inplace"}
    if node.op == "call_function":
        if node.target is torch.flatten and extra in ((1,), (1, -1)) and not kwargs:
            return "flatten"
        if node.target in ELEMENTWISE_FUNCTIONS:
            fn = node.target
            return lambda h: fn(h, *extra, **kwargs)
    if node.op == "call_method":
        if node.target == "flatten" and extra in ((1,), (1, -1)) and not kwargs:
            return "flatten"
        if node.target in ELEMENTWISE_METHODS and not extra and not kwargs:
            method = str(node.target)
            return lambda h: getattr(h, method)()
    return None


def loss_kind(loss_fn: Callable, y: torch.Tensor, outputs: int) -> str | None:
    """"cross-entropy" or "mse" when the built-in loss can be computed features-first for targets `y`
    and `outputs` model outputs per sample; None otherwise (a user's loss is only known as a call)."""
    if loss_fn is cross_entropy and not torch.is_floating_point(y) and y.dim() == 1:
        return "cross-entropy"
    if loss_fn is F.mse_loss and torch.is_floating_point(y) and y.dim() == 2 and y.shape[1] == outputs:
        return "mse"
    return None


def features_first_loss(
    out: torch.Tensor, y: torch.Tensor, kind: str, classification: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-point mean loss and number of correct predictions from outputs [K, C, B] and targets
    y [B] (class indices) or [B, C]: the values `loss_fn(out[k].T, y)` and
    `(out[k].T.argmax(-1) == y).sum()` would give, ties going to the first class as in argmax."""
    if kind == "mse":
        return (out - y.T).square().mean((1, 2)), None
    top = out.amax(1, keepdim=True)
    lse = (out - top).exp_().sum(1).log_() + top[:, 0]
    picked = out.gather(1, y.view(1, 1, -1).expand(out.shape[0], 1, -1))[:, 0]
    loss = (lse - picked).mean(1)
    if not classification:
        return loss, None
    classes = out.shape[1]
    rank = torch.arange(classes, 0, -1, dtype=out.dtype, device=out.device).view(1, classes, 1)
    first_top = ((out == top) * rank).amax(1)  # classes - (index of the first maximum)
    return loss, (first_top == (classes - y).to(out.dtype)).sum(1)
