"""Resolve `module:attr` or `path/to/file.py:attr` specs to Python objects."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

from landscape.errors import LandscapeError


def resolve_callable(spec: str, option: str) -> Any:
    """Return the object named by `spec` ("pkg.mod:name" or "file.py:name")."""
    if ":" not in spec:
        raise LandscapeError(f"{option} {spec!r}: expected MODULE:NAME or path/to/file.py:NAME")
    target, _, name = spec.rpartition(":")
    if target.endswith(".py") or "/" in target or "\\" in target:
        path = Path(target)
        if not path.is_file():
            raise LandscapeError(f"{option}: file not found: {path}")
        mod_name = "landscape_user_" + hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
        module = sys.modules.get(mod_name)
        if module is None:
            loader_spec = importlib.util.spec_from_file_location(mod_name, path)
            if loader_spec is None or loader_spec.loader is None:
                raise LandscapeError(f"{option}: cannot import {path}")
            module = importlib.util.module_from_spec(loader_spec)
            # registered before it runs, as `import` does: a @dataclass (and pickle) looks its module up there
            sys.modules[mod_name] = module
            sys.path.insert(0, str(path.resolve().parent))
            try:
                loader_spec.loader.exec_module(module)
            except Exception as exc:  # user code: report, don't trace
                del sys.modules[mod_name]
                raise LandscapeError(f"{option}: importing {path} failed: {type(exc).__name__}: {exc}") from exc
            finally:
                sys.path.pop(0)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise LandscapeError(f"{option}: cannot import module {target!r}: {exc}") from exc
    if not hasattr(module, name):
        raise LandscapeError(f"{option}: {target} has no attribute {name!r}")
    return getattr(module, name)


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, or of a directory's files (names and bytes, in name order): provenance."""
    path = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            h.update(str(file.relative_to(path)).encode() + b"\0")
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()
