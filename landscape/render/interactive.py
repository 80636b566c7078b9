"""Interactive figures with plotly, written as one self-contained HTML file.

plotly.js is embedded once per page by default, so a file opens offline (from disk or an e-mail
attachment); `plotlyjs="cdn"` links it from cdn.plot.ly instead, for a small file.
Axis order: plotly draws z[row][col] at (x[col], y[row]), so a grid loss[i, j] at (x[i], y[j]) is
passed transposed, exactly once, in `_z`. NaN becomes null: a gap, never a zero.
Every string that came from a user (file names, axis labels, metadata) is HTML-escaped before it
goes into a figure or a page: plotly.js renders a few tags in text, and a page must not run a
label's `<script>`.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from landscape.errors import LandscapeError
from landscape.io.atomic import replace_whole
from landscape.render.common import Scale, View, contour_levels, make_scale, shared_x_label, slices, value_at

PLOTLYJS_MODES = ("inline", "cdn")
COLORSCALE = "Viridis"
CONFIG = {"responsive": True, "displaylogo": False, "showLink": False}
HEIGHT = 520


def esc(text: Any) -> str:
    """A user string made safe for HTML and for plotly's text rendering."""
    return html.escape(str(text), quote=True)


def json_values(a: np.ndarray) -> list:
    """An array as nested lists with None where the value is NaN or infinite (JSON null)."""
    a = np.asarray(a, dtype=np.float64)
    obj = a.astype(object)
    obj[~np.isfinite(a)] = None
    return obj.tolist()


def _z(values: np.ndarray) -> list:
    """values[i, j] at (x[i], y[j]) as plotly's z[row=j][col=i]."""
    return json_values(np.asarray(values).T)


def _hover(view: View, dims: int, extra: str = "") -> str:
    names = ["x", "y"][:dims]
    parts = [f"{n}: %{{{n}:.4g}}" for n in names]
    return "<br>".join(parts + [f"{esc(view.metric)}: {extra or '%{z:.5g}'}"]) + f"<extra>{esc(view.name)}</extra>"


def _transform(view: View, scale: Scale) -> tuple[np.ndarray, str, bool]:
    """Values for colour and height: clipped to the scale, log10 with --log; whether they differ from the data."""
    vals = scale.clip(view.values)
    if scale.log:
        return np.log10(vals), f"log10 {view.unit_label}", True
    return vals, view.unit_label, bool(scale.clipped_low or scale.clipped_high)


def _limits(scale: Scale) -> tuple[float, float]:
    return (float(np.log10(scale.vmin)), float(np.log10(scale.vmax))) if scale.log else (scale.vmin, scale.vmax)


def _levels(scale: Scale, levels: int | None, metric: str, kind: str) -> np.ndarray:
    if scale.log:
        return contour_levels(scale, levels or 12, metric)
    return contour_levels(scale, levels if kind == "contour" else (levels or 20), metric, li=kind == "contour")


def _uneven(scale: Scale, lv: np.ndarray) -> np.ndarray | None:
    """The levels `lv`, when they are not evenly spaced (dense in the basin: `basin_levels`); else None."""
    if scale.log:
        return None
    steps = np.diff(lv)
    return None if len(lv) < 3 or np.allclose(steps, steps[0], rtol=1e-3) else lv


def _basin_transform(values: np.ndarray, scale: Scale, levels: np.ndarray) -> np.ndarray:
    """log10 of the height above the minimum, where `basin_levels` are (nearly) evenly spaced; the
    minimum itself a little below the first level."""
    floor = (levels[0] - scale.vmin) / 4
    return np.log10(np.maximum(np.asarray(values, dtype=np.float64) - scale.vmin, floor))


def _label_basin_levels(colorbar: dict[str, Any], scale: Scale, uneven: np.ndarray) -> None:
    """A colour bar of transformed values (`_basin_transform`) ticked with the loss at the levels."""
    marks = _basin_transform(uneven, scale, uneven)
    step = max(1, len(uneven) // 10)
    colorbar.update(tickvals=marks[::step].tolist(), ticktext=[f"{v:.3g}" for v in uneven[::step]])


def _contour_spec(scale: Scale, levels: np.ndarray, kind: str, uneven: np.ndarray | None = None) -> dict[str, Any]:
    if scale.log:  # plotly's levels are evenly spaced: evenly in log10 here
        lv = np.log10(levels)
    elif uneven is not None:  # ... and evenly in log10 above the minimum for levels dense in the basin
        lv = _basin_transform(uneven, scale, uneven)
        lv = np.linspace(lv[0], lv[-1], len(lv))
    else:
        lv = levels
    size = float(lv[1] - lv[0]) if len(lv) > 1 else 1.0
    spec: dict[str, Any] = {"start": float(lv[0]), "end": float(lv[-1]), "size": size}
    if kind == "contour":
        # labels would show the drawn (transformed) numbers: the colour bar and the hover give the values
        spec.update(coloring="lines", showlabels=uneven is None, labelfont={"size": 10})
    else:
        spec.update(coloring="fill", showlines=True)
    return spec


def _colorbar(label: str, scale: Scale) -> dict[str, Any]:
    cb: dict[str, Any] = {"title": {"text": esc(label), "side": "right"}}
    if scale.log:
        lo, hi = _limits(scale)
        ticks = np.arange(np.floor(lo), np.ceil(hi) + 1)
        cb.update(tickvals=ticks.tolist(), ticktext=[f"{10**t:.3g}" for t in ticks])
    return cb


def trace_2d(
    view: View, kind: str, scale: Scale, levels: int | None = None, coloraxis: str | None = None, showscale: bool = True
) -> go.BaseTraceType:
    """One contour / filled contour / heatmap / surface trace of a 2D view, hover showing the stored value."""
    vals, label, changed = _transform(view, scale)
    lo, hi = _limits(scale)
    # contour and heatmap colours saturate at zmin/zmax, so they keep the stored values (hover shows
    # them as is) unless --log; a surface's heights are clipped, so its hover reads the stored value
    if kind in ("contour", "filled", "heatmap"):
        changed = scale.log
    lv = _levels(scale, levels, view.metric, kind) if kind in ("contour", "filled") else None
    uneven = _uneven(scale, lv) if lv is not None else None
    if uneven is not None:  # levels dense in the basin: drawn evenly spaced in log10(value - minimum)
        vals, changed = _basin_transform(scale.clip(view.values), scale, uneven), True
        lo, hi = _basin_transform(np.array([scale.vmin, scale.vmax]), scale, uneven).tolist()
    z = _z(vals) if changed else _z(view.values)
    common: dict[str, Any] = {
        "x": view.coords[0].tolist(),
        "y": view.coords[1].tolist(),
        "z": z,
        "name": esc(view.name),
    }
    if changed:
        common["customdata"] = _z(view.values)
        common["hovertemplate"] = _hover(view, 2, "%{customdata:.5g}")
    else:
        common["hovertemplate"] = _hover(view, 2)
    color: dict[str, Any]
    if coloraxis:
        color = {"coloraxis": coloraxis}
    elif kind == "surface":
        color = {
            "colorscale": COLORSCALE,
            "cmin": lo,
            "cmax": hi,
            "showscale": showscale,
            "colorbar": _colorbar(label, scale),
        }
    else:
        color = {
            "colorscale": COLORSCALE,
            "zmin": lo,
            "zmax": hi,
            "showscale": showscale,
            "colorbar": _colorbar(label, scale),
        }
    if kind == "contour" and uneven is None and not scale.log and "zmin" in color:
        # line colours and the bar span the drawn levels (Li's 0.1-9.6 took a twentieth of a 0-200 bar)
        assert lv is not None
        color.update(zmin=float(lv[0]), zmax=float(lv[-1]))
    if uneven is not None and "colorbar" in color:
        _label_basin_levels(color["colorbar"], scale, uneven)
    if kind in ("contour", "filled"):
        assert lv is not None
        return go.Contour(
            contours=_contour_spec(scale, lv, kind, uneven),
            connectgaps=False,
            line={"width": 1.2 if kind == "contour" else 0.5},
            **common,
            **color,
        )
    if kind == "heatmap":
        return go.Heatmap(connectgaps=False, **common, **color)
    if kind == "surface":
        return go.Surface(connectgaps=False, **common, **color)
    raise LandscapeError(f"--kind {kind!r}: unknown")


def _marks_2d(view: View, showlegend: bool = True) -> list[go.Scatter]:
    out = []
    for k, (pos, text) in enumerate(view.marks):
        out.append(
            go.Scatter(
                x=[pos[0]],
                y=[pos[1]],
                mode="markers",
                name=esc(text),
                showlegend=showlegend,
                marker={
                    "symbol": "star" if k == 0 else "circle",
                    "size": 16 if k == 0 else 10,
                    "color": "red" if k == 0 else "white",
                    "line": {"color": "black", "width": 1},
                },
                hovertemplate=f"{esc(text)}<br>x: %{{x:.4g}}<br>y: %{{y:.4g}}<extra></extra>",
            )
        )
    return out


def _marks_3d(view: View, scale: Scale) -> list[go.Scatter3d]:
    out = []
    for k, (pos, text) in enumerate(view.marks):
        v = value_at(view, pos)
        if not np.isfinite(v):
            continue
        h = float(np.clip(v, scale.vmin, scale.vmax))
        h = float(np.log10(h)) if scale.log else h
        lo, hi = _limits(scale)
        lift = 0.08 * (hi - lo)  # on a stem above the surface: at its height the surface hid it
        out.append(
            go.Scatter3d(
                x=[pos[0], pos[0]],
                y=[pos[1], pos[1]],
                z=[h, h + lift],
                mode="lines+markers",
                name=esc(text),
                line={"color": "black", "width": 3},
                marker={
                    "symbol": "diamond" if k == 0 else "circle",
                    "size": [2, 10],
                    "color": "red" if k == 0 else "white",
                    "line": {"color": "black", "width": 1},
                },
                hovertemplate=f"{esc(text)}<br>{esc(view.metric)}: {v:.5g}<extra></extra>",
            )
        )
    return out


def _range(c: np.ndarray, kind: str) -> list[float]:
    """Axis range: the grid's extent; a heatmap's cells are centred on the points, so half a cell more."""
    half = abs(float(c[1] - c[0])) / 2 if kind == "heatmap" and len(c) > 1 else 0.0
    return [float(c.min()) - half, float(c.max()) + half]


def _axes_2d(fig: go.Figure, view: View, kind: str = "contour", row: int | None = None, col: int | None = None) -> None:
    kw = {"row": row, "col": col} if row else {}
    fig.update_xaxes(title_text=esc(view.labels[0]), range=_range(view.coords[0], kind), **kw)
    fig.update_yaxes(title_text=esc(view.labels[1]), range=_range(view.coords[1], kind), **kw)
    if len(view.norms) == 2 and view.norms[0] and view.norms[0] == view.norms[1]:
        # directions of one kind: one unit is one length on both axes (round basins stay round; the
        # page's wide panel drew them as 3:1 ellipses)
        x_id = "x" if row is None else fig.get_subplot(row, col).xaxis.plotly_name.replace("axis", "")
        fig.update_yaxes(scaleanchor=x_id, scaleratio=1, constrain="domain", **kw)
        fig.update_xaxes(constrain="domain", **kw)


def _scene(view: View, label: str) -> dict[str, Any]:
    small = {"size": 11}
    return {
        "xaxis": {"title": {"text": esc(view.labels[0]), "font": small}},
        "yaxis": {"title": {"text": esc(view.labels[1]), "font": small}},
        "zaxis": {"title": {"text": esc(label), "font": small}},
        "aspectmode": "manual",
        "aspectratio": {"x": 1, "y": 1, "z": 0.6},
        # far enough that the box and its axis titles fit the panel (nearer, its bottom was cut off)
        "camera": {"eye": {"x": 1.55, "y": -1.55, "z": 1.0}, "center": {"x": 0, "y": 0, "z": -0.1}},
    }


def styled(fig: go.Figure, title: str, height: int = HEIGHT, note: str = "") -> go.Figure:
    fig.update_layout(
        title={"text": esc(title) + (f"<br><sup>{esc(note)}</sup>" if note else "")},
        template="plotly_white",
        height=height,
        margin={"l": 70, "r": 30, "t": 80, "b": 60},
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "xanchor": "right", "x": 1.0},
    )
    return fig


def _nan_note(views: list[View]) -> str:
    stopped = [f"{v.name} {v.incomplete}" if len(views) > 1 else v.incomplete for v in views if v.incomplete]
    if stopped:
        return "; ".join(stopped) + " (the rest are blank)"
    n = sum(int(np.isnan(v.values).sum()) for v in views)
    return f"{n} grid point(s) without a value are left blank" if n else ""


def figure_2d(view: View, kind: str, scale: Scale, levels: int | None = None, title: str | None = None) -> go.Figure:
    """A single contour / filled / heatmap / surface figure of one 2D view, the checkpoint marked."""
    fig = go.Figure()
    fig.add_trace(trace_2d(view, kind, scale, levels))
    if kind == "surface":
        for t in _marks_3d(view, scale):
            fig.add_trace(t)
        fig.update_layout(scene=_scene(view, _transform(view, scale)[1]))
        return styled(fig, title or view.name, height=620, note=_nan_note([view]))
    for t in _marks_2d(view):
        fig.add_trace(t)
    _axes_2d(fig, view, kind)
    return styled(fig, title or view.name, note=_nan_note([view]))


def _mode(ys: np.ndarray) -> str:
    """Lines, plus small markers when NaN gaps could leave a point with no neighbour (else invisible)."""
    return "lines+markers" if np.isnan(ys).any() else "lines"


def figure_line(view: View, scale: Scale | None = None, title: str | None = None) -> go.Figure:
    """1D curves through the checkpoint (the line, or both center lines of a grid), accuracy on a right axis."""
    curves = slices(view)
    accs: list[np.ndarray | None] = [None] * len(curves)
    if view.accuracy is not None:
        if view.dims == 1:
            accs = [view.accuracy]
        else:
            i, j = view.center
            accs = [view.accuracy[:, j], view.accuracy[i, :]]
    fig = make_subplots(rows=1, cols=len(curves), specs=[[{"secondary_y": True}] * len(curves)])
    for n, ((xs, ys, label), acc) in enumerate(zip(curves, accs)):
        fig.add_trace(
            go.Scatter(
                x=xs.tolist(),
                y=json_values(ys),
                mode=_mode(ys),
                name=esc(view.unit_label),
                line={"color": "#1f77b4", "width": 2.5},
                connectgaps=False,
                showlegend=n == 0,
                hovertemplate=f"x: %{{x:.4g}}<br>{esc(view.metric)}: %{{y:.5g}}<extra></extra>",
            ),
            row=1,
            col=n + 1,
            secondary_y=False,
        )
        if acc is not None:
            fig.add_trace(
                go.Scatter(
                    x=xs.tolist(),
                    y=json_values(acc),
                    mode=_mode(acc),
                    name="accuracy (%)",
                    line={"color": "#d62728", "width": 1.8, "dash": "dashdot"},
                    connectgaps=False,
                    showlegend=n == 0,
                    hovertemplate="x: %{x:.4g}<br>accuracy: %{y:.4g}%<extra></extra>",
                ),
                row=1,
                col=n + 1,
                secondary_y=True,
            )
            fig.update_yaxes(
                title_text="accuracy (%)",
                row=1,
                col=n + 1,
                secondary_y=True,
                showgrid=False,
                tickmode="auto",
                color="#d62728",
            )
        for k, (pos, text) in enumerate(view.marks):
            i = int(np.argmin(np.abs(xs - pos[0])))
            if np.isfinite(ys[i]):
                fig.add_trace(
                    go.Scatter(
                        x=[float(xs[i])],
                        y=[float(ys[i])],
                        mode="markers",
                        name=esc(text),
                        showlegend=n == 0,
                        marker={
                            "symbol": "star" if k == 0 else "circle",
                            "size": 15 if k == 0 else 10,
                            "color": "red" if k == 0 else "white",
                            "line": {"color": "black", "width": 1},
                        },
                        hovertemplate=f"{esc(text)}<br>{esc(view.metric)}: %{{y:.5g}}<extra></extra>",
                    ),
                    row=1,
                    col=n + 1,
                    secondary_y=False,
                )
        fig.update_xaxes(title_text=esc(label), row=1, col=n + 1)
        fig.update_yaxes(
            title_text=esc(view.unit_label),
            row=1,
            col=n + 1,
            secondary_y=False,
            type="log" if scale is not None and scale.log else None,
        )
        if scale is not None and (scale.clipped_high or scale.clipped_low) and not scale.log:
            fig.update_yaxes(range=[scale.vmin, scale.vmax], row=1, col=n + 1, secondary_y=False)
    return styled(fig, title or view.name, height=460, note=_nan_note([view]))


def plot_figures(
    view: View,
    kind: str,
    *,
    vmin: float | None = None,
    vmax: float | None = None,
    log: bool = False,
    levels: int | None = None,
    title: str | None = None,
) -> list[go.Figure]:
    """The interactive figures for `landscape plot`: one, or every kind for `all`."""
    from landscape.render.static import check_kind

    check_kind(kind, view.dims)
    scale = make_scale([view.values], vmin, vmax, log)
    if view.dims == 1 or kind == "line":
        return [figure_line(view, scale, title)]
    if kind == "all":
        base = title or view.name
        return [
            figure_2d(view, "contour", scale, levels, f"{base}: contour lines"),
            figure_2d(view, "filled", scale, levels, f"{base}: filled contour"),
            figure_2d(view, "heatmap", scale, levels, f"{base}: heatmap"),
            figure_2d(view, "surface", scale, levels, f"{base}: surface"),
            figure_line(view, scale, f"{base}: through the checkpoint"),
        ]
    return [figure_2d(view, kind, scale, levels, title)]


def compare_figure(
    views: list[View],
    kind: str,
    *,
    vmin: float | None = None,
    vmax: float | None = None,
    log: bool = False,
    levels: int | None = None,
    title: str | None = None,
) -> go.Figure:
    """Several runs side by side with one colour scale and the same axis ranges (1D: curves overlaid)."""
    from landscape.render.static import check_kind

    if len({v.dims for v in views}) != 1:
        raise LandscapeError("compare: all files must be 1D lines or all 2D grids, not a mix")
    for v in views:
        check_kind(kind, v.dims, f"{v.name}: ")
    scale = make_scale([v.values for v in views], vmin, vmax, log)
    if views[0].dims == 1 or kind == "line":
        fig = go.Figure()
        xlabel, names = shared_x_label(views)
        for v, name in zip(views, names):
            xs, ys, _ = slices(v)[0]
            fig.add_trace(
                go.Scatter(
                    x=xs.tolist(),
                    y=json_values(ys),
                    mode=_mode(ys),
                    name=esc(name),
                    connectgaps=False,
                    hovertemplate=f"x: %{{x:.4g}}<br>{esc(v.metric)}: %{{y:.5g}}<extra>{esc(v.name)}</extra>",
                )
            )
        fig.update_xaxes(title_text=esc(xlabel))
        fig.update_yaxes(title_text=esc(views[0].unit_label), type="log" if scale.log else None)
        if (scale.clipped_high or scale.clipped_low) and not scale.log:
            fig.update_yaxes(range=[scale.vmin, scale.vmax])
        return styled(fig, title or "compare", height=460)
    kind = "filled" if kind == "all" else kind
    n = len(views)
    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    typ = "scene" if kind == "surface" else "xy"
    fig = make_subplots(
        rows=rows,
        cols=cols,
        specs=[[{"type": typ}] * cols for _ in range(rows)],
        subplot_titles=[esc(v.name) for v in views],
        horizontal_spacing=0.13,
        vertical_spacing=0.14,
    )
    lo, hi = _limits(scale)
    label = _transform(views[0], scale)[1]
    xr = [min(_range(v.coords[0], kind)[0] for v in views), max(_range(v.coords[0], kind)[1] for v in views)]
    yr = [min(_range(v.coords[1], kind)[0] for v in views), max(_range(v.coords[1], kind)[1] for v in views)]
    for k, v in enumerate(views):
        r, c = k // cols + 1, k % cols + 1
        fig.add_trace(trace_2d(v, kind, scale, levels, coloraxis="coloraxis"), row=r, col=c)
        if kind == "surface":
            for t in _marks_3d(v, scale):
                t.showlegend = k == 0
                fig.add_trace(t, row=r, col=c)
            scene = "scene" if k == 0 else f"scene{k + 1}"
            fig.update_layout({scene: _scene(v, label)})
        else:
            for t in _marks_2d(v, showlegend=k == 0):
                fig.add_trace(t, row=r, col=c)
            fig.update_xaxes(title_text=esc(v.labels[0]), range=xr, row=r, col=c)
            fig.update_yaxes(title_text=esc(v.labels[1]), range=yr, row=r, col=c)
    colorbar = _colorbar(label, scale)
    uneven = _uneven(scale, _levels(scale, levels, views[0].metric, kind)) if kind in ("contour", "filled") else None
    if uneven is not None:  # the traces hold log10 heights above the minimum: so do the bar's limits
        lo, hi = _basin_transform(np.array([scale.vmin, scale.vmax]), scale, uneven).tolist()
        _label_basin_levels(colorbar, scale, uneven)
    fig.update_layout(coloraxis={"colorscale": COLORSCALE, "cmin": lo, "cmax": hi, "colorbar": colorbar})
    fig = styled(
        fig,
        title or "compare: one colour scale",
        height=(560 if kind == "surface" else 480) * rows,
        note=_nan_note(views),
    )
    fig.update_layout(width=None)
    return fig


# ---------------------------------------------------------------- pages


def plotlyjs_tag(mode: str = "inline") -> str:
    """The <script> that loads plotly.js: embedded (default, works offline) or from the CDN."""
    import plotly.offline

    if mode == "inline":
        return f'<script type="text/javascript">{plotly.offline.get_plotlyjs()}</script>'
    if mode == "cdn":
        version = plotly.offline.get_plotlyjs_version()
        return f'<script src="https://cdn.plot.ly/plotly-{version}.min.js" charset="utf-8"></script>'
    raise LandscapeError(f"--plotlyjs {mode!r}: expected one of {', '.join(PLOTLYJS_MODES)}")


def figure_div(fig: go.Figure, div_id: str) -> str:
    """A <div> and the script that draws `fig` into it (plotly.js must already be on the page)."""
    import plotly.io as pio

    # plotly's JSON writer escapes '<' as \\u003c, so no string in a figure can close the <script>
    data = pio.to_json(fig, validate=False, remove_uids=True, engine="json").replace("<", "\\u003c")
    return (
        f'<div class="figure" id="{esc(div_id)}"></div>\n'
        f'<script type="text/javascript">(function() {{ var f = {data}; '
        f'Plotly.newPlot("{esc(div_id)}", f.data, f.layout, {json.dumps(CONFIG)}); }})();</script>'
    )


STYLE = """
body { font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; margin: 1.5em auto; max-width: 1200px; color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.25em; border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 2em; } h3 { font-size: 1.05em; }
table { border-collapse: collapse; margin: .5em 0 1em; font-size: .9em; }
td, th { border: 1px solid #ddd; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #f5f5f5; } td.v { font-family: ui-monospace, Menlo, Consolas, monospace; word-break: break-all; }
.figure { width: 100%; margin: .5em 0 1.5em; } .note { color: #666; font-size: .9em; }
pre { background: #f7f7f7; padding: .6em; overflow-x: auto; font-size: .85em; }
"""


def html_page(title: str, body: str, plotlyjs: str = "inline") -> str:
    """A whole HTML document: plotly.js once in the head, then `body` (already escaped HTML)."""
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<title>{esc(title)}</title>\n<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<style>{STYLE}</style>\n{plotlyjs_tag(plotlyjs)}\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


def figures_page(figs: list[go.Figure], title: str, plotlyjs: str = "inline") -> str:
    """A page of figures (plotly.js included once)."""
    divs = "\n".join(figure_div(f, f"figure-{k + 1}") for k, f in enumerate(figs))
    return html_page(title, divs, plotlyjs)


def write_page(text: str, path: str | Path) -> Path:
    """Write an HTML page (UTF-8), making parent folders."""
    path = Path(path)
    with replace_whole(path, keep_suffix=True) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path
