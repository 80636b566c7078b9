"""Figures, reports and exports read back and compared with the HDF5 file they came from.

The synthetic results file has a known loss f(x, y) = 0.5 + x^2 + 0.1 x + 2 y^2 on a 7 x 5
(non-square) grid, one point not done and one diverged (NaN), so a transposed axis, a NaN drawn
as zero or a shifted center shows up as a wrong number.
"""

from __future__ import annotations

import csv
import json
import re
import sys
import types
from pathlib import Path

import h5py
import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402

from landscape.io.results import SweepFile, read_sweep  # noqa: E402
from landscape.params import Layout  # noqa: E402
from landscape.render.common import LI_LEVELS, View, contour_levels, make_scale, make_view  # noqa: E402

XS = np.linspace(-1.5, 1.5, 7)
YS = np.linspace(-1.0, 1.0, 5)
NOT_DONE = (0, 0)  # corner never evaluated
DIVERGED = (6, 4)  # evaluated, loss non-finite
EVIL = "<script data-evil>window.__pwned = 1</script>"


def truth(x, y):
    return 0.5 + x**2 + 0.1 * x + 2 * y**2


def make_results(path: Path, dims: int = 2, evil: bool = False, accuracy: bool = True) -> Path:
    """A finished results file with a known loss; `evil` puts markup in every user string."""
    path = Path(path)
    coords = {"x": XS} if dims == 1 else {"x": XS, "y": YS}
    label = (lambda i: f"<b>dir {i}</b>{EVIL}") if evil else (lambda i: f"filter-normalized random direction {i}")
    axes = {
        n: (
            np.full(3, float(i + 1), dtype=np.float32),
            {"kind": "random", "normalization": "filter", "seed": 0, "label": label(i + 1)},
        )
        for i, n in enumerate(coords)
    }
    attrs = {
        "kind": "sweep",
        "created": "2026-01-01T00:00:00+00:00",
        "command": f"landscape sweep {EVIL if evil else ''}",
        "checkpoint": f"/ckpt/{EVIL if evil else 'model'}.pt",
        "checkpoint_sha256": "ab" * 32,
        "model": EVIL if evil else "net.py:make",
        "data": "data.npz",
        "data_sha256": "cd" * 32,
        "samples": 100,
        "loss": "cross-entropy",
        "parameters": 3,
        "device": "cpu",
        "dtype": "float64",
        "seed": 0,
        "torch_version": "2.13.0",
    }
    store = SweepFile.create(
        path,
        attrs=attrs,
        settings={"note": EVIL if evil else "plain", "coords": {k: v.tolist() for k, v in coords.items()}},
        axes=axes,
        layout=Layout(("w",), ((3,),)),
        coords=coords,
        has_accuracy=accuracy,
    )
    grids = np.meshgrid(*coords.values(), indexing="ij")
    loss = truth(grids[0], grids[1] if dims == 2 else 0.0)
    acc = np.clip(1.0 - 0.2 * loss, 0, 1)
    idx = np.arange(loss.size)
    if dims == 2:
        loss[DIVERGED] = np.nan
        idx = np.array([k for k in idx if k != np.ravel_multi_index(NOT_DONE, loss.shape)])
    else:
        loss[5] = np.nan
        idx = idx[idx != 0]
    store.write(idx, loss.reshape(-1)[idx], acc.reshape(-1)[idx] if accuracy else None)
    store.finish({"strategy": "loop"})
    return path


def expected(dims: int = 2) -> np.ndarray:
    """What every figure must show: the truth, NaN where not done or diverged."""
    if dims == 1:
        v = truth(XS, 0.0)
        v[0] = v[5] = np.nan
        return v
    v = truth(*np.meshgrid(XS, YS, indexing="ij"))
    v[NOT_DONE] = v[DIVERGED] = np.nan
    return v


@pytest.fixture
def grid(tmp_path):
    return make_results(tmp_path / "grid.h5")


@pytest.fixture
def line(tmp_path):
    return make_results(tmp_path / "line.h5", dims=1)


@pytest.fixture
def evil(tmp_path):
    return make_results(tmp_path / "evil.h5", evil=True)


@pytest.fixture
def captured(monkeypatch):
    """Record the arrays handed to matplotlib's drawing calls."""
    calls: dict[str, list] = {}

    def spy(name, orig):
        def wrapper(self, *args, **kwargs):
            if len(args) >= 3 and np.ndim(args[2]) == 2 and np.shape(args[2])[1] > 1:  # not a colour bar's own mesh
                calls.setdefault(name, []).append((args, kwargs))
            return orig(self, *args, **kwargs)

        return wrapper

    for name in ("contour", "contourf", "pcolormesh"):
        monkeypatch.setattr(Axes, name, spy(name, getattr(Axes, name)))
    from mpl_toolkits.mplot3d import Axes3D

    monkeypatch.setattr(Axes3D, "plot_surface", spy("plot_surface", Axes3D.plot_surface))
    return calls


def _same(a, b) -> None:
    a = np.ma.filled(np.ma.asarray(a, dtype=np.float64), np.nan)
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    np.testing.assert_allclose(a[~np.isnan(a)], b[~np.isnan(b)], rtol=1e-12)


# ---------------------------------------------------------------- the view all figures share


def test_view_matches_file_and_marks_checkpoint(grid):
    view = make_view(read_sweep(grid), "loss", grid)
    assert view.values.shape == (7, 5)
    _same(view.values, expected())
    assert view.labels == ["filter-normalized random direction 1", "filter-normalized random direction 2"]
    assert view.marks[0] == ((0.0, 0.0), "checkpoint")
    assert view.center == (3, 2)
    acc = make_view(read_sweep(grid), "accuracy", grid)
    assert np.nanmax(acc.values) <= 100 and np.isnan(acc.values[NOT_DONE])


def test_levels_default_li_log_and_n():
    scale = make_scale([np.array([0.05, 4.0])])
    np.testing.assert_allclose(contour_levels(scale), LI_LEVELS[LI_LEVELS <= 4.0])
    small = make_scale([np.array([0.001, 0.01])])
    lv = contour_levels(small)
    assert len(lv) >= 5 and lv.min() > 0.001 and lv.max() < 0.01
    log = make_scale([np.array([1e-3, 10.0])], log=True)
    lv = contour_levels(log, 8)
    assert len(lv) == 8 and np.allclose(np.diff(np.log(lv)), np.log(lv[1] / lv[0]))
    assert 4 <= len(contour_levels(scale, 6)) <= 8


def test_scale_clips_keeps_nan():
    s = make_scale([np.array([0.0, 1.0, 100.0, np.nan])], vmax=10)
    assert s.clipped_high and s.extend == "max"
    out = s.clip(np.array([0.0, 1.0, 100.0, np.nan]))
    assert out[2] == 10 and np.isnan(out[3])


# ---------------------------------------------------------------- static (matplotlib)


def test_static_contour_arrays_axis_order_nan(grid, captured, cli, tmp_path):
    r = cli("plot", grid, "--kind", "contour", "-o", tmp_path / "c.png")
    assert r.code == 0, r.err
    ((args, kwargs),) = captured["contour"]
    X, Y, Z = args[:3]
    np.testing.assert_array_equal(X, XS)
    np.testing.assert_array_equal(Y, YS)
    assert Z.shape == (5, 7)  # rows are y
    _same(np.ma.filled(Z, np.nan).T, expected())
    assert np.ma.getmaskarray(Z)[NOT_DONE[::-1]] and np.ma.getmaskarray(Z)[DIVERGED[::-1]]
    # default levels: Li et al.'s 0.1..10 step 0.5 inside the data range
    lv = kwargs["levels"]
    assert np.allclose(np.diff(lv), 0.5) and np.isclose(lv[0] % 0.5, 0.1)
    assert (tmp_path / "c.png").stat().st_size > 10_000


def test_static_figure_labels_and_center():
    import tempfile

    from landscape.render.static import plot_figure

    with tempfile.TemporaryDirectory() as d:
        path = make_results(Path(d) / "g.h5")
        fig = plot_figure(make_view(read_sweep(path), "loss", path), "contour")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "filter-normalized random direction 1"
    assert ax.get_ylabel() == "filter-normalized random direction 2"
    stars = [line for line in ax.get_lines() if line.get_marker() == "*"]
    assert len(stars) == 1 and tuple(stars[0].get_xydata()[0]) == (0.0, 0.0)
    plt.close(fig)


def test_static_filled_heatmap_vmax_clip(grid, captured, cli, tmp_path):
    r = cli("plot", grid, "--kind", "filled", "--vmax", "2", "-o", tmp_path / "f.svg")
    assert r.code == 0, r.err
    ((args, kwargs),) = captured["contourf"]
    Z = np.ma.filled(args[2], np.nan).T
    want = np.minimum(expected(), 2.0)
    _same(Z, want)
    r = cli("plot", grid, "--kind", "heatmap", "--vmax", "2", "-o", tmp_path / "h.pdf")
    assert r.code == 0, r.err
    ((args, kwargs),) = captured["pcolormesh"]
    _same(np.ma.filled(args[2], np.nan).T, want)
    assert kwargs["shading"] == "nearest" and kwargs["norm"].vmax == 2.0
    assert (tmp_path / "f.svg").read_text().count("<svg") == 1
    assert (tmp_path / "h.pdf").read_bytes()[:4] == b"%PDF"


def test_static_surface_and_all(grid, captured, cli, tmp_path):
    r = cli("plot", grid, "--kind", "all", "-o", tmp_path / "all.png")
    assert r.code == 0, r.err
    ((args, _),) = captured["plot_surface"]
    X, Y, Z = args
    assert X.shape == Y.shape == Z.shape == (5, 7)
    np.testing.assert_array_equal(X[0], XS)
    np.testing.assert_array_equal(Y[:, 0], YS)
    _same(np.ma.filled(Z, np.nan).T, expected())
    assert {"contour", "contourf", "pcolormesh"} <= set(captured)


def test_static_line_1d_with_accuracy(line):
    from landscape.render.static import plot_figure

    sweep = read_sweep(line)
    fig = plot_figure(make_view(sweep, "loss", line), "line")
    ax, ax2 = fig.axes
    loss_line = ax.get_lines()[0]
    np.testing.assert_array_equal(loss_line.get_xdata(), XS)
    _same(loss_line.get_ydata(), expected(1))
    acc = ax2.get_lines()[0].get_ydata()
    _same(acc, np.where(sweep["done"], 100 * np.asarray(sweep["accuracy"]), np.nan))
    assert ax.get_xlabel() == "filter-normalized random direction 1"
    plt.close(fig)


def test_static_line_through_center_of_grid(grid):
    from landscape.render.static import plot_figure

    fig = plot_figure(make_view(read_sweep(grid), "loss", grid), "line")
    axes = [a for a in fig.axes if a.get_lines() and a.get_lines()[0].get_color() == "tab:blue"]
    along_x, along_y = (a.get_lines()[0] for a in axes)
    _same(along_x.get_ydata(), expected()[:, 2])
    np.testing.assert_array_equal(along_y.get_xdata(), YS)
    _same(along_y.get_ydata(), expected()[3, :])
    plt.close(fig)


def test_static_compare_shares_scale(grid, tmp_path, captured):
    from landscape.render.static import compare_figure

    other = make_results(tmp_path / "other.h5")
    with h5py.File(other, "r+") as f:
        f["sweep/loss"][...] = f["sweep/loss"][()] * 3
    views = [make_view(read_sweep(p), "loss", p) for p in (grid, other)]
    fig = compare_figure(views, "heatmap")
    norms = [kw["norm"] for _, kw in captured["pcolormesh"]]
    assert len(norms) == 2 and norms[0].vmin == norms[1].vmin and norms[0].vmax == norms[1].vmax
    assert np.isclose(norms[0].vmax, np.nanmax(expected()) * 3)
    plt.close(fig)


# ---------------------------------------------------------------- interactive (plotly in HTML)


def figures_in(html: str) -> list[dict]:
    """The plotly figures (data + layout) embedded in an HTML page written by landscape."""
    return [json.loads(m) for m in re.findall(r"var f = (\{.*?\}); Plotly\.newPlot", html, flags=re.S)]


def _z(trace) -> np.ndarray:
    return np.array([[np.nan if v is None else v for v in row] for row in trace["z"]], dtype=np.float64)


@pytest.mark.parametrize(
    "kind,ptype", [("contour", "contour"), ("filled", "contour"), ("heatmap", "heatmap"), ("surface", "surface")]
)
def test_html_traces_hold_the_file(grid, cli, tmp_path, kind, ptype):
    out = tmp_path / f"{kind}.html"
    r = cli("plot", grid, "--kind", kind, "-o", out)
    assert r.code == 0, r.err
    (fig,) = figures_in(out.read_text())
    trace = next(t for t in fig["data"] if t["type"] == ptype)
    assert trace["x"] == XS.tolist() and trace["y"] == YS.tolist()
    z = _z(trace)
    assert z.shape == (5, 7)
    _same(z.T, expected())
    marks = [t for t in fig["data"] if t.get("name") == "checkpoint"]
    assert marks and set(marks[0]["x"]) == {0.0} and set(marks[0]["y"]) == {0.0}  # 3D: a stem at the checkpoint
    if ptype != "surface":
        assert fig["layout"]["xaxis"]["title"]["text"] == "filter-normalized random direction 1"
        assert fig["layout"]["yaxis"]["title"]["text"] == "filter-normalized random direction 2"
    assert "%{z" in trace["hovertemplate"]


def test_html_line_and_all(grid, line, cli, tmp_path):
    out = tmp_path / "line.html"
    assert cli("plot", line, "-o", out).code == 0
    (fig,) = figures_in(out.read_text())
    loss, acc = fig["data"][0], fig["data"][1]
    assert loss["x"] == XS.tolist()
    _same(np.array([np.nan if v is None else v for v in loss["y"]]), expected(1))
    assert acc["name"] == "accuracy (%)" and acc["yaxis"] == "y2"
    out = tmp_path / "all.html"
    assert cli("plot", grid, "--kind", "all", "-o", out).code == 0
    html = out.read_text()
    figs = figures_in(html)
    assert [f["data"][0]["type"] for f in figs] == ["contour", "contour", "heatmap", "surface", "scatter"]
    assert (
        figs[0]["data"][0]["contours"]["coloring"] == "lines" and figs[1]["data"][0]["contours"]["coloring"] == "fill"
    )
    surface = figs[3]["data"]
    stem = next(t for t in surface if t["type"] == "scatter3d")  # the checkpoint on a stem above the surface
    assert stem["z"][1] > stem["z"][0]
    import plotly.offline

    assert html.count(plotly.offline.get_plotlyjs()[:300]) == 1  # plotly.js once


def test_html_log_and_vmax(grid, cli, tmp_path):
    out = tmp_path / "log.html"
    assert cli("plot", grid, "--kind", "heatmap", "--log", "-o", out).code == 0
    (fig,) = figures_in(out.read_text())
    t = fig["data"][0]
    _same(_z(t).T, np.log10(expected()))
    _same(np.array([[np.nan if v is None else v for v in r] for r in t["customdata"]]).T, expected())
    out = tmp_path / "vmax.html"
    assert cli("plot", grid, "--kind", "surface", "--vmax", "2", "-o", out).code == 0
    (fig,) = figures_in(out.read_text())
    t = fig["data"][0]
    _same(_z(t).T, np.minimum(expected(), 2))
    assert t["cmax"] == 2


def test_html_cdn_is_small(grid, cli, tmp_path):
    out = tmp_path / "cdn.html"
    assert cli("plot", grid, "--plotlyjs", "cdn", "-o", out).code == 0
    html = out.read_text()
    assert len(html) < 200_000 and 'src="https://cdn.plot.ly/plotly-' in html
    assert cli("plot", grid, "--plotlyjs", "web", "-o", out).code == 2


def test_html_compare_one_colour_scale(grid, tmp_path, cli):
    (tmp_path / "sub").mkdir()
    other = make_results(tmp_path / "sub" / "grid.h5")
    with h5py.File(other, "r+") as f:
        f["sweep/loss"][...] = f["sweep/loss"][()] + 5
    out = tmp_path / "cmp.html"
    r = cli("compare", grid, other, "-o", out)
    assert r.code == 0, r.err
    (fig,) = figures_in(out.read_text())
    traces = [t for t in fig["data"] if t["type"] == "contour"]
    assert len(traces) == 2 and all(t["coloraxis"] == "coloraxis" for t in traces)
    ca = fig["layout"]["coloraxis"]
    assert np.isclose(ca["cmin"], np.nanmin(expected())) and np.isclose(ca["cmax"], np.nanmax(expected()) + 5)
    _same(_z(traces[1]).T, expected() + 5)
    assert traces[0]["name"] != traces[1]["name"]  # same stem, told apart by folder


def test_compare_static_and_errors(grid, line, cli, tmp_path):
    r = cli("compare", grid, grid, "--kind", "contour", "-o", tmp_path / "c.png")
    assert r.code == 0, r.err
    r = cli("compare", line, line, "-o", tmp_path / "l.png")
    assert r.code == 0, r.err
    r = cli("compare", grid, line, "-o", tmp_path / "x.png")
    assert r.code == 2 and "mix" in r.err
    r = cli("compare", grid, "-o", tmp_path / "x.png")
    assert r.code == 2 and "at least two" in r.err


# ---------------------------------------------------------------- report


def test_report_escapes_and_holds_everything(grid, line, evil, cli, tmp_path):
    with h5py.File(grid, "r+") as f:  # curvature and roughness results, layout unknown to the report
        h = f.create_group("hessian")
        h.create_dataset("eigenvalues", data=np.array([12.5, 3.25]))
        h.create_dataset("residuals", data=np.array([1e-6, 2e-6]))
        h.create_dataset("converged", data=np.array([True, True]))
        h.create_dataset("eigenvectors", data=np.zeros((2, 40)))
        t = h.create_dataset("trace", data=np.array(41.0))
        t.attrs["stderr"] = 0.75
        r = f.create_group("roughness")
        r.attrs["ri"] = 0.0625
        r.create_dataset("tv", data=np.array([10.0, 10.5]))
    out = tmp_path / "report.html"
    res = cli("report", grid, line, evil, "-o", out, "--title", "<i>mine</i>")
    assert res.code == 0, res.err
    html = out.read_text()
    body = html.split("<body>", 1)[1]
    assert "data-evil" not in body.replace("&lt;script data-evil&gt;", "")
    assert "&lt;script data-evil&gt;window.__pwned = 1&lt;/script&gt;" in body  # shown as text
    assert "<i>mine</i>" not in html and "&lt;i&gt;mine&lt;/i&gt;" in html
    assert "ab" * 32 in body and "net.py:make" in body and "torch version" in body
    for text in ("12.5", "3.25", "41", "0.75", "0.0625", "eigenvectors", "2x40"):
        assert text in body
    import plotly.offline

    assert html.count(plotly.offline.get_plotlyjs()[:300]) == 1
    figs = figures_in(html)
    assert len(figs) >= 7  # comparison + grid (3 + accuracy) + line + evil (...)
    grid_fig = next(f for f in figs if f["data"][0]["type"] == "contour" and f["data"][0].get("name") == "grid")
    _same(_z(grid_fig["data"][0]).T, expected())
    # the label with markup reaches plotly escaped, so plotly.js shows it as text too
    assert any("&lt;b&gt;dir 1&lt;/b&gt;" in json.dumps(f["layout"]) for f in figs)
    assert "<b>dir 1</b>" not in json.dumps([f["layout"] for f in figs])


def test_report_uses_spectrum_when_available(grid, cli, tmp_path, monkeypatch):
    with h5py.File(grid, "r+") as f:
        f.create_group("hessian").create_dataset("eigenvalues", data=np.array([1.0]))
        f["hessian"].create_dataset("lanczos/alpha", data=np.ones((1, 3)))
    seen = []
    _fake_spectrum(monkeypatch, seen)
    out = tmp_path / "r.html"
    assert cli("report", grid, "-o", out).code == 0
    assert ("plotly", "eigenvalues") in seen and ("plotly", "density") in seen
    assert any(f["layout"].get("title", {}).get("text") == "fake spectrum" for f in figures_in(out.read_text()))


# ---------------------------------------------------------------- plot: curvature files go to render.spectrum


def _fake_spectrum(monkeypatch, seen):
    import plotly.graph_objects as go

    from landscape.render.spectrum import default_kind as real_default_kind

    curvature = types.ModuleType("landscape.io.curvature")
    curvature.read_curvature = lambda path: {"path": str(path), "eigenvalues": np.ones(1), "lanczos": {}}
    spectrum = types.ModuleType("landscape.render.spectrum")

    def spectrum_figure(curv, kind, sigma, name=""):
        seen.append(("mpl", kind, sigma))
        fig, ax = plt.subplots()
        ax.plot([0, 1], [1, 0])
        return fig

    def spectrum_plotly(curv, kind, sigma, name=""):
        seen.append(("plotly", kind))
        return go.Figure(go.Scatter(x=[0, 1], y=[1, 0]), layout={"title": {"text": "fake spectrum"}})

    spectrum.spectrum_figure = spectrum_figure
    spectrum.spectrum_plotly = spectrum_plotly
    spectrum.default_kind = real_default_kind
    monkeypatch.setitem(sys.modules, "landscape.io.curvature", curvature)
    monkeypatch.setitem(sys.modules, "landscape.render.spectrum", spectrum)
    import landscape.io
    import landscape.render

    monkeypatch.setattr(landscape.io, "curvature", curvature, raising=False)
    monkeypatch.setattr(landscape.render, "spectrum", spectrum, raising=False)


def test_plot_dispatches_curvature(grid, cli, tmp_path, monkeypatch):
    seen = []
    _fake_spectrum(monkeypatch, seen)
    r = cli("plot", grid, "--kind", "density", "--sigma", "0.01", "-o", tmp_path / "d.png")
    assert r.code == 0, r.err
    assert seen == [("mpl", "density", 0.01)]
    hess = tmp_path / "hess.h5"
    with h5py.File(hess, "w") as f:
        f.attrs["format"] = "landscape-results"
        f.attrs["format_version"] = 1
        f.create_group("hessian").create_dataset("eigenvalues", data=np.array([1.0, 2.0]))
    r = cli("plot", hess, "-o", tmp_path / "e.html")
    assert r.code == 0, r.err
    assert seen[-1] == ("plotly", "density")
    r = cli("plot", hess, "--kind", "eigenvalues", "-o", tmp_path / "e.svg")
    assert r.code == 0 and seen[-1] == ("mpl", "eigenvalues", None)


def test_plot_of_a_curvature_file_draws_what_it_holds(cli, tmp_path):
    """No --kind: a file with eigenvalues and no density gets the eigenvalue figure (it used to fail
    asking for a density)."""
    curv = tmp_path / "c.h5"
    assert cli("hessian", "--sample", "linreg", "--top-k", "2", "-o", curv).code == 0
    r = cli("plot", curv, "-o", tmp_path / "c.png")
    assert r.code == 0, r.err
    assert (tmp_path / "c.png").stat().st_size > 0


# ---------------------------------------------------------------- export


def test_export_csv(grid, cli, tmp_path):
    out = tmp_path / "g.csv"
    assert cli("export", grid, "-o", out).code == 0
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == ["x", "y", "loss", "accuracy", "done"]
    assert len(rows) == 35
    want = expected()
    for k, row in enumerate(rows):
        i, j = divmod(k, 5)
        assert float(row["x"]) == XS[i] and float(row["y"]) == YS[j]
        if np.isnan(want[i, j]):
            assert row["loss"] == ""
        else:
            assert np.isclose(float(row["loss"]), want[i, j], rtol=1e-12)
    assert rows[0]["done"] == "0" and rows[34]["done"] == "1" and rows[34]["loss"] == ""


@pytest.mark.parametrize("suffix", [".vtu", ".vtk"])
def test_export_vtk_reads_back(grid, cli, tmp_path, suffix):
    meshio = pytest.importorskip("meshio")
    out = tmp_path / f"g{suffix}"
    r = cli("export", grid, "-o", out, "--vmax", "3")
    assert r.code == 0, r.err
    mesh = meshio.read(out)
    pts = mesh.points
    assert pts.shape == (35, 3)
    np.testing.assert_allclose(pts[:, 0].reshape(7, 5), np.repeat(XS[:, None], 5, 1))
    np.testing.assert_allclose(pts[:, 1].reshape(7, 5), np.repeat(YS[None, :], 7, 0))
    _same(np.asarray(mesh.point_data["loss"]).reshape(7, 5), expected())
    heights = pts[:, 2].reshape(7, 5)
    ok = ~np.isnan(expected())
    np.testing.assert_allclose(heights[ok], np.minimum(expected()[ok], 3))
    quads = mesh.cells_dict["quad"]
    assert len(quads) == 6 * 4 - 2  # the two cells touching a NaN corner are holes
    assert "accuracy" in mesh.point_data


def _read_vts(path):
    """A structured grid as written by pyevtk: its extent and each appended raw array (UInt64 byte-count headers)."""
    import re

    raw = path.read_bytes()
    head, _, tail = raw.partition(b'<AppendedData encoding="raw">')
    blob = tail[tail.index(b"_") + 1 :]
    extent = [int(v) for v in re.search(rb'WholeExtent="([^"]+)"', head).group(1).split()]
    arrays = {}
    for m in re.finditer(
        rb'<DataArray Name="([^"]+)" NumberOfComponents="(\d+)" type="Float64" format="appended" offset="(\d+)"', head
    ):
        name, comps, off = m.group(1).decode(), int(m.group(2)), int(m.group(3))
        size = int(np.frombuffer(blob[off : off + 8], dtype="<u8")[0])
        values = np.frombuffer(blob[off + 8 : off + 8 + size], dtype="<f8")
        arrays[name] = values.reshape(-1, comps) if comps > 1 else values
    return extent, arrays


def test_export_vts_structured_grid_reads_back(grid, cli, tmp_path):
    out = tmp_path / "g.vts"
    r = cli("export", grid, "-o", out, "--vmax", "3")
    assert r.code == 0, r.err
    extent, arrays = _read_vts(out)
    assert extent == [0, 6, 0, 4, 0, 0]  # 7 x-values, 5 y-values
    order = lambda a: a.reshape(5, 7).T  # VTK runs x fastest  # noqa: E731
    pts = arrays["points"]
    np.testing.assert_allclose(order(pts[:, 0]), np.repeat(XS[:, None], 5, 1))
    np.testing.assert_allclose(order(pts[:, 1]), np.repeat(YS[None, :], 7, 0))
    _same(order(arrays["loss"]), expected())
    ok = ~np.isnan(expected())
    np.testing.assert_allclose(order(pts[:, 2])[ok], np.minimum(expected()[ok], 3))
    np.testing.assert_array_equal(order(arrays["valid"]), ok.astype(float))
    assert "accuracy" in arrays and "done" in arrays


def test_export_1d_and_errors(line, grid, cli, tmp_path):
    meshio = pytest.importorskip("meshio")
    assert cli("export", line, "-o", tmp_path / "l.vtu").code == 0
    mesh = meshio.read(tmp_path / "l.vtu")
    assert len(mesh.cells_dict["line"]) == 6 - 1 - 2  # 7 points, a NaN at 0 and 5
    r = cli("export", line, "-o", tmp_path / "l.vts")
    assert r.code == 2 and ".vtu" in r.err
    r = cli("export", grid, "-o", tmp_path / "g.txt")
    assert r.code == 2 and "--format" in r.err
    r = cli("export", grid, "--format", "csv", "-o", tmp_path / "g.txt")
    assert r.code == 2


# ---------------------------------------------------------------- errors name the file or option


def test_plot_errors(grid, line, cli, tmp_path):
    r = cli("plot", line, "--kind", "contour", "-o", tmp_path / "x.png")
    assert r.code == 2 and "2D" in r.err
    r = cli("plot", grid, "-o", tmp_path / "x.jpg")
    assert r.code == 2 and "--output" in r.err
    r = cli("plot", tmp_path / "missing.h5", "-o", tmp_path / "x.png")
    assert r.code == 2 and "missing.h5" in r.err
    noacc = make_results(tmp_path / "noacc.h5", accuracy=False)
    r = cli("plot", noacc, "--metric", "accuracy", "-o", tmp_path / "x.png")
    assert r.code == 2 and "accuracy" in r.err
    r = cli("plot", grid, "--kind", "pie", "-o", tmp_path / "x.png")
    assert r.code == 2 and "--kind" in r.err
    r = cli("plot", grid, "--vmin", "3", "--vmax", "1", "-o", tmp_path / "x.png")
    assert r.code == 2 and "--vmin" in r.err
    r = cli("report", grid, "-o", tmp_path / "x.png")
    assert r.code == 2
    assert cli("plot", grid, "--metric", "accuracy", "--kind", "filled", "-o", tmp_path / "a.png").code == 0


def test_page_json_cannot_close_script():
    """A figure made elsewhere (e.g. a spectrum titled with a raw file name) still cannot inject markup."""
    import plotly.graph_objects as go

    from landscape.render.interactive import figures_page

    raw = "</script><script>window.__pwned = 1</script>"
    html = figures_page([go.Figure(go.Scatter(x=[0, 1], y=[1, 0]), layout={"title": {"text": raw}})], "t", "cdn")
    assert "</script><script>window" not in html
    (fig,) = figures_in(html)
    assert fig["layout"]["title"]["text"] == raw  # intact once parsed back


def test_a_figure_of_an_incomplete_file_says_so(cli, tmp_path):
    """A stopped sweep's figure (png and html) says how many of its points are done."""
    import h5py

    from landscape.io.results import read_sweep
    from landscape.render.common import make_view
    from landscape.render.interactive import plot_figures
    from landscape.render.static import plot_figure

    out = tmp_path / "s.h5"
    assert cli("sweep", "--sample", "linreg", "--x", "-1:1:5", "--y", "-1:1:5", "-o", out).code == 0
    with h5py.File(out, "r+") as f:  # as a killed run leaves it: two rows not done
        done = f["sweep/done"][()]
        done[:2] = False
        f["sweep/done"][...] = done
    view = make_view(read_sweep(out), "loss", out)
    assert view.incomplete == "incomplete: 15 of 25 points done"
    fig = plot_figure(view, "contour")
    assert "incomplete: 15 of 25 points done" in fig.axes[0].get_title() + (
        fig._suptitle.get_text() if fig._suptitle else ""
    )
    for kind in ("contour", "line"):
        (html,) = plot_figures(view, kind)
        assert "incomplete: 15 of 25 points done" in html.layout.title.text
    assert cli("plot", out, "-o", tmp_path / "s.png").code == 0


def test_compare_of_lines_labels_each_runs_own_axis_and_warns_on_mixed_scales(cli, tmp_path):
    """compare took the last file's x label for every curve, and put unit-norm Hessian axes beside
    filter-normalized ones without a word: each curve now names its axis, and the mix is warned of."""
    from landscape.io.results import read_sweep
    from landscape.render.common import make_view
    from landscape.render.interactive import compare_figure as html_compare
    from landscape.render.static import compare_figure

    a, b, c = tmp_path / "random.h5", tmp_path / "hessian.h5", tmp_path / "seed1.h5"
    assert cli("sweep", "--sample", "linreg", "--x", "-1:1:5", "-o", a).code == 0
    assert cli("sweep", "--sample", "linreg", "--x", "-1:1:5", "--axes", "hessian", "-o", b).code == 0
    assert cli("sweep", "--sample", "linreg", "--x", "-1:1:5", "--seed", "1", "-o", c).code == 0
    views = [make_view(read_sweep(p), "loss", p) for p in (a, b)]
    ax = compare_figure(views, "line").axes[0]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[0].startswith("random: filter-normalized random direction 1") and "Hessian eigenvector 1" in legend[1]
    assert "the axis of each run" in ax.get_xlabel()
    fig = html_compare(views, "line")
    assert "Hessian eigenvector 1" in fig.data[1].name and "the axis of each run" in fig.layout.xaxis.title.text
    res = cli("compare", a, b, "-o", tmp_path / "cmp.png")
    assert res.code == 0 and "normalized differently (random: filter, hessian: unit)" in res.err, res.err
    same = [make_view(read_sweep(p), "loss", p) for p in (a, c)]
    assert compare_figure(same, "line").axes[0].get_xlabel() == "filter-normalized random direction 1"
    res = cli("compare", a, c, "-o", tmp_path / "same.png")
    assert res.code == 0 and "normalized differently" not in res.err


def _bowl_view(edge: float) -> View:
    """A sharp basin: 0.03 at the centre, `edge` times that at the corners (a loss 100x higher at the
    edges), on a 41x41 grid of filter-normalized directions."""
    xs = np.linspace(-1, 1, 41)
    X, Y = np.meshgrid(xs, xs, indexing="ij")
    r = np.hypot(X, 0.6 * Y) / np.hypot(1, 0.6)
    values = 0.03 * (1 + (edge - 1) * r**3)
    return View("bowl", "loss", "loss", [xs, xs], ["direction 1", "direction 2"], values, norms=["filter", "filter"])


@pytest.mark.parametrize("edge", [100.0, 7000.0])
@pytest.mark.parametrize("levels", [None, 12])
def test_contours_resolve_the_basin_with_distinct_colours(edge, levels):
    """Default and --levels N: lines inside the basin (the lowest tenth of the grid), each line its
    own colour, a colour bar; the html draws the same levels (evenly in log10 above the minimum when
    they are dense in the basin) on square axes."""
    from matplotlib.colors import to_hex

    from landscape.render.interactive import plot_figures
    from landscape.render.static import plot_figure

    view = _bowl_view(edge)
    scale = make_scale([view.values])
    lv = contour_levels(scale, levels, "loss")
    q10 = np.quantile(view.values, 0.10)
    assert (lv <= q10).sum() >= 1 and len(lv) >= 5, (lv, q10)
    assert (lv > q10).any()  # and lines up the walls
    fig = plot_figure(view, "contour", levels=levels)
    contour = next(c for c in fig.axes[0].get_children() if type(c).__name__ == "QuadContourSet")
    colours = {to_hex(c) for c in contour.get_edgecolor()}
    assert len(colours) == len(contour.levels), "each line its own colour"
    assert len(fig.axes) == 2  # the colour bar
    plt.close(fig)
    (html,) = plot_figures(view, "contour", levels=levels)
    trace = html.data[0]
    spec = trace.contours
    drawn = int(round((spec.end - spec.start) / spec.size)) + 1
    assert abs(drawn - len(lv)) <= 1
    assert html.layout.yaxis.scaleanchor == "x"
    from landscape.render.interactive import compare_figure as html_compare

    both = html_compare([view, _bowl_view(edge / 2)], "filled", levels=levels)
    ticks = both.layout.coloraxis.colorbar.ticktext
    if ticks:  # uneven levels: the bar reads the loss, never the drawn log10 heights (which go negative)
        assert all(float(t) > 0 for t in ticks)
