"""Data in memory to inputs x (a tensor, or a dict of tensors for keyword inputs) and targets y.

From an (x, y) pair, a dict of columns, a Dataset or a DataLoader (of pairs or of dicts); dict
records are split into inputs and targets by `Columns`. `where` names the source in messages.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from landscape.errors import ArgumentError, LandscapeError
from landscape.model_io import Inputs, describe, take

Pair = tuple[Any, Any]  # (inputs, targets) as given: tensors, arrays, or a dict of them for the inputs
Columns_ = dict[str, Any]  # named columns as given

TARGET_KEYS = ("labels", "label", "y", "targets", "target")  # looked for, in this order, when no target key is named


@dataclass(frozen=True)
class Columns:
    """How to split dict records ({"input_ids": ..., "labels": ...}) into the model's inputs and the targets."""

    input_keys: tuple[str, ...] | None = None  # None: every key but the target's
    target_key: str | None = None  # None: the first of TARGET_KEYS present
    targets_from_inputs: bool = False  # no target key: the targets are the inputs' token ids (next-token loss)


def split(obj: Pair | Columns_, where: str, columns: Columns) -> Pair:
    """(x, y) from a pair, or from named columns by `columns` (x and y when nothing else is named)."""
    if isinstance(obj, tuple):
        return obj
    cols = {k: v for k, v in obj.items() if isinstance(v, (torch.Tensor, np.ndarray))}
    if columns.input_keys is None and columns.target_key is None and {"x", "y"} <= set(cols):
        return cols["x"], cols["y"]
    target = columns.target_key or next((k for k in TARGET_KEYS if k in cols), None)
    if columns.target_key is not None and columns.target_key not in cols:
        raise ArgumentError("target_key", columns.target_key, f"{where} has no such key (it has: {', '.join(cols)})")
    inputs = list(columns.input_keys) if columns.input_keys else [k for k in cols if k != target]
    unknown = [k for k in inputs if k not in cols]
    if unknown:
        raise ArgumentError("input_keys", unknown[0], f"{where} has no such key (it has: {', '.join(cols)})")
    if not inputs:
        raise LandscapeError(
            f"{where}: no inputs (found only {', '.join(cols) or 'nothing'}); expected 'x' and 'y' or named columns"
        )
    x = cols[inputs[0]] if len(inputs) == 1 else {k: cols[k] for k in inputs}
    if target is not None:
        return x, cols[target]
    if columns.targets_from_inputs:  # a causal LM predicts its own tokens
        return x, cols["input_ids"] if "input_ids" in cols else cols[inputs[0]]
    raise ArgumentError(
        "target_key",
        None,
        f"{where}: no targets among {', '.join(cols)}; expected 'x' and 'y', name the targets' key, "
        "or use the next-token loss (its targets are the input_ids)",
    )


def collect(obj: Any, where: str) -> Pair | Columns_:
    """Turn a (x, y) pair, a dict of columns, a Dataset or a DataLoader into tensors."""
    if isinstance(obj, (tuple, list)) and len(obj) == 2 and isinstance(obj[1], (torch.Tensor, np.ndarray)):
        return obj[0], obj[1]  # (x, y) with x a tensor or a dict of tensors
    if isinstance(obj, dict):
        return obj
    if isinstance(obj, torch.utils.data.DataLoader):
        return stack_records([record(b, where, "batch") for b in obj], where, torch.cat)
    if isinstance(obj, torch.utils.data.IterableDataset):
        return stack_records([record(item, where, "item") for item in obj], where, torch.stack)
    if isinstance(obj, torch.utils.data.Dataset):
        return fill_rows(obj, range(len(obj)), where)  # type: ignore[arg-type]
    raise LandscapeError(f"{where}: returned {type(obj).__name__}; expected (x, y) tensors, a Dataset or a DataLoader")


def record(item: Any, where: str, what: str) -> dict[str, torch.Tensor]:
    """One Dataset item or DataLoader batch as named tensors ("0", "1" for a pair)."""
    fields = (
        item
        if isinstance(item, dict)
        else {str(i): v for i, v in enumerate(item[:2])}
        if isinstance(item, (tuple, list))
        else None
    )
    if fields is None:
        raise LandscapeError(
            f"{where}: each {what} is a {type(item).__name__}; expected an (x, y) pair or a dict of tensors"
        )
    out = {}
    for k, v in fields.items():
        if type(v).__module__.startswith("PIL"):
            raise LandscapeError(
                f"{where}: the Dataset yields PIL images; give it a transform that makes tensors "
                "(e.g. transform=torchvision.transforms.ToTensor())"
            )
        if isinstance(v, str) or (isinstance(v, (list, tuple)) and v and isinstance(v[0], str)):
            raise LandscapeError(f"{where}: the {what}'s {k!r} is text; tokenize it into tensors first")
        try:
            out[k] = torch.as_tensor(v)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise LandscapeError(f"{where}: the {what}'s {k!r} is a {type(v).__name__}, not a tensor ({exc})") from exc
    return out


def fill_rows(dataset: Any, indices: Sequence[int], where: str) -> Pair | Columns_:
    """The items `indices` of a map-style Dataset as tensors, written into tensors allocated once: a list
    of items stacked held the data twice (5.2 GB at the peak for 2.46 GB of images)."""
    if not len(indices):
        raise LandscapeError(f"{where}: the data set is empty")
    first = record(dataset[indices[0]], where, "item")
    cols = {k: t.new_empty((len(indices), *t.shape)) for k, t in first.items()}
    for row, i in enumerate(indices):
        item = first if row == 0 else record(dataset[i], where, "item")
        for k, col in cols.items():
            if k not in item or item[k].shape != col.shape[1:]:
                got = f"shape {tuple(item[k].shape)}" if k in item else "no such key"
                raise LandscapeError(
                    f"{where}: {k!r} differs in shape between items (pad every sequence to one length): item {i} has "
                    f"{got}, item {indices[0]} {tuple(col.shape[1:])}"
                )
            col[row] = item[k]
    return (cols["0"], cols["1"]) if set(cols) == {"0", "1"} else cols


def stack_records(
    records: list[dict[str, torch.Tensor]], where: str, join: Callable[[list[torch.Tensor]], torch.Tensor]
) -> Pair | Columns_:
    if not records:
        raise LandscapeError(f"{where}: the data set is empty")
    cols = {}
    for k in records[0]:
        try:
            cols[k] = join([r[k] for r in records])
        except (RuntimeError, KeyError) as exc:
            raise LandscapeError(
                f"{where}: {k!r} differs in shape between items or batches (pad every sequence to one length): "
                f"{str(exc).splitlines()[0]}"
            ) from exc
    return (cols["0"], cols["1"]) if set(cols) == {"0", "1"} else cols


def check_pair(pair: Pair, where: str) -> tuple[Inputs, torch.Tensor]:
    if isinstance(pair[0], (tuple, list)) and any(isinstance(t, torch.Tensor) for t in pair[0]):
        raise LandscapeError(  # torch.as_tensor said "only one element tensors can be converted to Python scalars"
            f"{where}: the inputs are {len(pair[0])} tensors in a {type(pair[0]).__name__}; give them as a dict of "
            "the model's keyword arguments, e.g. {'x1': x1, 'x2': x2, 'y': y} (the model is called as model(**inputs))"
        )
    x = {k: torch.as_tensor(v) for k, v in pair[0].items()} if isinstance(pair[0], dict) else torch.as_tensor(pair[0])
    y = torch.as_tensor(pair[1])
    leaves = list(x.values()) if isinstance(x, dict) else [x]
    if y.ndim == 0 or any(t.ndim == 0 or t.shape[0] != y.shape[0] for t in leaves):
        raise LandscapeError(
            f"{where}: inputs and targets must have the same first dimension (got {describe(x)} and y {tuple(y.shape)})"
        )
    if y.shape[0] == 0:
        raise LandscapeError(f"{where}: the data set is empty")
    if not torch.is_floating_point(y) and not torch.is_complex(y) and y.dtype not in (torch.int64, torch.bool):
        y = y.long()  # class indices as arrays ship them (uint8, int32): the losses index with int64
    return x, y


def subset(x: Inputs, y: torch.Tensor, samples: int | None, seed: int) -> tuple[Inputs, torch.Tensor]:
    """A fixed, seeded subset of `samples` rows (all rows when None or larger than the set)."""
    if samples is None or samples >= y.shape[0]:
        return x, y
    if samples <= 0:
        raise ArgumentError("samples", samples, "must be positive")
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(y.shape[0], generator=gen)[:samples].sort().values
    return take(x, idx), y[idx]


def collect_data(
    data: Any, targets: Any = None, columns: Columns = Columns(), where: str = "data"
) -> tuple[Inputs, torch.Tensor]:
    """(x, y) from an (x, y) pair, a dict of columns, a Dataset or a DataLoader; or inputs `data`
    (a tensor or a dict of tensors) with `targets` beside them."""
    if targets is not None:
        data = (data, targets)
    return check_pair(split(collect(data, where), where, columns), where)
