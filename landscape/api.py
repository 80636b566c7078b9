"""The library: one function per command, on Python objects, returning typed results.

Each takes a `Problem` (a module, its data and a loss, in memory) and plain values, writes no file
and prints nothing unless asked (`progress=True`; messages go to the `landscape` logger), and
returns a frozen result from `landscape.results` whose `save(path)` writes the file the CLI writes.
The CLI is a shell over these functions: it reads files into a Problem, calls one, saves, reports.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from landscape import progress as messages
from landscape.axes import Axes, axes_settings, reused_axes, stored_axes, stored_dtype
from landscape.curvature.analysis import CurvatureSettings, OnProducts, run_curvature
from landscape.distributed import World
from landscape.errors import ArgumentError
from landscape.names import CHUNK_SECONDS, CURVATURE_TITLES, STORE_DTYPES
from landscape.problem import Problem
from landscape.progress import Progress, Say, progress_to
from landscape.results import (
    Alignment,
    CurvatureResult,
    PathResult,
    RoughnessResult,
    SharpnessResult,
    SweepResult,
    TrackResult,
    stamp,
)
from landscape.settings import (
    PathSettings,
    PlaneSettings,
    RoughnessSettings,
    SharpnessSettings,
    Source,
    SweepSettings,
    TrackSettings,
)
from landscape.strategies import MemorySink, SweepSink, axis_grid, check_grid_fits, run_sweep

State = Mapping[str, torch.Tensor]
Grid = tuple[float, float, int]


# --------------------------------------------------------------------------- axes


def axes_from(
    problem: Problem,
    earlier: CurvatureResult | SweepResult,
    dims: int = 2,
    *,
    source: str = "",
    source_sha256: str = "",
    to: torch.Tensor | None = None,
    to_label: str = "the other checkpoint",
    to_sha256: str | None = None,
) -> Axes:
    """The axes of an earlier run: the top eigenvectors a curvature run kept (with eigenvectors=True),
    or the directions of a sweep as they are (Li et al.'s `--dir_file`: the same plane around another
    checkpoint, on other data, after fine-tuning). With `to`, x is the line to it and y the first of them."""
    line: dict[str, Any] = {"to": to, "to_label": to_label, "to_sha256": to_sha256}
    if isinstance(earlier, SweepResult):
        return reused_axes(problem, earlier.axes, dims, source=source, source_sha256=source_sha256, **line)
    eig = earlier.model.eigen
    if eig is None or eig.eigenvectors is None:
        raise ArgumentError("axes_from", source or None, "holds no eigenvectors (compute them with eigenvectors=True)")
    title = CURVATURE_TITLES.get(earlier.settings.curvature, earlier.settings.curvature)
    seed = int(earlier.provenance.get("seed", 0) or 0)
    return stored_axes(
        problem, eig.eigenvectors.numpy(), eig.eigenvalues, eig.residuals, dims=dims, layout=earlier.layout,
        source=source, title=title, which=eig.which, seed=seed, source_sha256=source_sha256, **line,
    )  # fmt: skip


# --------------------------------------------------------------------------- sweep


def plan_sweep(
    problem: Problem,
    axes: Axes,
    x: Grid = (-1.0, 1.0, 51),
    y: Grid | None = None,
    *,
    command: str = "",
    kind: str = "sweep",
    settings: Mapping[str, Any] | None = None,
    store_dtype: str | None = None,
) -> SweepResult:
    """The sweep before any point is done: grid, settings, and the axes as they are stored and
    evaluated (so a resumed run gives the same numbers): in `store_dtype` (float32, bfloat16 or float64),
    by default float32 unless the problem runs in float64."""
    check_grid_fits((x[2],) + ((y[2],) if y is not None else ()))
    grids = [axis_grid(*x, name="x")] + ([axis_grid(*y, name="y")] if y is not None else [])
    if len(grids) != len(axes):
        raise ArgumentError(
            "y", y, f"{len(axes)} axes need {len(axes)} grid(s): x{' and y' if len(axes) == 2 else ' only'}"
        )
    if store_dtype is not None and store_dtype not in STORE_DTYPES:
        raise ArgumentError("store_dtype", store_dtype, f"expected one of {', '.join(STORE_DTYPES)}")
    store = stored_dtype(problem, None if store_dtype is None else getattr(torch, store_dtype))
    stored = Axes(axes.directions.to(store), axes.attrs, axes.layout, axes.settings)
    if settings is None:
        coords = {n: g.tolist() for n, g in zip(axes.names, grids)}
        settings = SweepSettings(Source.of(problem.provenance), coords=coords, **_sweep_axes_settings(axes)).as_dict()
    shape = tuple(len(g) for g in grids)
    return SweepResult(
        axes=stored, coords=tuple(g.numpy() for g in grids), loss=np.full(shape, np.nan),
        accuracy=np.full(shape, np.nan) if problem.classification else None, done=np.zeros(shape, dtype=bool),
        settings=dict(settings), provenance=stamp(problem.provenance, command), kind=kind,
    )  # fmt: skip


def _sweep_axes_settings(axes: Axes) -> dict[str, Any]:
    fields = {f.name for f in dataclasses.fields(SweepSettings)}
    return {k: v for k, v in (axes.settings or axes_settings()).items() if k in fields}


def run_planned(
    problem: Problem,
    planned: SweepResult,
    sink: SweepSink | None = None,
    *,
    strategy: str = "auto",
    progress: Progress = False,
    warn: Say = messages.warn,
    world: World | None = None,
    on_stage: Callable[[str], None] = lambda stage: None,
    chunk_seconds: float = CHUNK_SECONDS,
) -> SweepResult:
    """Evaluate the points of `planned` that its sink has not done (all, for a fresh in-memory sink).
    `on_stage` hears "choosing strategy" while the probe runs, then the strategy's name; the sink
    gets the values every `chunk_seconds` or so.

    `sink`: where the values go as they are computed (default: arrays in memory); the CLI passes
    the results file, which a killed run resumes from. Under torchrun every rank calls this, rank 0
    with the sink and the others with None (they get `planned` back)."""
    world = world or World()
    problem = with_states(problem, planned.axes)
    if sink is None and world.main:
        sink = MemorySink(list(planned.coords), planned.accuracy is not None)
    with progress_to(progress, planned.kind, int(planned.done.size)) as bar:
        report = run_sweep(
            problem, planned.axes.directions, sink, strategy=strategy, warn=warn, world=world, on_progress=bar,
            on_stage=on_stage, chunk_seconds=chunk_seconds,
        )  # fmt: skip
    if sink is None:
        return planned
    loss, accuracy = sink.values()
    return dataclasses.replace(
        planned, loss=loss, accuracy=accuracy, done=sink.done.copy(), run=report.attrs(world.size)
    )


def with_states(problem: Problem, axes: Axes) -> Problem:
    """The problem with its BatchNorm statistics moving along axes made with `states=True` (Li et al.'s
    state directions: scaled by 1 + a on each axis whose ignore is "none"); as it is otherwise."""
    if not (axes.settings or {}).get("states"):
        return problem
    moving = [str(a.get("buffers", "")).startswith("states") and a.get("ignore") == "none" for a in axes.attrs]
    return problem.with_state_directions(tuple(1.0 if m else 0.0 for m in moving))


def sweep(
    problem: Problem,
    axes: Axes,
    x: Grid = (-1.0, 1.0, 51),
    y: Grid | None = None,
    *,
    strategy: str = "auto",
    progress: Progress = False,
    warn: Say = messages.warn,
    store_dtype: str | None = None,
    eval_data: Mapping[str, Any] | None = None,
    data_name: str = "data",
) -> SweepResult:
    """The loss (and accuracy) at theta + a x_axis (+ b y_axis) on the grid `x` (and `y`), each
    (min, max, points); the strategy is picked by a timed probe unless named. The directions are
    evaluated as they are stored (`store_dtype`: see `plan_sweep`). `eval_data`: other data sets by
    name (a test set: {"test": (x, y)}), each evaluated on the same grid (`on_data_sets`; the
    problem's own data is named `data_name`).

    >>> import torch, landscape as ls
    >>> problem = ls.Problem(torch.nn.Linear(4, 3), (torch.randn(64, 4), torch.randint(0, 3, (64,))))
    >>> surf = ls.sweep(problem, ls.random_axes(problem, 2), x=(-1, 1, 5), y=(-1, 1, 5))
    >>> surf.loss.shape, bool(surf.done.all())
    ((5, 5), True)
    """
    if eval_data:
        check_data_set_names(list(eval_data), data_name)
    planned = plan_sweep(problem, axes, x, y, store_dtype=store_dtype)
    result = run_planned(problem, planned, strategy=strategy, progress=progress, warn=warn)
    if eval_data:
        others = {name: problem.with_data(data, where=f"eval_data[{name!r}]") for name, data in eval_data.items()}
        result = on_data_sets(
            problem, result, others, data_name=data_name, strategy=strategy, progress=progress, warn=warn
        )
    return result


DATA_SET_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,31}$")


def check_data_set_names(names: Sequence[str], data_name: str) -> None:
    """Names of data sets that become attribute names in the file: short words, none twice."""
    for name in [data_name, *names]:
        if not DATA_SET_NAME.match(name):
            raise ArgumentError(
                "eval_data", name, "a data set's name is a word: a letter, then letters, digits, - or _"
            )
    if len({data_name, *names}) != len(names) + 1:
        raise ArgumentError(
            "eval_data", ", ".join(names), f"each data set needs its own name (the main one is {data_name!r})"
        )


def on_data_sets(
    problem: Problem,
    result: SweepResult,
    others: Mapping[str, Problem],
    *,
    data_name: str = "data",
    sources: Mapping[str, str] | None = None,
    strategy: str = "auto",
    progress: Progress = False,
    warn: Say = messages.warn,
    world: World | None = None,
) -> SweepResult:
    """The sweep's grid evaluated again on other data sets (`others`: the problem on each, made by
    `Problem.with_data`), kept as the result's "data_sets" group: one loss grid per set beside the
    main one, and each set's gap to it (a test set's loss minus the training set's)."""
    from landscape.io.analysis_groups import data_sets_group

    check_data_set_names(list(others), data_name)
    world = world or World()
    losses, accuracies = {}, {}
    total = len(others) * int(result.done.size)
    size = int(result.done.size)
    with progress_to(progress, "data sets", total) as bar:
        for i, (name, other) in enumerate(others.items()):

            def advance(done: int, _: int, before: int = i * size) -> None:
                bar(before + done, total)

            sink = (
                MemorySink(list(result.coords), result.accuracy is not None and other.classification)
                if world.main
                else None
            )
            run_sweep(
                other, result.axes.directions, sink, strategy=strategy, warn=warn, world=world, on_progress=advance
            )
            if sink is not None:
                losses[name], accuracies[name] = sink.values()
    if not world.main:
        return result
    group = data_sets_group(result, losses, accuracies, data_name=data_name, sources=sources or {})
    return dataclasses.replace(result, groups={**result.groups, "data_sets": group})


# --------------------------------------------------------------------------- curvature


def hessian(
    problem: Problem,
    top_k: int = 5,
    *,
    which: str = "largest",
    trace: bool = False,
    density: bool = False,
    per_layer: bool = False,
    curvature: str = "hessian",
    tol: float = 1e-4,
    max_iter: int | None = None,
    probes: int = 10,
    steps: int = 80,
    trace_matvecs: int = 60,
    eigenvectors: bool = True,
    method: str = "auto",
    seed: int = 0,
    batch_size: int | None = None,
    basis_dtype: str = "auto",
    basis_on_host: bool = False,
    progress: Progress = False,
    on_products: OnProducts | None = None,
    say: Say = messages.say,
    world: World | None = None,
    command: str = "",
) -> CurvatureResult:
    """Top-k eigenpairs (Lanczos) with residuals, the trace (Hutch++) with its standard error, the
    spectral density (SLQ) with the spread between probes; of the Hessian, GGN or empirical Fisher.

    Memory: the Lanczos bases take one P-sized vector per step, in `basis_dtype` ('auto': float64 while
    it fits 2 GiB, else float32; or 'float64', 'float32'), on the problem's device or, with
    `basis_on_host`, in host memory; at most half the memory free at the start (fewer steps when that
    is less, said through `say`). The density's probes run without re-orthogonalization when not even
    one probe's basis fits.

    >>> import torch, landscape as ls
    >>> x = torch.randn(64, 3, dtype=torch.float64)
    >>> problem = ls.Problem(torch.nn.Linear(3, 1).double(), (x, torch.randn(64, 1, dtype=torch.float64)), loss="mse")
    >>> curv = ls.hessian(problem, top_k=1, trace=True)
    >>> exact = torch.linalg.eigvalsh(2 * torch.cat([x, torch.ones(64, 1)], 1).T @ torch.cat([x, torch.ones(64, 1)], 1) / 64)
    >>> abs(curv.lambda_max - float(exact[-1])) < 1e-8
    True
    """
    settings = CurvatureSettings(
        curvature=curvature, top_k=top_k, which=which, tol=tol, max_iter=max_iter, trace=trace, trace_matvecs=trace_matvecs,
        density=density, probes=probes, steps=steps, per_layer=per_layer, eigenvectors=eigenvectors, seed=seed, method=method,
        batch_size=batch_size, basis_dtype=basis_dtype, basis_on_host=basis_on_host,
    )  # fmt: skip
    check_curvature(settings)
    with progress_to(progress, f"{curvature} products") as bar:
        made = [0]

        def products(stage: str, n: int) -> None:
            made[0] += n
            bar(made[0], None)
            if on_products is not None:
                on_products(stage, n)

        t0 = time.perf_counter()
        run = run_curvature(problem, settings, say, world, on_products=products)
        seconds = time.perf_counter() - t0
    stored = {**dataclasses.asdict(settings), **Source.of(problem.provenance).as_dict()}
    return CurvatureResult(
        settings=settings, model=run.model, layers=run.layers, layout=problem.layout,
        provenance={**stamp(problem.provenance, command), "seconds": seconds, "world_size": (world or World()).size}, stored_settings=stored,
    )  # fmt: skip


def check_curvature(s: CurvatureSettings) -> None:
    """Raise ArgumentError for settings that cannot run (before anything is loaded, in the CLI)."""
    from landscape.names import BASIS_DTYPES, WHICH

    if s.which not in WHICH:
        raise ArgumentError("which", s.which, f"expected one of {', '.join(WHICH)}")
    if s.top_k < 0:
        raise ArgumentError("top_k", s.top_k, "must be 0 or more")
    if s.max_iter is not None and s.max_iter < 1:
        raise ArgumentError("max_iter", s.max_iter, "must be at least 1")
    if not s.tol > 0:
        raise ArgumentError("tol", s.tol, "must be positive")
    if s.density and s.probes < 1:
        raise ArgumentError("probes", s.probes, "must be at least 1")
    if s.density and s.steps < 2:
        raise ArgumentError("steps", s.steps, "must be at least 2")
    if s.trace and s.trace_matvecs < 3:
        raise ArgumentError("trace_matvecs", s.trace_matvecs, "must be at least 3")
    if s.basis_dtype not in BASIS_DTYPES:
        raise ArgumentError("basis_dtype", s.basis_dtype, f"expected one of {', '.join(BASIS_DTYPES)}")
    if s.top_k == 0 and not s.trace and not s.density:
        raise ArgumentError("top_k", 0, "nothing to compute: no eigenvalues, trace or density asked for")


# --------------------------------------------------------------------------- roughness and sharpness


def roughness(
    problem: Problem,
    directions: int = 100,
    span: float = 0.1,
    steps: int = 20,
    *,
    norm: str = "filter",
    ignore: str = "biasbn",
    seed: int = 0,
    strategy: str = "auto",
    progress: Progress = False,
    warn: Say = messages.warn,
    known: Any = None,
    on_chunk: Callable[..., None] | None = None,
    chunk_seconds: float = CHUNK_SECONDS,
    command: str = "",
) -> RoughnessResult:
    """Roughness index (Wang et al.): RI = sigma / mu of the normalized total variation of `directions`
    random 1D profiles of half-width `span` (`steps` intervals each), evaluated as one batched sweep.

    `known` (`landscape.measures.KnownPoints`) and `on_chunk(indices, values)` let a caller keep the
    points of a long run and finish it after a kill (the CLI's --resume); `on_chunk` is called every
    `chunk_seconds` or so."""
    from landscape.directions import RandomDirections
    from landscape.io.analysis_groups import roughness_group
    from landscape.measures import compute_roughness

    check_roughness(directions, span, steps)
    settings = roughness_settings(problem, directions, span, steps, norm=norm, ignore=ignore, seed=seed)
    chunk = max(1, min(directions, ROUGHNESS_CHUNK_BYTES // (16 * problem.theta.numel())))
    dirs = RandomDirections(
        directions, problem.theta, problem.layout, seed=seed, norm=norm, ignore=ignore, chunk=chunk, dtype=problem.dtype
    )
    with progress_to(progress, "roughness", directions * (steps + 1)) as bar:
        res = compute_roughness(
            problem, dirs, span, steps, strategy=strategy, warn=warn, known=known,
            on_progress=bar, on_chunk=on_chunk or (lambda idx, values: None), chunk_seconds=chunk_seconds,
        )  # fmt: skip
    group = roughness_group(res, span=span, steps=steps, norm=norm, ignore=ignore, seed=seed)
    return RoughnessResult(
        group.numbers,
        group.arrays,
        group.attrs,
        settings.as_dict(),
        stamp(problem.provenance, command),
        problem.layout,
    )


ROUGHNESS_CHUNK_BYTES = 1 << 30  # roughness directions are made and evaluated this many bytes (float64 x 2) at a time


def check_roughness(directions: int, span: float, steps: int) -> None:
    """Raise ArgumentError for roughness settings that cannot run or would not fit in memory (the
    profiles' values; the directions are made a chunk at a time), before anything is computed."""
    from landscape.strategies.grid import BYTES_PER_POINT, physical_memory

    if directions < 2:
        raise ArgumentError("directions", directions, "need at least 2 directions for a standard deviation")
    if not (span > 0 and math.isfinite(span)):
        raise ArgumentError("span", span, "must be a positive number")
    if steps < 2:
        raise ArgumentError("steps", steps, "need at least 2 intervals")
    memory = physical_memory()
    need = directions * (steps + 1) * BYTES_PER_POINT
    if memory and need > memory // 2:
        raise ArgumentError(
            "directions", directions, f"{directions:,} directions x {steps + 1:,} points need about "
            f"{need / 2**30:,.1f} GiB of memory, and this machine has {memory / 2**30:,.1f} GiB; use fewer (or fewer --steps)",
        )  # fmt: skip


def roughness_settings(
    problem: Problem, directions: int, span: float, steps: int, *, norm: str, ignore: str, seed: int
) -> RoughnessSettings:
    """What fixes a roughness run's numbers (a resumed run must match it)."""
    return RoughnessSettings(
        Source.of(problem.provenance),
        directions=directions,
        span=span,
        steps=steps,
        norm=norm,
        ignore=ignore,
        seed=seed,
    )


def sharpness(
    problem: Problem,
    rho: float = 0.05,
    epsilon: float = 1e-3,
    ascent_steps: int = 20,
    *,
    curvature: CurvatureResult | bool = False,
    seed: int = 0,
    source: str = "",
    progress: Progress = False,
    command: str = "",
) -> SharpnessResult:
    """SAM sharpness (Foret et al.), epsilon-sharpness (Keskar et al.), and with `curvature`
    (a CurvatureResult of the Hessian at these weights, or True to compute one) lambda_max, the trace
    and the Loss Landscape Analysis ratios."""
    from landscape.io.analysis_groups import sharpness_group
    from landscape.measures import curvature_numbers, epsilon_sharpness, sam_sharpness

    if not (rho > 0 and math.isfinite(rho)):
        raise ArgumentError("rho", rho, "must be a positive number")
    if not (epsilon > 0 and math.isfinite(epsilon)):  # inf gave epsilon_sharpness 0 with exit 0
        raise ArgumentError("epsilon", epsilon, "must be a positive number")
    if ascent_steps < 1:
        raise ArgumentError("ascent_steps", ascent_steps, "must be at least 1")
    if isinstance(curvature, CurvatureResult) and curvature.settings.curvature != "hessian":
        title = CURVATURE_TITLES.get(curvature.settings.curvature, curvature.settings.curvature)
        raise ArgumentError(
            "curvature",
            source or None,
            f"holds the {title}, not the Hessian (lambda_max and the LLA ratios are the Hessian's)",
        )
    sam = sam_sharpness(problem, rho)
    eps = epsilon_sharpness(problem, epsilon, ascent_steps, seed=seed)
    if curvature is True:
        curvature = hessian(
            problem, top_k=1, tol=1e-3, trace=True, density=True, eigenvectors=False, seed=seed, progress=progress
        )
        source = source or "computed"
    numbers = curvature_numbers(_curvature_numbers_input(curvature)) if isinstance(curvature, CurvatureResult) else {}
    group = sharpness_group(sam, eps, numbers, source)
    settings = SharpnessSettings(
        Source.of(problem.provenance), rho=rho, epsilon=epsilon, ascent_steps=ascent_steps, seed=seed, curvature=source
    )
    return SharpnessResult(
        group.numbers, group.arrays, group.attrs, settings.as_dict(), stamp(problem.provenance, command)
    )


def _curvature_numbers_input(curv: CurvatureResult) -> dict[str, Any]:
    """The keys `landscape.measures.curvature_numbers` reads, from a curvature result."""
    block = curv.model
    out: dict[str, Any] = {"eigenvalues": None, "residuals": None, "trace": None, "lanczos": None}
    if block.eigen is not None:
        out["eigenvalues"], out["residuals"] = block.eigen.eigenvalues, block.eigen.residuals
    if block.trace is not None:
        out["trace"] = {"value": block.trace.value, "std_error": block.trace.std_error}
    if block.lanczos is not None:
        out["lanczos"] = {"alpha": block.lanczos.alpha, "beta": block.lanczos.beta}
    return out


# --------------------------------------------------------------------------- several checkpoints


def _names(names: Sequence[str] | None, count: int) -> list[str]:
    if names is None:
        return ["start"] + [f"checkpoint {i}" for i in range(1, count)]
    if len(names) != count:
        raise ArgumentError("names", len(names), f"{count} names expected, one per checkpoint")
    return list(names)


def own_state(problem: Problem) -> dict[str, torch.Tensor]:
    """The problem's weights and buffers as a state_dict (the start of a path)."""
    return {k: v.detach().clone() for k, v in problem.model.state_dict().items()}


def check_path_points(points: int) -> None:
    """Raise ArgumentError for a path of fewer than 2 points or more than memory holds."""
    from landscape.strategies.grid import check_grid_fits

    if points < 2:
        raise ArgumentError("points", points, "need at least 2")
    try:
        check_grid_fits((points,))
    except ArgumentError as exc:
        raise ArgumentError("points", points, exc.message) from None


def align(
    problem: Problem,
    other: State,
    *,
    to: State | None = None,
    seed: int = 0,
    max_rounds: int = 100,
) -> Alignment:
    """`other` (a state_dict of the problem's model) with its hidden units permuted to match `to` (default:
    the problem's weights) by weight matching (Ainsworth et al. 2023, Git Re-Basin): the same function,
    usually much nearer in weights. The groups of units that may move are read from the model's graph
    (torch.fx): Linear and Conv units, through BatchNorm, activations, pooling, flattening and residual
    additions; whatever else the graph does fixes the units it touches."""
    if max_rounds < 1:
        raise ArgumentError("max_rounds", max_rounds, "must be at least 1")
    return _alignment(problem, other, to if to is not None else own_state(problem), seed=seed, max_rounds=max_rounds)


def _alignment(problem: Problem, other: State, ref: State, *, seed: int = 0, max_rounds: int = 100) -> Alignment:
    from landscape.alignment import permutation_spec, permute_state, state_distance, weight_matching

    missing = [k for k in ref if k not in other]
    if missing:
        raise ArgumentError(
            "other", f"{len(missing)} keys missing", f"not a state of the problem's model (no {missing[0]!r})"
        )
    example, _ = problem.head(8)
    spec = permutation_spec(problem.model, example)
    matching = weight_matching(spec, ref, other, max_iterations=max_rounds, seed=seed)
    aligned = permute_state(spec, matching.perms, other)
    names = [k for k, _ in problem.model.named_parameters() if k in ref]
    return Alignment(
        state={k: t if t is not other[k] else t.detach().clone() for k, t in aligned.items()},
        groups=len(spec.groups),
        units=spec.units,
        moved=matching.moved,
        rounds=matching.iterations,
        distance_before=state_distance(ref, other, names),
        distance_after=state_distance(ref, aligned, names),
        group_labels=tuple(g.label for g in spec.groups),
    )


def path(
    problem: Problem,
    others: State | Sequence[State],
    points: int = 61,
    curve: str = "linear",
    *,
    recalibrate: Any = None,
    align: bool = False,
    strategy: str = "auto",
    names: Sequence[str] | None = None,
    checkpoints_sha256: Sequence[str] = (),
    train_data: str = "",
    start: State | None = None,
    progress: Progress = False,
    warn: Say = messages.warn,
    command: str = "",
) -> PathResult:
    """The loss along the path from the problem's weights (or `start`) through `others` (state_dicts
    of the same model; BatchNorm buffers move along too), and its barrier
    max_t [L(t) - ((1-t) L(0) + t L(1))]. `curve`: linear (a polyline through more than two) or
    bezier (the middle ones as bends). `recalibrate`: inputs on which the BatchNorm statistics are
    recomputed at every point instead. `align`: each later checkpoint's units are first permuted to
    match the one before it (`align`), and the path is evaluated both ways: the result's `barrier` is
    the aligned path's, `barrier_unaligned` the path's as given."""
    from landscape.io.analysis_groups import path_group
    from landscape.paths import evaluate_path

    rest = [others] if isinstance(others, Mapping) else list(others)
    states = [start if start is not None else own_state(problem), *rest]
    check_path_points(points)
    labels = _names(names, len(states))
    t = torch.linspace(0, 1, points, dtype=torch.float64)
    runs = 2 if align else 1
    with progress_to(progress, "path", runs * points) as bar:
        unaligned = None
        if align:
            unaligned = evaluate_path(problem, states, t, curve=curve, recalibrate=recalibrate, strategy=strategy, warn=warn,
                                      on_point=lambda i: bar(i, runs * points))  # fmt: skip
            for i in range(1, len(states)):
                states[i] = _alignment(problem, states[i], states[i - 1]).state
        res = evaluate_path(problem, states, t, curve=curve, recalibrate=recalibrate, strategy=strategy, warn=warn,
                            on_point=lambda i: bar((runs - 1) * points + i, runs * points))  # fmt: skip
    buffers = "recalibrated" if res.recalibrated else ("interpolated" if problem.buffers else "none")
    group = path_group(
        res,
        curve=curve,
        checkpoints=labels,
        buffers=buffers,
        train_data=train_data or ("--data" if res.recalibrated else ""),
        unaligned=unaligned,
    )
    return _path_result(problem, group, command, checkpoints_sha256, curve=curve, points=points,
                        bn_recalibrate=recalibrate is not None, align=align)  # fmt: skip


def _path_result(
    problem: Problem, group: Any, command: str, checkpoints_sha256: Sequence[str], **settings: Any
) -> PathResult:
    """A path's group as the typed result, with its settings and provenance."""
    chosen = PathSettings(Source.of(problem.provenance), checkpoints_sha256=tuple(checkpoints_sha256), **settings)
    return PathResult(
        group.numbers, group.arrays, group.attrs, chosen.as_dict(), stamp(problem.provenance, command), problem.layout
    )


def fit_curve(
    problem: Problem,
    end: State,
    points: int = 61,
    curve: str = "bezier",
    *,
    start: State | None = None,
    steps: int = 500,
    lr: float = 0.05,
    momentum: float = 0.9,
    batch_size: int = 128,
    seed: int = 0,
    train_on: tuple[Any, torch.Tensor] | None = None,
    names: Sequence[str] | None = None,
    checkpoints_sha256: Sequence[str] = (),
    train_data: str = "",
    strategy: str = "auto",
    progress: Progress = False,
    warn: Say = messages.warn,
    command: str = "",
) -> PathResult:
    """Mode connectivity as Garipov et al. (2018): the bend of a quadratic Bezier curve (or of the
    polygonal chain, `curve="polychain"`) from the problem's weights (or `start`) to `end` trained so that
    the loss along the curve is low (`steps` SGD steps at a random t each, on `train_on` or the problem's
    data), then the loss along the curve and along the straight line. The result's `barrier` is the
    curve's, `barrier_line` the line's; `arrays["bend"]` is the bend. With BatchNorm the statistics are
    recomputed on the training inputs at every point of both."""
    from landscape.curve_fit import TRAINABLE_CURVES, bend_state, fit_bend
    from landscape.io.analysis_groups import path_group
    from landscape.paths import evaluate_path, has_batchnorm

    if curve not in TRAINABLE_CURVES:
        raise ArgumentError("curve", curve, f"a trained curve is one of {', '.join(TRAINABLE_CURVES)}")
    check_path_points(points)
    a = start if start is not None else own_state(problem)
    if train_on is None:
        if not problem.in_memory:
            raise ArgumentError(
                "train_on", None, "the problem's data is streamed; give training data that fits in memory"
            )
        train_on = (problem.x, problem.y)
    x, y = train_on
    labels = _names(names, 2)
    total = steps + 2 * points
    with progress_to(progress, "curve", total) as bar:
        fit = fit_bend(problem, a, end, x, y, curve=curve, steps=steps, lr=lr, momentum=momentum, batch_size=batch_size,
                       seed=seed, on_step=lambda i: bar(i, total))  # fmt: skip
        recal = x if has_batchnorm(problem.model) else None
        t = torch.linspace(0, 1, points, dtype=torch.float64)
        line = evaluate_path(problem, [a, end], t, recalibrate=recal, strategy=strategy, warn=warn,
                             on_point=lambda i: bar(steps + i, total))  # fmt: skip
        res = evaluate_path(problem, [a, bend_state(problem, a, end, fit.bend), end], t, curve=TRAINABLE_CURVES[curve],
                            recalibrate=recal, strategy=strategy, warn=warn, on_point=lambda i: bar(steps + points + i, total))  # fmt: skip
    group = path_group(
        res,
        curve=curve,
        checkpoints=[labels[0], "bend (trained)", labels[1]],
        buffers="recalibrated" if res.recalibrated else ("interpolated" if problem.buffers else "none"),
        train_data=train_data or "--data",
        line=line,
        fit=fit,
    )
    train = {"steps": steps, "lr": lr, "momentum": momentum, "batch_size": batch_size, "seed": seed}
    return _path_result(problem, group, command, checkpoints_sha256, curve=curve, points=points,
                        bn_recalibrate=recal is not None, train=train)  # fmt: skip


def track(
    problem: Problem,
    states: Sequence[State],
    *,
    lr: float | None = None,
    steps: Sequence[float] | None = None,
    trace: bool = False,
    tol: float = 1e-3,
    seed: int = 0,
    subspace: int = 0,
    names: Sequence[str] | None = None,
    checkpoints_sha256: Sequence[str] = (),
    progress: Progress = False,
    command: str = "",
) -> TrackResult:
    """lambda_max (and with `trace` the Hutch++ trace) of the Hessian at each state of a training run;
    `lr` records 2/lr (the edge of stability, Cohen et al. 2021). With `subspace` k, where the gradient
    lives (Gur-Ari et al. 2018): `grad_in_top`, the share of |g|^2 in the top-k eigenspace, and
    `subspace_overlap`, |V_prev^T V|_F^2 / k between consecutive checkpoints (k = the classes, as they did)."""
    from landscape.io.analysis_groups import track_group
    from landscape.tracking import track_curvature

    if lr is not None and not lr > 0:
        raise ArgumentError("lr", lr, "must be positive")
    if not tol > 0:
        raise ArgumentError("tol", tol, "must be positive")
    if subspace < 0:
        raise ArgumentError("subspace", subspace, "must be 0 (off) or the number of eigenvectors")
    step_values = [float(s) for s in steps] if steps is not None else [float(i) for i in range(len(states))]
    if len(step_values) != len(states):
        raise ArgumentError("steps", len(step_values), f"one step per checkpoint expected ({len(states)})")
    labels = _names(names, len(states))
    with progress_to(progress, "track", len(states)) as bar:
        res = track_curvature(
            problem,
            states,
            trace=trace,
            tol=tol,
            seed=seed,
            subspace=subspace,
            on_checkpoint=lambda done: bar(done, len(states)),
        )
    group = track_group(
        res,
        steps=step_values,
        checkpoints=labels,
        lr=lr,
        step_label="training step" if steps is not None else "checkpoint",
    )
    settings = TrackSettings(
        Source.of(problem.provenance), checkpoints_sha256=tuple(checkpoints_sha256), lr=lr, steps=tuple(step_values), trace=trace,
        tol=tol, seed=seed, subspace=subspace,
    )  # fmt: skip
    return TrackResult(
        group.numbers, group.arrays, group.attrs, settings.as_dict(), stamp(problem.provenance, command), problem.layout
    )


# --------------------------------------------------------------------------- planes through checkpoints


def _default_grid(values: torch.Tensor, points: int = 21, margin: float = 0.25) -> Grid:
    lo, hi = float(values.min()), float(values.max())
    pad = margin * max(hi - lo, 1e-12)
    return lo - pad, hi + pad, points


def plan_plane(
    problem: Problem,
    states: Sequence[State],
    x: Grid | None = None,
    y: Grid | None = None,
    *,
    names: Sequence[str] | None = None,
    checkpoints_sha256: Sequence[str] = (),
    seed: int = 0,
    command: str = "",
) -> SweepResult:
    """`plane` before any grid point is done: its axes, grid, and the checkpoints' own and in-plane losses."""
    from landscape.io.analysis_groups import plane_group
    from landscape.paths import flat_params, plane_axes, plane_losses, state_losses

    if len(states) != 3:
        raise ArgumentError("states", len(states), "a plane needs exactly three checkpoints")
    labels = _names(names, 3)
    pa = plane_axes(*[flat_params(problem, s) for s in states])
    pts = pa.points
    x, y = x or _default_grid(pts[:, 0]), y or _default_grid(pts[:, 1])
    own, at = state_losses(problem, states), plane_losses(problem, pa.axes, pts)
    short = [Path(n).name for n in labels]
    text = [
        f"e1: toward {short[1]} (parameter distance)",
        f"e2: toward {short[2]}, orthogonalized (parameter distance)",
    ]
    attrs = tuple(
        {
            "kind": "plane",
            "normalization": "orthonormal",
            "ignore": "none",
            "seed": seed,
            "source": labels[1 + i],
            "label": text[i],
        }
        for i in range(2)
    )
    axes = Axes(pa.axes.detach().to("cpu", torch.float64), attrs, problem.layout)
    settings = PlaneSettings(
        Source.of(problem.provenance), checkpoints_sha256=tuple(checkpoints_sha256), coords=_coords(x, y)
    )
    planned = plan_sweep(problem, _orthogonal(axes), x, y, command=command, kind="plane", settings=settings.as_dict())
    return dataclasses.replace(planned, groups={"plane": plane_group(pts, own, at, labels)})


def plane(problem: Problem, states: Sequence[State], x: Grid | None = None, y: Grid | None = None, *, strategy: str = "auto",
          progress: Progress = False, **plan: Any) -> SweepResult:  # fmt: skip
    """The loss on the plane through three checkpoints A, B, C (A at the origin, orthonormal axes in
    parameter distance: e1 along B - A, e2 the part of C - A orthogonal to it). Off the three points the
    BatchNorm buffers are A's; each checkpoint's own loss and the plane's loss at its position are kept."""
    return run_planned(problem, plan_plane(problem, states, x, y, **plan), strategy=strategy, progress=progress)


def plan_trajectory(
    problem: Problem,
    states: Sequence[State],
    x: Grid | None = None,
    y: Grid | None = None,
    *,
    center: bool = False,
    names: Sequence[str] | None = None,
    checkpoints_sha256: Sequence[str] = (),
    seed: int = 0,
    command: str = "",
) -> SweepResult:
    """`trajectory` before any grid point is done: the PCA plane of the checkpoints and the path's losses."""
    from landscape.io.analysis_groups import trajectory_group
    from landscape.paths import flat_params, pca_axes, plane_losses, state_losses

    if len(states) < 3:
        raise ArgumentError("states", len(states), "a trajectory needs at least three checkpoints")
    labels = _names(names, len(states))
    traj = pca_axes([flat_params(problem, s) for s in states], center=center)
    c = traj.coords
    x, y = x or _default_grid(c[:, 0]), y or _default_grid(c[:, 1])
    own, projected = state_losses(problem, states), plane_losses(problem, traj.axes, c)
    attrs = tuple(
        {"kind": "pca", "normalization": "orthonormal", "ignore": "none", "seed": seed,
         "source": f"principal direction {i + 1} of {len(states)} checkpoints",
         "label": f"PC{i + 1} ({100 * float(traj.explained[i]):.1f}% of the squared offsets)", "explained_variance": float(traj.explained[i])}
        for i in range(2)
    )  # fmt: skip
    axes = Axes(traj.axes.detach().to("cpu", torch.float64), attrs, problem.layout)
    settings = PlaneSettings(
        Source.of(problem.provenance), checkpoints_sha256=tuple(checkpoints_sha256), coords=_coords(x, y), center=center
    )
    planned = plan_sweep(
        problem, _orthogonal(axes), x, y, command=command, kind="trajectory", settings=settings.as_dict()
    )
    return dataclasses.replace(planned, groups={"trajectory": trajectory_group(traj, own, projected, labels)})


def trajectory(problem: Problem, states: Sequence[State], x: Grid | None = None, y: Grid | None = None, *, strategy: str = "auto",
               progress: Progress = False, **plan: Any) -> SweepResult:  # fmt: skip
    """The training path (checkpoints in order, the final one last: the origin) projected on the PCA
    plane of the checkpoints, over the loss on that plane (Li et al. 2018); the explained variance and
    the gap between each checkpoint's own loss and the loss at its projection are kept."""
    return run_planned(problem, plan_trajectory(problem, states, x, y, **plan), strategy=strategy, progress=progress)


def _coords(x: Grid, y: Grid) -> dict[str, list[float]]:
    return {"x": axis_grid(*x, name="x").tolist(), "y": axis_grid(*y, name="y").tolist()}


def _orthogonal(axes: Axes) -> Axes:
    """Orthonormal axes (plane, PCA) carry a zero cosine between them."""
    a, b = dict(axes.attrs[0]), dict(axes.attrs[1])
    a["cosine_with_y"] = b["cosine_with_x"] = 0.0
    return Axes(axes.directions, (a, b), axes.layout, axes.settings)
