"""Build the user's model: from a factory spec, or from a Hugging Face model directory's config."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch.nn as nn

from landscape.errors import LandscapeError
from landscape.io.spec import resolve_callable, split_call


def is_model_dir(path: str | Path) -> bool:
    """A directory written by Hugging Face `save_pretrained` (it has a config.json)."""
    return Path(path).is_dir() and (Path(path) / "config.json").is_file()


def build_model(spec: str, say: Callable[[str], None] = lambda msg: None, weights: bool = False) -> nn.Module:
    """Call the factory named by `spec` (MODULE:FACTORY or file.py:FACTORY, with literal arguments in
    parentheses: `torchvision.models:resnet18(num_classes=10)`) and check it gives a module; a Hugging
    Face model directory is built from its config.json (random weights, loaded after; with `weights`,
    loaded by its library's `from_pretrained`)."""
    if is_model_dir(spec):
        return _from_config(Path(spec), say, weights)
    name, args, kwargs = split_call(spec, "--model")
    factory = resolve_callable(name, "--model")
    try:
        model = factory(*args, **kwargs)
    except Exception as exc:
        raise LandscapeError(f"--model {spec}: the factory raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise LandscapeError(f"--model {spec}: the factory returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _from_config(path: Path, say: Callable[[str], None], weights: bool = False) -> nn.Module:
    """The class that config.json's `architectures` names, built from that config without a download
    (with `weights`, by its own `from_pretrained`, which knows the library's key renames and ties)."""
    try:
        arch = (json.loads((path / "config.json").read_text()).get("architectures") or [None])[0]
    except (OSError, ValueError, AttributeError) as exc:
        raise LandscapeError(f"--model {path}: config.json is not readable JSON ({exc})") from exc
    if not arch:
        raise LandscapeError(f"--model {path}: config.json names no architecture; pass --model file.py:FACTORY")
    try:
        import transformers
    except ImportError as exc:
        raise LandscapeError(
            f"--model {path}: a Hugging Face model directory needs transformers (pip install transformers)"
        ) from exc
    cls = getattr(transformers, arch, None)
    if cls is None:
        raise LandscapeError(
            f"--model {path}: transformers {transformers.__version__} has no class {arch}; pass --model file.py:FACTORY"
        )
    try:
        if weights:
            bars = transformers.utils.logging.is_progress_bar_enabled()
            transformers.utils.logging.disable_progress_bar()  # its "Loading weights" bar, for a tiny model too
            try:
                model = cls.from_pretrained(str(path), local_files_only=True)
            finally:
                if bars:
                    transformers.utils.logging.enable_progress_bar()
        else:
            model = cls(transformers.AutoConfig.from_pretrained(str(path), local_files_only=True))
    except Exception as exc:
        what = "reading its weights" if weights else "building it from its config"
        raise LandscapeError(
            f"{path}: {arch}: {what} failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from exc
    say(f"--model {path}: {arch} from its config.json" + (", weights by from_pretrained" if weights else ""))
    return model


def pretrained_state(path: str | Path) -> dict | None:
    """A Hugging Face model directory's weights as its library loads them (renamed and tied keys
    included: transformers 5 saves some models under older key names than it builds them with),
    or None when it is not one or transformers is not installed."""
    if not is_model_dir(path):
        return None
    try:
        import transformers  # noqa: F401
    except ImportError:
        return None
    return _from_config(Path(path), lambda msg: None, weights=True).state_dict()
