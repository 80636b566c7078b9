"""Build the user's model from a factory spec."""

from __future__ import annotations

import torch.nn as nn

from landscape.errors import LandscapeError
from landscape.io.spec import resolve_callable


def build_model(spec: str) -> nn.Module:
    """Call the factory named by `spec` (MODULE:FACTORY or file.py:FACTORY) and check it gives a module."""
    factory = resolve_callable(spec, "--model")
    try:
        model = factory()
    except Exception as exc:
        raise LandscapeError(f"--model {spec}: the factory raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise LandscapeError(f"--model {spec}: the factory returned {type(model).__name__}, not a torch.nn.Module")
    return model
