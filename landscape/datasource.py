"""A Dataset or DataLoader as the problem's data: collected into tensors once, or streamed.

`place_data` decides by size. Data whose tensors fit a quarter of the memory they would be held in
are collected once: a pass over tensors in memory costs nothing to read, and the fastest strategies
cache products over the whole data set. Larger data are streamed: every pass reads them again, batch
by batch, so memory holds one batch at a time (a 200k-image memory-mapped file evaluates without
ever being stacked). A Dataset is read through a sequential DataLoader of the problem's batch size;
a DataLoader is read as given, each of its batches split to at most that size.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset

from landscape.data import (
    Columns,
    Pair,
    check_pair,
    collect,
    collect_data,
    fill_rows,
    record,
    split,
    stack_records,
    subset,
)
from landscape.errors import ArgumentError, LandscapeError
from landscape.model_io import take

HEAD_ROWS = 64  # rows read to size the data and check that the model takes them
IN_MEMORY_SHARE = 0.25  # collected when the tensors fit this share of the memory they would be held in
STREAM_BATCH_BYTES = 256 << 20  # a streamed batch's default size in bytes (items of 600 KB: 436 rows)
FALLBACK_MEMORY = 4 << 30  # what is assumed available where the system does not say

Say = Callable[[str], None]


@dataclass(frozen=True)
class Placement:
    """Where the data went and why, as the output says it."""

    streamed: bool
    asked: bool  # the caller chose; otherwise the size did
    rows: int
    bytes: int  # the tensors' size as the problem holds them (floats in its dtype)
    available: int  # the memory they would be held in, free now

    def describe(self) -> str:
        where = "streamed batch by batch" if self.streamed else "held in memory"
        if self.asked:
            why = "as asked"
        elif self.streamed:
            why = f"over a quarter of the {_gb(self.available)} available"
        else:
            why = "they fit"
        return f"data: {self.rows:,} samples {where} ({_gb(self.bytes)} as tensors: {why})"


class DataSource:
    """A map-style Dataset (optionally a view of some of its indices) or a DataLoader, with the
    `Columns` that split its records into inputs and targets; reads batches, never all of it."""

    def __init__(self, obj: Dataset | DataLoader, columns: Columns, where: str, indices: Sequence[int] | None = None):
        self.obj, self.columns, self.where, self.indices = obj, columns, where, indices
        self.n = self._count()
        if self.n == 0:
            raise LandscapeError(f"{where}: the data set is empty")
        self._head: Pair | None = None

    def _count(self) -> int:
        if self.indices is not None:
            return len(self.indices)
        if isinstance(self.obj, DataLoader):
            loader = self.obj
            if loader.batch_size is not None and loader.drop_last:
                return len(loader) * loader.batch_size
            if loader.batch_sampler is not None:
                return sum(len(b) for b in loader.batch_sampler)  # indices only: no data is read
            return len(loader)  # batch_size None: every item is one sample
        return len(self.obj)  # type: ignore[arg-type]

    def _view(self) -> Dataset:
        assert not isinstance(self.obj, DataLoader)
        return self.obj if self.indices is None else Subset(self.obj, self.indices)

    def raw_batches(self, batch_size: int) -> Iterator[Pair]:
        """(x, y) on the host, batch by batch in the data's order, each at most `batch_size` rows."""
        if isinstance(self.obj, DataLoader):
            for batch in self.obj:
                x, y = self._pair(stack_records([record(batch, self.where, "batch")], self.where, torch.cat))
                for start in range(0, y.shape[0], batch_size):
                    yield take(x, slice(start, start + batch_size)), y[start : start + batch_size]
            return
        collate = functools.partial(_collate, where=self.where)
        yield from (self._pair(b) for b in DataLoader(self._view(), batch_size=batch_size, collate_fn=collate))

    def _pair(self, cols: Any) -> Pair:
        return check_pair(split(cols, self.where, self.columns), self.where)

    def head(self) -> Pair:
        """The first rows (up to HEAD_ROWS), read once: the data's shapes and a sample the model is checked on."""
        if self._head is None:
            self._head = next(self.raw_batches(HEAD_ROWS))
        return self._head

    def row_bytes(self, dtype: torch.dtype) -> float:
        """Bytes of one sample as the problem would hold it (floating-point tensors in `dtype`)."""
        x, y = self.head()
        leaves = [*(x.values() if isinstance(x, dict) else [x]), y]
        size = sum(t.numel() * (dtype.itemsize if torch.is_floating_point(t) else t.element_size()) for t in leaves)
        return size / y.shape[0]

    def subset(self, samples: int | None, seed: int) -> DataSource:
        """A seeded subset of `samples` rows (the indices `data.subset` picks for tensors), or itself."""
        if samples is None or samples >= self.n:
            return self
        if samples <= 0:
            raise ArgumentError("samples", samples, "must be positive")
        if isinstance(self.obj, DataLoader):
            raise ArgumentError(
                "samples", samples, f"{self.where} is a DataLoader too large to collect: give its Dataset to subset"
            )
        gen = torch.Generator().manual_seed(seed)
        picked = torch.randperm(self.n, generator=gen)[:samples].sort().values.tolist()
        return DataSource(self.obj, self.columns, self.where, [self._index(i) for i in picked])

    def shard(self, part: slice) -> DataSource:
        """The contiguous rows `part` (one process's share under torchrun)."""
        if isinstance(self.obj, DataLoader):
            raise LandscapeError(
                f"{self.where}: a streamed DataLoader cannot be shared between processes; give its Dataset"
            )
        return DataSource(self.obj, self.columns, self.where, [self._index(i) for i in range(self.n)[part]])

    def _index(self, i: int) -> int:
        return i if self.indices is None else self.indices[i]

    def collect(self) -> Pair:
        """Every row as tensors (a Dataset's view item by item; a DataLoader's batches joined)."""
        if isinstance(self.obj, DataLoader):
            return self._pair(collect(self.obj, self.where))
        return self._pair(fill_rows(self.obj, self.indices or range(self.n), self.where))


def _collate(items: list[Any], where: str) -> Any:
    """A streamed Dataset's items joined as `collect` joins them (the same checks, the same dtypes)."""
    return stack_records([record(item, where, "item") for item in items], where, torch.stack)


def place_data(
    data: Any,
    targets: Any,
    columns: Columns,
    where: str,
    *,
    samples: int | None,
    seed: int,
    device: torch.device,
    dtype: torch.dtype,
    stream: bool | None,
    say: Say,
) -> Pair | DataSource:
    """The data as tensors (x, y), or as a DataSource to stream: by size when `stream` is None.

    A pair, a dict of columns, or inputs with `targets` are tensors already; a Dataset or DataLoader
    is collected when it fits a quarter of the memory it would be held in (the device's for a GPU)."""
    if targets is not None or not isinstance(data, (Dataset, DataLoader)) or _unsized(data):
        if stream:
            raise ArgumentError("stream", stream, f"{where} is not a map-style Dataset or a DataLoader of known length")
        x, y = collect_data(data, targets, columns, where)
        _say_all_used(samples, int(y.shape[0]), say)
        return subset(x, y, samples, seed)
    source = DataSource(data, columns, where)
    if samples is not None and samples <= 0:
        raise ArgumentError("samples", samples, "must be positive")
    _say_all_used(samples, source.n, say)
    wanted = min(source.n, samples or source.n)
    size = int(source.row_bytes(dtype) * wanted)
    available = available_memory(device)
    streamed = stream if stream is not None else size > IN_MEMORY_SHARE * available
    say(Placement(streamed, stream is not None, wanted, size, available).describe())
    if streamed:
        return source.subset(samples, seed)
    if isinstance(data, DataLoader):  # its order is the loader's: the subset is taken after, as for tensors
        x, y = source.collect()
        return subset(x, y, samples, seed)
    return source.subset(samples, seed).collect()


def _say_all_used(samples: int | None, n: int, say: Say) -> None:
    if samples is not None and samples > n:
        say(f"{samples:,} samples asked for; the data has {n:,}, and all are used")


def _unsized(data: Any) -> bool:
    """An IterableDataset, or a DataLoader over one: its length, if it says one, is not the rows a
    pass yields (that depends on its workers), so only collecting it tells its size."""
    return isinstance(data.dataset if isinstance(data, DataLoader) else data, IterableDataset)


def available_memory(device: torch.device) -> int:
    """Bytes free for the data: the host's available memory, and on a GPU also the device's free memory."""
    host = _host_available()
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return min(host, int(free))
    return host


def _host_available() -> int:
    try:
        with open("/proc/meminfo") as f:  # MemAvailable counts the page cache the kernel would give back
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):
        return FALLBACK_MEMORY


def streamed_batch_size(source: DataSource, dtype: torch.dtype, cap: int) -> int:
    """Rows per streamed batch: `cap`, fewer when rows are large (STREAM_BATCH_BYTES a batch)."""
    return max(1, min(cap, source.n, int(STREAM_BATCH_BYTES // max(source.row_bytes(dtype), 1.0))))


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"
