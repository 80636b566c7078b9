"""The HDF5 results file: one per run, self-describing, written chunk by chunk, resumable.

Layout (docs/architecture.md and DESIGN.md):
  /                 attrs: format, format_version, tool_version, created, command, torch_version,
                           device, dtype, seed, checkpoint(+_sha256), model, data(+_sha256), loss,
                           settings (JSON of everything that fixes the numbers), complete
  /axes/<name>      [P] flat direction; attrs kind, normalization, ignore, seed, source
  /axes/layout      table (name, shape, offset, numel) to unflatten a direction
  /sweep/coords/<k> [n_k] coordinates; /sweep/loss, /sweep/accuracy [n_x(, n_y)]; /sweep/done
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

from landscape import __version__
from landscape.errors import LandscapeError, RunFailure, one_line
from landscape.io.atomic import os_reason
from landscape.io.h5file import open_h5, rewrite_atomically, write_atomically
from landscape.io.schema import DAMAGED, check_root, check_sweep
from landscape.io.vectors import STORED_AS, from_stored, is_bfloat16, to_stored
from landscape.params import Layout
from landscape.pick import Pick

if TYPE_CHECKING:
    import torch

    from landscape.axes import Axes

FORMAT = "landscape-results"
FORMAT_VERSION = 1


def check_ours(path: str | Path) -> None:
    """Raise a one-line error unless `path` is a readable results file of a version we understand."""
    with open_results(path):
        pass


@contextmanager
def open_results(path: str | Path) -> Iterator[h5py.File]:
    """A results file open for reading, its root checked (format, version, the attributes every file
    carries); an error while reading it, such as a truncated dataset, becomes one line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise LandscapeError(f"{path}: file not found")
    try:
        f = open_h5(path, "r")
    except OSError as exc:
        raise LandscapeError(f"{path}: not a readable HDF5 file (corrupt or another format): {one_line(exc)}") from exc
    with f:
        try:
            _check_format(path, f)
            check_root(path, f)
            yield f
        except LandscapeError:
            raise
        except (OSError, RuntimeError, KeyError, ValueError, TypeError, IndexError, AttributeError) as exc:
            raise LandscapeError(f"{path}: cannot be read ({one_line(exc)}); {DAMAGED}") from exc


def _check_format(path: Path, f: h5py.File) -> None:
    fmt = _plain(f.attrs.get("format"))
    version = _plain(f.attrs.get("format_version"))
    if fmt != FORMAT:
        raise LandscapeError(f"{path}: an HDF5 file, but not a landscape results file (no format={FORMAT!r} attribute)")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise LandscapeError(f"{path}: attribute format_version is {version!r}, expected a version number")
    if version > FORMAT_VERSION:
        raise LandscapeError(
            f"{path}: results format version {version} is newer than this landscape ({__version__}) reads "
            f"(version {FORMAT_VERSION}); upgrade landscape"
        )


def write_root_attrs(f: h5py.File, attrs: Mapping[str, Any], settings: Mapping[str, Any], *, complete: bool) -> None:
    """The attributes on `/` every results file carries: format, versions, provenance, settings JSON, complete."""
    f.attrs["format"] = FORMAT
    f.attrs["format_version"] = FORMAT_VERSION
    f.attrs["tool_version"] = __version__
    for key, value in attrs.items():
        f.attrs[key] = _attr(value)
    f.attrs["settings"] = json.dumps(dict(settings), sort_keys=True, default=str)
    f.attrs["complete"] = complete


def _attr(value: Any) -> Any:
    """An HDF5-storable attribute: None as "", containers as JSON, str subclasses as plain str."""
    if value is None:
        return ""
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value)
    if isinstance(value, str):
        return str(value)
    return value


def write_layout(group: h5py.Group, layout: Layout) -> None:
    """Store the per-tensor table that maps a flat direction back to named tensors."""
    dt = np.dtype([("name", h5py.string_dtype()), ("shape", h5py.string_dtype()), ("offset", "i8"), ("numel", "i8")])
    table = np.array(
        [
            (name, ",".join(map(str, shape)), off, n)
            for name, shape, off, n in zip(layout.names, layout.shapes, layout.offsets, layout.numels)
        ],
        dtype=dt,
    )
    group.create_dataset("layout", data=table)


def read_layout(group: h5py.Group) -> Layout:
    table = group["layout"][()]
    names = tuple(row["name"].decode() if isinstance(row["name"], bytes) else row["name"] for row in table)
    shapes = []
    for row in table:
        text = row["shape"].decode() if isinstance(row["shape"], bytes) else row["shape"]
        shapes.append(tuple(int(s) for s in text.split(",")) if text else ())
    return Layout(names, tuple(shapes))


def difference(key: str, stored: Any, wanted: Any) -> str:
    """The first setting that differs, named down to its innermost key, both values shortened: a
    grid's coordinates are its size and ends (the whole lists ran to hundreds of numbers)."""
    if isinstance(stored, dict) and isinstance(wanted, dict):
        inner = next(k for k in sorted(set(stored) | set(wanted)) if stored.get(k) != wanted.get(k))
        return difference(f"{key}.{inner}", stored.get(inner), wanted.get(inner))
    if key.endswith("_sha256") and isinstance(stored, str) and isinstance(wanted, str):
        what = key.removesuffix("_sha256").replace("_", " ")
        return f"the {what} changed: sha256 {stored[:12] or 'none'}... in the file, {wanted[:12] or 'none'}... now"
    return f"{key}: file has {_short(stored)}, this run has {_short(wanted)}"


def _short(value: Any) -> str:
    if isinstance(value, list) and len(value) > 4 and all(isinstance(v, (int, float)) for v in value):
        return f"{len(value)} values from {value[0]:g} to {value[-1]:g}"
    text = "nothing" if value is None else repr(value)
    return text if len(text) <= 72 else f"{text[:40]}...{text[-20:]}"


class SweepFile:
    """A sweep's results file, filled chunk by chunk so a killed run leaves a readable, resumable file.

    The file is written whole once (`create`); each chunk then overwrites the bytes of the loss,
    accuracy and done grids where the file holds them, by plain writes that need no new disk space
    (HDF5 writing in place could leave the file unreadable when the disk filled in the middle of
    it); `finish` rewrites the file whole, so a failure there leaves it resumable.
    """

    def __init__(self, path: Path, coords: list[np.ndarray], grids: dict[str, np.ndarray]):
        self.path = path
        self.coords = coords
        self.grids = grids  # loss, done and perhaps accuracy: what the file holds
        self._offsets = _grid_offsets(path, grids)
        self._strategy_at, self._strategy_room, slot = _strategy_slot(path)
        self.picked = Pick.parse(slot)

    def chose(self, pick: Pick) -> None:
        """Keep the strategy the probe picked (with its batch size and points per call) in the file's
        slot for it, so that --resume runs the same (another one's values differ in the last digits:
        a resumed run mixed them)."""
        if self._strategy_at is None or pick == self.picked:
            return
        text = pick.text(self._strategy_room).encode().ljust(self._strategy_room, b"\0")
        try:
            with open(self.path, "r+b") as out:
                out.seek(self._strategy_at)
                out.write(text)
        except OSError as exc:
            raise RunFailure(f"cannot write {self.path}: {os_reason(exc)}; {self._kept()}") from exc
        self.picked = pick

    @property
    def done(self) -> np.ndarray:
        return self.grids["done"]

    @classmethod
    def create(
        cls,
        path: str | Path,
        *,
        attrs: Mapping[str, Any],
        settings: Mapping[str, Any],
        axes: Mapping[str, tuple[torch.Tensor | np.ndarray, Mapping[str, Any]]],
        layout: Layout,
        coords: Mapping[str, np.ndarray],
        has_accuracy: bool,
        then: Callable[[h5py.File], None] | None = None,
    ) -> SweepFile:
        """Write a new file with every point marked not done (loss NaN) and complete=False; `then(f)`
        writes more in the same single write (a finished sweep's values, its groups)."""
        path = Path(path)
        shape = tuple(len(c) for c in coords.values())
        grids = {"loss": np.full(shape, np.nan)}
        if has_accuracy:
            grids["accuracy"] = np.full(shape, np.nan)
        grids["done"] = np.zeros(shape, dtype=bool)
        with write_atomically(path) as f:
            write_root_attrs(f, attrs, settings, complete=False)
            g = f.create_group("axes")
            for name, (vec, vattrs) in axes.items():
                data, how = to_stored(vec)  # as evaluated: float32, float64, or bfloat16's bits
                ds = g.create_dataset(name, data=data)
                for key, value in {**vattrs, **how}.items():
                    ds.attrs[key] = _attr(value)
            write_layout(g, layout)
            sweep = f.create_group("sweep")
            sweep.attrs["axes"] = json.dumps(list(coords))
            cg = sweep.create_group("coords")
            for name, c in coords.items():
                cg.create_dataset(name, data=np.asarray(c, dtype=np.float64))
            for name, grid in grids.items():
                sweep.create_dataset(name, data=grid)
            sweep.create_dataset(STRATEGY_SLOT, data=np.zeros(STRATEGY_BYTES, dtype=np.uint8))
            if then is not None:
                then(f)
                grids = {name: sweep[name][()] for name in grids}
        return cls(path, [np.asarray(c, dtype=np.float64) for c in coords.values()], grids)

    @classmethod
    def resume(cls, path: str | Path, settings: Mapping[str, Any]) -> SweepFile:
        """Reopen a file made with exactly these settings; anything else is refused with the first difference."""
        path = Path(path)
        with open_results(path) as f:
            if "sweep" not in f:
                raise LandscapeError(f"--resume {path}: the file holds no sweep")
            names = check_sweep(path, f)
            stored = json.loads(f.attrs["settings"])
            wanted = json.loads(json.dumps(dict(settings), sort_keys=True))
            for key in sorted(set(stored) | set(wanted)):
                if key == "code_sha256" and stored.get(key) != wanted.get(key):
                    raise LandscapeError(f"--resume {path}: {changed_code(stored.get(key), wanted.get(key))}")
                if stored.get(key) != wanted.get(key):
                    raise LandscapeError(
                        f"--resume {path}: made with other settings ({difference(key, stored.get(key), wanted.get(key))})"
                    )
            coords = [f["sweep/coords"][n][()] for n in names]
            grids = {n: f["sweep"][n][()] for n in ("loss", "accuracy", "done") if n in f["sweep"]}
        return cls(path, coords, grids)

    def write(self, flat_index: np.ndarray, loss: np.ndarray, accuracy: np.ndarray | None) -> None:
        """Store values at flat grid indices and mark them done: the values first, the done mask last,
        so that a kill in between leaves no point marked done without its value."""
        grids = {name: grid.copy() for name, grid in self.grids.items()}
        for name, values in (("loss", loss), ("accuracy", accuracy)):
            if values is not None and name in grids:
                grids[name].reshape(-1)[flat_index] = values
        grids["done"].reshape(-1)[flat_index] = True
        try:
            with open(self.path, "r+b") as out:
                for name, grid in grids.items():
                    out.seek(self._offsets[name])
                    out.write(grid.tobytes())
                    out.flush()
        except OSError as exc:
            raise RunFailure(f"cannot write {self.path}: {os_reason(exc)}; {self._kept()}") from exc
        self.grids = grids

    def _kept(self) -> str:
        return (
            f"the {int(self.done.sum())} of {self.done.size} points done are kept "
            "(run the same command with --resume to go on)"
        )

    def values(self) -> tuple[np.ndarray, np.ndarray | None]:
        """The loss and accuracy grids as the file holds them (NaN where not done)."""
        return self.grids["loss"].copy(), self.grids["accuracy"].copy() if "accuracy" in self.grids else None

    def finish(self, attrs: Mapping[str, Any]) -> None:
        """Record how the sweep ran and mark the file complete when every point is done."""
        try:
            with rewrite_atomically(self.path) as f:
                _finished(f, attrs, self.done)
        except RunFailure as exc:
            raise RunFailure(f"{exc}; {self._kept()}") from exc


def fill_sweep(
    f: h5py.File,
    loss: np.ndarray,
    accuracy: np.ndarray | None,
    done: np.ndarray,
    pick: Pick | None,
    attrs: Mapping[str, Any],
) -> None:
    """A new file's grids, strategy slot and /sweep attributes as a finished run leaves them (for
    `SweepFile.create(then=...)`: a result saved from memory is written once)."""
    f["sweep/loss"][...] = loss
    if accuracy is not None and "accuracy" in f["sweep"]:
        f["sweep/accuracy"][...] = accuracy
    f["sweep/done"][...] = done
    if pick is not None:
        f["sweep"][STRATEGY_SLOT][...] = np.frombuffer(
            pick.text(STRATEGY_BYTES).encode().ljust(STRATEGY_BYTES, b"\0"), np.uint8
        )
    _finished(f, attrs, done)


def _finished(f: h5py.File, attrs: Mapping[str, Any], done: np.ndarray) -> None:
    for key, value in attrs.items():
        f["sweep"].attrs[key] = _attr(value)
    f.attrs["complete"] = bool(done.all())


STRATEGY_SLOT = "strategy_in_use"  # /sweep/strategy_in_use: the probe's pick as `Pick.text`, NUL-padded ASCII
STRATEGY_BYTES = 256  # files before the convolution layouts have 32: read and written at their own size


def changed_code(stored: str | None, wanted: str | None) -> str:
    """Which of the user's source files differ from the ones a file was made with, in words."""
    before, now = json.loads(stored or "{}"), json.loads(wanted or "{}")
    changed = [k for k in sorted(set(before) | set(now)) if before.get(k) != now.get(k)]
    return f"made with other code: {', '.join(changed)} changed since (its sha256 differs); start over with --force"


def _strategy_slot(path: Path) -> tuple[int | None, int, str | None]:
    """Where the strategy slot's bytes are, how many, and the strategy it names (files of older
    versions, or edited ones, may have no usable slot: then nothing is kept and a resume probes again)."""
    with open_h5(path, "r") as f:
        ds = f["sweep"].get(STRATEGY_SLOT)
        if not isinstance(ds, h5py.Dataset) or ds.ndim != 1 or not 32 <= ds.shape[0] <= 4096 or ds.dtype != np.uint8:
            return None, 0, None
        offset = ds.id.get_offset()
        text = bytes(ds[()]).rstrip(b"\0").decode(errors="replace")
    return offset, ds.shape[0], text or None


def _grid_offsets(path: Path, grids: Mapping[str, np.ndarray]) -> dict[str, int]:
    """Where in the file the bytes of each /sweep grid start, checked to be stored whole and
    uncompressed in the dtype of `grids` (as `SweepFile.create` stores them)."""
    offsets = {}
    with open_h5(path, "r") as f:
        for name, grid in grids.items():
            ds = f["sweep"][name]
            offset = ds.id.get_offset()
            if offset is None or ds.chunks is not None or ds.dtype != grid.dtype or ds.shape != grid.shape:
                raise LandscapeError(
                    f"{path}: /sweep/{name} is not stored as one block of {grid.dtype} "
                    "(the file was rewritten by another tool); it cannot be resumed"
                )
            offsets[name] = offset
    return offsets


def read_axes(path: str | Path) -> Axes:
    """The directions a sweep stored (as stored: float32 or float64; bfloat16 widened to float32), with each
    axis's attributes and the parameter layout."""
    import torch  # here, not at the top: `info`, `plot`, `metrics` and `report` run without torch

    from landscape.axes import AXES_SETTING_KEYS, Axes

    with open_results(path) as f:
        if "sweep" not in f:
            raise LandscapeError(f"{path}: holds no sweep")
        names = check_sweep(path, f)
        vectors = np.stack([from_stored(f["axes"][n]) for n in names])
        attrs = tuple({k: _plain(v) for k, v in f["axes"][n].attrs.items() if k != STORED_AS} for n in names)
        made = json.loads(_plain(f.attrs.get("settings", "{}")) or "{}")  # how the axes were made, as the run kept it
        settings = {k: made[k] for k in AXES_SETTING_KEYS if k in made}
        return Axes(torch.from_numpy(vectors), attrs, read_layout(f["axes"]), settings)


def read_sweep(path: str | Path) -> dict[str, Any]:
    """Everything a figure or summary needs from a sweep: coords, loss, accuracy, done, axis attrs, root attrs."""
    with open_results(path) as f:
        if "sweep" not in f:
            raise LandscapeError(f"{path}: holds no sweep")
        names = check_sweep(path, f)
        s = f["sweep"]
        return {
            "attrs": {k: _plain(v) for k, v in f.attrs.items()},
            "axes": names,
            "coords": {n: s["coords"][n][()] for n in names},
            "axis_attrs": {n: {k: _plain(v) for k, v in f["axes"][n].attrs.items()} for n in names if n in f["axes"]},
            "loss": s["loss"][()],
            "accuracy": s["accuracy"][()] if "accuracy" in s else None,
            "done": s["done"][()],
            "sweep_attrs": {k: _plain(v) for k, v in s.attrs.items()},
        }


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def describe(path: str | Path) -> dict[str, Any]:
    """A JSON-able summary of any results file: root attributes and every dataset's shape and attributes."""
    out: dict[str, Any] = {"file": str(path), "attrs": {}, "datasets": {}}
    with open_results(path) as f:
        out["attrs"] = {k: _plain(v) for k, v in f.attrs.items()}

        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Dataset):
                out["datasets"][name] = {
                    "shape": list(obj.shape),
                    "dtype": "bfloat16 (as uint16)" if is_bfloat16(obj) else str(obj.dtype),
                    "attrs": {k: _plain(v) for k, v in obj.attrs.items()},
                }

        f.visititems(visit)
    return out
