"""`landscape info` and `landscape samples`: what is in a results file, what ships with the tool."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from landscape.cli import app
from landscape.cli.options import out
from landscape.io.samples import registry


@app.command(rich_help_panel="Inspect")
def info(
    path: Annotated[Path, typer.Argument(help="A results file written by landscape.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print everything as JSON (for scripts and CI).")] = False,
) -> None:
    """Show what a results file holds: provenance, settings, datasets and the headline numbers."""
    from landscape.io.results import describe, read_sweep
    from landscape.summary import sweep_numbers

    desc = describe(path)
    if "sweep/loss" in desc["datasets"]:
        desc["numbers"] = sweep_numbers(read_sweep(path))
    else:  # curvature and analysis files: every number they hold, named as `landscape metrics` names them
        from landscape.metrics import collect

        desc["numbers"] = collect(path)
    if as_json:
        out.print_json(json.dumps(desc, default=str))
        return
    attrs = desc["attrs"]
    table = Table(title=str(path), show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key in (
        "kind",
        "created",
        "command",
        "model",
        "checkpoint",
        "data",
        "samples",
        "loss",
        "load_options",
        "parameters",
        "device",
        "dtype",
        "seed",
        "tool_version",
        "torch_version",
    ):
        if key in attrs and attrs[key] != "":
            table.add_row(key, str(attrs[key]))
    try:
        curvature = (
            json.loads(attrs.get("settings") or "{}").get("curvature") if attrs.get("kind") == "hessian" else None
        )
    except (ValueError, AttributeError):  # settings that are not a JSON object: nothing to show
        curvature = None
    if curvature:  # the /hessian group's numbers are those of this matrix (GGN, empirical Fisher or Hessian)
        table.add_row("curvature", str(curvature))
    table.add_row(
        "complete", "yes" if attrs.get("complete") else Text.assemble(("no", "yellow"), " (finish it with --resume)")
    )
    for key, value in desc.get("numbers", {}).items():
        table.add_row(key, f"{value:.6g}" if isinstance(value, float) else str(value))
    sweep_attrs = desc["datasets"].get("sweep/loss")
    if sweep_attrs is not None:
        for name, ds in desc["datasets"].items():
            if name.startswith("axes/") and name != "axes/layout":
                table.add_row(name, str(ds["attrs"].get("label", ds["attrs"].get("kind", ""))))
    out.print(table)
    data_table = Table("dataset", "shape", "dtype", title="datasets", title_justify="left")
    for name, ds in desc["datasets"].items():
        data_table.add_row(name, "x".join(map(str, ds["shape"])) or "scalar", ds["dtype"])
    out.print(data_table)


@app.command(rich_help_panel="Inspect")
def samples() -> None:
    """List the bundled sample models (use them with --sample NAME)."""
    table = Table("name", "about", "loss", title="bundled samples", title_justify="left")
    for name, entry in registry().items():
        table.add_row(name, entry["about"], entry["loss"])
    out.print(table)
    out.print("Try: landscape sweep --sample mlp --x -1:1:31 --y -1:1:31 -o mlp.h5 && landscape plot mlp.h5 -o mlp.png")
