"""Resolve `module:attr` or `path/to/file.py:attr` specs to Python objects, with literal call arguments
(`torchvision.models:resnet18(num_classes=10)`)."""

from __future__ import annotations

import ast
import hashlib
import importlib
import importlib.util
import re
import sys
from pathlib import Path
from typing import Any

from landscape.errors import LandscapeError

_CALL = re.compile(r"(?P<name>.+:[A-Za-z_][\w.]*)(?P<call>\(.*)?", re.DOTALL)


def split_call(spec: str, option: str) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
    """`TARGET:NAME(args)` as ("TARGET:NAME", args, kwargs). The arguments are Python literals (numbers,
    strings, tuples, lists, dicts, True/False/None): the option names code to run, and runs no more."""
    match = _CALL.fullmatch(spec.strip())
    if match is None or match["call"] is None:
        return spec, (), {}

    def literal(node: ast.expr) -> Any:
        try:
            return ast.literal_eval(node)
        except ValueError:
            raise LandscapeError(
                f"{option} {spec!r}: {ast.unparse(node)} is not a Python literal (numbers, strings, tuples, lists, "
                f"dicts, True/False/None), e.g. {match['name']}(num_classes=10)"
            ) from None

    try:
        call = ast.parse("f" + match["call"], mode="eval").body
    except SyntaxError as exc:
        raise LandscapeError(f"{option} {spec!r}: the arguments in parentheses do not parse: {exc.msg}") from None
    # f(...), not f(...)(...) nor f(...).x
    if (
        not isinstance(call, ast.Call)
        or not isinstance(call.func, ast.Name)
        or any(isinstance(a, ast.Starred) for a in call.args)
    ):
        raise LandscapeError(f"{option} {spec!r}: expected NAME(literal, ..., key=literal, ...)")
    if any(k.arg is None for k in call.keywords):
        raise LandscapeError(f"{option} {spec!r}: **kwargs cannot be given; name each argument")
    return match["name"], tuple(map(literal, call.args)), {str(k.arg): literal(k.value) for k in call.keywords}


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
