"""Analysis commands: roughness, sharpness, path, plane, trajectory, track, and the CI gate `metrics`."""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
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
    Seed,
    UnsafePickle,
    command_line,
    err,
    load_spec,
    out,
    progress,
    say,
    warn,
)
from landscape.errors import LandscapeError
from landscape.io.analysis_store import Group, write_results
from landscape.load import load_problem
from landscape.sweep import STRATEGIES

ANALYSIS = "Analysis"
Output = Annotated[Path, typer.Option("--output", "-o", help="Results file (HDF5) to write.")]
Force = Annotated[bool, typer.Option("--force", help="Overwrite OUTPUT if it exists.", rich_help_panel=RUN)]
Figure = Annotated[
    Path | None,
    typer.Option("--figure", help="Also draw the figure to this file (png, svg or pdf), from the results file alone."),
]
Strategy = Annotated[
    str, typer.Option(help="auto (time each on the first points, keep the fastest), loop, vmap or firstlayer.", rich_help_panel=RUN)
]
Norm = Annotated[str, typer.Option(help="Direction normalization: filter (Li et al.), layer, model or none.", rich_help_panel=ANALYSIS)]
Ignore = Annotated[
    str, typer.Option(help="biasbn: zero directions on 1-D tensors (biases, norm layers); none: keep them.", rich_help_panel=ANALYSIS)
]


def _check_output(output: Path, force: bool) -> None:
    if output.exists() and not force:
        raise LandscapeError(f"{output} exists: pass --force to overwrite it")


def _check_strategy(strategy: str) -> None:
    if strategy != "auto" and strategy not in STRATEGIES:
        raise LandscapeError(f"--strategy {strategy!r}: expected auto or one of {', '.join(STRATEGIES)}")


def _root_attrs(prov: dict[str, Any]) -> dict[str, Any]:
    return {**prov, "command": command_line(), "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


def _draw(figure: Path | None, results: Path) -> None:
    if figure is None:
        return
    from landscape.render.analysis import draw

    err.print(f"[green]wrote[/green] {draw(results, figure)}", soft_wrap=True)


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
    return f"{value:.6g}" if isinstance(value, float) else str(value)


# --------------------------------------------------------------------------- roughness


@app.command(rich_help_panel="Compute")
def roughness(
    output: Output = Path("landscape-out/roughness.h5"),
    sample: Sample = None,
    model: Model = None,
    checkpoint: Checkpoint = None,
    data: Data = None,
    loss: Loss = None,
    directions: Annotated[int, typer.Option(help="Number M of random directions.", rich_help_panel=ANALYSIS)] = 100,
    span: Annotated[float, typer.Option(help="Half-width l of each profile: alpha in [-l, l].", rich_help_panel=ANALYSIS)] = 0.1,
    steps: Annotated[int, typer.Option(help="Intervals m per profile (m+1 points; even puts alpha=0 on the grid).", rich_help_panel=ANALYSIS)] = 20,
    norm: Norm = "filter",
    ignore: Ignore = "biasbn",
    seed: Seed = 0,
    samples: Samples = None,
    batch_size: BatchSize = None,
    device: Device = "auto",
    dtype: Dtype = "float64",
    strategy: Strategy = "auto",
    force: Force = False,
    figure: Figure = None,
    unsafe_pickle: UnsafePickle = False,
    config: Config = None,
) -> None:
    """Roughness index of the loss around a checkpoint (Wang et al.): RI = sigma/mu of the normalized
    total variation of M random 1D profiles.

    All M x (m+1) points are evaluated as one batched sweep; the profiles, the per-direction T_j and
    RI go to the results file. RI near 0 means smooth, bowl-like profiles; a large RI an oscillatory landscape.

    Examples:

      landscape roughness --sample mlp -o rough.h5 --figure rough.png

      landscape roughness --sample linreg --directions 20 --span 0.1 --steps 20 -o rough.h5
    """
    from landscape.directions import random_directions
    from landscape.roughness import compute_roughness

    _check_strategy(strategy)
    _check_output(output, force)
    if directions < 2:
        raise LandscapeError("--directions: need at least 2 directions for a standard deviation")
    if not (span > 0 and math.isfinite(span)):
        raise LandscapeError(f"--span {span}: must be a positive number")
    if steps < 2:
        raise LandscapeError(f"--steps {steps}: need at least 2 intervals")
    spec = load_spec(
        model=model, checkpoint=checkpoint, data=data, loss=loss, sample=sample, samples=samples,
        seed=seed, batch_size=batch_size, device=device, dtype=dtype, unsafe_pickle=unsafe_pickle,
    )
    problem, prov = load_problem(spec, say)
    dirs = random_directions(directions, problem.theta, problem.layout, seed=seed, norm=norm, ignore=ignore)
    say(
        f"{prov['parameters']:,} parameters, {problem.n:,} samples, {directions} directions x {steps + 1} points "
        f"in [-{span:g}, {span:g}], {prov['device']} {dtype}"
    )
    if steps % 2:
        warn(f"--steps {steps} is odd: alpha = 0 (the checkpoint) is not on the profile grid")
    with progress() as bar:
        task = bar.add_task("roughness", total=directions * (steps + 1))
        res = compute_roughness(
            problem, dirs.to(problem.dtype).double(), span, steps, strategy=strategy, warn=warn,
            on_progress=lambda done, total: bar.update(task, completed=done),
        )
    idx = res.index
    settings = {
        "directions": directions, "span": span, "steps": steps, "norm": norm, "ignore": ignore, "seed": seed,
        "dtype": dtype, "samples": prov["samples"], "checkpoint_sha256": prov["checkpoint_sha256"],
    }
    arrays = {"alphas": res.alphas.numpy(), "loss": res.loss.numpy(), "total_variation": res.t.numpy()}
    if res.accuracy is not None:
        arrays["accuracy"] = res.accuracy.numpy()
    group = Group(
        numbers={
            "ri": idx.ri, "mu": idx.mu, "sigma": idx.sigma, "directions_used": idx.used,
            "directions_dropped": idx.dropped, "loss_center": res.center_loss, "span": span, "steps": steps,
        },
        arrays=arrays,
        attrs={"norm": norm, "ignore": ignore, "seed": seed, "strategy": res.strategy,
               "strategy_timings_s_per_point": res.timings,
               "about": "Wang et al. roughness index: T_j = sum|df| / (2 l (max f - min f)), RI = std(T, ddof=1) / mean(T)"},
    )
    write_results(output, kind="roughness", attrs=_root_attrs(prov), settings=settings, groups={"roughness": group}, layout=problem.layout)
    say(f"strategy {res.strategy}")
    if idx.dropped:
        warn(f"{idx.dropped} direction(s) gave a flat or non-finite profile and were left out of RI")
    out.print(f"roughness index RI = {idx.ri:.4g}  (mu = {idx.mu:.4g}, sigma = {idx.sigma:.4g}, M = {idx.used}; "
              f"a bowl gives T = 1/l = {1 / span:.4g})")
    err.print(f"[green]wrote[/green] {output}", soft_wrap=True)
    _draw(figure, output)


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
            "Repeatable. A short name applies to every number ending in it; NaN counts as broken.",
        ),
    ] = None,
) -> None:
    """Every number in the given results files as one table (or JSON), with CI gates.

    Examples:

      landscape metrics rough.h5 sharp.h5

      landscape metrics rough.h5 --fail-if "ri > 0.5" --fail-if "sam > 0.1"   (exit 1 when broken)
    """
    from landscape.metrics import check, collect, parse_condition

    conditions = [parse_condition(c) for c in (fail_if or [])]
    tables = {str(p): collect(p) for p in paths}
    breaches = check(conditions, tables)
    if as_json:
        payload = {
            "numbers": tables,
            "checks": [c.text for c in conditions],
            "broken": [{"file": b.file, "name": b.key, "value": b.value, "condition": b.condition.text, "message": b.message()} for b in breaches],
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
        err.print(f"[red]FAIL[/red] {b.message()}", soft_wrap=True)
    if breaches:
        raise typer.Exit(1)
    if conditions:
        err.print(f"[green]ok[/green]: {len(conditions)} bound(s) hold", soft_wrap=True)


# --------------------------------------------------------------------------- shared by path, plane, trajectory, track

Checkpoints = Annotated[
    list[str] | None,
    typer.Argument(help="Checkpoints of one model (.pt/.pth/.ckpt/.safetensors); with --sample they default to its training snapshots.", show_default=False),
]


def _checkpoints(given: list[str] | None, sample: str | None, default: str) -> list[str]:
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


def _load_states(paths: list[str], problem, unsafe_pickle: bool) -> list[dict[str, torch.Tensor]]:
    from landscape.io.checkpoint import fit_state_dict, read_state_dict

    return [fit_state_dict(read_state_dict(p, unsafe_pickle), problem.model, p, say) for p in paths]


def _problem_at(spec_kwargs: dict[str, Any], checkpoint_path: str):
    spec = load_spec(**{**spec_kwargs, "checkpoint": checkpoint_path})
    return load_problem(spec, say)


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
        attrs={**_root_attrs(prov), "kind": kind},
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
    from landscape.io.spec import sha256_file
    from landscape.paths import CURVES, evaluate_path, has_batchnorm

    _check_strategy(strategy)
    _check_output(output, force)
    if curve not in CURVES:
        raise LandscapeError(f"--curve {curve!r}: expected one of {', '.join(CURVES)}")
    if points < 2:
        raise LandscapeError(f"--points {points}: need at least 2")
    ckpts = _checkpoints(checkpoints, sample, "ends")
    if len(ckpts) < 2:
        raise LandscapeError("path: name at least two checkpoints")
    if curve == "bezier" and len(ckpts) == 2:
        say("a Bezier curve through two checkpoints is the straight line")
    if train_data and not bn_recalibrate:
        raise LandscapeError("--train-data is only used with --bn-recalibrate")
    kw = dict(model=model, data=data, loss=loss, sample=sample, samples=samples, seed=seed, batch_size=batch_size,
              device=device, dtype=dtype, unsafe_pickle=unsafe_pickle)
    problem, prov = _problem_at(kw, ckpts[0])
    states = _load_states(ckpts, problem, unsafe_pickle)
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
            recal = xt.to(problem.device, problem.dtype) if torch.is_floating_point(xt) else xt.to(problem.device)
    t = torch.linspace(0, 1, points, dtype=torch.float64)
    say(f"{prov['parameters']:,} parameters, {problem.n:,} samples, {curve} path through {len(ckpts)} checkpoints, {points} points")
    with progress() as bar:
        task = bar.add_task("path", total=points)
        res = evaluate_path(problem, states, t, curve=curve, recalibrate=recal, strategy=strategy, warn=warn,
                            on_point=lambda i: bar.update(task, completed=i))
    arrays = {"t": res.t.numpy(), "weights": res.weights.numpy(), "loss": res.loss.numpy(), "node_loss": res.node_loss.numpy()}
    if res.accuracy is not None:
        arrays["accuracy"] = res.accuracy.numpy()
    if res.node_accuracy is not None:
        arrays["node_accuracy"] = res.node_accuracy.numpy()
    buffers = "recalibrated" if res.recalibrated else ("interpolated" if problem.buffers else "none")
    numbers: dict[str, Any] = {
        "barrier": res.barrier, "barrier_t": res.barrier_t, "loss_start": float(res.loss[0]), "loss_end": float(res.loss[-1]),
        "loss_max": float(np.nanmax(res.loss.numpy())) if np.isfinite(res.loss.numpy()).any() else math.nan,
    }
    if res.accuracy is not None:
        numbers["accuracy_barrier"] = res.accuracy_barrier
    group = Group(numbers=numbers, arrays=arrays, attrs={
        "curve": curve, "checkpoints": ckpts, "buffers": buffers, "strategy": res.strategy,
        "train_data": train_data or ("--data" if res.recalibrated else ""),
        "about": "barrier = max_t [L(t) - ((1-t) L(0) + t L(1))]; node_loss = each checkpoint's own loss",
    })
    settings = {"checkpoints_sha256": [sha256_file(c) for c in ckpts], "curve": curve, "points": points,
                "bn_recalibrate": bn_recalibrate, "dtype": dtype, "samples": prov["samples"]}
    write_results(output, kind="path", attrs=_root_attrs(prov), settings=settings, groups={"path": group}, layout=problem.layout)
    out.print(f"barrier = {res.barrier:.4g} at t = {res.barrier_t:.3g}  (loss {float(res.loss[0]):.4g} -> {float(res.loss[-1]):.4g}; BN buffers {buffers})")
    err.print(f"[green]wrote[/green] {output}", soft_wrap=True)
    _draw(figure, output)


# --------------------------------------------------------------------------- plane


@app.command(rich_help_panel="Compute")
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

    _check_strategy(strategy)
    _check_output(output, force)
    ckpts = _checkpoints(checkpoints, sample, "three")
    if len(ckpts) != 3:
        raise LandscapeError(f"plane: name exactly three checkpoints (got {len(ckpts)})")
    kw = dict(model=model, data=data, loss=loss, sample=sample, samples=samples, seed=seed, batch_size=batch_size,
              device=device, dtype=dtype, unsafe_pickle=unsafe_pickle)
    problem, prov = _problem_at(kw, ckpts[0])
    states = _load_states(ckpts, problem, unsafe_pickle)
    flats = [flat_params(problem, s) for s in states]
    pa = plane_axes(*flats)
    pts = pa.points
    x_grid = parse_range(x or _default_range(float(pts[:, 0].min()), float(pts[:, 0].max()), 21), "--x")
    y_grid = parse_range(y or _default_range(float(pts[:, 1].min()), float(pts[:, 1].max()), 21), "--y")
    own_loss, own_acc = state_losses(problem, states)
    at_loss, at_acc = plane_losses(problem, pa.axes, pts)
    names = [Path(c).name for c in ckpts]
    arrays = {"points": pts.numpy(), "own_loss": own_loss.numpy(), "plane_loss": at_loss.numpy(), "gap": (at_loss - own_loss).numpy()}
    if own_acc is not None and at_acc is not None:
        arrays["own_accuracy"], arrays["plane_accuracy"] = own_acc.numpy(), at_acc.numpy()
    gap = (at_loss - own_loss).abs()
    group = Group(
        numbers={"distance_ab": float(pts[1].norm()), "distance_ac": float(pts[2].norm()),
                 "distance_bc": float((pts[2] - pts[1]).norm()), "gap_max_abs": float(gap.max())},
        arrays=arrays,
        attrs={"checkpoints": ckpts, "names": names, "buffers": "those of the first checkpoint everywhere on the grid",
               "about": "origin A; e1 = (B-A)/|B-A|; e2 = orthogonalized C-A; gap = plane_loss - own_loss (buffers differ)"},
    )
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
    err.print(f"[green]wrote[/green] {output}", soft_wrap=True)
    _draw(figure, output)


# --------------------------------------------------------------------------- trajectory


@app.command(rich_help_panel="Compute")
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

    _check_strategy(strategy)
    _check_output(output, force)
    ckpts = _checkpoints(checkpoints, sample, "all")
    if len(ckpts) < 3:
        raise LandscapeError(f"trajectory: need at least three checkpoints (got {len(ckpts)})")
    kw = dict(model=model, data=data, loss=loss, sample=sample, samples=samples, seed=seed, batch_size=batch_size,
              device=device, dtype=dtype, unsafe_pickle=unsafe_pickle)
    problem, prov = _problem_at(kw, ckpts[-1])
    states = _load_states(ckpts, problem, unsafe_pickle)
    traj = pca_axes([flat_params(problem, s) for s in states], center=center)
    c = traj.coords
    x_grid = parse_range(x or _default_range(float(c[:, 0].min()), float(c[:, 0].max()), 21), "--x")
    y_grid = parse_range(y or _default_range(float(c[:, 1].min()), float(c[:, 1].max()), 21), "--y")
    own_loss, own_acc = state_losses(problem, states)
    proj_loss, proj_acc = plane_losses(problem, traj.axes, c)
    gap = proj_loss - own_loss
    names = [Path(p).name for p in ckpts]
    arrays = {
        "coords": c.numpy(), "own_loss": own_loss.numpy(), "projected_loss": proj_loss.numpy(), "gap": gap.numpy(),
        "residual": traj.residual.numpy(), "relative_residual": traj.relative_residual.numpy(),
        "explained_variance": traj.explained.numpy(), "singular_values": traj.singular_values.numpy(),
    }
    if own_acc is not None and proj_acc is not None:
        arrays["own_accuracy"], arrays["projected_accuracy"] = own_acc.numpy(), proj_acc.numpy()
    rel_gap = (gap.abs() / own_loss.abs().clamp_min(1e-12))
    group = Group(
        numbers={
            "explained_variance_1": float(traj.explained[0]), "explained_variance_2": float(traj.explained[1]),
            "explained_variance": float(traj.explained.sum()), "gap_max_abs": float(gap.abs().max()),
            "gap_max_relative": float(rel_gap.max()), "relative_residual_max": float(traj.relative_residual.max()),
        },
        arrays=arrays,
        attrs={"checkpoints": ckpts, "names": names, "centered": center,
               "buffers": "those of the final checkpoint everywhere on the grid",
               "about": "axes: top-2 right singular vectors of theta_i - theta_final; gap = projected_loss - own_loss"},
    )
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
    err.print(f"[green]wrote[/green] {output}", soft_wrap=True)
    _draw(figure, output)


# --------------------------------------------------------------------------- sharpness


def _curvature_numbers(curv: dict[str, Any]) -> tuple[dict[str, float], dict[str, Any]]:
    """lambda_max, trace and the LLA ratios from a read_curvature() dict (or the same keys from a fresh run)."""
    from landscape.roughness import lla_ratios

    numbers: dict[str, float] = {}
    ev = curv.get("eigenvalues")
    if ev is not None and np.size(ev):
        numbers["lambda_max"] = float(np.max(ev))
        if curv.get("residuals") is not None:
            numbers["lambda_max_residual"] = float(np.asarray(curv["residuals"])[int(np.argmax(ev))])
    tr = curv.get("trace")
    if tr is not None:
        numbers["trace"] = float(tr["value"])
        if tr.get("std_error") is not None:
            numbers["trace_std_error"] = float(tr["std_error"])
    nodes = weights = None
    if curv.get("lanczos") is not None:
        from landscape.hessian.density import quadrature

        nodes, weights = quadrature(curv["lanczos"]["alpha"], curv["lanczos"]["beta"])
    if ev is not None or nodes is not None:
        r = lla_ratios(eigenvalues=ev, nodes=nodes, weights=weights)
        if math.isfinite(r.re):
            numbers["lla_re"] = r.re
        if math.isfinite(r.k):
            numbers["lla_k"] = r.k
    return numbers, {}


def _run_curvature(problem, *, trace: bool, density: bool, seed: int, tol: float = 1e-3) -> dict[str, Any]:
    """λmax (and trace / SLQ runs) of the problem's Hessian with landscape.hessian, as read_curvature-like keys."""
    try:
        from landscape.hessian import CurvatureSettings, run_curvature
    except ImportError as exc:  # the curvature package is another module of this project
        raise LandscapeError(f"curvature numbers need landscape.hessian, which cannot be imported here ({exc})") from exc
    res = run_curvature(problem, CurvatureSettings(top_k=1, tol=tol, trace=trace, density=density, eigenvectors=False, seed=seed))
    block = res.model
    out: dict[str, Any] = {"eigenvalues": None, "residuals": None, "trace": None, "lanczos": None}
    if block.eigen is not None:
        out["eigenvalues"], out["residuals"] = block.eigen.eigenvalues, block.eigen.residuals
        out["converged"] = bool(block.eigen.all_converged)
    if block.trace is not None:
        out["trace"] = {"value": block.trace.value, "std_error": block.trace.std_error}
    if block.lanczos is not None:
        out["lanczos"] = {"alpha": block.lanczos.alpha, "beta": block.lanczos.beta}
    return out


@app.command(rich_help_panel="Compute")
def sharpness(
    output: Output = Path("landscape-out/sharpness.h5"),
    sample: Sample = None,
    model: Model = None,
    checkpoint: Checkpoint = None,
    data: Data = None,
    loss: Loss = None,
    rho: Annotated[float, typer.Option(help="SAM radius: L(theta + rho g/|g|) - L(theta) (Foret et al.).", rich_help_panel=ANALYSIS)] = 0.05,
    epsilon: Annotated[float, typer.Option(help="epsilon-sharpness box: |y_i| <= epsilon (|theta_i| + 1) (Keskar et al.).", rich_help_panel=ANALYSIS)] = 1e-3,
    ascent_steps: Annotated[int, typer.Option(help="Projected gradient-ascent steps for the epsilon-sharpness maximum.", rich_help_panel=ANALYSIS)] = 20,
    curvature: Annotated[
        Path | None, typer.Option(help="A results file of `landscape hessian`: take lambda_max, trace and the LLA ratios from it.", rich_help_panel=ANALYSIS)
    ] = None,
    hessian: Annotated[
        bool, typer.Option("--hessian", help="Compute lambda_max, trace and the spectral density (for the LLA ratios) here.", rich_help_panel=ANALYSIS)
    ] = False,
    samples: Samples = None,
    seed: Seed = 0,
    batch_size: BatchSize = None,
    device: Device = "auto",
    dtype: Dtype = "float32",
    force: Force = False,
    unsafe_pickle: UnsafePickle = False,
    config: Config = None,
) -> None:
    """Sharpness numbers of a checkpoint: SAM sharpness, epsilon-sharpness, and (with --curvature or
    --hessian) lambda_max, the Hessian trace and the Loss Landscape Analysis ratios re and K.

    Examples:

      landscape sharpness --sample mlp -o sharp.h5

      landscape sharpness --sample cnn --hessian -o sharp.h5 && landscape metrics sharp.h5 --fail-if "lambda_max > 50"
    """
    from landscape.roughness import epsilon_sharpness, sam_sharpness

    _check_output(output, force)
    if rho <= 0 or epsilon <= 0:
        raise LandscapeError("--rho and --epsilon must be positive")
    if curvature is not None and hessian:
        raise LandscapeError("--curvature and --hessian: give one (a file to read, or compute here)")
    curv = None
    if curvature is not None:
        from landscape.io.curvature import read_curvature

        curv = read_curvature(curvature)
    spec = load_spec(
        model=model, checkpoint=checkpoint, data=data, loss=loss, sample=sample, samples=samples,
        seed=seed, batch_size=batch_size, device=device, dtype=dtype, unsafe_pickle=unsafe_pickle,
    )
    problem, prov = load_problem(spec, say)
    if curv is not None:
        ours = prov["checkpoint_sha256"]
        theirs = str(curv.get("attrs", {}).get("checkpoint_sha256", ""))
        if theirs and theirs != ours:
            raise LandscapeError(f"--curvature {curvature}: computed for another checkpoint (sha256 {theirs[:12]}..., this one {ours[:12]}...)")
    say(f"{prov['parameters']:,} parameters, {problem.n:,} samples, {prov['device']} {dtype}")
    sam = sam_sharpness(problem, rho)
    eps = epsilon_sharpness(problem, epsilon, ascent_steps, seed=seed)
    numbers: dict[str, Any] = {
        "loss": sam.loss, "sam": sam.sharpness, "sam_rho": rho, "sam_perturbed_loss": sam.perturbed_loss,
        "grad_norm": sam.grad_norm, "epsilon_sharpness": eps.sharpness, "epsilon": epsilon, "epsilon_max_loss": eps.max_loss,
    }
    source = ""
    if hessian:
        say("curvature: lambda_max by Lanczos, trace by Hutch++, density by SLQ (landscape.hessian)")
        curv = _run_curvature(problem, trace=True, density=True, seed=seed)
        source = "computed (--hessian)"
    elif curv is not None:
        source = str(curvature)
    if curv is not None:
        numbers.update(_curvature_numbers(curv)[0])
    group = Group(
        numbers=numbers,
        arrays={"epsilon_trace": np.asarray(eps.trace)},
        attrs={"curvature_source": source,
               "about": "sam = L(theta + rho g/|g|) - L(theta) (Foret et al.); epsilon_sharpness = 100 (max_box L - L)/(1 + L), "
                        "box |y_i| <= eps(|theta_i|+1), by projected sign-gradient ascent (Keskar et al.); "
                        "lla_re = |lambda_min/lambda_max|, lla_k = share of negative curvature (SLQ weights)"},
    )
    settings = {"rho": rho, "epsilon": epsilon, "ascent_steps": ascent_steps, "seed": seed, "dtype": dtype,
                "samples": prov["samples"], "checkpoint_sha256": prov["checkpoint_sha256"], "curvature": source}
    write_results(output, kind="sharpness", attrs=_root_attrs(prov), settings=settings, groups={"sharpness": group})
    table = Table("number", "value", title="sharpness", title_justify="left")
    for key, value in numbers.items():
        table.add_row(key, _fmt(value))
    out.print(table)
    err.print(f"[green]wrote[/green] {output}", soft_wrap=True)


# --------------------------------------------------------------------------- track


@app.command(rich_help_panel="Compute")
def track(
    checkpoints: Checkpoints = None,
    output: Output = Path("landscape-out/track.h5"),
    sample: Sample = None,
    model: Model = None,
    data: Data = None,
    loss: Loss = None,
    lr: Annotated[float | None, typer.Option(help="Step size eta of the training run: draws the 2/eta line (edge of stability, Cohen et al.).", rich_help_panel=ANALYSIS)] = None,
    steps: Annotated[str | None, typer.Option(help="Training step of each checkpoint, comma-separated (default 0, 1, 2, ...).", rich_help_panel=ANALYSIS)] = None,
    trace: Annotated[bool, typer.Option("--trace", help="Also estimate the Hessian trace (Hutch++) at each checkpoint.", rich_help_panel=ANALYSIS)] = False,
    tol: Annotated[float, typer.Option(help="Relative residual tolerance of the Lanczos lambda_max.", rich_help_panel=ANALYSIS)] = 1e-3,
    samples: Samples = None,
    seed: Seed = 0,
    batch_size: BatchSize = None,
    device: Device = "auto",
    dtype: Dtype = "float32",
    force: Force = False,
    figure: Figure = None,
    unsafe_pickle: UnsafePickle = False,
    config: Config = None,
) -> None:
    """lambda_max (and the trace with --trace) of the Hessian at each checkpoint in training order.

    For gradient descent with step eta, lambda_max rises to about 2/eta and hovers there (edge of
    stability, Cohen et al. 2021); give --lr to draw that line.

    Examples:

      landscape track --sample linreg --lr 0.02 --steps 0,5,20,75,300 -o track.h5 --figure track.png

      landscape track ep*.pt --model net.py:make --data train.npz --lr 0.1 --trace -o track.h5
    """
    from dataclasses import replace

    from landscape.io.spec import sha256_file
    from landscape.paths import flat_params, set_buffers, set_params

    _check_output(output, force)
    ckpts = _checkpoints(checkpoints, sample, "all")
    if lr is not None and not lr > 0:
        raise LandscapeError(f"--lr {lr}: must be positive")
    if steps:
        try:
            step_values = [float(s) for s in steps.split(",")]
        except ValueError:
            raise LandscapeError(f"--steps {steps!r}: expected numbers separated by commas, e.g. 0,10,30") from None
        if len(step_values) != len(ckpts):
            raise LandscapeError(f"--steps: {len(step_values)} values for {len(ckpts)} checkpoints")
    else:
        step_values = [float(i) for i in range(len(ckpts))]
    kw = dict(model=model, data=data, loss=loss, sample=sample, samples=samples, seed=seed, batch_size=batch_size,
              device=device, dtype=dtype, unsafe_pickle=unsafe_pickle)
    problem, prov = _problem_at(kw, ckpts[-1])
    states = _load_states(ckpts, problem, unsafe_pickle)
    saved = {k: v.clone() for k, v in problem.buffers.items()}
    lam, lam_res, tr, tr_err, losses, converged = [], [], [], [], [], []
    say(f"{prov['parameters']:,} parameters, {problem.n:,} samples, lambda_max at {len(ckpts)} checkpoints")
    from landscape.roughness import loss_at

    try:
        with progress() as bar:
            task = bar.add_task("track", total=len(ckpts))
            for i, state in enumerate(states):
                flat = flat_params(problem, state)
                set_params(problem, flat)
                set_buffers(problem, {k: state[k] for k in problem.buffers if k in state})
                p = replace(problem, theta=flat)
                curv = _run_curvature(p, trace=trace, density=False, seed=seed, tol=tol)
                ev = curv["eigenvalues"]
                lam.append(float(np.max(ev)) if ev is not None else math.nan)
                lam_res.append(float(np.asarray(curv["residuals"])[int(np.argmax(ev))]) if ev is not None else math.nan)
                converged.append(bool(curv.get("converged", False)))
                tr.append(curv["trace"]["value"] if curv["trace"] else math.nan)
                tr_err.append(curv["trace"]["std_error"] if curv["trace"] else math.nan)
                losses.append(loss_at(p, flat))
                bar.update(task, completed=i + 1)
    finally:
        set_params(problem, problem.theta)
        set_buffers(problem, saved)
    lam_a = np.asarray(lam)
    numbers: dict[str, Any] = {"lambda_max": lam[-1], "lambda_max_peak": float(np.nanmax(lam_a)), "checkpoints": len(ckpts)}
    if lr:
        numbers["lr"] = lr
        numbers["edge_of_stability"] = 2 / lr
        numbers["lambda_max_over_edge"] = lam[-1] * lr / 2
    if trace:
        numbers["trace"] = tr[-1]
    arrays = {"step": np.asarray(step_values), "lambda_max": lam_a, "lambda_max_residual": np.asarray(lam_res),
              "lambda_max_error": np.asarray(lam_res), "converged": np.asarray(converged), "loss": np.asarray(losses)}
    if trace:
        arrays["trace"], arrays["trace_std_error"] = np.asarray(tr), np.asarray(tr_err)
    group = Group(numbers=numbers, arrays=arrays, attrs={
        "checkpoints": ckpts, "names": [Path(c).name for c in ckpts], "step_label": "training step" if steps else "checkpoint",
        "about": "lambda_max by Lanczos (landscape.hessian) at each checkpoint; error = residual |Hv - lambda v|; 2/lr = edge of stability",
    })
    settings = {"checkpoints_sha256": [sha256_file(c) for c in ckpts], "lr": lr, "steps": step_values, "trace": trace,
                "tol": tol, "seed": seed, "dtype": dtype, "samples": prov["samples"]}
    write_results(output, kind="track", attrs=_root_attrs(prov), settings=settings, groups={"track": group}, layout=problem.layout)
    table = Table("checkpoint", "step", "loss", "lambda_max", *(["trace"] if trace else []), title="track", title_justify="left")
    for j, c in enumerate(ckpts):
        table.add_row(Path(c).name, _fmt(step_values[j]), _fmt(losses[j]), _fmt(lam[j]), *([_fmt(tr[j])] if trace else []))
    out.print(table)
    if lr:
        out.print(f"2/lr = {2 / lr:.4g}; last lambda_max is {100 * lam[-1] * lr / 2:.1f}% of it")
    err.print(f"[green]wrote[/green] {output}", soft_wrap=True)
    _draw(figure, output)
