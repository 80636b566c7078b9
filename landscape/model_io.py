"""What goes into a model and what comes out of it, as real models have them.

Inputs are one tensor (passed positionally) or a dict of tensors with the same first dimension
(passed as keyword arguments, the Hugging Face convention: `input_ids`, `attention_mask`, ...).
Outputs are a tensor or anything holding one: a Hugging Face `ModelOutput` (its `.logits`), a dict
(its `"logits"`), a tuple or list (its first element). The built-in losses and the accuracy read the
logits found that way; a user's loss gets the output as it is.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import fx
from torch.func import functional_call
from torch.overrides import TorchFunctionMode

from landscape.errors import LandscapeError

Inputs = torch.Tensor | dict[str, torch.Tensor]


def rows(x: Inputs) -> int:
    """Number of samples (the first dimension, shared by every tensor of a dict)."""
    if isinstance(x, torch.Tensor):
        return int(x.shape[0])
    return int(next(iter(x.values())).shape[0])


def map_inputs(fn: Callable[[torch.Tensor], torch.Tensor], x: Inputs) -> Inputs:
    """`fn` applied to the tensor, or to every tensor of the dict."""
    if isinstance(x, torch.Tensor):
        return fn(x)
    return {k: fn(v) for k, v in x.items()}


def take(x: Inputs, index: Any) -> Inputs:
    """The rows `index` (a slice, an index tensor or None for a new leading axis) of the inputs."""
    return map_inputs(lambda t: t[index], x)


def to_device(x: Inputs, device: torch.device, dtype: torch.dtype) -> Inputs:
    """Floating-point tensors to `dtype` on `device`; integer tensors (token ids, masks) keep their dtype."""
    return map_inputs(lambda t: t.to(device=device, dtype=dtype) if torch.is_floating_point(t) else t.to(device), x)


def describe(x: Inputs) -> str:
    """'x of shape (N, ...)' or 'inputs input_ids (N, T), attention_mask (N, T)' for messages."""
    if isinstance(x, torch.Tensor):
        return f"inputs x of shape {tuple(x.shape)}"
    return "inputs " + ", ".join(f"{k} {tuple(v.shape)}" for k, v in x.items())


def call(model: Callable[..., Any], x: Inputs) -> Any:
    """model(x) for a tensor, model(**x) for a dict, with no state kept from another call (`fresh_caches`)."""
    with fresh_caches(model):
        return model(**x) if isinstance(x, Mapping) else model(x)


@contextmanager
def fresh_caches(model: Any) -> Iterator[None]:
    """Empty, before and after a forward pass, what modules in eval mode keep from their parameters.

    timm's and Hugging Face's LeViT (and timm's EfficientFormer, EfficientViT, TinyViT) gather their
    attention biases from a parameter at the first eval-mode pass into an `attention_bias_cache` and
    reuse them until `train()` is called: at weights written in place or given by `functional_call`,
    every point after the first was evaluated with the first one's biases, and the model handed back
    kept the last point's. Those modules empty their caches in `train(True)`, so each module in eval
    mode whose class overrides `train` and that holds an attribute named like a cache is switched to
    train mode and back, its own and its children's modes then restored as they were. Modules are
    only switched when they hold such an attribute: every Hugging Face model overrides `train`, and
    switching a BERT of 87 modules cost 2.3 ms a forward pass."""
    holders = _cache_holders(model)
    _empty(holders)
    try:
        yield
    finally:
        _empty(holders)


def symbolic_trace(model: nn.Module) -> fx.GraphModule:
    """`torch.fx.symbolic_trace` with the model's eval-mode caches empty (`fresh_caches`): a cached
    tensor would be traced as a constant, and a cache filled while tracing would hold the trace's own
    nodes, which the next trace cannot use (LeViT's attention biases)."""
    with fresh_caches(model):
        return fx.symbolic_trace(model)


def _cache_holders(model: Any) -> list[nn.Module]:
    if not isinstance(model, nn.Module):
        return []
    return [
        m
        for m in model.modules()
        if type(m).train is not nn.Module.train and not m.training and any("cache" in k.lower() for k in vars(m))
    ]


def _empty(holders: list[nn.Module]) -> None:
    for m in holders:
        within = list(m.modules())
        modes = [c.training for c in within]
        m.train(True)
        m.train(False)
        for c, mode in zip(within, modes):
            if c.training != mode:
                c.training = mode


def differentiable_model(model: nn.Module) -> None:
    """Refuse, in one line, a model whose loss cannot be differentiated at weights given apart from it:
    a TorchScript module (torch.func.functional_call said "The stateless API can't be used with Jitted
    modules"). Sweeps need no such call: the loop writes the weights in place."""
    if isinstance(model, torch.jit.ScriptModule):
        raise LandscapeError(
            "the model is TorchScript (torch.jit), and gradients and curvature need torch.func.functional_call, "
            "which TorchScript modules refuse: build the model from its Python class and load its state_dict"
        )


def call_functional(model: nn.Module, tensors: tuple[dict[str, torch.Tensor], ...], x: Inputs) -> Any:
    """`torch.func.functional_call` with the module's parameters and buffers replaced by `tensors`
    (no state kept from another call: `fresh_caches`)."""
    with fresh_caches(model):
        if isinstance(x, Mapping):
            return functional_call(model, tensors, (), dict(x))
        return functional_call(model, tensors, (x,))


def math_attention() -> AbstractContextManager[None]:
    """A context in which scaled-dot-product attention runs through its plain math kernel. The fused
    kernels (flash, memory-efficient) have no double backward, which every Hessian product needs,
    and no batching rule, so under torch.vmap they fall back to a slow per-sample loop with a warning."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH])


VMAP_FALLBACK = "There is a performance drop because we have not yet implemented the batching rule"


@contextmanager
def vmapped() -> Iterator[None]:
    """The context of every torch.vmap call: attention through its math kernel (`math_attention`), and
    without PyTorch's warning that an operation with no batching rule (nn.TransformerEncoder's fused
    inference kernel, F.multi_margin_loss) is looped over: each caller times its methods and keeps the
    fastest, or falls back, so the warning is not the user's to act on."""
    with math_attention(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=VMAP_FALLBACK)
        yield


_SPARSE_AT = {F.embedding: 6, F.embedding_bag: 7}  # where nn.Embedding(Bag).forward passes `sparse` positionally


class _TwiceDifferentiable(TorchFunctionMode):
    """Functions whose backward PyTorch cannot differentiate again, run as equal compositions it can:
    `hardsigmoid` (the squeeze-excite gates of torchvision's MobileNetV3) as relu6(x + 3) / 6,
    the formula of its kernel. The output is a new tensor even where the call asked for in place.
    Embeddings made with `sparse=True` give dense gradients here: a sparse one cannot flow back into
    the flat vector the weights are views of ("reshape is not implemented for sparse tensors").
    An LSTM runs through PyTorch's own kernel, not oneDNN's (`torch.backends.mkldnn`, on the CPU):
    oneDNN's has no forward-mode derivative (no forward-over-reverse product, no GGN), and its double
    backward was slower: a Hessian product of a 2-layer LSTM text classifier took 0.37-0.47 s against
    0.47-0.54 s through the kept graph, 0.58-0.74 s against 0.87-1.15 s without it."""

    def __torch_function__(
        self, func: Callable[..., Any], types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        if func is F.hardsigmoid:
            x = args[0] if args else kwargs["input"]
            return F.relu6(x + 3.0) / 6.0
        at = _SPARSE_AT.get(func)
        if at is not None and (kwargs.get("sparse") or (len(args) > at and args[at])):
            args = args[:at] + (False,) + args[at + 1 :] if len(args) > at else args
            kwargs = {**kwargs, "sparse": False} if "sparse" in kwargs else kwargs
        if func is F.embedding_bag:
            composed = _embedding_bag_composed(*args, **kwargs)
            if composed is not None:
                return composed
        if func is torch.lstm and torch.backends.mkldnn.enabled:
            # read when the kernel is chosen, in this call (typed as its descriptor, hence the ignores)
            torch.backends.mkldnn.enabled = False  # type: ignore[assignment]
            try:
                return func(*args, **kwargs)
            finally:
                torch.backends.mkldnn.enabled = True  # type: ignore[assignment]
        return func(*args, **kwargs)


def _embedding_bag_composed(
    input: torch.Tensor,
    weight: torch.Tensor,
    offsets: torch.Tensor | None = None,
    max_norm: float | None = None,
    norm_type: float = 2.0,
    scale_grad_by_freq: bool = False,
    mode: str = "mean",
    sparse: bool = False,
    per_sample_weights: torch.Tensor | None = None,
    include_last_offset: bool = False,
    padding_idx: int | None = None,
) -> torch.Tensor | None:
    """`F.embedding_bag` as F.embedding and a (segment) sum or max, which have second derivatives
    (`_embedding_bag_backward` has none: no Hessian of a model with an nn.EmbeddingBag); None for
    max mode over a flat list with offsets, left to the kernel."""
    if mode not in ("sum", "mean", "max") or (mode == "max" and input.dim() != 2):
        return None
    rows = F.embedding(input, weight, padding_idx, max_norm, norm_type, scale_grad_by_freq)
    keep = (input != padding_idx) if padding_idx is not None else torch.ones_like(input, dtype=torch.bool)
    if mode == "max":  # one bag a row; a bag of padding alone is zeros, as the kernel gives
        top = rows.masked_fill(~keep.unsqueeze(-1), -math.inf).amax(1)
        return torch.where(keep.any(1, keepdim=True), top, torch.zeros_like(top))
    scale = keep.to(rows.dtype) if per_sample_weights is None else keep * per_sample_weights
    rows = rows * scale.unsqueeze(-1)
    if input.dim() == 2:  # one bag a row
        total, count = rows.sum(1), keep.sum(1)
    else:  # one flat list, bags starting at `offsets`
        assert offsets is not None
        starts = offsets[:-1] if include_last_offset else offsets
        bag = torch.searchsorted(starts, torch.arange(input.shape[0], device=input.device), right=True) - 1
        total = rows.new_zeros(starts.shape[0], rows.shape[-1]).index_add(0, bag, rows)
        count = torch.zeros(starts.shape[0], dtype=torch.long, device=input.device).index_add(0, bag, keep.long())
    return total if mode == "sum" else total / count.clamp_min(1).unsqueeze(-1).to(total.dtype)


@contextmanager
def twice_differentiable() -> Iterator[None]:
    """The context of every differentiated forward pass (curvature, gradients): attention through its
    math kernel (`math_attention`) and the few functions without a double backward through equal
    compositions that have one (`_TwiceDifferentiable`): torchvision's MobileNetV3 failed every Hessian
    product with "derivative for aten::hardsigmoid_backward is not implemented"; sparse embeddings
    give dense gradients."""
    with math_attention(), _TwiceDifferentiable():
        yield


def logits_of(out: Any) -> torch.Tensor:
    """The tensor a built-in loss reads from a model output: the output itself, `.logits`, `["logits"]`
    or the first element of a tuple/list (recursively)."""
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(out, Mapping):
        logits = out.get("logits")
        if isinstance(logits, torch.Tensor):
            return logits
        if len(out) == 1:
            return logits_of(next(iter(out.values())))
    if isinstance(out, (tuple, list)) and out:
        return logits_of(out[0])
    raise LandscapeError(
        f"the model returned {describe_output(out)}; the built-in losses read a tensor, .logits, ['logits'] "
        "or a tuple's first element: give a loss function that computes the loss from this output"
    )


def output_kind(out: Any) -> str | None:
    """How `logits_of` finds the logits in `out` (None for a plain tensor), for a note to the user."""
    if isinstance(out, torch.Tensor):
        return None
    if isinstance(getattr(out, "logits", None), torch.Tensor):
        return f"{type(out).__name__}: reading its .logits"
    if isinstance(out, Mapping):
        return f"a dict: reading its {'logits' if 'logits' in out else next(iter(out))!r} entry"
    if isinstance(out, (tuple, list)):
        return f"a {type(out).__name__} of {len(out)}: reading its first element"
    return type(out).__name__


def describe_output(out: Any) -> str:
    """A short description of a model output for error messages (shapes, keys, types)."""
    if isinstance(out, torch.Tensor):
        return f"a tensor of shape {tuple(out.shape)}"
    if isinstance(out, Mapping):
        keys = ", ".join(str(k) for k in list(out)[:5])
        return f"{type(out).__name__} with keys {keys}"
    if isinstance(out, (tuple, list)):
        return f"a {type(out).__name__} of {len(out)}"
    return f"an object of type {type(out).__name__}"


def output_numel(out: Any) -> int:
    """Number of values of all the tensors in a model output (a memory estimate)."""
    if isinstance(out, torch.Tensor):
        return out.numel()
    if isinstance(out, Mapping):
        return sum(output_numel(v) for v in out.values())
    if isinstance(out, (tuple, list)):
        return sum(output_numel(v) for v in out)
    return 0
