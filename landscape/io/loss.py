"""A loss named on the command line: a built-in's name, or `file.py:fn` / `module:fn` (output, target) -> mean loss."""

from __future__ import annotations

from landscape.errors import LandscapeError
from landscape.io.spec import resolve_callable
from landscape.losses import BUILTIN, LossFn


def resolve_loss(spec: str) -> LossFn:
    """The loss named by `spec`: a built-in, or file.py:fn / module:fn (mean over the batch)."""
    if spec in BUILTIN:
        return BUILTIN[spec]
    if ":" in spec:
        fn = resolve_callable(spec, "--loss")
        if not callable(fn):
            raise LandscapeError(f"--loss {spec}: not callable")
        return fn
    raise LandscapeError(f"--loss {spec!r}: expected one of {', '.join(BUILTIN)} or file.py:function")
