"""Scale-out: grid points per second with 1 and 2 torchrun ranks on CPU; a 100M+ model on a GPU when present.

Run:  .venv/bin/python benchmarks/scale.py [--sample cnn] [--grid 21]

CPU part: the same sweep with 1 process and with `torchrun --nproc-per-node 2` (gloo), each rank with
one thread; points/s from the sweep's own timer (the `seconds` attribute of the results file).
GPU part (only when CUDA is available): a randomly initialized GPT-2-small-shaped transformer
(124M parameters, sequence 256, 64 sequences), a 5x5 grid in bfloat16 and float32: points/s, the
ratio to the forward-only limit, and peak GPU memory.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def cpu_ranks(sample: str, grid: int) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    args = ["sweep", "--sample", sample, "--x", f"-1:1:{grid}", "--y", f"-1:1:{grid}", "--device", "cpu", "--force"]
    from landscape.io.results import read_sweep

    print(f"CPU, sample {sample}, grid {grid}x{grid}, 1 thread per rank")
    print(f"{'ranks':>5} {'pts/s':>8} {'speed-up':>8}")
    base = None
    with tempfile.TemporaryDirectory() as tmp:
        for ranks in (1, 2):
            out = str(Path(tmp) / f"r{ranks}.h5")
            launcher = (
                [sys.executable, "-m", "landscape"]
                if ranks == 1
                else [
                    sys.executable,
                    "-m",
                    "torch.distributed.run",
                    "--standalone",
                    f"--nproc-per-node={ranks}",
                    "-m",
                    "landscape",
                ]
            )
            subprocess.run([*launcher, *args, "-o", out], env=env, check=True, capture_output=True)
            s = read_sweep(out)
            rate = s["done"].size / float(s["sweep_attrs"]["seconds"])
            base = base or rate
            print(f"{ranks:5d} {rate:8.1f} {rate / base:8.2f}")


def gpt2_small() -> torch.nn.Module:
    """GPT-2-small shapes: 12 layers, 12 heads, width 768, vocabulary 50257 (random weights)."""
    import torch.nn as nn

    class Block(nn.Module):
        def __init__(self, d: int, heads: int):
            super().__init__()
            self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
            self.fc, self.out = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
            self.heads = heads

        def forward(self, x):
            b, t, d = x.shape
            q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).unbind(2)
            a = nn.functional.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
            )
            x = x + self.proj(a.transpose(1, 2).reshape(b, t, d))
            return x + self.out(nn.functional.gelu(self.fc(self.ln2(x))))

    class GPT(nn.Module):
        def __init__(self, vocab=50257, d=768, layers=12, heads=12, ctx=256):
            super().__init__()
            self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(ctx, d)
            self.blocks = nn.Sequential(*[Block(d, heads) for _ in range(layers)])
            self.ln, self.head = nn.LayerNorm(d), nn.Linear(d, vocab, bias=False)

        def forward(self, idx):
            x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
            return self.head(self.ln(self.blocks(x)))[:, -1]  # next-token logits at the last position

    return GPT()


def gpu_large() -> None:
    from landscape.axes import random_axes
    from landscape.problem import make_problem
    from landscape.strategies import choose_strategy, grid_coords

    torch.manual_seed(0)
    x = torch.randint(0, 50257, (64, 256))
    y = torch.randint(0, 50257, (64,))
    print(f"GPU {torch.cuda.get_device_name()}: GPT-2-small shape, 64 sequences of 256 tokens, 5x5 grid")
    print(f"{'dtype':9} {'params':>8} {'strategy':9} {'pts/s':>7} {'sweep/limit':>11} {'peak GiB':>8}")
    for dtype in (torch.bfloat16, torch.float32):
        model = gpt2_small()
        torch.cuda.reset_peak_memory_stats()
        p = make_problem(
            model,
            model.state_dict(),
            x,
            y,
            torch.nn.functional.cross_entropy,
            device=torch.device("cuda"),
            dtype=dtype,
            batch_size=64,
        )
        dirs = random_axes(p, 2).directions
        coords = grid_coords([torch.linspace(-1, 1, 5)] * 2)
        torch.cuda.synchronize()
        t = time.perf_counter()
        choice = choose_strategy(p, dirs, coords[:4])
        choice.strategy.evaluate(coords[4:])
        torch.cuda.synchronize()
        t_sweep = time.perf_counter() - t
        with torch.no_grad():
            for _ in range(2):
                torch.cuda.synchronize()
                t = time.perf_counter()
                float(p.loss_fn(p.model(p.x), p.y))
                torch.cuda.synchronize()
                t_fwd = time.perf_counter() - t
        n = coords.shape[0]
        print(
            f"{str(dtype).split('.')[1]:9} {p.layout.size / 1e6:7.0f}M {choice.strategy.name:9} {n / t_sweep:7.2f} "
            f"{t_sweep / (n * t_fwd):11.2f} {torch.cuda.max_memory_allocated() / 2**30:8.1f}"
        )
        choice.strategy.close()
        del p, model
        torch.cuda.empty_cache()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sample", default="cnn")
    ap.add_argument("--grid", type=int, default=21)
    args = ap.parse_args()
    cpu_ranks(args.sample, args.grid)
    if torch.cuda.is_available():
        gpu_large()
    else:
        print("no CUDA device: GPU part skipped")


if __name__ == "__main__":
    main()
