"""Interactive (plotly) figures of the analysis commands, from results files alone.

The same content as `landscape.render.analysis` (matplotlib) for the groups that are not sweeps:
roughness (profiles and the T_j histogram), path (loss and accuracy along t, the straight line
between the ends, the barrier), track (lambda_max against the step, the 2/eta line, the trace).
Plane and trajectory files are sweeps and get the sweep's figures. Every user string is escaped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from landscape.io.analysis_store import json_attr, read_group
from landscape.render.analysis import OWN_STATISTICS, analysis_kind, buffers_note, other_path, path_label
from landscape.render.interactive import esc, json_values, styled


def roughness_plotly(path: str | Path) -> go.Figure:
    """Every profile L(theta + alpha delta_j) (hover: direction j) and the histogram of T_j with mu, 1/l, 1/(2l)."""
    path = Path(path)
    g = read_group(path, "roughness")
    alphas, loss, tv = g.arrays["alphas"], g.arrays["loss"], g.arrays["total_variation"]
    span = float(g.numbers.get("span", np.abs(alphas).max()))
    mu, ri = g.numbers.get("mu", np.nan), g.numbers.get("ri", np.nan)
    fig = make_subplots(rows=1, cols=2, subplot_titles=(f"{loss.shape[0]} profiles", f"RI = {ri:.3g} (sigma/mu)"))
    for j, row in enumerate(loss):
        fig.add_trace(
            go.Scatter(
                x=alphas.tolist(),
                y=json_values(row),
                mode="lines",
                line={"width": 0.8, "color": "rgba(31,119,180,0.35)"},
                name=f"direction {j}",
                showlegend=False,
                hovertemplate=f"direction {j}<br>alpha %{{x:.3g}}<br>loss %{{y:.5g}}<extra></extra>",
            ),
            row=1,
            col=1,
        )
    fig.add_trace(
        go.Scatter(
            x=alphas.tolist(),
            y=json_values(np.nanmean(loss, axis=0)),
            mode="lines",
            line={"width": 2.5, "color": "black"},
            name="mean over directions",
        ),
        row=1,
        col=1,
    )
    finite = tv[np.isfinite(tv)]
    bins = int(min(30, max(5, finite.size // 3)))
    fig.add_trace(
        go.Histogram(
            x=finite.tolist(), name="T_j of the directions", marker={"color": "rgba(31,119,180,0.75)"}, nbinsx=bins
        ),
        row=1,
        col=2,
    )
    top = float(np.histogram(finite, bins=bins)[0].max()) if finite.size else 1.0
    for x, label, dash, color in (
        (mu, f"mu = {mu:.3g}", "solid", "black"),
        (1 / span, f"1/l = {1 / span:.3g} (bowl)", "dash", "green"),
        (1 / (2 * span), f"1/(2l) = {1 / (2 * span):.3g} (monotone)", "dot", "red"),
    ):
        if np.isfinite(x):  # vertical lines as traces, so their labels go to the legend
            fig.add_trace(
                go.Scatter(
                    x=[float(x), float(x)],
                    y=[0.0, top],
                    mode="lines",
                    name=label,
                    line={"dash": dash, "color": color, "width": 1.8},
                ),
                row=1,
                col=2,
            )
    fig.update_xaxes(title_text="alpha (along a normalized random direction)", row=1, col=1)
    fig.update_yaxes(title_text="loss", row=1, col=1)
    fig.update_xaxes(title_text="normalized total variation T_j", row=1, col=2)
    fig.update_yaxes(title_text="directions", row=1, col=2)
    styled(fig, f"roughness: {path.name}", height=500)
    fig.update_layout(
        legend={"orientation": "h", "x": 0.0, "xanchor": "left", "y": -0.2, "yanchor": "top"}, margin={"b": 110}
    )
    return fig


def path_plotly(path: str | Path) -> go.Figure:
    """Loss (and accuracy) along the path, the straight line between the end losses, the barrier and the checkpoints."""
    path = Path(path)
    g = read_group(path, "path")
    t, loss = g.arrays["t"], g.arrays["loss"]
    acc = g.arrays.get("accuracy")
    fig = make_subplots(specs=[[{"secondary_y": acc is not None}]])
    other = other_path(g)
    if other is not None:
        label, values = other
        fig.add_trace(
            go.Scatter(
                x=t.tolist(),
                y=json_values(values),
                mode="lines",
                name=esc(label),
                line={"width": 1.5, "color": "#ff7f0e", "dash": "dot"},
                hovertemplate=f"t %{{x:.3g}}<br>{esc(label.split(' (')[0])} %{{y:.5g}}<extra></extra>",
            ),
            secondary_y=False,
        )
    fig.add_trace(
        go.Scatter(
            x=t.tolist(),
            y=json_values(loss),
            mode="lines",
            name=path_label(g),
            line={"width": 2.5, "color": "#1f77b4"},
            hovertemplate="t %{x:.3g}<br>loss %{y:.5g}<extra></extra>",
        ),
        secondary_y=False,
    )
    fig.add_trace(
        go.Scatter(
            x=[float(t[0]), float(t[-1])],
            y=json_values(np.array([loss[0], loss[-1]])),
            mode="lines",
            name="straight line between the ends",
            line={"dash": "dash", "color": "gray", "width": 1},
        ),
        secondary_y=False,
    )
    bt, height = g.numbers.get("barrier_t", np.nan), g.numbers.get("barrier", np.nan)
    if np.isfinite(bt) and height > 0:
        i = int(np.argmin(np.abs(t - bt)))
        fig.add_trace(
            go.Scatter(
                x=[float(t[i])],
                y=[float(loss[i])],
                mode="markers",
                name=f"barrier {height:.3g} at t = {bt:.3g}",
                marker={"color": "red", "size": 10, "symbol": "triangle-up"},
            ),
            secondary_y=False,
        )
    names = json_attr(g.attrs.get("checkpoints"), []) or []
    nodes = g.arrays.get("node_loss")
    curve = str(g.attrs.get("curve", "linear"))
    if nodes is not None and len(names) == len(nodes):
        idx = list(range(len(nodes))) if curve == "linear" else [0, len(nodes) - 1]
        ts = np.linspace(0, 1, len(nodes))[idx] if curve == "linear" else np.array([0.0, 1.0])
        fig.add_trace(
            go.Scatter(
                x=ts.tolist(),
                y=json_values(nodes[idx]),
                mode="markers+text",
                name="checkpoints' own loss" + (OWN_STATISTICS if g.attrs.get("buffers") == "recalibrated" else ""),
                text=[esc(Path(names[i]).name) for i in idx],
                textposition=["top right"] * (len(idx) - 1) + ["top left"],
                marker={"color": "black", "size": 7},
            ),
            secondary_y=False,
        )
    if acc is not None:
        fig.add_trace(
            go.Scatter(
                x=t.tolist(),
                y=json_values(100 * acc),
                mode="lines",
                name="accuracy (%)",
                line={"dash": "dashdot", "color": "#d62728", "width": 1.5},
            ),
            secondary_y=True,
        )
        fig.update_yaxes(title_text="accuracy (%)", secondary_y=True)
    fig.update_xaxes(title_text="t")
    fig.update_yaxes(title_text="loss", secondary_y=False)
    return styled(fig, f"{curve} path: {path.name}", note=buffers_note(str(g.attrs.get("buffers", ""))))


def track_plotly(path: str | Path) -> go.Figure:
    """lambda_max per checkpoint against the step (with its residual error bars), 2/eta when known, the trace if stored."""
    path = Path(path)
    g = read_group(path, "track")
    steps, lam = g.arrays["step"], g.arrays["lambda_max"]
    trace = g.arrays.get("trace")
    has_trace = trace is not None and bool(np.isfinite(trace).any())
    share = g.arrays.get("grad_in_top")
    rows = 1 if share is None else 2
    specs = [[{"secondary_y": has_trace}]] + ([[{"secondary_y": False}]] if rows == 2 else [])
    fig = make_subplots(
        rows=rows, cols=1, specs=specs, shared_xaxes=True, row_heights=[0.6, 0.4][:rows] if rows == 2 else None
    )
    err = g.arrays.get("lambda_max_error")
    fig.add_trace(
        go.Scatter(
            x=steps.tolist(),
            y=json_values(lam),
            mode="lines+markers",
            name="lambda_max",
            line={"width": 2.5},
            error_y={"type": "data", "array": json_values(err)} if err is not None else None,
        ),
        row=1,
        col=1,
        secondary_y=False,
    )
    if share is not None:
        k = int(g.numbers.get("subspace", 0))
        top = f"top-{k}" if k else "top"
        fig.add_trace(
            go.Scatter(x=steps.tolist(), y=json_values(share), mode="lines+markers", name=f"share of |g|² in the {top} eigenspace",
                       line={"color": "purple"}),
            row=2, col=1,
        )  # fmt: skip
        overlap = g.arrays.get("subspace_overlap")
        if overlap is not None:
            fig.add_trace(
                go.Scatter(x=steps.tolist(), y=json_values(overlap), mode="lines+markers",
                           name=f"overlap with the previous {top} subspace", line={"color": "gray", "dash": "dash"}),
                row=2, col=1,
            )  # fmt: skip
        fig.update_yaxes(title_text="fraction (Gur-Ari et al.)", range=[-0.02, 1.02], row=2, col=1)
    lr = g.numbers.get("lr")
    if lr:
        fig.add_hline(
            y=2 / lr, line={"dash": "dash", "color": "red"}, annotation_text=f"2/eta = {2 / lr:.3g} (edge of stability)",
            row=1, col=1,
        )  # fmt: skip
    if has_trace:
        fig.add_trace(
            go.Scatter(
                x=steps.tolist(),
                y=json_values(np.asarray(trace)),
                mode="lines+markers",
                name="trace",
                line={"dash": "dashdot", "color": "green"},
            ),
            row=1,
            col=1,
            secondary_y=True,
        )
        fig.update_yaxes(title_text="Hessian trace", secondary_y=True, row=1, col=1)
    fig.update_xaxes(title_text=esc(g.attrs.get("step_label", "checkpoint")), row=rows, col=1)
    fig.update_yaxes(title_text="top Hessian eigenvalue lambda_max", secondary_y=False, row=1, col=1)
    return styled(fig, f"sharpness over training: {path.name}")


FIGURES = {"roughness": roughness_plotly, "path": path_plotly, "track": track_plotly}


def analysis_plotly(path: str | Path) -> go.Figure | None:
    """The interactive figure for the file's analysis group, or None when it has none (sweeps, sharpness)."""
    kind = analysis_kind(path)
    return FIGURES[kind](path) if kind in FIGURES else None
