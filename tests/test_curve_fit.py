"""Mode connectivity with a trained bend (Garipov et al. 2018): between two minima trained from
different seeds, the trained curve's barrier is far below the straight line's, with and without
BatchNorm (its statistics recomputed along both); the stored loss is the loss at the stored curve."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
from conftest import trained_pair
from torch.func import functional_call

import landscape as ls
from landscape.io.checkpoint import read_state_dict
from landscape.io.samples import sample
from landscape.paths import recalibrate_bn


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def _bn_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 6 * 6, 32),
        nn.ReLU(),
        nn.Linear(32, 10),
    )


@pytest.mark.parametrize("curve", ["bezier", "polychain"])
def test_a_trained_curve_between_two_minima_has_a_lower_barrier_than_the_line(curve):
    (a, b), x, y = trained_pair(_mlp)
    problem = ls.Problem(a, (x, y), dtype="float64")
    res = ls.fit_curve(problem, b.state_dict(), points=11, curve=curve, steps=300, seed=1)
    assert res["barrier_line"] > 0.1
    assert res.barrier < 0.3 * res["barrier_line"]
    assert res.arrays["bend"].shape == (1, problem.layout.size)
    assert res.arrays["train_loss"].shape == (300,) and res.settings["train"]["steps"] == 300
    # the ends are the checkpoints: the line and the curve agree there with each checkpoint's own loss
    np.testing.assert_allclose(res.arrays["loss"][[0, -1]], res.arrays["loss_line"][[0, -1]], rtol=1e-12)
    np.testing.assert_allclose(res.arrays["loss"][[0, -1]], res.arrays["node_loss"][[0, -1]], rtol=1e-12)
    # independent truth: the stored loss at t is the loss of the network at theta(t) built here
    bend = problem.layout.unflatten(torch.as_tensor(res.arrays["bend"][0], dtype=torch.float64))
    pa, pb = a.double().state_dict(), b.double().state_dict()
    for i in (3, 5, 8):
        t = float(res.arrays["t"][i])
        if curve == "bezier":
            w = ((1 - t) ** 2, 2 * t * (1 - t), t**2)
        else:
            w = (1 - 2 * t, 2 * t, 0.0) if t <= 0.5 else (0.0, 2 - 2 * t, 2 * t - 1)
        params = {k: w[0] * pa[k] + w[1] * bend[k].double() + w[2] * pb[k] for k in pa}
        loss = nn.functional.cross_entropy(functional_call(a.double(), params, (x.double(),)), y)
        # the bend is stored in float32: the loss at its rounding, within float32's precision
        assert float(loss) == pytest.approx(float(res.arrays["loss"][i]), rel=1e-5, abs=1e-7)


def test_with_batchnorm_the_statistics_are_recomputed_along_the_curve(cli, tmp_path):
    (a, b), x, y = trained_pair(_bn_cnn, image=True, steps=100)
    torch.save(a.state_dict(), tmp_path / "a.pt")
    torch.save(b.state_dict(), tmp_path / "b.pt")
    (tmp_path / "net.py").write_text(
        "import torch.nn as nn\n\ndef make():\n    return nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), "
        "nn.Flatten(), nn.Linear(8 * 6 * 6, 32), nn.ReLU(), nn.Linear(32, 10))\n"
    )
    np.savez(tmp_path / "digits.npz", x=x.numpy(), y=y.numpy())
    common = ["--model", f"{tmp_path}/net.py:make", "--data", tmp_path / "digits.npz", "--dtype", "float64"]
    r = cli("path", tmp_path / "a.pt", tmp_path / "b.pt", *common, "--train", "--train-steps", "200",
            "--points", "9", "-o", tmp_path / "curve.h5", "--save-bend", tmp_path / "bend.pt")  # fmt: skip
    assert r.code == 0, r.err
    said = " ".join(r.out.split())  # rich wraps lines at the terminal's width
    assert "barrier of the straight line" in said and "BN buffers recalibrated" in said
    res = ls.load(tmp_path / "curve.h5")
    assert res.attrs["buffers"] == "recalibrated"
    assert res.barrier < res["barrier_line"]
    # the bend checkpoint, its BatchNorm statistics recomputed on the data, gives the curve's loss at t = 1/2
    # (quadratic Bezier: theta(1/2) = A/4 + bend/2 + B/4, so rebuild that point and recalibrate it here)
    bend = read_state_dict(tmp_path / "bend.pt")
    mid = {
        k: 0.25 * a.state_dict()[k].double() + 0.5 * bend[k].double() + 0.25 * b.state_dict()[k].double() for k in bend
    }
    net = _bn_cnn().double()
    net.load_state_dict({k: v.to(net.state_dict()[k].dtype) for k, v in mid.items()})
    recalibrate_bn(net, x.double(), batch_size=x.shape[0])
    with torch.no_grad():
        loss = nn.functional.cross_entropy(net(x.double()), y)
    assert float(loss) == pytest.approx(float(res.arrays["loss"][4]), rel=1e-4)


def test_bad_curve_training_options_are_refused_before_loading(cli, tmp_path):
    ends = sample("mlp")["checkpoints"]
    out = tmp_path / "p.h5"
    for args, message in [
        (["--curve", "linear", "--train"], "--curve 'linear' with --train"),
        (["--train", "--align"], "--align with --train"),
        (["--save-bend", str(tmp_path / "b.pt")], "--save-bend is only used with --train"),
        (["--train", "--train-steps", "0"], "--train-steps 0"),
    ]:
        r = cli("path", *ends[:2], "--sample", "mlp", *args, "-o", out)
        assert r.code == 2 and message in r.err, (args, r.err)
    r = cli("path", *ends[:3], "--sample", "mlp", "--curve", "bezier", "--train", "-o", out)
    assert r.code == 2 and "name the two ends of the curve" in r.err
    assert not out.exists()


def test_train_lr_and_batch_reach_the_training(cli, tmp_path):
    # a quadratic Bezier whose bend is the midpoint is the straight line: with a learning rate too small
    # to move the bend, the curve's loss is the line's at every t
    out = tmp_path / "still.h5"
    r = cli("path", "--sample", "mlp", "--dtype", "float64", "--train", "--train-steps", "3", "--train-lr", "1e-12",
            "--train-batch", "16", "--points", "7", "-o", out)  # fmt: skip
    assert r.code == 0, r.err
    res = ls.load(out)
    assert res.settings["train"] == {"steps": 3, "lr": 1e-12, "momentum": 0.9, "batch_size": 16, "seed": 0}
    np.testing.assert_allclose(res.arrays["loss"], res.arrays["loss_line"], rtol=1e-7)
    r = cli("path", "--sample", "mlp", "--dtype", "float64", "--train", "--train-steps", "3", "--train-lr", "0.5",
            "--points", "7", "-o", tmp_path / "moved.h5")  # fmt: skip
    assert r.code == 0, r.err
    moved = ls.load(tmp_path / "moved.h5")  # a learning rate that moves the bend: another curve than the line
    assert not np.allclose(moved.arrays["loss"][1:-1], moved.arrays["loss_line"][1:-1], rtol=1e-7)
