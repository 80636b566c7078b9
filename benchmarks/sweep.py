"""Sweep speed: the CLI's sweep against a per-point loop, loss-landscapes and the forward-only limit.

Run:  .venv/bin/python benchmarks/sweep.py [--grid 51] [--samples mlp,cnn,transformer,linreg]
(loss-landscapes comes from the `bench` extra: pip install -e ".[bench]").

All timings are taken in this one process on the same model and data, and reported as ratios:
  loop/sweep      how many times faster the sweep is than a plain per-point loop
  sweep/limit     the sweep's time over the forward-only limit (a warm pass over the data at the best
                  batch size, times the number of points); below 1.0 is possible with the first-layer trick
  ll/sweep        how many times faster than loss-landscapes' random_plane (run on a copy of the model)
Each time is the best of --repeats interleaved runs. The sweep computes loss and accuracy; the
loop, the limit and loss-landscapes compute the loss only.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from landscape.axes import random_axes
from landscape.host import keep_freed_memory
from landscape.io.load import LoadSpec, load_problem
from landscape.strategies import PROBE_POINTS, choose_strategy, grid_coords


def plain_loop(problem, dirs, coords) -> float:
    """The baseline: for each point, write the weights, one pass over the whole data set."""
    params = list(problem.model.parameters())
    start = time.perf_counter()
    with torch.no_grad():
        for c in coords:
            flat = problem.theta + c @ dirs
            for p, v in zip(params, problem.layout.unflatten(flat).values()):
                p.copy_(v)
            out = problem.model(problem.x)
            float(problem.loss_fn(out, problem.y))
        for p, v in zip(params, problem.layout.unflatten(problem.theta).values()):
            p.copy_(v)
    return time.perf_counter() - start


def forward_limit(problem, points: int, passes: int = 20) -> tuple[float, int]:
    """The fastest batch size's time per pass over the data, warm (the mean of `passes` passes in a
    row after one untimed pass, best of three such runs), times the number of points."""
    best, best_bs = float("inf"), problem.n
    with torch.no_grad():
        for bs in sorted({problem.n, 4096, 1024, 256, 64} & set(range(1, problem.n + 1)) | {problem.n}, reverse=True):

            def one_pass(bs: int = bs) -> None:
                for s in range(0, problem.n, bs):
                    float(problem.loss_fn(problem.model(problem.x[s : s + bs]), problem.y[s : s + bs]))

            one_pass()
            for _ in range(3):
                t = time.perf_counter()
                for _ in range(passes):
                    one_pass()
                dt = (time.perf_counter() - t) / passes
                if dt < best:
                    best, best_bs = dt, bs
    return best * points, best_bs


def sweep_as_cli(problem, dirs, coords) -> tuple[float, str]:
    """What `landscape sweep` does: probe on the first points, then the winner on the rest."""
    start = time.perf_counter()
    choice = choose_strategy(problem, dirs, coords[:PROBE_POINTS], total_points=coords.shape[0])
    choice.strategy.evaluate(coords[PROBE_POINTS:])
    choice.strategy.close()
    return time.perf_counter() - start, choice.strategy.name


def loss_landscapes_plane(problem, steps: int) -> float | None:
    try:
        import loss_landscapes
        import loss_landscapes.metrics
    except ImportError:
        return None
    model = copy.deepcopy(problem.model)  # random_plane leaves the model changed
    metric = loss_landscapes.metrics.Loss(problem.loss_fn, problem.x, problem.y)
    start = time.perf_counter()
    with torch.no_grad():
        loss_landscapes.random_plane(
            model, metric, distance=2, steps=steps, normalization="filter", deepcopy_model=False
        )
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grid", type=int, default=51)
    ap.add_argument("--samples", default="mlp,cnn,transformer,linreg")
    ap.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="each timing is the best of this many runs (other work on the machine only adds)",
    )
    args = ap.parse_args()
    keep_freed_memory()  # as the `landscape` process does (landscape/host.py); the baselines share it
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, grid {args.grid}x{args.grid}")
    header = f"{'sample':12} {'strategy':15} {'sweep pts/s':>11} {'loop pts/s':>10} {'loop/sweep':>10} {'sweep/limit':>11} {'ll pts/s':>9} {'ll/sweep':>8}"
    print(header)
    print("-" * len(header))
    for name in args.samples.split(","):
        problem, _ = load_problem(LoadSpec(sample=name, device="cpu"))
        dirs = random_axes(problem, 2).directions
        dirs = dirs.to(problem.dtype)
        axis = torch.linspace(-1, 1, args.grid, dtype=torch.float64)
        coords = grid_coords([axis, axis]).to(problem.dtype)
        n = coords.shape[0]
        sweeps, loops, lls = [], [], []
        for _ in range(args.repeats):  # interleaved, so a busy spell on the machine hits all alike
            sweeps.append(sweep_as_cli(problem, dirs, coords))
            loops.append(plain_loop(problem, dirs, coords))
            lls.append(loss_landscapes_plane(problem, args.grid))
        t_sweep, strategy = min(sweeps)
        t_loop = min(loops)
        t_limit, _ = forward_limit(problem, n)
        t_ll = None if lls[0] is None else min(lls)
        ll = f"{n / t_ll:9.1f} {t_ll / t_sweep:8.2f}" if t_ll else f"{'-':>9} {'-':>8}"
        print(
            f"{name:12} {strategy:15} {n / t_sweep:11.1f} {n / t_loop:10.1f} {t_loop / t_sweep:10.2f} {t_sweep / t_limit:11.2f} {ll}"
        )


if __name__ == "__main__":
    main()
