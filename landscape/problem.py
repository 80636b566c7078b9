"""A model, its weights, a data set and a loss, placed on one device in one dtype."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn as nn

from landscape.errors import LandscapeError
from landscape.io.loss import LossFn, is_builtin
from landscape.model_io import (
    Inputs,
    call,
    describe,
    describe_output,
    output_kind,
    predictions_correct,
    rows,
    take,
    to_device,
)
from landscape.params import Layout

@dataclass
class Problem:
    """Everything needed to evaluate the dataset-mean loss at any weights.

    `theta` is the flat vector of the model's trainable parameters at the checkpoint (in `dtype`,
    or float32 when `dtype` is bfloat16, so perturbed weights are formed at full precision);
    `model` holds those weights, is in eval mode, and lives on `device` in `dtype` like `x`.
    `x` is one tensor or a dict of tensors (keyword arguments of the model), all with N rows;
    the parameters outside `layout` (frozen ones, or those `--params` leaves out) never move.
    """

    model: nn.Module
    layout: Layout
    theta: torch.Tensor
    buffers: dict[str, torch.Tensor]
    x: Inputs
    y: torch.Tensor
    loss_fn: LossFn
    classification: bool
    batch_size: int
    device: torch.device
    dtype: torch.dtype
    auto_batch: bool = False  # True when the user named no batch size: the sweep may tune it

    @property
    def n(self) -> int:
        return rows(self.x)

    def batches(self, batch_size: int | None = None) -> Iterator[tuple[Inputs, torch.Tensor, float]]:
        """(x_b, y_b, weight) with weight = len(b) / N, so weighted batch means sum to the dataset mean."""
        bs = batch_size or self.batch_size
        for start in range(0, self.n, bs):
            xb, yb = take(self.x, slice(start, start + bs)), self.y[start : start + bs]
            yield xb, yb, yb.shape[0] / self.n

    def forward(self, x: Inputs) -> object:
        """The model's output for inputs `x` (a tensor, or a dict passed as keyword arguments)."""
        return call(self.model, x)

    def params(self) -> dict[str, torch.Tensor]:
        """The model's own parameter tensors (live; writing them changes the model)."""
        return dict(self.model.named_parameters())


def select_parameters(model: nn.Module, params: str = "trainable") -> dict[str, nn.Parameter]:
    """The parameters the landscape is over: `trainable` (requires_grad, the default), `all`, or
    those whose name matches a regular expression (`re.search`)."""
    named = dict(model.named_parameters())
    if params == "all":
        return named
    if params == "trainable":
        return {n: p for n, p in named.items() if p.requires_grad}
    try:
        pattern = re.compile(params)
    except re.error as exc:
        raise LandscapeError(f"--params {params!r}: expected trainable, all or a regular expression ({exc})") from None
    chosen = {n: p for n, p in named.items() if pattern.search(n)}
    if not chosen:
        raise LandscapeError(f"--params {params!r}: matches none of the model's {len(named)} parameter tensors (e.g. {', '.join(list(named)[:3])})")
    return chosen


def make_problem(
    model: nn.Module,
    state: dict[str, torch.Tensor],
    x: Inputs,
    y: torch.Tensor,
    loss_fn: LossFn,
    *,
    device: torch.device,
    dtype: torch.dtype,
    batch_size: int | None = None,
    classification: bool | None = None,
    data_name: str = "--data",
    params: str = "trainable",
    say: Callable[[str], None] = lambda msg: None,
) -> Problem:
    """Load `state` into `model`, move model and data to `device`/`dtype`, and check they fit together."""
    model.load_state_dict(state)
    # weights are combined (theta + c @ D) in float32 when the model runs in bfloat16
    master = torch.float32 if dtype == torch.bfloat16 else dtype
    model.to(device=device)
    if not list(model.parameters()):
        raise LandscapeError("--model: the model has no parameters")
    theta_params = select_parameters(model, params)
    if not theta_params:
        raise LandscapeError("--params trainable: every parameter of the model is frozen (requires_grad=False); pass --params all")
    left = [p for n, p in model.named_parameters() if n not in theta_params]
    if left:
        why = "frozen (requires_grad=False)" if params == "trainable" else f"not matched by --params {params}"
        say(
            f"{len(left)} parameter tensors ({sum(p.numel() for p in left):,} values) are {why} and left out: "
            f"the landscape is over the other {sum(p.numel() for p in theta_params.values()):,}"
            + (" (--params all includes them)" if params == "trainable" else "")
        )
    layout = Layout.of(theta_params)
    theta = layout.flatten(theta_params).detach().to(master).clone()
    model = model.to(dtype=dtype).eval()  # requires_grad is left as the user set it: it says what is trainable
    x = to_device(x, device, dtype)
    y = y.to(device=device, dtype=dtype) if torch.is_floating_point(y) else y.to(device)
    if classification is None:
        classification = not torch.is_floating_point(y) and y.ndim == 1
    buffers = dict(model.named_buffers())
    problem = Problem(
        model=model,
        layout=layout,
        theta=theta,
        buffers=buffers,
        x=x,
        y=y,
        loss_fn=loss_fn,
        classification=classification,
        batch_size=int(batch_size or min(rows(x), 4096 if device.type == "cpu" else 65536)),
        device=device,
        dtype=dtype,
        auto_batch=batch_size is None,
    )
    check_fits(problem, data_name, say)
    return problem


def check_fits(problem: Problem, data_name: str, say: Callable[[str], None] = lambda msg: None) -> None:
    """Run the model and loss on two samples; turn a failure into a one-line error."""
    xb, yb = take(problem.x, slice(0, 2)), problem.y[:2]
    try:
        with torch.no_grad():
            out = problem.forward(xb)
    except Exception as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise LandscapeError(f"{data_name}: the model cannot take {describe(problem.x)}: {msg}") from exc
    kind = output_kind(out)
    if kind is not None and is_builtin(problem.loss_fn):
        say(f"the model returns {kind}")
    try:
        loss = problem.loss_fn(out, yb)
        if problem.classification:
            predictions_correct(out, yb)
    except LandscapeError:
        raise
    except Exception as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise LandscapeError(
            f"{data_name}: the loss cannot compare model outputs ({describe_output(out)}) with targets y {tuple(yb.shape)}: {msg}"
        ) from exc
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise LandscapeError("--loss: the loss function must return a scalar (the mean over the batch)")


def resolve_device(name: str) -> torch.device:
    """auto -> cuda when available, else cpu; a named device is checked once here."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise LandscapeError(f"--device {name}: CUDA is not available on this machine")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise LandscapeError(f"--device {name!r}: {exc}") from exc


DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}


def resolve_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise LandscapeError(f"--dtype {name!r}: expected one of {', '.join(DTYPES)}")
    return DTYPES[name]


Say = Callable[[str], None]
