"""Do two versions of landscape give the same numbers? Runs one set of commands on the samples with
each of two checkouts (the same venv, PYTHONPATH switched) and compares the files field by field.

    python benchmarks/same_numbers.py OLD_CHECKOUT NEW_CHECKOUT [--out DIR]

Every dataset and attribute must be equal with tolerance 0, except what records when and how a run
went (created, command, seconds, timings, install paths). Exit 1 when any field differs. A refactor
of the numerical core should leave every file equal; this is how to show it. One choice is made by
timing and may differ between any two runs: whether the Hessian's vectors go through the products
in batches (`operator.batched_vectors`); when it differs, float64 Lanczos values differ by about
1e-15 of the largest, and the line says by how much.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np

# commands and the file each writes (-o FILE is appended); float64 where the number is checked exactly
COMMANDS = {
    "sweep-mlp.h5": "sweep --sample mlp --x -1:1:11 --y -1:1:11 --dtype float64 --strategy loop",
    "sweep-cnn-line.h5": "sweep --sample cnn --x -1:1:11 --strategy loop",
    "hessian-mlp.h5": "hessian --sample mlp --top-k 3 --trace --density --per-layer --dtype float64",
    "hessian-cnn.h5": "hessian --sample cnn --top-k 2",
    "roughness-linreg.h5": "roughness --sample linreg --directions 6 --strategy loop",
    "sharpness-mlp.h5": "sharpness --sample mlp --hessian",
    "sweep-hessian-axes.h5": "sweep --sample mlp --axes hessian --x -1:1:7 --y -1:1:7 --strategy loop",
}
# what a run records about itself, not its numbers
VOLATILE = ("created", "command", "seconds", "timings", "tool_version", "strategy", "probe", "points_per_call", "ratio")


def volatile(name: str) -> bool:
    return any(v in name for v in VOLATILE)


def run_all(checkout: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    for name, command in COMMANDS.items():
        args = [sys.executable, "-m", "landscape", *command.split(), "--force", "-o", str(out / name)]
        # run in OUT: `python -m` puts the working directory first on sys.path, so run from inside a
        # checkout both versions were that checkout's, and every file compared equal
        subprocess.run(args, env=env, check=True, capture_output=True, cwd=out)


def differences(a: Path, b: Path) -> list[str]:
    """Fields of `a` and `b` that differ (every dataset and attribute, recursively)."""
    found: list[str] = []
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:

        def attrs(path: str, x: h5py.HLObject, y: h5py.HLObject) -> None:
            for key in sorted(set(x.attrs) | set(y.attrs)):
                if volatile(key):
                    continue
                if key not in x.attrs or key not in y.attrs:
                    found.append(f"{path}@{key}: only in one file")
                    continue
                u, v = x.attrs[key], y.attrs[key]
                if key in ("settings", "operator"):  # JSON: compare as objects, timings and install paths aside
                    u, v = (
                        {k: w for k, w in json.loads(s).items() if not volatile(k) and not str(w).startswith("/")}
                        for s in (u, v)
                    )
                a, b = np.asarray(u), np.asarray(v)
                if not np.array_equal(a, b, equal_nan=a.dtype.kind == "f" and b.dtype.kind == "f"):
                    found.append(f"{path}@{key}: {str(u)[:60]} != {str(v)[:60]}")

        def visit(path: str, x: h5py.HLObject, y: h5py.HLObject) -> None:
            attrs(path, x, y)
            if isinstance(x, h5py.Dataset):
                u, v = x[()], y[()]
                if not np.array_equal(u, v, equal_nan=x.dtype.kind == "f"):
                    if x.dtype.kind == "f" and u.shape == v.shape:
                        rel = np.nanmax(np.abs(u - v)) / max(np.nanmax(np.abs(u)), np.finfo(float).tiny)
                        found.append(f"{path}: values differ, by {rel:.1e} of the largest")
                    else:
                        found.append(f"{path}: values differ")
                return
            for key in sorted(set(x) | set(y)):
                if key not in x or key not in y:
                    found.append(f"{path}/{key}: only in one file")
                elif not volatile(key):
                    visit(f"{path}/{key}", x[key], y[key])

        visit("", fa, fb)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--out", type=Path, default=Path("same-numbers"))
    args = parser.parse_args()
    for side in ("old", "new"):
        run_all(getattr(args, side).resolve(), args.out / side)
    bad = 0
    for name in COMMANDS:
        diff = differences(args.out / "old" / name, args.out / "new" / name)
        bad += bool(diff)
        print(f"{name}: {'equal' if not diff else 'DIFFERENT'}")
        for line in diff:
            print("   ", line)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
