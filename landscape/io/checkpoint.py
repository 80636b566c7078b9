"""Read checkpoints safely (weights_only unless told otherwise) and fit them to a model by its own names.

A checkpoint file (or a Hugging Face model directory, sharded or not) is read into every dict of
tensors it holds, nested or not (`{"state_dict": ...}` from Lightning, `{"net": ..., "acc": ...}`,
timm's `state_dict` and `state_dict_ema`). Fitting then looks, in each of them, for the key prefix
that makes the keys the model's own (`net.`, `module.`, `model.`, `_orig_mod.`, or none), keeping
only the tensors whose shapes fit; the one dict and prefix that cover every tensor of the model
win, and what was stripped or ignored is said. Tensors the model ties to another one (a language
model's output layer tied to its embedding, which `save_pretrained` leaves out) are not missing.
When two choices fit alike (the weights and an EMA copy), the user picks with `--checkpoint-key`
or `--prefix`. The module versions a state_dict carries (its `_metadata`, which some modules'
loaders read: torchvision's MNASNet refuses a state_dict without them) follow the fitted keys.
"""

from __future__ import annotations

import json
import pickle
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from landscape.errors import LandscapeError
from landscape.io.model import pretrained_state

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
COMPILED = "_orig_mod."  # the segment torch.compile puts in front of a compiled module's keys
MAX_DEPTH = 4  # nesting searched for dicts of tensors


@dataclass(frozen=True)
class Checkpoint:
    """Every dict of tensors found in a checkpoint, by where it was found ('' for the top level,
    'state_dict', 'callbacks/ema', ...)."""

    source: str
    candidates: dict[str, dict[str, torch.Tensor]]
    versions: dict[str, dict[str, Any]] = field(default_factory=dict)  # a candidate's module versions (`_metadata`)


def weight_files(path: Path) -> list[Path]:
    """The files a checkpoint path stands for: itself, or a model directory's weights (the shards
    that `*.index.json` names, else its one weights file, safetensors preferred)."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise LandscapeError(f"checkpoint not found: {path}")
    for index in sorted(path.glob("*.index.json")):
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            return [path / name for name in sorted(set(weight_map.values()))]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise LandscapeError(f"{index}: not a readable shard index ({type(exc).__name__}: {exc})") from exc
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    safetensors = [p for p in files if p.suffix == ".safetensors"]
    files = safetensors or files
    if len(files) == 1:
        return files
    if not files:
        raise LandscapeError(f"{path}: a directory without weights (no {', '.join(WEIGHT_SUFFIXES)} file)")
    raise LandscapeError(
        f"{path}: several weight files ({', '.join(p.name for p in files[:4])}); pass --checkpoint FILE"
    )


def read_checkpoint(path: str | Path, unsafe_pickle: bool = False) -> Checkpoint:
    """Every dict of tensors in a .pt/.pth/.ckpt/.bin/.safetensors file or a model directory (a Hugging
    Face one read by its library's `from_pretrained`, else its weight files)."""
    path = Path(path)
    pretrained = pretrained_state(path)
    if pretrained is not None:
        return Checkpoint(str(path), {"": pretrained}, {"": dict(getattr(pretrained, "_metadata", {}))})
    candidates: dict[str, dict[str, torch.Tensor]] = {}
    versions: dict[str, dict[str, Any]] = {}
    for file in weight_files(path):
        for key, tensors in _tensor_dicts(_load_file(file, unsafe_pickle), versions).items():
            candidates.setdefault(key, {}).update(tensors)  # shards of one state_dict add up
    if not candidates:
        raise LandscapeError(f"{path}: no state_dict found (no dict of tensors in it, at any level)")
    return Checkpoint(str(path), candidates, versions)


def read_state_dict(path: str | Path, unsafe_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The one dict of tensors of a checkpoint (the top level first); for files of a known layout."""
    ckpt = read_checkpoint(path, unsafe_pickle)
    return ckpt.candidates.get("") or next(iter(ckpt.candidates.values()))


def _load_file(path: Path, unsafe_pickle: bool) -> Any:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path)))
        except Exception as exc:
            raise LandscapeError(f"{path}: not a readable safetensors file ({exc})") from exc
    try:
        return torch.load(path, map_location="cpu", weights_only=not unsafe_pickle)
    except pickle.UnpicklingError as exc:
        raise LandscapeError(
            f"{path}: holds pickled Python objects that torch.load(weights_only=True) refuses; "
            "if you trust this file, pass --unsafe-pickle (it can run arbitrary code)"
        ) from exc
    except Exception as exc:
        raise LandscapeError(
            f"{path}: cannot read checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0]})"
        ) from exc


def _tensor_dicts(
    obj: Any, versions: dict[str, dict[str, Any]], where: str = "", depth: int = 0
) -> dict[str, dict[str, torch.Tensor]]:
    """The tensors of `obj` (a dict or a pickled module) and of the dicts nested in it, by path; the
    module versions each one carries go into `versions` under the same path."""
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if not isinstance(obj, Mapping) or depth > MAX_DEPTH:
        return {}
    found: dict[str, dict[str, torch.Tensor]] = {}
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if tensors:
        found[where] = tensors
        if isinstance(getattr(obj, "_metadata", None), Mapping):
            versions.setdefault(where, {}).update(obj._metadata)  # type: ignore[attr-defined]
    for k, v in obj.items():
        if isinstance(k, str) and isinstance(v, (Mapping, nn.Module)):
            found.update(_tensor_dicts(v, versions, f"{where}/{k}" if where else k, depth + 1))
    return found


def tied_keys(model: nn.Module) -> dict[str, str]:
    """Keys of the model's state_dict that hold the same tensor as an earlier key: tied -> source."""
    first: dict[int, str] = {}
    ties: dict[str, str] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) in first:
            ties[name] = first[id(tensor)]
        else:
            first[id(tensor)] = name
    return ties


@dataclass
class _Fit:
    """One way to read the model's tensors out of a checkpoint: a candidate dict and a prefix."""

    key: str
    prefix: str
    state: dict[str, torch.Tensor]  # model key -> tensor (shapes fit)
    mismatched: dict[str, tuple[int, ...]]  # model key -> the checkpoint's shape
    unused: list[str]  # the candidate's keys this fit does not read
    compiled: int  # keys that had torch.compile's segment


def _fits(key: str, tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> list[_Fit]:
    """Every prefix after which some of the candidate's keys are model keys, with what it reads."""
    clean = {k.replace(COMPILED, ""): v for k, v in tensors.items()}
    compiled = sum(COMPILED in k for k in tensors)
    by_prefix: dict[str, _Fit] = {}
    for name, tensor in clean.items():
        cuts = [0] + [i + 1 for i, ch in enumerate(name) if ch == "."]
        for cut in cuts:
            rest = name[cut:]
            if rest not in expected:
                continue
            fit = by_prefix.setdefault(name[:cut], _Fit(key, name[:cut], {}, {}, [], compiled))
            if tuple(tensor.shape) == tuple(expected[rest].shape):
                fit.state[rest] = tensor
            else:
                fit.mismatched[rest] = tuple(tensor.shape)
    for fit in by_prefix.values():
        used = {fit.prefix + k for k in fit.state}
        fit.unused = [k for k in clean if k not in used and k[len(fit.prefix) :] not in fit.mismatched]
    return list(by_prefix.values())


def fit_state_dict(
    checkpoint: Checkpoint | Mapping[str, torch.Tensor],
    model: nn.Module,
    source: str,
    say: Callable[[str], None] = lambda msg: None,
    *,
    key: str | None = None,
    prefix: str | None = None,
) -> dict[str, torch.Tensor]:
    """The model's state_dict read out of `checkpoint` by the model's own key names (see the module
    docstring); `key` and `prefix` (--checkpoint-key, --prefix) narrow the choice."""
    ckpt = (
        checkpoint
        if isinstance(checkpoint, Checkpoint)
        else Checkpoint(source, {"": dict(checkpoint)}, {"": dict(getattr(checkpoint, "_metadata", {}))})
    )
    candidates = ckpt.candidates
    if key is not None:
        key = key.strip("/")
        if key not in candidates:
            raise LandscapeError(
                f"--checkpoint-key {key!r}: {source} has no dict of tensors there (it has: {_names(candidates)})"
            )
        candidates = {key: candidates[key]}
    expected = model.state_dict()
    ties = tied_keys(model)
    required = [k for k in expected if k not in ties]
    fits = [f for k, t in candidates.items() for f in _fits(k, t, expected)]
    if prefix is not None:
        fits = [f for f in fits if f.prefix == prefix]
        if not fits:
            raise LandscapeError(
                f"--prefix {prefix!r}: no key of {source} starts with it and continues with a key of the model"
            )
    full = [f for f in fits if all(k in f.state for k in required)]
    if not full:
        raise LandscapeError(_mismatch_message(fits, candidates, expected, required, source))
    if len(full) > 1:
        raise LandscapeError(
            f"{source}: the model's weights are there more than once: "
            + "; ".join(_where(f) for f in full[:4])
            + ". Pick one with "
            + ("--prefix" if len({f.key for f in full}) == 1 else "--checkpoint-key (and --prefix)")
        )
    (fit,) = full
    top = {k.split(".", 1)[0] for k in expected}
    stray = [k for k in fit.unused if k.startswith(fit.prefix) and k[len(fit.prefix) :].split(".", 1)[0] in top]
    if stray:  # keys inside the model's own modules that it has no place for: another architecture
        raise LandscapeError(
            f"{source}: checkpoint keys do not match the model: unexpected {len(stray)} (e.g. {', '.join(stray[:3])})"
        )
    _report(fit, candidates, say, source)
    state = dict(fit.state)
    for tied, origin in ties.items():
        state.setdefault(tied, state[origin])
    _note_precision(state, expected, source, say)
    fitted = OrderedDict((k, _usable(k, state[k], source, say)) for k in expected)
    fitted._metadata = _module_versions(fit, ckpt.versions.get(fit.key, {}), expected)  # type: ignore[attr-defined]
    return fitted


def _module_versions(fit: _Fit, saved: Mapping[str, Any], expected: Mapping[str, torch.Tensor]) -> OrderedDict:
    """The version of each of the model's modules that `load_state_dict` hands to its loader: the one
    the checkpoint recorded, under the fit's prefix (torch.compile's segment dropped), else the model's own
    (a file without versions, such as safetensors, was most likely written by the code that reads it)."""
    recorded = {".".join(s for s in path.split(".") if s != COMPILED[:-1]): v for path, v in saved.items()}
    root = fit.prefix[:-1]  # a prefix is '' or ends with '.'
    return OrderedDict(
        (path, recorded.get(f"{root}.{path}" if root and path else root or path, own))
        for path, own in getattr(expected, "_metadata", {}).items()
    )


def _usable(name: str, tensor: torch.Tensor, source: str, say: Callable[[str], None]) -> torch.Tensor:
    """A checkpoint tensor the model can take: sparse ones made dense; meta tensors (no values) and
    NaN or infinite weights refused by name (a diverged run's checkpoint gave a file of NaN)."""
    if tensor.is_meta:
        raise LandscapeError(
            f"{source}: {name} is a meta tensor (a shape without values: saved from a model that was never given weights)"
        )
    if tensor.layout != torch.strided:
        say(f"{name} is stored as a {str(tensor.layout).removeprefix('torch.')} tensor: read as dense")
        tensor = tensor.to_dense()
    if tensor.is_floating_point() or tensor.is_complex():
        bad = int((~torch.isfinite(tensor)).sum())
        if bad:
            raise LandscapeError(
                f"{source}: {name} holds {bad:,} NaN or infinite value(s) of {tensor.numel():,}; the loss is "
                "undefined at these weights (a diverged run?)"
            )
    return tensor


def _where(fit: _Fit) -> str:
    place = f"under {fit.key!r}" if fit.key else "at the top level"
    return f"{place} with prefix {fit.prefix!r}" if fit.prefix else f"{place} with no prefix"


def _names(candidates: Mapping[str, Any]) -> str:
    return ", ".join(repr(k) if k else "'' (the top level)" for k in list(candidates)[:6])


def _report(fit: _Fit, candidates: Mapping[str, Any], say: Callable[[str], None], source: str) -> None:
    """Say which dict, which prefix and which extra keys were used or ignored (nothing for a plain fit)."""
    parts = []
    if fit.key:
        parts.append(f"read the weights under {fit.key!r}")
    if fit.prefix:
        parts.append(f"stripped the {fit.prefix!r} prefix")
    if fit.compiled:
        parts.append(f"dropped torch.compile's {COMPILED!r} from {fit.compiled} keys")
    if fit.unused:
        parts.append(f"ignored {len(fit.unused)} other tensors (e.g. {', '.join(fit.unused[:3])})")
    if parts:
        say(f"{source}: " + "; ".join(parts))


def _mismatch_message(
    fits: list[_Fit], candidates: Mapping[str, Any], expected: dict[str, torch.Tensor], required: list[str], source: str
) -> str:
    if not fits:
        keys = [k for t in candidates.values() for k in t][:3]
        return (
            f"{source}: checkpoint keys do not match the model: none of its keys (e.g. {', '.join(keys)}) ends "
            f"with a key of the model (e.g. {', '.join(list(expected)[:3])})"
        )
    best = max(fits, key=lambda f: (len(f.state) + len(f.mismatched), len(f.state), -len(f.unused)))
    missing = [k for k in required if k not in best.state and k not in best.mismatched]
    if not missing:  # every key is there: the shapes say what differs
        name = next(k for k in required if k in best.mismatched)
        return (
            f"{source}: shape mismatch for {name}: checkpoint {best.mismatched[name]}, model {tuple(expected[name].shape)} "
            "(a factory's arguments go in --model: 'torchvision.models:resnet18(num_classes=10)')"
        )
    parts = [f"missing {len(missing)} (e.g. {', '.join(missing[:3])})"]
    if best.unused:
        parts.append(f"unexpected {len(best.unused)} (e.g. {', '.join(best.unused[:3])})")
    where = f" ({_where(best)})" if best.prefix or best.key else ""
    return f"{source}: checkpoint keys do not match the model{where}: {'; '.join(parts)}"


def _note_precision(
    state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], source: str, say: Callable[[str], None]
) -> None:
    """Say once when the checkpoint stores floating-point tensors at a lower precision than the model."""
    low = {
        str(t.dtype).removeprefix("torch.")
        for k, t in state.items()
        if t.is_floating_point()
        and expected[k].is_floating_point()
        and torch.finfo(t.dtype).bits < torch.finfo(expected[k].dtype).bits
    }
    if low:
        say(
            f"{source}: stores {'/'.join(sorted(low))} weights; they are upcast to the model's precision, "
            "so the values differ from a run in that precision by its rounding"
        )


def write_state_dict(path: str | Path, state: Mapping[str, torch.Tensor]) -> Path:
    """A state_dict as a checkpoint every reader loads without pickle: `.safetensors` by its suffix,
    otherwise a plain `torch.save` dict of tensors (read back with `weights_only=True`). Written whole or
    not at all."""
    from landscape.io.atomic import replace_whole, written_path

    path = Path(path)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    with replace_whole(path, keep_suffix=True) as tmp:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(tensors, str(tmp))
        else:
            torch.save(tensors, tmp)
    return written_path(path)
