"""Interactive figures and report sections of the analysis files: the data inside each figure is the file's."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from landscape.io.analysis_store import Group, write_results
from landscape.render.analysis_interactive import analysis_plotly, path_plotly, roughness_plotly, track_plotly
from landscape.render.report import build_report

ATTRS = {"checkpoint": "ckpt<script>.pt", "model": "m.py:make", "samples": 10}


def _write(path, kind, group: Group):
    return write_results(path, kind=kind, attrs=ATTRS, settings={"seed": 0}, groups={kind: group})


def _y(trace) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in trace.y], dtype=float)


def make_roughness(path):
    """A roughness file with known profiles (one with a NaN) and T_j (one NaN)."""
    alphas = np.linspace(-0.1, 0.1, 5)
    loss = np.array([[3.0, 2.0, 1.0, 2.0, 3.0], [2.0, 1.5, 1.0, np.nan, 2.5], [1.2, 1.1, 1.0, 1.1, 1.2]])
    tv = np.array([10.0, np.nan, 1.0])
    return _write(
        path,
        "roughness",
        Group(
            numbers={"mu": 5.5, "sigma": 4.5, "ri": 4.5 / 5.5, "span": 0.1},
            arrays={"alphas": alphas, "loss": loss, "total_variation": tv},
        ),
    )


@pytest.fixture
def rough(tmp_path):
    return make_roughness(tmp_path / "rough.h5")


def test_roughness_figure_holds_every_profile_and_the_histogram(rough):
    fig = roughness_plotly(rough)
    profiles = [t for t in fig.data if t.name and t.name.startswith("direction ")]
    assert len(profiles) == 3
    np.testing.assert_array_equal(_y(profiles[1]), [2.0, 1.5, 1.0, np.nan, 2.5])  # NaN stays a gap (null)
    np.testing.assert_allclose(profiles[0].x, np.linspace(-0.1, 0.1, 5))
    hist = next(t for t in fig.data if t.type == "histogram")
    np.testing.assert_array_equal(hist.x, [10.0, 1.0])  # the finite T_j only
    lines = {t.name: t.x[0] for t in fig.data if t.type == "scatter" and t.name and "=" in t.name}
    assert lines == {
        "mu = 5.5": 5.5,
        "1/l = 10 (bowl)": pytest.approx(10.0),
        "1/(2l) = 5 (monotone)": pytest.approx(5.0),
    }
    assert "RI = 0.818" in json.dumps(fig.to_plotly_json()["layout"])


def test_path_figure_loss_line_barrier_and_accuracy(tmp_path):
    t = np.linspace(0, 1, 5)
    loss = np.array([1.0, 2.0, 4.0, 2.0, 0.5])
    f = _write(
        tmp_path / "path.h5",
        "path",
        Group(
            numbers={"barrier": 3.25, "barrier_t": 0.5},
            arrays={
                "t": t,
                "loss": loss,
                "accuracy": np.array([0.9, 0.5, 0.1, 0.5, 0.95]),
                "node_loss": np.array([1.0, 0.5]),
            },
            attrs={"curve": "linear", "checkpoints": ["a.pt", "b<i>.pt"], "buffers": "interpolated"},
        ),
    )
    fig = path_plotly(f)
    by = {tr.name: tr for tr in fig.data}
    np.testing.assert_array_equal(_y(by["loss"]), loss)
    np.testing.assert_array_equal(_y(by["straight line between the ends"]), [1.0, 0.5])
    barrier = next(tr for n, tr in by.items() if n.startswith("barrier"))
    assert (barrier.x[0], barrier.y[0]) == (0.5, 4.0) and "3.25" in barrier.name
    np.testing.assert_allclose(_y(by["accuracy (%)"]), [90, 50, 10, 50, 95])
    assert list(by["checkpoints' own loss"].text) == ["a.pt", "b&lt;i&gt;.pt"]  # escaped


def test_track_figure_and_edge_of_stability(tmp_path):
    f = _write(
        tmp_path / "track.h5",
        "track",
        Group(numbers={"lr": 0.1}, arrays={"step": np.arange(3.0), "lambda_max": np.array([1.0, 5.0, 19.0])}),
    )
    fig = track_plotly(f)
    np.testing.assert_array_equal(_y(fig.data[0]), [1.0, 5.0, 19.0])
    assert [s.y0 for s in fig.layout.shapes] == [pytest.approx(20.0)]  # 2 / eta


def test_report_and_plot_of_analysis_files(rough, tmp_path, cli):
    sharp = _write(tmp_path / "sharp.h5", "sharpness", Group(numbers={"sam_sharpness": 0.0123, "lambda_max": 7.5}))
    assert analysis_plotly(sharp) is None  # numbers only
    page = build_report([rough, sharp])
    assert "<h3>Roughness</h3>" in page and "<h3>Sharpness</h3>" in page
    assert "0.0123" in page and "7.5" in page
    assert page.count("Plotly.newPlot") == 1  # the roughness figure
    assert "<script>.pt" not in page and "ckpt&lt;script&gt;.pt" in page
    out = tmp_path / "rough.html"
    r = cli("plot", rough, "-o", out)
    assert r.code == 0, r.err
    assert re.search(r"Plotly\.newPlot", out.read_text())


def test_info_shows_the_numbers_of_an_analysis_file(rough, cli):
    r = cli("info", rough, "--json")
    assert r.code == 0, r.err
    numbers = json.loads(r.out)["numbers"]
    assert numbers["roughness.ri"] == pytest.approx(4.5 / 5.5) and numbers["roughness.mu"] == 5.5


def test_per_layer_density_is_small_multiples_and_the_legend_covers_no_data(cli, tmp_path):
    """Twelve blocks' spectra on one axes were unreadable: one small panel each, png and html; the
    legend sits outside the axes (it covered linear regression's peaks); html ticks are plain
    scientific numbers (not '100µ, 10n'); titles name the run, not only final.pt."""
    import matplotlib

    matplotlib.use("Agg")
    from landscape.io.curvature import read_curvature
    from landscape.render.spectrum import spectrum_figure, spectrum_plotly

    out = tmp_path / "layers.h5"
    res = cli("hessian", "--sample", "transformer", "--top-k", "1", "--density", "--per-layer", "--probes", "2",
              "--steps", "12", "--samples", "128", "-o", out)  # fmt: skip
    assert res.code == 0, res.err
    curv = read_curvature(out)
    blocks = [k for k, b in curv["layers"].items() if b.get("lanczos") is not None or b.get("density") is not None]
    assert len(blocks) >= 10
    fig = spectrum_figure(curv, "density", name="layers")
    main = fig.axes[0]
    assert len(fig.axes) == 1 + len(blocks)
    assert [a.get_title().split(" (")[0] for a in fig.axes[1:]] == blocks
    assert "Hessian spectrum: layers (final.pt)" in main.get_title()
    fig.canvas.draw()
    legend, frame = main.get_legend().get_window_extent(), main.get_window_extent()
    assert legend.y0 >= frame.y1 - 1  # above the axes, over no curve
    html = spectrum_plotly(curv, "density", name="layers")
    assert "Hessian spectrum: layers (final.pt)" in html.layout.title.text
    assert html.layout.yaxis.exponentformat == "e"
    assert len({t.xaxis for t in html.data}) == 1 + len(blocks)
    assert cli("plot", out, "-o", tmp_path / "layers.png").code == 0
