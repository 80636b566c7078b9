"""The Hessian's lambda_max (and trace) at each checkpoint of a training run. Plain functions; no I/O.

With gradient descent at step size eta, lambda_max rises to about 2/eta and hovers there: the edge
of stability (Cohen et al. 2021, "Gradient Descent on Neural Networks Typically Occurs at the Edge
of Stability"). Each checkpoint's weights and buffers are written into the one model in turn, and
the problem's own are put back at the end.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from landscape.curvature import CurvatureSettings
from landscape.curvature.analysis import run_curvature
from landscape.measures import loss_and_grad, loss_at
from landscape.paths import flat_params, set_buffers, set_params
from landscape.problem import Problem


@dataclass(frozen=True)
class TrackRun:
    """Per checkpoint, in the order given: lambda_max with its residual ||Hv - lambda v|| (the error bar),
    whether Lanczos converged, the loss, and (when asked for) the trace with its standard error."""

    lambda_max: np.ndarray
    lambda_max_residual: np.ndarray
    converged: np.ndarray
    loss: np.ndarray
    trace: np.ndarray | None = None
    trace_std_error: np.ndarray | None = None
    grad_in_top: np.ndarray | None = None  # ||V_k^T g||^2 / ||g||^2 per checkpoint (with subspace k)
    subspace_overlap: np.ndarray | None = None  # ||V_prev^T V||_F^2 / k; NaN at the first checkpoint
    grad_norm: np.ndarray | None = None
    subspace_converged: np.ndarray | None = None  # all k eigenpairs within the tolerance
    subspace: int = 0  # k


def track_curvature(
    problem: Problem,
    states: Sequence[Mapping[str, torch.Tensor]],
    *,
    trace: bool = False,
    tol: float = 1e-3,
    seed: int = 0,
    subspace: int = 0,
    on_checkpoint: Callable[[int], None] = lambda done: None,
) -> TrackRun:
    """lambda_max by Lanczos (relative residual `tol`), the loss, and with `trace` the Hutch++ trace at
    each state (a checkpoint's state_dict: its parameters and buffers); with `subspace` k the gradient's
    share in the top-k eigenspace and the overlap of consecutive ones; `on_checkpoint(done)` after each."""
    k = max(subspace, 1)
    settings = CurvatureSettings(top_k=k, tol=tol, trace=trace, density=False, eigenvectors=subspace > 0, seed=seed)
    saved = {k: v.clone() for k, v in problem.buffers.items()}
    lam, res, converged, losses, tr, tr_err = [], [], [], [], [], []
    in_top, overlap, gnorm, sub_ok = [], [], [], []
    previous: torch.Tensor | None = None
    try:
        for i, state in enumerate(states):
            flat = flat_params(problem, state)
            set_params(problem, flat)
            set_buffers(problem, {k: state[k] for k in problem.buffers if k in state})
            at = problem.replace(theta=flat)
            block = run_curvature(at, settings).model
            if block.eigen is not None:
                top = int(np.argmax(block.eigen.eigenvalues))
                lam.append(float(block.eigen.eigenvalues[top]))
                res.append(float(block.eigen.residuals[top]))
                converged.append(bool(block.eigen.converged[top]))
            else:
                lam.append(math.nan)
                res.append(math.nan)
                converged.append(False)
            tr.append(block.trace.value if block.trace is not None else math.nan)
            tr_err.append(block.trace.std_error if block.trace is not None else math.nan)
            if subspace:
                loss, grad = loss_and_grad(at, flat)
                assert block.eigen is not None and block.eigen.eigenvectors is not None
                basis = torch.linalg.qr(block.eigen.eigenvectors.to("cpu", torch.float64).T).Q  # [P, k] orthonormal
                g = grad.to("cpu", torch.float64)
                norm2 = float(g @ g)
                in_top.append(float((basis.T @ g).pow(2).sum()) / norm2 if norm2 > 0 else math.nan)
                gnorm.append(math.sqrt(norm2))
                overlap.append(float((previous.T @ basis).pow(2).sum()) / k if previous is not None else math.nan)
                sub_ok.append(bool(block.eigen.all_converged))
                previous = basis
                losses.append(loss)
            else:
                losses.append(loss_at(at, flat))
            on_checkpoint(i + 1)
    finally:
        set_params(problem, problem.theta)
        set_buffers(problem, saved)
    return TrackRun(
        np.asarray(lam),
        np.asarray(res),
        np.asarray(converged, dtype=bool),
        np.asarray(losses),
        np.asarray(tr) if trace else None,
        np.asarray(tr_err) if trace else None,
        np.asarray(in_top) if subspace else None,
        np.asarray(overlap) if subspace else None,
        np.asarray(gnorm) if subspace else None,
        np.asarray(sub_ok, dtype=bool) if subspace else None,
        subspace,
    )
