"""Figures of the analysis commands, drawn from results files alone (no model, no data).

- roughness: every 1D profile f_j(alpha) and the histogram of T_j with mu, 1/l (bowl) and 1/(2l) (monotone);
- path: loss (and accuracy) along t, the straight line between the end losses, the barrier marked;
- plane: the loss contour of the plane with the three checkpoints marked;
- trajectory: the PCA-plane contour with the projected training path drawn over it;
- track: lambda_max per checkpoint against the step, with the 2/eta line (edge of stability).

`figure(path)` picks the figure from the file's groups; `draw(path, out)` also saves it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from landscape.errors import LandscapeError  # noqa: E402
from landscape.io.analysis_store import analysis_groups, json_attr, read_group, read_root  # noqa: E402


def analysis_kind(path: str | Path) -> str | None:
    """Which analysis figure a results file has (the first of ANALYSIS_GROUPS present), or None."""
    found = analysis_groups(path)
    return found[0] if found else None


def _title(path: Path, root: dict[str, Any], what: str) -> str:
    ck = Path(str(root.get("checkpoint", ""))).name
    return f"{what}: {ck}" if ck else f"{what}: {path.name}"


def roughness_figure(path: str | Path) -> Figure:
    """Profiles L(theta + alpha delta_j) for every direction, and the histogram of T_j."""
    path = Path(path)
    g, root = read_group(path, "roughness"), read_root(path)
    alphas, loss, tv = g.arrays["alphas"], g.arrays["loss"], g.arrays["total_variation"]
    span = float(g.numbers.get("span", np.abs(alphas).max()))
    n = g.numbers
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4), dpi=150)
    for row in loss:
        ax1.plot(alphas, row, lw=0.7, alpha=0.45, color="tab:blue")
    ax1.plot(alphas, np.nanmean(loss, axis=0), lw=2, color="k", label="mean over directions")
    ax1.axvline(0, color="0.6", lw=1, ls="--")
    ax1.locator_params(axis="x", nbins=5)
    ax1.set_xlabel(r"$\alpha$ (along a normalized random direction)")
    ax1.set_ylabel("loss")
    ax1.set_title(f"{loss.shape[0]} profiles")
    ax1.legend(loc="upper center", fontsize=8)
    finite = tv[np.isfinite(tv)]
    if finite.size:
        ax2.hist(finite, bins=min(30, max(5, finite.size // 3)), color="tab:blue", alpha=0.75)
    ax2.axvline(n.get("mu", np.nan), color="k", lw=2, label=rf"$\mu$ = {n.get('mu', np.nan):.3g}")
    ax2.axvline(1 / span, color="tab:green", ls="--", lw=1.2, label=f"1/l = {1 / span:.3g} (bowl)")
    ax2.axvline(1 / (2 * span), color="tab:red", ls=":", lw=1.2, label=f"1/(2l) = {1 / (2 * span):.3g} (monotone)")
    ax2.set_xlabel(r"normalized total variation $T_j$")
    ax2.set_ylabel("directions")
    ax2.set_title(f"RI = {n.get('ri', np.nan):.3g}  (σ/μ)")
    ax2.legend(fontsize=8)
    fig.suptitle(_title(path, root, "roughness"))
    fig.tight_layout()
    return fig


OWN_STATISTICS = " (with their own BN statistics)"


def other_path(g: Any) -> tuple[str, np.ndarray] | None:
    """The path a /path group is compared with, labelled: before alignment (path --align), or the
    straight line beside a trained curve (path --train)."""
    for key, barrier, what in (
        ("loss_unaligned", "barrier_unaligned", "before alignment"),
        ("loss_line", "barrier_line", "straight path"),
    ):
        if g.arrays.get(key) is not None:
            return f"{what} (barrier {g.numbers.get(barrier, np.nan):.3g})", g.arrays[key]
    return None


def path_label(g: Any) -> str:
    if g.arrays.get("loss_unaligned") is not None:
        return "loss, aligned"
    if g.arrays.get("bend") is not None:
        return f"trained {g.attrs.get('curve', '')} curve"
    return "loss"


def buffers_note(buffers: str) -> str:
    """What the path did with BatchNorm statistics, as a figure says it (its ends are points of the path too)."""
    return {
        "recalibrated": "BN statistics recalibrated on the training data at every point, the ends too",
        "interpolated": "BN statistics interpolated between the checkpoints'",
        "none": "no BN statistics",
    }.get(buffers, f"BN buffers {buffers}")


def path_figure(path: str | Path) -> Figure:
    """Loss along the path with the straight line between the end losses and the barrier marked."""
    path = Path(path)
    g = read_group(path, "path")
    t, loss = g.arrays["t"], g.arrays["loss"]
    fig, ax = plt.subplots(figsize=(6.5, 4.2), dpi=150)
    other = other_path(g)
    if other is not None:
        label, values = other
        ax.plot(t, values, color="tab:orange", lw=1.5, ls=":", label=label)
    ax.plot(t, loss, color="tab:blue", lw=2, label=path_label(g))
    ax.plot([t[0], t[-1]], [loss[0], loss[-1]], color="0.5", ls="--", lw=1, label="straight line between the ends")
    bt, height = g.numbers.get("barrier_t", np.nan), g.numbers.get("barrier", np.nan)
    if np.isfinite(bt) and height > 0:  # no barrier (the loss stays under the line): nothing to point at
        i = int(np.argmin(np.abs(t - bt)))
        base = loss[0] + (t[i] - t[0]) / (t[-1] - t[0]) * (loss[-1] - loss[0])
        ax.annotate("", xy=(t[i], loss[i]), xytext=(t[i], base), arrowprops={"arrowstyle": "<->", "color": "tab:red"})
        ax.text(t[i], (loss[i] + base) / 2, f"  barrier {height:.3g}", color="tab:red", va="center", fontsize=8)
    names = json_attr(g.attrs.get("checkpoints"), []) or []
    curve = g.attrs.get("curve", "linear")
    nodes = g.arrays.get("node_loss")
    if nodes is not None and len(names) == len(nodes):
        ts = np.linspace(0, 1, len(nodes)) if curve == "linear" else np.array([0.0, 1.0])
        idx = range(len(nodes)) if curve == "linear" else (0, len(nodes) - 1)
        own = f"checkpoints' own loss{OWN_STATISTICS if g.attrs.get('buffers') == 'recalibrated' else ''}"
        for j, (tt, i) in enumerate(zip(ts, idx)):
            ax.plot([tt], [nodes[i]], "o", color="k", ms=5, label=own if j == 0 else None)
            ax.annotate(Path(names[i]).name, (tt, nodes[i]), textcoords="offset points", xytext=(4, 6), fontsize=7)
    handles, labels = ax.get_legend_handles_labels()
    if g.arrays.get("accuracy") is not None:
        ax2 = ax.twinx()
        ax2.plot(t, 100 * g.arrays["accuracy"], color="tab:red", lw=1.2, ls="-.", label="accuracy")
        ax2.set_ylabel("accuracy (%)", color="tab:red")
        more = ax2.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    ax.set_xlabel("t")
    ax.set_ylabel("loss", color="tab:blue")
    # below the axes: inside, it covered the first checkpoint and the curve's start
    ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, fontsize=8, frameon=False)
    ax.set_title(f"{curve} path, {buffers_note(str(g.attrs.get('buffers', '')))}", fontsize=9)
    fig.suptitle(f"path: {path.name}")
    fig.tight_layout()
    return fig


def _plane_base(path: Path) -> tuple[Figure, Any]:
    from landscape.io.results import read_sweep
    from landscape.render.common import make_view
    from landscape.render.static import plot_figure

    view = make_view(read_sweep(path), "loss", path)
    view.marks = []
    fig = plot_figure(view, "contour")
    return fig, fig.axes[0]


def plane_figure(path: str | Path) -> Figure:
    """The plane's loss contour with A, B and C marked (and their own losses)."""
    path = Path(path)
    g = read_group(path, "plane")
    fig, ax = _plane_base(path)
    names = json_attr(g.attrs.get("names"), []) or ["A", "B", "C"]
    for (px, py), name, own in zip(g.arrays["points"], names, g.arrays["own_loss"]):
        ax.plot([px], [py], marker="*", color="red", ms=13, mec="k", zorder=5)
        ax.annotate(f"{name}\n{own:.3g}", (px, py), textcoords="offset points", xytext=(6, 6), fontsize=8, zorder=6)
    return fig


def trajectory_figure(path: str | Path) -> Figure:
    """The training path projected on the PCA plane, over that plane's contour; the largest loss gap in the title."""
    path = Path(path)
    g = read_group(path, "trajectory")
    fig, ax = _plane_base(path)
    c = g.arrays["coords"]
    ax.plot(c[:, 0], c[:, 1], "-", color="tab:red", lw=1.5, zorder=5)
    ax.plot(c[:, 0], c[:, 1], "o", color="tab:red", mec="k", ms=5, zorder=6)
    ax.plot([c[-1, 0]], [c[-1, 1]], marker="*", color="red", ms=13, mec="k", zorder=7)
    names = json_attr(g.attrs.get("names"), []) or []
    for (px, py), name in zip(c, names):
        ax.annotate(name, (px, py), textcoords="offset points", xytext=(4, 4), fontsize=7, zorder=8)
    ax.set_title(
        f"{path.name}: explained {100 * g.numbers.get('explained_variance', np.nan):.1f}%, "
        f"path loss vs own loss: gap up to {g.numbers.get('gap_max_abs', np.nan):.3g}",
        fontsize=9,
    )
    return fig


def track_figure(path: str | Path) -> Figure:
    """lambda_max per checkpoint against the training step, with the 2/eta line when the step size is known."""
    path = Path(path)
    g = read_group(path, "track")
    steps, lam = g.arrays["step"], g.arrays["lambda_max"]
    share = g.arrays.get("grad_in_top")
    if share is None:
        fig, ax = plt.subplots(figsize=(6.5, 4.2), dpi=150)
    else:
        fig, (ax, low) = plt.subplots(2, 1, figsize=(6.5, 6.4), dpi=150, sharex=True, height_ratios=(3, 2))
        k = int(g.numbers.get("subspace", 0)) or None
        top = f"top-{k}" if k else "top"
        low.plot(steps, share, "o-", color="tab:purple", lw=1.6, label=f"share of |g|² in the {top} eigenspace")
        overlap = g.arrays.get("subspace_overlap")
        if overlap is not None:
            low.plot(steps, overlap, "s--", color="tab:gray", lw=1.2, label=f"overlap with the previous {top} subspace")
        low.set_ylim(-0.02, 1.02)
        low.set_ylabel("fraction")
        low.set_xlabel(str(g.attrs.get("step_label", "checkpoint")))
        low.legend(loc="best", fontsize=8)
        low.set_title("where the gradient lives (Gur-Ari et al. 2018)", fontsize=9)
    ax.plot(steps, lam, "o-", color="tab:blue", lw=2, label=r"$\lambda_{max}$")
    if "lambda_max_error" in g.arrays:
        err = g.arrays["lambda_max_error"]
        ax.fill_between(steps, lam - err, lam + err, color="tab:blue", alpha=0.2, lw=0)
    lr = g.numbers.get("lr")
    if lr:
        ax.axhline(2 / lr, color="tab:red", ls="--", lw=1.2, label=rf"2/$\eta$ = {2 / lr:.3g} (edge of stability)")
    if "trace" in g.arrays and np.isfinite(g.arrays["trace"]).any():
        ax2 = ax.twinx()
        ax2.plot(steps, g.arrays["trace"], "s-.", color="tab:green", lw=1.2, label="trace")
        ax2.set_ylabel("Hessian trace", color="tab:green")
    if share is None:
        ax.set_xlabel(str(g.attrs.get("step_label", "checkpoint")))
    ax.set_ylabel(r"top Hessian eigenvalue $\lambda_{max}$")
    ax.legend(loc="best", fontsize=8)
    fig.suptitle(f"sharpness over training: {path.name}")
    fig.tight_layout()
    return fig


FIGURES = {
    "roughness": roughness_figure,
    "path": path_figure,
    "plane": plane_figure,
    "trajectory": trajectory_figure,
    "track": track_figure,
}


def figure(path: str | Path) -> Figure:
    """The figure for whichever analysis group the file holds."""
    kind = analysis_kind(path)
    if kind is None or kind not in FIGURES:
        raise LandscapeError(f"{path}: holds no roughness, path, plane, trajectory or track results to draw")
    return FIGURES[kind](path)


def draw(path: str | Path, output: str | Path) -> Path:
    """Draw the file's analysis figure to `output` (png, svg or pdf)."""
    from landscape.render.static import STATIC_SUFFIXES, save

    output = Path(output)
    if output.suffix.lower() not in STATIC_SUFFIXES:
        raise LandscapeError(f"--figure {output}: unsupported suffix; use one of {', '.join(STATIC_SUFFIXES)}")
    return save(figure(path), output)
