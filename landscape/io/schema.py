"""What a results file must hold before a reader uses it: groups, datasets, shapes, dtypes, attributes.

Every reader checks the part of the layout it needs (docs/architecture.md, "The results file") here
first, so a file that was edited, truncated or written by something else is refused in one line that
names the file and what is wrong, instead of failing later inside numpy, json or a figure.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from landscape.errors import LandscapeError
from landscape.io.vectors import is_bfloat16

DAMAGED = "the file is damaged, edited or not written by landscape"
"""What every refusal of a file's content ends with."""

NUMERIC = "fiu"
"""numpy dtype kinds a numeric dataset may have (float, int, unsigned)."""

# The arrays of each analysis group: name -> shape in named dimensions ("?" ending a name: optional).
# A dimension takes its size from the first array that has it; every other array must agree.
GROUP_ARRAYS: dict[str, dict[str, tuple[str | int, ...]]] = {
    "roughness": {
        "alphas": ("steps",),
        "loss": ("directions", "steps"),
        "total_variation": ("directions",),
        "accuracy?": ("directions", "steps"),
    },
    "path": {
        "t": ("points",),
        "loss": ("points",),
        "accuracy?": ("points",),
        "weights?": ("points", "checkpoints"),
        "node_loss": ("checkpoints",),
        "node_accuracy?": ("checkpoints",),
        "loss_unaligned?": ("points",),
        "accuracy_unaligned?": ("points",),
        "loss_line?": ("points",),
        "accuracy_line?": ("points",),
        "train_loss?": ("steps",),
        "train_t?": ("steps",),
        "bend?": ("bends", "parameters"),
    },
    "plane": {
        "points": (3, 2),
        "own_loss": (3,),
        "plane_loss": (3,),
        "gap": (3,),
        "own_accuracy?": (3,),
        "plane_accuracy?": (3,),
    },
    "trajectory": {
        "coords": ("checkpoints", 2),
        "own_loss": ("checkpoints",),
        "projected_loss": ("checkpoints",),
        "gap": ("checkpoints",),
        "residual?": ("checkpoints",),
        "relative_residual?": ("checkpoints",),
        "explained_variance": (2,),
        "singular_values?": ("components",),
        "own_accuracy?": ("checkpoints",),
        "projected_accuracy?": ("checkpoints",),
    },
    "track": {
        "step": ("checkpoints",),
        "lambda_max": ("checkpoints",),
        "lambda_max_residual?": ("checkpoints",),
        "lambda_max_error?": ("checkpoints",),
        "converged?": ("checkpoints",),
        "loss?": ("checkpoints",),
        "trace?": ("checkpoints",),
        "trace_std_error?": ("checkpoints",),
        "grad_in_top?": ("checkpoints",),
        "subspace_overlap?": ("checkpoints",),
        "grad_norm?": ("checkpoints",),
        "subspace_converged?": ("checkpoints",),
    },
    "sharpness": {"epsilon_trace?": ("iterations",)},
}

# The headline numbers of each analysis group: numeric scalar attributes where they are present.
GROUP_NUMBERS: dict[str, tuple[str, ...]] = {
    "roughness": ("ri", "mu", "sigma", "span", "steps"),
    "path": ("barrier", "barrier_t"),
    "plane": ("distance_ab", "distance_ac"),
    "trajectory": ("explained_variance_1", "explained_variance_2"),
    "track": ("lambda_max",),
    "sharpness": ("loss", "sam", "epsilon_sharpness"),
}


def _not_bool(v: Any) -> bool:
    return not isinstance(v, (bool, np.bool_))


ATTR_KINDS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "str": ("text", lambda v: isinstance(v, str)),
    "int": ("an integer", lambda v: isinstance(v, (int, np.integer)) and _not_bool(v)),
    "number": ("a number", lambda v: isinstance(v, (int, float, np.integer, np.floating)) and _not_bool(v)),
    "bool": ("true or false", lambda v: not _not_bool(v) or (isinstance(v, (int, np.integer)) and v in (0, 1))),
    "json-list": ("a JSON list", lambda v: isinstance(v, list)),
    "json-dict": ("a JSON object", lambda v: isinstance(v, dict)),
}
"""The attribute kinds `FileCheck.attr` knows: how to say each, and which (decoded) values it accepts."""


class FileCheck:
    """Checks on one open results file; the first problem found raises a one-line LandscapeError."""

    def __init__(self, path: str | Path, f: h5py.File):
        self.path = Path(path)
        self.f = f

    def fail(self, what: str) -> LandscapeError:
        return LandscapeError(f"{self.path}: {what} ({DAMAGED})")

    def group(self, name: str, where: h5py.Group | None = None) -> h5py.Group:
        parent = self.f if where is None else where
        obj = parent.get(name)
        if not isinstance(obj, h5py.Group):
            raise self.fail(f"{_name(parent, name)} is {'not a group' if obj is not None else 'missing'}")
        return obj

    def dataset(
        self, name: str, where: h5py.Group | None = None, *, kinds: str = NUMERIC, shape: tuple[int, ...] | None = None
    ) -> h5py.Dataset:
        """The dataset `name` of `where` (default the root), checked for dtype kind and, if given, shape."""
        parent = self.f if where is None else where
        obj = parent.get(name)
        full = _name(parent, name)
        if not isinstance(obj, h5py.Dataset):
            raise self.fail(f"{full} is {'not a dataset' if obj is not None else 'missing'}")
        if obj.dtype.kind not in kinds:
            raise self.fail(f"{full} holds {obj.dtype}, expected {_kinds(kinds)}")
        if shape is not None and obj.shape != shape:
            raise self.fail(f"{full} has shape {list(obj.shape)}, expected {list(shape)}")
        return obj

    def attr(self, obj: h5py.HLObject, key: str, *, kind: str, required: bool = True) -> Any:
        """An attribute checked to be of `kind`: "str", "int", "number", "bool", "json-list" or "json-dict"."""
        where = obj.name if obj.name != "/" else ""
        if key not in obj.attrs:
            if required:
                raise self.fail(f"attribute {where}@{key} is missing")
            return None
        value = obj.attrs[key]
        if isinstance(value, bytes):
            value = value.decode(errors="replace")
        if isinstance(value, np.ndarray) and value.shape == ():
            value = value[()]
        words, accepts = ATTR_KINDS[kind]
        shown = _show(value)
        if kind.startswith("json-"):
            try:
                value = json.loads(value) if isinstance(value, str) else None
            except ValueError:
                value = None
        if not accepts(value):
            raise self.fail(f"attribute {where}@{key} is {shown}, expected {words}")
        return value

    def layout(self, group: h5py.Group) -> int:
        """Check the per-tensor table in `group` and return the parameter count it describes."""
        table = self.dataset("layout", group, kinds="V")
        if table.ndim != 1 or not {"name", "shape", "offset", "numel"} <= set(table.dtype.names or ()):
            raise self.fail(f"{table.name} is not a table of (name, shape, offset, numel)")
        total = 0
        for row in table[()]:
            text = row["shape"].decode() if isinstance(row["shape"], bytes) else str(row["shape"])
            try:
                dims = [int(s) for s in text.split(",")] if text else []
            except ValueError:
                raise self.fail(f"{table.name} has a tensor shape {text!r} that is not numbers") from None
            if int(row["offset"]) != total or int(np.prod(dims)) != int(row["numel"]) or min(dims, default=1) < 0:
                raise self.fail(f"{table.name} is inconsistent (offsets, shapes and sizes do not add up)")
            total += int(row["numel"])
        return total

    def arrays(self, group: h5py.Group, spec: dict[str, tuple[str | int, ...]]) -> dict[str, int]:
        """Check the datasets of `group` against named-dimension shapes; return the sizes found."""
        sizes: dict[str, int] = {}
        for key, dims in spec.items():
            name, optional = key.rstrip("?"), key.endswith("?")
            if optional and name not in group:
                continue
            ds = self.dataset(name, group, kinds=NUMERIC + "b")
            if ds.ndim != len(dims):
                raise self.fail(f"{ds.name} has shape {list(ds.shape)}, expected {len(dims)} dimension(s)")
            for dim, size in zip(dims, ds.shape):
                want = dim if isinstance(dim, int) else sizes.setdefault(dim, size)
                if size != want:
                    raise self.fail(
                        f"{ds.name} has shape {list(ds.shape)}, which does not match the other arrays of {group.name}"
                    )
        return sizes


def check_root(path: str | Path, f: h5py.File) -> None:
    """The root attributes every results file carries, with the types the readers rely on."""
    c = FileCheck(path, f)
    c.attr(f, "settings", kind="json-dict", required=False)
    c.attr(f, "complete", kind="bool", required=False)
    for key in ("kind", "model", "checkpoint", "data", "command", "created", "tool_version"):
        c.attr(f, key, kind="str", required=False)


def check_sweep(path: str | Path, f: h5py.File) -> list[str]:
    """A sweep: axis names, coordinates, loss/accuracy/done grids of the same shape, directions of the
    layout's length. Returns the axis names."""
    c = FileCheck(path, f)
    s = c.group("sweep")
    names = c.attr(s, "axes", kind="json-list")
    if not 1 <= len(names) <= 2 or not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
        raise c.fail(f"attribute /sweep@axes is {names!r}, expected one or two axis names")
    coords = c.group("coords", s)
    shape = []
    for name in names:
        ds = c.dataset(name, coords)
        if ds.ndim != 1 or ds.shape[0] < 1 or not np.isfinite(ds[()]).all():
            raise c.fail(f"{ds.name} is not a list of finite coordinates")
        shape.append(ds.shape[0])
    c.dataset("loss", s, kinds="f", shape=tuple(shape))
    if "accuracy" in s:
        c.dataset("accuracy", s, kinds="f", shape=tuple(shape))
    c.dataset("done", s, kinds="b", shape=tuple(shape))
    axes = c.group("axes")
    size = c.layout(axes)
    for name in names:
        c.dataset(name, axes, kinds=_vector_kinds(axes.get(name)), shape=(size,))
    if "data_sets" in f:  # the grid on other data sets (sweep --eval-data): one grid per named set
        g = c.group("data_sets")
        sets = c.attr(g, "names", kind="json-list")
        if not sets or not all(isinstance(n, str) and n for n in sets):
            raise c.fail(f"attribute /data_sets@names is {sets!r}, expected data set names")
        c.dataset("loss", g, kinds="f", shape=(len(sets), *shape))
        if "accuracy" in g:
            c.dataset("accuracy", g, kinds="f", shape=(len(sets), *shape))
    return names


def _vector_kinds(ds: object) -> str:
    """Stored vectors are floats, or bfloat16's bits (uint16) where their stored_as attribute says so."""
    return "fu" if isinstance(ds, h5py.Dataset) and is_bfloat16(ds) else "f"


def check_curvature(path: str | Path, f: h5py.File) -> None:
    """The /hessian group: the model's block (and each layer's) with consistent shapes."""
    c = FileCheck(path, f)
    h = c.group("hessian")
    c.attr(h, "curvature", kind="str", required=False)
    size = c.layout(h) if "layout" in h else None
    _check_block(c, h, size)
    if "layers" in h:
        layers = c.group("layers", h)
        order = c.attr(layers, "order", kind="json-list", required=False) or list(layers)
        for name in order:
            block = c.group(str(name).replace("/", "|"), layers)
            _check_block(c, block, None)


def _check_block(c: FileCheck, g: h5py.Group, size: int | None) -> None:
    c.attr(g, "tensors", kind="json-list", required=False)
    for key in ("operator", "seconds"):
        c.attr(g, key, kind="json-dict", required=False)
    c.attr(g, "size", kind="int", required=False)
    if "eigenvalues" in g or "eigenvectors" in g:
        k = c.dataset("eigenvalues", g, kinds="f")
        if k.ndim != 1:
            raise c.fail(f"{k.name} has shape {list(k.shape)}, expected one dimension")
        c.dataset("residuals", g, kinds="f", shape=k.shape)
        c.dataset("converged", g, kinds="b", shape=k.shape)
        if "eigenvectors" in g:
            v = c.dataset("eigenvectors", g, kinds=_vector_kinds(g.get("eigenvectors")))
            width = size if size is not None and g.name == "/hessian" else (v.shape[1] if v.ndim == 2 else -1)
            if v.shape != (k.shape[0], width):
                raise c.fail(f"{v.name} has shape {list(v.shape)}, expected [{k.shape[0]}, parameters]")
    if "trace" in g:
        t = c.dataset("trace", g, kinds="f", shape=())
        c.attr(t, "std_error", kind="number", required=False)
    if "lanczos" in g:
        lz = c.group("lanczos", g)
        a = c.dataset("alpha", lz, kinds="f")
        if a.ndim != 2 or a.shape[1] < 1:
            raise c.fail(f"{a.name} has shape {list(a.shape)}, expected [probes, steps]")
        c.dataset("beta", lz, kinds="f", shape=(a.shape[0], a.shape[1] - 1))
    if "density" in g:
        d = c.group("density", g)
        grid = c.dataset("grid", d, kinds="f")
        if grid.ndim != 1:
            raise c.fail(f"{grid.name} has shape {list(grid.shape)}, expected one dimension")
        c.dataset("values", d, kinds="f", shape=grid.shape)
        per = c.dataset("per_probe", d, kinds="f")
        if per.ndim != 2 or per.shape[1] != grid.shape[0]:
            raise c.fail(f"{per.name} has shape {list(per.shape)}, expected [probes, {grid.shape[0]}]")
        c.attr(d, "sigma", kind="number")


def check_group(path: str | Path, f: h5py.File, name: str) -> None:
    """An analysis group (/roughness, /path, ...): its headline numbers' types and its arrays' shapes."""
    c = FileCheck(path, f)
    g = c.group(name)
    for key in GROUP_NUMBERS.get(name, ()):
        c.attr(g, key, kind="number", required=False)
    c.arrays(g, GROUP_ARRAYS.get(name, {}))


def _name(parent: h5py.Group, name: str) -> str:
    return f"{parent.name.rstrip('/')}/{name}"


def _kinds(kinds: str) -> str:
    words = {"f": "floats", "i": "integers", "u": "integers", "b": "booleans", "V": "a table"}
    return " or ".join(dict.fromkeys(words[k] for k in kinds))


def _show(value: Any) -> str:
    text = repr(value.tolist() if isinstance(value, np.ndarray) else value)
    return text if len(text) <= 40 else text[:37] + "..."
