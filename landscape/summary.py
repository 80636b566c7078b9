"""Plain numbers from a sweep's arrays: loss at the center, extremes, progress. No I/O."""

from __future__ import annotations

from typing import Any

import numpy as np


def center_index(coords: list[np.ndarray]) -> tuple[int, ...]:
    """The grid index nearest the checkpoint (all coordinates 0)."""
    return tuple(int(np.argmin(np.abs(c))) for c in coords)


def sweep_numbers(sweep: dict[str, Any]) -> dict[str, Any]:
    """Loss/accuracy at the center, min and max loss with where they are, points done."""
    coords = [sweep["coords"][n] for n in sweep["axes"]]
    loss = sweep["loss"]
    idx = center_index(coords)
    out: dict[str, Any] = {
        "grid": "x".join(str(len(c)) for c in coords),
        "points_done": int(sweep["done"].sum()),
        "points": int(sweep["done"].size),
        "center": [float(c[i]) for c, i in zip(coords, idx)],
        "loss_center": float(loss[idx]),
    }
    finite = np.isfinite(loss)
    if finite.any():
        lo = np.unravel_index(np.nanargmin(np.where(finite, loss, np.nan)), loss.shape)
        hi = np.unravel_index(np.nanargmax(np.where(finite, loss, np.nan)), loss.shape)
        out["loss_min"] = float(loss[lo])
        out["loss_min_at"] = [float(c[i]) for c, i in zip(coords, lo)]
        out["loss_max"] = float(loss[hi])
    out["nonfinite_points"] = int((sweep["done"] & ~finite).sum())
    if sweep.get("accuracy") is not None:
        out["accuracy_center"] = float(sweep["accuracy"][idx])
    return out
