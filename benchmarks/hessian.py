"""Curvature: landscape against PyHessian (its defaults) on the sample models, against exact values.

    .venv/bin/pip install -e '.[bench]'        # pyhessian==0.1
    .venv/bin/python benchmarks/hessian.py [--samples mlp cnn linreg] [--threads 1]

For each sample (float32 products, the CLI default; exact values from the full float64 Hessian
assembled column by column from exact products, then eigh):
  top-5   HVPs (median of --repeats runs), wall time (operator setup included; best of --repeats runs,
          interleaved with PyHessian's, each pair from the same seed) and max relative error of the 5 eigenvalues;
  trace   HVPs, relative error (PyHessian: Hutchinson, up to 100 probes, tol 1e-3; landscape: Hutch++);
  density HVPs and L1 distance to the exactly smoothed spectrum (same sigma and grid for both;
          PyHessian: SLQ, 1 probe x 100 steps; landscape: 10 probes x 80 steps), and the lowest node;
  and the HVP-to-gradient time ratio of the method landscape chose.
Then, for top-5, work against precision: each tool at several tolerances (PyHessian's is the relative
change of an eigenvalue between power steps, ours the residual ||Hv - lambda v|| / |lambda|), so the two
can be compared at equal accuracy too: the cheapest setting of each whose worst error is <= 1e-4.
PyHessian 0.1 needs cuda=False on the CPU and calls torch.eig (removed from torch); this process
patches torch.eig with an eigh-based stand-in so its density() runs. Timings on a shared machine are
noisy: read the ratios, not the absolute times.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time

import numpy as np
import torch

from landscape.curvature import CurvatureOperator, density_from_lanczos, hutchpp, lanczos, slq
from landscape.curvature.density import exact_density, gaussian_mixture, l1_distance
from landscape.host import keep_freed_memory
from landscape.io.load import LoadSpec, load_problem


def _torch_eig(T, eigenvectors=True):  # what PyHessian's density() expects from the removed torch.eig
    w, V = torch.linalg.eigh(T)
    return torch.stack([w, torch.zeros_like(w)], dim=1), V


torch.eig = _torch_eig  # type: ignore[attr-defined]


def exact_spectrum(name: str, samples: int | None) -> np.ndarray:
    """Eigenvalues (ascending) of the exact float64 Hessian, assembled from products with unit vectors."""
    p, _ = load_problem(LoadSpec(sample=name, dtype="float64", device="cpu", samples=samples))
    op = CurvatureOperator(p, check=False)
    n = op.size
    H = torch.empty(n, n, dtype=torch.float64)
    for s in range(0, n, 64):
        E = torch.zeros(min(64, n - s), n, dtype=torch.float64)
        E[torch.arange(E.shape[0]), torch.arange(s, s + E.shape[0])] = 1.0
        H[s : s + E.shape[0]] = op.matmat(E)
    assert float((H - H.T).abs().max()) <= 1e-8 * float(H.abs().max())
    return torch.linalg.eigvalsh(0.5 * (H + H.T)).numpy()


def _counting_pyhessian():
    """PyHessian's module with its hessian_vector_product counted (count["n"])."""
    import pyhessian  # noqa: F401  (its __init__ shadows the submodule name with the class)

    ph = sys.modules["pyhessian.hessian"]
    count = {"n": 0}
    real = getattr(ph.hessian_vector_product, "real", ph.hessian_vector_product)

    def counted(gradsH, params, v):
        count["n"] += 1
        return real(gradsH, params, v)

    counted.real = real  # type: ignore[attr-defined]
    ph.hessian_vector_product = counted
    return ph, count


def pyhessian_top5(problem, tol: float = 1e-3) -> tuple[np.ndarray, int, float]:
    """PyHessian's top-5 eigenvalues (set-up included; tol 1e-3 is its default): values, products, seconds."""
    ph, count = _counting_pyhessian()
    model = copy.deepcopy(problem.model)
    for q in model.parameters():
        q.requires_grad_(True)
    t0 = time.perf_counter()
    h = ph.hessian(model, problem.loss_fn, data=(problem.x, problem.y), cuda=False)
    eigs, _ = h.eigenvalues(top_n=5, tol=tol)
    return np.sort(np.asarray(eigs))[::-1], count["n"], time.perf_counter() - t0


def pyhessian_run(problem) -> dict:
    """PyHessian's trace and density with its defaults on the same model (float32) and data, counting its products."""
    ph, count = _counting_pyhessian()
    model = copy.deepcopy(problem.model)
    for q in model.parameters():
        q.requires_grad_(True)
    out: dict = {}
    h = ph.hessian(model, problem.loss_fn, data=(problem.x, problem.y), cuda=False)
    count["n"] = 0
    t0 = time.perf_counter()
    tr = h.trace()
    out["trace"] = (float(np.mean(tr)), count["n"], time.perf_counter() - t0)
    count["n"] = 0
    t0 = time.perf_counter()
    nodes, weights = h.density()
    out["density"] = (
        [np.asarray(x, dtype=np.float64) for x in nodes],
        [np.asarray(w, dtype=np.float64) for w in weights],
        count["n"],
        time.perf_counter() - t0,
    )
    return out


def ours_top5(problem, tol: float = 1e-4) -> tuple[np.ndarray, int, float, int, float]:
    """landscape's top-5 (operator set-up included; tol 1e-4 is the CLI's default): values, products,
    seconds, set-up products, Lanczos seconds."""
    t0 = time.perf_counter()
    op = CurvatureOperator(problem)
    t1 = time.perf_counter()
    r = lanczos(op.matmat, op.size, k=5, tol=tol, precision=float(torch.finfo(problem.dtype).eps), start=op.probe)
    t2 = time.perf_counter()
    return r.eigenvalues, r.matvecs, t2 - t0, op.setup_matvecs, t2 - t1


def ours_run(problem, trace_budget: int) -> dict:
    out: dict = {}
    op = CurvatureOperator(problem)
    t0 = time.perf_counter()
    est = hutchpp(op.matmat, op.size, matvecs=60, seed=1)
    out["trace"] = (est.value, est.matvecs, time.perf_counter() - t0, est.std_error)
    same = hutchpp(op.matmat, op.size, matvecs=max(3, trace_budget), seed=1)  # at PyHessian's product count
    out["trace_same"] = (same.value, same.matvecs, same.std_error)
    t0 = time.perf_counter()
    runs = slq(op.matmat, op.size, probes=10, steps=80)
    out["density"] = (runs, runs.matvecs, time.perf_counter() - t0)
    # HVP-to-gradient ratio: medians of repeated timings of the chosen method and of a gradient
    v = torch.randn(1, op.size, dtype=torch.float64)
    hv, gr = [], []
    for _ in range(7):
        t = time.perf_counter()
        op.matmat(v)
        hv.append(time.perf_counter() - t)  # noqa: E702
        t = time.perf_counter()
        op.gradient()
        gr.append(time.perf_counter() - t)  # noqa: E702
    out["ratio"] = statistics.median(hv) / statistics.median(gr)
    out["method"] = op.method
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", nargs="+", default=["mlp", "cnn", "linreg"])
    ap.add_argument("--threads", type=int, default=1, help="torch threads for both tools (default 1: 2 shared cores)")
    ap.add_argument(
        "--repeats",
        type=int,
        default=5,
        help="top-5 runs of each tool, interleaved (times: the best; products: the median)",
    )
    ap.add_argument(
        "--ph-tols",
        nargs="*",
        type=float,
        default=[1e-3, 1e-4, 1e-5],
        help="PyHessian tolerances for the work-precision table",
    )
    ap.add_argument(
        "--our-tols",
        nargs="*",
        type=float,
        default=[1e-2, 1e-3, 1e-4, 1e-6],
        help="landscape tolerances for the work-precision table",
    )
    ap.add_argument(
        "--subset",
        nargs="*",
        default=["cnn=256"],
        help="NAME=N: use a seeded subset of N samples for that model (default cnn=256: its exact "
        "float64 Hessian takes 1946 products of ~0.4 s each on the full set)",
    )
    args = ap.parse_args()
    keep_freed_memory()  # as the `landscape` process does (landscape/host.py); the baselines share it
    torch.set_num_threads(args.threads)
    rows = []
    precision: list[tuple[str, str, float, int, float, float]] = []  # sample, tool, tol, HVPs, seconds, worst error
    subset = {k: int(v) for k, v in (a.split("=") for a in args.subset)}
    for name in args.samples:
        n = subset.get(name)
        t0 = time.perf_counter()
        ev = exact_spectrum(name, n)
        print(f"{name}: exact spectrum in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
        top = ev[::-1][:5]
        problem, _ = load_problem(LoadSpec(sample=name, dtype="float32", device="cpu", samples=n))
        ph_top, us_top = [], []
        for rep in range(args.repeats):  # top-5 timings interleaved, each tool from the same seed
            torch.manual_seed(rep)
            ph_top.append(pyhessian_top5(problem))
            torch.manual_seed(rep)
            us_top.append(ours_top5(problem))
        ph = pyhessian_run(problem)
        print(f"{name}: pyhessian done", file=sys.stderr)
        us = ours_run(problem, ph["trace"][1])
        ph["top5"] = (None, int(np.median([t[1] for t in ph_top])), min(t[2] for t in ph_top))
        us["top5"] = (
            None,
            int(np.median([t[1] for t in us_top])),
            min(t[2] for t in us_top),
            us_top[0][3],
            min(t[4] for t in us_top),
        )
        print(f"{name}: landscape done", file=sys.stderr)
        label = name + (f"[{n}]" if n else "")
        for tool, tols, run in (("PyHessian", args.ph_tols, pyhessian_top5), ("landscape", args.our_tols, ours_top5)):
            for tol in tols:
                runs = []
                for rep in range(3):
                    torch.manual_seed(rep)
                    runs.append(run(problem, tol))
                worst = max(float(np.max(np.abs(t[0][:5] - top) / np.abs(top))) for t in runs)
                precision.append(
                    (label, tool, tol, int(np.median([t[1] for t in runs])), min(t[2] for t in runs), worst)
                )
        print(f"{name}: work-precision done", file=sys.stderr)
        # top-5
        ph_err = max(float(np.max(np.abs(t[0][:5] - top) / np.abs(top))) for t in ph_top)  # the worst run
        us_err = max(float(np.max(np.abs(t[0][:5] - top) / np.abs(top))) for t in us_top)
        # trace
        ex_tr = float(ev.sum())
        # density on one grid and sigma for all
        runs = us["density"][0]
        d_us = density_from_lanczos(runs.alpha, runs.beta)
        sigma = 2e-3 * float(ev.max() - ev.min())
        all_nodes = np.concatenate([ev, *ph["density"][0], *d_us.nodes])
        grid = np.linspace(all_nodes.min() - 6 * sigma, all_nodes.max() + 6 * sigma, 20001)
        exact_d = exact_density(ev, grid, sigma)
        us_d = density_from_lanczos(runs.alpha, runs.beta, grid=grid, sigma=sigma).values
        ph_d = np.mean([gaussian_mixture(grid, t, w / w.sum(), sigma) for t, w in zip(*ph["density"][:2])], axis=0)
        rows.append(
            {
                "sample": name + (f"[{n}]" if n else ""),
                "P": ev.size,
                "ph_top_hvp": ph["top5"][1],
                "us_top_hvp": us["top5"][1],
                "us_setup_hvp": us["top5"][3],
                "ph_top_s": ph["top5"][2],
                "us_top_s": us["top5"][2],
                "us_lanczos_s": us["top5"][4],
                "ph_top_err": ph_err,
                "us_top_err": us_err,
                "ph_tr_hvp": ph["trace"][1],
                "us_tr_hvp": us["trace"][1],
                "ph_tr_err": abs(ph["trace"][0] - ex_tr) / abs(ex_tr),
                "us_tr_err": abs(us["trace"][0] - ex_tr) / abs(ex_tr),
                "us_tr_se": us["trace"][3] / abs(ex_tr),
                "us_tr2_hvp": us["trace_same"][1],
                "us_tr2_err": abs(us["trace_same"][0] - ex_tr) / abs(ex_tr),
                "us_tr2_se": us["trace_same"][2] / abs(ex_tr),
                "ph_d_hvp": ph["density"][2],
                "us_d_hvp": us["density"][1],
                "ph_l1": l1_distance(grid, ph_d, exact_d),
                "us_l1": l1_distance(grid, us_d, exact_d),
                "ph_min_node": float(min(t.min() for t in ph["density"][0])),
                "us_min_node": float(min(t.min() for t in d_us.nodes)),
                "ex_min": float(ev.min()),
                "ratio": us["ratio"],
                "method": us["method"],
                "sigma": sigma,
            }
        )
    print(f"\ntorch {torch.__version__}, {args.threads} thread(s); float32 products, exact = float64 Hessian + eigh\n")
    print("top-5 eigenvalues (PyHessian: power iteration + deflation, tol 1e-3; landscape: Lanczos, tol 1e-4)")
    print(
        f"{'sample':10} {'P':>5} | {'HVPs PyH':>8} {'ours':>5} {'ratio':>6} | {'time PyH':>9} {'ours':>7} {'ratio':>6} {'Lanczos only':>12} | {'rel err PyH':>11} {'ours':>8}"
    )
    for r in rows:
        print(
            f"{r['sample']:10} {r['P']:5d} | {r['ph_top_hvp']:8d} {r['us_top_hvp']:5d} {r['ph_top_hvp'] / r['us_top_hvp']:6.1f} | "
            f"{r['ph_top_s']:8.3f}s {r['us_top_s']:6.3f}s {r['ph_top_s'] / r['us_top_s']:6.1f} {r['us_lanczos_s']:11.3f}s | {r['ph_top_err']:11.1e} {r['us_top_err']:8.1e}"
        )
    print(
        "  (landscape's times include choosing the product method: "
        + ", ".join(f"{r['us_setup_hvp']}" for r in rows)
        + " set-up products, the last reused as Lanczos's first step)"
    )
    print("\ntrace (PyHessian: Hutchinson up to 100 probes, tol 1e-3; landscape: Hutch++ with 60 products)")
    print(
        f"{'sample':10} | {'HVPs PyH':>8} {'ours':>5} | {'rel err PyH':>11} {'ours':>8} {'ours s.e.':>9} | "
        f"{'ours at PyH HVPs':>16} {'rel err':>8} {'s.e.':>8}"
    )
    for r in rows:
        print(
            f"{r['sample']:10} | {r['ph_tr_hvp']:8d} {r['us_tr_hvp']:5d} | {r['ph_tr_err']:11.1e} {r['us_tr_err']:8.1e} {r['us_tr_se']:9.1e} | "
            f"{r['us_tr2_hvp']:16d} {r['us_tr2_err']:8.1e} {r['us_tr2_se']:8.1e}"
        )
    print(
        "\ndensity, L1 = integral |phi - phi_exact| (0..2), sigma = 0.2% of the exact span "
        "(PyHessian: 1 probe x 100 steps; landscape: 10 x 80)"
    )
    print(
        f"{'sample':10} | {'HVPs PyH':>8} {'ours':>5} | {'L1 PyH':>8} {'ours':>8} | {'min node PyH':>12} {'ours':>10} {'exact':>10}"
    )
    for r in rows:
        print(
            f"{r['sample']:10} | {r['ph_d_hvp']:8d} {r['us_d_hvp']:5d} | {r['ph_l1']:8.4f} {r['us_l1']:8.4f} | "
            f"{r['ph_min_node']:12.3e} {r['us_min_node']:10.3e} {r['ex_min']:10.3e}"
        )
    print("\ntop-5 work against precision (HVPs: median of 3 runs; time: best of 3; error: the worst run)")
    print(f"{'sample':10} {'tool':10} {'tol':>7} | {'HVPs':>5} {'time':>8} | {'rel err':>8}")
    for sample, tool, tol, hvps, secs, err in precision:
        print(f"{sample:10} {tool:10} {tol:7.0e} | {hvps:5d} {secs:7.3f}s | {err:8.1e}")
    print("at equal accuracy (the cheapest setting of each tool with every error <= 1e-4): PyHessian / landscape")
    for sample in dict.fromkeys(r[0] for r in precision):
        best = {}
        for tool in ("PyHessian", "landscape"):
            ok = [r for r in precision if r[0] == sample and r[1] == tool and r[5] <= 1e-4]
            best[tool] = min(ok, key=lambda r: r[3]) if ok else None
        ph_b, us_b = best["PyHessian"], best["landscape"]
        if ph_b is None or us_b is None:
            print(f"{sample:10} none of {'PyHessian' if ph_b is None else 'landscape'}'s settings reached 1e-4")
        else:
            print(
                f"{sample:10} HVPs {ph_b[3]}/{us_b[3]} = {ph_b[3] / us_b[3]:.1f}, time {ph_b[4] / us_b[4]:.1f}x "
                f"(PyHessian tol {ph_b[2]:.0e}, landscape tol {us_b[2]:.0e})"
            )
    print("\nHVP / gradient time (landscape's chosen method, medians of 7)")
    for r in rows:
        print(f"{r['sample']:10} {r['method']:24} {r['ratio']:5.2f}")


if __name__ == "__main__":
    main()
