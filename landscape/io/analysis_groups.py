"""What each analysis command stores: its result mapped to one results group (`Group`).

The headline numbers become scalar attributes (what `landscape metrics` collects and `--fail-if`
tests), the curves datasets, the labels string attributes; `about` says in one line how the
numbers were made. The figures (`landscape.render.analysis*`) and the report read these names.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from landscape.io.analysis_store import Group

if TYPE_CHECKING:
    import torch

    from landscape.curve_fit import CurveFit
    from landscape.measures import EpsilonSharpness, RoughnessRun, SamSharpness
    from landscape.paths import PathRun, Trajectory
    from landscape.tracking import TrackRun

Losses = tuple[
    "torch.Tensor", "torch.Tensor | None"
]  # loss [n] and accuracy [n] (classification) per checkpoint or point


def roughness_group(res: RoughnessRun, *, span: float, steps: int, norm: str, ignore: str, seed: int) -> Group:
    """/roughness: RI with its mean and spread, the profiles and each direction's T_j."""
    idx = res.index
    arrays = {"alphas": res.alphas.numpy(), "loss": res.loss.numpy(), "total_variation": res.t.numpy()}
    if res.accuracy is not None:
        arrays["accuracy"] = res.accuracy.numpy()
    return Group(
        numbers={
            "ri": idx.ri,
            "mu": idx.mu,
            "sigma": idx.sigma,
            "directions_used": idx.used,
            "directions_dropped": idx.dropped,
            "loss_center": res.center_loss,
            "span": span,
            "steps": steps,
        },
        arrays=arrays,
        attrs={
            "norm": norm,
            "ignore": ignore,
            "seed": seed,
            "strategy": res.strategy,
            "strategy_timings_s_per_point": res.timings,
            "about": "Wang et al. roughness index: T_j = sum|df| / (2 l (max f - min f)), RI = std(T, ddof=1) / mean(T)",
        },
    )


def sharpness_group(sam: SamSharpness, eps: EpsilonSharpness, curvature: Mapping[str, float], source: str) -> Group:
    """/sharpness: SAM and epsilon-sharpness, and the curvature numbers (lambda_max, trace, LLA ratios) when there are any."""
    numbers: dict[str, Any] = {
        "loss": sam.loss,
        "sam": sam.sharpness,
        "sam_rho": sam.rho,
        "sam_perturbed_loss": sam.perturbed_loss,
        "grad_norm": sam.grad_norm,
        "epsilon_sharpness": eps.sharpness,
        "epsilon": eps.epsilon,
        "epsilon_max_loss": eps.max_loss,
        **curvature,
    }
    return Group(
        numbers=numbers,
        arrays={"epsilon_trace": np.asarray(eps.trace)},
        attrs={
            "curvature_source": source,
            "about": "sam = L(theta + rho g/|g|) - L(theta) (Foret et al.); epsilon_sharpness = 100 (max_box L - L)/(1 + L), "
            "box |y_i| <= eps(|theta_i|+1), by projected sign-gradient ascent (Keskar et al.); "
            "lla_re = |lambda_min/lambda_max|, lla_k = share of negative curvature (SLQ weights)",
        },
    )


def track_group(
    res: TrackRun, *, steps: Sequence[float], checkpoints: Sequence[str], lr: float | None, step_label: str
) -> Group:
    """/track: lambda_max (and the trace) per checkpoint, with the edge of stability 2/lr when the step size is known."""
    numbers: dict[str, Any] = {
        "lambda_max": float(res.lambda_max[-1]),
        "lambda_max_peak": float(np.nanmax(res.lambda_max)),
        "checkpoints": len(checkpoints),
    }
    if lr:
        numbers["lr"] = lr
        numbers["edge_of_stability"] = 2 / lr
        numbers["lambda_max_over_edge"] = float(res.lambda_max[-1]) * lr / 2
    arrays = {
        "step": np.asarray(steps, dtype=np.float64),
        "lambda_max": res.lambda_max,
        "lambda_max_residual": res.lambda_max_residual,
        "lambda_max_error": res.lambda_max_residual,
        "converged": res.converged,
        "loss": res.loss,
    }
    if res.trace is not None and res.trace_std_error is not None:
        numbers["trace"] = float(res.trace[-1])
        arrays["trace"], arrays["trace_std_error"] = res.trace, res.trace_std_error
    about = "lambda_max by Lanczos (landscape.curvature) at each checkpoint; error = residual |Hv - lambda v|; 2/lr = edge of stability"
    if res.grad_in_top is not None and res.subspace_overlap is not None:
        arrays["grad_in_top"], arrays["subspace_overlap"] = res.grad_in_top, res.subspace_overlap
        if res.grad_norm is not None and res.subspace_converged is not None:
            arrays["grad_norm"], arrays["subspace_converged"] = res.grad_norm, res.subspace_converged
        numbers["subspace"] = res.subspace
        numbers["grad_in_top"] = float(res.grad_in_top[-1])
        numbers["grad_in_top_mean"] = float(np.nanmean(res.grad_in_top))
        if np.isfinite(res.subspace_overlap).any():
            numbers["subspace_overlap_mean"] = float(np.nanmean(res.subspace_overlap))
        about += (
            "; grad_in_top = |V_k^T g|^2 / |g|^2 with V_k the top-k Hessian eigenvectors (Gur-Ari et al. 2018); "
            "subspace_overlap = |V_prev^T V|_F^2 / k between consecutive checkpoints"
        )
    return Group(
        numbers=numbers,
        arrays=arrays,
        attrs={
            "checkpoints": list(checkpoints),
            "names": [Path(c).name for c in checkpoints],
            "step_label": step_label,
            "about": about,
        },
    )


def data_sets_group(
    result: Any,
    losses: Mapping[str, np.ndarray],
    accuracies: Mapping[str, np.ndarray | None],
    *,
    data_name: str,
    sources: Mapping[str, str],
) -> Group:
    """/data_sets: the sweep's grid on other data sets, the main data's first: `loss` [sets, *grid]
    (and `accuracy`), each set's loss at the center, its least, and its gap to the main data's."""
    names = [data_name, *losses]
    loss = np.stack(
        [np.asarray(result.loss, dtype=np.float64), *(np.asarray(v, dtype=np.float64) for v in losses.values())]
    )
    arrays: dict[str, np.ndarray] = {"loss": loss}
    if result.accuracy is not None and all(a is not None for a in accuracies.values()):
        arrays["accuracy"] = np.stack([result.accuracy, *(a for a in accuracies.values() if a is not None)])
    at = tuple(int(np.argmin(np.abs(np.asarray(c)))) for c in result.coords)  # the grid point nearest the center
    numbers: dict[str, Any] = {}
    for i, name in enumerate(names):
        grid = loss[i]
        numbers[f"{name}_loss_center"] = float(grid[at])
        numbers[f"{name}_loss_min"] = float(np.nanmin(grid)) if np.isfinite(grid).any() else math.nan
        if i:
            gap = grid - loss[0]
            numbers[f"{name}_gap_center"] = float(gap[at])
            numbers[f"{name}_gap_mean"] = float(np.nanmean(gap)) if np.isfinite(gap).any() else math.nan
    return Group(
        numbers=numbers,
        arrays=arrays,
        attrs={
            "names": names,
            "sources": [sources.get(n, "") for n in names],
            "about": f"loss[i] is the sweep's grid on data set names[i] ({data_name}: the sweep's own data); "
            "NAME_gap_* = NAME's loss minus the first set's",
        },
    )


def path_group(
    res: PathRun,
    *,
    curve: str,
    checkpoints: Sequence[str],
    buffers: str,
    train_data: str,
    unaligned: PathRun | None = None,
    line: PathRun | None = None,
    fit: CurveFit | None = None,
) -> Group:
    """/path: the loss along the curve, its barrier, and each checkpoint's own loss; with `unaligned`
    (path --align) also the loss and barrier of the path through the checkpoints as given; with a
    trained bend (`fit`, path --train) the bend, the training losses, and the straight `line`'s loss and barrier."""
    loss = res.loss.numpy()
    arrays = {"t": res.t.numpy(), "weights": res.weights.numpy(), "loss": loss, "node_loss": res.node_loss.numpy()}
    if res.accuracy is not None:
        arrays["accuracy"] = res.accuracy.numpy()
    if res.node_accuracy is not None:
        arrays["node_accuracy"] = res.node_accuracy.numpy()
    numbers: dict[str, Any] = {
        "barrier": res.barrier,
        "barrier_t": res.barrier_t,
        "loss_start": float(loss[0]),
        "loss_end": float(loss[-1]),
        "loss_max": float(np.nanmax(loss)) if np.isfinite(loss).any() else math.nan,
    }
    if res.accuracy is not None:
        numbers["accuracy_barrier"] = res.accuracy_barrier
    about = "barrier = max_t [L(t) - ((1-t) L(0) + t L(1))]; node_loss = each checkpoint's own loss"
    if unaligned is not None:
        arrays["loss_unaligned"] = unaligned.loss.numpy()
        numbers["barrier_unaligned"] = unaligned.barrier
        if unaligned.accuracy is not None:
            arrays["accuracy_unaligned"] = unaligned.accuracy.numpy()
            numbers["accuracy_barrier_unaligned"] = unaligned.accuracy_barrier
        about += "; loss_unaligned, barrier_unaligned: the path through the checkpoints before alignment"
    if line is not None:
        arrays["loss_line"] = line.loss.numpy()
        numbers["barrier_line"] = line.barrier
        if line.accuracy is not None:
            arrays["accuracy_line"] = line.accuracy.numpy()
        about += "; loss_line, barrier_line: the straight line between the ends"
    if fit is not None:
        arrays["bend"] = fit.bend.detach().cpu().numpy().astype(np.float32)[None]
        arrays["train_loss"], arrays["train_t"] = fit.step_loss.numpy(), fit.step_t.numpy()
        numbers["train_steps"] = int(fit.step_loss.shape[0])
        about += "; bend: the trained bend over the parameters (axes layout); train_loss at t = train_t per step"
    return Group(
        numbers=numbers,
        arrays=arrays,
        attrs={
            "curve": curve,
            "checkpoints": list(checkpoints),
            "buffers": buffers,
            "strategy": res.strategy,
            "train_data": train_data,
            "about": about,
        },
    )


def plane_group(points: torch.Tensor, own: Losses, at: Losses, checkpoints: Sequence[str]) -> Group:
    """/plane: where the three checkpoints sit in their plane, and their own loss against the plane's there."""
    own_loss, at_loss = own[0], at[0]
    gap = at_loss - own_loss
    arrays = {"points": points.numpy(), "own_loss": own_loss.numpy(), "plane_loss": at_loss.numpy(), "gap": gap.numpy()}
    if own[1] is not None and at[1] is not None:
        arrays["own_accuracy"], arrays["plane_accuracy"] = own[1].numpy(), at[1].numpy()
    return Group(
        numbers={
            "distance_ab": float(points[1].norm()),
            "distance_ac": float(points[2].norm()),
            "distance_bc": float((points[2] - points[1]).norm()),
            "gap_max_abs": float(gap.abs().max()),
        },
        arrays=arrays,
        attrs={
            "checkpoints": list(checkpoints),
            "names": [Path(c).name for c in checkpoints],
            "buffers": "those of the first checkpoint everywhere on the grid",
            "about": "origin A; e1 = (B-A)/|B-A|; e2 = orthogonalized C-A; gap = plane_loss - own_loss (buffers differ)",
        },
    )


def trajectory_group(traj: Trajectory, own: Losses, projected: Losses, checkpoints: Sequence[str]) -> Group:
    """/trajectory: the checkpoints on the PCA plane, the variance it explains, and their own loss against the plane's."""
    own_loss, proj_loss = own[0], projected[0]
    gap = proj_loss - own_loss
    arrays = {
        "coords": traj.coords.numpy(),
        "own_loss": own_loss.numpy(),
        "projected_loss": proj_loss.numpy(),
        "gap": gap.numpy(),
        "residual": traj.residual.numpy(),
        "relative_residual": traj.relative_residual.numpy(),
        "explained_variance": traj.explained.numpy(),
        "singular_values": traj.singular_values.numpy(),
    }
    if own[1] is not None and projected[1] is not None:
        arrays["own_accuracy"], arrays["projected_accuracy"] = own[1].numpy(), projected[1].numpy()
    rel_gap = gap.abs() / own_loss.abs().clamp_min(1e-12)
    return Group(
        numbers={
            "explained_variance_1": float(traj.explained[0]),
            "explained_variance_2": float(traj.explained[1]),
            "explained_variance": float(traj.explained.sum()),
            "gap_max_abs": float(gap.abs().max()),
            "gap_max_relative": float(rel_gap.max()),
            "relative_residual_max": float(traj.relative_residual.max()),
        },
        arrays=arrays,
        attrs={
            "checkpoints": list(checkpoints),
            "names": [Path(c).name for c in checkpoints],
            "centered": traj.centered,
            "buffers": "those of the final checkpoint everywhere on the grid",
            "about": "axes: top-2 right singular vectors of theta_i - theta_final; gap = projected_loss - own_loss",
        },
    )
