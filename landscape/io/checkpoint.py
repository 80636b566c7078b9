"""Read checkpoints safely (weights_only unless told otherwise) and fit them to a model."""

from __future__ import annotations

import pickle
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
import torch.nn as nn

from landscape.errors import LandscapeError

NESTED_KEYS = ("state_dict", "model_state_dict", "model")
PREFIXES = ("module.", "model.")


def read_state_dict(path: str | Path, unsafe_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Load a flat name -> tensor dict from .pt/.pth/.ckpt (raw or nested) or .safetensors."""
    path = Path(path)
    if not path.is_file():
        raise LandscapeError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path)))
        except Exception as exc:
            raise LandscapeError(f"{path}: not a readable safetensors file ({exc})") from exc
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not unsafe_pickle)
    except pickle.UnpicklingError as exc:
        raise LandscapeError(
            f"{path}: holds pickled Python objects that torch.load(weights_only=True) refuses; "
            "if you trust this file, pass --unsafe-pickle (it can run arbitrary code)"
        ) from exc
    except Exception as exc:
        raise LandscapeError(f"{path}: cannot read checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0]})") from exc
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, Mapping):
        for key in NESTED_KEYS:
            inner = obj.get(key)
            if isinstance(inner, nn.Module):
                inner = inner.state_dict()
            if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise LandscapeError(
            f"{path}: no state_dict found (expected a dict of tensors, or one under {', '.join(NESTED_KEYS)})"
        )
    return dict(obj)


def fit_state_dict(
    state: dict[str, torch.Tensor],
    model: nn.Module,
    source: str,
    say: Callable[[str], None] = lambda msg: None,
) -> dict[str, torch.Tensor]:
    """Strip DDP/Lightning prefixes if that makes the keys match, then check keys and shapes."""
    expected = model.state_dict()
    if not set(expected) <= set(state):
        for prefix in PREFIXES:
            if all(k.startswith(prefix) for k in state):
                stripped = {k[len(prefix):]: v for k, v in state.items()}
                if set(expected) <= set(stripped) or len(set(expected) & set(stripped)) > len(set(expected) & set(state)):
                    say(f"{source}: stripped the {prefix!r} prefix from every key")
                    state = stripped
                    break
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} (e.g. {', '.join(unexpected[:3])})")
        raise LandscapeError(f"{source}: checkpoint keys do not match the model: {'; '.join(parts)}")
    for name, ref in expected.items():
        if tuple(state[name].shape) != tuple(ref.shape):
            raise LandscapeError(
                f"{source}: shape mismatch for {name}: checkpoint {tuple(state[name].shape)}, model {tuple(ref.shape)}"
            )
    return {k: state[k] for k in expected}
