"""`python -m landscape` (and `torchrun -m landscape`) entry point."""

from landscape.cli import run

run()
