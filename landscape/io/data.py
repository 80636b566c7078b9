"""Load a data set into inputs x (a tensor, or a dict of tensors for keyword inputs) and targets y, from a file or a user function."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from landscape.data import Columns, check_pair, collect_data, split
from landscape.errors import LandscapeError
from landscape.io.spec import resolve_callable, split_call
from landscape.model_io import Inputs

TENSOR_SUFFIXES = (".pt", ".pth", ".npz", ".h5", ".hdf5")


def load_data(spec: str, unsafe_pickle: bool = False, columns: Columns = Columns()) -> tuple[Inputs, torch.Tensor]:
    """(x, y) as tensors from what `read_data` reads (a Dataset or DataLoader collected)."""
    return collect_data(read_data(spec, unsafe_pickle, columns), columns=columns, where=f"--data {spec}")


def read_data(spec: str, unsafe_pickle: bool = False, columns: Columns = Columns()) -> Any:
    """(x, y) from a tensor file holding `x` and `y` (or named columns); or what `file.py:fn` /
    `module:fn` returns: tensors, a Dataset or a DataLoader (of pairs or of dicts), for `Problem`
    to collect or stream."""
    path = Path(spec)
    if path.suffix in TENSOR_SUFFIXES:
        if not path.is_file():
            raise LandscapeError(f"--data: file not found: {path}")
        return check_pair(split(_read_tensor_file(path, unsafe_pickle), f"--data {spec}", columns), f"--data {spec}")
    if ":" in spec:
        name, args, kwargs = split_call(spec, "--data")
        fn = resolve_callable(name, "--data")
        try:
            obj = fn(*args, **kwargs) if callable(fn) or args or kwargs else fn
        except Exception as exc:
            raise LandscapeError(f"--data {spec}: the function raised {type(exc).__name__}: {exc}") from exc
        return obj
    if not path.exists():
        raise LandscapeError(f"--data: file not found: {path}")
    raise LandscapeError(f"--data {spec}: expected a {'/'.join(TENSOR_SUFFIXES)} file or file.py:function")


def _read_tensor_file(path: Path, unsafe_pickle: bool) -> tuple | dict:
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                return {k: torch.from_numpy(z[k]) for k in z.files}
        if path.suffix in (".h5", ".hdf5"):
            from landscape.io.h5file import open_h5

            with open_h5(path, "r") as f:
                return {k: torch.from_numpy(f[k][()]) for k in f.keys() if hasattr(f[k], "shape")}
        obj = torch.load(path, map_location="cpu", weights_only=not unsafe_pickle)
    except LandscapeError:
        raise
    except Exception as exc:
        raise LandscapeError(f"--data {path}: cannot read ({type(exc).__name__}: {str(exc).splitlines()[0]})") from exc
    if isinstance(obj, dict):
        return obj
    if isinstance(obj, (tuple, list)) and len(obj) == 2:
        return tuple(obj)
    raise LandscapeError(f"--data {path}: expected a dict with keys 'x' and 'y' (or named columns), or an (x, y) pair")
