"""Many sweep points per call for an MLP: a chain of Linear layers, elementwise activations and
per-feature normalizations (LayerNorm over the features, BatchNorm1d with running statistics).

For such a model the sweep need not go through the model at all. At K points theta + c @ D:

- the first layer's output is Y0 + sum_j c_j Y_j from products computed once (it is linear in the
  weights), so the widest matrix product of the network is not repeated per point;
- every later layer is one batched product `W[K, out, in] @ h[K, in, B]` with its K weight
  matrices formed as coef @ [W0; D_1; ...] in one small product;
- a LayerNorm normalizes along the features axis and scales by the point's own weight and bias; an
  eval-mode BatchNorm1d is a per-point scale and shift, each linear in the coefficients (the running
  statistics are fixed), so its K pairs are one small product too;
- activations are kept features-first ([K, features, B]), so each product has the long data
  axis as its last dimension, which is what BLAS is fast at; a per-point layout ([K, B, features])
  made the batched products of 32x10 matrices 4x slower on 2 CPU cores;
- the loss and accuracy are computed in that layout from the logits less their maximum: cross-entropy
  as log-sum-exp minus the target's entry, and a prediction is right when the target's entry is 0
  and every class before it is below 0 (argmax's first maximum), both with `amax` along the class
  dimension; torch's `argmax` along a non-last dimension was 40x slower here, and an `==` mask
  with the class ranks 2x slower than these two reductions.

On the bundled digits MLP (2 CPU cores) this evaluates points 3-4x as fast as the per-point loop
(2.2-3.4x for a whole 51x51 sweep, the strategy probe included). `MlpChain.of` finds the chain
with torch.fx; anything else is not an MLP here.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import fx

from landscape.layers import computes_stock, linear_in_own_weights
from landscape.losses import IGNORE_INDEX, cross_entropy, mse
from landscape.model_io import symbolic_trace

# modules and functions that act elementwise (so any memory layout is fine), without parameters;
# the functions map to their in-place forms (None: none), as every step's input is a fresh product
ELEMENTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Mish, nn.Tanh, nn.Sigmoid,
    nn.Softplus, nn.Hardtanh, nn.Identity, nn.Dropout,
)  # fmt: skip
IN_PLACE_FUNCTIONS: dict[Callable, Callable | None] = {
    F.relu: torch.relu_, torch.relu: torch.relu_, torch.tanh: torch.tanh_, F.tanh: torch.tanh_,
    torch.sigmoid: torch.sigmoid_, F.sigmoid: torch.sigmoid_, F.leaky_relu: F.leaky_relu_, F.elu: F.elu_,
    F.hardtanh: F.hardtanh_, F.gelu: None, F.silu: None, F.mish: None, F.softplus: None,
}  # fmt: skip
IN_PLACE_METHODS = {"relu": torch.relu_, "tanh": torch.tanh_, "sigmoid": torch.sigmoid_}
IDENTITIES = (nn.Identity, nn.Dropout)  # the model is in eval mode
NORMS = (nn.LayerNorm, nn.BatchNorm1d)  # per-feature normalizations of a [B, features] input

Step = tuple[str, nn.Module] | Callable[[torch.Tensor], torch.Tensor]  # (prefix, Linear or norm) or a function


def chain_leaves_only(model: nn.Module) -> bool:
    """Whether every leaf module is a Linear, a Flatten, a LayerNorm or BatchNorm1d, or an elementwise
    activation (an MLP's parts)."""
    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    return all(isinstance(m, (nn.Linear, nn.Flatten, *NORMS, *ELEMENTWISE_MODULES)) for m in leaves)


@dataclass
class MlpChain:
    """The model as a list of steps: (parameter name prefix, module) for a Linear layer or a normalization
    with weights or running statistics, a callable for an activation or a LayerNorm without weights.
    `flatten` says that the input is flattened from dimension 1 before the first layer."""

    steps: list[Step]
    flatten: bool

    @property
    def layers(self) -> list[tuple[str, nn.Module]]:
        """The steps with weights of their own, in order (the first is a Linear)."""
        return [s for s in self.steps if isinstance(s, tuple)]

    @property
    def linears(self) -> list[tuple[str, nn.Linear]]:
        return [(p, m) for p, m in self.layers if isinstance(m, nn.Linear)]

    @classmethod
    def of(cls, model: nn.Module, names: set[str]) -> MlpChain | None:
        """The chain when `model` is one (traced by torch.fx), starts with a Linear (after an
        optional flatten) and all its Linear parameters are among `names`; else None."""
        if isinstance(model, nn.Linear):  # a linear or logistic regression: fx would trace into its forward
            stock = linear_in_own_weights(model) and {n for n, _ in model.named_parameters()} <= names
            return cls([("", model)], False) if stock else None
        if not chain_leaves_only(model):
            return None  # not worth tracing (a transformer's trace took 15-30 ms)
        try:
            graph = symbolic_trace(model).graph
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
                first = steps[0] if steps else None
                linear_first = isinstance(first, tuple) and isinstance(first[1], nn.Linear)
                return cls(steps, flatten) if linear_first and node.args[0] is previous else None
            if not node.args or node.args[0] is not previous or _reads_other_nodes(node):
                return None
            step = _step(node, modules)
            if step == "skip":
                pass
            elif step == "flatten" and not steps and not flatten:
                flatten = True
            elif isinstance(step, tuple):
                prefix, layer = step
                owned = {prefix + n for n, _ in layer.named_parameters()}
                if not owned <= names or not (owned or isinstance(layer, nn.BatchNorm1d)):
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
    """What one traced node does, if it belongs in an MLP chain ("flatten", "skip", a layer, an
    activation that may overwrite its input), else None."""
    if node.op == "call_module":
        module = modules[str(node.target)]
        if isinstance(module, nn.Linear):
            return (f"{node.target}.", module) if linear_in_own_weights(module) else None
        if isinstance(module, NORMS):
            return _norm_step(str(node.target), module)
        if isinstance(module, nn.Flatten) and module.start_dim == 1 and module.end_dim == -1:
            return "flatten"
        if isinstance(module, IDENTITIES):
            return "skip"
        if isinstance(module, (nn.Tanh, nn.Sigmoid)):
            return torch.tanh_ if isinstance(module, nn.Tanh) else torch.sigmoid_
        if isinstance(module, ELEMENTWISE_MODULES):
            if hasattr(module, "inplace"):  # ReLU, LeakyReLU, ELU, Hardtanh, SiLU, Mish: a copy that runs in place
                module = copy.copy(module)
                module.inplace = True
            return module
        return None
    extra = tuple(node.args[1:])
    kwargs = {k: v for k, v in node.kwargs.items() if k != "inplace"}
    flatten = node.target in (torch.flatten, "flatten") and extra in ((1,), (1, -1)) and not kwargs
    if node.op == "call_function":
        if flatten:
            return "flatten"
        if node.target in IN_PLACE_FUNCTIONS:
            fn = IN_PLACE_FUNCTIONS[node.target]
            if fn is None or any(isinstance(a, bool) for a in extra):  # no in-place form, or a positional inplace flag
                fn = node.target
            return lambda h: fn(h, *extra, **kwargs)
    if node.op == "call_method":
        if flatten:
            return "flatten"
        if node.target in IN_PLACE_METHODS and not extra and not kwargs:
            return IN_PLACE_METHODS[str(node.target)]
    return None


def _norm_step(name: str, module: nn.Module) -> Step | None:
    """A LayerNorm over one features axis, or a BatchNorm1d with running statistics, as a step; None for
    any other (a LayerNorm over several axes, a BatchNorm normalizing each batch by its own statistics)."""
    if not computes_stock(module):
        return None
    if isinstance(module, nn.LayerNorm):
        if len(module.normalized_shape) != 1:
            return None
        if module.weight is None:  # no weights: a function of the activations alone
            eps = module.eps
            return lambda h: normalized_features(h, eps)
        return (f"{name}.", module)
    if isinstance(module, nn.BatchNorm1d) and module.running_mean is not None and module.running_var is not None:
        return (f"{name}.", module)
    return None


def normalized_features(h: torch.Tensor, eps: float) -> torch.Tensor:
    """LayerNorm's normalization of features-first activations [K, features, B], in place: each point's
    and sample's features to mean 0 and (biased) variance 1. Two passes of `mean` along the features:
    `var_mean` along a non-last dimension was 9x slower (3.2 ms against 0.35 for [1, 256, 4096])."""
    h = h.sub_(h.mean(1, keepdim=True))
    return h.mul_(h.square().mean(1, keepdim=True).add_(eps).rsqrt_())


def loss_kind(loss_fn: Callable, y: torch.Tensor, outputs: int) -> str | None:
    """ "cross-entropy" or "mse" when the built-in loss can be computed features-first for targets `y`
    and `outputs` model outputs per sample; None otherwise (a user's loss is only known as a call)."""
    if loss_fn is cross_entropy and not torch.is_floating_point(y) and y.dim() == 1 and not (y == IGNORE_INDEX).any():
        return "cross-entropy"  # targets of -100 (ignored) are left to the others: the gather has no such class
    if (
        (loss_fn is mse or loss_fn is F.mse_loss)
        and torch.is_floating_point(y)
        and y.dim() == 2
        and y.shape[1] == outputs
    ):
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
    shifted = out - out.amax(1, keepdim=True)  # 0 at every maximum
    target = shifted.gather(1, y.view(1, 1, -1).expand(out.shape[0], 1, -1))[:, 0]
    correct = None
    if classification:  # right when the target is a maximum and no class before it is one
        classes = torch.arange(out.shape[1], device=out.device).view(-1, 1)
        before = torch.where(classes < y.view(1, -1), 0.0, -math.inf).to(out.dtype)  # [C, B]: 0 for classes before y
        correct = ((target == 0) & ((shifted + before).amax(1) < 0)).sum(1)
    return shifted.exp_().sum(1).log_().sub_(target).mean(1), correct
