"""Results groups of the analysis commands (/roughness, /sharpness, /path, /plane, /trajectory, /track).

Each group keeps its headline numbers as numeric scalar attributes (what `landscape metrics` collects),
its settings and labels as string attributes, and its arrays as datasets. The root attributes are
those of every results file (io/results.py): format, format_version, tool_version, provenance,
settings (JSON), complete, kind. A new file is written to a temporary name and renamed, so no
half-written file is ever left under the final name.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from landscape.errors import LandscapeError
from landscape.io.h5file import rewrite_atomically, write_atomically
from landscape.io.results import _attr, _plain, check_ours, open_results, write_layout, write_root_attrs
from landscape.io.schema import FileCheck, check_group
from landscape.params import Layout

ANALYSIS_GROUPS = ("roughness", "path", "plane", "trajectory", "track", "sharpness")
"""The groups the analysis commands write, in the order a figure is looked for."""


def analysis_groups(path: str | Path) -> list[str]:
    """The analysis groups a results file holds, in ANALYSIS_GROUPS order (a group may hold only attributes)."""
    with open_results(path) as f:
        return [name for name in ANALYSIS_GROUPS if name in f and isinstance(f[name], h5py.Group)]


SWEEP_GROUPS = ("data_sets",)
"""Groups a sweep file may hold beside its grid: the grid on other data sets (sweep --eval-data)."""


def sweep_groups(path: str | Path) -> list[str]:
    with open_results(path) as f:
        return [name for name in SWEEP_GROUPS if name in f and isinstance(f[name], h5py.Group)]


@dataclass
class Group:
    """One results group: scalar numbers, arrays, and other (string/JSON) attributes."""

    numbers: dict[str, float | int] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)


def write_group(f: h5py.File, name: str, group: Group) -> None:
    """Write (or replace) one group of numbers, arrays and attributes in an open results file."""
    if name in f:
        del f[name]
    g = f.create_group(name)
    for key, value in group.attrs.items():
        g.attrs[key] = _attr(value)
    for key, value in group.numbers.items():
        g.attrs[key] = float(value) if isinstance(value, float) else value
    for key, arr in group.arrays.items():
        g.create_dataset(key, data=np.asarray(arr))


def write_results(
    path: str | Path,
    *,
    kind: str,
    attrs: Mapping[str, Any],
    settings: Mapping[str, Any],
    groups: Mapping[str, Group],
    layout: Layout | None = None,
) -> Path:
    """Write a complete results file (temp file, then rename) holding `groups` beside the usual root attributes."""
    path = Path(path)
    with write_atomically(path) as f:
        write_root_attrs(f, {**attrs, "kind": kind}, settings, complete=True)
        if layout is not None:
            write_layout(f.require_group("axes"), layout)
        for name, group in groups.items():
            write_group(f, name, group)
    return path


def add_group(path: str | Path, name: str, group: Group) -> None:
    """Add (or replace) one group in an existing results file (e.g. /trajectory beside a sweep)."""
    check_ours(path)
    with rewrite_atomically(path) as f:
        write_group(f, name, group)


def has_group(path: str | Path, name: str) -> bool:
    with open_results(path) as f:
        return name in f and isinstance(f[name], h5py.Group)


def read_group(path: str | Path, name: str) -> Group:
    """Read one group back: numeric scalar attributes as numbers, the rest as attrs, datasets as arrays."""
    with open_results(path) as f:
        if name not in f or not isinstance(f[name], h5py.Group):
            raise LandscapeError(f"{path}: holds no /{name} group (made by `landscape {name}`?)")
        check_group(path, f, name)
        g = f[name]
        numbers: dict[str, float | int] = {}
        attrs: dict[str, Any] = {}
        for key, value in g.attrs.items():
            value = _plain(value)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                numbers[key] = value
            else:
                attrs[key] = value
        arrays = {key: ds[()] for key, ds in g.items() if isinstance(ds, h5py.Dataset)}
        return Group(numbers, arrays, attrs)


def read_root(path: str | Path) -> dict[str, Any]:
    """The root attributes (provenance, settings, kind) of a results file."""
    with open_results(path) as f:
        return {k: _plain(v) for k, v in f.attrs.items()}


def json_attr(value: Any, default: Any = None) -> Any:
    """Decode an attribute stored as JSON by `_attr` (lists, dicts); pass anything else through."""
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return default if default is not None else value
    return value if value != "" else default


class PointStore:
    """The values of a long run's points (e.g. roughness profiles), written after every chunk beside the
    results file, so a killed run can be finished with --resume; removed once the results file is written."""

    def __init__(
        self, path: Path, loss: np.ndarray, accuracy: np.ndarray | None, done: np.ndarray, settings: Mapping[str, Any]
    ) -> None:
        self.path, self.loss, self.accuracy, self.done, self.settings = path, loss, accuracy, done, settings

    @classmethod
    def open(
        cls, path: str | Path, settings: Mapping[str, Any], total: int, classification: bool, resume: bool
    ) -> PointStore:
        """Read the points of a killed run with the same settings (resume), or start a fresh file."""
        path = Path(path)
        wanted = json.dumps(dict(settings), sort_keys=True, default=str)
        if resume and path.exists():
            with open_results(path) as f:
                if f.attrs.get("kind") != "points" or f.attrs.get("settings") != wanted:
                    raise LandscapeError(
                        f"--resume: {path} holds points of a run with other settings; pass --force to start over"
                    )
                check = FileCheck(path, f)
                loss = check.dataset("loss", kinds="f", shape=(total,))[()]
                acc = check.dataset("accuracy", kinds="f", shape=(total,))[()] if "accuracy" in f else None
                return cls(path, loss, acc, check.dataset("done", kinds="b", shape=(total,))[()], settings)
        loss = np.full(total, np.nan)
        acc = np.full(total, np.nan) if classification else None
        store = cls(path, loss, acc, np.zeros(total, dtype=bool), settings)
        store.save()
        return store

    def save(self) -> None:
        """The whole file written again (atomically: a failed write leaves the last good one)."""
        with write_atomically(self.path) as f:
            write_root_attrs(f, {"kind": "points"}, self.settings, complete=False)
            f.create_dataset("loss", data=self.loss)
            if self.accuracy is not None:
                f.create_dataset("accuracy", data=self.accuracy)
            f.create_dataset("done", data=self.done)

    def write(self, idx: np.ndarray, loss: np.ndarray, accuracy: np.ndarray | None) -> None:
        """Store values at flat indices and mark them done."""
        self.loss[idx] = loss
        if self.accuracy is not None and accuracy is not None:
            self.accuracy[idx] = accuracy
        self.done[idx] = True
        self.save()

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
