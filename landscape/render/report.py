"""`landscape report`: one HTML file with everything a set of results files holds.

For each file: a provenance table (checkpoint and its hash, model, data, options, versions, device,
time), the axes, the headline numbers (loss at the checkpoint, min/max, and the curvature and
roughness numbers when the file has /hessian or /roughness), and every figure interactive.
plotly.js is included once, however many figures. Every string that came from a user or a file
(file names, model names, metadata, labels) goes through `html.escape`; figure JSON is written by
plotly with '<' escaped, so nothing in a results file can become markup or script.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from landscape import __version__
from landscape.errors import LandscapeError
from landscape.io.analysis_store import analysis_groups
from landscape.io.results import describe, open_results, read_sweep
from landscape.render.common import fmt, make_scale, make_view
from landscape.render.interactive import (
    compare_figure,
    esc,
    figure_2d,
    figure_div,
    figure_line,
    html_page,
)
from landscape.summary import sweep_numbers

PROVENANCE = (
    ("kind", "kind"),
    ("created", "created"),
    ("command", "command"),
    ("checkpoint", "checkpoint"),
    ("checkpoint_sha256", "checkpoint sha256"),
    ("sample", "sample"),
    ("model", "model"),
    ("data", "data"),
    ("data_sha256", "data sha256"),
    ("samples", "samples"),
    ("loss", "loss"),
    ("parameters", "parameters"),
    ("device", "device"),
    ("dtype", "dtype"),
    ("seed", "seed"),
    ("tool_version", "landscape version"),
    ("torch_version", "torch version"),
    ("complete", "complete"),
)
NUMBER_NAMES = {
    "grid": "grid",
    "points_done": "points done",
    "points": "points",
    "center": "checkpoint at",
    "loss_center": "loss at the checkpoint",
    "loss_min": "lowest loss",
    "loss_min_at": "lowest loss at",
    "loss_max": "highest loss",
    "nonfinite_points": "points with NaN/inf loss",
    "accuracy_center": "accuracy at the checkpoint",
}
MAX_VALUES = 16  # datasets with at most this many values are shown in full


def _table(rows: list[tuple[str, str]], head: tuple[str, str] | None = None) -> str:
    """A two-column table; both columns escaped here."""
    out = ["<table>"]
    if head:
        out.append(f"<tr><th>{esc(head[0])}</th><th>{esc(head[1])}</th></tr>")
    for k, v in rows:
        out.append(f'<tr><th>{esc(k)}</th><td class="v">{esc(v)}</td></tr>')
    out.append("</table>")
    return "\n".join(out)


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def group_rows(path: str | Path, group: str) -> list[tuple[str, str]]:
    """Every attribute and every small dataset under one HDF5 group, as (name, value) rows.

    Generic on purpose: the curvature and roughness layouts may grow, and a report must show
    whatever numbers they hold without knowing their names. Large datasets are summarised by shape
    (and range, when numeric).
    """
    rows: list[tuple[str, str]] = []
    with open_results(path) as f:
        if group not in f:
            return rows
        root = f[group]

        def attrs(prefix: str, obj: Any) -> None:
            for k, v in obj.attrs.items():
                rows.append((f"{prefix}{k}" if prefix else k, _short(_plain(v))))

        attrs("", root)

        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Group):
                attrs(f"{name}/", obj)
                return
            if name.split("/")[-1] == "layout":  # the tensor table that unflattens vectors: structure, not numbers
                return
            if obj.dtype.kind in "fiub" and obj.size <= MAX_VALUES:
                rows.append((name, _short(_plain(obj[()]))))
            elif obj.dtype.kind in "fiu" and 0 < obj.size <= 1_000_000:
                data = np.asarray(obj[()], dtype=np.float64)
                fin = data[np.isfinite(data)]
                rng = f", range {fin.min():.6g} .. {fin.max():.6g}" if fin.size else ""
                rows.append((name, f"{'x'.join(map(str, obj.shape))} values{rng}"))
            else:
                rows.append((name, f"{'x'.join(map(str, obj.shape)) or 'scalar'} {obj.dtype}"))
            attrs(f"{name}: ", obj)

        root.visititems(visit)
    return rows


def _short(value: Any) -> str:
    if isinstance(value, float):
        return fmt(value)
    if isinstance(value, list):
        flat = np.asarray(value, dtype=object).ravel().tolist() if value else []
        if flat and all(isinstance(v, (int, float)) for v in flat):
            return "[" + ", ".join(fmt(float(v)) if isinstance(v, float) else str(v) for v in flat) + "]"
    text = str(value)
    return text if len(text) <= 400 else text[:400] + " …"


def _provenance(attrs: dict[str, Any]) -> list[tuple[str, str]]:
    rows = []
    for key, name in PROVENANCE:
        if key in attrs and attrs[key] != "":
            v = attrs[key]
            rows.append((name, "yes" if v is True else "no (finish it with --resume)" if v is False else str(v)))
    return rows


def _settings(attrs: dict[str, Any]) -> str:
    text = attrs.get("settings", "")
    try:
        settings = json.loads(text) if isinstance(text, str) and text else {}
    except json.JSONDecodeError:
        settings = {"settings": text}
    if isinstance(settings, dict) and "coords" in settings:  # a grid is long and already in the numbers
        settings = dict(settings)
        settings["coords"] = {
            k: f"{len(v)} points, {v[0]:.4g} .. {v[-1]:.4g}" if v else "[]" for k, v in settings["coords"].items()
        }
    rest = {k: v for k, v in attrs.items() if k not in dict(PROVENANCE) and k != "settings"}
    return (
        "<details><summary>settings and every attribute</summary>"
        f"<pre>{esc(json.dumps({'settings': settings, 'attributes': rest}, indent=2, sort_keys=True, default=str))}</pre>"
        "</details>"
    )


class _Ids:
    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> str:
        self.n += 1
        return f"figure-{self.n}"


def _sweep_section(path: Path, sweep: dict[str, Any], ids: _Ids) -> str:
    parts = []
    axis_rows = []
    for name in sweep["axes"]:
        a = sweep["axis_attrs"].get(name, {})
        bits = [str(a.get("label", name))]
        for k in ("kind", "normalization", "ignore", "seed", "source"):
            if a.get(k, "") != "":
                bits.append(f"{k}={a[k]}")
        for k, v in a.items():
            if k.startswith("cosine_with"):
                bits.append(f"{k}={fmt(v)}")
        c = sweep["coords"][name]
        bits.append(f"{len(c)} points {c.min():.4g} .. {c.max():.4g}")
        axis_rows.append((name, "; ".join(bits)))
    parts.append("<h3>Axes</h3>" + _table(axis_rows))
    nums = sweep_numbers(sweep)
    rows = [(NUMBER_NAMES.get(k, k), fmt(v)) for k, v in nums.items()]
    for k, v in sweep.get("sweep_attrs", {}).items():
        if k not in ("axes",):
            rows.append((f"sweep: {k}", _short(v)))
    parts.append("<h3>Numbers</h3>" + _table(rows))
    view = make_view(sweep, "loss", path)
    parts.append("<h3>Figures</h3>")
    figs = []
    if view.dims == 1:
        figs.append(figure_line(view, make_scale([view.values]), f"{view.name}: loss along the line"))
    elif view.dims == 2:
        if np.isfinite(view.values).any():
            scale = make_scale([view.values])
            figs += [
                figure_2d(view, "filled", scale, None, f"{view.name}: loss, filled contours"),
                figure_2d(view, "surface", scale, None, f"{view.name}: loss surface"),
                figure_line(view, scale, f"{view.name}: through the checkpoint"),
            ]
            if sweep.get("accuracy") is not None:
                acc = make_view(sweep, "accuracy", path)
                if np.isfinite(acc.values).any():
                    figs.append(figure_2d(acc, "heatmap", make_scale([acc.values]), None, f"{view.name}: accuracy (%)"))
        else:
            parts.append('<p class="note">no finite loss value yet: nothing to draw</p>')
    parts += [figure_div(f, ids()) for f in figs]
    parts.append(_data_sets_section(path, sweep, ids))
    return "\n".join(parts)


def _data_sets_section(path: Path, sweep: dict[str, Any], ids: _Ids) -> str:
    """A sweep made with --eval-data: each set's loss and its gap to the main data's, and the grids side by side."""
    from landscape.io.analysis_store import has_group, read_group
    from landscape.render.common import data_set_views
    from landscape.render.interactive import compare_figure

    if not has_group(path, "data_sets"):
        return ""
    group = read_group(path, "data_sets")
    parts = ["<h3>Data sets</h3>" + _table(group_rows(path, "data_sets"))]
    try:
        views = data_set_views(sweep, group, "loss", path)
        kind = "line" if views[0].dims == 1 else "filled"
        parts.append(figure_div(compare_figure(views, kind, title="loss on each data set"), ids()))
    except Exception as exc:  # noqa: BLE001 - a figure that cannot be drawn costs itself, not the report
        parts.append(f'<p class="note">data set figure unavailable: {esc(exc)}</p>')
    return "\n".join(parts)


def _curvature_figures(path: Path, ids: _Ids) -> str:
    """Spectrum figures drawn by landscape.render.spectrum, for what the file holds (top eigenvalues, density).

    A report never fails because one figure cannot be drawn: the reason is shown in its place.
    """
    try:
        from landscape.io.curvature import read_curvature
        from landscape.render.spectrum import spectrum_plotly
    except ImportError:
        return ""
    try:
        curv = read_curvature(path)
    except Exception as exc:  # noqa: BLE001 - an unreadable group costs its figures, not the report
        return f'<p class="note">curvature figures unavailable: {esc(exc)}</p>'
    out = []
    wanted = []
    if curv.get("eigenvalues") is not None:
        wanted.append("eigenvalues")
    if curv.get("lanczos") is not None or curv.get("density") is not None:
        wanted.append("density")
    for kind in wanted:
        try:
            fig = spectrum_plotly(curv, kind, None, name=Path(path).stem)
        except Exception as exc:  # noqa: BLE001
            out.append(f'<p class="note">{esc(kind)} figure unavailable: {esc(exc)}</p>')
            continue
        if fig is not None:
            out.append(figure_div(fig, ids()))
    return "\n".join(out)


def _analysis_figure(path: Path, ids: _Ids) -> str:
    """The interactive figure of a roughness, path or track file (landscape.render.analysis_interactive), if any."""
    try:
        from landscape.render.analysis_interactive import analysis_plotly

        fig = analysis_plotly(path)
    except Exception as exc:  # noqa: BLE001 - a figure that cannot be drawn costs itself, not the report
        return f'<p class="note">analysis figure unavailable: {esc(exc)}</p>'
    return figure_div(fig, ids()) if fig is not None else ""


def file_section(path: str | Path, ids: _Ids | None = None) -> str:
    """The report's part for one results file (HTML, every string escaped)."""
    path = Path(path)
    ids = ids or _Ids()
    desc = describe(path)
    attrs = desc["attrs"]
    names = set(desc["datasets"])
    parts = [f"<section><h2>{esc(path.name)}</h2>", f'<p class="note">{esc(path)}</p>']
    parts.append("<h3>Provenance</h3>" + _table(_provenance(attrs)))
    if "sweep/loss" in names:
        parts.append(_sweep_section(path, read_sweep(path), ids))
    if any(n.startswith("hessian/") for n in names):
        parts.append("<h3>Curvature</h3>" + _table(group_rows(path, "hessian")))
        parts.append(_curvature_figures(path, ids))
    for group in analysis_groups(
        path
    ):  # roughness, path, plane, trajectory, track, sharpness: their numbers, and a figure
        parts.append(f"<h3>{esc(group.capitalize())}</h3>" + _table(group_rows(path, group)))
    parts.append(_analysis_figure(path, ids))
    parts.append(_settings(attrs))
    parts.append("</section>")
    return "\n".join(parts)


def build_report(paths: list[str | Path], title: str | None = None, plotlyjs: str = "inline") -> str:
    """The whole report as one HTML document (plotly.js once, inline by default)."""
    if not paths:
        raise LandscapeError("report: give at least one results file")
    files = [Path(p) for p in paths]
    title = title or ("landscape report: " + ", ".join(p.name for p in files))
    ids = _Ids()
    body = [
        f"<h1>{esc(title)}</h1>",
        f'<p class="note">made by landscape {esc(__version__)} from {len(paths)} results file(s); '
        "every figure is interactive: hover for values, drag to zoom or rotate, double-click to reset.</p>",
    ]
    sweeps = []
    for p in paths:
        try:
            sweeps.append((p, read_sweep(p)))
        except LandscapeError:
            continue
    if len(sweeps) >= 2:
        views = [make_view(s, "loss", p) for p, s in sweeps]
        if len({v.dims for v in views}) == 1 and all(np.isfinite(v.values).any() for v in views):
            body.append("<h2>Comparison</h2>")
            kind = "filled" if views[0].dims == 2 else "line"
            body.append(figure_div(compare_figure(views, kind, title="loss, one colour scale"), ids()))
    body += [file_section(p, ids) for p in paths]
    return html_page(title, "\n".join(body), plotlyjs)
