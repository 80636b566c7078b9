"""Regenerate the bundled sample models: ``python sample_models/train.py``.

For each sample this writes ``<name>/data.npz`` (arrays ``x`` and ``y``),
checkpoints ``<name>/ckpt_000.pt`` ... (raw ``state_dict``s, the first one the
initialization, the last one the end of training) and ``<name>/final.pt``
(identical to the last snapshot). Everything is seeded; only this script needs
scikit-learn (for the bundled 8x8 digits data set), loading the samples does not.
"""

from __future__ import annotations

import os
import shutil
import sys
import time

import numpy as np
import torch
from torch.nn import functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import models  # noqa: E402  (plain import so the script runs from a checkout without installing)

SEED = 0


def digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)  # [1797, 64], values 0..1
    y = d.target.astype(np.int64)
    return x, y


def most_frequent_token(n: int = 1000, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """Sequences of SEQ_LEN tokens from VOCAB; the label is the (unique) most frequent token."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    while len(xs) < n:
        # skew the sampling so that the mode is usually clear but not trivially so
        p = rng.dirichlet(np.ones(models.VOCAB))
        s = rng.choice(models.VOCAB, size=models.SEQ_LEN, p=p)
        counts = np.bincount(s, minlength=models.VOCAB)
        top = np.flatnonzero(counts == counts.max())
        if len(top) != 1:  # ties have no label; draw again
            continue
        xs.append(s)
        ys.append(top[0])
    return np.stack(xs).astype(np.int64), np.asarray(ys, dtype=np.int64)


def linear_data(n: int = 200, d: int = 10, noise: float = 0.1, seed: int = SEED):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    w = rng.standard_normal((d, 1)).astype(np.float32)
    y = (x @ w + 0.5 + noise * rng.standard_normal((n, 1))).astype(np.float32)
    return x, y


def train(
    name: str,
    factory,
    x: np.ndarray,
    y: np.ndarray,
    loss_fn,
    steps: int,
    snapshots: list[int],
    opt_fn,
    seed: int = SEED,
) -> dict:
    out = os.path.join(HERE, name)
    os.makedirs(out, exist_ok=True)
    for f in os.listdir(out):
        if f.endswith(".pt"):
            os.remove(os.path.join(out, f))
    np.savez_compressed(os.path.join(out, "data.npz"), x=x, y=y)

    torch.manual_seed(seed)
    model = factory()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = opt_fn(model.parameters())
    paths = []

    def snap():
        p = os.path.join(out, f"ckpt_{len(paths):03d}.pt")
        torch.save(model.state_dict(), p)
        paths.append(p)

    t0 = time.time()
    for step in range(steps + 1):
        if step in snapshots:
            snap()
        if step == steps:
            break
        model.train()
        opt.zero_grad()
        loss = loss_fn(model(xt), yt)
        loss.backward()
        opt.step()
    shutil.copyfile(paths[-1], os.path.join(out, "final.pt"))  # byte-identical to the last snapshot

    model.eval()
    with torch.no_grad():
        out_t = model(xt)
        res = {
            "name": name,
            "loss": loss_fn(out_t, yt).item(),
            "snapshots": len(paths),
            "params": sum(p.numel() for p in model.parameters()),
            "seconds": time.time() - t0,
        }
        if yt.dtype == torch.int64:
            res["accuracy"] = (out_t.argmax(-1) == yt).float().mean().item()
    return res


def main() -> None:
    torch.use_deterministic_algorithms(True)
    xd, yd = digits()
    results = []
    adam = lambda lr: lambda params: torch.optim.Adam(params, lr=lr)  # noqa: E731
    results.append(train("mlp", models.mlp, xd, yd, F.cross_entropy, 300, [0, 10, 30, 100, 300], adam(1e-2)))
    results.append(
        train("cnn", models.cnn, xd.reshape(-1, 1, 8, 8), yd, F.cross_entropy, 300, [0, 10, 30, 100, 300], adam(1e-2))
    )
    xs, ys = most_frequent_token()
    results.append(
        train("transformer", models.transformer, xs, ys, F.cross_entropy, 400, [0, 25, 75, 200, 400], adam(3e-3))
    )
    xl, yl = linear_data()
    results.append(
        train(
            "linreg", models.linreg, xl, yl, F.mse_loss, 300, [0, 5, 20, 75, 300], lambda p: torch.optim.SGD(p, lr=0.02)
        )
    )
    for r in results:
        acc = f"  accuracy {r['accuracy']:.4f}" if "accuracy" in r else ""
        print(
            f"{r['name']:12s} params {r['params']:5d}  snapshots {r['snapshots']}  "
            f"loss {r['loss']:.4f}{acc}  ({r['seconds']:.1f}s)"
        )


if __name__ == "__main__":
    main()
