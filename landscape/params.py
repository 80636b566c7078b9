"""Flat parameter vectors and the layout that maps them back to named tensors."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Layout:
    """Names, shapes and offsets of the tensors packed into one flat vector."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    def __repr__(self) -> str:  # a notebook shows it inside every result: not thousands of names and shapes
        return f"Layout({len(self.names)} tensors, {self.size:,} parameters)"

    @property
    def numels(self) -> tuple[int, ...]:
        return tuple(math.prod(s) for s in self.shapes)

    @property
    def offsets(self) -> tuple[int, ...]:
        out, acc = [], 0
        for n in self.numels:
            out.append(acc)
            acc += n
        return tuple(out)

    @property
    def size(self) -> int:
        return sum(self.numels)

    @classmethod
    def of(cls, tensors: Mapping[str, torch.Tensor]) -> Layout:
        return cls(tuple(tensors), tuple(tuple(t.shape) for t in tensors.values()))

    def flatten(self, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Concatenate the named tensors (in layout order) into one vector."""
        import torch  # here, not at the top: the file commands read layouts without torch

        return torch.cat([tensors[n].reshape(-1) for n in self.names])

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views of `flat` (last dim P) shaped like the named tensors; leading dims are kept.

        One `split`, not a slice per tensor: differentiated, a split puts the pieces' gradients
        together in one P-sized tensor, where each slice made a zero-filled P-sized gradient of its own
        (148 of them for GPT-2: most of a Hessian-vector product's time at 124M parameters)."""
        import torch

        lead = flat.shape[:-1]
        pieces = torch.split(flat, list(self.numels), dim=-1)
        return {name: piece.reshape(*lead, *shape) for name, shape, piece in zip(self.names, self.shapes, pieces)}

    def block(self, name: str) -> slice:
        """The slice of the flat vector that holds tensor `name`."""
        i = self.names.index(name)
        return slice(self.offsets[i], self.offsets[i] + self.numels[i])
