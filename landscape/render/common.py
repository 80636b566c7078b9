"""What every figure needs from a sweep, independent of the drawing library.

A `View` is one metric of one results file laid out for drawing: coordinates, values with NaN
where there is no value, axis labels that say what each axis is, and where the checkpoint (and,
for an interpolation axis, the other checkpoint) sits. Colour limits, clipping and contour
levels are decided here once, so static and interactive figures agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from landscape.errors import LandscapeError
from landscape.io.analysis_store import json_attr
from landscape.summary import center_index

KINDS_1D = ("line",)
KINDS_2D = ("contour", "filled", "heatmap", "surface", "line")
KINDS = ("line", "contour", "filled", "heatmap", "surface", "all")
METRICS = ("loss", "accuracy")

# Li et al. (2018), plot_2D.py: contour levels from 0.1 to 10 in steps of 0.5
LI_LEVELS = np.arange(0.1, 10.0, 0.5)


@dataclass
class View:
    """One metric of one sweep, ready to draw: values[i(, j)] is the value at (x[i](, y[j]))."""

    name: str  # a short name for the run (file stem), for titles and legends
    metric: str  # "loss" or "accuracy"
    unit_label: str  # e.g. "loss (cross-entropy)" or "accuracy (%)"
    coords: list[np.ndarray]  # one array per axis
    labels: list[str]  # axis labels, from axis_attrs['label']
    values: np.ndarray  # float64, NaN where no value (not done or non-finite)
    marks: list[tuple[tuple[float, ...], str]] = field(default_factory=list)  # (position, text)
    accuracy: np.ndarray | None = None  # percent, for the twin axis of a 1D loss curve
    title: str = ""
    points_done: int = -1  # of the grid's points (-1: all)
    norms: list[str] = field(default_factory=list)  # each axis's normalization (filter, layer, unit, none, ...)

    @property
    def incomplete(self) -> str:
        """'incomplete: D of N points done' for a run that was stopped (the figure says so), else ''."""
        total = int(self.values.size)
        if 0 <= self.points_done < total:
            return f"incomplete: {self.points_done:,} of {total:,} points done"
        return ""

    @property
    def dims(self) -> int:
        return len(self.coords)

    @property
    def center(self) -> tuple[int, ...]:
        return center_index(self.coords)


def run_name(sweep: dict[str, Any], path: str | Path | None = None) -> str:
    """A short name for a run: the results file's stem, else the checkpoint's file name."""
    if path is not None:
        return Path(path).stem
    ckpt = str(sweep["attrs"].get("checkpoint", "") or "")
    return Path(ckpt).name or "sweep"


def axis_label(sweep: dict[str, Any], name: str) -> str:
    """What an axis is, as stored by the sweep (e.g. 'filter-normalized random direction 1')."""
    attrs = sweep["axis_attrs"].get(name, {})
    return str(attrs.get("label") or name)


def short_label(label: str) -> str:
    """A label fit for a figure: 'toward /long/path/ckpt.pt' becomes 'toward ckpt.pt' (the report keeps the path)."""
    if label.startswith("toward ") and ("/" in label or "\\" in label):
        return "toward " + Path(label[len("toward ") :]).name
    return label


def make_view(sweep: dict[str, Any], metric: str = "loss", path: str | Path | None = None) -> View:
    """Lay out one metric of a sweep (from `read_sweep`) for drawing; points not done are NaN."""
    if metric not in METRICS:
        raise LandscapeError(f"--metric {metric!r}: expected one of {', '.join(METRICS)}")
    where = f"{path}: " if path is not None else ""
    names = list(sweep["axes"])
    coords = [np.asarray(sweep["coords"][n], dtype=np.float64) for n in names]
    loss = np.array(sweep["loss"], dtype=np.float64)
    done = np.asarray(sweep["done"], dtype=bool)
    acc = sweep.get("accuracy")
    acc = None if acc is None else np.array(acc, dtype=np.float64)
    if metric == "accuracy":
        if acc is None:
            raise LandscapeError(f"{where}--metric accuracy: this sweep stores no accuracy (not a classification task)")
        values = 100.0 * acc
        unit = "accuracy (%)"
    else:
        values = loss
        loss_name = str(sweep["attrs"].get("loss", "") or "")
        unit = f"loss ({loss_name})" if loss_name and len(loss_name) <= 24 else "loss"
    values = np.where(done & np.isfinite(values), values, np.nan)
    if values.shape != tuple(len(c) for c in coords):
        raise LandscapeError(
            f"{where}grid shape {values.shape} does not match the coordinates {[len(c) for c in coords]}"
        )
    labels = [short_label(axis_label(sweep, n)) for n in names]
    marks: list[tuple[tuple[float, ...], str]] = []
    if all(c.min() <= 0.0 <= c.max() for c in coords):
        marks.append((tuple(0.0 for _ in coords), "checkpoint"))
    first = sweep["axis_attrs"].get(names[0], {})
    if first.get("kind") == "interpolation" and coords[0].min() <= 1.0 <= coords[0].max():
        other = Path(str(first.get("source") or "other")).name
        marks.append(((1.0,) + tuple(0.0 for _ in coords[1:]), other))
    accuracy = None
    if metric == "loss" and acc is not None:
        accuracy = np.where(done & np.isfinite(acc), 100.0 * acc, np.nan)
    return View(
        name=run_name(sweep, path),
        metric=metric,
        unit_label=unit,
        coords=coords,
        labels=labels,
        values=values,
        marks=marks,
        accuracy=accuracy,
        points_done=int(done.sum()),
        norms=[str(sweep["axis_attrs"].get(n, {}).get("normalization", "")) for n in names],
    )


def data_set_views(
    sweep: dict[str, Any], group: Any, metric: str = "loss", path: str | Path | None = None
) -> list[View]:
    """One view per data set of a sweep's /data_sets group (sweep --eval-data), named after the set."""
    names = [str(n) for n in json_attr(group.attrs.get("names"), [])]
    accuracy = group.arrays.get("accuracy")
    views = []
    for i, name in enumerate(names):
        one = {**sweep, "loss": group.arrays["loss"][i], "accuracy": None if accuracy is None else accuracy[i]}
        view = make_view(one, metric, path)
        view.name = name
        views.append(view)
    return views


def shared_x_label(views: list[View]) -> tuple[str, list[str]]:
    """The x label of overlaid curves and each curve's legend entry: the one label when every run's x
    axis has it; otherwise each run's own in its legend entry (the last file's label was shown for all)."""
    labels = [v.labels[0] for v in views]
    if len(set(labels)) == 1:
        return labels[0], [v.name for v in views]
    return "x: the axis of each run (in the legend)", [f"{v.name}: {label}" for v, label in zip(views, labels)]


def scale_mismatch(views: list[View]) -> str:
    """Why the runs' coordinates are not on one scale (their axes are normalized differently), or ''."""
    norms = {v.name: v.norms[0] if v.norms else "" for v in views}
    if len(set(norms.values())) <= 1:
        return ""
    listed = ", ".join(f"{name}: {norm or 'unknown'}" for name, norm in norms.items())
    return (
        f"the runs' x axes are normalized differently ({listed}): a coordinate means another distance in "
        "each, so the curves' widths are not comparable"
    )


def value_at(view: View, pos: tuple[float, ...]) -> float:
    """The stored value at the grid point nearest `pos` (for placing a marker on a curve or surface)."""
    idx = tuple(int(np.argmin(np.abs(c - p))) for c, p in zip(view.coords, pos))
    return float(view.values[idx])


def slices(view: View) -> list[tuple[np.ndarray, np.ndarray, str]]:
    """1D curves through the checkpoint: the line itself, or both center lines of a 2D grid."""
    if view.dims == 1:
        return [(view.coords[0], view.values, view.labels[0])]
    i, j = view.center
    return [
        (view.coords[0], view.values[:, j], f"{view.labels[0]}  (y = {view.coords[1][j]:.3g})"),
        (view.coords[1], view.values[i, :], f"{view.labels[1]}  (x = {view.coords[0][i]:.3g})"),
    ]


@dataclass
class Scale:
    """Colour/height limits shared by every panel of a figure: clip to [vmin, vmax], linear or log."""

    vmin: float
    vmax: float
    log: bool = False
    clipped_low: bool = False
    clipped_high: bool = False
    q05: float = float("nan")  # the drawn values' 5th and 10th percentiles (within the limits): the basin
    q10: float = float("nan")

    def resolves_basin(self, levels: np.ndarray) -> bool:
        """Whether `levels` draw a line in the basin (around the lowest tenth of the grid's values): with
        a loss 100x higher at the edges than at the centre, evenly spaced levels drew none there."""
        return not np.isfinite(self.q10) or bool((np.asarray(levels) <= self.q10).any())

    def clip(self, values: np.ndarray) -> np.ndarray:
        """Values limited to [vmin, vmax]; NaN stays NaN; non-positive values become NaN on a log scale."""
        out = np.array(values, dtype=np.float64)
        if self.log:
            out[out <= 0] = np.nan
        with np.errstate(invalid="ignore"):
            return np.clip(out, self.vmin, self.vmax)

    @property
    def extend(self) -> str:
        """matplotlib colour-bar `extend`: which ends are clipped."""
        return {(False, False): "neither", (True, False): "min", (False, True): "max", (True, True): "both"}[
            (self.clipped_low, self.clipped_high)
        ]


def make_scale(
    arrays: list[np.ndarray], vmin: float | None = None, vmax: float | None = None, log: bool = False
) -> Scale:
    """One scale for several arrays: the finite range of all of them, narrowed by --vmin/--vmax."""
    finite = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays])
    finite = finite[np.isfinite(finite)]
    if log:
        finite = finite[finite > 0]
        if vmin is not None and vmin <= 0:
            raise LandscapeError(f"--vmin {vmin}: must be positive with --log")
        if finite.size == 0:
            raise LandscapeError("--log: no positive values to draw")
    if finite.size == 0:
        lo, hi = 0.0, 1.0
    else:
        lo, hi = float(finite.min()), float(finite.max())
    if vmin is not None and vmax is not None and vmin >= vmax:
        raise LandscapeError(f"--vmin {vmin} must be below --vmax {vmax}")
    lo2 = lo if vmin is None else float(vmin)
    hi2 = hi if vmax is None else float(vmax)
    if hi2 <= lo2:  # a constant surface: widen so colour maps and levels still work
        pad = abs(lo2) * 0.05 or 0.5
        lo2, hi2 = (lo2 - pad, hi2 + pad) if not log else (lo2 / 1.5, hi2 * 1.5)
    inside = finite[(finite >= lo2) & (finite <= hi2)]
    q05, q10 = (float(np.quantile(inside, q)) for q in (0.05, 0.10)) if inside.size else (np.nan, np.nan)
    return Scale(
        lo2,
        hi2,
        log,
        clipped_low=finite.size > 0 and lo < lo2,
        clipped_high=finite.size > 0 and hi > hi2,
        q05=q05,
        q10=q10,
    )


def contour_levels(scale: Scale, levels: int | None = None, metric: str = "loss", li: bool = True) -> np.ndarray:
    """Contour levels: Li et al.'s 0.1..10 step 0.5 when they resolve the loss, else N nice levels.

    `levels` (--levels N) asks for about N levels between the scale's limits; --log gives
    geometrically spaced levels. `li=False` (filled contours) always spans the whole scale.
    """
    lo, hi = scale.vmin, scale.vmax
    if scale.log:
        if levels:
            return np.geomspace(lo, hi, levels + 2)[1:-1]
        # round numbers on a log scale: 1-2-5 in every decade, or 1..9 when the range is narrow
        decades = np.arange(np.floor(np.log10(lo)), np.ceil(np.log10(hi)) + 1)
        for mantissas in ((1.0, 2.0, 5.0), tuple(float(m) for m in range(1, 10))):
            lv = np.array([m * 10.0**d for d in decades for m in mantissas])
            lv = lv[(lv > lo) & (lv < hi)]
            if lv.size >= 5:
                return lv
        return np.geomspace(lo, hi, 12)[1:-1]
    if li and levels is None and metric == "loss":
        fixed = LI_LEVELS[(LI_LEVELS >= lo) & (LI_LEVELS <= hi)]
        if fixed.size >= 5 and scale.resolves_basin(fixed):
            return fixed
    from matplotlib.ticker import MaxNLocator

    n = levels or 15
    ticks = np.asarray(MaxNLocator(nbins=n + 1, min_n_ticks=min(n, 3)).tick_values(lo, hi))
    ticks = ticks[(ticks > lo) & (ticks < hi)]
    even = ticks if ticks.size else np.linspace(lo, hi, n + 2)[1:-1]
    return even if scale.resolves_basin(even) else basin_levels(scale, n)


def basin_levels(scale: Scale, n: int) -> np.ndarray:
    """About `n` levels spaced geometrically above the minimum (lo + span * r^i): dense in the basin,
    sparse up the walls, from just above the lowest values; rounded to 2 significant digits."""
    lo, span = scale.vmin, scale.vmax - scale.vmin
    first = min(max((scale.q05 - lo) / span / 4, 1e-4), 0.01)  # a few lines inside the lowest 5% of the grid
    raw = lo + span * np.geomspace(first, 1.0, n + 1)[:-1]
    rounded = np.unique([float(f"{v:.2g}") for v in raw])
    kept = rounded[(rounded > lo) & (rounded < scale.vmax)]
    return kept if kept.size >= 3 else raw


def fmt(value: Any) -> str:
    """A number or string for a table cell: floats to 6 significant digits."""
    if isinstance(value, float):
        return "nan" if np.isnan(value) else f"{value:.6g}"
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, float) for v in value):
        return "(" + ", ".join(f"{v:.4g}" for v in value) + ")"
    return str(value)


def unique_names(given: Sequence[str | Path]) -> list[str]:
    """Short, distinct run names: file stems, with parent folders added where stems collide."""
    paths = [Path(p) for p in given]
    names = [p.stem for p in paths]
    depth = 1
    while len(set(names)) < len(names) and depth < 6:
        names = ["/".join(p.with_suffix("").parts[-depth - 1 :]) for p in paths]
        depth += 1
    if len(set(names)) < len(names):
        names = [f"{n} ({k + 1})" for k, n in enumerate(names)]
    return names
