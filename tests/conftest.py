"""Shared test helpers: run the CLI in-process, load bundled samples in float64."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from landscape.cli import main
from landscape.io.load import LoadSpec, load_problem
from landscape.problem import Problem


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys):
    """cli("sweep", "--sample", "mlp", ...) -> CliResult(exit code, stdout, stderr)."""

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


def sample_problem(name: str, dtype: str = "float64", samples: int | None = None, device: str = "cpu", **kw) -> Problem:
    """A bundled sample as a Problem (on the CPU, float64 by default, for exact comparisons)."""
    problem, _ = load_problem(LoadSpec(sample=name, dtype=dtype, device=device, samples=samples, **kw))
    return problem


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
