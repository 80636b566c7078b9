"""Train and test loss in one run (sweep --eval-data NAME=PATH): each data set's grid against a direct
per-point evaluation on that data, the gap numbers, the figures and the errors."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from conftest import sample_problem

import landscape as ls
from landscape.io.checkpoint import read_state_dict
from landscape.io.samples import sample
from landscape.measures import loss_at


def _split(tmp_path, name: str = "mlp"):
    data = np.load(sample(name)["data"])
    x, y = data["x"], data["y"]
    np.savez(tmp_path / "train.npz", x=x[:1200], y=y[:1200])
    np.savez(tmp_path / "test.npz", x=x[1200:], y=y[1200:])
    return (torch.tensor(x[:1200]), torch.tensor(y[:1200])), (torch.tensor(x[1200:]), torch.tensor(y[1200:]))


def test_each_data_sets_grid_is_the_loss_on_that_data(tmp_path):
    (xa, ya), (xb, yb) = _split(tmp_path)
    full = sample_problem("mlp")
    problem = ls.Problem(full.model, (xa, ya), dtype="float64")
    axes = ls.random_axes(problem, 2, seed=1)
    res = ls.sweep(problem, axes, x=(-1, 1, 5), y=(-1, 1, 3), eval_data={"test": (xb, yb)}, data_name="train")
    group = res.groups["data_sets"]
    assert group.attrs["names"] == ["train", "test"]
    np.testing.assert_array_equal(group.arrays["loss"][0], res.loss)
    test_problem = ls.Problem(
        full.model, (xb, yb), dtype="float64"
    )  # the truth: the loss on the test data, point by point
    d = axes.directions.double()
    for i, a in enumerate(res.coords[0]):
        for j, b in enumerate(res.coords[1]):
            want = loss_at(test_problem, problem.theta + a * d[0] + b * d[1])
            assert group.arrays["loss"][1][i, j] == pytest.approx(want, rel=1e-9)
    center = group.arrays["loss"][:, 2, 1]
    assert group.numbers["test_loss_center"] == pytest.approx(center[1])
    assert group.numbers["test_gap_center"] == pytest.approx(center[1] - center[0])
    assert group.arrays["accuracy"].shape == (2, 5, 3)
    assert [a.get_title() for a in res.plot().axes if a.get_title()] == ["train", "test"]
    assert {t.name for t in res.plot(backend="plotly").data if t.name} >= {"train", "test"}
    back = ls.load(res.save(tmp_path / "s.h5"))
    np.testing.assert_array_equal(back.groups["data_sets"].arrays["loss"], group.arrays["loss"])


def test_the_test_set_follows_the_buffers_along_a_line_to_another_checkpoint(cli, tmp_path):
    # on a BatchNorm model, --to moves the running statistics along x: at x = 1 the test loss must be
    # the other checkpoint's own loss on the test data
    (_, _), (xb, yb) = _split(tmp_path, "cnn")
    ends = sample("cnn")["checkpoints"]
    r = cli("sweep", "--sample", "cnn", "--checkpoint", ends[0], "--to", ends[-1], "--x", "0:1:3", "--dtype", "float64",
            "--data", tmp_path / "train.npz", "--eval-data", f"test={tmp_path / 'test.npz'}", "-o", tmp_path / "line.h5")  # fmt: skip
    assert r.code == 0, r.err
    with h5py.File(tmp_path / "line.h5") as f:
        test_loss = f["data_sets/loss"][1]
    problem = sample_problem("cnn")
    other = read_state_dict(ends[-1])
    problem.model.load_state_dict({k: v.double() if v.is_floating_point() else v for k, v in other.items()})
    on_test = ls.Problem(problem.model, (xb.double(), yb), dtype="float64")
    assert test_loss[-1] == pytest.approx(loss_at(on_test, on_test.theta), rel=1e-9)


def test_cli_eval_data_metrics_figures_and_report(cli, tmp_path):
    _split(tmp_path)
    common = ["--sample", "mlp", "--data", tmp_path / "train.npz", "--data-name", "train"]
    out = tmp_path / "tt.h5"
    r = cli(
        "sweep", *common, "--eval-data", f"test={tmp_path / 'test.npz'}", "--x", "-1:1:7", "--y", "-1:1:5", "-o", out
    )
    assert r.code == 0, r.err
    said = " ".join(r.out.split())
    assert "test: loss at the center" in said and "gap to train" in said
    r = cli("metrics", out, "--fail-if", "test_gap_center > 10")
    assert r.code == 0, r.err
    assert "data_sets.test_gap_center" in r.out and "data_sets.train_loss_center" in r.out
    for name in ("both.png", "both.html"):
        r = cli("plot", out, "-o", tmp_path / name)
        assert r.code == 0, r.err
    html = (tmp_path / "both.html").read_text()
    assert '"train"' in html and '"test"' in html
    r = cli("plot", out, "--data-set", "test", "-o", tmp_path / "test.png")
    assert r.code == 0, r.err
    r = cli("plot", out, "--data-set", "val", "-o", tmp_path / "val.png")
    assert r.code == 2 and "holds train, test" in r.err
    r = cli("report", out, "-o", tmp_path / "report.html")
    assert r.code == 0 and "Data sets" in (tmp_path / "report.html").read_text()
    r = cli("plot", sample("mlp")["data"], "-o", tmp_path / "x.png")  # not ours: refused as ever
    assert r.code == 2


@pytest.mark.parametrize(
    "args, message",
    [
        (["--eval-data", "test.npz"], "expected NAME=PATH"),
        (["--eval-data", "a=x.npz", "--eval-data", "a=y.npz"], "given twice"),
        (["--eval-data", "data=x.npz"], "its own name"),
        (["--eval-data", "1st=x.npz"], "a data set's name is a word"),
    ],
)
def test_bad_eval_data_is_refused_before_anything_is_written(cli, tmp_path, args, message):
    out = tmp_path / "s.h5"
    r = cli("sweep", "--sample", "mlp", *args, "-o", out)
    assert r.code == 2 and message in r.err, r.err
    assert not out.exists()


def test_a_missing_or_unfit_eval_data_file_is_named_before_any_point(cli, tmp_path):
    out = tmp_path / "s.h5"
    r = cli("sweep", "--sample", "mlp", "--eval-data", f"test={tmp_path / 'nope.npz'}", "--x", "-1:1:3", "-o", out)
    assert r.code == 2 and "nope.npz" in r.err and not out.exists()
    np.savez(tmp_path / "wide.npz", x=np.zeros((10, 65), dtype=np.float32), y=np.zeros(10, dtype=np.int64))
    r = cli("sweep", "--sample", "mlp", "--eval-data", f"test={tmp_path / 'wide.npz'}", "--x", "-1:1:3", "-o", out)
    assert r.code == 2 and "wide.npz" in r.err and not out.exists()
