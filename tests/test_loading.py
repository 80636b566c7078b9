"""Checkpoints (raw, nested, prefixed, safetensors, pickled) and data (files and functions) load as documented."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from landscape.errors import LandscapeError
from landscape.io.checkpoint import fit_state_dict, read_state_dict
from landscape.io.data import load_data, subset
from landscape.io.samples import sample
from landscape.sample_models.models import mlp

MODEL_PY = """
import torch.nn as nn
def make():
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
"""


@pytest.fixture
def state():
    return torch.load(sample("mlp")["checkpoint"], weights_only=True)


@pytest.mark.parametrize("wrap", ["raw", "state_dict", "model", "model_state_dict"])
@pytest.mark.parametrize("prefix", ["", "module.", "model."])
def test_nested_and_prefixed(tmp_path, state, wrap, prefix):
    sd = {prefix + k: v for k, v in state.items()}
    obj = sd if wrap == "raw" else {wrap: sd, "epoch": 3, "optimizer": {"lr": 0.1}}
    path = tmp_path / "c.pt"
    torch.save(obj, path)
    said = []
    fitted = fit_state_dict(read_state_dict(path), mlp(), str(path), said.append)
    assert all(torch.equal(fitted[k], state[k]) for k in state)
    assert bool(said) == bool(prefix)


def test_safetensors(tmp_path, state):
    path = tmp_path / "c.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    fitted = fit_state_dict(read_state_dict(path), mlp(), str(path))
    assert all(torch.equal(fitted[k], state[k]) for k in state)


def test_pickled_module_needs_flag(tmp_path, state):
    m = mlp()
    m.load_state_dict(state)
    path = tmp_path / "whole.pt"
    torch.save(m, path)
    with pytest.raises(LandscapeError, match="--unsafe-pickle"):
        read_state_dict(path)
    fitted = fit_state_dict(read_state_dict(path, unsafe_pickle=True), mlp(), str(path))
    assert torch.equal(fitted["0.weight"], state["0.weight"])


def test_mismatch_messages(state):
    bad = dict(state)
    bad.pop("2.bias")
    bad["extra.weight"] = torch.zeros(1)
    with pytest.raises(LandscapeError, match=r"missing 1 \(e.g. 2.bias\); unexpected 1 \(e.g. extra.weight\)"):
        fit_state_dict(bad, mlp(), "c.pt")
    wrong = dict(state)
    wrong["0.weight"] = torch.zeros(5, 64)
    with pytest.raises(LandscapeError, match=r"shape mismatch for 0.weight: checkpoint \(5, 64\), model \(32, 64\)"):
        fit_state_dict(wrong, mlp(), "c.pt")


def _xy():
    return torch.randn(20, 64), torch.randint(0, 10, (20,))


def test_data_files(tmp_path):
    x, y = _xy()
    torch.save({"x": x, "y": y}, tmp_path / "d.pt")
    np.savez(tmp_path / "d.npz", x=x.numpy(), y=y.numpy())
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["x"], f["y"] = x.numpy(), y.numpy()
    for name in ("d.pt", "d.npz", "d.h5"):
        gx, gy = load_data(str(tmp_path / name))
        assert torch.equal(gx, x) and torch.equal(gy, y)
    np.savez(tmp_path / "bad.npz", inputs=x.numpy())
    with pytest.raises(LandscapeError, match="no targets among inputs; expected 'x' and 'y'"):
        load_data(str(tmp_path / "bad.npz"))


@pytest.mark.parametrize("kind", ["tensors", "dataset", "loader"])
def test_data_functions(tmp_path, kind):
    x, y = _xy()
    torch.save({"x": x, "y": y}, tmp_path / "d.pt")
    body = {
        "tensors": "return d['x'], d['y']",
        "dataset": "return TensorDataset(d['x'], d['y'])",
        "loader": "return DataLoader(TensorDataset(d['x'], d['y']), batch_size=7)",
    }[kind]
    (tmp_path / "data.py").write_text(
        "import torch\nfrom torch.utils.data import TensorDataset, DataLoader\n"
        f"def get():\n    d = torch.load({str(tmp_path / 'd.pt')!r}, weights_only=True)\n    {body}\n"
    )
    gx, gy = load_data(f"{tmp_path / 'data.py'}:get")
    assert torch.equal(gx, x) and torch.equal(gy, y)


def test_subset_is_seeded():
    x, y = torch.arange(100.0)[:, None], torch.arange(100)
    a, b = subset(x, y, 10, seed=1), subset(x, y, 10, seed=1)
    assert torch.equal(a[0], b[0]) and len(a[0]) == 10 and torch.equal(a[0][:, 0].long(), a[1])


def test_user_model_file_via_cli(tmp_path, cli, state):
    (tmp_path / "net.py").write_text(MODEL_PY)
    torch.save({"model_state_dict": {"module." + k: v for k, v in state.items()}}, tmp_path / "ddp.pt")
    r = cli("sweep", "--model", f"{tmp_path / 'net.py'}:make", "--checkpoint", tmp_path / "ddp.pt",
            "--data", sample("mlp")["data"], "--x", "-1:1:3", "--samples", "50", "-o", tmp_path / "o.h5")
    assert r.code == 0, r.err
    assert "stripped the 'module.' prefix" in r.err
