"""`landscape sweep`: the loss (and accuracy) on a 1D line or 2D grid around a checkpoint."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

import landscape as ls
from landscape.cli import app
from landscape.cli.options import (
    RUN,
    BatchSize,
    Checkpoint,
    Config,
    Data,
    Device,
    DistTimeout,
    Dtype,
    Loss,
    Model,
    Sample,
    Samples,
    SaveEvery,
    Seed,
    StoreDtype,
    UnsafePickle,
    command_line,
    interrupted,
    load_spec,
    model_options,
    one_of,
    out,
    parse_range,
    points_kept,
    progress,
    results_file,
    say,
    stage_label,
    warn,
    wrote,
)
from landscape.cli.shared import Strategy, axis_option, ignore_option, norm_option
from landscape.errors import ArgumentError, LandscapeError, PointFailure
from landscape.io.spec import sha256_file
from landscape.names import CHUNK_SECONDS, IGNORES, NORMS

if TYPE_CHECKING:  # the command's own imports wait for it to run: `landscape --help` needs no torch
    import torch

    from landscape.axes import Axes
    from landscape.problem import Problem

DATA_SETS = "Data sets"
AXES = "Axes and grid"


def _quiet(msg: str) -> None:
    """Ranks other than 0 say nothing."""


@app.command(rich_help_panel="Compute")
@model_options
def sweep(
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Results file (HDF5) to write.", callback=results_file)
    ] = Path("landscape-out/sweep.h5"),
    sample: Sample = None,
    model: Model = None,
    checkpoint: Checkpoint = None,
    data: Data = None,
    loss: Loss = None,
    x: Annotated[
        str | None,
        typer.Option(help="x grid MIN:MAX:POINTS (default -1:1:51; with --to, -0.5:1.5:41).", rich_help_panel=AXES),
    ] = None,
    y: Annotated[
        str | None, typer.Option(help="y grid MIN:MAX:POINTS; omit for a 1D line.", rich_help_panel=AXES)
    ] = None,
    norm: Annotated[str | None, norm_option(AXES)] = None,
    ignore: Annotated[str | None, ignore_option(AXES)] = None,
    x_norm: Annotated[str | None, axis_option("--x-norm", NORMS, "--norm for the x axis alone", AXES)] = None,
    y_norm: Annotated[str | None, axis_option("--y-norm", NORMS, "--norm for the y axis alone", AXES)] = None,
    x_ignore: Annotated[str | None, axis_option("--x-ignore", IGNORES, "--ignore for the x axis alone", AXES)] = None,
    y_ignore: Annotated[str | None, axis_option("--y-ignore", IGNORES, "--ignore for the y axis alone", AXES)] = None,
    same_dir: Annotated[
        bool,
        typer.Option(
            "--same-dir",
            help="y is x's random draw (Li et al.'s --same_dir), normalized by its own --y-norm/--y-ignore.",
            rich_help_panel=AXES,
        ),
    ] = False,
    dir_type: Annotated[
        str,
        typer.Option(
            help="weights, or states: the directions move the BatchNorm running statistics too (Li et al.'s"
            " --dir_type states: scaled by 1 + a on an axis with --ignore none; fixed with biasbn, as theirs).",
            rich_help_panel=AXES,
            callback=one_of("--dir-type", ("weights", "states")),
        ),
    ] = "weights",
    to: Annotated[
        str | None,
        typer.Option(
            help="Second checkpoint: x becomes the straight line from --checkpoint (0) to it (1).", rich_help_panel=AXES
        ),
    ] = None,
    axes: Annotated[
        str,
        typer.Option(
            help="random (normalized Gaussian), or hessian: the top Hessian eigenvectors (unit vectors).",
            rich_help_panel=AXES,
            callback=one_of("--axes", ("random", "hessian")),
        ),
    ] = "random",
    axes_from: Annotated[
        str | None,
        typer.Option(
            help="Take the axes from an earlier run's file: the directions of a sweep as they are (the same plane"
            " for another checkpoint, other data, after fine-tuning), or the eigenvectors `landscape hessian"
            " --eigenvectors` stored.",
            rich_help_panel=AXES,
        ),
    ] = None,
    eval_data: Annotated[
        list[str] | None,
        typer.Option(
            help="Also evaluate the grid on another data set, NAME=PATH (same forms as --data; repeatable): a test set"
            " beside the training set, one grid each in the same file, drawn side by side, with the gap.",
            rich_help_panel=DATA_SETS,
        ),
    ] = None,
    data_name: Annotated[
        str, typer.Option(help="The name of --data's set beside --eval-data's (e.g. train).", rich_help_panel=DATA_SETS)
    ] = "data",
    seed: Seed = 0,
    samples: Samples = None,
    batch_size: BatchSize = None,
    device: Device = "auto",
    dist_timeout: DistTimeout = 600.0,
    dtype: Dtype = "float32",
    store_dtype: StoreDtype = None,
    strategy: Strategy = "auto",
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Finish a killed run in OUTPUT (same settings required); starts it if OUTPUT is missing.",
            rich_help_panel=RUN,
        ),
    ] = False,
    save_every: SaveEvery = CHUNK_SECONDS,
    force: Annotated[bool, typer.Option("--force", help="Overwrite OUTPUT if it exists.", rich_help_panel=RUN)] = False,
    unsafe_pickle: UnsafePickle = False,
    config: Config = None,
    model_options: dict[str, Any] | None = None,
) -> None:
    """Evaluate the loss (and accuracy) on a grid of points theta + a·d1 (+ b·d2) around a checkpoint.

    Directions are Gaussian and filter-normalized by default (Li et al. 2018); the results go to one
    HDF5 file, written after every chunk, so a killed run continues with --resume.

    Examples:

      landscape sweep --sample mlp -o mlp.h5                  (a 1D line, 51 points)

      landscape sweep --sample cnn --x -1:1:31 --y -1:1:31 -o cnn.h5

      landscape sweep --model net.py:make --checkpoint ep90.pt --data val.npz --to ep100.pt -o path.h5

      landscape sweep --checkpoint my-gpt2 --data tokens.pt --loss next-token -o lm.h5   (a save_pretrained directory)

      landscape sweep --model 'torchvision.models:resnet18(num_classes=10)' --checkpoint ft.pt --data val.npz -o r18.h5

      landscape sweep --model net.py:make --checkpoint ep90.pt --data train.npz --data-name train --eval-data test=test.npz -o tt.h5
    """
    from landscape.axes import Axes, axes_settings
    from landscape.cli.options import load_problem
    from landscape.cli.world import joined
    from landscape.distributed import PeersLost, device_for
    from landscape.io.load import load_data_set, load_other_state
    from landscape.io.results import SweepFile, read_axes
    from landscape.paths import flat_params
    from landscape.strategies import pick_to_resume

    with joined(device, dist_timeout) as world:
        if world.main and output.exists() and not resume and not force:
            raise LandscapeError(f"{output} exists: pass --resume to finish it or --force to overwrite it")
        if resume and not output.exists():  # so a requeued batch job can always pass --resume
            if world.main:
                say(f"--resume: no {output} yet, starting it")
            resume = False
        eval_sets = _data_sets(eval_data or [], data_name)
        x_grid = parse_range(x or ("-0.5:1.5:41" if to else "-1:1:51"), "--x")
        y_grid = parse_range(y, "--y") if y else None
        if axes_from and not Path(axes_from).is_file():
            raise LandscapeError(f"--axes-from {axes_from}: file not found")
        eigenvectors = axes == "hessian" and (1 if y_grid is None else 2) - (1 if to else 0) > 0
        drawn = {"--norm": norm, "--ignore": ignore, "--x-norm": x_norm, "--y-norm": y_norm,
                 "--x-ignore": x_ignore, "--y-ignore": y_ignore, "--same-dir": same_dir or None,
                 "--dir-type states": dir_type == "states" or None}  # fmt: skip
        given = next((name for name, value in drawn.items() if value is not None), None)
        if (axes_from or eigenvectors) and given:
            what = (
                f"--axes-from {axes_from} gives its directions as stored"
                if axes_from
                else "--axes hessian gives unit eigenvectors"
            )
            raise LandscapeError(f"{given} applies to random axes; {what}, which are not normalized again")
        for name, value in (
            ("--x-norm", x_norm),
            ("--x-ignore", x_ignore),
            ("--dir-type states", dir_type == "states" or None),
        ):
            if value is not None and to:
                raise LandscapeError(f"{name} applies to a random x axis; --to makes x the line to {to}")
        for name, value in (("--y-norm", y_norm), ("--y-ignore", y_ignore)):
            if value is not None and y_grid is None:
                raise LandscapeError(f"{name} applies to the y axis, and this sweep has none (no --y)")
        norm, ignore = norm or "filter", ignore or "biasbn"
        randoms = [n for n in ("x", "y")[: 1 if y_grid is None else 2] if not (n == "x" and to)]
        norms = tuple({"x": x_norm, "y": y_norm}[n] or norm for n in randoms)
        ignores = tuple({"x": x_ignore, "y": y_ignore}[n] or ignore for n in randoms)
        spec = load_spec(
            model=model, checkpoint=checkpoint, data=data, loss=loss, sample=sample, samples=samples, seed=seed,
            batch_size=batch_size, device=device_for(world, device), dtype=dtype, unsafe_pickle=unsafe_pickle, **(model_options or {}),
        )  # fmt: skip
        tell = say if world.main else _quiet
        problem, prov = load_problem(spec, tell)
        other = None
        if to:  # the line's other end: its weights, and its buffers (BatchNorm statistics) along x too
            other_state = load_other_state(to, problem, spec, tell)
            other = flat_params(problem, other_state)
            problem = problem.along_line_to(other_state)
            if problem.buffer_line is not None:
                tell(f"buffers (BatchNorm statistics) follow x from --checkpoint's (0) to {to}'s (1)")
        tell(
            f"{prov['parameters']:,} parameters, {problem.n:,} samples, loss {prov['loss']}, "
            f"{prov['device']} {dtype}, grid {' x '.join(str(g[2]) for g in (x_grid, y_grid) if g)}"
            + (f", {world.size} processes" if world.size > 1 else "")
        )
        # the other data sets are read before any point: a bad one stops the run before it starts
        others = {name: load_data_set(problem, spec, name, path, tell) for name, path in eval_sets.items()}
        for name, other_set in others.items():
            tell(f"--eval-data {name}: {other_set.n:,} samples")
        dims = 1 if y_grid is None else 2
        if dir_type == "states" and all(i == "biasbn" for i in ignores) and world.main:
            warn(
                "--dir-type states with --ignore biasbn: the BatchNorm statistics have one dimension and stay fixed, as in"
                " Li et al.'s code; pass --ignore none to move them"
            )
        store = None

        def make_axes() -> Axes:
            return _make_axes(
                problem, dims, axes, axes_from, norm=norms, ignore=ignores, seed=seed, to=to, other=other,
                same_dir=same_dir, states=dir_type == "states",
            )  # fmt: skip

        if world.main and resume:
            if axes_from:  # what the file's directions are, read again
                identity = dict(make_axes().settings)
            else:
                identity = axes_settings(
                    axes,
                    norm=norms,
                    ignore=ignores,
                    seed=seed,
                    to_sha256=sha256_file(to) if to else "",
                    same_dir=same_dir,
                    states=dir_type == "states",
                )
            stored = read_axes(output)
            if stored.directions.shape[0] != dims:
                raise LandscapeError(
                    f"--resume {output}: made with other settings (axes: the file's sweep is {stored.directions.shape[0]}D, "
                    f"this run's {dims}D)"
                )
            planned = ls.plan_sweep(
                problem,
                Axes(stored.directions, stored.attrs, stored.layout, identity),
                x_grid,
                y_grid,
                command=command_line(),
            )
            store = SweepFile.resume(output, planned.settings)
            say(f"resuming {output}: {int(store.done.sum())} of {store.done.size} points already done")
            earlier = pick_to_resume(strategy, store.picked, batch_size)  # run_sweep goes on with it
            if earlier is not None and earlier == store.picked:
                say(f"going on with strategy {earlier.describe()}, as the run before")
            elif earlier is not None and store.picked is not None:
                say(
                    f"going on with strategy {earlier.name} at --batch-size {batch_size} (the run before used "
                    f"{store.picked.batch_size}: values may differ from it in the last digits)"
                )
        elif world.main:
            the_axes = make_axes()
            if problem.buffer_line is not None:  # the file says how x=1 came to be the other checkpoint's own loss
                first = {**the_axes.attrs[0], "buffers": "interpolated"}
                the_axes = dataclasses.replace(the_axes, attrs=(first, *the_axes.attrs[1:]))
            planned = ls.plan_sweep(problem, the_axes, x_grid, y_grid, command=command_line(), store_dtype=store_dtype)
            store = planned.create_file(output)
        else:
            planned = None
        try:  # rank 0 made the file: a failure from here on removes it while it holds no point
            planned = world.broadcast(planned)
            strategy = world.broadcast(strategy)
            with progress(disable=not world.main) as bar:
                task = bar.add_task("sweep", total=int(planned.done.size))
                result = ls.run_planned(
                    problem, planned, store, strategy=strategy, warn=warn if world.main else _quiet, world=world,
                    chunk_seconds=save_every, progress=lambda done, total: bar.update(task, completed=done),
                    on_stage=lambda stage: bar.update(task, description=stage_label("sweep", stage)),
                )  # fmt: skip
            if eval_sets:
                result = _on_data_sets(problem, result, others, eval_sets, data_name, strategy, world, output)
        except LandscapeError as exc:
            if store is not None and not resume and not store.done.any():  # nothing computed: leave no file behind
                output.unlink(missing_ok=True)
            elif isinstance(exc, (PointFailure, PeersLost)) and store is not None:
                raise PointFailure(f"{exc}; {points_kept(int(store.done.sum()), store.done.size, output)}") from exc
            raise
        except KeyboardInterrupt:  # typer would exit 130 without a word
            if store is not None:
                done = int(store.done.sum())
                if not resume and done == 0:
                    output.unlink(missing_ok=True)
                    interrupted(" before any point was done; no file written")
                else:
                    interrupted(": " + points_kept(done, store.done.size, output))
            raise typer.Exit(130) from None
    if world.main:
        _report(result, output)


def _data_sets(given: list[str], data_name: str) -> dict[str, str]:
    """--eval-data NAME=PATH options as {name: path}, checked before anything is loaded."""
    from landscape.api import check_data_set_names

    sets: dict[str, str] = {}
    for item in given:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise LandscapeError(f"--eval-data {item!r}: expected NAME=PATH, e.g. test=test.npz")
        if name in sets:
            raise LandscapeError(f"--eval-data {item!r}: the name {name!r} is given twice")
        sets[name] = path
    try:
        check_data_set_names(list(sets), data_name)
    except ArgumentError as exc:
        raise LandscapeError(f"--eval-data: {exc.message}") from None
    return sets


def _on_data_sets(
    problem: Problem, result: ls.SweepResult, others: dict[str, Problem], sets: dict[str, str], data_name: str,
    strategy: str, world: Any, output: Path,
) -> ls.SweepResult:  # fmt: skip
    """The finished sweep's grid on each --eval-data set, added to OUTPUT as /data_sets."""
    from landscape.io.analysis_store import add_group

    with progress(disable=not world.main) as bar:
        task = bar.add_task("data sets", total=len(others) * int(result.done.size))
        result = ls.on_data_sets(
            problem, result, others, data_name=data_name, sources={data_name: str(problem.provenance.get("data", "")), **sets},
            strategy=strategy, world=world,
            warn=warn if world.main else _quiet, progress=lambda done, total: bar.update(task, completed=done),
        )  # fmt: skip
    if world.main:
        add_group(output, "data_sets", result.groups["data_sets"])
        numbers = result.groups["data_sets"].numbers
        for name in sets:
            out.print(f"{name}: loss at the center {numbers[f'{name}_loss_center']:.4g}, gap to {data_name} "
                      f"{numbers[f'{name}_gap_center']:+.4g} there, {numbers[f'{name}_gap_mean']:+.4g} on average")  # fmt: skip
    return result


def _make_axes(
    problem: Problem,
    dims: int,
    axes: str,
    axes_from: str | None,
    *,
    norm: tuple[str, ...],
    ignore: tuple[str, ...],
    seed: int,
    to: str | None,
    other: torch.Tensor | None,
    same_dir: bool = False,
    states: bool = False,
) -> Axes:
    """The sweep's axes as the options name them: random, Hessian eigenvectors, or those an earlier
    file holds (a sweep's directions, a curvature run's eigenvectors)."""
    line: dict[str, Any] = {"to": other, "to_label": to, "to_sha256": sha256_file(to)} if to else {}
    if axes_from:
        earlier = ls.load(axes_from)
        if not isinstance(earlier, (ls.CurvatureResult, ls.SweepResult)):
            raise LandscapeError(
                f"--axes-from {axes_from}: holds neither a sweep's directions nor eigenvectors (it is a"
                f" {earlier.kind} file; write one with `landscape sweep` or `landscape hessian --eigenvectors`)"
            )
        return ls.axes_from(problem, earlier, dims, source=axes_from, source_sha256=sha256_file(axes_from), **line)
    if axes == "hessian" and dims - (1 if to else 0) > 0:
        return ls.hessian_axes(problem, dims, seed=seed, **line)
    return ls.random_axes(problem, dims, norm=norm, ignore=ignore, seed=seed, same_dir=same_dir, states=states, **line)


def _report(result: ls.SweepResult, output: Path) -> None:
    """The strategy and its probe's timings (a strategy that failed was warned of as the probe dropped it),
    non-finite points; the file."""
    import numpy as np

    run = result.run
    timings = run.get("strategy_timings_s_per_point") or {}
    if timings:
        timing = ", ".join(f"{n} {1e3 * t:.2g} ms/pt" for n, t in timings.items())
        # the probe's cost is what it spent over its points' own work at the winner's pace (its points are kept)
        cost = float(run.get("probe_excess_seconds") or 0.0)
        share = cost / max(float(run.get("seconds") or 0.0), 1e-9)
        probe = f"probe cost {cost:.2g} s, {100 * share:.0f}% of the sweep: " if run.get("probe_seconds") else ""
        untried = run.get("strategy_untried") or []
        skipped = (
            f"; not tried, the run being too short to pay for trying them: {', '.join(untried)}" if untried else ""
        )
        say(f"strategy {run['strategy']} ({probe}{timing}{skipped})")
    elif run.get("strategy", "none") != "none":
        say(f"strategy {run['strategy']}")
    for switch in run.get("strategy_switches") or []:  # the run re-checked the probe's pick and moved on
        say(f"strategy re-checked: {switch}")
    nonfinite = int((result.done & ~np.isfinite(result.loss)).sum())
    if nonfinite:
        warn(f"the loss was NaN or infinite at {nonfinite} grid point(s); stored as NaN")
    wrote(output)
