"""What `--strategy compiled` (torch.compile of the model) costs and gains, as whole processes.

    .venv/bin/python benchmarks/compiled.py [--entries vit,gpt2] [--points 4,25] [--work DIR]

For each model of the suite (`benchmarks/suite_models.py`), `landscape sweep` runs on a line of
few and of many points with `--strategy compiled` and a cold inductor cache (a fresh
TORCHINDUCTOR_CACHE_DIR, as on a first run), then again with that cache warm (a user's second run),
and with `--strategy loop`. The sweep's own seconds (stored in its file) on two lengths give the
compiled pace per point (the slope) and the compile's cost (the intercept): what the probe's
`COMPILE_SECONDS` (landscape/strategies/compiled.py) must cover before `auto` tries it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import suite_models  # noqa: E402


def sweep(name: str, work: Path, strategy: str, points: int, env: dict[str, str]) -> tuple[float, float]:
    """(whole-process seconds, the sweep's own seconds) of one line sweep."""
    out = work / "out" / f"compiled-{name}-{strategy}-{points}.h5"
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "landscape", "sweep", *suite_models.cli_args(name, work), "--x", f"-1:1:{points}",
           "--strategy", strategy, "--force", "-o", str(out)]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{done.stdout}\n{done.stderr}")
    with h5py.File(out, "r") as f:
        own = float(f["sweep"].attrs["seconds"])
    return wall, own


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", default="vit,gpt2")
    ap.add_argument("--points", default="4,25", help="two line lengths: few,many")
    ap.add_argument("--work", type=Path, default=HERE / ".suite")
    args = ap.parse_args()
    few, many = (int(p) for p in args.points.split(","))
    rows = []
    for name in args.entries.split(","):
        suite_models.prepare(name, args.work)
        with tempfile.TemporaryDirectory() as cold_a, tempfile.TemporaryDirectory() as cold_b:
            env_a = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cold_a}
            env_b = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cold_b}
            c_few = sweep(name, args.work, "compiled", few, env_a)
            c_many = sweep(name, args.work, "compiled", many, env_b)
            warm = sweep(name, args.work, "compiled", many, env_b)  # the same cache, now filled
        loop = sweep(name, args.work, "loop", many, dict(os.environ))
        pace = (c_many[1] - c_few[1]) / (many - few)
        compile_s = c_few[1] - few * pace
        loop_pace = loop[1] / many
        rows.append((name, pace, loop_pace, compile_s, c_many, warm, loop))
        print(f"  {name}: {rows[-1]}", flush=True)
    print(
        f"\n--strategy compiled against loop, line sweeps of {few} and {many} points (sweep seconds from the file; wall = whole process)"
    )
    print(f"{'model':8s} {'compiled s/pt':>13s} {'loop s/pt':>10s} {'gain':>6s} {'compile s (cold)':>17s} "
          f"{'cold wall':>10s} {'warm wall':>10s} {'loop wall':>10s} {'break-even pts':>15s}")  # fmt: skip
    for name, pace, loop_pace, compile_s, c_many, warm, loop in rows:
        gain = loop_pace / pace if pace > 0 else float("nan")
        even = compile_s / (loop_pace - pace) if loop_pace > pace else float("inf")
        print(f"{name:8s} {pace:13.4f} {loop_pace:10.4f} {gain:6.2f} {compile_s:17.1f} "
              f"{c_many[0]:10.1f} {warm[0]:10.1f} {loop[0]:10.1f} {even:15.0f}")  # fmt: skip


if __name__ == "__main__":
    main()
