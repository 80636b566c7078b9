"""What fixes the numbers of each command: one frozen dataclass per command, stored as the results
file's `settings` JSON. A resumed run must match it exactly; it is the run's identity.

`Source` is what every command shares: the model, the weights and data (by sha256), the loss, the
dtype, and how the files were read when that is not the default.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Source:
    """The problem a run is over, as its provenance names it."""

    model: str
    checkpoint_sha256: str
    data_sha256: str
    data: str
    samples: int
    loss: str
    dtype: str
    load_options: str | None = None  # JSON of the loading options that are not the defaults
    code_sha256: str | None = None  # JSON {"--model net.py": sha256, ...} of the user's source files

    @classmethod
    def of(cls, provenance: Mapping[str, Any]) -> Source:
        return cls(
            model=str(provenance["model"]),
            checkpoint_sha256=str(provenance["checkpoint_sha256"]),
            data_sha256=str(provenance["data_sha256"]),
            data="" if provenance["data_sha256"] else str(provenance["data"]),
            samples=int(provenance["samples"]),
            loss=str(provenance["loss"]),
            dtype=str(provenance["dtype"]),
            load_options=provenance.get("load_options"),
            code_sha256=provenance.get("code_sha256"),
        )

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("load_options", "code_sha256"):  # absent unless used: older files' settings stay equal
            if out[key] is None:
                del out[key]
        return out


@dataclass(frozen=True)
class CommandSettings:
    """Base of the settings of one command: the source and the command's own choices (`as_dict`)."""

    source: Source

    def as_dict(self) -> dict[str, Any]:
        """The `settings` JSON object: the source's keys beside the command's own."""
        own = {k: v for k, v in asdict(self).items() if k != "source"}
        return {**self.source.as_dict(), **own}

    def as_json(self) -> str:
        return json.dumps(self.as_dict(), sort_keys=True, default=str)


@dataclass(frozen=True)
class SweepSettings(CommandSettings):
    """A loss surface: the grid, how the random axes were drawn, the other end of a line (`to_sha256`)."""

    coords: dict[str, list[float]] = field(default_factory=dict)
    norm: str = "filter"
    ignore: str = "biasbn"
    seed: int = 0
    to_sha256: str = ""
    axes: str = "random"  # random, hessian, or sweep (the directions of an earlier sweep file)
    axes_from_sha256: str = ""
    same_dir: bool = False  # y is x's Gaussian draw (Li et al.'s --same_dir)
    states: bool = False  # the directions move the BatchNorm statistics too (Li et al.'s --dir_type states)

    def as_dict(self) -> dict[str, Any]:
        out = super().as_dict()
        if self.axes == "random" and not self.axes_from_sha256:  # the keys of files made before Hessian axes
            del out["axes"], out["axes_from_sha256"]
        if not self.same_dir:  # and before --same-dir
            del out["same_dir"]
        if not self.states:  # and before --dir-type states
            del out["states"]
        return out


@dataclass(frozen=True)
class RoughnessSettings(CommandSettings):
    directions: int = 100
    span: float = 0.1
    steps: int = 20
    norm: str = "filter"
    ignore: str = "biasbn"
    seed: int = 0


@dataclass(frozen=True)
class SharpnessSettings(CommandSettings):
    rho: float = 0.05
    epsilon: float = 1e-3
    ascent_steps: int = 20
    seed: int = 0
    curvature: str = ""  # where lambda_max and the trace came from: "", "computed", or a file


@dataclass(frozen=True)
class PathSettings(CommandSettings):
    checkpoints_sha256: tuple[str, ...] = ()
    curve: str = "linear"
    points: int = 61
    bn_recalibrate: bool = False
    align: bool = False  # later checkpoints permuted to match the one before (weight matching)
    train: dict[str, Any] = field(default_factory=dict)  # a trained bend: steps, lr, momentum, batch size, seed

    def as_dict(self) -> dict[str, Any]:
        out = super().as_dict()
        for key in ("align", "train"):  # the keys of files made before --align and --train
            if not out[key]:
                del out[key]
        return out


@dataclass(frozen=True)
class PlaneSettings(CommandSettings):
    """`plane` (three checkpoints) and `trajectory` (a PCA plane; `center`) grids."""

    checkpoints_sha256: tuple[str, ...] = ()
    coords: dict[str, list[float]] = field(default_factory=dict)
    center: bool | None = None  # trajectory only


@dataclass(frozen=True)
class TrackSettings(CommandSettings):
    checkpoints_sha256: tuple[str, ...] = ()
    lr: float | None = None
    steps: tuple[float, ...] = ()
    trace: bool = False
    tol: float = 1e-3
    seed: int = 0
    subspace: int = 0  # k of the top-k eigenspace the gradient is measured in (Gur-Ari et al.); 0: not

    def as_dict(self) -> dict[str, Any]:
        out = super().as_dict()
        if not self.subspace:  # the keys of files made before --subspace
            del out["subspace"]
        return out
