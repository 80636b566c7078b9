"""The scripts users run today, one per process, on a suite model (benchmarks/suite_models.py).

    python benchmarks/baselines.py loop      ENTRY WORK GRID   # per-point loop over a 2D grid
    python benchmarks/baselines.py ll        ENTRY WORK GRID   # loss-landscapes' random_plane
    python benchmarks/baselines.py pyhessian-top5 ENTRY WORK   # PyHessian's top-5 eigenvalues
    python benchmarks/baselines.py pyhessian-trace ENTRY WORK  # PyHessian's trace

Each prints one JSON line: what it computed and the seconds of its main work (the suite times the
whole process from outside). loop also times its forward passes alone (`passes_s`: the forward-only
limit of the grid, in the conditions of a sweep, new weights at every point), and one warm pass at the
checkpoint's weights (`forward_s`, the best of two: what decides the grid size).
"""

from __future__ import annotations

import importlib
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import suite_models  # noqa: E402


def filter_normalized(model: torch.nn.Module) -> list[torch.Tensor]:
    """Li et al.'s direction: random normal, each filter scaled to its weight's norm, biases/BN zero."""
    out = []
    for p in model.parameters():
        d = torch.randn_like(p)
        if p.dim() <= 1:
            d.zero_()
        else:
            flat_p, flat_d = p.detach().flatten(1), d.flatten(1)
            d = (flat_d * (flat_p.norm(dim=1, keepdim=True) / (flat_d.norm(dim=1, keepdim=True) + 1e-10))).view_as(p)
        out.append(d)
    return out


def loop(entry: str, work: Path, grid: int) -> dict:
    model, x, y, loss_fn = suite_models.load(entry, work)
    torch.manual_seed(0)
    d1, d2 = filter_normalized(model), filter_normalized(model)
    params = list(model.parameters())
    w = [p.detach().clone() for p in params]
    axis = torch.linspace(-1, 1, grid)
    with torch.no_grad():
        forward = []
        for _ in range(3):
            t = time.perf_counter()
            float(loss_fn(model(x), y))
            forward.append(time.perf_counter() - t)
        start = time.perf_counter()
        losses, passes = [], 0.0
        for a in axis:
            for b in axis:
                for p, w0, u, v in zip(params, w, d1, d2):
                    p.copy_(w0 + a * u + b * v)
                t = time.perf_counter()
                losses.append(float(loss_fn(model(x), y)))
                passes += time.perf_counter() - t
    return {
        "seconds": time.perf_counter() - start,
        "forward_s": min(forward[1:]),
        "passes_s": passes,
        "points": len(losses),
    }


def ll(entry: str, work: Path, grid: int) -> dict:
    import loss_landscapes
    import loss_landscapes.metrics

    model, x, y, loss_fn = suite_models.load(entry, work)
    torch.manual_seed(0)
    metric = loss_landscapes.metrics.Loss(loss_fn, x, y)
    start = time.perf_counter()
    with torch.no_grad():
        surface = loss_landscapes.random_plane(model, metric, distance=2, steps=grid, normalization="filter")
    return {"seconds": time.perf_counter() - start, "points": int(surface.size)}


def math_attention():  # type: ignore[no-untyped-def]
    """PyHessian's double backward fails through the fused attention kernels ("derivative for
    aten::_scaled_dot_product_flash_attention_for_cpu_backward is not implemented"): a user who knows
    runs it under the math kernel, as landscape does (the suite gives PyHessian that chance)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH)


def pyhessian_top5(entry: str, work: Path) -> dict:
    """PyHessian's top-5 eigenvalues with its defaults (power iteration with deflation, tol 1e-3, 100 steps)."""
    from pyhessian import hessian

    model, x, y, loss_fn = suite_models.load(entry, work)
    products = _count_products()
    torch.manual_seed(0)
    start = time.perf_counter()
    with math_attention():
        eigs, _ = hessian(model, loss_fn, data=(x, y), cuda=False).eigenvalues(top_n=5)
    return {
        "seconds": time.perf_counter() - start,
        "top": sorted((float(e) for e in eigs), reverse=True),
        "products": products[0],
    }


def _count_products() -> list[int]:
    """PyHessian's Hessian-vector products from here on, counted in the one-element list returned (its
    module's own `hessian_vector_product`, wrapped: a counter's cost beside a product's)."""
    module = importlib.import_module("pyhessian.hessian")  # `pyhessian.hessian` is the class of that name
    count = [0]
    product = module.hessian_vector_product

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        count[0] += 1
        return product(*args, **kwargs)

    module.hessian_vector_product = counted
    return count


def pyhessian_trace(entry: str, work: Path) -> dict:
    """PyHessian's trace with its defaults (Hutchinson, up to 100 probes, tol 1e-3)."""
    from pyhessian import hessian

    model, x, y, loss_fn = suite_models.load(entry, work)
    torch.manual_seed(0)
    start = time.perf_counter()
    with math_attention():
        trace = hessian(model, loss_fn, data=(x, y), cuda=False).trace()
    seconds = time.perf_counter() - start
    m = len(trace)  # its estimate is the mean of m probes' v^T H v: the standard error of a mean
    se = statistics.stdev(trace) / math.sqrt(m) if m > 1 else math.nan
    return {"seconds": seconds, "trace": float(sum(trace) / m), "probes": m, "std_error": se}


if __name__ == "__main__":
    mode, entry, work = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    if mode in ("pyhessian-top5", "pyhessian-trace"):
        result = {"pyhessian-top5": pyhessian_top5, "pyhessian-trace": pyhessian_trace}[mode](entry, work)
    else:
        result = {"loop": loop, "ll": ll}[mode](entry, work, int(sys.argv[4]))
    print(json.dumps(result))
