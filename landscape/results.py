"""Typed, frozen results of every command, as the library returns them and `load` reads them back.

Each result holds numpy arrays, its settings (the JSON object that fixes its numbers) and its
provenance (the results file's root attributes), and `save(path)` writes exactly the file the CLI
writes for the same run: the CLI itself saves through these classes, or, for a sweep, through a
results-file sink of the same layout. `plot()` draws a figure from the result alone.
"""

from __future__ import annotations

import datetime as dt
import json
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import h5py
import numpy as np
import torch

from landscape.axes import Axes
from landscape.curvature.analysis import BlockResult, CurvatureSettings
from landscape.curvature.density import LanczosRuns, density_from_lanczos
from landscape.curvature.lanczos import Eigenpairs
from landscape.curvature.trace import TraceEstimate
from landscape.io.analysis_store import Group, read_group, read_root, write_results
from landscape.io.curvature import read_curvature, write_curvature
from landscape.io.results import SweepFile, check_ours, fill_sweep, read_axes, read_sweep
from landscape.params import Layout
from landscape.strategies import Pick

ROOT_KEYS = ("format", "format_version", "tool_version", "settings", "complete", "kind")
"""Root attributes every file carries that are not provenance."""


def stamp(provenance: Mapping[str, Any], command: str = "") -> dict[str, Any]:
    """Provenance with the command line and the time of the run, as a results file records them."""
    created = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    return {**provenance, "command": command, "created": created}


def _store_dtype(provenance: Mapping[str, Any], store_dtype: str | None = None) -> torch.dtype:
    """Stored vectors' dtype: `store_dtype` when given, else float64 for float64 runs and float32 otherwise."""
    import torch

    if store_dtype is not None:
        return {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}[store_dtype]
    return torch.float64 if provenance.get("dtype") == "float64" else torch.float32


def _provenance_of(root: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in root.items() if k not in ROOT_KEYS}


def _figure_from_file(result: Any, draw: Any) -> Any:
    """Draw a figure from the file the result would write (figures come from results files alone)."""
    with tempfile.TemporaryDirectory() as folder:
        path = result.save(Path(folder) / f"{result.kind}.h5")
        return draw(path)


# --------------------------------------------------------------------------- sweeps


@dataclass(frozen=True)
class SweepResult:
    """The loss (and accuracy) on a 1D line or 2D grid: `loss[i, j]` at (`coords[0][i]`, `coords[1][j]`).

    NaN where a point is not done (`done`) or its loss was not finite. `axes` are the directions
    evaluated; `run` says how (strategy, probe timings, seconds). A plane or trajectory also holds
    its own group of numbers (`groups`).
    """

    axes: Axes
    coords: tuple[np.ndarray, ...]
    loss: np.ndarray
    accuracy: np.ndarray | None
    done: np.ndarray
    settings: Mapping[str, Any]
    provenance: Mapping[str, Any]
    run: Mapping[str, Any] = field(default_factory=dict)
    kind: str = "sweep"
    groups: Mapping[str, Group] = field(default_factory=dict)

    def __repr__(self) -> str:  # the numbers a notebook wants at a glance, not every array
        shape = " x ".join(str(len(c)) for c in self.coords)
        finite = self.loss[np.isfinite(self.loss)]
        loss = f"loss {finite.min():.4g} to {finite.max():.4g}" if finite.size else "no finite loss"
        acc = self.accuracy[np.isfinite(self.accuracy)] if self.accuracy is not None else np.zeros(0)
        accuracy = f", accuracy {acc.min():.4g} to {acc.max():.4g}" if acc.size else ""
        strategy = f", strategy {self.run['strategy']}" if self.run.get("strategy") else ""
        done = f"{int(self.done.sum()):,} of {self.done.size:,} points"
        return f"SweepResult({self.kind} {shape}, {done}, {loss}{accuracy}{strategy})"

    @property
    def x(self) -> np.ndarray:
        return self.coords[0]

    @property
    def y(self) -> np.ndarray | None:
        return self.coords[1] if len(self.coords) > 1 else None

    @property
    def complete(self) -> bool:
        return bool(self.done.all())

    def create_file(self, path: str | Path, then: Callable[[h5py.File], None] | None = None) -> SweepFile:
        """A new results file of this sweep's layout with no point done yet (the CLI then fills it;
        `then(f)` writes more in the same write)."""
        return SweepFile.create(
            path,
            attrs={**self.provenance, "kind": self.kind},
            settings=self.settings,
            axes={n: (self.axes.directions[i], self.axes.attrs[i]) for i, n in enumerate(self.axes.names)},
            layout=self.axes.layout,
            coords=dict(zip(self.axes.names, self.coords)),
            has_accuracy=self.accuracy is not None,
            then=then,
        )

    def save(self, path: str | Path) -> Path:
        """Write the results file `landscape sweep` writes for this run (in one write)."""
        from landscape.io.analysis_store import write_group

        pick = None
        if self.run.get("strategy") not in (None, "none"):
            batch, per_call = (int(self.run.get(k) or 0) or None for k in ("batch_size", "points_per_call"))
            pick = Pick(str(self.run["strategy"]), batch, per_call, str(self.run.get("conv_layouts") or ""))

        def values_and_groups(f: h5py.File) -> None:
            fill_sweep(f, self.loss, self.accuracy, self.done, pick, self.run)
            for name, group in self.groups.items():
                write_group(f, name, group)

        return self.create_file(path, then=values_and_groups).path

    def as_dict(self) -> dict[str, Any]:
        """The sweep as `landscape.io.results.read_sweep` gives it (what the figures read)."""
        names = list(self.axes.names)
        return {
            "attrs": {
                **self.provenance,
                "kind": self.kind,
                "settings": json.dumps(dict(self.settings), sort_keys=True, default=str),
                "complete": self.complete,
            },
            "axes": names,
            "coords": dict(zip(names, self.coords)),
            "axis_attrs": {n: dict(a) for n, a in zip(names, self.axes.attrs)},
            "loss": self.loss,
            "accuracy": self.accuracy,
            "done": self.done,
            "sweep_attrs": dict(self.run),
        }

    def plot(
        self, kind: str | None = None, *, backend: str = "matplotlib", metric: str = "loss", **options: Any
    ) -> Any:
        """A figure of the sweep: `kind` line, contour, filled, heatmap, surface or all (default: line
        for 1D, contour for 2D); a matplotlib Figure, or with backend="plotly" a plotly Figure (a list for `all`).
        With other data sets (`eval_data`) every set's grid, side by side. `options`: vmin, vmax, log, levels, title."""
        from landscape.render.common import data_set_views, make_view

        view = make_view(self.as_dict(), metric)
        kind = kind or ("line" if view.dims == 1 else "contour")
        if "data_sets" in self.groups and kind != "all":  # every data set side by side (1D: overlaid)
            views = data_set_views(self.as_dict(), self.groups["data_sets"], metric)
            if backend == "plotly":
                from landscape.render.interactive import compare_figure as plotly_compare

                return plotly_compare(views, kind, **options)
            from landscape.render.static import compare_figure

            return compare_figure(views, kind, **options)
        if backend == "plotly":
            from landscape.render.interactive import plot_figures

            figs = plot_figures(view, kind, **options)
            return figs[0] if len(figs) == 1 else figs
        if backend != "matplotlib":
            from landscape.errors import ArgumentError

            raise ArgumentError("backend", backend, "expected matplotlib or plotly")
        from landscape.render.static import plot_figure

        return plot_figure(view, kind, **options)

    @classmethod
    def read(cls, path: str | Path) -> SweepResult:
        from landscape.io.analysis_store import analysis_groups, sweep_groups

        s = read_sweep(path)
        names = s["axes"]
        axes = read_axes(path)
        root = s["attrs"]
        groups = {g: read_group(path, g) for g in [*analysis_groups(path), *sweep_groups(path)]}
        return cls(
            axes=axes,
            coords=tuple(s["coords"][n] for n in names),
            loss=s["loss"],
            accuracy=s["accuracy"],
            done=s["done"],
            settings=json.loads(root.get("settings", "{}")),
            provenance=_provenance_of(root),
            run=s["sweep_attrs"],
            kind=str(root.get("kind", "sweep")),
            groups=groups,
        )


# --------------------------------------------------------------------------- curvature


@dataclass(frozen=True)
class CurvatureResult:
    """Top eigenpairs with residuals, the trace with its standard error, the spectral density with
    the spread between probes; for the whole model (`model`) and per module (`layers`)."""

    settings: CurvatureSettings
    model: BlockResult
    layers: Mapping[str, BlockResult]
    layout: Layout
    provenance: Mapping[str, Any]
    stored_settings: Mapping[str, Any]
    kind: ClassVar[str] = "hessian"

    def __repr__(self) -> str:  # the estimates with their error bars, not the eigenvectors and every name
        parts = [str(self.settings.curvature), f"{self.model.size:,} parameters"]
        if self.model.eigen is not None:
            values = ", ".join(f"{v:.6g}" for v in self.model.eigen.eigenvalues)
            parts.append(
                f"eigenvalues [{values}] (largest residual {np.max(self.model.eigen.residuals, initial=0):.2g})"
            )
        if self.model.trace is not None:
            parts.append(f"trace {self.model.trace.value:.6g} +- {self.model.trace.std_error:.2g}")
        if self.model.density is not None:
            parts.append("spectral density")
        if self.layers:
            parts.append(f"{len(self.layers)} layers")
        return f"CurvatureResult({', '.join(parts)})"

    @property
    def eigenvalues(self) -> np.ndarray | None:
        return None if self.model.eigen is None else self.model.eigen.eigenvalues

    @property
    def residuals(self) -> np.ndarray | None:
        return None if self.model.eigen is None else self.model.eigen.residuals

    @property
    def lambda_max(self) -> float | None:
        ev = self.eigenvalues
        return float(ev[0]) if ev is not None and ev.size else None

    @property
    def trace(self) -> float | None:
        return None if self.model.trace is None else self.model.trace.value

    @property
    def trace_error(self) -> float | None:
        return None if self.model.trace is None else self.model.trace.std_error

    def save(self, path: str | Path, store_dtype: str | None = None) -> Path:
        """Write the results file `landscape hessian` writes for this run; eigenvectors in `store_dtype`
        (float32, bfloat16 or float64; default float32, float64 for a float64 run)."""
        return write_curvature(
            path,
            self,
            attrs={**self.provenance, "kind": "hessian"},
            settings=self.stored_settings,
            layout=self.layout,
            vector_dtype=_store_dtype(self.provenance, store_dtype),
        )

    def plot(self, kind: str | None = None, *, backend: str = "matplotlib", sigma: float | None = None) -> Any:
        """The spectral density (`density`) or the eigenvalues (`eigenvalues`, per layer too); default by what was computed."""
        from landscape.render.spectrum import default_kind, spectrum_figure, spectrum_plotly

        draw = spectrum_plotly if backend == "plotly" else spectrum_figure

        def from_file(path: Path) -> Any:
            curv = read_curvature(path)
            return draw(curv, kind or default_kind(curv), sigma, name=Path(path).stem)

        return _figure_from_file(self, from_file)

    @classmethod
    def read(cls, path: str | Path) -> CurvatureResult:
        curv = read_curvature(path)
        stored = json.loads(curv["attrs"].get("settings", "{}"))
        names = {f.name for f in fields(CurvatureSettings)}
        settings = CurvatureSettings(**{k: v for k, v in stored.items() if k in names})
        return cls(
            settings=settings,
            model=_block(curv),
            layers={n: _block(b) for n, b in curv["layers"].items()},
            layout=curv["layout"],
            provenance=_provenance_of(curv["attrs"]),
            stored_settings=stored,
        )


def _block(d: Mapping[str, Any]) -> BlockResult:
    """A BlockResult from the dict `read_curvature` gives for one block."""
    eigen = trace = runs = None
    if d["eigenvalues"] is not None:
        a = d["eigen_attrs"]
        vectors = None if d["eigenvectors"] is None else torch.from_numpy(np.asarray(d["eigenvectors"]))
        eigen = Eigenpairs(d["eigenvalues"], d["residuals"], d["converged"], vectors, int(a.get("iterations", 0)),
                           int(a.get("matvecs", 0)), str(a.get("which", "largest")), float(a.get("tol", 0.0)),
                           float(a.get("residual_floor", 0.0)))  # fmt: skip
    if d["trace"] is not None:
        t = d["trace"]
        trace = TraceEstimate(t["value"], t["std_error"], int(t["matvecs"]), int(t["sketch"]), int(t["probes"]),
                              float(t["exact_part"]), str(t["estimator"]))  # fmt: skip
    if d["lanczos"] is not None:
        lz = d["lanczos"]
        runs = LanczosRuns(lz["alpha"], lz["beta"], int(lz.get("matvecs", 0)), int(lz.get("seed", 0)))
    density = density_from_lanczos(runs.alpha, runs.beta, size=int(d["size"]) or None) if runs is not None else None
    return BlockResult(
        tuple(d["tensors"]), int(d["size"]), eigen, trace, runs, dict(d["operator"]), dict(d["seconds"]), density
    )


# --------------------------------------------------------------------------- analysis groups


@dataclass(frozen=True)
class AnalysisResult:
    """One analysis command's group: headline numbers (what `landscape metrics` reads), arrays, labels."""

    numbers: Mapping[str, float | int]
    arrays: Mapping[str, np.ndarray]
    attrs: Mapping[str, Any]
    settings: Mapping[str, Any]
    provenance: Mapping[str, Any]
    layout: Layout | None = None
    kind: ClassVar[str] = ""

    def __repr__(self) -> str:
        numbers = ", ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.numbers.items())
        arrays = ", ".join(f"{k}{list(np.shape(v))}" for k, v in self.arrays.items())
        return f"{type(self).__name__}({numbers}; arrays {arrays or 'none'})"

    def __getitem__(self, name: str) -> Any:
        """A number or an array by its name in the results file (`result["ri"]`, `result["loss"]`)."""
        for table in (self.numbers, self.arrays, self.attrs):
            if name in table:
                return table[name]
        raise KeyError(
            f"{self.kind} results hold no {name!r} (numbers: {', '.join(self.numbers)}; arrays: {', '.join(self.arrays)})"
        )

    @property
    def group(self) -> Group:
        return Group(dict(self.numbers), dict(self.arrays), dict(self.attrs))

    def save(self, path: str | Path) -> Path:
        """Write the results file the CLI command writes for this run."""
        return write_results(
            path,
            kind=self.kind,
            attrs=self.provenance,
            settings=self.settings,
            groups={self.kind: self.group},
            layout=self.layout,
        )

    def plot(self, *, backend: str = "matplotlib") -> Any:
        """The command's figure (matplotlib, or with backend="plotly" a plotly Figure)."""
        if backend == "plotly":
            from landscape.render.analysis_interactive import analysis_plotly

            return _figure_from_file(self, analysis_plotly)
        from landscape.render.analysis import figure

        return _figure_from_file(self, figure)

    @classmethod
    def read(cls, path: str | Path) -> AnalysisResult:
        root = read_root(path)
        from landscape.io.results import open_results, read_layout

        with open_results(path) as f:
            layout = read_layout(f["axes"]) if "axes" in f and "layout" in f["axes"] else None
        g = read_group(path, cls.kind)
        return cls(g.numbers, g.arrays, g.attrs, json.loads(root.get("settings", "{}")), _provenance_of(root), layout)


class RoughnessResult(AnalysisResult):
    """Roughness index RI = sigma / mu of the normalized total variation of M random 1D profiles (Wang et al.)."""

    kind = "roughness"

    @property
    def ri(self) -> float:
        return float(self.numbers["ri"])

    @property
    def profiles(self) -> np.ndarray:
        """[M, m + 1] loss along each direction at `alphas`."""
        return self.arrays["loss"]


class SharpnessResult(AnalysisResult):
    """SAM sharpness, epsilon-sharpness, and (when asked) lambda_max, the trace and the LLA ratios."""

    kind = "sharpness"

    @property
    def sam(self) -> float:
        return float(self.numbers["sam"])


class PathResult(AnalysisResult):
    """The loss along the path between checkpoints, each checkpoint's own loss, and the barrier."""

    kind = "path"

    @property
    def barrier(self) -> float:
        return float(self.numbers["barrier"])


class TrackResult(AnalysisResult):
    """lambda_max (and the trace) at each checkpoint of a training run."""

    kind = "track"


ANALYSIS_RESULTS: dict[str, type[AnalysisResult]] = {
    c.kind: c for c in (RoughnessResult, SharpnessResult, PathResult, TrackResult)
}

Result = SweepResult | CurvatureResult | AnalysisResult


@dataclass(frozen=True)
class Alignment:
    """A checkpoint's hidden units permuted to match another's (weight matching, Git Re-Basin): the
    permuted `state` computes the same function; `distance_before`/`after` are the Euclidean distances
    to the reference over the parameters."""

    state: dict[str, torch.Tensor]
    groups: int  # groups of units that could be permuted
    units: int  # units in them
    moved: int  # units whose index changed
    rounds: int  # rounds of coordinate ascent after the first pass
    distance_before: float
    distance_after: float
    group_labels: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return (
            f"Alignment({self.moved:,} of {self.units:,} units moved in {self.groups} groups, {self.rounds} rounds; "
            f"distance {self.distance_before:.6g} -> {self.distance_after:.6g})"
        )

    def save(self, path: str | Path) -> Path:
        """The permuted state as a checkpoint: `.safetensors`, or a `torch.save` dict of tensors."""
        from landscape.io.checkpoint import write_state_dict

        return write_state_dict(path, self.state)


def load(path: str | Path) -> Result:
    """The result stored in a results file, as the type the library returns for its command.

    >>> import tempfile, torch, landscape as ls
    >>> problem = ls.Problem(torch.nn.Linear(4, 3), (torch.randn(16, 4), torch.randint(0, 3, (16,))))
    >>> path = ls.sweep(problem, ls.random_axes(problem, 1), x=(-1, 1, 5)).save(tempfile.mkdtemp() + "/line.h5")
    >>> ls.load(path).loss.shape
    (5,)
    """
    check_ours(path)
    kind = str(read_root(path).get("kind", ""))
    if kind in ("sweep", "plane", "trajectory"):
        return SweepResult.read(path)
    if kind == "hessian":
        return CurvatureResult.read(path)
    if kind in ANALYSIS_RESULTS:
        return ANALYSIS_RESULTS[kind].read(path)
    from landscape.errors import LandscapeError

    raise LandscapeError(f"{path}: a results file of kind {kind!r}, which this landscape cannot load")
