"""`landscape hessian`: top-k eigenpairs, trace and spectral density of the Hessian (or the GGN, or the
empirical Fisher), per layer too.

Under torchrun every rank loads the problem and keeps its shard of the data; the products are summed
over the ranks (landscape.curvature.operators), so every rank computes the same estimates; rank 0 alone
prints and writes the results file.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

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
    DistTimeout,
    Dtype,
    Loss,
    Model,
    Sample,
    Samples,
    Seed,
    StoreDtype,
    UnsafePickle,
    load_spec,
    model_options,
    out,
    results_file,
    say,
    warn,
    wrote,
)
from landscape.cli.shared import curvature_with_progress
from landscape.cli.world import joined
from landscape.errors import LandscapeError
from landscape.names import CURVATURE_TITLES, CURVATURES, EXACT_TRACE, METHODS

if TYPE_CHECKING:  # the command's own imports wait for it to run: `landscape --help` needs no torch
    from landscape.curvature.analysis import BlockResult
    from landscape.curvature.density import SpectrumCounts

CURV = "Curvature"


def _quiet(msg: str) -> None:
    """Ranks other than 0 say nothing."""


@app.command(rich_help_panel="Compute")
@model_options
def hessian(
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Results file (HDF5) to write.", callback=results_file)
    ] = Path("landscape-out/curv.h5"),
    sample: Sample = None,
    model: Model = None,
    checkpoint: Checkpoint = None,
    data: Data = None,
    loss: Loss = None,
    top_k: Annotated[int, typer.Option(help="Number of top eigenpairs (0: none).", rich_help_panel=CURV)] = 5,
    which: Annotated[
        str, typer.Option(help="largest (algebraic), or both: also the k most negative.", rich_help_panel=CURV)
    ] = "largest",
    trace: Annotated[
        bool,
        typer.Option("--trace", help="Estimate the trace by Hutch++ (with a standard error).", rich_help_panel=CURV),
    ] = False,
    density: Annotated[
        bool,
        typer.Option(
            "--density",
            help="Spectral density by stochastic Lanczos quadrature (per-probe tridiagonals kept).",
            rich_help_panel=CURV,
        ),
    ] = False,
    per_layer: Annotated[
        bool,
        typer.Option("--per-layer", help="The same numbers for each module's parameter block.", rich_help_panel=CURV),
    ] = False,
    curvature: Annotated[
        str,
        typer.Option(
            help="hessian; ggn (generalized Gauss-Newton, PSD); or fisher (empirical Fisher (1/N) Σ g_i g_iᵀ of the "
            "per-sample gradients, PSD).",
            rich_help_panel=CURV,
        ),
    ] = "hessian",
    tol: Annotated[
        float,
        typer.Option(
            help="Stop Lanczos when every residual ||Hv - λv|| <= tol·|λ|. Eigenvalues come out far more accurate "
            "(error about residual²/gap): for eigenvalues alone, 1e-2 is often enough.",
            rich_help_panel=CURV,
        ),
    ] = 1e-4,
    max_iter: Annotated[
        int | None, typer.Option(help="Most Lanczos steps (default max(100, 20·top-k)).", rich_help_panel=CURV)
    ] = None,
    probes: Annotated[int, typer.Option(help="SLQ probe vectors (density).", rich_help_panel=CURV)] = 10,
    steps: Annotated[int, typer.Option(help="Lanczos steps per SLQ probe (density).", rich_help_panel=CURV)] = 80,
    trace_matvecs: Annotated[
        int,
        typer.Option(
            help="Products spent on the Hutch++ trace: a Lanczos sketch of up to 2/3 of them (shorter where the"
            " spectrum has no outliers to capture), the rest Hutchinson probes; the standard error shrinks as 1/sqrt"
            " of the probes.",
            rich_help_panel=CURV,
        ),
    ] = 60,
    eigenvectors: Annotated[
        bool,
        typer.Option(
            "--eigenvectors/--no-eigenvectors",
            help="Store the top eigenvectors (for `sweep --axes-from`).",
            rich_help_panel=CURV,
        ),
    ] = True,
    basis_dtype: Annotated[
        str,
        typer.Option(
            help="The Lanczos basis (one P-sized vector per step, the run's largest memory): auto (float64 "
            "while it fits 2 GiB, else float32), float64 or float32. At most half the free memory is used: "
            "fewer steps when that is less.",
            rich_help_panel=RUN,
        ),
    ] = "auto",
    basis_on_host: Annotated[
        bool,
        typer.Option(
            "--basis-on-host", help="Keep the Lanczos basis in host memory, beside a GPU.", rich_help_panel=RUN
        ),
    ] = False,
    method: Annotated[
        str,
        typer.Option(
            help="auto (time each, keep the fastest), double-backward(-cached) or forward-over-reverse.",
            rich_help_panel=RUN,
        ),
    ] = "auto",
    seed: Seed = 0,
    samples: Samples = None,
    batch_size: BatchSize = None,
    device: Device = "auto",
    dist_timeout: DistTimeout = 600.0,
    dtype: Dtype = "float32",
    store_dtype: StoreDtype = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite OUTPUT if it exists.", rich_help_panel=RUN)] = False,
    unsafe_pickle: UnsafePickle = False,
    config: Config = None,
    model_options: dict[str, Any] | None = None,
) -> None:
    """Curvature of the loss at a checkpoint: top-k eigenpairs (Lanczos), trace (Hutch++), density (SLQ).

    Products with the Hessian of the dataset-mean loss are exact (batches weighted by size) and
    made by the method that measures fastest; every estimate carries its error bar (residuals,
    standard error, spread between probes).

    Examples:

      landscape hessian --sample mlp -o curv.h5                         (top-5 eigenvalues)

      landscape hessian --sample transformer --trace --density --per-layer -o curv.h5

      landscape hessian --sample cnn --curvature fisher --trace -o fisher.h5   (empirical Fisher)

      landscape hessian --checkpoint my-gpt2 --data tokens.pt --loss next-token --params 'h.0.ln' -o lm.h5

      landscape plot curv.h5 --kind density -o density.png
    """
    from landscape.api import check_curvature
    from landscape.cli.options import load_problem
    from landscape.curvature.analysis import CurvatureSettings
    from landscape.distributed import device_for, shard_problem

    if curvature not in CURVATURES:  # before anything is loaded
        raise LandscapeError(f"--curvature {curvature!r}: expected one of {', '.join(CURVATURES)}")
    if method != "auto" and method not in METHODS:
        raise LandscapeError(f"--method {method!r}: expected auto or one of {', '.join(METHODS)}")
    options: dict[str, Any] = dict(
        top_k=top_k, which=which, trace=trace, density=density, per_layer=per_layer, curvature=curvature, tol=tol,
        max_iter=max_iter, probes=probes, steps=steps, trace_matvecs=trace_matvecs, eigenvectors=eigenvectors, method=method,
        seed=seed, batch_size=batch_size, basis_dtype=basis_dtype, basis_on_host=basis_on_host,
    )  # fmt: skip
    check_curvature(CurvatureSettings(**options))  # before anything is loaded
    with joined(device, dist_timeout) as world:
        if world.main and output.exists() and not force:
            raise LandscapeError(f"{output} exists: pass --force to overwrite it")
        spec = load_spec(
            model=model, checkpoint=checkpoint, data=data, loss=loss, sample=sample, samples=samples,
            seed=seed, batch_size=batch_size, device=device_for(world, device), dtype=dtype, unsafe_pickle=unsafe_pickle, **(model_options or {}),
        )  # fmt: skip
        tell = say if world.main else _quiet
        problem, prov = load_problem(spec, tell)
        problem = shard_problem(world, problem)  # this rank's rows; provenance keeps the whole data set's
        tell(
            f"{prov['parameters']:,} parameters, {prov['samples']:,} samples, loss {prov['loss']}, {prov['device']} {dtype}, {curvature}"
            + (f", {world.size} processes" if world.size > 1 else "")
        )
        result = curvature_with_progress(problem, show=world.main, say=tell, world=world, **options)
    if not world.main:
        return
    result.save(output, store_dtype)
    _summary(result.model, dict(result.layers), curvature)
    if result.model.eigen is not None and not result.model.eigen.all_converged:
        warn(
            f"{int((~result.model.eigen.converged).sum())} eigenpair(s) did not reach --tol {tol:g} in "
            f"{result.model.eigen.iterations} steps (raise --max-iter, or use --dtype float64)"
        )
    wrote(output)


def _counts_text(c: SpectrumCounts) -> str:
    """Rank and outliers in a line, each with its standard error (none for the exact spectrum)."""

    def pm(value: float, error: float) -> str:
        return f"{value:,.1f} ± {error:.2g}" if math.isfinite(error) else f"{value:,.0f}"

    return (
        f"numerical rank {pm(c.rank, c.rank_std_error)} of {c.size:,} (|λ| > {c.rank_threshold:.2g}); "
        f"{c.outliers_ritz} outlier(s) above the bulk's edge {c.bulk_edge:.4g} (by weight {pm(c.outliers, c.outliers_std_error)})"
    )


def _summary(block: BlockResult, layers: dict[str, BlockResult], curvature: str) -> None:
    """Eigenvalues with residuals, the trace with its error, products spent; per layer in a second table."""
    title = CURVATURE_TITLES[curvature]
    dense = bool(block.operator.get("dense"))
    whole = f"exact: the whole {block.size}x{block.size} matrix from {block.size} products"
    if block.eigen is not None:
        how = whole if dense else f"{block.eigen.matvecs} products, {block.eigen.iterations} Lanczos steps"
        t = Table(title=f"{title} eigenvalues ({how})")
        t.add_column("#", justify="right")
        t.add_column("eigenvalue", justify="right")
        t.add_column("residual ‖Hv−λv‖", justify="right")
        t.add_column("converged")
        eig = block.eigen
        for i, (lam, res, ok, floor) in enumerate(zip(eig.eigenvalues, eig.residuals, eig.converged, eig.at_floor)):
            t.add_row(str(i + 1), f"{lam:.6g}", f"{res:.2e}" + (" (floor)" if floor else ""), "yes" if ok else "no")
        out.print(t)
        if eig.at_floor.any():
            out.print(
                f"(floor): the computed residual was below {eig.floor:.1e}, the least the products' precision can "
                "show (100 epsilons x |λmax|); that is reported"
            )
    if block.trace is not None:
        tr = block.trace
        if tr.method == EXACT_TRACE:
            out.print(f"trace: {tr.value:.6g} (exact, from {tr.matvecs} products)")
        else:
            out.print(f"trace: {tr.value:.6g} ± {tr.std_error:.2g} (standard error; Hutch++, {tr.matvecs} products)")
    if block.lanczos is not None:
        if dense:
            out.print(f"density: every eigenvalue ({whole})")
        else:
            out.print(
                f"density: {block.lanczos.alpha.shape[0]} probes x {block.lanczos.alpha.shape[1]} Lanczos steps ({block.lanczos.matvecs} products)"
            )
        counts = block.density.counts if block.density is not None else None
        if counts is not None:
            out.print(f"spectrum: {_counts_text(counts)}")
    op = block.operator
    out.print(
        f"products by {op['method']}: {op['product_to_gradient_ratio']:.2f} gradients each; "
        f"{op['matvecs']} products + {op['setup_matvecs']} to choose the method"
    )
    if layers:
        t = Table(title="per layer")
        t.add_column("block")
        t.add_column("params", justify="right")
        t.add_column("λ_max", justify="right")
        t.add_column("trace", justify="right")
        t.add_column("numbers")
        for name, b in layers.items():
            lam = f"{b.eigen.eigenvalues[0]:.4g}" if b.eigen is not None and b.eigen.eigenvalues.size else "-"
            trc = (
                "-"
                if b.trace is None
                else f"{b.trace.value:.4g}" + (f" ± {b.trace.std_error:.1g}" if b.trace.std_error else "")
            )
            t.add_row(name, f"{b.size:,}", lam, trc, "exact" if b.operator.get("dense") else "estimated")
        out.print(t)
