"""One curvature run: operator, top-k eigenpairs, trace, density, for the whole model and per layer.

This glues the operators to the algorithms and collects their results (each with its error bar) in
frozen dataclasses; the CLI stores them with landscape.io.curvature. No I/O here.

Under torchrun, pass the `world` and each rank's shard of the data (`shard_problem`): the operators
sum their products over the ranks and the algorithms draw their random vectors from seeded
generators that do not depend on the rank, so every rank computes the same estimates.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from landscape.curvature.basis import basis_dtype, row_bytes
from landscape.curvature.dense import (
    dense_matrix,
    exact_eigenpairs,
    exact_runs,
    exact_trace,
    planned_products,
    use_dense,
)
from landscape.curvature.density import Density, LanczosRuns, density_from_lanczos, slq
from landscape.curvature.lanczos import LANCZOS_FLOAT64_BYTES, RESTART_SPARE, Eigenpairs, lanczos
from landscape.curvature.operators import CurvatureOperator, layer_blocks
from landscape.curvature.trace import TraceEstimate, hutchpp
from landscape.datasource import available_memory
from landscape.distributed import World
from landscape.problem import Problem


@dataclass(frozen=True)
class CurvatureSettings:
    """Everything that fixes the numbers of a curvature run (stored in the results file)."""

    curvature: str = "hessian"
    top_k: int = 5
    which: str = "largest"
    tol: float = 1e-4
    max_iter: int | None = None
    trace: bool = False
    trace_matvecs: int = 60
    density: bool = False
    probes: int = 10
    steps: int = 80
    per_layer: bool = False
    eigenvectors: bool = True
    seed: int = 0
    method: str = "auto"
    batch_size: int | None = None
    basis_dtype: str = (
        "auto"  # Lanczos basis dtype: auto (float64 while it fits LANCZOS_FLOAT64_BYTES), float64, float32
    )
    basis_on_host: bool = False  # keep the Lanczos bases in host memory (beside a GPU)


@dataclass(frozen=True)
class BlockResult:
    """The estimates for one operator (the whole model or one block), each with its error bar."""

    names: tuple[str, ...]
    size: int
    eigen: Eigenpairs | None
    trace: TraceEstimate | None
    lanczos: LanczosRuns | None
    operator: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)
    density: Density | None = None  # the spectral density smoothed from `lanczos` (SLQ)


@dataclass(frozen=True)
class CurvatureRun:
    """A whole run: the model's block and, with per_layer, one block per module."""

    settings: CurvatureSettings
    model: BlockResult
    layers: dict[str, BlockResult]


def _precision(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).eps)


OnProducts = Callable[[str, int], None]  # (what is running, products just made): for progress displays


def _counted(matmat: Callable[..., torch.Tensor], stage: str, on_products: OnProducts) -> Callable[..., torch.Tensor]:
    def run(V: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        products = matmat(V, out=out)
        on_products(stage, V.shape[0])
        return products

    return run


def estimate_block(
    problem: Problem,
    settings: CurvatureSettings,
    names: tuple[str, ...] | None = None,
    say: Callable[[str], None] = lambda msg: None,
    world: World | None = None,
    on_products: OnProducts = lambda stage, n: None,
) -> BlockResult:
    """Build the operator on `names` (default all) and run what `settings` asks for (on every rank of `world`);
    `on_products` hears of every product made, with the estimate it serves. Its `seconds` has each
    estimate's time and `setup`'s: building the operator (choosing the product method, its warm-up)."""
    t0 = time.perf_counter()
    op = CurvatureOperator(
        problem,
        curvature=settings.curvature,
        names=names,
        method=settings.method,
        batch_size=settings.batch_size,
        world=world,
        probe_seed=settings.seed,
    )
    setup = time.perf_counter() - t0
    planned = planned_products(
        op.size,
        top_k=settings.top_k,
        which=settings.which,
        trace_matvecs=settings.trace_matvecs if settings.trace else None,
        probes=settings.probes if settings.density else None,
        steps=settings.steps,
    )
    dense = use_dense(op.size, planned)  # fewer products for the whole matrix than the estimators would spend
    try:
        if dense:
            eigen, trace, runs, seconds = _exact(op, settings, on_products)
        else:
            eigen, trace, runs, seconds = _estimated(op, settings, on_products, say, world)
    finally:
        op.close()
    info = {**op.info(), "matvecs": op.matvecs, "dense": dense}
    density = density_from_lanczos(runs.alpha, runs.beta, size=op.size) if runs is not None else None
    return BlockResult(
        names=op.names,
        size=op.size,
        eigen=eigen,
        trace=trace,
        lanczos=runs,
        operator=info,
        seconds={"setup": setup, **seconds},
        density=density,
    )


Estimates = tuple[Eigenpairs | None, TraceEstimate | None, LanczosRuns | None, dict[str, float]]


def _exact(op: CurvatureOperator, settings: CurvatureSettings, on_products: OnProducts) -> Estimates:
    """Everything from the whole matrix (landscape.curvature.dense)."""
    t0 = time.perf_counter()
    H = dense_matrix(_counted(op.matmat, "whole matrix", on_products), op.size, op.device)
    spectrum = torch.linalg.eigh(H)
    eigen = trace = runs = None
    if settings.top_k > 0:
        eigen = exact_eigenpairs(
            H, spectrum, k=settings.top_k, which=settings.which, tol=settings.tol, vectors=settings.eigenvectors,
            precision=_precision(op.dtype),
        )  # fmt: skip
    if settings.trace:
        trace = exact_trace(H)
    if settings.density:
        runs = exact_runs(spectrum.eigenvalues.cpu().numpy(), seed=settings.seed + 2)
    return eigen, trace, runs, {"dense": time.perf_counter() - t0}


BASIS_SHARE = 0.5  # of the memory free when a run starts, what the Lanczos bases may take


def basis_room(
    settings: CurvatureSettings, device: torch.device, world: World | None = None
) -> tuple[torch.device, int]:
    """Where the Lanczos bases are kept and the bytes they may take there (a share of the free memory;
    under torchrun the least of the ranks', so every rank takes the same steps and makes the same calls)."""
    where = torch.device("cpu") if settings.basis_on_host else device
    room = int(BASIS_SHARE * available_memory(where))
    if world is not None and world.size > 1:
        rooms = world.gather(room)
        room = world.broadcast(min(rooms) if rooms else None)
    return where, room


def rows_that_fit(settings: CurvatureSettings, n: int, room: int) -> tuple[int | None, str | None]:
    """The Lanczos basis rows for top-k that fit `room` bytes: None when max_iter rows (default
    max(100, 20 k)) fit, else the cap (the run then restarts thick), with a line saying so."""
    want = min(settings.max_iter if settings.max_iter is not None else max(100, 20 * settings.top_k), n)
    dtype = basis_dtype(settings.basis_dtype, want, n, LANCZOS_FLOAT64_BYTES)
    row = row_bytes(n, dtype)
    wanted = settings.top_k * (2 if settings.which == "both" else 1)
    fits = max(room // row, wanted + RESTART_SPARE)
    if fits >= want:
        return None, None
    return fits, (
        f"Lanczos: a basis of {fits} vectors fits in memory ({row * fits / 2**30:.1f} GiB, half of what is free; "
        f"{want} steps asked for): it restarts when full, keeping its best Ritz vectors, and pairs not converged "
        f"after {want} products are marked so"
        + ("; --basis-dtype float32 holds twice the vectors" if dtype == torch.float64 else "")
    )


def sketch_that_fits(settings: CurvatureSettings, n: int, room: int) -> tuple[int | None, str | None]:
    """Hutch++'s Krylov sketch (at most 2/3 of --trace-matvecs steps) cut to the basis rows that fit `room` bytes (its
    products then go to more Hutchinson probes), with a line saying so; None when it fits."""
    steps = settings.trace_matvecs - max(2, settings.trace_matvecs // 3)
    row = row_bytes(n, basis_dtype(settings.basis_dtype, steps, n, LANCZOS_FLOAT64_BYTES))
    fits = max(1, room // row)
    if fits >= steps:
        return None, None
    return fits, (
        f"trace: a sketch of {fits} Lanczos steps fits in memory ({steps} planned); the other products "
        "go to Hutchinson probes (a larger standard error where the spectrum has outliers)"
    )


def _estimated(
    op: CurvatureOperator,
    settings: CurvatureSettings,
    on_products: OnProducts,
    say: Callable[[str], None],
    world: World | None = None,
) -> Estimates:
    """Lanczos, Hutch++ and SLQ from products, each timed, their bases within the memory free at the start."""
    seconds: dict[str, float] = {}
    eigen = trace = runs = None
    where, room = basis_room(settings, op.device, world)
    if settings.top_k > 0:
        max_rows, cut = rows_that_fit(settings, op.size, room)
        if cut:
            say(cut)
        t0 = time.perf_counter()
        eigen = lanczos(
            _counted(op.matmat, "eigenvalues", on_products),
            op.size,
            k=settings.top_k,
            which=settings.which,
            tol=settings.tol,
            max_iter=settings.max_iter,
            max_rows=max_rows,
            seed=settings.seed,
            device=op.device,
            vectors=settings.eigenvectors,
            precision=_precision(op.dtype),
            # the set-up's product is the first step, and is not kept for the trace after it: two P-sized
            # float64 vectors (4 P in float32 terms) held through all of Lanczos, to spare the trace one product
            start=op.take_probe,
            basis=settings.basis_dtype,
            basis_device=where,
            into=True,
        )
        seconds["eigenvalues"] = time.perf_counter() - t0
    if settings.trace:
        # the eigenvectors Lanczos hands out stay held through the trace: the sketch takes the room they leave,
        # so the run's peak stays that of Lanczos (a 124M-parameter GPT-2's top-5 + trace: 30.8 P-sized vectors
        # over a forward pass when the sketch was as large as the basis, 27.5 P with this)
        vectors = eigen.eigenvectors if eigen is not None else None
        held = vectors.numel() * vectors.element_size() if vectors is not None and vectors.device == where else 0
        sketch, cut = sketch_that_fits(settings, op.size, room - held)
        if cut:
            say(cut)
        t0 = time.perf_counter()
        trace = hutchpp(
            _counted(op.matmat, "trace", on_products),
            op.size,
            matvecs=settings.trace_matvecs,
            seed=settings.seed + 1,
            device=op.device,
            start=op.take_probe,
            basis=settings.basis_dtype,
            basis_device=where,
            max_sketch=sketch,
            into=True,
        )
        seconds["trace"] = time.perf_counter() - t0
    if settings.density:
        t0 = time.perf_counter()
        runs = slq(
            _counted(op.matmat, "density", on_products),
            op.size,
            probes=settings.probes,
            steps=settings.steps,
            seed=settings.seed + 2,
            device=op.device,
            basis_bytes=room,
            basis=settings.basis_dtype,
            basis_device=where,
        )
        if not runs.reorthogonalized:
            say(
                f"density: one probe's basis of {settings.steps} steps does not fit in memory, so the probes run one "
                "after another without re-orthogonalization (the quadrature stays accurate; see docs/hessian.md)"
            )
        seconds["density"] = time.perf_counter() - t0
    return eigen, trace, runs, seconds


def run_curvature(
    problem: Problem,
    settings: CurvatureSettings,
    say: Callable[[str], None] = lambda msg: None,
    world: World | None = None,
    on_products: OnProducts = lambda stage, n: None,
) -> CurvatureRun:
    """The whole model's estimates, then (with per_layer) the same for each module's parameter block.

    With a `world` of several ranks, `problem` holds this rank's shard of the data and every rank
    must call this (the products are summed over the ranks); every rank returns the same result.
    """
    model = estimate_block(problem, settings, None, say, world, lambda stage, n: on_products(f"model: {stage}", n))
    op = model.operator
    say(
        f"{settings.curvature} products by {op['method']}: {op['product_to_gradient_ratio']:.2f} gradients per product"
        + (f" (dropped: {', '.join(op['dropped_methods'])})" if op["dropped_methods"] else "")
    )
    layers: dict[str, BlockResult] = {}
    if settings.per_layer:
        # the method measured on the whole model is used for every block (no re-measuring per block)
        layer_settings = dataclasses.replace(
            settings, eigenvectors=False, method=op["method"] if settings.curvature == "hessian" else "auto"
        )
        blocks = layer_blocks(problem.layout)
        for i, (key, names) in enumerate(blocks.items()):
            layers[key] = estimate_block(
                problem,
                layer_settings,
                names,
                say,
                world,
                _prefixed(on_products, f"layer {key} ({i + 1}/{len(blocks)})"),
            )
    return CurvatureRun(settings=settings, model=model, layers=layers)


def _prefixed(on_products: OnProducts, where: str) -> OnProducts:
    """`on_products` with the block's name before each stage."""
    return lambda stage, n: on_products(f"{where}: {stage}", n)


def top_eigenvectors(
    problem: Problem, count: int = 2, seed: int = 0, tol: float = 1e-3, curvature: str = "hessian"
) -> Eigenpairs:
    """The top-`count` eigenpairs of the curvature by Lanczos, eigenvectors included (for sweep axes)."""
    op = CurvatureOperator(problem, curvature=curvature, probe_seed=seed)
    settings = CurvatureSettings(top_k=count, tol=tol)
    where, room = basis_room(settings, op.device)
    try:
        return lanczos(
            op.matmat,
            op.size,
            k=count,
            tol=tol,
            max_rows=rows_that_fit(settings, op.size, room)[0],
            seed=seed,
            device=op.device,
            precision=_precision(op.dtype),
            start=op.take_probe,
            into=True,
        )
    finally:
        op.close()
