"""Export a sweep for other tools: a VTK grid for ParaView (written by meshio) and CSV for spreadsheets.

VTK: the grid's points are (x, y, height) with the loss as the height (clipped to `vmax` when given,
so one diverged corner does not dwarf the rest), joined by quadrilateral cells; a cell touching a
point without a value is left out, so NaN regions are holes. Every stored value also travels as
point data (`loss`, `accuracy`, `done`), NaN kept. A 1D line becomes a polyline of (x, loss, 0).
meshio writes `.vtu` (XML, what ParaView prefers) and `.vtk` (legacy). `.vts` is a VTK structured
grid written by pyevtk (meshio has no structured writer): the same points and point data on the
nx x ny grid, where a point without a value cannot be left out: it keeps its (x, y), sits at the
highest finite height, and carries `valid = 0` (ParaView's Threshold on `valid` removes it).
CSV: one row per grid point, i over x then j over y (the order of loss[i, j]); empty cells where a
value is NaN.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from landscape.errors import LandscapeError
from landscape.io.atomic import replace_whole

VTK_SUFFIXES = (".vtu", ".vtk", ".vts")
FORMATS = ("vtk", "csv")


def format_for(path: Path, fmt: str | None) -> str:
    """The export format: --format when given, else from the output's suffix."""
    if fmt is None:
        suffix = path.suffix.lower()
        if suffix == ".csv":
            return "csv"
        if suffix in VTK_SUFFIXES:
            return "vtk"
        raise LandscapeError(f"--output {path}: cannot tell the format from the suffix; give --format vtk or csv")
    if fmt not in FORMATS:
        raise LandscapeError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    return fmt


def _values(sweep: dict[str, Any]) -> dict[str, np.ndarray]:
    done = np.asarray(sweep["done"], dtype=bool)
    out = {"loss": np.where(done, np.asarray(sweep["loss"], dtype=np.float64), np.nan)}
    if sweep.get("accuracy") is not None:
        out["accuracy"] = np.where(done, np.asarray(sweep["accuracy"], dtype=np.float64), np.nan)
    return out


def export_csv(sweep: dict[str, Any], path: str | Path) -> Path:
    """One row per grid point: the coordinates (named after the axes), loss, accuracy, done."""
    path = Path(path)
    names = list(sweep["axes"])
    coords = [np.asarray(sweep["coords"][n], dtype=np.float64) for n in names]
    values = _values(sweep)
    done = np.asarray(sweep["done"], dtype=bool)
    grids = np.meshgrid(*coords, indexing="ij")  # grids[k][i, j] = coords[k][i or j]
    with replace_whole(path, keep_suffix=True) as tmp, tmp.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(names + list(values) + ["done"])
        for idx in np.ndindex(done.shape):
            row = [repr(float(g[idx])) for g in grids]
            row += ["" if not np.isfinite(v[idx]) else repr(float(v[idx])) for v in values.values()]
            row.append("1" if done[idx] else "0")
            w.writerow(row)
    return path


def _point_data(sweep: dict[str, Any], vmax: float | None) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """The VTK point data (loss, accuracy, done, on the grid's shape), the heights (loss clipped to vmax) and where they are finite."""
    data = _values(sweep)
    height = data["loss"] if vmax is None else np.minimum(data["loss"], vmax)
    data["done"] = np.asarray(sweep["done"], dtype=np.float64)
    return data, height, np.isfinite(height)


def vtk_mesh(sweep: dict[str, Any], vmax: float | None = None) -> Any:
    """A meshio.Mesh of the sweep (see the module docstring for its layout)."""
    import meshio

    names = list(sweep["axes"])
    coords = [np.asarray(sweep["coords"][n], dtype=np.float64) for n in names]
    grid_data, height, finite = _point_data(sweep, vmax)
    data = {k: v.reshape(-1) for k, v in grid_data.items()}
    if len(coords) == 1:
        xs = coords[0]
        points = np.stack([xs, np.where(finite, height, 0.0), np.zeros_like(xs)], axis=1)
        seg = [(i, i + 1) for i in range(len(xs) - 1) if finite[i] and finite[i + 1]]
        cells = [("line", np.array(seg, dtype=np.int64).reshape(-1, 2))]
    elif len(coords) == 2:
        xs, ys = coords
        nx, ny = len(xs), len(ys)
        X, Y = np.meshgrid(xs, ys, indexing="ij")  # point id of (i, j) is i * ny + j, as loss.reshape(-1)
        points = np.stack([X.ravel(), Y.ravel(), np.where(finite, height, 0.0).ravel()], axis=1)
        ok = finite.ravel()
        quads = []
        for i in range(nx - 1):
            for j in range(ny - 1):
                q = (i * ny + j, (i + 1) * ny + j, (i + 1) * ny + j + 1, i * ny + j + 1)
                if all(ok[p] for p in q):
                    quads.append(q)
        cells = [("quad", np.array(quads, dtype=np.int64).reshape(-1, 4))]
    else:
        raise LandscapeError(f"a {len(coords)}-D sweep: only 1D lines and 2D grids can be exported to VTK")
    return meshio.Mesh(points, cells, point_data=data)


def export_vtk(sweep: dict[str, Any], path: str | Path, vmax: float | None = None) -> Path:
    """Write the sweep as a VTK unstructured grid of quads (.vtu or legacy .vtk, meshio) or a structured grid (.vts)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in VTK_SUFFIXES:
        raise LandscapeError(f"--output {path}: a VTK file needs the suffix .vtu, .vts or .vtk")
    if suffix == ".vts":
        return export_vts(sweep, path, vmax)
    mesh = vtk_mesh(sweep, vmax)
    with replace_whole(path, keep_suffix=True) as tmp:
        mesh.write(tmp, file_format=suffix[1:], binary=True)
    return path


def export_vts(sweep: dict[str, Any], path: str | Path, vmax: float | None = None) -> Path:
    """Write a 2D sweep as a VTK structured grid (.vts) with pyevtk (see the module docstring)."""
    from pyevtk.hl import gridToVTK

    path = Path(path)
    names = list(sweep["axes"])
    if len(names) != 2:
        raise LandscapeError(f"--output {path}: a .vts structured grid needs a 2D sweep; use .vtu for a 1D line")
    xs, ys = (np.asarray(sweep["coords"][n], dtype=np.float64) for n in names)
    data, height, finite = _point_data(sweep, vmax)
    top = float(height[finite].max()) if finite.any() else 0.0
    X, Y = np.meshgrid(xs, ys, indexing="ij")
    Z = np.where(finite, height, top)
    data["valid"] = finite.astype(np.float64)
    as3d = lambda a: np.ascontiguousarray(np.asarray(a, dtype=np.float64)[:, :, None])  # noqa: E731
    with replace_whole(path, keep_suffix=True) as tmp:
        gridToVTK(str(tmp.with_suffix("")), as3d(X), as3d(Y), as3d(Z), pointData={k: as3d(v) for k, v in data.items()})
        written = tmp.with_suffix(".vts")
        if written != tmp:  # pyevtk always writes a lower-case .vts suffix
            written.replace(tmp)
    return path
