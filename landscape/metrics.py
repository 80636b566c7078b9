"""Every number in results files as one flat table, and CI gates such as `--fail-if "lambda_max > 50"`.

Numbers are named GROUP.KEY (`roughness.ri`, `sharpness.sam`, `path.barrier`, `sweep.loss_center`,
`hessian.lambda_max`, ...). A condition may name a number in full or by its last parts
(`ri`, `lambda_max`), and then applies to every number so named. Conditions are parsed by a small
tokenizer (NAME OP NUMBER or NUMBER OP NAME); nothing is ever passed to eval().
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from landscape.errors import LandscapeError
from landscape.io.results import _plain, open_results, read_sweep
from landscape.summary import sweep_numbers

SKIP_GROUPS = ("axes",)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def collect(path: str | Path) -> dict[str, float]:
    """All numbers of one results file: numeric scalar attributes and scalar datasets of every group
    (name GROUP.SUBGROUP.KEY), the sweep's summary numbers, and from any eigenvalues dataset
    lambda_max and lambda_min (computed with which=both) or lambda_k (the least of the top k)."""
    table: dict[str, float] = {}
    with open_results(path) as f:
        has_sweep = "sweep" in f and "loss" in f["sweep"]

        def put(name: str, value: Any) -> None:
            value = _plain(value)
            if isinstance(value, list) and len(value) == 1:
                value = value[0]
            if _is_number(value):
                table[name] = float(value)

        def visit(name: str, obj: Any) -> None:
            top = name.split("/")[0]
            if top in SKIP_GROUPS:
                return
            key = name.replace("/", ".")
            for attr, value in obj.attrs.items():
                if top == "sweep" and not isinstance(obj, h5py.Group):
                    continue
                put(f"{key}.{attr}", value)
            if isinstance(obj, h5py.Dataset):
                if top == "sweep":
                    return
                if obj.shape == () or obj.size == 1:
                    put(key, obj[()].reshape(-1)[0] if obj.shape != () else obj[()])
                elif obj.name.rsplit("/", 1)[-1] == "loss" and np.issubdtype(obj.dtype, np.floating):
                    # the loss grids of the analysis groups (roughness profiles, path, plane): gates must see NaN
                    put(f"{key.rsplit('.', 1)[0]}.nonfinite_points", int((~np.isfinite(obj[()])).sum()))
                elif (
                    obj.name.rsplit("/", 1)[-1] == "eigenvalues"
                    and obj.ndim == 1
                    and np.issubdtype(obj.dtype, np.number)
                ):
                    ev = obj[()]
                    ev = ev[np.isfinite(ev)]
                    parent = key.rsplit(".", 1)[0]
                    if ev.size:
                        table.setdefault(f"{parent}.lambda_max", float(ev.max()))
                        # the smallest eigenvalue only where it was computed (which=both): the least of the
                        # top k is lambda_k, and a gate on "lambda_min < 0" must not read it as lambda_min
                        low = "lambda_min" if str(obj.attrs.get("which", "")) == "both" else "lambda_k"
                        table.setdefault(f"{parent}.{low}", float(ev.min()))

        f.visititems(visit)
    if has_sweep:
        for key, value in sweep_numbers(read_sweep(path)).items():
            if _is_number(value):
                table[f"sweep.{key}"] = float(value)
    return dict(sorted(table.items()))


# --------------------------------------------------------------------------- conditions

OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    ">": operator.gt,
}
FLIP = {"<": ">", ">": "<", "<=": ">=", ">=": "<=", "==": "==", "!=": "!="}
_NAME = r"[A-Za-z_][A-Za-z0-9_.\-]*"
_NUM = r"[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|inf|infinity)"
_OP = r"<=|>=|==|!=|<|>"
_FORWARD = re.compile(rf"^\s*(?P<name>{_NAME})\s*(?P<op>{_OP})\s*(?P<num>{_NUM})\s*$", re.IGNORECASE)
_BACKWARD = re.compile(rf"^\s*(?P<num>{_NUM})\s*(?P<op>{_OP})\s*(?P<name>{_NAME})\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Condition:
    """NAME OP BOUND: the gate fails when a number so named satisfies it."""

    name: str
    op: str
    bound: float
    text: str

    def holds(self, value: float) -> bool:
        return OPS[self.op](value, self.bound)


def parse_condition(text: str) -> Condition:
    """Parse 'lambda_max > 50', 'roughness.ri>=0.3' or '50 < lambda_max' (no eval)."""
    m = _FORWARD.match(text)
    flip = False
    if m is None:
        m = _BACKWARD.match(text)
        flip = True
    if m is None:
        raise LandscapeError(
            f'--fail-if {text!r}: expected NAME OP NUMBER with OP one of < <= > >= == != (e.g. "lambda_max > 50")'
        )
    op = FLIP[m["op"]] if flip else m["op"]
    return Condition(m["name"], op, float(m["num"]), text.strip())


def matches(name: str, key: str) -> bool:
    """A condition name matches KEY in full or as its trailing dotted parts (`ri` ~ `roughness.ri`)."""
    return key == name or key.endswith("." + name)


NONFINITE = "nonfinite_points"  # the number of NaN or infinite loss values of a grid, per group


@dataclass(frozen=True)
class Breach:
    """One number that broke one bound (or was NaN, which no bound can clear, or came from a file
    whose loss grids hold `nonfinite` NaN or infinite points, which no number over them can speak for)."""

    file: str
    key: str
    value: float
    condition: Condition
    nonfinite: int = 0

    def message(self) -> str:
        if self.nonfinite:
            return (
                f"{self.file}: {self.nonfinite} point(s) of its loss grids are NaN or infinite, so "
                f"{self.key} = {self.value:.6g} cannot be held to {self.condition.text!r} (counted as broken; "
                "--allow-nonfinite accepts it)"
            )
        if math.isnan(self.value):
            return f"{self.file}: {self.key} is NaN, so the bound {self.condition.text!r} cannot be checked (counted as broken)"
        return f"{self.file}: {self.key} = {self.value:.6g} breaks the bound {self.condition.text!r}"


def check(
    conditions: Iterable[Condition], tables: Mapping[str, Mapping[str, float]], *, allow_nonfinite: bool = False
) -> list[Breach]:
    """Every (file, number, condition) where the condition holds. A condition naming no number in any
    file is a user error (a typo must not pass a CI gate silently). In a file whose loss grids hold
    NaN or infinite points every bound is broken (a max over the finite points alone passed a gate
    on a grid that was 120/121 infinite), unless `allow_nonfinite`; bounds on the counts themselves
    are checked as usual."""
    breaches: list[Breach] = []
    for cond in conditions:
        found = False
        for file, table in tables.items():
            bad = 0 if allow_nonfinite else int(sum(v for k, v in table.items() if k.endswith(NONFINITE)))
            for key, value in table.items():
                if not matches(cond.name, key):
                    continue
                found = True
                if bad and not key.endswith(NONFINITE):
                    breaches.append(Breach(file, key, value, cond, nonfinite=bad))
                elif math.isnan(value) or cond.holds(value):
                    breaches.append(Breach(file, key, value, cond))
        if not found:
            known = sorted({k for t in tables.values() for k in t})
            close = [k for k in known if cond.name.split(".")[-1] in k][:6]
            hint = (
                f"; similar: {', '.join(close)}"
                if close
                else f"; known: {', '.join(known[:12])}{' ...' if len(known) > 12 else ''}"
            )
            raise LandscapeError(f"--fail-if {cond.text!r}: no number named {cond.name!r} in the given files{hint}")
    return breaches
