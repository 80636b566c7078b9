"""Load a data set into two tensors (inputs x, targets y), from a file or a user function."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from landscape.errors import LandscapeError
from landscape.io.spec import resolve_callable

TENSOR_SUFFIXES = (".pt", ".pth", ".npz", ".h5", ".hdf5")


def load_data(spec: str, unsafe_pickle: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (x, y) from a tensor file holding `x` and `y`, or from `file.py:fn` / `module:fn`."""
    path = Path(spec)
    if path.suffix in TENSOR_SUFFIXES:
        if not path.is_file():
            raise LandscapeError(f"--data: file not found: {path}")
        return _check_pair(_read_tensor_file(path, unsafe_pickle), spec)
    if ":" in spec:
        fn = resolve_callable(spec, "--data")
        try:
            obj = fn() if callable(fn) else fn
        except Exception as exc:
            raise LandscapeError(f"--data {spec}: the function raised {type(exc).__name__}: {exc}") from exc
        return _check_pair(_collect(obj, spec), spec)
    if not path.exists():
        raise LandscapeError(f"--data: file not found: {path}")
    raise LandscapeError(f"--data {spec}: expected a {'/'.join(TENSOR_SUFFIXES)} file or file.py:function")


def _read_tensor_file(path: Path, unsafe_pickle: bool) -> tuple:
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                keys = set(z.files)
                _require_xy(keys, path)
                return torch.from_numpy(z["x"]), torch.from_numpy(z["y"])
        if path.suffix in (".h5", ".hdf5"):
            from landscape.io.h5file import open_h5

            with open_h5(path, "r") as f:
                _require_xy(set(f.keys()), path)
                return torch.from_numpy(f["x"][()]), torch.from_numpy(f["y"][()])
        obj = torch.load(path, map_location="cpu", weights_only=not unsafe_pickle)
    except LandscapeError:
        raise
    except Exception as exc:
        raise LandscapeError(f"--data {path}: cannot read ({type(exc).__name__}: {str(exc).splitlines()[0]})") from exc
    if isinstance(obj, dict):
        _require_xy(set(obj), path)
        return obj["x"], obj["y"]
    if isinstance(obj, (tuple, list)) and len(obj) == 2:
        return tuple(obj)
    raise LandscapeError(f"--data {path}: expected a dict with keys 'x' and 'y'")


def _require_xy(keys: set, path: Path) -> None:
    if not {"x", "y"} <= keys:
        raise LandscapeError(f"--data {path}: needs arrays named 'x' and 'y' (found: {', '.join(sorted(keys)) or 'none'})")


def _collect(obj, spec: str) -> tuple:
    """Turn a (x, y) pair, a Dataset or a DataLoader into two stacked tensors."""
    if isinstance(obj, (tuple, list)) and len(obj) == 2 and all(isinstance(t, (torch.Tensor, np.ndarray)) for t in obj):
        return tuple(torch.as_tensor(t) for t in obj)
    if isinstance(obj, dict) and {"x", "y"} <= set(obj):
        return torch.as_tensor(obj["x"]), torch.as_tensor(obj["y"])
    if isinstance(obj, torch.utils.data.DataLoader):
        xs, ys = [], []
        for batch in obj:
            xs.append(torch.as_tensor(batch[0]))
            ys.append(torch.as_tensor(batch[1]))
        return torch.cat(xs), torch.cat(ys)
    if isinstance(obj, torch.utils.data.Dataset):
        items = [obj[i] for i in range(len(obj))]  # type: ignore[arg-type]
        return (
            torch.stack([torch.as_tensor(it[0]) for it in items]),
            torch.stack([torch.as_tensor(it[1]) for it in items]),
        )
    raise LandscapeError(f"--data {spec}: returned {type(obj).__name__}; expected (x, y) tensors, a Dataset or a DataLoader")


def _check_pair(pair: tuple, spec: str) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = (torch.as_tensor(t) for t in pair)
    if x.ndim == 0 or y.ndim == 0 or x.shape[0] != y.shape[0]:
        raise LandscapeError(f"--data {spec}: x and y must have the same first dimension (got {tuple(x.shape)} and {tuple(y.shape)})")
    if x.shape[0] == 0:
        raise LandscapeError(f"--data {spec}: the data set is empty")
    return x, y


def subset(x: torch.Tensor, y: torch.Tensor, samples: int | None, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed, seeded subset of `samples` rows (all rows when None or larger than the set)."""
    if samples is None or samples >= x.shape[0]:
        return x, y
    if samples <= 0:
        raise LandscapeError(f"--samples must be positive (got {samples})")
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(x.shape[0], generator=gen)[:samples].sort().values
    return x[idx], y[idx]
