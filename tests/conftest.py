"""Shared test helpers: run the CLI in-process, load bundled samples in float64."""

from __future__ import annotations

import signal
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

    @property
    def errors(self) -> list[str]:
        """The lines of stderr that report an error."""
        return [line for line in self.err.splitlines() if line.startswith("error:")]


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


def ctrl_c_reaches_it() -> None:
    """Popen's preexec_fn for a child that a test interrupts: SIGINT back to its default. A shell starts
    background jobs with SIGINT ignored (POSIX), children inherit that, and Python then leaves it ignored,
    so a test suite run with `&` saw its Ctrl-C'd commands finish with exit 0."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def sample_problem(name: str, dtype: str = "float64", samples: int | None = None, device: str = "cpu", **kw) -> Problem:
    """A bundled sample as a Problem (on the CPU, float64 by default, for exact comparisons)."""
    problem, _ = load_problem(LoadSpec(sample=name, dtype=dtype, device=device, samples=samples, **kw))
    return problem


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


def trained_pair(make, seeds=(0, 1), steps: int = 150, image: bool = False):
    """Two copies of `make()` trained from different seeds on the digits sample (full batch, Adam), and
    the data: two minima of one architecture that no permutation makes equal."""
    import numpy as np

    from landscape.io.samples import sample

    data = np.load(sample("mlp")["data"])
    x, y = torch.tensor(data["x"]).float(), torch.tensor(data["y"]).long()
    if image:
        x = x.view(-1, 1, 8, 8)
    models = []
    for seed in seeds:
        torch.manual_seed(seed)
        m = make()
        opt = torch.optim.Adam(m.parameters(), 1e-2)
        for _ in range(steps):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(m(x), y).backward()
            opt.step()
        models.append(m.eval())
    return models, x, y


def designed_regression(eigenvalues, seed: int = 0) -> Problem:
    """A bias-free linear model with MSE whose Hessian 2 X^T X / n has exactly these eigenvalues."""
    d = n = eigenvalues.size
    gen = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    s = torch.sqrt(torch.as_tensor(eigenvalues, dtype=torch.float64) * n / 2)
    x = u @ torch.diag(s) @ v.T
    y = torch.randn(n, 1, generator=gen, dtype=torch.float64)
    model = torch.nn.Linear(d, 1, bias=False).double()
    return Problem(model, (x, y), "mse", dtype="float64")
