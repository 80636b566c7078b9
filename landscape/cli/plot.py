"""`landscape plot`: a figure from a results file alone (no model, no data)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from landscape.cli import app
from landscape.cli.options import err
from landscape.errors import LandscapeError
from landscape.io.results import read_sweep
from landscape.render.static import STATIC_SUFFIXES, contour_figure, line_figure, save


@app.command(rich_help_panel="Draw")
def plot(
    path: Annotated[Path, typer.Argument(help="A results file written by `landscape sweep`.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Figure file; the suffix picks the format: png, svg or pdf.")],
) -> None:
    """Draw a sweep: a 1D loss curve or 2D contour lines, with the checkpoint marked."""
    if output.suffix.lower() not in STATIC_SUFFIXES:
        raise LandscapeError(f"--output {output}: unsupported suffix; use one of {', '.join(STATIC_SUFFIXES)}")
    sweep = read_sweep(path)
    fig = line_figure(sweep) if len(sweep["axes"]) == 1 else contour_figure(sweep)
    err.print(f"[green]wrote[/green] {save(fig, output)}", soft_wrap=True)
