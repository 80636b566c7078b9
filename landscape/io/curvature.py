"""The /hessian group of a results file: write a curvature run, read it back for figures and axes.

Layout (DESIGN.md):
  /                         root attrs as for sweeps (format, format_version, provenance, command,
                            created, settings JSON, kind="hessian", complete)
  /hessian                  attrs: curvature, method, products per gradient, matvecs, timings (JSON)
  /hessian/layout           per-tensor table (name, shape, offset, numel) to unflatten eigenvectors
  /hessian/eigenvalues      [k] float64; attrs which, tol, iterations, matvecs
  /hessian/residuals        [k] float64  ||H v - lambda v||, never below eigenvalues' attr residual_floor
                            (100 eps |lambda_max| of the products' dtype: where it equals it, the floor)
  /hessian/converged        [k] bool
  /hessian/eigenvectors     [k, P] (optional; float32 unless the run was float64)
  /hessian/trace            scalar float64; attrs std_error, matvecs, sketch, probes
  /hessian/lanczos/alpha    [n_v, m]; /hessian/lanczos/beta [n_v, m-1] (NaN after an early breakdown);
                            attrs matvecs, seed, probes, reorthogonalized (False: three-term recurrence only)
  /hessian/density/grid, values, per_probe   attrs sigma, rank, rank_std_error, rank_threshold, outliers,
                            outliers_std_error, outliers_ritz, bulk_edge (landscape.curvature.density.SpectrumCounts)
  /hessian/layers/<module>/ the same datasets for one module's parameter block; attrs tensors, size
The file is written to OUTPUT.partial and renamed, so no half-written file is left behind.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

from landscape.errors import LandscapeError
from landscape.io.h5file import write_atomically
from landscape.io.results import _plain, open_results, read_layout, write_layout, write_root_attrs
from landscape.io.schema import check_curvature
from landscape.io.vectors import from_stored, to_stored
from landscape.params import Layout

if TYPE_CHECKING:
    import torch


def _write_block(g: h5py.Group, block: Any, vector_dtype: torch.dtype) -> None:
    """One BlockResult (landscape.curvature.analysis) into group g."""
    g.attrs["tensors"] = json.dumps(list(block.names))
    g.attrs["size"] = int(block.size)
    g.attrs["operator"] = json.dumps(block.operator, default=str)
    g.attrs["seconds"] = json.dumps(block.seconds)
    eig = block.eigen
    if eig is not None:
        ds = g.create_dataset("eigenvalues", data=np.asarray(eig.eigenvalues, dtype=np.float64))
        ds.attrs.update({"which": eig.which, "tol": eig.tol, "iterations": eig.iterations, "matvecs": eig.matvecs,
                         "residual_floor": eig.floor})  # fmt: skip
        g.create_dataset("residuals", data=np.asarray(eig.residuals, dtype=np.float64))
        g.create_dataset("converged", data=np.asarray(eig.converged, dtype=bool))
        if eig.eigenvectors is not None:
            data, how = to_stored(eig.eigenvectors.detach().cpu().to(vector_dtype))
            g.create_dataset("eigenvectors", data=data).attrs.update(how)
    if block.trace is not None:
        t = block.trace
        ds = g.create_dataset("trace", data=np.float64(t.value))
        ds.attrs.update(
            {
                "std_error": t.std_error,
                "matvecs": t.matvecs,
                "sketch": t.sketch,
                "probes": t.probes,
                "exact_part": t.exact_part,
                "estimator": t.method,
            }
        )
    if block.lanczos is not None:
        lz = g.create_group("lanczos")
        lz.create_dataset("alpha", data=block.lanczos.alpha)
        lz.create_dataset("beta", data=block.lanczos.beta)
        lz.attrs.update(
            {
                "matvecs": block.lanczos.matvecs,
                "seed": block.lanczos.seed,
                "probes": block.lanczos.alpha.shape[0],
                "reorthogonalized": block.lanczos.reorthogonalized,
            }
        )
    if block.density is not None:
        d = block.density
        dg = g.create_group("density")
        dg.create_dataset("grid", data=d.grid)
        dg.create_dataset("values", data=d.values)
        dg.create_dataset("per_probe", data=d.per_probe)
        dg.attrs.update({"sigma": d.sigma, "estimator": "stochastic Lanczos quadrature (Ghorbani et al. 2019)"})
        if d.counts is not None:  # numerical rank and outliers beyond the bulk, each with its standard error
            dg.attrs.update(d.counts.as_attrs())


def write_curvature(
    path: str | Path,
    result: Any,
    *,
    attrs: Mapping[str, Any],
    settings: Mapping[str, Any],
    layout: Layout,
    vector_dtype: torch.dtype,
) -> Path:
    """Write a CurvatureResult (landscape.curvature.analysis) as a new results file at `path` (atomically),
    its eigenvectors in `vector_dtype` (float32, float64 or bfloat16: landscape.io.vectors)."""
    path = Path(path)
    with write_atomically(path) as f:
        write_root_attrs(f, attrs, settings, complete=True)
        h = f.create_group("hessian")
        h.attrs["curvature"] = result.settings.curvature
        write_layout(h, layout)
        _write_block(h, result.model, vector_dtype)
        if result.layers:
            lg = h.create_group("layers")
            lg.attrs["order"] = json.dumps(list(result.layers))
            for name, block in result.layers.items():
                _write_block(lg.create_group(name.replace("/", "|")), block, vector_dtype)
    return path


def _read_block(g: h5py.Group) -> dict[str, Any]:
    out: dict[str, Any] = {
        "tensors": json.loads(g.attrs.get("tensors", "[]")),
        "size": int(g.attrs.get("size", 0)),
        "operator": json.loads(g.attrs.get("operator", "{}")),
        "seconds": json.loads(g.attrs.get("seconds", "{}")),
        "eigenvalues": None,
        "residuals": None,
        "converged": None,
        "eigen_attrs": {},
        "eigenvectors": None,
        "trace": None,
        "lanczos": None,
        "density": None,
    }
    if "eigenvalues" in g:
        out["eigenvalues"] = g["eigenvalues"][()]
        out["eigen_attrs"] = {k: _plain(v) for k, v in g["eigenvalues"].attrs.items()}
        out["residuals"] = g["residuals"][()]
        out["converged"] = g["converged"][()]
    if "eigenvectors" in g:
        out["eigenvectors"] = from_stored(g["eigenvectors"])
    if "trace" in g:
        ds = g["trace"]
        out["trace"] = {"value": float(ds[()]), **{k: _plain(v) for k, v in ds.attrs.items()}}
    if "lanczos" in g:
        out["lanczos"] = {
            "alpha": g["lanczos/alpha"][()],
            "beta": g["lanczos/beta"][()],
            **{k: _plain(v) for k, v in g["lanczos"].attrs.items()},
        }
    if "density" in g:
        d = g["density"]
        out["density"] = {
            "grid": d["grid"][()],
            "values": d["values"][()],
            "per_probe": d["per_probe"][()],
            "sigma": float(d.attrs["sigma"]),
        }
    return out


def read_curvature(path: str | Path) -> dict[str, Any]:
    """Everything a figure, summary or axis needs from a curvature run: a dict of numpy arrays and attrs.

    Keys: attrs (root), curvature, layout, and the model's block (eigenvalues, residuals, converged,
    eigenvectors or None, trace dict or None, lanczos dict or None, density dict or None, operator),
    plus layers: {module: the same keys}.
    """
    with open_results(path) as f:
        if "hessian" not in f:
            raise LandscapeError(f"{path}: holds no curvature results (write one with `landscape hessian`)")
        check_curvature(path, f)
        h = f["hessian"]
        out = _read_block(h)
        out["attrs"] = {k: _plain(v) for k, v in f.attrs.items()}
        out["curvature"] = str(_plain(h.attrs.get("curvature", "hessian")))
        out["layout"] = read_layout(h) if "layout" in h else None
        layers: dict[str, Any] = {}
        if "layers" in h:
            order = json.loads(h["layers"].attrs.get("order", "[]")) or list(h["layers"])
            for name in order:
                layers[name] = _read_block(h["layers"][name.replace("/", "|")])
        out["layers"] = layers
    return out
