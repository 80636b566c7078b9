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


def _modules_after(args: list[str]) -> set[str]:
    """The heavy modules loaded after running the CLI on `args` in a fresh interpreter, in-process."""
    code = (
        "import sys\nfrom landscape.cli import main\n"
        f"try:\n    main({args!r})\nexcept SystemExit:\n    pass\n"
        "print(' '.join(m for m in ('torch', 'sympy', 'torch._dynamo') if m in sys.modules), file=sys.stderr)"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert "Traceback" not in res.stderr, res.stderr
    return set(res.stderr.strip().splitlines()[-1].split()) if res.stderr.strip() else set()


@pytest.mark.parametrize("args", [["--help"], *[[c, "--help"] for c in COMMANDS]], ids=lambda a: " ".join(a))
def test_help_imports_no_torch(args):
    assert _modules_after(args) == set()


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
