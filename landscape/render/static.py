"""Static figures with matplotlib (png, svg, pdf), drawn from results files alone.

Kinds: `line` (loss along the line, accuracy on a twin axis; for a 2D grid, the two lines
through the checkpoint), `contour` (labelled lines, Li et al.'s levels 0.1..10 step 0.5 by
default), `filled` (filled contours), `heatmap`, `surface` (3D), and `all` (every kind as panels).
loss[i, j] is the value at (x[i], y[j]); matplotlib wants rows = y, so 2D arrays are transposed
exactly once, in `_grid`. NaN (points not done, or a diverged loss) are masked: gaps, never zeros.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import BoundaryNorm, LogNorm, Normalize  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullLocator  # noqa: E402

from landscape.errors import LandscapeError  # noqa: E402
from landscape.io.atomic import replace_whole  # noqa: E402
from landscape.render.common import (  # noqa: E402
    Scale,
    View,
    contour_levels,
    make_scale,
    make_view,
    shared_x_label,
    slices,
    value_at,
)

STATIC_SUFFIXES = (".png", ".svg", ".pdf")
CMAP = "viridis"
# readable when a single panel is pasted into one column of a paper (about 3.3 inches wide)
STYLE: Any = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "figure.dpi": 100,
    "savefig.dpi": 200,
    "savefig.bbox": "tight",
    "savefig.pad_inches": 0.05,
    "svg.hashsalt": "landscape",
}
PANEL = (4.6, 3.8)  # inches per panel
LEGEND_ABOVE = {
    "loc": "lower center",
    "bbox_to_anchor": (0.5, 1.0),
    "ncol": 4,
    "frameon": False,
    "borderaxespad": 0.2,
    "handlelength": 1.6,
    "columnspacing": 1.0,
}


def _wrap(label: str, width: int = 48) -> str:
    return "\n".join(textwrap.wrap(label, width)) or label


def _grid(view: View, values: np.ndarray | None = None) -> np.ma.MaskedArray:
    """values[i, j] at (x[i], y[j]) as matplotlib's Z[row=y, col=x], NaN masked."""
    v = view.values if values is None else values
    return np.ma.masked_invalid(np.asarray(v, dtype=np.float64).T)


def _norm(scale: Scale) -> Normalize:
    return LogNorm(scale.vmin, scale.vmax) if scale.log else Normalize(scale.vmin, scale.vmax)


def _level_norm(scale: Scale, levels: np.ndarray) -> Normalize:
    """Colours by a line's rank among the levels, not by its value: with a large loss range, value
    colours gave every line in the basin the same dark shade."""
    if scale.log or len(levels) < 2:
        return _norm(scale)
    bounds = np.unique(np.concatenate([[scale.vmin], levels, [scale.vmax]]))
    return BoundaryNorm(bounds, ncolors=plt.get_cmap(CMAP).N)


def _mark_2d(ax: Any, view: View) -> None:
    for k, (pos, text) in enumerate(view.marks):
        if k == 0:
            ax.plot(*pos, marker="*", color="red", ms=13, mec="black", mew=0.8, ls="none", label=text, zorder=5)
        else:
            ax.plot(*pos, marker="o", color="white", ms=7, mec="black", mew=1.0, ls="none", label=text, zorder=5)


def _half_cells(c: np.ndarray) -> float:
    return abs(float(c[1] - c[0])) / 2 if len(c) > 1 else 0.5


def _gaps(ax: Any, view: View, cells: bool = False) -> None:
    """Hatch the background so points with no value read as gaps, not as a colour (`cells`: heatmap extent)."""
    if not np.isnan(view.values).any():
        return
    xs, ys = view.coords
    dx, dy = (_half_cells(xs), _half_cells(ys)) if cells else (0.0, 0.0)
    ax.add_patch(
        Rectangle(
            (xs.min() - dx, ys.min() - dy),
            np.ptp(xs) + 2 * dx,
            np.ptp(ys) + 2 * dy,
            facecolor="0.93",
            edgecolor="0.6",
            hatch="////",
            lw=0,
            zorder=-1,
        )
    )
    ax.legend_handles_extra = [Patch(facecolor="0.93", edgecolor="0.6", hatch="////", label="no value (NaN)")]


def _legend(ax: Any) -> None:
    handles, _ = ax.get_legend_handles_labels()
    handles = handles + list(getattr(ax, "legend_handles_extra", []))
    if handles:
        ax.legend(handles=handles, loc="upper right", framealpha=0.85)


def _labels_2d(ax: Any, view: View) -> None:
    ax.set_xlabel(_wrap(view.labels[0]))
    ax.set_ylabel(_wrap(view.labels[1]))
    xs, ys = view.coords
    ax.set_xlim(xs.min(), xs.max())
    ax.set_ylim(ys.min(), ys.max())


def draw_contour(ax: Any, view: View, scale: Scale, levels: np.ndarray) -> Any:
    """Labelled contour lines; values above --vmax simply get no line."""
    z = _grid(view)
    if z.count() == 0:
        raise LandscapeError(f"{view.name}: no finite {view.metric} value to draw")
    norm = _level_norm(scale, levels)
    cs = ax.contour(view.coords[0], view.coords[1], z, levels=levels, cmap=CMAP, norm=norm, linewidths=1.0)
    if len(cs.levels):
        step = max(1, len(cs.levels) // 10)  # about ten labels, so crowded corners stay readable
        ax.clabel(cs, cs.levels[::step], inline=True, fontsize=7, fmt="%.3g")
    _mark_2d(ax, view)
    _labels_2d(ax, view)
    _legend(ax)
    return cs


def draw_filled(ax: Any, view: View, scale: Scale, levels: np.ndarray) -> Any:
    """Filled contours (clipped to the scale), thin lines on the same levels."""
    z = _grid(view, scale.clip(view.values))
    if z.count() == 0:
        raise LandscapeError(f"{view.name}: no finite {view.metric} value to draw")
    bounds = np.unique(np.concatenate([[scale.vmin], levels, [scale.vmax]]))
    _gaps(ax, view)
    norm = _level_norm(scale, levels)
    cf = ax.contourf(view.coords[0], view.coords[1], z, levels=bounds, cmap=CMAP, norm=norm, extend="neither")
    ax.contour(view.coords[0], view.coords[1], z, levels=levels, colors="white", linewidths=0.4, alpha=0.6)
    _mark_2d(ax, view)
    _labels_2d(ax, view)
    _legend(ax)
    return cf


def draw_heatmap(ax: Any, view: View, scale: Scale) -> Any:
    """One cell per grid point, centred on it (clipped to the scale); NaN cells left empty."""
    z = _grid(view, scale.clip(view.values))
    _gaps(ax, view, cells=True)
    mesh = ax.pcolormesh(view.coords[0], view.coords[1], z, shading="nearest", cmap=CMAP, norm=_norm(scale))
    _mark_2d(ax, view)
    _labels_2d(ax, view)
    xs, ys = view.coords
    ax.set_xlim(xs.min() - _half_cells(xs), xs.max() + _half_cells(xs))
    ax.set_ylim(ys.min() - _half_cells(ys), ys.max() + _half_cells(ys))
    _legend(ax)
    return mesh


def draw_surface(ax: Any, view: View, scale: Scale) -> Any:
    """A 3D surface clipped to the scale (log10 heights with --log); NaN leaves holes."""
    vals = scale.clip(view.values)
    zlabel = view.unit_label
    if scale.log:
        vals = np.log10(vals)
        zlabel = f"log10 {view.unit_label}"
        lo, hi = np.log10(scale.vmin), np.log10(scale.vmax)
    else:
        lo, hi = scale.vmin, scale.vmax
    X, Y = np.meshgrid(view.coords[0], view.coords[1])
    Z = _grid(view, vals)
    surf = ax.plot_surface(
        X, Y, Z, cmap=CMAP, norm=Normalize(lo, hi), rstride=1, cstride=1, linewidth=0, antialiased=False, alpha=0.95
    )
    for k, (pos, text) in enumerate(view.marks):
        v = value_at(view, pos)
        if not np.isfinite(v):
            continue
        h = float(np.log10(np.clip(v, scale.vmin, scale.vmax)) if scale.log else np.clip(v, lo, hi))
        ax.scatter(
            [pos[0]],
            [pos[1]],
            [h],
            marker="*" if k == 0 else "o",
            s=120 if k == 0 else 40,
            color="red" if k == 0 else "white",
            edgecolor="black",
            depthshade=False,
            label=text,
            zorder=10,
        )
    ax.set_xlabel(_wrap(view.labels[0], 30), labelpad=6)
    ax.set_ylabel(_wrap(view.labels[1], 30), labelpad=6)
    ax.set_zlabel(zlabel, labelpad=4)
    ax.set_zlim(lo, hi)
    for axis in (ax.xaxis, ax.yaxis, ax.zaxis):
        axis.set_major_locator(MaxNLocator(5))
    ax.view_init(elev=30, azim=-60)
    return surf


def draw_line(
    ax: Any,
    view: View,
    curve: tuple[np.ndarray, np.ndarray, str],
    scale: Scale | None,
    accuracy: np.ndarray | None = None,
    label: str | None = None,
    color: str = "tab:blue",
) -> Any:
    """A loss (or accuracy) curve; NaN breaks the line; the checkpoint marked; accuracy on a twin axis."""
    xs, ys, xlabel = curve
    gaps = bool(np.isnan(ys).any())  # a point between two gaps would be invisible without a marker
    (line,) = ax.plot(xs, ys, color=color, lw=1.8, marker="o" if gaps else None, ms=2.5, label=label or view.unit_label)
    if scale is not None:
        if scale.log:
            ax.set_yscale("log")
        lo, hi = ax.get_ylim()
        ax.set_ylim(max(lo, scale.vmin) if scale.clipped_low else lo, min(hi, scale.vmax) if scale.clipped_high else hi)
    ax.set_xlabel(_wrap(xlabel))
    ax.set_ylabel(view.unit_label)
    ax.set_xlim(xs.min(), xs.max())
    for k, (pos, text) in enumerate(view.marks):
        p = pos[0]
        i = int(np.argmin(np.abs(xs - p)))
        ax.axvline(p, color="0.55", lw=0.8, ls="--", zorder=0)
        if np.isfinite(ys[i]):
            ax.plot(
                [xs[i]],
                [ys[i]],
                marker="*" if k == 0 else "o",
                color="red" if k == 0 else "white",
                mec="black",
                ms=11 if k == 0 else 7,
                ls="none",
                label=text if label is None else None,
                zorder=5,
            )
    if accuracy is not None and np.isfinite(accuracy).any():
        ax2 = ax.twinx()
        ax2.plot(
            xs,
            accuracy,
            color="tab:red",
            lw=1.3,
            ls="-.",
            marker="o" if np.isnan(accuracy).any() else None,
            ms=2,
            label="accuracy (%)",
        )
        ax2.set_ylabel("accuracy (%)", color="tab:red")
        ax2.tick_params(axis="y", colors="tab:red")
        ax.yaxis.label.set_color(color)
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, **LEGEND_ABOVE)
    elif label is None:
        ax.legend(**LEGEND_ABOVE)
    return line


def _line_curves(view: View) -> list[tuple[tuple[np.ndarray, np.ndarray, str], np.ndarray | None]]:
    curves = slices(view)
    if view.accuracy is None:
        return [(c, None) for c in curves]
    if view.dims == 1:
        return [(curves[0], view.accuracy)]
    i, j = view.center
    return [(curves[0], view.accuracy[:, j]), (curves[1], view.accuracy[i, :])]


def _colorbar(fig: Figure, mappable: Any, axes: Any, view: View, scale: Scale) -> None:
    cb = fig.colorbar(mappable, ax=axes, extend=scale.extend, shrink=0.9, pad=0.03)
    if scale.log:  # round 1-2-5 ticks, plain numbers, no minor-tick clutter
        ticks = contour_levels(scale)
        if len(ticks) > 9:
            ticks = ticks[np.isclose(np.log10(ticks) % 1, 0) | np.isclose(np.log10(ticks) % 1, 1)]  # decades only
        cb.set_ticks(list(ticks), labels=[f"{t:.3g}" for t in ticks])
        cb.ax.yaxis.set_minor_locator(NullLocator())
    elif isinstance(mappable.norm, BoundaryNorm):  # one step per level: label them (every other one when many)
        bounds = mappable.norm.boundaries[1:-1]
        step = max(1, len(bounds) // 10)
        cb.set_ticks(list(bounds[::step]), labels=[f"{t:.3g}" for t in bounds[::step]])
        cb.ax.yaxis.set_minor_locator(NullLocator())
    else:
        cb.ax.yaxis.set_major_locator(MaxNLocator(8))
        cb.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
    cb.set_label(view.unit_label + (" (clipped)" if scale.clipped_high or scale.clipped_low else ""))


def _panel(fig: Figure, ax: Any, view: View, kind: str, scale: Scale, levels: int | None, colorbar: bool = True) -> Any:
    if kind == "contour":
        m = draw_contour(ax, view, scale, contour_levels(scale, levels, view.metric))
    elif kind == "filled":
        m = draw_filled(ax, view, scale, contour_levels(scale, levels or 20, view.metric, li=False))
    elif kind == "heatmap":
        m = draw_heatmap(ax, view, scale)
    elif kind == "surface":
        m = draw_surface(ax, view, scale)
    else:  # pragma: no cover - guarded by callers
        raise LandscapeError(f"--kind {kind!r}: unknown")
    if colorbar and kind in ("contour", "filled", "heatmap"):
        _colorbar(fig, m, ax, view, scale)
    return m


def check_kind(kind: str, dims: int, where: str = "") -> None:
    """Refuse kinds a sweep of this dimension cannot draw, naming the file."""
    from landscape.render.common import KINDS

    if kind not in KINDS:
        raise LandscapeError(f"--kind {kind!r}: expected one of {', '.join(KINDS)}")
    if dims == 1 and kind not in ("line", "all"):
        raise LandscapeError(f"{where}--kind {kind}: needs a 2D sweep (this one is a 1D line); use --kind line")
    if dims not in (1, 2):
        raise LandscapeError(f"{where}a {dims}-D sweep: only 1D lines and 2D grids can be drawn")


def plot_figure(
    view: View,
    kind: str,
    *,
    vmin: float | None = None,
    vmax: float | None = None,
    log: bool = False,
    levels: int | None = None,
    title: str | None = None,
) -> Figure:
    """One results file as a figure of the given kind (`all`: every kind as panels)."""
    check_kind(kind, view.dims)
    scale = make_scale([view.values], vmin, vmax, log)
    lv = levels
    title = view.name if title is None else title
    if view.incomplete:
        title = f"{title} ({view.incomplete})"
    with plt.rc_context(STYLE):
        if view.dims == 1 or kind == "line":
            curves = _line_curves(view)
            fig, axs = plt.subplots(
                1, len(curves), figsize=(PANEL[0] * len(curves), PANEL[1]), squeeze=False, layout="constrained"
            )
            for ax, (curve, acc) in zip(axs[0], curves):
                draw_line(ax, view, curve, scale, acc)
            fig.suptitle(title)
        elif kind == "all":
            fig = plt.figure(figsize=(PANEL[0] * 3, PANEL[1] * 2 + 0.4))
            for n, k in enumerate(("contour", "filled", "heatmap")):
                ax = fig.add_subplot(2, 3, n + 1)
                _panel(fig, ax, view, k, scale, lv)
                ax.set_title(k)
            ax = fig.add_subplot(2, 3, 4, projection="3d", computed_zorder=False)
            _panel(fig, ax, view, "surface", scale, lv)
            ax.set_title("surface")
            for n, (curve, acc) in enumerate(_line_curves(view)):
                ax = fig.add_subplot(2, 3, 5 + n)
                draw_line(ax, view, curve, scale, acc)
            fig.suptitle(title)
            fig.tight_layout()
        else:
            proj = {"projection": "3d", "computed_zorder": False} if kind == "surface" else {}
            fig = plt.figure(
                figsize=(
                    PANEL[0] + (0.9 if kind in ("filled", "heatmap") else 0),
                    PANEL[1] + (0.6 if kind == "surface" else 0),
                )
            )
            ax = fig.add_subplot(1, 1, 1, **proj)
            _panel(fig, ax, view, kind, scale, lv)
            ax.set_title(title)
    return fig


def compare_figure(
    views: list[View],
    kind: str,
    *,
    vmin: float | None = None,
    vmax: float | None = None,
    log: bool = False,
    levels: int | None = None,
    title: str | None = None,
) -> Figure:
    """Several runs side by side on the same axes limits and one colour scale (1D: curves overlaid)."""
    dims = {v.dims for v in views}
    if len(dims) != 1:
        raise LandscapeError("compare: all files must be 1D lines or all 2D grids, not a mix")
    for v in views:
        check_kind(kind, v.dims, f"{v.name}: ")
    scale = make_scale([v.values for v in views], vmin, vmax, log)
    lv = levels
    with plt.rc_context(STYLE):
        if views[0].dims == 1 or kind == "line":
            fig, ax = plt.subplots(figsize=(PANEL[0] * 1.3, PANEL[1]))
            colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
            xlabel, names = shared_x_label(views)
            for n, (v, name) in enumerate(zip(views, names)):
                draw_line(ax, v, slices(v)[0], scale, None, label=name, color=colors[n % len(colors)])
            ax.set_xlabel(_wrap(xlabel))
            ax.set_ylabel(views[0].unit_label)
            lo = min(v.coords[0].min() for v in views)
            hi = max(v.coords[0].max() for v in views)
            ax.set_xlim(lo, hi)
            ax.legend(loc="best", framealpha=0.85)
            if views[0].dims == 2:
                ax.set_title("x line through the checkpoint")
            if title:
                fig.suptitle(title)
            return fig
        n = len(views)
        cols = min(n, 3)
        rows = (n + cols - 1) // cols
        proj = {"projection": "3d", "computed_zorder": False} if kind == "surface" else {}
        fig = plt.figure(figsize=(PANEL[0] * cols + 0.8, PANEL[1] * rows + 0.3), layout="constrained")
        axes = [fig.add_subplot(rows, cols, k + 1, **proj) for k in range(n)]
        xlim = (min(v.coords[0].min() for v in views), max(v.coords[0].max() for v in views))
        ylim = (min(v.coords[1].min() for v in views), max(v.coords[1].max() for v in views))
        mappable = None
        for ax, v in zip(axes, views):
            mappable = _panel(fig, ax, v, "filled" if kind == "all" else kind, scale, lv, colorbar=False)
            ax.set_title(v.name)
            if kind != "surface":
                ax.set_xlim(*xlim)
                ax.set_ylim(*ylim)
        if kind == "contour":
            sm = plt.cm.ScalarMappable(norm=_level_norm(scale, contour_levels(scale, lv, views[0].metric)), cmap=CMAP)
            mappable = sm
        _colorbar(fig, mappable, axes, views[0], scale)
        if title:
            fig.suptitle(title)
    return fig


def line_figure(sweep: dict[str, Any]) -> Figure:
    """Loss along a 1D sweep (kept for callers of the first version)."""
    return plot_figure(make_view(sweep), "line")


def contour_figure(sweep: dict[str, Any], levels: np.ndarray | None = None) -> Figure:
    """Labelled contour lines of a 2D sweep (kept for callers of the first version)."""
    return plot_figure(make_view(sweep), "contour")


def save(fig: Figure, path: str | Path) -> Path:
    """Write a figure (format from the suffix) and close it; no timestamps, so files are reproducible."""
    path = Path(path)
    meta: dict[str, Any] = {}
    suffix = path.suffix.lower()
    if suffix == ".svg":
        meta = {"Date": None}
    elif suffix == ".pdf":
        meta = {"CreationDate": None, "ModDate": None}
    try:
        with replace_whole(path, keep_suffix=True) as tmp, plt.rc_context(STYLE):
            fig.savefig(tmp, metadata=meta or None)
    finally:
        plt.close(fig)
    return path
