"""`landscape plot`, `compare`, `report` and `export`: figures and files from results files alone.

No model, no data, no GPU: everything here reads HDF5 results files written by the compute commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from landscape.cli import app
from landscape.cli.options import in_range, output_file, refuse_inputs_as_outputs, warn, wrote
from landscape.cli.shared import Force, check_output
from landscape.errors import LandscapeError

DRAW = "Draw"
SCALE = "Scale"
SPECTRUM_KINDS = ("density", "eigenvalues")

Output = Annotated[
    Path,
    typer.Option(
        "--output",
        "-o",
        callback=output_file,
        help="Figure file; the suffix picks the format: png, svg, pdf (matplotlib) or html (interactive plotly).",
    ),
]
Metric = Annotated[str, typer.Option(help="What to draw: loss or accuracy (classification sweeps).")]
Log = Annotated[
    bool, typer.Option("--log", help="Logarithmic colour scale, heights and contour levels.", rich_help_panel=SCALE)
]
MAX_LEVELS = 1000  # more contour levels than a figure has pixel rows to tell apart (10^8 ran out of memory)


Vmin = Annotated[
    float | None,
    typer.Option(
        help="Clip values below this (colour scale and heights).", rich_help_panel=SCALE, callback=in_range("--vmin")
    ),
]
Vmax = Annotated[
    float | None,
    typer.Option(
        help="Clip values above this, so one diverged corner does not flatten the picture.",
        rich_help_panel=SCALE,
        callback=in_range("--vmax"),
    ),
]
Levels = Annotated[
    int | None,
    typer.Option(
        help="About N contour levels, 1 to 1000 (default: Li et al.'s 0.1..10 step 0.5 when they resolve the loss).",
        rich_help_panel=SCALE,
        callback=in_range("--levels", 1, MAX_LEVELS),
    ),
]
Title = Annotated[str | None, typer.Option(help="Figure title (default: the results file's name).")]
PlotlyJs = Annotated[
    str,
    typer.Option(
        help="html only: inline (default; the file opens offline) or cdn (a small file that loads plotly.js from cdn.plot.ly)."
    ),
]


def _suffix(output: Path) -> str:
    from landscape.render.static import STATIC_SUFFIXES

    suffix = output.suffix.lower()
    if suffix not in STATIC_SUFFIXES + (".html",):
        raise LandscapeError(
            f"--output {output}: unsupported suffix; use one of {', '.join(STATIC_SUFFIXES + ('.html',))}"
        )
    return suffix


def _check_plotlyjs(mode: str) -> None:
    from landscape.render.interactive import PLOTLYJS_MODES

    if mode not in PLOTLYJS_MODES:
        raise LandscapeError(f"--plotlyjs {mode!r}: expected one of {', '.join(PLOTLYJS_MODES)}")


def _has_group(path: Path, group: str) -> bool:
    from landscape.io.results import open_results

    with open_results(path) as f:
        return group in f


def _plot_spectrum(
    path: Path, kind: str | None, sigma: float | None, output: Path, suffix: str, plotlyjs: str, title: str | None
) -> None:
    """A curvature file: Hessian eigenvalues or spectral density (drawn by landscape.render.spectrum)."""
    try:
        from landscape.io.curvature import read_curvature
        from landscape.render import spectrum
    except ImportError as exc:
        raise LandscapeError(
            f"{path}: drawing curvature results needs landscape.render.spectrum, not available here ({exc})"
        ) from exc
    curv = read_curvature(path)
    kind = kind or spectrum.default_kind(curv)
    if suffix == ".html":
        from landscape.render.interactive import figures_page, write_page

        fig = spectrum.spectrum_plotly(curv, kind, sigma, name=path.stem)
        wrote(write_page(figures_page([fig], title or f"{path.name}: {kind}", plotlyjs), output))
    else:
        from landscape.render.static import save

        fig = spectrum.spectrum_figure(curv, kind, sigma, name=path.stem)
        if title:
            fig.suptitle(title)
        wrote(save(fig, output))


def _data_set_views(path: Path, sweep: dict[str, Any], metric: str, data_set: str | None) -> list[Any] | None:
    """The views of a sweep's data sets (--eval-data): all, or the one --data-set names; None without any."""
    from landscape.io.analysis_store import has_group, read_group
    from landscape.render.common import data_set_views

    if not has_group(path, "data_sets"):
        if data_set is not None:
            raise LandscapeError(f"--data-set {data_set}: {path} holds one data set's grid (made without --eval-data)")
        return None
    views = data_set_views(sweep, read_group(path, "data_sets"), metric, path)
    if data_set is None:
        return views
    chosen = [v for v in views if v.name == data_set]
    if not chosen:
        raise LandscapeError(f"--data-set {data_set}: {path} holds {', '.join(v.name for v in views)}")
    return chosen


@app.command(rich_help_panel=DRAW)
def plot(
    path: Annotated[Path, typer.Argument(help="A results file written by `landscape sweep` (or a curvature run).")],
    output: Output,
    kind: Annotated[
        str | None,
        typer.Option(
            help="line, contour, filled, heatmap, surface or all (default: line for 1D, contour for 2D); "
            "density or eigenvalues for curvature results."
        ),
    ] = None,
    metric: Metric = "loss",
    log: Log = False,
    vmin: Vmin = None,
    vmax: Vmax = None,
    levels: Levels = None,
    sigma: Annotated[
        float | None,
        typer.Option(
            help="Curvature density only: Gaussian width (default: the stored one).",
            callback=in_range("--sigma", positive=True),
        ),
    ] = None,
    title: Title = None,
    data_set: Annotated[
        str | None,
        typer.Option(
            help="A sweep made with --eval-data: draw this data set's grid alone (default: every set, side by side;"
            " 1D lines overlaid)."
        ),
    ] = None,
    plotlyjs: PlotlyJs = "inline",
    force: Force = False,
) -> None:
    """Draw one results file: a loss curve, contour lines, filled contours, a heatmap or a 3D surface.

    The checkpoint is marked; NaN points are gaps; axes say what each direction is.

    Examples:

      landscape plot mlp.h5 -o mlp.png                         (contour lines of a 2D sweep)

      landscape plot mlp.h5 --kind surface --vmax 5 -o surface.pdf

      landscape plot mlp.h5 --kind all -o mlp.html             (interactive, opens offline)

      landscape plot train_test.h5 -o tt.png                   (every --eval-data set beside --data's)
    """
    refuse_inputs_as_outputs({"path": path, "output": output})
    check_output(output, force)
    suffix = _suffix(output)
    _check_plotlyjs(plotlyjs)
    if kind in SPECTRUM_KINDS or (kind is None and _has_group(path, "hessian") and not _has_group(path, "sweep")):
        _plot_spectrum(path, kind, sigma, output, suffix, plotlyjs, title)
        return
    if kind is None:
        from landscape.render import analysis, analysis_interactive

        found = analysis.analysis_kind(path)
        if suffix != ".html" and found in analysis.FIGURES:  # roughness, path, plane, trajectory, track
            wrote(analysis.draw(path, output))
            return
        if (
            suffix == ".html" and found in analysis_interactive.FIGURES
        ):  # roughness, path, track (plane, trajectory: sweeps)
            from landscape.render.interactive import figures_page, write_page

            fig = analysis_interactive.FIGURES[found](path)
            wrote(write_page(figures_page([fig], title or f"{found}: {path.name}", plotlyjs), output))
            return
    from landscape.io.results import read_sweep
    from landscape.render.common import make_view

    sweep = read_sweep(path)
    view = make_view(sweep, metric, path)
    kind = kind or ("line" if view.dims == 1 else "contour")
    opts: dict[str, Any] = {"vmin": vmin, "vmax": vmax, "log": log, "levels": levels, "title": title}
    sets = _data_set_views(path, sweep, metric, data_set)
    if sets is not None and len(sets) > 1:  # every data set, on one colour scale
        opts["title"] = title or f"{path.name}: " + " and ".join(v.name for v in sets)
        if suffix == ".html":
            from landscape.render.interactive import compare_figure, figures_page, write_page

            page = figures_page([compare_figure(sets, kind, **opts)], title or f"{view.name}: data sets", plotlyjs)
            wrote(write_page(page, output))
        else:
            from landscape.render.static import compare_figure, save

            wrote(save(compare_figure(sets, kind, **opts), output))
        return
    if sets is not None:
        view = sets[0]
    if suffix == ".html":
        from landscape.render.interactive import figures_page, plot_figures, write_page

        figs = plot_figures(view, kind, **opts)
        wrote(write_page(figures_page(figs, title or f"{view.name}: {kind}", plotlyjs), output))
    else:
        from landscape.render.static import plot_figure, save

        wrote(save(plot_figure(view, kind, **opts), output))


@app.command(rich_help_panel=DRAW)
def compare(
    paths: Annotated[
        list[Path], typer.Argument(help="Two or more results files (same kind of sweep: all 1D or all 2D).")
    ],
    output: Output,
    kind: Annotated[
        str | None,
        typer.Option(help="line, contour, filled, heatmap or surface (default: line for 1D, filled for 2D)."),
    ] = None,
    metric: Metric = "loss",
    log: Log = False,
    vmin: Vmin = None,
    vmax: Vmax = None,
    levels: Levels = None,
    title: Title = None,
    plotlyjs: PlotlyJs = "inline",
    force: Force = False,
) -> None:
    """Several runs side by side with the same axes and one colour scale (1D lines: overlaid).

    Example: landscape compare sgd.h5 adam.h5 -o cmp.png
    """
    refuse_inputs_as_outputs({"paths": paths, "output": output})
    check_output(output, force)
    if len(paths) < 2:
        raise LandscapeError("compare: give at least two results files")
    suffix = _suffix(output)
    _check_plotlyjs(plotlyjs)
    from landscape.io.results import read_sweep
    from landscape.render.common import make_view, scale_mismatch, unique_names

    views = [make_view(read_sweep(p), metric, p) for p in paths]
    for v, name in zip(views, unique_names(list(paths))):
        v.name = name
    kind = kind or ("line" if views[0].dims == 1 else "filled")
    mismatch = scale_mismatch(views)
    if mismatch:
        warn(f"compare: {mismatch}")
    opts: dict[str, Any] = {"vmin": vmin, "vmax": vmax, "log": log, "levels": levels, "title": title}
    if suffix == ".html":
        from landscape.render.interactive import compare_figure, figures_page, write_page

        fig = compare_figure(views, kind, **opts)
        wrote(
            write_page(figures_page([fig], title or "compare: " + ", ".join(v.name for v in views), plotlyjs), output)
        )
    else:
        from landscape.render.static import compare_figure, save

        wrote(save(compare_figure(views, kind, **opts), output))


@app.command(rich_help_panel=DRAW)
def report(
    paths: Annotated[list[Path], typer.Argument(help="One or more results files.")],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="The report, one HTML file.", callback=output_file)
    ] = Path("landscape-report.html"),
    title: Title = None,
    plotlyjs: PlotlyJs = "inline",
    force: Force = False,
) -> None:
    """One HTML file with everything: provenance, numbers and every figure, interactive.

    plotly.js is embedded once (the file opens offline, e.g. as an e-mail attachment); --plotlyjs cdn
    makes a small file instead. Example: landscape report mlp.h5 cnn.h5 -o report.html
    """
    refuse_inputs_as_outputs({"paths": paths, "output": output})
    check_output(output, force)
    if output.suffix.lower() not in (".html", ".htm"):
        raise LandscapeError(f"--output {output}: a report is an HTML file (.html)")
    _check_plotlyjs(plotlyjs)
    from landscape.render.interactive import write_page
    from landscape.render.report import build_report

    wrote(write_page(build_report(list(paths), title=title, plotlyjs=plotlyjs), output))


@app.command(rich_help_panel=DRAW)
def export(
    path: Annotated[Path, typer.Argument(help="A results file written by `landscape sweep`.")],
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            callback=output_file,
            help="Output file: .vts (VTK structured grid), .vtu or .vtk (quads; NaN regions are holes) for ParaView, or .csv.",
        ),
    ],
    format: Annotated[
        str | None, typer.Option("--format", help="vtk or csv (default: from the output's suffix).")
    ] = None,
    vmax: Vmax = None,
    force: Force = False,
) -> None:
    """Export a sweep: a VTK grid for ParaView (heights = loss, clipped to --vmax) or CSV, one row per point.

    Example: landscape export mlp.h5 -o mlp.vts && paraview mlp.vts
    """
    refuse_inputs_as_outputs({"path": path, "output": output})
    check_output(output, force)
    from landscape.io.results import read_sweep
    from landscape.render.export import export_csv, export_vtk, format_for

    fmt = format_for(output, format)
    sweep = read_sweep(path)
    if fmt == "csv":
        if output.suffix.lower() != ".csv":
            raise LandscapeError(f"--output {output}: a CSV export needs the suffix .csv")
        wrote(export_csv(sweep, output))
    else:
        wrote(export_vtk(sweep, output, vmax))
