"""Analysis commands at one checkpoint or along training: roughness, sharpness, track, and the CI gate `metrics`."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from landscape.cli import app
from landscape.cli.options import (
    RUN,
    BatchSize,
    Checkpoint,
    Config,
    Data,
    Device,
    Dtype,
    Loss,
    Model,
    Sample,
    Samples,
    SaveEvery,
    Seed,
    UnsafePickle,
    command_line,
    in_range,
    interrupted,
    load_spec,
    model_options,
    out,
    points_kept,
    progress,
    say,
    tagged,
    warn,
    wrote,
)
from landscape.cli.shared import (
    ANALYSIS,
    Checkpoints,
    Figure,
    Force,
    Ignore,
    Norm,
    Output,
    Strategy,
    check_output,
    checkpoint_paths,
    curvature_with_progress,
    draw_figure,
    load_states,
    problem_at,
)
from landscape.errors import LandscapeError, PointFailure
from landscape.names import CHUNK_SECONDS


def _finite(obj: Any) -> Any:
    """NaN/inf as null, so the JSON is strict (CI tools reject NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _fmt(value: float) -> str:
    if isinstance(value, float) and value != value:  # NaN: nothing there (the first checkpoint's overlap)
        return "-"
    return f"{value:.6g}" if isinstance(value, float) else str(value)


# --------------------------------------------------------------------------- roughness


@app.command(rich_help_panel="Compute")
@model_options
def roughness(
    output: Output = Path("landscape-out/roughness.h5"),
    sample: Sample = None,
    model: Model = None,
    checkpoint: Checkpoint = None,
    data: Data = None,
    loss: Loss = None,
    directions: Annotated[int, typer.Option(help="Number M of random directions.", rich_help_panel=ANALYSIS)] = 100,
    span: Annotated[
        float, typer.Option(help="Half-width l of each profile: alpha in [-l, l].", rich_help_panel=ANALYSIS)
    ] = 0.1,
    steps: Annotated[
        int,
        typer.Option(
            help="Intervals m per profile (m+1 points; even puts alpha=0 on the grid).", rich_help_panel=ANALYSIS
        ),
    ] = 20,
    norm: Norm = "filter",
    ignore: Ignore = "biasbn",
    seed: Seed = 0,
    samples: Samples = None,
    batch_size: BatchSize = None,
    device: Device = "auto",
    dtype: Dtype = "float64",
    strategy: Strategy = "auto",
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Finish a killed run: its points are kept in OUTPUT.points (same settings required).",
            rich_help_panel=RUN,
        ),
    ] = False,
    save_every: SaveEvery = CHUNK_SECONDS,
    force: Force = False,
    figure: Figure = None,
    unsafe_pickle: UnsafePickle = False,
    config: Config = None,
    model_options: dict[str, Any] | None = None,
) -> None:
    """Roughness index of the loss around a checkpoint (Wang et al.): RI = sigma/mu of the normalized
    total variation of M random 1D profiles.

    All M x (m+1) points are evaluated as one batched sweep; the profiles, the per-direction T_j and
    RI go to the results file. RI near 0 means smooth, bowl-like profiles; a large RI an oscillatory landscape.

    Examples:

      landscape roughness --sample mlp -o rough.h5 --figure rough.png

      landscape roughness --sample linreg --directions 20 --span 0.1 --steps 20 -o rough.h5
    """
    import torch

    import landscape as ls
    from landscape.api import check_roughness, roughness_settings
    from landscape.cli.options import load_problem
    from landscape.io.analysis_store import PointStore
    from landscape.measures import KnownPoints

    check_roughness(directions, span, steps)  # before anything is loaded or written
    check_output(output, force)
    points_path = output.with_name(output.name + ".points")  # the points done so far, for --resume
    if points_path.exists() and not resume and not force:
        raise LandscapeError(
            f"{points_path}: points of a killed run; pass --resume to finish it or --force to start over"
        )
    spec = load_spec(
        model=model, checkpoint=checkpoint, data=data, loss=loss, sample=sample, samples=samples,
        seed=seed, batch_size=batch_size, device=device, dtype=dtype, unsafe_pickle=unsafe_pickle, **(model_options or {}),
    )  # fmt: skip
    problem, prov = load_problem(spec, say)
    say(
        f"{prov['parameters']:,} parameters, {problem.n:,} samples, {directions} directions x {steps + 1} points "
        f"in [-{span:g}, {span:g}], {prov['device']} {dtype}"
    )
    if steps % 2:
        warn(f"--steps {steps} is odd: alpha = 0 (the checkpoint) is not on the profile grid")
    total = directions * (steps + 1)
    same = roughness_settings(problem, directions, span, steps, norm=norm, ignore=ignore, seed=seed).as_dict()
    points = PointStore.open(points_path, same, total, problem.classification, resume)
    known = None
    if points.done.any():
        say(f"resuming from {points_path}: {int(points.done.sum())} of {total} points already done")
        known = KnownPoints(
            torch.from_numpy(points.loss),
            None if points.accuracy is None else torch.from_numpy(points.accuracy),
            torch.from_numpy(points.done),
        )
    try:
        with progress() as bar:
            task = bar.add_task("roughness", total=total)
            res = ls.roughness(
                problem, directions, span, steps, norm=norm, ignore=ignore, seed=seed, strategy=strategy, warn=warn, known=known,
                chunk_seconds=save_every, progress=lambda done, total: bar.update(task, completed=done), command=command_line(),
                on_chunk=lambda idx, v: points.write(idx.numpy(), v.loss.numpy(), None if v.accuracy is None else v.accuracy.numpy()),
            )  # fmt: skip
    except KeyboardInterrupt:  # typer would exit 130 without a word
        if not points.done.any():
            points_path.unlink(missing_ok=True)
            interrupted(" before any point was done; no file written")
        else:
            interrupted(": " + points_kept(int(points.done.sum()), total, points_path))
        raise typer.Exit(130) from None
    except LandscapeError as exc:
        if not points.done.any():  # nothing computed: leave no file behind
            points_path.unlink(missing_ok=True)
        elif isinstance(exc, PointFailure):
            raise PointFailure(f"{exc}; {points_kept(int(points.done.sum()), total, points_path)}") from exc
        raise
    res.save(output)
    points.remove()
    say(f"strategy {res.attrs['strategy']}")
    if res["directions_dropped"]:
        warn(f"{res['directions_dropped']} direction(s) gave a flat or non-finite profile and were left out of RI")
    out.print(f"roughness index RI = {res['ri']:.4g}  (mu = {res['mu']:.4g}, sigma = {res['sigma']:.4g}, M = {res['directions_used']}; "
              f"a bowl gives T = 1/l = {1 / span:.4g})")  # fmt: skip
    wrote(output)
    draw_figure(figure, output)


# --------------------------------------------------------------------------- metrics


@app.command(rich_help_panel="Inspect")
def metrics(
    paths: Annotated[list[Path], typer.Argument(help="Results files written by landscape.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the numbers (and checks) as JSON.")] = False,
    fail_if: Annotated[
        list[str] | None,
        typer.Option(
            "--fail-if",
            help='Exit with status 1 when a condition holds, e.g. "lambda_max > 50" or "roughness.ri >= 0.3". '
            "Repeatable. A short name applies to every number ending in it; NaN counts as broken, and so does "
            "any bound on a file whose loss grids hold NaN or infinite points.",
        ),
    ] = None,
    allow_nonfinite: Annotated[
        bool,
        typer.Option(
            "--allow-nonfinite",
            help="Check the bounds of files with NaN or infinite points too (over their finite points only).",
        ),
    ] = False,
) -> None:
    """Every number in the given results files as one table (or JSON), with CI gates.

    Examples:

      landscape metrics rough.h5 sharp.h5

      landscape metrics rough.h5 --fail-if "ri > 0.5" --fail-if "sam > 0.1"   (exit 1 when broken)
    """
    from landscape.metrics import check, collect, parse_condition

    conditions = [parse_condition(c) for c in (fail_if or [])]
    tables = {str(p): collect(p) for p in paths}
    breaches = check(conditions, tables, allow_nonfinite=allow_nonfinite)
    if as_json:
        payload = {
            "numbers": tables,
            "checks": [c.text for c in conditions],
            "broken": [
                {"file": b.file, "name": b.key, "value": b.value, "condition": b.condition.text, "message": b.message()}
                for b in breaches
            ],
            "passed": not breaches,
        }
        out.print_json(json.dumps(_finite(payload)))
    else:
        table = Table("file", "name", "value", title="metrics", title_justify="left")
        for file, numbers in tables.items():
            for key, value in numbers.items():
                table.add_row(file, key, _fmt(value))
        out.print(table)
    for b in breaches:
        tagged("FAIL", "red", b.message())
    if breaches:
        raise typer.Exit(1)
    if conditions:
        tagged("ok", "green", f": {len(conditions)} bound(s) hold", sep="")


# --------------------------------------------------------------------------- sharpness


@app.command(rich_help_panel="Compute")
@model_options
def sharpness(
    output: Output = Path("landscape-out/sharpness.h5"),
    sample: Sample = None,
    model: Model = None,
    checkpoint: Checkpoint = None,
    data: Data = None,
    loss: Loss = None,
    rho: Annotated[
        float,
        typer.Option(
            help="SAM radius: L(theta + rho g/|g|) - L(theta) (Foret et al.).",
            rich_help_panel=ANALYSIS,
            callback=in_range("--rho", positive=True),
        ),
    ] = 0.05,
    epsilon: Annotated[
        float,
        typer.Option(
            help="epsilon-sharpness box: |y_i| <= epsilon (|theta_i| + 1) (Keskar et al.).",
            rich_help_panel=ANALYSIS,
            callback=in_range("--epsilon", positive=True),
        ),
    ] = 1e-3,
    ascent_steps: Annotated[
        int,
        typer.Option(
            help="Projected gradient-ascent steps for the epsilon-sharpness maximum.", rich_help_panel=ANALYSIS
        ),
    ] = 20,
    curvature: Annotated[
        Path | None,
        typer.Option(
            help="A results file of `landscape hessian`: take lambda_max, trace and the LLA ratios from it.",
            rich_help_panel=ANALYSIS,
        ),
    ] = None,
    hessian: Annotated[
        bool,
        typer.Option(
            "--hessian",
            help="Compute lambda_max, trace and the spectral density (for the LLA ratios) here.",
            rich_help_panel=ANALYSIS,
        ),
    ] = False,
    samples: Samples = None,
    seed: Seed = 0,
    batch_size: BatchSize = None,
    device: Device = "auto",
    dtype: Dtype = "float32",
    force: Force = False,
    unsafe_pickle: UnsafePickle = False,
    config: Config = None,
    model_options: dict[str, Any] | None = None,
) -> None:
    """Sharpness numbers of a checkpoint: SAM sharpness, epsilon-sharpness, and (with --curvature or
    --hessian) lambda_max, the Hessian trace and the Loss Landscape Analysis ratios re and K.

    Examples:

      landscape sharpness --sample mlp -o sharp.h5

      landscape sharpness --sample cnn --hessian -o sharp.h5 && landscape metrics sharp.h5 --fail-if "lambda_max > 50"
    """
    import landscape as ls
    from landscape.cli.options import load_problem

    check_output(output, force)
    if curvature is not None and hessian:
        raise LandscapeError("--curvature and --hessian: give one (a file to read, or compute here)")
    curv: ls.CurvatureResult | bool = hessian
    if curvature is not None:
        loaded = ls.load(curvature)
        if not isinstance(loaded, ls.CurvatureResult):
            raise LandscapeError(
                f"--curvature {curvature}: holds no curvature results (write one with `landscape hessian`)"
            )
        curv = loaded
    spec = load_spec(
        model=model, checkpoint=checkpoint, data=data, loss=loss, sample=sample, samples=samples,
        seed=seed, batch_size=batch_size, device=device, dtype=dtype, unsafe_pickle=unsafe_pickle, **(model_options or {}),
    )  # fmt: skip
    problem, prov = load_problem(spec, say)
    if isinstance(curv, ls.CurvatureResult):
        ours = prov["checkpoint_sha256"]
        theirs = str(curv.provenance.get("checkpoint_sha256", ""))
        if theirs and theirs != ours:
            raise LandscapeError(
                f"--curvature {curvature}: computed for another checkpoint (sha256 {theirs[:12]}..., this one {ours[:12]}...)"
            )
    say(f"{prov['parameters']:,} parameters, {problem.n:,} samples, {prov['device']} {dtype}")
    source = str(curvature or "")
    if hessian:
        say("curvature: lambda_max by Lanczos, trace by Hutch++, density by SLQ (landscape.curvature)")
        curv = curvature_with_progress(
            problem, top_k=1, tol=1e-3, trace=True, density=True, eigenvectors=False, seed=seed
        )
        source = "computed (--hessian)"
    res = ls.sharpness(
        problem, rho, epsilon, ascent_steps, curvature=curv, seed=seed, source=source, command=command_line()
    )
    res.save(output)
    table = Table("number", "value", title="sharpness", title_justify="left")
    for key, value in res.numbers.items():
        table.add_row(key, _fmt(value))
    out.print(table)
    wrote(output)


# --------------------------------------------------------------------------- track


@app.command(rich_help_panel="Compute")
@model_options
def track(
    checkpoints: Checkpoints = None,
    output: Output = Path("landscape-out/track.h5"),
    sample: Sample = None,
    model: Model = None,
    data: Data = None,
    loss: Loss = None,
    lr: Annotated[
        float | None,
        typer.Option(
            help="Step size eta of the training run: draws the 2/eta line (edge of stability, Cohen et al.).",
            rich_help_panel=ANALYSIS,
        ),
    ] = None,
    steps: Annotated[
        str | None,
        typer.Option(
            help="Training step of each checkpoint, comma-separated (default 0, 1, 2, ...).", rich_help_panel=ANALYSIS
        ),
    ] = None,
    trace: Annotated[
        bool,
        typer.Option(
            "--trace", help="Also estimate the Hessian trace (Hutch++) at each checkpoint.", rich_help_panel=ANALYSIS
        ),
    ] = False,
    tol: Annotated[
        float, typer.Option(help="Relative residual tolerance of the Lanczos lambda_max.", rich_help_panel=ANALYSIS)
    ] = 1e-3,
    subspace: Annotated[
        int,
        typer.Option(
            help="Also the share of the gradient in the top-K Hessian eigenspace and the overlap of consecutive "
            "top-K subspaces (Gur-Ari et al. 2018; K = the number of classes, as they did). 0: off.",
            rich_help_panel=ANALYSIS,
            callback=in_range("--subspace", 0, 10_000),
        ),
    ] = 0,
    samples: Samples = None,
    seed: Seed = 0,
    batch_size: BatchSize = None,
    device: Device = "auto",
    dtype: Dtype = "float32",
    force: Force = False,
    figure: Figure = None,
    unsafe_pickle: UnsafePickle = False,
    config: Config = None,
    model_options: dict[str, Any] | None = None,
) -> None:
    """lambda_max (and the trace with --trace) of the Hessian at each checkpoint in training order.

    For gradient descent with step eta, lambda_max rises to about 2/eta and hovers there (edge of
    stability, Cohen et al. 2021); give --lr to draw that line.

    Examples:

      landscape track --sample linreg --lr 0.02 --steps 0,5,20,75,300 -o track.h5 --figure track.png

      landscape track ep*.pt --model net.py:make --data train.npz --lr 0.1 --trace -o track.h5

      landscape track --sample mlp --subspace 10 -o track.h5   (where the gradient lives: top-10 eigenspace)
    """
    import landscape as ls
    from landscape.io.spec import sha256_file

    check_output(output, force)
    ckpts = checkpoint_paths(checkpoints, sample, "all")
    if lr is not None and not lr > 0:
        raise LandscapeError(f"--lr {lr}: must be positive")
    step_values = None
    if steps:
        try:
            step_values = [float(s) for s in steps.split(",")]
        except ValueError:
            raise LandscapeError(f"--steps {steps!r}: expected numbers separated by commas, e.g. 0,10,30") from None
        if len(step_values) != len(ckpts):
            raise LandscapeError(f"--steps: {len(step_values)} values for {len(ckpts)} checkpoints")
    kw = dict(model=model, data=data, loss=loss, sample=sample, samples=samples, seed=seed, batch_size=batch_size,
              device=device, dtype=dtype, unsafe_pickle=unsafe_pickle, **(model_options or {}))  # fmt: skip
    problem, prov = problem_at(kw, ckpts[-1])
    states = load_states(ckpts, problem, kw)
    say(f"{prov['parameters']:,} parameters, {problem.n:,} samples, lambda_max at {len(ckpts)} checkpoints")
    with progress() as bar:
        task = bar.add_task("track", total=len(ckpts))
        res = ls.track(
            problem, states, lr=lr, steps=step_values, trace=trace, tol=tol, seed=seed, subspace=subspace, names=ckpts,
            checkpoints_sha256=[sha256_file(c) for c in ckpts], progress=lambda done, total: bar.update(task, completed=done),
            command=command_line(),
        )  # fmt: skip
    res.save(output)
    extra = (["trace"] if trace else []) + ([f"grad in top-{subspace}", "overlap"] if subspace else [])
    table = Table("checkpoint", "step", "loss", "lambda_max", *extra, title="track", title_justify="left")
    for j, c in enumerate(ckpts):
        arr = res.arrays
        row = [_fmt(float(arr["step"][j])), _fmt(float(arr["loss"][j])), _fmt(float(arr["lambda_max"][j]))]
        row += [_fmt(float(arr["trace"][j]))] if trace else []
        row += [_fmt(float(arr["grad_in_top"][j])), _fmt(float(arr["subspace_overlap"][j]))] if subspace else []
        table.add_row(Path(c).name, *row)
    out.print(table)
    if lr:
        out.print(
            f"2/lr = {2 / lr:.4g}; last lambda_max is {100 * float(res.arrays['lambda_max'][-1]) * lr / 2:.1f}% of it"
        )
    wrote(output)
    draw_figure(figure, output)
