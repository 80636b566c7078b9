"""The built-in losses (output, target) -> batch mean, and the lookup of a loss by name or function.

The built-ins read the logits of any model output (`landscape.model_io.logits_of`: a tensor,
`.logits`, `["logits"]`, a tuple's first element); a user's function gets the output as it is.
Class-index targets equal to IGNORE_INDEX (-100, the PyTorch and Hugging Face convention for
padding and unlabelled tokens) count for nothing, as in `F.cross_entropy`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from landscape.errors import ArgumentError, LandscapeError
from landscape.model_io import logits_of

LossFn = Callable[[Any, torch.Tensor], torch.Tensor]
IGNORE_INDEX = -100


def _class_dim(logits: torch.Tensor, target: torch.Tensor) -> int:
    """Where the classes are: last ([B, T, V] against [B, T], the language-model layout) or 1
    ([N, C, d...] against [N, d...], PyTorch's); the same for [N, C] against [N]."""
    if logits.dim() == target.dim() + 1 and logits.shape[:-1] == target.shape:
        return -1
    return 1


def _nll(logits: torch.Tensor, target: torch.Tensor, dim: int) -> torch.Tensor:
    """Mean negative log-likelihood of class indices, IGNORE_INDEX left out (log_softmax + gather); 0 where
    every target is ignored (F.cross_entropy's 0 / 0 = NaN: one padded sample made the per-sample
    empirical Fisher NaN; such a batch weighs nothing in the data set's mean, `loss_terms`)."""
    keep = target != IGNORE_INDEX
    picked = logits.log_softmax(dim).gather(dim, target.clamp_min(0).unsqueeze(dim)).squeeze(dim)
    return -(picked * keep).sum() / keep.sum().clamp_min(1)


def cross_entropy(output: Any, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits against class indices, as F.cross_entropy (ignore_index -100).

    Logits [N, C, ...] against [N, ...] (PyTorch's layout) or [..., C] against [...] (token-level
    outputs [B, T, V] of a language model). Written as log_softmax + gather because under torch.vmap
    F.cross_entropy goes through a decomposition whose first use imports sympy (about a second) and
    runs slower; probability targets (floating point) are passed on to F.cross_entropy.
    """
    logits = logits_of(output)
    if torch.is_floating_point(target):
        return F.cross_entropy(logits, target)
    return _nll(logits, target, _class_dim(logits, target))


def next_token(output: Any, target: torch.Tensor) -> torch.Tensor:
    """Causal language-model loss: logits [B, T, V] at position t predict token t + 1 of the targets
    [B, T] (the token ids themselves, or labels with -100 where nothing is to be predicted)."""
    logits = logits_of(output)
    if logits.dim() != 3 or target.dim() != 2 or logits.shape[:2] != target.shape:
        raise LandscapeError(
            f"loss next-token: expected logits [B, T, V] and token targets [B, T], got {tuple(logits.shape)} "
            f"and {tuple(target.shape)}"
        )
    return _nll(logits[:, :-1], target[:, 1:], -1)


def counts_targets(loss_fn: LossFn, target: torch.Tensor) -> bool:
    """Whether a batch's loss is the mean over its counted class targets (a built-in class loss on class
    indices, IGNORE_INDEX left out) rather than over its rows."""
    return loss_fn in (cross_entropy, next_token) and not torch.is_floating_point(target)


def loss_terms(loss_fn: LossFn, target: torch.Tensor) -> int:
    """How many terms a batch's loss is the mean of: its counted targets for a built-in class loss (one
    fewer per row for next-token; -100 left out), else its rows. Batches weighted by these make the
    data set's loss the mean over every term, whatever the batch size: weighted by rows, a padded
    language-model batch of 2 moved GPT-2's loss by 0.01 against the whole set's token mean."""
    if not counts_targets(loss_fn, target):
        return int(target.shape[0])
    counted = target[:, 1:] if loss_fn is next_token and target.dim() == 2 else target
    return int((counted != IGNORE_INDEX).sum())


def correct_predictions(loss_fn: LossFn, output: Any, target: torch.Tensor) -> torch.Tensor:
    """How many of a batch's `loss_terms` the model predicts right (argmax of the logits): its counted
    class targets (tokens, pixels; next-token: each position against the token after it) for a
    built-in class loss, else its rows against the last dimension's argmax."""
    logits = logits_of(output)
    if not counts_targets(loss_fn, target):
        return (logits.argmax(-1) == target).sum()
    if loss_fn is next_token:
        logits, target = logits[:, :-1], target[:, 1:]
        dim = -1
    else:
        dim = _class_dim(logits, target)
    return ((logits.argmax(dim) == target) & (target != IGNORE_INDEX)).sum()


def mse(output: Any, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error of the model's output (its logits, for a structured output) against the targets."""
    return F.mse_loss(logits_of(output), target)


def check_class_targets(loss_fn: LossFn, output: Any, target: torch.Tensor, targets: torch.Tensor) -> None:
    """For the built-in class losses: every one of `targets` (all the data's) is a class index of the
    model's outputs or IGNORE_INDEX. `output` and `target` are the model's output on a few samples and
    their targets, for where the classes are. Out of range, gather failed deep in a run, and a
    negative index counted as class 0."""
    if loss_fn not in (cross_entropy, next_token) or torch.is_floating_point(targets):
        return
    logits = logits_of(output)
    classes = logits.shape[-1 if loss_fn is next_token else _class_dim(logits, target)]
    bad = (targets != IGNORE_INDEX) & ((targets < 0) | (targets >= classes))
    if bad.any():
        first = tuple(int(i) for i in bad.nonzero()[0])
        at = f"sample {first[0]}" if len(first) == 1 else f"position {list(first)}"
        raise LandscapeError(
            f"the target {int(targets[first])} of {at} (and {int(bad.sum()) - 1:,} more) is not a class of the "
            f"model's {classes} outputs: expected 0 to {classes - 1}, or {IGNORE_INDEX} to ignore"
        )


BUILTIN: dict[str, LossFn] = {
    "cross-entropy": cross_entropy,
    "next-token": next_token,
    "mse": mse,
}


def default_loss(y: torch.Tensor) -> str:
    """cross-entropy for integer class targets, mse otherwise."""
    return "cross-entropy" if not torch.is_floating_point(y) else "mse"


def is_builtin(fn: LossFn) -> bool:
    """True for the built-in losses, which read the logits of any output."""
    return fn in BUILTIN.values()


def loss_function(loss: str | LossFn | None, y: torch.Tensor) -> tuple[LossFn, str]:
    """The loss and its name: a built-in's name, a function (output, target) -> batch mean, or None for
    the default of the targets (cross-entropy for class indices, mse otherwise)."""
    if loss is None:
        loss = default_loss(y)
    if isinstance(loss, str):
        if loss not in BUILTIN:
            raise ArgumentError(
                "loss", loss, f"expected one of {', '.join(BUILTIN)} or a function (output, target) -> mean loss"
            )
        return BUILTIN[loss], loss
    if not callable(loss):
        raise ArgumentError(
            "loss", type(loss).__name__, "expected a built-in's name or a function (output, target) -> mean loss"
        )
    name = next((n for n, fn in BUILTIN.items() if fn is loss), None)
    if name is not None:
        return loss, name
    label = f"{getattr(loss, '__module__', '')}.{getattr(loss, '__qualname__', type(loss).__name__)}"
    if getattr(loss, "__module__", "") == "torch.nn.functional":  # torch's own (F.mse_loss): a mean, known as such
        return loss, label
    return scalar_checked(loss), label


def scalar_checked(fn: LossFn) -> LossFn:
    """A user's loss that fails with a clear message when it returns anything but one number (at
    whichever call: a loss that changed its reduction mid-run broadcast errors deep in a strategy)."""

    @functools.wraps(fn)
    def loss(output: Any, target: torch.Tensor) -> torch.Tensor:
        value = fn(output, target)
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            got = f"a tensor of shape {list(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
            raise ArgumentError("loss", None, f"the loss function returned {got}, expected a scalar (the batch mean)")
        return value.reshape(())

    return loss
