"""Peak memory and time of a sweep on data too large to stack: streamed against collected.

    .venv/bin/python benchmarks/streaming.py [--images 200000] [--grid 3] [--repeats 1] [--work DIR]

The data are CIFAR-sized images (3x32x32, uint8) in a memory-mapped file, read by a Dataset the way
a user writes one (one item at a time, made float32): 200,000 images are 0.61 GB on disk and 2.46 GB
as float32 tensors. A small BatchNorm CNN is swept over a grid as whole `landscape sweep` processes:
`--stream` (batch by batch on every pass), `--no-stream` (collected into memory once), and the
default (decided by size: the output says which). For each: wall seconds, seconds per point,
peak RSS (the kernel's high-water mark, which counts the memory-mapped file's pages the process
touched: the kernel can drop those) and peak anonymous memory (sampled every 20 ms: what the
process itself allocated, which only the process can free).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

TASK = """
import os
import numpy as np
import torch
import torch.nn as nn


class Images(torch.utils.data.Dataset):
    def __init__(self):
        n = int(os.environ["STREAM_BENCH_IMAGES"])
        self.images = np.memmap(os.environ["STREAM_BENCH_FILE"], dtype=np.uint8, mode="r", shape=(n, 3, 32, 32))

    def __len__(self):
        return self.images.shape[0]

    def __getitem__(self, i):
        return torch.from_numpy(self.images[i].astype(np.float32) / 255.0), i % 10


def data():
    return Images()


def make():
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 8 * 8, 10),
    )
"""


def prepare(work: Path, images: int) -> dict[str, str]:
    """The memory-mapped images, the task file and a checkpoint (BatchNorm statistics not at their defaults)."""
    work.mkdir(parents=True, exist_ok=True)
    blob = work / f"images-{images}.u8"
    if not blob.exists() or blob.stat().st_size != images * 3 * 32 * 32:
        rng = np.random.default_rng(0)
        with open(blob, "wb") as f:
            for start in range(0, images, 10_000):
                rng.integers(0, 256, size=(min(10_000, images - start), 3, 32, 32), dtype=np.uint8).tofile(f)
    (work / "task.py").write_text(TASK)
    env = {**os.environ, "STREAM_BENCH_FILE": str(blob), "STREAM_BENCH_IMAGES": str(images)}
    code = (
        "import sys, torch; sys.path.insert(0, sys.argv[1]); import task; torch.manual_seed(0); m = task.make(); "
        "[b.running_var.uniform_(0.5, 2) for b in m.modules() if isinstance(b, torch.nn.BatchNorm2d)]; "
        "torch.save(m.state_dict(), sys.argv[1] + '/w.pt')"
    )
    subprocess.run([sys.executable, "-c", code, str(work)], check=True, env=env)
    return env


def anon_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def run(cmd: list[str], env: dict[str, str]) -> dict[str, object]:
    """Wall seconds, the kernel's peak RSS and the sampled peak anonymous memory of one process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    peak = [0]
    done = threading.Event()

    def sample() -> None:  # not proc.poll(): it reaps the child, and then wait4 below found none (a race)
        while not done.is_set():
            peak[0] = max(peak[0], anon_kb(proc.pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    done.set()
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{out}")
    said = next(
        (line.strip() for line in out.splitlines() if "samples streamed" in line or "held in memory" in line), ""
    )
    return {"seconds": seconds, "rss_gb": usage.ru_maxrss / 2**20, "anon_gb": peak[0] / 2**20, "said": said}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=200_000)
    ap.add_argument("--grid", type=int, default=3, help="points per axis of the 2D grid")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "landscape-streaming-bench")
    args = ap.parse_args()
    env = prepare(args.work, args.images)
    task = args.work / "task.py"
    base = [sys.executable, "-m", "landscape", "sweep", "--model", f"{task}:make", "--data", f"{task}:data",
            "--checkpoint", str(args.work / "w.pt"), "--x", f"-1:1:{args.grid}", "--y", f"-1:1:{args.grid}",
            "--force"]  # fmt: skip
    modes = {"--stream": ["--stream"], "--no-stream": ["--no-stream"], "default": []}
    results: dict[str, list[dict[str, object]]] = {m: [] for m in modes}
    for r in range(args.repeats):
        order = list(modes) if r % 2 == 0 else list(reversed(modes))
        for mode in order:
            out = args.work / f"sweep{modes[mode][0] if modes[mode] else ''}.h5"
            results[mode].append(run([*base, *modes[mode], "-o", str(out)], env))
            print(f"  {mode:12s} {results[mode][-1]}", flush=True)
    points = args.grid**2
    gb = args.images * 3 * 32 * 32 * 4 / 1e9
    print(f"\nsweep of a BatchNorm CNN on {args.images:,} memory-mapped 3x32x32 images ({gb:.2f} GB as float32), "
          f"{args.grid}x{args.grid} grid, {args.repeats} repeat(s); median [min-max]")  # fmt: skip
    print(f"{'mode':12s} {'wall s':>22s} {'s/point':>8s} {'peak RSS GB':>22s} {'peak anon GB':>22s}")

    def cell(rows: list[dict[str, object]], key: str) -> str:
        vals = [float(x[key]) for x in rows]  # type: ignore[arg-type]
        return f"{statistics.median(vals):.2f} [{min(vals):.2f}-{max(vals):.2f}]"

    for mode, rows in results.items():
        per_point = statistics.median(float(x["seconds"]) for x in rows) / points  # type: ignore[arg-type]
        print(
            f"{mode:12s} {cell(rows, 'seconds'):>22s} {per_point:8.2f} {cell(rows, 'rss_gb'):>22s} {cell(rows, 'anon_gb'):>22s}"
        )
    print(f"default said: {results['default'][0]['said']}")


if __name__ == "__main__":
    main()
