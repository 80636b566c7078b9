"""`compiled`: the per-point loop through `torch.compile` of the model (inductor).

Compiling costs tens of seconds on a CPU (a C++ compiler builds the kernels) before the first point,
and gains only where the model spends its time in many small elementwise operations that the
compiler fuses (attention, norms, activations); so `auto` tries it only on runs long enough for the
compile time to pay back several times (the probe's budget, with `COMPILE_SECONDS` as the expected
cost of its warm-up), and a user can name it with `--strategy compiled`. The weights are written
into the model in place, as `loop` does: the compiled graph reads the parameters as inputs, so a new
point needs no new compile. The last, smaller batch may compile once more (dynamic shapes).
"""

from __future__ import annotations

import torch

from landscape.problem import Problem
from landscape.strategies.loop import LoopStrategy

# what the probe expects the compiles to cost on a CPU, cold (no inductor cache). Measured on 2 cores: the
# sample MLP's (its batch, and its last, smaller batch) about 45 s (tests/test_sweep.py::
# test_compiled_strategy_matches_direct_loop); the suite's ViT 25-34 s and GPT-2 21-25 s, for a forward pass
# 1.12x and 1.33x as fast as the eager one (benchmarks/compiled.py)
COMPILE_SECONDS = 60.0


class CompiledStrategy(LoopStrategy):
    """The per-point loop calling `torch.compile(model)` instead of the model."""

    name = "compiled"
    warm_up_seconds = COMPILE_SECONDS

    def __init__(self, problem: Problem, directions: torch.Tensor, batch_size: int | None = None):
        super().__init__(problem, directions, batch_size)
        self.forward = torch.compile(problem.model)
