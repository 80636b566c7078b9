"""Static figures with matplotlib: a 1D loss curve and 2D contour lines of a sweep."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from landscape.summary import center_index  # noqa: E402

STATIC_SUFFIXES = (".png", ".svg", ".pdf")


def axis_label(sweep: dict[str, Any], name: str) -> str:
    attrs = sweep["axis_attrs"].get(name, {})
    return str(attrs.get("label") or name)


def line_figure(sweep: dict[str, Any]) -> plt.Figure:
    """Loss along the line (accuracy on a twin axis when present); the checkpoint marked."""
    name = sweep["axes"][0]
    xs = sweep["coords"][name]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=150)
    ax.plot(xs, sweep["loss"], color="tab:blue", lw=2, label="loss")
    ax.set_xlabel(axis_label(sweep, name))
    ax.set_ylabel("loss", color="tab:blue")
    i = center_index([xs])[0]
    ax.axvline(xs[i], color="0.6", lw=1, ls="--")
    ax.plot([xs[i]], [sweep["loss"][i]], "o", color="k", ms=5, label="checkpoint")
    if sweep.get("accuracy") is not None:
        ax2 = ax.twinx()
        ax2.plot(xs, 100 * sweep["accuracy"], color="tab:red", lw=1.5, ls="-.", label="accuracy")
        ax2.set_ylabel("accuracy (%)", color="tab:red")
    ax.set_title(Path(str(sweep["attrs"].get("checkpoint", ""))).name or "loss")
    fig.tight_layout()
    return fig


def contour_figure(sweep: dict[str, Any], levels: np.ndarray | None = None) -> plt.Figure:
    """Labelled contour lines of loss[i, j] at (x[i], y[j]); levels 0.1..10 step 0.5 as in Li et al."""
    xn, yn = sweep["axes"]
    xs, ys = sweep["coords"][xn], sweep["coords"][yn]
    z = np.ma.masked_invalid(sweep["loss"]).T  # rows = y for matplotlib
    if levels is None:
        levels = np.arange(0.1, 10.0, 0.5)
        finite = z.compressed()
        if finite.size and (finite.max() < levels[1] or finite.min() > levels[-1]):
            levels = np.linspace(finite.min(), finite.max(), 20)
    fig, ax = plt.subplots(figsize=(5.5, 5), dpi=150)
    cs = ax.contour(xs, ys, z, levels=levels, cmap="viridis")
    ax.clabel(cs, inline=True, fontsize=7, fmt="%.2g")
    ax.plot([0], [0], marker="*", color="red", ms=12, mec="k", label="checkpoint")
    ax.set_xlabel(axis_label(sweep, xn))
    ax.set_ylabel(axis_label(sweep, yn))
    ax.set_aspect("auto")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(Path(str(sweep["attrs"].get("checkpoint", ""))).name or "loss")
    fig.tight_layout()
    return fig


def save(fig: plt.Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
