"""Options and helpers shared by the analysis commands (roughness, sharpness, track, path, plane, trajectory) and `hessian`."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

import landscape as ls
from landscape.cli.options import RUN, activity, command_line, load_spec, one_of, results_file, say, wrote
from landscape.errors import LandscapeError
from landscape.names import IGNORES, NORMS, STRATEGIES

if TYPE_CHECKING:
    import torch

    from landscape.problem import Problem

ANALYSIS = "Analysis"
Output = Annotated[Path, typer.Option("--output", "-o", help="Results file (HDF5) to write.", callback=results_file)]
Force = Annotated[bool, typer.Option("--force", help="Overwrite OUTPUT if it exists.", rich_help_panel=RUN)]
Figure = Annotated[
    Path | None,
    typer.Option("--figure", help="Also draw the figure to this file (png, svg or pdf), from the results file alone."),
]
STRATEGY_CHOICES = ("auto", *STRATEGIES)
Strategy = Annotated[
    str,
    typer.Option(
        help="auto (time each on the first points, keep the fastest), or one of: " + ", ".join(STRATEGIES) + ".",
        rich_help_panel=RUN,
        callback=one_of("--strategy", STRATEGY_CHOICES),
    ),
]


def norm_option(panel: str) -> Any:
    """--norm, checked while the line is parsed; `panel` groups it in --help."""
    return typer.Option(
        help="Direction normalization of random axes: filter (Li et al.; the default), layer, model or none.",
        rich_help_panel=panel,
        callback=one_of("--norm", NORMS),
    )


def axis_option(flag: str, choices: tuple[str, ...], what: str, panel: str) -> Any:
    """A per-axis --x-norm/--y-ignore: one of `choices`; `panel` groups it in --help."""
    return typer.Option(
        flag, help=f"{what}: {', '.join(choices)}.", rich_help_panel=panel, callback=one_of(flag, choices)
    )


def ignore_option(panel: str) -> Any:
    """--ignore, checked while the line is parsed; `panel` groups it in --help."""
    return typer.Option(
        help="Random axes: biasbn (the default) zeroes directions on 1-D tensors (biases, norm layers); none keeps them.",
        rich_help_panel=panel,
        callback=one_of("--ignore", IGNORES),
    )


Norm = Annotated[str, norm_option(ANALYSIS)]
Ignore = Annotated[str, ignore_option(ANALYSIS)]


def check_output(output: Path, force: bool) -> None:
    if output.exists() and not force:
        raise LandscapeError(f"{output} exists: pass --force to overwrite it")


def curvature_with_progress(problem: Problem, show: bool = True, **options: Any) -> ls.CurvatureResult:
    """`landscape.hessian` with a progress line of its products on stderr (`show`: not inside another
    progress display, as rich runs one at a time)."""
    label = options.get("curvature", "hessian")
    with activity("products", disable=not show) as bar:
        task = bar.add_task(label, total=None)
        result = ls.hessian(
            problem,
            on_products=lambda stage, n: bar.update(task, advance=n, description=f"{label} {stage}"),
            command=command_line(),
            **options,
        )
        bar.update(task, total=bar.tasks[task].completed, description=f"{label}: done")
    return result


def root_attrs(prov: dict[str, Any]) -> dict[str, Any]:
    return {
        **prov,
        "command": command_line(),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def draw_figure(figure: Path | None, results: Path) -> None:
    if figure is None:
        return
    from landscape.render.analysis import draw

    wrote(draw(results, figure))


Checkpoints = Annotated[
    list[str] | None,
    typer.Argument(
        help="Checkpoints of one model (.pt/.pth/.ckpt/.safetensors); with --sample they default to its training snapshots.",
        show_default=False,
    ),
]


def checkpoint_paths(given: list[str] | None, sample: str | None, default: str) -> list[str]:
    """The checkpoints named on the line, or the sample's snapshots picked by `default` (all, ends, three)."""
    if given:
        return list(given)
    if not sample:
        raise LandscapeError("name the checkpoints (e.g. ckpt_000.pt ckpt_004.pt) or use --sample NAME")
    from landscape.io.samples import sample as find_sample

    snaps = find_sample(sample)["checkpoints"]
    if default == "ends":
        return [snaps[0], snaps[-1]]
    if default == "three":
        return [snaps[0], snaps[len(snaps) // 2], snaps[-1]]
    return list(snaps)


def load_states(paths: list[str], problem, spec_kwargs: dict[str, Any]) -> list[dict[str, torch.Tensor]]:
    """The checkpoints' state_dicts for `problem`'s model, read as `spec_kwargs` say (--checkpoint-key, --prefix)."""
    from landscape.io.load import load_other_state

    spec = load_spec(**spec_kwargs)
    return [load_other_state(p, problem, spec, say) for p in paths]


def problem_at(spec_kwargs: dict[str, Any], checkpoint_path: str):
    from landscape.cli.options import load_problem

    spec = load_spec(**{**spec_kwargs, "checkpoint": checkpoint_path})
    return load_problem(spec, say)
