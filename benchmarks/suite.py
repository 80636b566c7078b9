"""The benchmark suite: `landscape` against the scripts users run today, as whole processes.

    .venv/bin/python benchmarks/suite.py [--entries mlp,resnet18,...] [--repeats 3] [--work DIR]

For each model of `benchmarks/suite_models.py` (ordinary sizes, built in code, random init and a few
Adam steps, no downloads; plus the bundled samples), each repeat runs, interleaved (in one order,
then the reverse), one process each of:
  sweep     `landscape sweep` over a 2D grid (51x51, or 21x21 where one point costs over 50 ms);
  loop      a per-point loop script over the same grid (benchmarks/baselines.py loop);
  ll        loss-landscapes' random_plane over the same grid (baselines.py ll);
  top5      `landscape hessian --top-k 5` (Lanczos, residual tol 1e-4);
  ph-top5   PyHessian's top-5 eigenvalues with its defaults (baselines.py pyhessian-top5);
  trace     `landscape hessian --top-k 0 --trace` (Hutch++, 60 products);
  ph-trace  PyHessian's trace with its defaults (baselines.py pyhessian-trace);
  torch     importing torch and nothing else, the floor every process above pays (ended without the
            interpreter's teardown, as `landscape` ends: a plain `python -c "import torch"` spends
            0.3-0.5 s more there, which the scripts above pay too).
Every process is timed whole from outside (interpreter start, imports, loading, work), the way a
user meets it. The tables give each median with its range [min-max] over the repeats, and ratios of
medians (above 1: `landscape` is faster). `sweep/limit` sets the sweep's own evaluation seconds
(stored in its file) against the forward-only limit: the seconds of the loop script's forward passes
alone over the same grid (its weight writes left out), what a per-point method that spent nothing
else would take, on the same machine in the same run (medians over the repeats). `sweep/best` sets
them against a stricter bound: the loop script's best warm pass at the checkpoint's weights times
the grid's points. On two shared cores one pass varies by 30% or more (0.32-0.55 s for the same
ViT pass, on a machine with nothing else running), so the best pass is a lucky one that no run of
hundreds of passes keeps up, and `sweep/best` is above 1 for a sweep that is all forward passes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import suite_models  # noqa: E402

PY = sys.executable
LANDSCAPE = [PY, "-m", "landscape"]
SLOW_POINT_S = 0.05  # a point that costs more than this gets the 21x21 grid


class Failed(Exception):
    """A baseline that cannot run the model (its last error line)."""


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    """Wall seconds of one whole process and its stdout. A failing command raises Failed with its last
    error line (the table says so: that is what its user meets); a failing `landscape` also prints its
    whole output first. The other commands and models go on: a `landscape hessian` failing on
    MobileNetV3 once stopped the suite and lost every model after it."""
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        if cmd[:3] == LANDSCAPE:
            print(f"failed ({done.returncode}): {' '.join(cmd)}\n{done.stdout}\n{done.stderr}", file=sys.stderr)
        raise Failed(done.stderr.strip().splitlines()[-1][:100] if done.stderr.strip() else f"exit {done.returncode}")
    return seconds, done.stdout


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def span(values: list[float]) -> str:
    return f"{statistics.median(values):7.1f} [{min(values):.1f}-{max(values):.1f}]"


def sweep_file(path: Path) -> dict:
    with h5py.File(path, "r") as f:
        a = f["sweep"].attrs
        return {"strategy": str(a.get("strategy", "?")), "seconds": float(a.get("seconds", np.nan))}


def hessian_file(path: Path) -> dict:
    with h5py.File(path, "r") as f:
        h = f["hessian"]
        out = {"seconds": json.loads(h.attrs.get("seconds", "{}"))}
        if "eigenvalues" in h:
            values = h["eigenvalues"][()]
            out["top"] = sorted(values.tolist(), reverse=True)
            out["relative_residual"] = float(np.max(h["residuals"][()] / np.abs(values)))
            out["products"] = int(h["eigenvalues"].attrs["matvecs"])
        if "trace" in h:
            out["trace"] = float(h["trace"][()])
            out["trace_se"] = float(h["trace"].attrs["std_error"])
        return out


def run_entry(name: str, work: Path, repeats: int, env: dict[str, str], skip: set[str], grid: int | None) -> dict:
    suite_models.prepare(name, work)
    args = suite_models.cli_args(name, work)
    baseline = [PY, str(HERE / "baselines.py")]
    # the point cost decides the grid: one small loop run (its warm forward pass over the data)
    _, out = timed([*baseline, "loop", name, str(work), "2"], env)
    forward_s = last_json(out)["forward_s"]
    grid = grid or (21 if forward_s > SLOW_POINT_S else 51)
    out_dir = work / "out"
    out_dir.mkdir(exist_ok=True)
    sweep_h5 = out_dir / f"{name}-sweep.h5"
    top5_h5, trace_h5 = out_dir / f"{name}-top5.h5", out_dir / f"{name}-trace.h5"
    span_arg = f"-1:1:{grid}"
    commands = {
        "sweep": [*LANDSCAPE, "sweep", *args, "--x", span_arg, "--y", span_arg, "--force", "-o", str(sweep_h5)],
        "loop": [*baseline, "loop", name, str(work), str(grid)],
        "ll": [*baseline, "ll", name, str(work), str(grid)],
        "top5": [*LANDSCAPE, "hessian", *args, "--top-k", "5", "--force", "-o", str(top5_h5)],
        "ph-top5": [*baseline, "pyhessian-top5", name, str(work)],
        "trace": [*LANDSCAPE, "hessian", *args, "--top-k", "0", "--trace", "--force", "-o", str(trace_h5)],
        "ph-trace": [*baseline, "pyhessian-trace", name, str(work)],
        "torch": [PY, "-c", "import os, torch; os._exit(0)"],
    }
    commands = {k: v for k, v in commands.items() if k not in skip}
    times: dict[str, list[float]] = {k: [] for k in commands}
    found: dict[str, list[dict]] = {k: [] for k in commands}
    failed: dict[str, str] = {}
    for r in range(repeats):
        order = list(commands) if r % 2 == 0 else list(reversed(commands))  # interleaved, both ways round
        for key in order:
            if key in failed:
                continue
            try:
                seconds, out = timed(commands[key], env)
            except Failed as exc:
                failed[key] = str(exc)
                print(f"  {name}: {key} failed: {exc}", file=sys.stderr, flush=True)
                continue
            times[key].append(seconds)
            if key == "sweep":
                found[key].append(sweep_file(sweep_h5))
            elif key in ("top5", "trace"):
                found[key].append(hessian_file(top5_h5 if key == "top5" else trace_h5))
            elif key != "torch":
                found[key].append(last_json(out))
            print(f"  {name} repeat {r + 1}/{repeats}: {key} {seconds:.1f} s", file=sys.stderr, flush=True)
    for key in failed:
        times.pop(key), found.pop(key)
    return {"grid": grid, "forward_s": forward_s, "times": times, "found": found, "failed": failed}


def cell(r: dict, key: str) -> str:
    """A command's median [range], or that it failed."""
    if key in r["times"]:
        return span(r["times"][key])
    return "fails" if key in r.get("failed", {}) else "-"


def ratio(times: dict[str, list[float]], slow: str, fast: str) -> str:
    if slow not in times or fast not in times:
        return "-"
    return f"{statistics.median(times[slow]) / statistics.median(times[fast]):.2f}"


def top_difference(ours: list[float], theirs: list[float]) -> float:
    """The largest relative difference between landscape's largest eigenvalues and PyHessian's positive ones,
    each in descending order (deflated power iteration meets the positive ones in that order)."""
    positive = sorted((x for x in theirs if x > 0), reverse=True)
    return max((abs(a - b) / max(abs(a), 1e-30) for a, b in zip(ours, positive)), default=math.nan)


def table(results: dict[str, dict]) -> str:
    lines: list[str] = []

    def add(header: list[str], rows: list[str]) -> None:  # a table no command filled (--skip) is left out
        lines.extend(header + rows if rows else [])

    w = max([len("model"), *map(len, results)])  # the model column, as wide as the longest name

    rows: list[str] = []
    header = [
        "sweep (whole processes, seconds: median [min-max]; ratios of medians, above 1 = landscape faster)",
        f"{'model':{w}} {'grid':>5} {'strategy':16} {'landscape':>19} {'loop script':>19} {'loss-landscapes':>19}"
        f" {'loop/ls':>7} {'ll/ls':>6} {'sweep/limit':>11} {'sweep/best':>10}",
    ]
    for name, r in results.items():
        t, f = r["times"], r["found"]
        if "sweep" not in t:
            continue
        strategy = f["sweep"][-1]["strategy"]
        best = r["forward_s"] * r["grid"] ** 2
        passes = [p["passes_s"] for p in f.get("loop", []) if "passes_s" in p]  # runs from before: none
        own = statistics.median(s["seconds"] for s in f["sweep"])
        limit = f"{own / statistics.median(passes):11.2f}" if passes else f"{'-':>11}"
        rows.append(
            f"{name:{w}} {r['grid']:>5} {strategy:16} {span(t['sweep']):>19} {cell(r, 'loop'):>19}"
            f" {cell(r, 'll'):>19} {ratio(t, 'loop', 'sweep'):>7} {ratio(t, 'll', 'sweep'):>6}"
            f" {limit} {own / best:10.2f}"
        )
    add(header, rows)
    header = [
        "",
        "top-5 eigenvalues (whole processes; landscape: Lanczos, residual tol 1e-4; PyHessian: power iteration with"
        " deflation, tol 1e-3). fixed%: the process beyond importing torch and the Lanczos products (loading, choosing"
        " the product method, writing the file); setup%: choosing the product method and its warm-up alone (one of its"
        " products is Lanczos's first step); resid: landscape's largest ||Hv - lv||/|l|; diff: the two tools'"
        " largest relative difference, over PyHessian's positive eigenvalues in order (its power iteration finds the"
        " largest |l|, which may be negative; landscape's are the largest l); products: Hessian-vector products"
        " (landscape's, and PyHessian's: 'ph prod')",
        f"{'model':{w}} {'landscape':>19} {'PyHessian':>19} {'ph/ls':>6} {'fixed%':>7} {'setup%':>7} {'products':>8} {'resid':>8}"
        f" {'diff':>8} {'lanczos s':>9} {'power s':>9} {'ph prod':>7}",
    ]
    rows = []
    for name, r in results.items():
        t, f = r["times"], r["found"]
        if "top5" not in t:
            continue
        ours, theirs = f["top5"][-1], (f["ph-top5"][-1] if "ph-top5" in f else None)
        diff = top_difference(ours["top"], theirs["top"]) if theirs else math.nan
        own = statistics.median(h["seconds"].get("eigenvalues", 0.0) for h in f["top5"])
        floor = statistics.median(t["torch"]) if "torch" in t else 0.0
        fixed = 100 * (statistics.median(t["top5"]) - floor - own) / statistics.median(t["top5"])
        setup = (
            100
            * statistics.median(h["seconds"].get("setup", math.nan) for h in f["top5"])
            / statistics.median(t["top5"])
        )
        rows.append(
            f"{name:{w}} {span(t['top5']):>19} {cell(r, 'ph-top5'):>19} {ratio(t, 'ph-top5', 'top5'):>6}"
            f" {fixed:7.1f} {setup:7.1f} {ours['products']:8d} {ours['relative_residual']:8.1e} {diff:8.1e} {own:9.2f}"
            f" {statistics.median(p['seconds'] for p in f['ph-top5']) if theirs else math.nan:9.2f}"
            f" {theirs.get('products', math.nan) if theirs else math.nan:7}"
        )
    add(header, rows)
    header = [
        "",
        "trace (whole processes; landscape: Hutch++, 60 products, with its standard error; PyHessian: Hutchinson,"
        " stops when the running mean moves by under 1e-3 relative, at most 100 probes, which says nothing of its"
        " error: se is the standard error of its mean of probes). ph/ls at equal se: PyHessian's time had it run"
        " the probes its estimate needs for landscape's standard error, (se ph / se ls)^2 times its probes' seconds,"
        " its process's other seconds unchanged (both standard errors are estimates, from 20 and m probes)",
        f"{'model':{w}} {'landscape':>19} {'PyHessian':>19} {'ph/ls':>6} {'trace ls':>10} {'se ls':>8}"
        f" {'trace ph':>10} {'se ph':>8} {'ph probes':>9} {'ph/ls at equal se':>17}",
    ]
    rows = []
    for name, r in results.items():
        t, f = r["times"], r["found"]
        if "trace" not in t:
            continue
        ours = f["trace"][-1]
        theirs = f["ph-trace"][-1] if "ph-trace" in f else {"trace": math.nan, "probes": 0}
        equal = "-"
        if "ph-trace" in t and "std_error" in theirs:
            if ours["trace_se"] == 0:
                equal = "exact"
            else:
                work = statistics.median(p["seconds"] for p in f["ph-trace"])
                scaled = statistics.median(t["ph-trace"]) - work + work * (theirs["std_error"] / ours["trace_se"]) ** 2
                equal = f"{scaled / statistics.median(t['trace']):.2f}"
        rows.append(
            f"{name:{w}} {span(t['trace']):>19} {cell(r, 'ph-trace'):>19} {ratio(t, 'ph-trace', 'trace'):>6}"
            f" {ours['trace']:10.4g} {ours['trace_se']:8.2g} {theirs['trace']:10.4g}"
            f" {theirs.get('std_error', math.nan):8.2g} {theirs['probes']:9d} {equal:>17}"
        )
    add(header, rows)
    floor = [s for r in results.values() for s in r["times"].get("torch", [])]
    if floor:
        lines += ["", f"import torch (no teardown): {span(floor)} s (every process above pays it)"]
    for name, r in results.items():
        for key, why in r.get("failed", {}).items():
            lines.append(f"{name}: {key} fails: {why}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--entries",
        default=",".join(suite_models.SUITE),
        help="comma-separated suite models (held out: " + ",".join(suite_models.HELD_OUT) + ")",
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--work", type=Path, default=HERE / ".suite", help="checkpoints, data and results files")
    ap.add_argument("--skip", default="", help="comma-separated: sweep,loop,ll,top5,ph-top5,trace,ph-trace,torch")
    ap.add_argument("--grid", type=int, help="one grid size for every model (default: 51, or 21 for slow points)")
    ap.add_argument("--json", type=Path, help="also write the raw timings here (after each model)")
    ap.add_argument("--tables-from", type=Path, nargs="+", help="print the tables of earlier --json files, run nothing")
    args = ap.parse_args()
    if args.tables_from:
        merged: dict[str, dict] = {}
        for path in args.tables_from:  # later files add models, or commands to a model
            for name, r in json.loads(path.read_text()).items():
                into = merged.setdefault(name, {**r, "times": {}, "found": {}, "failed": {}})
                for part in ("times", "found", "failed"):
                    into[part].update(r.get(part, {}))
        print(table(merged))
        return
    args.work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    load = os.getloadavg()
    print(f"{os.cpu_count()} cores, load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, {args.repeats} repeats")
    results = {}
    for name in args.entries.split(","):
        results[name] = run_entry(
            name, args.work, args.repeats, env, set(filter(None, args.skip.split(","))), args.grid
        )
        if args.json:
            args.json.write_text(json.dumps(results, indent=1, default=str))
    print(table(results))
    load = os.getloadavg()
    print(f"load at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
