"""Figures of a curvature run, from its results file alone: spectral density and top eigenvalues.

`curv` is the dict of landscape.io.curvature.read_curvature. With a `sigma`, the density is redrawn
from the stored per-probe Lanczos tridiagonals (no model, no products).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from landscape.errors import LandscapeError  # noqa: E402

KINDS = ("density", "eigenvalues")
FLOOR = 1e-8  # a log axis needs a floor: densities below it are drawn at it


def _density(block: dict[str, Any], sigma: float | None) -> dict[str, np.ndarray] | None:
    """grid, mean, lo, hi (spread between probes) of a block, recomputed from alpha/beta when sigma is given."""
    lz, d = block.get("lanczos"), block.get("density")
    if lz is not None and (sigma is not None or d is None):
        from landscape.curvature.density import density_from_lanczos

        dens = density_from_lanczos(lz["alpha"], lz["beta"], sigma=sigma)
        grid, values, per, sig = dens.grid, dens.values, dens.per_probe, dens.sigma
    elif d is not None:
        grid, values, per, sig = d["grid"], d["values"], d["per_probe"], d["sigma"]
    else:
        return None
    return {
        "grid": grid,
        "mean": values,
        "lo": per.min(axis=0),
        "hi": per.max(axis=0),
        "sigma": np.float64(sig),
        "probes": np.int64(per.shape[0]),
    }


def _title(curv: dict[str, Any], run: str = "") -> str:
    """'Hessian spectrum: RUN (CHECKPOINT)': the run names it (a checkpoint is often just final.pt)."""
    from landscape.names import CURVATURE_TITLES

    ckpt = Path(str(curv.get("attrs", {}).get("checkpoint", ""))).name
    what = str(curv.get("curvature", "hessian"))
    what = CURVATURE_TITLES.get(what, what)
    head = f"{what[:1].upper()}{what[1:]} spectrum"
    if run:
        return f"{head}: {run}" + (f" ({ckpt})" if ckpt else "")
    return head + (f" of {ckpt}" if ckpt else "")


def _shape(d: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, float]:
    """A block's density against eigenvalue / max|eigenvalue| (the grid spans the nodes and 5 sigma), rescaled
    to keep unit area: blocks whose scales differ 1000x can be compared by the shape of their spectra."""
    g = d["grid"]
    scale = max(float(np.abs(g[[0, -1]]).max()) - 5.0 * float(d["sigma"]), 1e-300)
    return g / scale, d["mean"] * scale, scale


def _layer_values(layers: dict[str, Any], names: list[str]) -> list[list[float]]:
    """Per rank j, the j-th top eigenvalue of each named layer (NaN where a layer has fewer)."""
    k = max(len(layers[n]["eigenvalues"]) for n in names)
    return [
        [float(layers[n]["eigenvalues"][j]) if j < len(layers[n]["eigenvalues"]) else np.nan for n in names]
        for j in range(k)
    ]


def _log_scale(rows: list[list[float]]) -> bool:
    """A log axis when every value is positive and they span more than 100x (a small layer next to a big one)."""
    v = np.asarray([x for row in rows for x in row], dtype=np.float64)
    v = v[np.isfinite(v)]
    return v.size > 1 and bool((v > 0).all()) and float(v.max()) > 100.0 * float(v.min())


def default_kind(curv: dict[str, Any]) -> str:
    """What a curvature file holds: its density when it has one, else its eigenvalues."""
    return "density" if curv.get("lanczos") is not None or curv.get("density") is not None else "eigenvalues"


def _check(kind: str, curv: dict[str, Any]) -> None:
    if kind not in KINDS:
        raise LandscapeError(f"--kind {kind!r}: expected one of {', '.join(KINDS)} for a curvature file")
    if kind == "density" and curv.get("lanczos") is None and curv.get("density") is None:
        raise LandscapeError("--kind density: the file holds no density (run `landscape hessian --density`)")
    if kind == "eigenvalues" and curv.get("eigenvalues") is None:
        raise LandscapeError("--kind eigenvalues: the file holds no eigenvalues (run `landscape hessian --top-k K`)")


def spectrum_figure(curv: dict[str, Any], kind: str, sigma: float | None = None, name: str = "") -> plt.Figure:
    """A matplotlib figure: 'density' (log y; mean over probes, min-max band between probes, top eigenvalues
    marked; below it, one small panel per layer when present) or 'eigenvalues' (top-k with residuals).
    `name` names the run in the title (the results file's stem)."""
    _check(kind, curv)
    layers = {k: b for k, b in curv.get("layers", {}).items()}
    if kind == "density":
        with_layers = [k for k, b in layers.items() if b.get("lanczos") is not None or b.get("density") is not None]
        # one small panel per block: twelve curves on one axes could not be told apart
        cols = min(4, len(with_layers)) if with_layers else 1
        nrows = -(-len(with_layers) // cols) if with_layers else 0
        fig = plt.figure(figsize=(6.5 if not with_layers else 10, 4.4 + 1.9 * nrows), dpi=150, layout="constrained")
        grid = fig.add_gridspec(1 + nrows, cols, height_ratios=[2.6] + [1.0] * nrows)
        ax = fig.add_subplot(grid[0, :])
        d = _density(curv, sigma)
        assert d is not None
        ax.fill_between(
            d["grid"],
            np.maximum(d["lo"], FLOOR),
            np.maximum(d["hi"], FLOOR),
            color="tab:blue",
            alpha=0.25,
            lw=0,
            label=_spread_label(int(d["probes"])),
        )
        ax.plot(d["grid"], np.maximum(d["mean"], FLOOR), color="tab:blue", lw=1.5, label="density (mean of probes)")
        if curv.get("eigenvalues") is not None:
            for i, lam in enumerate(curv["eigenvalues"]):
                ax.axvline(lam, color="tab:red", lw=0.8, ls=":", label="top eigenvalues" if i == 0 else None)
        ax.axvline(0.0, color="0.5", lw=0.6)
        ax.set_yscale("log")
        ax.set_ylim(bottom=FLOOR * 10 if d["mean"].max() > FLOOR * 1e3 else FLOOR)
        ax.set_xlabel("eigenvalue")
        ax.set_ylabel("density (log)")
        ax.set_title(f"{_title(curv, name)} (SLQ, σ={float(d['sigma']):.2g})", fontsize=9)
        # above the axes, never over the peaks (it covered linear regression's)
        ax.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.07), ncol=3, frameon=False)
        for i, block in enumerate(with_layers):
            dl = _density(layers[block], sigma)
            small = fig.add_subplot(grid[1 + i // cols, i % cols])
            if dl is not None:
                x, y, scale = _shape(dl)
                small.plot(x, np.maximum(y, FLOOR), lw=1.0, color="tab:blue")
                small.set_ylim(bottom=FLOOR * 10)
                small.set_yscale("log")
                small.set_title(f"{block} ({layers[block]['size']:,}; max|λ| {scale:.3g})", fontsize=7)
            small.axvline(0.0, color="0.5", lw=0.6)
            small.tick_params(labelsize=6)
            if i // cols == nrows - 1:
                small.set_xlabel("λ / max|λ| of the block", fontsize=7)
        return fig
    # eigenvalues
    lam = np.asarray(curv["eigenvalues"], dtype=np.float64)
    res = np.asarray(curv["residuals"], dtype=np.float64)
    with_layers = [k for k, b in layers.items() if b.get("eigenvalues") is not None]
    fig, axes = plt.subplots(1, 2 if with_layers else 1, figsize=(11 if with_layers else 6, 4), dpi=150, squeeze=False)
    ax = axes[0, 0]
    idx = np.arange(1, lam.size + 1)
    ax.errorbar(idx, lam, yerr=res, fmt="o", color="tab:blue", capsize=3, label="eigenvalue ± residual ‖Hv−λv‖")
    ax.axhline(0.0, color="0.5", lw=0.6)
    ax.set_xticks(idx)
    ax.set_xlabel("index")
    ax.set_ylabel("eigenvalue")
    ax.set_title(f"{_title(curv, name)}: top eigenvalues (Lanczos)", fontsize=9)
    ax.legend(fontsize=7)
    if with_layers:
        ax2 = axes[0, 1]
        rows = _layer_values(layers, with_layers)
        width = 0.8 / len(rows)
        for j, vals in enumerate(rows):
            ax2.bar(np.arange(len(with_layers)) + j * width - 0.4 + width / 2, vals, width=width, label=f"λ{j + 1}")
        ax2.set_xticks(np.arange(len(with_layers)))
        ax2.set_xticklabels(with_layers, rotation=45, ha="right", fontsize=7)
        log = _log_scale(rows)
        if log:
            ax2.set_yscale("log")
        ax2.set_ylabel("eigenvalue (log)" if log else "eigenvalue")
        k = len(rows)
        ax2.set_title("top eigenvalues per layer", fontsize=9)
        ax2.legend(fontsize=6, ncol=min(k, 5))
    fig.tight_layout()
    return fig


def spectrum_plotly(curv: dict[str, Any], kind: str, sigma: float | None = None, name: str = ""):
    """The same figures as interactive plotly (for a self-contained html)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    _check(kind, curv)
    layers = curv.get("layers", {})
    if kind == "density":
        with_layers = [k for k, b in layers.items() if b.get("lanczos") is not None or b.get("density") is not None]
        cols = min(4, len(with_layers)) if with_layers else 1
        nrows = 1 + (-(-len(with_layers) // cols) if with_layers else 0)
        specs = [[{"colspan": cols}] + [None] * (cols - 1)] + [[{}] * cols for _ in range(nrows - 1)]
        titles = ["whole model"] + [
            f"{b} (max|λ| {_shape(dl)[2]:.3g})" if (dl := _density(layers[b], sigma)) is not None else b
            for b in with_layers
        ]
        fig = make_subplots(
            rows=nrows, cols=cols, specs=specs, subplot_titles=titles, row_heights=[2.6] + [1.0] * (nrows - 1),
            vertical_spacing=0.3 / nrows,
        )  # fmt: skip
        d = _density(curv, sigma)
        assert d is not None
        g = d["grid"]
        fig.add_trace(
            go.Scatter(
                x=g, y=np.maximum(d["hi"], FLOOR), mode="lines", line=dict(width=0), showlegend=False, hoverinfo="skip"
            ),
            1,
            1,
        )
        fig.add_trace(
            go.Scatter(
                x=g,
                y=np.maximum(d["lo"], FLOOR),
                mode="lines",
                line=dict(width=0),
                fill="tonexty",
                fillcolor="rgba(31,119,180,0.25)",
                name=_spread_label(int(d["probes"])),
            ),
            1,
            1,
        )
        fig.add_trace(
            go.Scatter(
                x=g,
                y=np.maximum(d["mean"], FLOOR),
                mode="lines",
                name="density (mean)",
                line=dict(color="rgb(31,119,180)"),
            ),
            1,
            1,
        )
        if curv.get("eigenvalues") is not None:
            for lam in curv["eigenvalues"]:
                fig.add_vline(x=float(lam), line=dict(color="red", dash="dot", width=1), row=1, col=1)
        for i, block in enumerate(with_layers):  # one small panel per block, as in the png
            dl = _density(layers[block], sigma)
            if dl is not None:
                x, y, scale = _shape(dl)
                fig.add_trace(
                    go.Scatter(
                        x=x, y=np.maximum(y, FLOOR), mode="lines", name=block, showlegend=False,
                        line=dict(color="rgb(31,119,180)", width=1),
                    ),
                    2 + i // cols,
                    1 + i % cols,
                )  # fmt: skip
        # plain scientific ticks: plotly's default SI prefixes read "100µ, 10n" on a density axis
        fig.update_yaxes(type="log", exponentformat="e")
        fig.update_yaxes(title_text="density (log)", row=1, col=1)
        fig.update_xaxes(title_text="eigenvalue", row=1, col=1)
        for i in range(len(with_layers)):
            if i + cols >= len(with_layers):
                fig.update_xaxes(title_text="λ / max|λ| of the block", row=2 + i // cols, col=1 + i % cols)
        fig.update_layout(
            title=f"{_title(curv, name)} (SLQ, σ={float(d['sigma']):.2g})", height=460 + 220 * (nrows - 1),
            legend=dict(orientation="h", yanchor="bottom", y=1.0 + 0.02 / nrows, xanchor="right", x=1.0),
        )  # fmt: skip
        return fig
    lam = np.asarray(curv["eigenvalues"], dtype=np.float64)
    with_layers = [k for k, b in layers.items() if b.get("eigenvalues") is not None]
    cols = 2 if with_layers else 1
    fig = make_subplots(rows=1, cols=cols, subplot_titles=["whole model", "per layer"][:cols])
    fig.add_trace(
        go.Scatter(
            x=np.arange(1, lam.size + 1),
            y=lam,
            mode="markers",
            name="eigenvalue",
            error_y=dict(type="data", array=np.asarray(curv["residuals"], dtype=np.float64)),
        ),
        1,
        1,
    )
    if with_layers:
        rows = _layer_values(layers, with_layers)
        for j, vals in enumerate(rows):
            fig.add_trace(
                go.Bar(x=list(with_layers), y=[None if np.isnan(v) else v for v in vals], name=f"λ{j + 1}"), 1, 2
            )
        if _log_scale(rows):
            fig.update_yaxes(type="log", title_text="eigenvalue (log)", row=1, col=2)
    fig.update_yaxes(exponentformat="e")
    fig.update_layout(title=f"{_title(curv, name)}: top eigenvalues (Lanczos)", barmode="group")
    return fig


def _spread_label(probes: int) -> str:
    return "spread of 1 probe" if probes == 1 else f"spread of {probes} probes"
