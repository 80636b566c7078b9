"""Commands over several checkpoints of one model: `path` (and its barrier), `plane`, `trajectory`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
import typer

from landscape.cli import app
from landscape.cli.options import (
    model_options,
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
    out,
    progress,
    say,
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
    root_attrs,
)
from landscape.errors import LandscapeError
from landscape.io.analysis_groups import path_group, plane_group, trajectory_group
from landscape.io.analysis_store import Group, write_results


def _default_range(lo: float, hi: float, points: int, margin: float = 0.25) -> str:
    pad = margin * max(hi - lo, 1e-12)
    return f"{lo - pad}:{hi + pad}:{points}"


def _plane_sweep(
    output: Path, problem, prov: dict[str, Any], *, kind: str, settings: dict[str, Any], axes: torch.Tensor,
    axis_attrs: list[dict[str, Any]], grids: list[torch.Tensor], strategy: str, extra: dict[str, Group],
) -> None:
    """A 2D sweep of the plane spanned by `axes` around problem.theta, stored like `landscape sweep` plus `extra` groups."""
    from landscape.io.analysis_store import add_group
    from landscape.io.results import SweepFile
    from landscape.surface import run_sweep

    store_dtype = np.float64 if problem.dtype == torch.float64 else np.float32
    output.parent.mkdir(parents=True, exist_ok=True)
    store = SweepFile.create(
        output,
        attrs={**root_attrs(prov), "kind": kind},
        settings=settings,
        axes={n: (axes[i].numpy().astype(store_dtype), axis_attrs[i]) for i, n in enumerate(("x", "y"))},
        layout=problem.layout,
        coords={"x": grids[0].numpy(), "y": grids[1].numpy()},
        has_accuracy=problem.classification,
    )
    for name, group in extra.items():
        add_group(output, name, group)
    with progress() as bar:
        task = bar.add_task(kind, total=store.done.size)
        report = run_sweep(
            problem, axes.to(problem.dtype).double(), store, strategy=strategy, warn=warn,
            on_progress=lambda done, total: bar.update(task, completed=done),
        )
    say(f"strategy {report.strategy}")
    if report.nonfinite:
        warn(f"the loss was NaN or infinite at {report.nonfinite} grid point(s); stored as NaN")


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
    points: Annotated[int, typer.Option(help="Points along the path, t in [0, 1] (61 as usual).", rich_help_panel=ANALYSIS)] = 61,
    curve: Annotated[
        str, typer.Option(help="linear: straight line (polyline through more than two); bezier: Bezier curve with the middle checkpoints as bends (Garipov et al.).", rich_help_panel=ANALYSIS)
    ] = "linear",
    bn_recalibrate: Annotated[
        bool, typer.Option("--bn-recalibrate", help="Recompute BatchNorm running statistics at every point on --train-data.", rich_help_panel=ANALYSIS)
    ] = False,
    train_data: Annotated[
        str | None, typer.Option(help="Training inputs for --bn-recalibrate (same forms as --data; default: --data).", rich_help_panel=ANALYSIS)
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
    """
    from landscape.io.data import load_data, subset
    from landscape.model_io import to_device
    from landscape.io.spec import sha256_file
    from landscape.paths import CURVES, evaluate_path, has_batchnorm

    check_output(output, force)
    if curve not in CURVES:
        raise LandscapeError(f"--curve {curve!r}: expected one of {', '.join(CURVES)}")
    if points < 2:
        raise LandscapeError(f"--points {points}: need at least 2")
    ckpts = checkpoint_paths(checkpoints, sample, "ends")
    if len(ckpts) < 2:
        raise LandscapeError("path: name at least two checkpoints")
    if curve == "bezier" and len(ckpts) == 2:
        say("a Bezier curve through two checkpoints is the straight line")
    if train_data and not bn_recalibrate:
        raise LandscapeError("--train-data is only used with --bn-recalibrate")
    kw = dict(model=model, data=data, loss=loss, sample=sample, samples=samples, seed=seed, batch_size=batch_size,
              device=device, dtype=dtype, unsafe_pickle=unsafe_pickle, **(model_options or {}))
    problem, prov = problem_at(kw, ckpts[0])
    states = load_states(ckpts, problem, kw)
    recal = None
    if bn_recalibrate:
        if not has_batchnorm(problem.model):
            warn("--bn-recalibrate: the model has no BatchNorm layer; nothing to recalibrate")
        else:
            if train_data:
                xt, yt = load_data(train_data, unsafe_pickle)
                xt, _ = subset(xt, yt, samples, seed)
            else:
                say("--bn-recalibrate without --train-data: recalibrating on --data")
                xt = problem.x
            recal = to_device(xt, problem.device, problem.dtype)
    t = torch.linspace(0, 1, points, dtype=torch.float64)
    say(f"{prov['parameters']:,} parameters, {problem.n:,} samples, {curve} path through {len(ckpts)} checkpoints, {points} points")
    with progress() as bar:
        task = bar.add_task("path", total=points)
        res = evaluate_path(problem, states, t, curve=curve, recalibrate=recal, strategy=strategy, warn=warn,
                            on_point=lambda i: bar.update(task, completed=i))
    buffers = "recalibrated" if res.recalibrated else ("interpolated" if problem.buffers else "none")
    group = path_group(res, curve=curve, checkpoints=ckpts, buffers=buffers, train_data=train_data or ("--data" if res.recalibrated else ""))
    settings = {"checkpoints_sha256": [sha256_file(c) for c in ckpts], "curve": curve, "points": points,
                "bn_recalibrate": bn_recalibrate, "dtype": dtype, "samples": prov["samples"]}
    write_results(output, kind="path", attrs=root_attrs(prov), settings=settings, groups={"path": group}, layout=problem.layout)
    out.print(f"barrier = {res.barrier:.4g} at t = {res.barrier_t:.3g}  (loss {float(res.loss[0]):.4g} -> {float(res.loss[-1]):.4g}; BN buffers {buffers})")
    wrote(output)
    draw_figure(figure, output)


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
    x: Annotated[str | None, typer.Option(help="x grid MIN:MAX:POINTS in parameter distance (default: the three points plus a margin, 21 points).", rich_help_panel=ANALYSIS)] = None,
    y: Annotated[str | None, typer.Option(help="y grid MIN:MAX:POINTS (default like --x).", rich_help_panel=ANALYSIS)] = None,
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
    from landscape.paths import flat_params, plane_axes, plane_losses, state_losses
    from landscape.sweep import parse_range

    check_output(output, force)
    ckpts = checkpoint_paths(checkpoints, sample, "three")
    if len(ckpts) != 3:
        raise LandscapeError(f"plane: name exactly three checkpoints (got {len(ckpts)})")
    kw = dict(model=model, data=data, loss=loss, sample=sample, samples=samples, seed=seed, batch_size=batch_size,
              device=device, dtype=dtype, unsafe_pickle=unsafe_pickle, **(model_options or {}))
    problem, prov = problem_at(kw, ckpts[0])
    states = load_states(ckpts, problem, kw)
    flats = [flat_params(problem, s) for s in states]
    pa = plane_axes(*flats)
    pts = pa.points
    x_grid = parse_range(x or _default_range(float(pts[:, 0].min()), float(pts[:, 0].max()), 21), "--x")
    y_grid = parse_range(y or _default_range(float(pts[:, 1].min()), float(pts[:, 1].max()), 21), "--y")
    own_loss, own_acc = state_losses(problem, states)
    at_loss, at_acc = plane_losses(problem, pa.axes, pts)
    names = [Path(c).name for c in ckpts]
    group = plane_group(pts, (own_loss, own_acc), (at_loss, at_acc), ckpts)
    labels = [f"e1: toward {names[1]} (parameter distance)", f"e2: toward {names[2]}, orthogonalized (parameter distance)"]
    axis_attrs = [
        {"kind": "plane", "normalization": "orthonormal", "ignore": "none", "seed": seed, "source": ckpts[1 + i], "label": labels[i]}
        for i in range(2)
    ]
    axis_attrs[0]["cosine_with_y"] = axis_attrs[1]["cosine_with_x"] = 0.0
    settings = {"checkpoints_sha256": [sha256_file(c) for c in ckpts], "dtype": dtype, "samples": prov["samples"],
                "coords": {"x": x_grid.tolist(), "y": y_grid.tolist()}, "loss": prov["loss"]}
    say(f"{prov['parameters']:,} parameters, {problem.n:,} samples, plane through {', '.join(names)}; grid {len(x_grid)} x {len(y_grid)}")
    _plane_sweep(output, problem, prov, kind="plane", settings=settings, axes=pa.axes, axis_attrs=axis_attrs,
                 grids=[x_grid, y_grid], strategy=strategy, extra={"plane": group})
    for name, p, lo, la in zip(names, pts.tolist(), own_loss.tolist(), at_loss.tolist()):
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
    x: Annotated[str | None, typer.Option(help="x grid MIN:MAX:POINTS along the first principal direction (default: the path plus a margin, 21 points).", rich_help_panel=ANALYSIS)] = None,
    y: Annotated[str | None, typer.Option(help="y grid MIN:MAX:POINTS along the second principal direction.", rich_help_panel=ANALYSIS)] = None,
    center: Annotated[bool, typer.Option("--center", help="Subtract the mean offset before the PCA (as Li et al.'s sklearn PCA does); default: the best plane through the final checkpoint.", rich_help_panel=ANALYSIS)] = False,
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
    from landscape.paths import flat_params, pca_axes, plane_losses, state_losses
    from landscape.sweep import parse_range

    check_output(output, force)
    ckpts = checkpoint_paths(checkpoints, sample, "all")
    if len(ckpts) < 3:
        raise LandscapeError(f"trajectory: need at least three checkpoints (got {len(ckpts)})")
    kw = dict(model=model, data=data, loss=loss, sample=sample, samples=samples, seed=seed, batch_size=batch_size,
              device=device, dtype=dtype, unsafe_pickle=unsafe_pickle, **(model_options or {}))
    problem, prov = problem_at(kw, ckpts[-1])
    states = load_states(ckpts, problem, kw)
    traj = pca_axes([flat_params(problem, s) for s in states], center=center)
    c = traj.coords
    x_grid = parse_range(x or _default_range(float(c[:, 0].min()), float(c[:, 0].max()), 21), "--x")
    y_grid = parse_range(y or _default_range(float(c[:, 1].min()), float(c[:, 1].max()), 21), "--y")
    own_loss, own_acc = state_losses(problem, states)
    proj_loss, proj_acc = plane_losses(problem, traj.axes, c)
    gap = proj_loss - own_loss
    names = [Path(p).name for p in ckpts]
    group = trajectory_group(traj, (own_loss, own_acc), (proj_loss, proj_acc), ckpts)
    axis_attrs = [
        {"kind": "pca", "normalization": "orthonormal", "ignore": "none", "seed": seed, "source": f"principal direction {i + 1} of {len(ckpts)} checkpoints",
         "label": f"PC{i + 1} ({100 * float(traj.explained[i]):.1f}% of the squared offsets)", "explained_variance": float(traj.explained[i])}
        for i in range(2)
    ]
    axis_attrs[0]["cosine_with_y"] = axis_attrs[1]["cosine_with_x"] = 0.0
    settings = {"checkpoints_sha256": [sha256_file(p) for p in ckpts], "dtype": dtype, "samples": prov["samples"],
                "coords": {"x": x_grid.tolist(), "y": y_grid.tolist()}, "center": center, "loss": prov["loss"]}
    say(f"{prov['parameters']:,} parameters, {problem.n:,} samples, {len(ckpts)} checkpoints; explained variance "
        f"{100 * float(traj.explained[0]):.1f}% + {100 * float(traj.explained[1]):.1f}%; grid {len(x_grid)} x {len(y_grid)}")
    _plane_sweep(output, problem, prov, kind="trajectory", settings=settings, axes=traj.axes, axis_attrs=axis_attrs,
                 grids=[x_grid, y_grid], strategy=strategy, extra={"trajectory": group})
    worst = int(gap.abs().argmax())
    out.print(
        f"explained variance {100 * float(traj.explained.sum()):.1f}%; the projected path's loss differs from the "
        f"checkpoints' own by up to {float(gap.abs().max()):.4g} ({names[worst]}: own {float(own_loss[worst]):.4g}, "
        f"projected {float(proj_loss[worst]):.4g}; {100 * float(traj.relative_residual[worst]):.1f}% of its offset lies off the plane)"
    )
    wrote(output)
    draw_figure(figure, output)
