"""A loss named on the command line: a built-in's name, or `file.py:fn` / `module:fn` (output, target) -> mean loss."""

from __future__ import annotations

from functools import partial

from landscape.errors import LandscapeError
from landscape.io.spec import resolve_callable, split_call
from landscape.losses import BUILTIN, LossFn


def resolve_loss(spec: str) -> LossFn:
    """The loss named by `spec`: a built-in, or file.py:fn / module:fn (mean over the batch), its literal
    arguments in parentheses bound before (output, target): `losses.py:focal(gamma=2.0)`."""
    if spec in BUILTIN:
        return BUILTIN[spec]
    if ":" in spec:
        name, args, kwargs = split_call(spec, "--loss")
        fn = resolve_callable(name, "--loss")
        if not callable(fn):
            raise LandscapeError(f"--loss {spec}: not callable")
        return partial(fn, *args, **kwargs) if args or kwargs else fn
    raise LandscapeError(f"--loss {spec!r}: expected one of {', '.join(BUILTIN)} or file.py:function")
