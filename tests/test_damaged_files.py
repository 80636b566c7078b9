"""Results files that were edited, truncated or written by something else: every reader (info,
metrics, plot, report, export, sweep --resume) refuses them with one line naming the file and exit
code 2, and --resume never touches them."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest

Edit = Callable[[h5py.File], None]

STRUCTURAL_ATTRS = {  # the attributes the readers rely on, retyped one at a time
    "/": ("settings", "format_version", "complete", "format"),
    "sweep": ("axes",),
    "roughness": ("ri", "mu", "sigma"),
    "hessian/density": ("sigma",),
}


def _sweep_args(kind: str) -> list[str]:
    return ["--x", "-1:1:4"] if kind == "line" else ["--x", "-1:1:4", "--y", "-1:1:3"]


@pytest.fixture(scope="module")
def originals(tmp_path_factory) -> dict[str, Path]:
    from landscape.cli import main

    folder = tmp_path_factory.mktemp("originals")
    runs = {
        "line": ["sweep", "--sample", "mlp", *_sweep_args("line")],
        "grid": ["sweep", "--sample", "mlp", *_sweep_args("grid")],
        "hessian": ["hessian", "--sample", "mlp", "--top-k", "2", "--trace", "--density", "--probes", "2"],
        "roughness": ["roughness", "--sample", "linreg", "--directions", "3", "--steps", "5"],
    }
    for name, args in runs.items():
        try:
            main([*args, "-o", str(folder / f"{name}.h5")])
        except SystemExit as exc:
            assert not exc.code, (name, exc.code)
    return {name: folder / f"{name}.h5" for name in runs}


def _edits(path: Path) -> list[tuple[str, Edit | int]]:
    """Every dataset and group removed, every dataset reshaped, retyped to text or made a scalar,
    the structural attributes retyped or removed, and the file truncated at several offsets."""
    with h5py.File(path, "r") as f:
        found: list[tuple[str, h5py.HLObject]] = []
        f.visititems(lambda n, o: found.append((n, o)) and None)
        datasets = {n: o.shape for n, o in found if isinstance(o, h5py.Dataset)}
        names = [n for n, _ in found]
        attrs = [(g, k) for g, keys in STRUCTURAL_ATTRS.items() if g in f for k in keys if k in f[g].attrs]
    edits: list[tuple[str, Edit | int]] = [(f"remove {n}", lambda f, n=n: f.__delitem__(n)) for n in names]
    for n, shape in datasets.items():
        grown = tuple(s + 1 for s in shape) if shape else (2,)

        def replace(f: h5py.File, n: str = n, data: np.ndarray | None = None) -> None:
            del f[n]
            f.create_dataset(n, data=data)

        edits.append((f"{n} reshaped", lambda f, n=n, g=grown: replace(f, n, np.zeros(g, "f8"))))
        if shape:
            edits.append((f"{n} scalar", lambda f, n=n: replace(f, n, np.float64(1.0))))
            edits.append(
                (f"{n} text", lambda f, n=n, s=shape: replace(f, n, np.array(["x"] * int(np.prod(s) or 1), "O")))
            )
    for g, k in attrs:
        for label, value in (("a number", 7), ("bad JSON", "{bad"), ("an array", np.arange(3))):
            edits.append((f"{g}@{k} {label}", lambda f, g=g, k=k, v=value: f[g].attrs.__setitem__(k, v)))
        edits.append((f"{g}@{k} removed", lambda f, g=g, k=k: f[g].attrs.__delitem__(k)))
    size = path.stat().st_size
    edits += [(f"truncated at {n}", n) for n in (0, 512, size // 3, size - 64)]
    return edits


def _damage(original: Path, target: Path, edit: Edit | int) -> bool:
    shutil.copy(original, target)
    if isinstance(edit, int):
        with open(target, "r+b") as fh:
            fh.truncate(edit)
        return True
    try:
        with h5py.File(target, "r+") as f:
            edit(f)
    except (KeyError, ValueError, TypeError):  # h5py would not make this edit
        return False
    return True


def _commands(kind: str, path: Path, out: Path) -> list[list[str]]:
    commands = [
        ["info", str(path)],
        ["metrics", str(path)],
        ["plot", str(path), "--force", "-o", str(out / "figure.png")],
        ["report", str(path), "--force", "-o", str(out / "report.html")],
    ]
    if kind in ("line", "grid"):
        commands.append(["export", str(path), "--force", "-o", str(out / "points.csv")])
        commands.append(["sweep", "--sample", "mlp", *_sweep_args(kind), "--resume", "-o", str(path)])
    return commands


@pytest.mark.parametrize("kind", ["line", "grid", "hessian", "roughness"])
def test_damaged_files_get_one_line_and_exit_2(kind, originals, cli, tmp_path):
    failures: list[str] = []
    refused = 0
    for label, edit in _edits(originals[kind]):
        path = tmp_path / f"{kind}.h5"
        if not _damage(originals[kind], path, edit):
            continue
        before = path.read_bytes()
        for command in _commands(kind, path, tmp_path):
            res = cli(*command)
            errors = [line for line in res.err.splitlines() if line.startswith("error:")]
            if res.code == 0:
                continue  # the edit touched nothing this command needs
            refused += 1
            if res.code != 2 or len(errors) != 1 or "Traceback" in res.err or str(path) not in errors[0]:
                failures.append(f"{label} | {command[0]} | exit {res.code} | {res.err.strip()[-300:]}")
            if command[0] == "sweep" and path.read_bytes() != before:
                failures.append(f"{label} | --resume changed the file")
    assert not failures, "\n".join(failures[:20])
    assert refused > 20  # the battery did reach the readers


def test_damage_is_named(originals, cli, tmp_path):
    """The message says what is wrong, not only that something is."""
    path = tmp_path / "grid.h5"
    cases = {
        "sweep/done": "/sweep/done is missing",
        "axes/layout": "/axes/layout is missing",
    }
    for name, words in cases.items():
        shutil.copy(originals["grid"], path)
        with h5py.File(path, "r+") as f:
            del f[name]
        res = cli("plot", path, "-o", tmp_path / "f.png")
        assert res.code == 2 and words in res.err, res.err
    shutil.copy(originals["grid"], path)
    with h5py.File(path, "r+") as f:
        loss = f["sweep/loss"][()]
        del f["sweep/loss"]
        f["sweep/loss"] = loss[:, :2]
    res = cli("info", path)
    assert "/sweep/loss has shape [4, 2], expected [4, 3]" in res.err, res.err
    shutil.copy(originals["grid"], path)
    with h5py.File(path, "r+") as f:
        f.attrs["settings"] = "{bad"
    res = cli("sweep", "--sample", "mlp", *_sweep_args("grid"), "--resume", "-o", path)
    assert res.code == 2 and "@settings is '{bad', expected a JSON object" in res.err, res.err
