"""Resolve the loss: a named built-in or the user's function (output, target) -> mean loss."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from landscape.errors import LandscapeError
from landscape.io.spec import resolve_callable

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits [N, C, ...] against class indices [N, ...] (as F.cross_entropy).

    Written as log_softmax + gather because under torch.vmap F.cross_entropy goes through a
    decomposition whose first use imports sympy (about a second) and runs slower; probability
    targets (floating point) are passed on to F.cross_entropy.
    """
    if torch.is_floating_point(target):
        return F.cross_entropy(output, target)
    return -output.log_softmax(1).gather(1, target.unsqueeze(1)).mean()


BUILTIN: dict[str, LossFn] = {
    "cross-entropy": cross_entropy,
    "mse": F.mse_loss,
}


def default_loss(y: torch.Tensor) -> str:
    """cross-entropy for integer class targets, mse otherwise."""
    return "cross-entropy" if not torch.is_floating_point(y) else "mse"


def resolve_loss(spec: str) -> LossFn:
    """The loss named by `spec`: cross-entropy, mse, or file.py:fn / module:fn (mean over the batch)."""
    if spec in BUILTIN:
        return BUILTIN[spec]
    if ":" in spec:
        fn = resolve_callable(spec, "--loss")
        if not callable(fn):
            raise LandscapeError(f"--loss {spec}: not callable")
        return fn
    raise LandscapeError(f"--loss {spec!r}: expected one of {', '.join(BUILTIN)} or file.py:function")
