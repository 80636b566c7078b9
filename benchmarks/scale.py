"""Scale: ranks, memory per command, a 124M-parameter model on the CPU, and the GPU path when present.

Run:  .venv/bin/python benchmarks/scale.py [--parts ranks,memory,live,large,gpu] [--sizes 10M,124M]

- ranks: the same sweep with 1 process and with `torchrun --nproc-per-node 2` (gloo), each rank with
  one thread; points/s from the sweep's own timer (the `seconds` attribute of the results file).
- memory: Hugging Face GPT-2 models with random weights (10M: 6 layers, width 320, vocabulary 8192;
  124M: GPT-2-small's shapes), saved with save_pretrained, 2 sequences of 32 tokens, next-token loss.
  Each `landscape` command runs as its own process; its peak RSS comes from the kernel (wait4), beside
  that of a process that loads the same model and data and makes one forward pass. The excess over
  it is also given in P-sized float32 vectors (4 P bytes).
- live (not in the default parts): `hessian --top-k 5` on the memory part's models (not 124M) through the
  library, with freed memory handed back at once, so the peak is what the run holds: the basis and the
  P-sized vectors beyond it.
- large: the 124M model through `sweep` 21x21, `hessian --top-k 5 --trace` and `roughness`, wall time
  and peak RSS of each (the memory part's 124M rows are this).
- gpu (only when CUDA is available): the 124M model, a 5x5 grid in bfloat16 and float32: points/s,
  the ratio to the forward-only limit, and peak GPU memory.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
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


GPT2_SIZES = {
    "10M": {"n_layer": 6, "n_head": 5, "n_embd": 320, "vocab_size": 8192},
    "124M": {},  # GPT-2 small: 12 layers, 12 heads, width 768, vocabulary 50257 (tied head)
}
LANDSCAPE = [sys.executable, "-m", "landscape"]
GPU = "cuda"  # the gpu part's device (a dry run of its code on the CPU sets "cpu")


def prepare_gpt2(folder: Path | str, size: str) -> tuple[Path, Path, int]:
    """A randomly initialized Hugging Face GPT-2 of `size` saved in `folder`, and 2 x 32 tokens; (model, data, P)."""
    import transformers

    folder = Path(folder)
    config = transformers.GPT2Config(n_positions=64, bos_token_id=0, eos_token_id=0, **GPT2_SIZES[size])
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    out, data = folder / f"gpt2-{size}", folder / f"tokens-{size}.pt"
    model.save_pretrained(out)
    torch.save({"input_ids": torch.randint(0, config.vocab_size, (2, 32))}, data)
    return out, data, sum(p.numel() for p in model.parameters())


def prepared_gpt2(folder: Path, size: str) -> tuple[Path, Path, int]:
    """`prepare_gpt2` in a process of its own: a child's peak RSS (wait4) counts its parent's resident
    memory at the fork, so this process must not hold the model (the 10M rows read 1.34 GiB, the 124M
    model's, when the 124M model was made here first)."""
    code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import scale; print(scale.prepare_gpt2(*sys.argv[1:])[2])"
    done = subprocess.run([sys.executable, "-c", code, str(folder), size], capture_output=True, text=True, check=True)
    return folder / f"gpt2-{size}", folder / f"tokens-{size}.pt", int(done.stdout.split()[-1])


FORWARD = """
import sys, torch, transformers
model = transformers.GPT2LMHeadModel.from_pretrained(sys.argv[1]).eval()
ids = torch.load(sys.argv[2])["input_ids"]
with torch.no_grad():
    model(ids).logits.sum().item()
"""


def measured(args: list[str], cwd: Path) -> tuple[float, int, str]:
    """Run a process; (wall seconds, its peak RSS in bytes from the kernel (wait4), its last line of output)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t = time.perf_counter()
    proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - t
    if proc.returncode:
        raise SystemExit(f"{' '.join(args)} failed:\n{out[-2000:]}")
    lines = [ln for ln in out.splitlines() if ln.strip()]
    return seconds, usage.ru_maxrss * 1024, lines[-1] if lines else ""


def commands(model: Path, data: Path, grid: int) -> dict[str, list[str]]:
    """Each measured command by its label."""
    load = ["--checkpoint", str(model), "--data", str(data), "--loss", "next-token", "--force"]
    hessian = [*LANDSCAPE, "hessian", *load]
    return {
        f"sweep {grid}x{grid}": [
            *LANDSCAPE,
            "sweep",
            *load,
            "--x",
            f"-1:1:{grid}",
            "--y",
            f"-1:1:{grid}",
            "-o",
            "s.h5",
        ],
        "hessian --top-k 5": [*hessian, "--top-k", "5", "-o", "h.h5"],
        "hessian --top-k 0 --trace": [*hessian, "--top-k", "0", "--trace", "-o", "t.h5"],
        "hessian --top-k 0 --density": [*hessian, "--top-k", "0", "--density", "-o", "d.h5"],
        "hessian --top-k 5 --trace": [*hessian, "--top-k", "5", "--trace", "-o", "ht.h5"],
        "roughness (10 dirs x 11 pts)": [
            *LANDSCAPE,
            "roughness",
            *load,
            "--directions",
            "10",
            "--steps",
            "10",
            "-o",
            "r.h5",
        ],
    }


def outcome(path: Path) -> str:
    """What a command's results file says: Lanczos steps and convergence, the trace, SLQ, roughness, points."""
    import h5py

    with h5py.File(path, "r") as f:
        if "hessian" in f:
            h, parts = f["hessian"], []
            if "eigenvalues" in h:
                ev = h["eigenvalues"]
                parts.append(
                    f"lambda_max {ev[0]:.4g}, {int(h['converged'][()].sum())}/{ev.shape[0]} converged "
                    f"in {ev.attrs['iterations']} steps"
                )
            if "trace" in h:
                parts.append(f"trace {float(h['trace'][()]):.4g} +- {h['trace'].attrs['std_error']:.2g}")
            if "lanczos" in h:
                parts.append(f"SLQ re-orthogonalized: {bool(h['lanczos'].attrs['reorthogonalized'])}")
            return "; ".join(parts)
        if "sweep" in f:
            return f"{int(f['sweep/done'][()].sum())} points"
        if "roughness" in f:
            return f"RI {f['roughness'].attrs.get('ri', float('nan')):.3g}"
    return ""


def memory_table(sizes: list[str], grid: int, only: tuple[str, ...]) -> None:  # only: labels, the sweep's by "sweep"
    """Peak RSS of each command as its own process, against a process that makes one forward pass."""
    print("Peak RSS per command (CPU, float32, 2 x 32 tokens; P-vectors: the excess over the forward pass in 4P bytes)")
    print(f"{'model':>6} {'command':28} {'wall s':>7} {'peak GiB':>8} {'over fwd GiB':>12} {'P-vectors':>9}  outcome")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for size in sizes:
            model, data, n = prepared_gpt2(work, size)
            _, base, _ = measured([sys.executable, "-c", FORWARD, str(model), str(data)], work)
            print(f"{size:>6} {'forward pass (transformers)':28} {'':>7} {base / 2**30:8.2f}")
            for what, args in commands(model, data, grid).items():
                if (
                    what.split(" ", 1)[0] != "sweep"
                    and what not in only
                    or what.startswith("sweep")
                    and "sweep" not in only
                ):
                    continue
                seconds, peak, _ = measured(args, work)
                over = peak - base
                print(
                    f"{size:>6} {what:28} {seconds:7.0f} {peak / 2**30:8.2f} {over / 2**30:12.2f} {over / (4 * n):9.1f}"
                    f"  {outcome(work / args[args.index('-o') + 1])}"
                )


LIVE = """
import ctypes, gc, json, sys, torch, transformers
ctypes.CDLL(None).mallopt(-3, 1 << 16), ctypes.CDLL(None).mallopt(-1, 1 << 16)  # freed blocks go back at once
import landscape as ls
def rss(key="VmRSS:"):
    return next(int(ln.split()[1]) * 1024 for ln in open("/proc/self/status") if ln.startswith(key))
model = transformers.GPT2LMHeadModel.from_pretrained(sys.argv[1]).eval()
problem = ls.Problem(model, torch.load(sys.argv[2]), loss="next-token")
with torch.no_grad():
    model(**torch.load(sys.argv[2]))
gc.collect()
base = rss()
open("/proc/self/clear_refs", "w").write("5")  # the kernel's peak (VmHWM) from here
r = ls.hessian(problem, say=lambda msg: None, **json.loads(sys.argv[3]))
print(json.dumps({"peak": rss("VmHWM:") - base, "steps": r.model.eigen.iterations if r.model.eigen else 0, "P": problem.layout.size}))
"""


def live_table(sizes: list[str]) -> None:
    """The Lanczos run's live memory beyond its basis: `hessian --top-k 5` through the library in a process
    whose freed blocks over 64 KB go back to the kernel at once (the CLI keeps up to 1 GiB for reuse, which
    its RSS counts), peak over a forward pass from the kernel's high-water mark, in P-sized float32 vectors
    (the basis is float32 at these sizes: one vector per step)."""
    import json

    print("Live peak of hessian --top-k 5 (library, freed memory returned at once), in P-sized float32 vectors")
    print(f"{'model':>6} {'steps':>5} {'peak over fwd':>13} {'beyond the basis':>16}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for size in sizes:
            model, data, _ = prepared_gpt2(work, size)
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            args = [sys.executable, "-c", LIVE, str(model), str(data), json.dumps({"top_k": 5})]
            out = subprocess.run(args, env=env, capture_output=True, text=True, check=True).stdout.splitlines()[-1]
            got = json.loads(out)
            vectors = got["peak"] / (4 * got["P"])
            print(f"{size:>6} {got['steps']:5d} {vectors:13.1f} {vectors - got['steps']:16.1f}")


def gpt2_small() -> torch.nn.Module:
    """GPT-2-small shapes in plain torch (no transformers needed on the device): 12 layers, 12 heads, width 768,
    vocabulary 50257, the head tied to the token embedding: 124M parameters (random weights)."""
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
            self.head.weight = self.tok.weight

        def forward(self, idx):
            x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
            return self.head(self.ln(self.blocks(x)))[:, -1]  # next-token logits at the last position

    model = GPT()
    for m in model.modules():  # GPT-2's initialization: N(0, 0.02) weights, zero biases (the loss near ln 50257)
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
    return model


def _gpu_problem(dtype: torch.dtype, sequences: int):  # type: ignore[no-untyped-def]
    from landscape.problem import make_problem

    torch.manual_seed(0)
    model = gpt2_small()
    x = torch.randint(0, 50257, (sequences, 256), generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 50257, (sequences,), generator=torch.Generator().manual_seed(2))
    return make_problem(
        model, model.state_dict(), x, y, torch.nn.functional.cross_entropy,
        device=torch.device(GPU), dtype=dtype, batch_size=sequences,
    )  # fmt: skip


def _peak() -> float:
    return torch.cuda.max_memory_allocated() / 2**30


def out_of_memory_on_purpose(coords: torch.Tensor, expected: np.ndarray) -> None:
    """A grid chunk sized too big (vmap, 512 points of 0.5 GB weights per call): it must shrink and finish."""
    import landscape as ls
    from landscape.strategies import build_strategy
    from landscape.strategies.base import evaluate_shrinking

    p = _gpu_problem(torch.float32, 64)
    dirs = ls.random_axes(p, 2, seed=0).directions
    strat = build_strategy("vmap", p, dirs, points_per_call=512)  # 512 x 0.5 GB of weights: cannot fit
    said: list[str] = []
    torch.cuda.reset_peak_memory_stats()
    got = evaluate_shrinking(strat, coords, said.append)
    ok = np.allclose(got.loss.numpy(), expected, rtol=1e-4)
    print(f"out of memory on purpose (vmap, 512 points per call): {len(said)} shrink(s), finished with {strat.k} "
          f"points per call, values equal to the loop's: {ok}, peak {_peak():.1f} GiB")  # fmt: skip
    strat.close()
    del p, strat
    torch.cuda.empty_cache()


def gpu_large() -> None:
    """The device check of issue 20 on the 124M model: sweep pace against the forward-only limit in bfloat16 and
    float32 (and the bfloat16 error), a grid chunk made too big on purpose (out of memory, shrinks, finishes),
    curvature with the Lanczos basis on the device and on the host, and peak GPU memory of each."""
    import landscape as ls
    from landscape.strategies import choose_strategy, grid_coords

    print(f"GPU {torch.cuda.get_device_name()}: GPT-2-small shape (124M, tied head), 64 sequences of 256 tokens")
    print(f"{'dtype':9} {'params':>8} {'strategy':9} {'pts/s':>7} {'sweep/limit':>11} {'peak GiB':>8}")
    coords = grid_coords([torch.linspace(-1, 1, 5)] * 2)
    losses = {}
    for dtype in (torch.bfloat16, torch.float32):
        p = _gpu_problem(dtype, 64)
        dirs = ls.random_axes(p, 2, seed=0).directions
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
        t = time.perf_counter()
        choice = choose_strategy(p, dirs, coords[:4])
        rest = choice.strategy.evaluate(coords[4:])
        torch.cuda.synchronize()
        t_sweep = time.perf_counter() - t
        first = choice.probe_result if choice.probe_result is not None else choice.strategy.evaluate(coords[:4])
        losses[dtype] = np.concatenate([first.loss.numpy(), rest.loss.numpy()])
        with torch.no_grad():
            for _ in range(3):
                torch.cuda.synchronize()
                t = time.perf_counter()
                float(p.loss_fn(p.model(p.x), p.y))
                torch.cuda.synchronize()
                t_fwd = time.perf_counter() - t
        n = coords.shape[0]
        print(
            f"{str(dtype).split('.')[1]:9} {p.layout.size / 1e6:7.0f}M {choice.strategy.name:9} {n / t_sweep:7.2f} "
            f"{t_sweep / (n * t_fwd):11.2f} {_peak():8.1f}"
        )
        choice.strategy.close()
        del p, choice
        torch.cuda.empty_cache()
    a, b = losses[torch.float32], losses[torch.bfloat16]
    print(
        f"bfloat16 vs float32 loss over the grid: max |diff| {np.abs(a - b).max():.3g}, max relative {np.abs(a - b).max() / np.abs(a).max():.3g}"
    )

    if GPU != "cpu":  # a dry run of this code on the host skips it: 512 points' weights would fill the host
        out_of_memory_on_purpose(coords, losses[torch.float32])
    p = _gpu_problem(torch.float32, 16)
    print(f"{'curvature (16 x 256 tokens)':44} {'s':>6} {'peak GiB':>8}")
    for label, kw in [
        ("hessian top-5 + trace", {}),
        ("hessian top-5 + trace, --basis-on-host", {"basis_on_host": True}),
        ("density, 2 probes x 30 steps", {"top_k": 0, "density": True, "probes": 2, "steps": 30}),
    ]:
        torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        args = {"top_k": 5, "trace": True, **kw}
        r = ls.hessian(p, say=lambda msg: None, **args)
        extra = f"  lambda_max {r.lambda_max:.4g}" if args["top_k"] else ""
        print(f"{label:44} {time.perf_counter() - t:6.1f} {_peak():8.1f}{extra}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="ranks,memory,large,gpu")
    ap.add_argument("--sample", default="cnn", help="the ranks part's sample")
    ap.add_argument("--grid", type=int, default=21)
    ap.add_argument("--memory-grid", type=int, default=3, help="the memory part's sweep grid (its peak, not its time)")
    ap.add_argument("--sizes", default="10M,124M", help="the memory part's models")
    args = ap.parse_args()
    parts = args.parts.split(",")
    if "ranks" in parts:
        cpu_ranks(args.sample, args.grid)
    if "memory" in parts:
        each = (
            "sweep",
            "hessian --top-k 5",
            "hessian --top-k 0 --trace",
            "hessian --top-k 0 --density",
            "roughness (10 dirs x 11 pts)",
        )
        memory_table([s for s in args.sizes.split(",") if s != "124M"], args.memory_grid, each)
    if "live" in parts:
        live_table([s for s in args.sizes.split(",") if s != "124M"])
    if "large" in parts:  # the 124M density (800 products, about an hour on 2 cores) is left out
        memory_table(["124M"], args.grid, ("sweep", "hessian --top-k 5 --trace", "roughness (10 dirs x 11 pts)"))
    if "gpu" in parts:
        if torch.cuda.is_available():
            gpu_large()
        else:
            print("no CUDA device: GPU part skipped")


if __name__ == "__main__":
    main()
