"""Start-up: `landscape --help` and every command's --help import neither torch nor sympy (torch
alone took 2.4 s of the 3.3 s `--help` cost); the names the CLI offers agree with the modules'."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ["sweep", "hessian", "roughness", "sharpness", "track", "path", "plane", "trajectory",
            "metrics", "info", "samples", "plot", "compare", "report", "export"]  # fmt: skip


HEAVY = ("torch", "sympy", "torch._dynamo", "scipy.linalg")


def _modules_after(args: list[str], watch: tuple[str, ...] = HEAVY) -> set[str]:
    """The modules of `watch` loaded after running the CLI on `args` in a fresh interpreter, in-process."""
    code = (
        "import sys\nfrom landscape.cli import main\n"
        f"try:\n    main({args!r})\nexcept SystemExit:\n    pass\n"
        f"print('MODULES:', *(m for m in {watch!r} if m in sys.modules), file=sys.stderr)"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert "Traceback" not in res.stderr, res.stderr
    (line,) = [line for line in res.stderr.splitlines() if line.startswith("MODULES:")]
    return set(line.split()[1:])


@pytest.mark.parametrize("args", [["--help"], *[[c, "--help"] for c in COMMANDS]], ids=lambda a: " ".join(a))
def test_help_imports_no_torch(args):
    assert _modules_after(args) == set()


def test_help_imports_no_numpy_nor_h5py():
    """`landscape --help` draws text only: numpy (50 ms) and h5py load in the commands that read files."""
    assert _modules_after(["--help"], ("numpy", "h5py", "matplotlib", "plotly")) == set()


def test_the_names_offered_agree_with_the_implementations():
    """landscape.names is written by hand (so --help needs no torch): each name must be one the code runs."""
    import torch

    from landscape import names
    from landscape.directions import random_directions
    from landscape.params import Layout
    from landscape.strategies import REGISTRY

    assert names.STRATEGIES == tuple(REGISTRY)  # the probe's order too
    layout = Layout(("w", "b"), ((3, 2), (3,)))
    theta = torch.randn(9, dtype=torch.float64)
    for norm in names.NORMS:
        for ignore in names.IGNORES:
            d = random_directions(1, theta, layout, seed=0, norm=norm, ignore=ignore)
            assert d.shape == (1, 9) and torch.isfinite(d).all()


@pytest.fixture(scope="module")
def result_files(tmp_path_factory):
    """A 2D sweep, a curvature file with a density, and a roughness file, as the CLI writes them."""
    from landscape.cli import main

    folder = tmp_path_factory.mktemp("files")
    runs = {
        "sweep.h5": ["sweep", "--sample", "linreg", "--x", "-1:1:5", "--y", "-1:1:4"],
        "curv.h5": ["hessian", "--sample", "linreg", "--top-k", "3", "--trace", "--density"],
        "rough.h5": ["roughness", "--sample", "linreg", "--directions", "3", "--steps", "4"],
    }
    for name, args in runs.items():
        try:
            main([*args, "-o", str(folder / name)])
        except SystemExit as exc:
            assert exc.code in (0, None)
    return folder


@pytest.mark.parametrize(
    "command",
    [
        ["info", "sweep.h5"], ["info", "curv.h5"], ["metrics", "sweep.h5"], ["metrics", "curv.h5"],
        ["metrics", "rough.h5"], ["plot", "sweep.h5", "-o", "s.png"], ["plot", "curv.h5", "--kind", "density", "-o", "d.html"],
        ["plot", "rough.h5", "-o", "r.svg"], ["report", "sweep.h5", "curv.h5", "rough.h5", "-o", "report.html"],
    ],
    ids=lambda c: " ".join(c),
)  # fmt: skip
def test_the_file_commands_import_no_torch(result_files, command):
    """`info`, `metrics`, `plot` and `report` read results files only: no torch, no sympy (and they work)."""
    args = [str(result_files / a) if a.endswith((".h5", ".png", ".html", ".svg")) else a for a in command]
    assert _modules_after(args) == set()
    if "-o" in args:
        assert Path(args[args.index("-o") + 1]).stat().st_size > 0


def test_top_eigenvalues_import_no_sympy(tmp_path):
    """torch's autograd imports its symbolic shapes, and sympy with them, on the first gradient given
    `grad_outputs` (1.1 s: a third of a small model's top-5 run); the Hessian's products differentiate
    <g, v> instead, so `hessian --top-k` never loads it (the values are the same: see test_hessian.py)."""
    mods = _modules_after(["hessian", "--sample", "mlp", "--top-k", "3", "-o", str(tmp_path / "c.h5")])
    assert "torch" in mods and "sympy" not in mods
    assert (tmp_path / "c.h5").is_file()


def test_a_sweep_imports_only_torch(tmp_path):
    """A sweep needs neither scipy's linear algebra (the Lanczos tridiagonals: 0.25-0.5 s) nor sympy nor dynamo."""
    mods = _modules_after(["sweep", "--sample", "cnn", "--x", "-1:1:3", "--y", "-1:1:3", "-o", str(tmp_path / "s.h5")])
    assert mods == {"torch"}
    assert (tmp_path / "s.h5").is_file()
