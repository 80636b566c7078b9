"""The axes of a sweep: flat directions in weight space with what each one is (for the results file).

Random Gaussian directions normalized per filter, layer or model (Li et al. 2018), the top
eigenvectors of the Hessian (unit vectors), stored eigenvectors of an earlier curvature run, and
the straight line to another checkpoint. Plain functions on tensors; no I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from landscape.directions import cosine, line_to, per_direction, random_directions
from landscape.errors import ArgumentError
from landscape.params import Layout
from landscape.problem import Problem

AXIS_NAMES = ("x", "y")


@dataclass(frozen=True)
class Axes:
    """Directions [k, P] (on the CPU; float64, or as they are stored and evaluated: `stored_dtype`) over a problem's
    parameter layout, and one attribute dict per axis."""

    directions: torch.Tensor
    attrs: tuple[Mapping[str, Any], ...]
    layout: Layout
    settings: Mapping[str, Any] = field(
        default_factory=dict
    )  # how they were made: norm, ignore, seed, axes, to_sha256, ...

    def __post_init__(self) -> None:
        if self.directions.ndim != 2 or self.directions.shape[0] not in (1, 2):
            raise ArgumentError("axes", tuple(self.directions.shape), "expected 1 or 2 directions, shape [k, P]")
        if self.directions.shape[1] != self.layout.size:
            raise ArgumentError(
                "axes", self.directions.shape[1], f"directions of {self.layout.size} parameters expected"
            )

    @property
    def names(self) -> tuple[str, ...]:
        return AXIS_NAMES[: self.directions.shape[0]]

    def __len__(self) -> int:
        return int(self.directions.shape[0])

    def __repr__(self) -> str:
        labels = "; ".join(f"{n}: {a.get('label', a.get('kind', '?'))}" for n, a in zip(self.names, self.attrs))
        return f"Axes({labels}; {self.layout.size:,} parameters)"


def axes_settings(
    kind: str = "random",
    *,
    norm: str | Sequence[str] = "filter",
    ignore: str | Sequence[str] = "biasbn",
    seed: int = 0,
    to_sha256: str = "",
    axes_from_sha256: str = "",
    same_dir: bool = False,
    states: bool = False,
) -> dict[str, Any]:
    """What fixes a sweep's axes (part of its settings): random ones by their normalization and seed,
    eigenvector ones (unit vectors) by their seed or the file they came from, the directions of an
    earlier sweep (kind "sweep") by that file and how they were drawn, and the line's other end."""
    if kind == "hessian":
        norm, ignore = "unit", "none"
    return {
        "norm": _one_or_each(norm),
        "ignore": _one_or_each(ignore),
        "seed": seed,
        "axes": kind,
        "to_sha256": to_sha256,
        "axes_from_sha256": axes_from_sha256,
        **({"same_dir": True} if same_dir else {}),
        **({"states": True} if states else {}),
    }


def _one_or_each(value: str | Sequence[str]) -> str:
    """A setting as the results file keeps it: 'filter', or one per random axis, 'filter/layer'."""
    if isinstance(value, str):
        return value
    return value[0] if len(set(value)) == 1 else "/".join(value)


AXES_SETTING_KEYS = tuple(
    axes_settings(same_dir=True, states=True)
)  # every key a sweep's settings may hold about its axes


def tensor_sha256(t: torch.Tensor) -> str:
    """sha256 of a tensor's values (the identity of a point in weight space given in memory)."""
    return hashlib.sha256(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()).hexdigest()


def _with_cosines(
    directions: torch.Tensor, attrs: Sequence[Mapping[str, Any]], layout: Layout, settings: Mapping[str, Any]
) -> Axes:
    out = [dict(a) for a in attrs]
    if len(out) == 2:
        out[0]["cosine_with_y"] = out[1]["cosine_with_x"] = cosine(directions[0], directions[1])
    return Axes(directions, tuple(out), layout, dict(settings))


STATE_MOVES = {
    "none": "states: floating buffers (BatchNorm statistics) scaled by 1 + a",
    "biasbn": "states: floating buffers of one dimension (BatchNorm statistics) fixed (ignore biasbn)",
}


def _random_attrs(
    norms: Sequence[str], ignores: Sequence[str], seed: int, same_dir: bool = False
) -> list[dict[str, Any]]:
    def normed(norm: str) -> str:
        return "filter-normalized" if norm == "filter" else f"{norm}-normalized" if norm != "none" else "unnormalized"

    return [
        {
            "kind": "random",
            "normalization": norm,
            "ignore": ignore,
            "seed": seed,
            "source": f"gaussian direction {1 if same_dir else i + 1} of seed {seed}",
            "label": f"{normed(norm)} random direction {1 if same_dir else i + 1}",
        }
        for i, (norm, ignore) in enumerate(zip(norms, ignores))
    ]


def random_axes(
    problem: Problem,
    dims: int = 2,
    *,
    norm: str | Sequence[str] = "filter",
    ignore: str | Sequence[str] = "biasbn",
    seed: int = 0,
    same_dir: bool = False,
    states: bool = False,
    to: torch.Tensor | None = None,
    to_label: str = "the other checkpoint",
    to_sha256: str | None = None,
) -> Axes:
    """`dims` normalized Gaussian directions (Li et al. 2018); with `to` (another point's flat
    parameters), x is the straight line from the problem's weights (0) to it (1) and y, if any, random.
    `norm` and `ignore` are one for every random axis or one each (x, y); `same_dir` makes y the same
    draw as x (normalized by its own settings: equal to x when they are x's). `states` (Li et al.'s
    `--dir_type states`): the directions cover the floating buffers (BatchNorm running statistics) too,
    by Li et al.'s rule for tensors of one dimension: zero with ignore "biasbn", the buffer itself with
    "none", so an axis at coordinate a scales them by 1 + a (`Problem.with_state_directions`).

    >>> import torch, landscape as ls
    >>> problem = ls.Problem(torch.nn.Linear(4, 3), (torch.randn(8, 4), torch.randint(0, 3, (8,))))
    >>> ls.random_axes(problem, 2, seed=0).directions.shape
    torch.Size([2, 15])
    """
    if dims not in (1, 2):
        raise ArgumentError("dims", dims, "a sweep has 1 or 2 axes")
    randoms = dims - (1 if to is not None else 0)
    if same_dir and randoms != 2:
        raise ArgumentError("same_dir", None, "needs two random axes (x and y; not a line, nor --to)")
    if states and to is not None:
        raise ArgumentError("states", True, "with `to` the buffers already follow the line to the other checkpoint")
    norms, ignores = per_direction(norm, randoms, "norm"), per_direction(ignore, randoms, "ignore")
    dtype = stored_dtype(problem)  # made in float64, held as they will be evaluated (no float64 copy of P)
    dirs = random_directions(
        randoms, problem.theta, problem.layout, seed=seed, norm=norms, ignore=ignores, dtype=dtype, same=same_dir
    )
    settings = axes_settings("random", norm=norms, ignore=ignores, seed=seed, same_dir=same_dir, states=states)
    attrs = _random_attrs(norms, ignores, seed, same_dir)
    if states:
        attrs = [{**a, "buffers": STATE_MOVES[a["ignore"]]} for a in attrs]
    return _prepend_line(problem, dirs, attrs, to, to_label, to_sha256, seed, settings)


def stored_dtype(problem: Problem, store: torch.dtype | None = None) -> torch.dtype:
    """The dtype a sweep's directions are stored and evaluated in: `store` when given, else float64 for a
    float64 problem and float32 otherwise."""
    if store is not None:
        return store
    return torch.float64 if problem.dtype == torch.float64 else torch.float32


def eigenvector_attrs(
    eigenvalues: np.ndarray, residuals: np.ndarray, seed: int, source: str, title: str, which: str | None = None
) -> list[dict[str, Any]]:
    """Per-axis attributes of eigenvector axes for the results file."""
    return [
        {
            "kind": "hessian",
            "normalization": "unit",
            "ignore": "none",
            "seed": seed,
            "source": source,
            "label": f"{title} eigenvector {i + 1} (λ={float(lam):.4g})",
            "eigenvalue": float(lam),
            "residual": float(res),
            **({"which": which} if which is not None else {}),
        }
        for i, (lam, res) in enumerate(zip(eigenvalues, residuals))
    ]


def hessian_axes(
    problem: Problem,
    dims: int = 2,
    *,
    seed: int = 0,
    tol: float = 1e-3,
    curvature: str = "hessian",
    to: torch.Tensor | None = None,
    to_label: str = "the other checkpoint",
    to_sha256: str | None = None,
) -> Axes:
    """The top eigenvectors of the Hessian (or GGN, Fisher) by Lanczos as axes: unit vectors, so a
    coordinate is a distance in weight space (loss ~ L0 + lambda a^2 / 2 along axis a). With `to`,
    x is the line to that point and y the top eigenvector."""
    from landscape.curvature.analysis import top_eigenvectors
    from landscape.names import CURVATURE_TITLES

    count = dims - (1 if to is not None else 0)
    eig = top_eigenvectors(problem, count, seed=seed, tol=tol, curvature=curvature)
    assert eig.eigenvectors is not None
    attrs = eigenvector_attrs(
        eig.eigenvalues,
        eig.residuals,
        seed,
        f"lanczos on the {curvature}, tol {tol:g}",
        CURVATURE_TITLES.get(curvature, curvature),
    )
    settings = axes_settings("hessian", seed=seed)
    return _prepend_line(problem, eig.eigenvectors.detach().to("cpu"), attrs, to, to_label, to_sha256, seed, settings)


def stored_axes(
    problem: Problem,
    vectors: np.ndarray,
    eigenvalues: np.ndarray,
    residuals: np.ndarray,
    *,
    dims: int = 2,
    layout: Layout | None = None,
    source: str = "",
    title: str = "Hessian",
    which: str = "largest",
    seed: int = 0,
    to: torch.Tensor | None = None,
    to_label: str = "the other checkpoint",
    to_sha256: str | None = None,
    source_sha256: str = "",
) -> Axes:
    """Axes from eigenvectors computed before (an earlier curvature run): the first ones, normalized.
    `layout` is theirs, checked against the problem's (same names and shapes)."""
    count = dims - (1 if to is not None else 0)
    _check_stored(problem, layout, vectors.shape[0], count, source, "eigenvector", f" (compute top_k={count})")
    dirs = torch.empty(count, vectors.shape[1], dtype=stored_dtype(problem))
    for i, row in enumerate(dirs):  # normalized in float64 one at a time
        v = torch.from_numpy(np.asarray(vectors[i], dtype=np.float64))
        row.copy_(v / v.norm())
    attrs = eigenvector_attrs(eigenvalues[:count], residuals[:count], seed, source, title, which)
    settings = axes_settings("hessian", seed=seed, axes_from_sha256=source_sha256 or tensor_sha256(dirs))
    return _prepend_line(problem, dirs, attrs, to, to_label, to_sha256, seed, settings)


def reused_axes(
    problem: Problem,
    earlier: Axes,
    dims: int = 2,
    *,
    source: str = "",
    source_sha256: str = "",
    to: torch.Tensor | None = None,
    to_label: str = "the other checkpoint",
    to_sha256: str | None = None,
) -> Axes:
    """The directions of an earlier sweep as they are, not drawn or normalized again (Li et al.'s
    `--dir_file`): the same plane around another checkpoint, on other data, or after fine-tuning.
    Their layout must be the problem's (same names and shapes)."""
    count = dims - (1 if to is not None else 0)
    _check_stored(problem, earlier.layout, len(earlier), count, source, "direction")
    if earlier.settings.get("states") and to is not None:
        raise ArgumentError(
            "to",
            to_label,
            f"{source or 'the earlier sweep'} moves the BatchNorm statistics with its directions "
            "(states); along a line to another checkpoint they follow that line instead",
        )
    dirs = earlier.directions[:count].to(stored_dtype(problem))
    attrs = [{**a, "source": source} for a in earlier.attrs[:count]]
    was = earlier.settings
    seed = int(was.get("seed", 0) or 0)
    settings = axes_settings(
        "sweep", norm=str(was.get("norm", "filter")), ignore=str(was.get("ignore", "biasbn")), seed=seed,
        axes_from_sha256=source_sha256 or tensor_sha256(dirs), states=bool(was.get("states")),
    )  # fmt: skip
    return _prepend_line(problem, dirs, attrs, to, to_label, to_sha256, seed, settings)


def _check_stored(
    problem: Problem, layout: Layout | None, held: int, count: int, source: str, noun: str, hint: str = ""
) -> None:
    """Vectors an earlier file holds fit the problem: over the same parameters (names and shapes; an
    unknown `layout` is not checked) and at least `count` of them."""
    if layout is not None and (layout.names != problem.layout.names or layout.shapes != problem.layout.shapes):
        raise ArgumentError(
            "axes_from", source or None, f"its {noun}s belong to another model (parameter names or shapes differ)"
        )
    if held < count:
        raise ArgumentError("axes_from", source or None, f"holds {held} {noun}(s), {count} needed{hint}")


def _prepend_line(
    problem: Problem,
    dirs: torch.Tensor,
    attrs: list[dict[str, Any]],
    to: torch.Tensor | None,
    to_label: str,
    to_sha256: str | None,
    seed: int,
    settings: Mapping[str, Any],
) -> Axes:
    """`dirs` as axes; with `to`, the line to it first, and its identity (`to_sha256`, else a hash of
    its values) in the settings."""
    if to is not None:
        settings = {**settings, "to_sha256": to_sha256 or tensor_sha256(to)}
        line = line_to(problem.theta, to.to(problem.theta.device, problem.theta.dtype)).detach().to("cpu")
        dirs = torch.cat([line[None].to(dirs.dtype), dirs])
        attrs.insert(
            0,
            {"kind": "interpolation", "normalization": "none", "ignore": "none", "seed": seed, "source": to_label,
             "label": f"toward {to_label}"},
        )  # fmt: skip
    return _with_cosines(dirs, attrs, problem.layout, settings)
