"""Resolve the loss: a named built-in or the user's function (output, target) -> mean loss."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from landscape.errors import LandscapeError
from landscape.io.spec import resolve_callable

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

BUILTIN: dict[str, LossFn] = {
    "cross-entropy": F.cross_entropy,
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
