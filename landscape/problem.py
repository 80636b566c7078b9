"""A model, its weights, a data set and a loss, placed on one device in one dtype."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import inspect
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
import torch.nn as nn

from landscape.data import Columns
from landscape.datasource import DataSource, place_data, streamed_batch_size
from landscape.errors import ArgumentError, LandscapeError
from landscape.losses import (
    IGNORE_INDEX,
    LossFn,
    check_class_targets,
    correct_predictions,
    counts_targets,
    is_builtin,
    loss_function,
    loss_terms,
    next_token,
)
from landscape.model_io import (
    Inputs,
    call,
    describe,
    describe_output,
    map_inputs,
    output_kind,
    rows,
    take,
    to_device,
)
from landscape.params import Layout

Say = Callable[[str], None]


class Problem:
    """Everything needed to evaluate the dataset-mean loss at any weights: a model, data and a loss.

    >>> import torch, landscape as ls
    >>> model = torch.nn.Linear(4, 3)
    >>> problem = ls.Problem(model, (torch.randn(32, 4), torch.randint(0, 3, (32,))), loss="cross-entropy")
    >>> problem.n, problem.layout.size
    (32, 15)

    `data` is an (x, y) pair (x a tensor or a dict of tensors: the model's keyword arguments), a
    dict of columns, a Dataset or a DataLoader (of pairs or of dicts); or inputs alone, with
    `targets`. `loss` is a built-in's name (cross-entropy, next-token, mse; default by the targets)
    or a function (output, target) -> batch mean. `device` and `dtype` default to the model's.
    `params`: the parameters the landscape is over (trainable, all, or a regular expression over
    their names); the others never move. The model is put in eval mode on `device` in `dtype`;
    `theta` is the flat vector of the chosen parameters (float32 when the model runs in bfloat16,
    so perturbed weights are formed at full precision).
    """

    def __init__(
        self,
        model: nn.Module,
        data: Any,
        loss: str | LossFn | None = None,
        *,
        targets: Any = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        batch_size: int | None = None,
        params: str = "trainable",
        columns: Columns = Columns(),
        classification: bool | None = None,
        samples: int | None = None,
        seed: int = 0,
        stream: bool | None = None,
        provenance: Mapping[str, Any] | None = None,
        where: str = "data",
        say: Say = lambda msg: None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ArgumentError("model", type(model).__name__, "expected a torch.nn.Module")
        inner = getattr(model, "_orig_mod", None)
        if type(model).__name__ == "OptimizedModule" and isinstance(inner, nn.Module):
            # torch.compile(model): its parameters are the module's under `_orig_mod.`, and every strategy and
            # product would run through (and recompile) the compiled wrapper; `--strategy compiled` compiles anew
            model = inner
            say(
                f"the model is torch.compile'd: its module ({type(model).__name__}) is used, with its own parameter names"
            )
        first = next(iter(model.parameters()), None)
        if first is None:
            raise ArgumentError("model", None, "the model has no parameters")
        self.device = resolve_device(device) if device is not None else first.device
        self.dtype = resolve_dtype(dtype) if dtype is not None else first.dtype
        if loss == "next-token" or loss is next_token:  # a causal LM's targets are its own tokens, unless named
            columns = dataclasses.replace(columns, targets_from_inputs=True)
        placed = place_data(
            data, targets, columns, where, samples=samples, seed=seed, device=self.device, dtype=self.dtype,
            stream=stream, say=say,
        )  # fmt: skip
        self.source = placed if isinstance(placed, DataSource) else None  # streamed data, read on every pass
        x, y = placed.head() if isinstance(placed, DataSource) else placed
        # columns the model's forward takes no argument for (a data set's `idx`) are left out, as the
        # Hugging Face Trainer leaves them; `input_keys` named by the user are passed as named
        self._input_keys = None if columns.input_keys is not None else accepted_keys(model, x, say)
        self.loss_fn, self.loss_name = loss_function(loss, y)
        # weights are combined (theta + c @ D) in float32 when the model runs in bfloat16
        master = torch.float32 if self.dtype == torch.bfloat16 else self.dtype
        model.to(device=self.device)
        theta_params = select_parameters(model, params)
        _say_left_out(model, theta_params, params, say)
        self.layout = Layout.of(theta_params)
        self.theta = self.layout.flatten(theta_params).detach().to(master)  # a new tensor (torch.cat): no clone
        self.model = model.to(
            dtype=self.dtype
        ).eval()  # requires_grad is left as the user set it: it says what is trainable
        # the data's first rows (all of them, in memory): shapes and checks
        self._head = (self._placed_x(x), self._placed_y(y))
        self._x: Inputs | None = None if self.source is not None else self._head[0]
        self._y: torch.Tensor | None = None if self.source is not None else self._head[1]
        # accuracy: of class indices, one per sample or the counted targets of a built-in class loss
        # (next-token, pixels); the share of the loss's terms (`terms`) predicted right
        one_per_sample = not torch.is_floating_point(y) and y.ndim == 1
        self.classification = (
            (one_per_sample or counts_targets(self.loss_fn, y)) if classification is None else classification
        )
        self.buffers = dict(model.named_buffers())
        if batch_size is not None and batch_size < 1:
            raise ArgumentError("batch_size", batch_size, "must be positive")
        cap = min(self.n, 4096 if self.device.type == "cpu" else 65536)
        if batch_size is None and self.source is not None:
            cap = streamed_batch_size(self.source, self.dtype, cap)
        self.batch_size = int(batch_size or cap)
        # True when the user named no batch size and the loss does not depend on it: the sweep may tune it
        self.auto_batch = batch_size is None
        per_batch = batch_statistics(self.model)
        if per_batch:
            self.auto_batch = False
            names = ", ".join(per_batch[:3]) + (f" and {len(per_batch) - 3} more" if len(per_batch) > 3 else "")
            say(
                f"BatchNorm {names} keeps no running statistics and normalizes each batch by its own, so the "
                f"loss depends on the batch size: it stays {self.batch_size} (not tuned)"
            )
        self._provenance = dict(provenance) if provenance is not None else None
        # buffers that move with the point: along the x axis (`along_line_to`) or with state directions
        self.buffer_line: BufferLine | BufferScale | None = None
        # streamed class targets are checked batch by batch against the output and targets of two samples
        self._classes: tuple[object, torch.Tensor] | None = None
        # the loss's terms (counted targets, or rows): in all the data, and per batch for each batch size
        self._terms: int | None = None
        self._batch_terms: dict[int, list[int]] = {}
        # set by `check_fits` when the forward pass changes its input in place (in-memory batches are then copies)
        self.writes_inputs = False
        check_fits(self, where, say)

    def __repr__(self) -> str:
        model = type(self.model).__name__
        dtype = str(self.dtype).removeprefix("torch.")
        return f"Problem({model}, {self.layout.size:,} parameters, {self.n:,} samples, loss {self.loss_name}, {self.device} {dtype})"

    def _placed_x(self, x: Inputs) -> Inputs:
        if self._input_keys is not None and isinstance(x, Mapping):
            x = {k: v for k, v in x.items() if k in self._input_keys}
        return to_device(x, self.device, self.dtype)

    def _placed_y(self, y: torch.Tensor) -> torch.Tensor:
        return y.to(device=self.device, dtype=self.dtype) if torch.is_floating_point(y) else y.to(self.device)

    @property
    def x(self) -> Inputs:
        """The inputs of every sample, on the device (not for streamed data: see `batches`)."""
        if self._x is None:
            raise LandscapeError(f"the data are streamed ({self.n:,} samples), not held in memory")
        return self._x

    @x.setter
    def x(self, value: Inputs) -> None:
        self._x = value

    @property
    def y(self) -> torch.Tensor:
        """The targets of every sample, on the device (not for streamed data: see `batches`)."""
        if self._y is None:
            raise LandscapeError(f"the data are streamed ({self.n:,} samples), not held in memory")
        return self._y

    @y.setter
    def y(self, value: torch.Tensor) -> None:
        self._y = value

    @property
    def in_memory(self) -> bool:
        """True when the data are tensors in memory; False when they are streamed from a Dataset or DataLoader."""
        return self.source is None

    def head(self, k: int) -> tuple[Inputs, torch.Tensor]:
        """The first `k` rows (at most the 64 read to check a streamed data set), on the device."""
        x, y = (self.x, self.y) if self.source is None else self._head
        return self._safe(take(x, slice(0, k))), y[:k]

    def _safe(self, x: Inputs) -> Inputs:
        """Rows of the data as the model may be given them: copies when it writes into its input."""
        return map_inputs(torch.clone, x) if self.writes_inputs else x

    @property
    def n(self) -> int:
        return self.source.n if self.source is not None else rows(self.x)

    @property
    def provenance(self) -> dict[str, Any]:
        """What the problem was made from, as a results file's root attributes record it (files and
        their sha256 from the CLI; for objects in memory, their class and a sha256 of their values)."""
        if self._provenance is None:
            self._provenance = memory_provenance(self)
        return self._provenance

    def with_provenance(self, provenance: Mapping[str, Any]) -> Problem:
        """The same problem recording where it came from (the CLI: the files it read)."""
        other = copy.copy(self)
        other._provenance = dict(provenance)
        return other

    def replace(self, **changes: Any) -> Problem:
        """A shallow copy with some attributes changed (the model and data are shared, not copied)."""
        other = copy.copy(self)
        for name, value in changes.items():
            if not hasattr(self, name):
                raise AttributeError(f"Problem has no attribute {name!r}")
            setattr(other, name, value)
        other._terms, other._batch_terms = None, {}  # counted again: the data or the loss may be others
        return other

    def with_data(
        self,
        data: Any,
        *,
        targets: Any = None,
        columns: Columns = Columns(),
        samples: int | None = None,
        seed: int = 0,
        stream: bool | None = None,
        where: str = "data",
        say: Say = lambda msg: None,
    ) -> Problem:
        """The same model, loss, device, dtype and parameters on other data (a test set beside the
        training set): the same landscape coordinates, other losses."""
        other = Problem(
            self.model, data, self.loss_fn, targets=targets, device=self.device, dtype=self.dtype,
            batch_size=None if self.auto_batch else self.batch_size, params="all", columns=columns,
            classification=self.classification, samples=samples, seed=seed, stream=stream, where=where, say=say,
        )  # fmt: skip
        other.layout, other.theta, other.buffer_line = self.layout, self.theta, self.buffer_line
        other._provenance = None
        return other

    @property
    def terms(self) -> int:
        """How many terms the data set's loss is the mean of (`losses.loss_terms`): the rows, or for a
        built-in class loss the counted targets (tokens, pixels; -100 left out), counted once (streamed
        data: in one pass over it, the first time it is asked)."""
        if self._terms is None:
            if not counts_targets(self.loss_fn, self._head[1]):
                self._terms = self.n
            elif self.source is None:
                self._terms = loss_terms(self.loss_fn, self.y)
            else:
                self._terms = sum(loss_terms(self.loss_fn, yb) for _, yb in self.source.raw_batches(self.batch_size))
            if self._terms == 0:
                raise LandscapeError(f"every target of the data is {IGNORE_INDEX} (ignored): the loss averages nothing")
        return self._terms

    def batches(self, batch_size: int | None = None) -> Iterator[tuple[Inputs, torch.Tensor, float]]:
        """(x_b, y_b, weight) with weight = the batch's share of the loss's terms (rows, or counted
        targets: `terms`), so weighted batch means sum to the data set's mean whatever the batch size.
        A batch whose targets are all ignored is left out (its mean is 0 / 0)."""
        bs = batch_size or self.batch_size
        if self.source is not None:
            yield from self._streamed_batches(bs)
            return
        counted = self._batch_terms.get(bs)
        if counted is None:  # counted once per batch size (on a GPU, each count waits for the device)
            counted = self._batch_terms[bs] = [
                loss_terms(self.loss_fn, self.y[s : s + bs]) for s in range(0, self.n, bs)
            ]
        for i, start in enumerate(range(0, self.n, bs)):
            if counted[i]:
                yield (
                    self._safe(take(self.x, slice(start, start + bs))),
                    self.y[start : start + bs],
                    counted[i] / self.terms,
                )

    def _streamed_batches(self, bs: int) -> Iterator[tuple[Inputs, torch.Tensor, float]]:
        assert self.source is not None
        start = 0
        for xb, yb in self.source.raw_batches(bs):
            if self._classes is not None:  # the whole data's targets were never in memory to check at once
                try:
                    check_class_targets(self.loss_fn, self._classes[0], self._classes[1], yb)
                except LandscapeError as exc:
                    raise LandscapeError(f"{self.source.where}, samples {start:,} on: {exc}") from exc
            start += yb.shape[0]
            counted = loss_terms(self.loss_fn, yb)
            if counted:
                yield self._placed_x(xb), self._placed_y(yb), counted / self.terms

    def along_line_to(self, state: Mapping[str, torch.Tensor]) -> Problem:
        """This problem with its floating buffers (BatchNorm statistics) following a sweep's x axis from
        its own (x=0) to those of `state` (x=1), as the weights do on the line to that checkpoint: at
        x=1 the loss is then the other checkpoint's own. Itself where the buffers are equal."""
        ends = {
            n: state[n].to(b.device, b.dtype) for n, b in self.buffers.items() if b.is_floating_point() and n in state
        }
        if all(torch.equal(self.buffers[n], end) for n, end in ends.items()):
            return self
        starts = {n: self.buffers[n].detach().clone() for n in ends}
        return self.replace(buffer_line=BufferLine({n: self.buffers[n] for n in ends}, starts, ends))

    def with_state_directions(self, scales: tuple[float, ...]) -> Problem:
        """This problem with its floating buffers of one dimension or fewer (BatchNorm statistics)
        following the sweep's axes as Li et al.'s state directions do: scaled by 1 + sum_i scales[i] c_i
        (scale 1 for an axis whose ignore is "none", 0 for "biasbn"). Itself when nothing moves."""
        moving = {n: b for n, b in self.buffers.items() if b.is_floating_point() and b.dim() <= 1}
        if not moving or not any(scales):
            return self
        base = {n: b.detach().clone() for n, b in moving.items()}
        return self.replace(buffer_line=BufferScale(moving, base, tuple(float(s) for s in scales)))

    def forward(self, x: Inputs) -> object:
        """The model's output for inputs `x` (a tensor, or a dict passed as keyword arguments)."""
        return call(self.model, x)

    def params(self) -> dict[str, torch.Tensor]:
        """The model's own parameter tensors (live; writing them changes the model)."""
        return dict(self.model.named_parameters())


@dataclasses.dataclass(frozen=True)
class BufferLine:
    """Floating buffers set along a line: `live` (the model's own tensors) hold lerp(start, end, x)."""

    live: Mapping[str, torch.Tensor]
    start: Mapping[str, torch.Tensor]
    end: Mapping[str, torch.Tensor]
    dims: int = 1  # the buffers depend on the point's first coordinate

    def apply(self, x: float) -> None:
        with torch.no_grad():
            for name, buf in self.live.items():
                buf.copy_(torch.lerp(self.start[name], self.end[name], x))

    def apply_at(self, point: tuple[float, ...]) -> None:
        self.apply(point[0])


@dataclasses.dataclass(frozen=True)
class BufferScale:
    """Floating buffers scaled with the point (Li et al.'s state directions): `live` holds
    base * (1 + sum_i scales[i] c_i) at coordinates c (scales 0 or 1 per axis)."""

    live: Mapping[str, torch.Tensor]
    base: Mapping[str, torch.Tensor]
    scales: tuple[float, ...]

    @property
    def dims(self) -> int:
        return len(self.scales)

    def apply_at(self, point: tuple[float, ...]) -> None:
        factor = 1.0 + sum(s * c for s, c in zip(self.scales, point, strict=False))
        with torch.no_grad():
            for name, buf in self.live.items():
                buf.copy_(self.base[name] * factor)


def select_parameters(model: nn.Module, params: str = "trainable") -> dict[str, nn.Parameter]:
    """The parameters the landscape is over: `trainable` (requires_grad, the default), `all`, or
    those whose name matches a regular expression (`re.search`)."""
    named = dict(model.named_parameters())
    if params == "all":
        return named
    if params == "trainable":
        trainable = {n: p for n, p in named.items() if p.requires_grad}
        if not trainable:
            raise ArgumentError(
                "params",
                params,
                "every parameter of the model is frozen (requires_grad=False); choose 'all' or a regular expression",
            )
        return trainable
    try:
        pattern = re.compile(params)
    except re.error as exc:
        raise ArgumentError("params", params, f"expected trainable, all or a regular expression ({exc})") from None
    chosen = {n: p for n, p in named.items() if pattern.search(n)}
    if not chosen:
        raise ArgumentError(
            "params",
            params,
            f"matches none of the model's {len(named)} parameter tensors (e.g. {', '.join(list(named)[:3])})",
        )
    return chosen


def _say_left_out(model: nn.Module, chosen: Mapping[str, nn.Parameter], params: str, say: Say) -> None:
    left = [p for n, p in model.named_parameters() if n not in chosen]
    if left:
        why = "frozen (requires_grad=False)" if params == "trainable" else f"not matched by params {params!r}"
        say(
            f"{len(left)} parameter tensors ({sum(p.numel() for p in left):,} values) are {why} and left out: "
            f"the landscape is over the other {sum(p.numel() for p in chosen.values()):,}"
            + (" (params 'all' includes them)" if params == "trainable" else "")
        )


def accepted_keys(model: nn.Module, x: Inputs, say: Say) -> frozenset[str] | None:
    """The keys of dict inputs `x` that the model's forward has a parameter for, when it lacks one for
    others (said once); None when it takes them all (or any keyword: **kwargs)."""
    if not isinstance(x, Mapping):
        return None
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):  # a builtin or C++ forward: no signature to read
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    unknown = [k for k in x if k not in names]
    if not unknown or len(unknown) == len(x):  # all taken, or none: the model's own error says more
        return None
    names_them = "--input-key or input_keys passes named ones"
    say(f"the model's forward takes no {', '.join(map(repr, unknown))}: left out of its inputs ({names_them})")
    return frozenset(k for k in x if k in names)


def batch_statistics(model: nn.Module) -> list[str]:
    """The BatchNorm modules that normalize by the batch's own statistics in eval mode (no running
    statistics kept): with them a sample's output, and the loss, depend on the batch it is in."""
    return [
        name or type(module).__name__
        for name, module in model.named_modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is None
    ]


def memory_provenance(problem: Problem) -> dict[str, Any]:
    """Provenance of a problem built from objects in memory: the model's class, sha256 of the weights and data."""
    model = type(problem.model)
    x, y = problem.head(problem.n)  # every row in memory; the first rows of streamed data
    return {
        "model": f"{model.__module__}.{model.__qualname__}",
        "checkpoint": f"{model.__qualname__} (in memory)",  # what figure titles show
        "checkpoint_sha256": _sha256([problem.theta, *problem.buffers.values()]),
        "data": "(in memory)" if problem.in_memory else f"(streamed; data_sha256 of the first {rows(x)} samples)",
        "data_sha256": _sha256([*(x.values() if isinstance(x, dict) else [x]), y]),
        "samples": problem.n,
        "loss": problem.loss_name,
        "sample": "",
        "device": str(problem.device),
        "dtype": str(problem.dtype).removeprefix("torch."),
        "seed": 0,
        "torch_version": str(torch.__version__),
        "parameters": problem.layout.size,
    }


def _sha256(tensors: list[torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for t in tensors:
        digest.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def load_weights(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Load `state` into `model`; a mismatch is one line naming the first problem."""
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:  # torch lists every problem over several lines: its first one will do
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise LandscapeError(
            f"the model cannot take these weights: {lines[1] if len(lines) > 1 else lines[0]}"
        ) from exc


def make_problem(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    x: Inputs,
    y: torch.Tensor,
    loss_fn: LossFn,
    *,
    device: torch.device,
    dtype: torch.dtype,
    batch_size: int | None = None,
    classification: bool | None = None,
    data_name: str = "data",
    params: str = "trainable",
    say: Say = lambda msg: None,
) -> Problem:
    """Load `state` into `model`, then the Problem of the model on (x, y)."""
    load_weights(model, state)
    return Problem(
        model,
        (x, y),
        loss_fn,
        device=device,
        dtype=dtype,
        batch_size=batch_size,
        classification=classification,
        params=params,
        where=data_name,
        say=say,
    )


def check_fits(problem: Problem, data_name: str, say: Callable[[str], None] = lambda msg: None) -> None:
    """Run the model and loss on two samples; turn a failure into a one-line error."""
    xb, yb = problem.head(2)
    xb = map_inputs(torch.clone, xb)  # the data's own rows are not to be changed by a model that writes into them
    leaves = list(xb.values()) if isinstance(xb, dict) else [xb]
    versions = [t._version for t in leaves]
    try:
        with torch.no_grad():
            out = problem.forward(xb)
    except Exception as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise LandscapeError(
            f"{data_name}: the model cannot take {describe(problem.head(problem.n)[0])}: {msg}"
        ) from exc
    if [t._version for t in leaves] != versions:  # an in-place op on the input: `x /= 255` in forward
        problem.writes_inputs = True
        say("the model writes into its inputs in place: each batch is copied before it runs")
    kind = output_kind(out)
    if kind is not None and is_builtin(problem.loss_fn):
        say(f"the model returns {kind}")
    try:
        check_class_targets(problem.loss_fn, out, yb, problem.head(problem.n)[1])
        if not problem.in_memory:
            problem._classes = (out, yb)
    except LandscapeError as exc:
        raise LandscapeError(f"{data_name}: {exc}") from exc
    try:
        loss = problem.loss_fn(out, yb)
        if problem.classification:
            correct_predictions(problem.loss_fn, out, yb)
    except LandscapeError:
        raise
    except Exception as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise LandscapeError(
            f"{data_name}: the loss cannot compare model outputs ({describe_output(out)}) with targets y {tuple(yb.shape)}: {msg}"
        ) from exc
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise ArgumentError("loss", None, "the loss function must return a scalar (the mean over the batch)")
    with torch.no_grad():  # a random forward (noise, F.dropout(training=True)) makes every number a draw
        again = problem.loss_fn(problem.forward(problem.head(2)[0]), yb)  # a copy where the model writes into it
    tol = {torch.float64: 1e-8, torch.float32: 1e-4}.get(problem.dtype, 3e-2)
    if torch.isfinite(loss) and not torch.allclose(again.double(), loss.double(), rtol=tol, atol=0):
        differ = float(abs(again.double() - loss.double()) / abs(loss.double()).clamp_min(1e-300))
        raise LandscapeError(
            f"{data_name}: the loss is not deterministic: two forward passes at the same weights differ by {differ:.1e} "
            "(relative); remove random noise or dropout that stays on in eval mode from the model"
        )


def resolve_device(name: str | torch.device) -> torch.device:
    """auto -> cuda when available, else cpu; a named device is checked once here."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ArgumentError("device", name, "CUDA is not available on this machine")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise ArgumentError("device", name, str(exc)) from exc


DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}


def resolve_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        if name not in DTYPES.values():
            raise ArgumentError("dtype", str(name), f"expected one of {', '.join(DTYPES)}")
        return name
    if name not in DTYPES:
        raise ArgumentError("dtype", name, f"expected one of {', '.join(DTYPES)}")
    return DTYPES[name]
