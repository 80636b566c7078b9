"""Commands over several checkpoints of one model: `path` (and its barrier), `plane`, `trajectory`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

import landscape as ls
from landscape.cli import app
from landscape.cli.options import (
    BatchSize,
    Config,
    Data,
    Device,
    Dtype,
    Loss,
    Model,
    Sample,
    Samples,
    Seed,
    UnsafePickle,
    command_line,
    in_range,
    model_options,
    out,
    parse_range,
    progress,
    say,
    stage_label,
    warn,
    wrote,
)
from landscape.cli.shared import (
    ANALYSIS,
    Checkpoints,
    Figure,
    Force,
    Output,
    Strategy,
    check_output,
    checkpoint_paths,
    draw_figure,
    load_states,
    problem_at,
)
from landscape.errors import LandscapeError

if TYPE_CHECKING:
    from landscape.problem import Problem

CURVE = "Trained curve (Garipov et al.)"


def _run_plane(output: Path, problem: Problem, planned: ls.SweepResult, strategy: str) -> None:
    """A plane's grid into OUTPUT: the file made first with the plane's own group, then filled chunk by chunk."""
    import numpy as np

    from landscape.io.analysis_store import add_group

    store = planned.create_file(output)
    for name, group in planned.groups.items():
        add_group(output, name, group)
    with progress() as bar:
        task = bar.add_task(planned.kind, total=store.done.size)
        result = ls.run_planned(problem, planned, store, strategy=strategy, warn=warn,
                                progress=lambda done, total: bar.update(task, completed=done),
                                on_stage=lambda stage: bar.update(task, description=stage_label(planned.kind, stage)))  # fmt: skip
    say(f"strategy {result.run.get('strategy', 'none')}")
    nonfinite = int((result.done & ~np.isfinite(result.loss)).sum())
    if nonfinite:
        warn(f"the loss was NaN or infinite at {nonfinite} grid point(s); stored as NaN")


# --------------------------------------------------------------------------- path


@app.command(rich_help_panel="Compute")
@model_options
def path(
    checkpoints: Checkpoints = None,
    output: Output = Path("landscape-out/path.h5"),
    sample: Sample = None,
    model: Model = None,
    data: Data = None,
    loss: Loss = None,
    points: Annotated[
        int, typer.Option(help="Points along the path, t in [0, 1] (61 as usual).", rich_help_panel=ANALYSIS)
    ] = 61,
    curve: Annotated[
        str | None,
        typer.Option(
            help="linear (the default): straight line (polyline through more than two); bezier: Bezier curve with the middle "
            "checkpoints as bends (Garipov et al.); with --train: bezier (the default) or polychain, through a trained bend.",
            rich_help_panel=ANALYSIS,
            show_default=False,
        ),
    ] = None,
    bn_recalibrate: Annotated[
        bool,
        typer.Option(
            "--bn-recalibrate",
            help="Recompute BatchNorm running statistics at every point on --train-data.",
            rich_help_panel=ANALYSIS,
        ),
    ] = False,
    align: Annotated[
        bool,
        typer.Option(
            "--align",
            help="Permute each later checkpoint's hidden units to match the one before (weight matching, Git Re-Basin) "
            "and report the barrier before and after.",
            rich_help_panel=ANALYSIS,
        ),
    ] = False,
    train_data: Annotated[
        str | None,
        typer.Option(
            help="Training data for --bn-recalibrate and --train (same forms as --data; default: --data).",
            rich_help_panel=ANALYSIS,
        ),
    ] = None,
    train: Annotated[
        bool,
        typer.Option(
            "--train",
            help="Train the bend of a curve between two checkpoints for low loss along it (Garipov et al. 2018; "
            "--curve bezier or polychain) and report its barrier beside the straight line's.",
            rich_help_panel=CURVE,
        ),
    ] = False,
    train_steps: Annotated[
        int,
        typer.Option(
            help="SGD steps on the bend, each at a random t.",
            rich_help_panel=CURVE,
            callback=in_range("--train-steps", positive=True),
        ),
    ] = 500,
    train_lr: Annotated[
        float,
        typer.Option(
            help="Learning rate of the bend's SGD (momentum 0.9).",
            rich_help_panel=CURVE,
            callback=in_range("--train-lr", positive=True),
        ),
    ] = 0.05,
    train_batch: Annotated[
        int,
        typer.Option(
            help="Training samples per step.", rich_help_panel=CURVE, callback=in_range("--train-batch", positive=True)
        ),
    ] = 128,
    save_bend: Annotated[
        Path | None,
        typer.Option(help="Also write the trained bend as a checkpoint (.pt or .safetensors).", rich_help_panel=CURVE),
    ] = None,
    samples: Samples = None,
    seed: Seed = 0,
    batch_size: BatchSize = None,
    device: Device = "auto",
    dtype: Dtype = "float32",
    strategy: Strategy = "auto",
    force: Force = False,
    figure: Figure = None,
    unsafe_pickle: UnsafePickle = False,
    config: Config = None,
    model_options: dict[str, Any] | None = None,
) -> None:
    """Loss along the path between checkpoints over the whole state (BatchNorm buffers too), and its barrier.

    barrier = max_t [L(theta(t)) - ((1-t) L(theta_0) + t L(theta_1))]. With --bn-recalibrate the running
    statistics are recomputed at every point on training data instead of being interpolated.

    Examples:

      landscape path --sample cnn -o path.h5 --figure path.png           (first to last snapshot)

      landscape path a.pt bend.pt b.pt --curve bezier --model net.py:make --data val.npz -o path.h5

      landscape path a.pt b.pt --sample cnn --bn-recalibrate --train-data train.npz -o path.h5

      landscape path a.pt b.pt --model net.py:make --data val.npz --align -o path.h5   (barrier before/after alignment)

      landscape path a.pt b.pt --model net.py:make --data train.npz --curve bezier --train -o curve.h5
    """
    from landscape.data import subset
    from landscape.io.data import load_data
    from landscape.io.spec import sha256_file
    from landscape.model_io import to_device
    from landscape.paths import CURVES, has_batchnorm

    check_output(output, force)
    curve = curve or ("bezier" if train else "linear")
    if train:
        from landscape.curve_fit import TRAINABLE_CURVES

        if curve not in TRAINABLE_CURVES:
            raise LandscapeError(f"--curve {curve!r} with --train: expected one of {', '.join(TRAINABLE_CURVES)}")
        if align or bn_recalibrate:
            raise LandscapeError(
                f"{'--align' if align else '--bn-recalibrate'} with --train: a trained curve recalibrates BatchNorm itself; "
                "align B first with `landscape align`"
            )
    elif curve not in CURVES:
        raise LandscapeError(f"--curve {curve!r}: expected one of {', '.join(CURVES)}")
    if save_bend is not None:
        if not train:
            raise LandscapeError("--save-bend is only used with --train")
        check_output(save_bend, force)
    from landscape.api import check_path_points

    check_path_points(points)  # before anything is loaded
    ckpts = checkpoint_paths(checkpoints, sample, "ends")
    if len(ckpts) < 2:
        raise LandscapeError("path: name at least two checkpoints")
    if train and len(ckpts) != 2:
        raise LandscapeError(f"--train: name the two ends of the curve; got {len(ckpts)} checkpoints")
    if curve == "bezier" and len(ckpts) == 2 and not train:
        say("a Bezier curve through two checkpoints is the straight line")
    if train_data and not (bn_recalibrate or train):
        raise LandscapeError("--train-data is only used with --bn-recalibrate or --train")
    kw = dict(model=model, data=data, loss=loss, sample=sample, samples=samples, seed=seed, batch_size=batch_size,
              device=device, dtype=dtype, unsafe_pickle=unsafe_pickle, **(model_options or {}))  # fmt: skip
    problem, prov = problem_at(kw, ckpts[0])
    states = load_states(ckpts, problem, kw)
    training: tuple[Any, Any] | None = None
    needs_training_data = train or (bn_recalibrate and has_batchnorm(problem.model))
    if train_data and needs_training_data:
        xt, yt = load_data(train_data, unsafe_pickle)
        xt, yt = subset(xt, yt, samples, seed)
        training = (to_device(xt, problem.device, problem.dtype), yt.to(problem.device))
    elif needs_training_data:
        if not problem.in_memory:
            raise LandscapeError(f"{'--train' if train else '--bn-recalibrate'}: --data is streamed (too large to hold); "
                                 "give --train-data that fits in memory")  # fmt: skip
        say(f"{'--train' if train else '--bn-recalibrate'} without --train-data: on --data")
    sha = [sha256_file(c) for c in ckpts]
    if train:
        say(
            f"{prov['parameters']:,} parameters, {problem.n:,} samples, training a {curve} bend for {train_steps} steps, {points} points"
        )
        with progress() as bar:
            task = bar.add_task("curve", total=train_steps + 2 * points)
            res = ls.fit_curve(
                problem, states[1], points, curve, start=states[0], steps=train_steps, lr=train_lr, batch_size=train_batch,
                seed=seed, train_on=training, names=ckpts, checkpoints_sha256=sha, train_data=train_data or "",
                strategy=strategy, warn=warn, command=command_line(), progress=lambda done, total: bar.update(task, completed=done),
            )  # fmt: skip
    else:
        recal = None
        if bn_recalibrate:
            if not has_batchnorm(problem.model):
                warn("--bn-recalibrate: the model has no BatchNorm layer; nothing to recalibrate")
            else:
                recal = training[0] if training is not None else problem.x
        say(
            f"{prov['parameters']:,} parameters, {problem.n:,} samples, {curve} path through {len(ckpts)} checkpoints, {points} points"
        )
        with progress() as bar:
            task = bar.add_task("path", total=points * (2 if align else 1))
            res = ls.path(
                problem, states[1:], points, curve, start=states[0], recalibrate=recal, align=align, strategy=strategy, warn=warn,
                names=ckpts, checkpoints_sha256=sha, train_data=train_data or "", command=command_line(),
                progress=lambda done, total: bar.update(task, completed=done),
            )  # fmt: skip
    res.save(output)
    loss_along = res.arrays["loss"]
    out.print(
        f"barrier = {res.barrier:.4g} at t = {res['barrier_t']:.3g}  (loss {float(loss_along[0]):.4g} -> {float(loss_along[-1]):.4g}; "
        f"BN buffers {res.attrs['buffers']})"
    )
    if align:
        out.print(f"barrier before alignment = {res['barrier_unaligned']:.4g}")
    if train:
        out.print(f"barrier of the straight line = {res['barrier_line']:.4g}")
    wrote(output)
    if save_bend is not None:
        import torch

        from landscape.curve_fit import bend_state
        from landscape.io.checkpoint import write_state_dict

        bend = torch.as_tensor(res.arrays["bend"][0]).to(problem.theta.dtype)
        wrote(write_state_dict(save_bend, bend_state(problem, states[0], states[1], bend)))
    draw_figure(figure, output)


# --------------------------------------------------------------------------- align


@app.command(rich_help_panel="Compute")
@model_options
def align(
    checkpoints: Checkpoints = None,
    output: Annotated[
        Path,
        typer.Option("--output", "-o", help="The permuted second checkpoint: .safetensors, or a .pt dict of tensors."),
    ] = Path("landscape-out/aligned.pt"),
    sample: Sample = None,
    model: Model = None,
    data: Data = None,
    loss: Loss = None,
    samples: Samples = None,
    seed: Seed = 0,
    device: Device = "auto",
    dtype: Dtype = "float32",
    force: Force = False,
    unsafe_pickle: UnsafePickle = False,
    config: Config = None,
    model_options: dict[str, Any] | None = None,
) -> None:
    """Permute B's hidden units to match A's (weight matching, Ainsworth et al. 2023, "Git Re-Basin").

    The result computes exactly B's function but lies near A in weights, so the path between A and
    it shows the barrier that remains once the permutation symmetry is taken out. The units that may
    move (Linear and Conv outputs, through BatchNorm, activations, pooling, flattening and residual
    additions) are read from the model's graph with torch.fx on a few rows of --data; units the graph
    uses any other way stay in place.

    Examples:

      landscape align a.pt b.pt --model net.py:make --data val.npz -o b_aligned.pt

      landscape path a.pt b_aligned.pt --model net.py:make --data val.npz -o path.h5
    """
    from landscape.io.spec import sha256_file

    check_output(output, force)
    ckpts = checkpoint_paths(checkpoints, sample, "ends")
    if len(ckpts) != 2:
        raise LandscapeError(
            f"align: name two checkpoints, A (the reference) and B (the one permuted); got {len(ckpts)}"
        )
    kw = dict(model=model, data=data, loss=loss, sample=sample, samples=samples, seed=seed, batch_size=None,
              device=device, dtype=dtype, unsafe_pickle=unsafe_pickle, **(model_options or {}))  # fmt: skip
    problem, _ = problem_at(kw, ckpts[0])
    (other,) = load_states(ckpts[1:], problem, kw)
    res = ls.align(problem, other, seed=seed)
    if not res.groups:
        warn("align: no hidden units of this model can be permuted (its graph fixes them all); B is written unchanged")
    written = res.save(output)
    out.print(
        f"{res.groups} groups of units ({res.units:,} units), {res.moved:,} moved; distance to A "
        f"{res.distance_before:.4g} -> {res.distance_after:.4g}"
    )
    say(f"B = {ckpts[1]} (sha256 {sha256_file(ckpts[1])[:12]})")
    wrote(written)


# --------------------------------------------------------------------------- plane


@app.command(rich_help_panel="Compute")
@model_options
def plane(
    checkpoints: Checkpoints = None,
    output: Output = Path("landscape-out/plane.h5"),
    sample: Sample = None,
    model: Model = None,
    data: Data = None,
    loss: Loss = None,
    x: Annotated[
        str | None,
        typer.Option(
            help="x grid MIN:MAX:POINTS in parameter distance (default: the three points plus a margin, 21 points).",
            rich_help_panel=ANALYSIS,
        ),
    ] = None,
    y: Annotated[
        str | None, typer.Option(help="y grid MIN:MAX:POINTS (default like --x).", rich_help_panel=ANALYSIS)
    ] = None,
    samples: Samples = None,
    seed: Seed = 0,
    batch_size: BatchSize = None,
    device: Device = "auto",
    dtype: Dtype = "float32",
    strategy: Strategy = "auto",
    force: Force = False,
    figure: Figure = None,
    unsafe_pickle: UnsafePickle = False,
    config: Config = None,
    model_options: dict[str, Any] | None = None,
) -> None:
    """The loss on the plane through three checkpoints A, B, C (A at the origin, orthonormal axes).

    Axes: e1 along B - A, e2 the part of C - A orthogonal to it; coordinates are parameter-space
    distances, so angles and lengths are true. Off the three points the BatchNorm buffers are A's;
    each checkpoint's own loss and the plane's loss at its position are both stored.

    Examples:

      landscape plane --sample mlp -o plane.h5 --figure plane.png

      landscape plane a.pt b.pt c.pt --model net.py:make --data val.npz --x -5:30:31 --y -5:20:21 -o plane.h5
    """
    from landscape.io.spec import sha256_file

    check_output(output, force)
    ckpts = checkpoint_paths(checkpoints, sample, "three")
    if len(ckpts) != 3:
        raise LandscapeError(f"plane: name exactly three checkpoints (got {len(ckpts)})")
    kw = dict(model=model, data=data, loss=loss, sample=sample, samples=samples, seed=seed, batch_size=batch_size,
              device=device, dtype=dtype, unsafe_pickle=unsafe_pickle, **(model_options or {}))  # fmt: skip
    problem, prov = problem_at(kw, ckpts[0])
    states = load_states(ckpts, problem, kw)
    planned = ls.plan_plane(
        problem, states, parse_range(x, "--x") if x else None, parse_range(y, "--y") if y else None, names=ckpts,
        checkpoints_sha256=[sha256_file(c) for c in ckpts], seed=seed, command=command_line(),
    )  # fmt: skip
    names = [Path(c).name for c in ckpts]
    say(
        f"{prov['parameters']:,} parameters, {problem.n:,} samples, plane through {', '.join(names)}; grid {planned.loss.shape[0]} x {planned.loss.shape[1]}"
    )
    _run_plane(output, problem, planned, strategy)
    g = planned.groups["plane"].arrays
    for name, p, lo, la in zip(names, g["points"].tolist(), g["own_loss"].tolist(), g["plane_loss"].tolist()):
        out.print(f"{name}: at ({p[0]:.4g}, {p[1]:.4g}), own loss {lo:.4g}, plane loss {la:.4g}")
    wrote(output)
    draw_figure(figure, output)


# --------------------------------------------------------------------------- trajectory


@app.command(rich_help_panel="Compute")
@model_options
def trajectory(
    checkpoints: Checkpoints = None,
    output: Output = Path("landscape-out/trajectory.h5"),
    sample: Sample = None,
    model: Model = None,
    data: Data = None,
    loss: Loss = None,
    x: Annotated[
        str | None,
        typer.Option(
            help="x grid MIN:MAX:POINTS along the first principal direction (default: the path plus a margin, 21 points).",
            rich_help_panel=ANALYSIS,
        ),
    ] = None,
    y: Annotated[
        str | None,
        typer.Option(help="y grid MIN:MAX:POINTS along the second principal direction.", rich_help_panel=ANALYSIS),
    ] = None,
    center: Annotated[
        bool,
        typer.Option(
            "--center",
            help="Subtract the mean offset before the PCA (as Li et al.'s sklearn PCA does); default: the best plane through the final checkpoint.",
            rich_help_panel=ANALYSIS,
        ),
    ] = False,
    samples: Samples = None,
    seed: Seed = 0,
    batch_size: BatchSize = None,
    device: Device = "auto",
    dtype: Dtype = "float32",
    strategy: Strategy = "auto",
    force: Force = False,
    figure: Figure = None,
    unsafe_pickle: UnsafePickle = False,
    config: Config = None,
    model_options: dict[str, Any] | None = None,
) -> None:
    """The training path projected on the PCA plane of the checkpoints, over the loss contour of that plane (Li et al.).

    Give the checkpoints in training order, the final one last (the origin). The explained variance of
    the two axes is stored; each checkpoint's own loss is compared with the loss at its projected
    point, and the gap is reported (the path is drawn on a plane the checkpoints may not lie in).

    Examples:

      landscape trajectory --sample mlp -o traj.h5 --figure traj.png

      landscape trajectory ep*.pt final.pt --model net.py:make --data val.npz -o traj.h5
    """
    from landscape.io.spec import sha256_file

    check_output(output, force)
    ckpts = checkpoint_paths(checkpoints, sample, "all")
    if len(ckpts) < 3:
        raise LandscapeError(f"trajectory: need at least three checkpoints (got {len(ckpts)})")
    kw = dict(model=model, data=data, loss=loss, sample=sample, samples=samples, seed=seed, batch_size=batch_size,
              device=device, dtype=dtype, unsafe_pickle=unsafe_pickle, **(model_options or {}))  # fmt: skip
    problem, prov = problem_at(kw, ckpts[-1])
    states = load_states(ckpts, problem, kw)
    planned = ls.plan_trajectory(
        problem, states, parse_range(x, "--x") if x else None, parse_range(y, "--y") if y else None, center=center, names=ckpts,
        checkpoints_sha256=[sha256_file(p) for p in ckpts], seed=seed, command=command_line(),
    )  # fmt: skip
    group = planned.groups["trajectory"]
    explained = group.arrays["explained_variance"]
    say(f"{prov['parameters']:,} parameters, {problem.n:,} samples, {len(ckpts)} checkpoints; explained variance "
        f"{100 * float(explained[0]):.1f}% + {100 * float(explained[1]):.1f}%; grid {planned.loss.shape[0]} x {planned.loss.shape[1]}")  # fmt: skip
    _run_plane(output, problem, planned, strategy)
    own, projected, rel = group.arrays["own_loss"], group.arrays["projected_loss"], group.arrays["relative_residual"]
    gap = abs(projected - own)
    worst = int(gap.argmax())
    out.print(
        f"explained variance {100 * float(explained.sum()):.1f}%; the projected path's loss differs from the "
        f"checkpoints' own by up to {float(gap.max()):.4g} ({Path(ckpts[worst]).name}: own {float(own[worst]):.4g}, "
        f"projected {float(projected[worst]):.4g}; {100 * float(rel[worst]):.1f}% of its offset lies off the plane)"
    )
    wrote(output)
    draw_figure(figure, output)
