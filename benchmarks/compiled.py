"""What `--strategy compiled` (torch.compile of the model) costs and gains.

    .venv/bin/python benchmarks/compiled.py [--entries vit,gpt2] [--rounds 4] [--points 25] [--work DIR]

For each model of the suite (`benchmarks/suite_models.py`), in a fresh process with a cold inductor
cache (a fresh TORCHINDUCTOR_CACHE_DIR, as on a first run):
  compile   the seconds of the compiled model's first call on the data (the compile);
  pace      the seconds of one forward pass over the data, eager and compiled, with new weights
            written before every pass as a sweep does, in interleaved rounds of 5 passes each
            (median of all passes): the gain is their ratio.
Then, as whole processes, `landscape sweep` on a line of `--points` points with `--strategy compiled`
(cold cache) and `--strategy loop`: what a user meets.

An earlier version took the compiled pace from the slope between two cold-compiled runs (4 and 25
points): a compile's time varies by seconds from run to run, and 21 points at 0.4 s apart could not
hold that, so it reported the suite's ViT at 5.9x the loop where its passes run 1.1-1.3x as fast.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import suite_models  # noqa: E402

PASSES = """
import json, statistics, sys, time
import torch
sys.path.insert(0, {here!r})
import suite_models
from pathlib import Path

model, x, y, loss_fn = suite_models.load({name!r}, Path({work!r}))
params = [p for p in model.parameters()]
start = [p.detach().clone() for p in params]
torch.manual_seed(0)
steps = [torch.randn_like(p) * 0.01 for p in params]
compiled = torch.compile(model)
point = 0


def passes(forward, n):
    global point
    seconds = []
    for _ in range(n):
        point += 1
        for p, w, d in zip(params, start, steps):
            p.copy_(w + (point % 7) * d)
        t = time.perf_counter()
        float(loss_fn(forward(x), y))
        seconds.append(time.perf_counter() - t)
    return seconds


with torch.no_grad():
    t = time.perf_counter()
    passes(compiled, 1)
    compile_s = time.perf_counter() - t
    eager, fast = [], []
    for _ in range({rounds}):
        eager += passes(model, 5)
        fast += passes(compiled, 5)
print(json.dumps({{"compile_s": compile_s, "eager": statistics.median(eager), "compiled": statistics.median(fast),
                   "eager_range": [min(eager), max(eager)], "compiled_range": [min(fast), max(fast)]}}))
"""


def in_process(name: str, work: Path, rounds: int) -> dict:
    """The compile's seconds and both paces, in a fresh process with a cold inductor cache."""
    code = PASSES.format(here=str(HERE), name=name, work=str(work), rounds=rounds)
    with tempfile.TemporaryDirectory() as cold:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cold, "PYTHONWARNINGS": "ignore"}
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"failed: {name}\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def sweep(name: str, work: Path, strategy: str, points: int) -> tuple[float, float]:
    """(whole-process seconds, the sweep's own seconds) of one line sweep, a cold inductor cache."""
    out = work / "out" / f"compiled-{name}-{strategy}-{points}.h5"
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "landscape", "sweep", *suite_models.cli_args(name, work), "--x", f"-1:1:{points}",
           "--strategy", strategy, "--force", "-o", str(out)]  # fmt: skip
    with tempfile.TemporaryDirectory() as cold:
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TORCHINDUCTOR_CACHE_DIR": cold})
        wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{done.stdout}\n{done.stderr}")
    with h5py.File(out, "r") as f:
        own = float(f["sweep"].attrs["seconds"])
    return wall, own


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entries", default="vit,gpt2")
    ap.add_argument("--rounds", type=int, default=4, help="interleaved rounds of 5 eager and 5 compiled passes")
    ap.add_argument("--points", type=int, default=25, help="the line sweep's points (0: no whole-process sweeps)")
    ap.add_argument("--work", type=Path, default=HERE / ".suite")
    args = ap.parse_args()
    rows = []
    for name in args.entries.split(","):
        suite_models.prepare(name, args.work)
        paces = in_process(name, args.work, args.rounds)
        walls = (
            (sweep(name, args.work, "compiled", args.points), sweep(name, args.work, "loop", args.points))
            if args.points
            else None
        )
        rows.append((name, paces, walls))
        print(f"  {name}: {paces} {walls}", file=sys.stderr, flush=True)
    print(f"--strategy compiled against eager passes (median of {5 * args.rounds} each, interleaved; cold compile)")
    print(f"{'model':8s} {'eager s/pass':>14s} {'compiled s/pass':>16s} {'gain':>6s} {'compile s':>10s} "
          f"{'break-even pts':>15s} {'compiled wall':>14s} {'loop wall':>10s}")  # fmt: skip
    for name, p, walls in rows:
        gain = p["eager"] / p["compiled"]
        saved = p["eager"] - p["compiled"]
        even = f"{p['compile_s'] / saved:15.0f}" if saved > 0 else f"{'never':>15s}"
        wall = f"{walls[0][0]:14.1f} {walls[1][0]:10.1f}" if walls else f"{'-':>14s} {'-':>10s}"
        print(f"{name:8s} {p['eager']:14.3f} {p['compiled']:16.3f} {gain:6.2f} {p['compile_s']:10.1f} {even} {wall}")
    print(
        "(s/pass: median, range eager/compiled: "
        + "; ".join(
            f"{n} {p['eager_range'][0]:.3f}-{p['eager_range'][1]:.3f} / {p['compiled_range'][0]:.3f}-{p['compiled_range'][1]:.3f}"
            for n, p, _ in rows
        )
        + f"; line sweeps of {args.points} points, whole processes)"
    )
    print(f"median gain {statistics.median(p['eager'] / p['compiled'] for _, p, _ in rows):.2f}")


if __name__ == "__main__":
    main()
