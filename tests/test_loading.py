"""Checkpoints (raw, nested, prefixed, safetensors, pickled) and data (files and functions) load as documented."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file

from landscape.data import subset
from landscape.errors import LandscapeError
from landscape.io.checkpoint import fit_state_dict, read_checkpoint, read_state_dict
from landscape.io.data import load_data
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


def test_weights_found_by_the_models_names_in_any_layout(tmp_path, state):
    """Nested at any depth beside other entries, under any prefix, with torch.compile's segment inside."""
    layouts = {
        "cifar": {"net": {f"module.{k}": v for k, v in state.items()}, "acc": 93.0, "epoch": 200},
        "deep": {"checkpoint": {"weights": {f"backbone._orig_mod.{k}": v for k, v in state.items()}}, "step": 7},
        "beside": {
            **{f"net.{k}": v for k, v in state.items()},
            "criterion.weight": torch.ones(10),
            "metric.total": torch.zeros(()),
        },
    }
    for name, obj in layouts.items():
        torch.save(obj, tmp_path / f"{name}.pt")
        said: list[str] = []
        fitted = fit_state_dict(read_checkpoint(tmp_path / f"{name}.pt"), mlp(), name, said.append)
        assert all(torch.equal(fitted[k], state[k]) for k in state), name
        assert said and "prefix" in said[0], (name, said)
    assert "ignored 2 other tensors" in said[0]


def test_two_equal_fits_need_a_choice(tmp_path, state):
    ema = {k: v + 1 for k, v in state.items()}
    torch.save({"state_dict": state, "state_dict_ema": ema}, tmp_path / "t.pt")
    ckpt = read_checkpoint(tmp_path / "t.pt")
    with pytest.raises(LandscapeError, match="more than once.*--checkpoint-key"):
        fit_state_dict(ckpt, mlp(), "t.pt")
    got = fit_state_dict(ckpt, mlp(), "t.pt", key="state_dict_ema")
    assert torch.equal(got["0.weight"], ema["0.weight"])
    with pytest.raises(LandscapeError, match="--checkpoint-key 'nope'.*state_dict_ema"):
        fit_state_dict(ckpt, mlp(), "t.pt", key="nope")
    both = {**{f"net.{k}": v for k, v in state.items()}, **{f"ema.{k}": v for k, v in ema.items()}}
    with pytest.raises(
        LandscapeError, match="prefix 'ema.'.*prefix 'net.'.*--prefix|prefix 'net.'.*prefix 'ema.'.*--prefix"
    ):
        fit_state_dict(both, mlp(), "b.pt")
    assert torch.equal(fit_state_dict(both, mlp(), "b.pt", prefix="net.")["2.bias"], state["2.bias"])


def test_tied_weights_are_not_missing():
    """A model whose output layer shares the embedding's tensor: a file without the tied key loads."""
    model = torch.nn.Sequential(torch.nn.Embedding(7, 4), torch.nn.Linear(4, 7, bias=False))
    model[1].weight = model[0].weight
    state = {"0.weight": torch.randn(7, 4)}
    fitted = fit_state_dict(state, model, "tied.safetensors")
    assert torch.equal(fitted["1.weight"], state["0.weight"])
    model.load_state_dict(fitted)


class Versioned(nn.Module):
    """A module whose loader reads its saved version, as torchvision's MNASNet and BatchNorm do."""

    _version = 2

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.seen: list[object] = []

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args):  # type: ignore[no-untyped-def]
        self.seen.append(local_metadata.get("version"))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args)


def test_module_versions_follow_the_fitted_keys(tmp_path):
    """The version a checkpoint recorded reaches the module's loader under any prefix, nesting or
    torch.compile's segment; a file without versions (safetensors) gets the model's own."""
    source = Versioned()

    def saved(module: nn.Module, where: str) -> dict:
        sd = module.state_dict()
        sd._metadata[where]["version"] = 1  # written by an older release of the module
        return sd

    lightning = nn.Module()
    lightning.model = source  # a LightningModule holding the network as `self.model`
    layouts = {
        "plain": saved(source, ""),
        "lightning": {"state_dict": saved(lightning, "model"), "epoch": 1},
        "compiled": saved(torch.compile(source), "_orig_mod"),  # keys and versions under '_orig_mod'
    }
    for name, obj in layouts.items():
        torch.save(obj, tmp_path / f"{name}.pt")
        target = Versioned()
        target.load_state_dict(fit_state_dict(read_checkpoint(tmp_path / f"{name}.pt"), target, name))
        assert target.seen == [1], name
        assert torch.equal(target.lin.weight, source.lin.weight), name
    save_file(dict(source.state_dict()), str(tmp_path / "v.safetensors"))
    target = Versioned()
    target.load_state_dict(fit_state_dict(read_checkpoint(tmp_path / "v.safetensors"), target, "v"))
    assert target.seen == [2]


def test_torchvision_mnasnet_checkpoint_loads(tmp_path):
    """MNASNet's loader refuses a state_dict without its module versions (its v1 had another stem)."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    source = torchvision.models.mnasnet0_5(num_classes=10).eval()
    torch.save(source.state_dict(), tmp_path / "mnasnet.pt")
    model = torchvision.models.mnasnet0_5(num_classes=10).eval()
    model.load_state_dict(fit_state_dict(read_checkpoint(tmp_path / "mnasnet.pt"), model, "mnasnet.pt"))
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model(x), source(x))


def test_low_precision_checkpoint_is_said_once(state):
    said: list[str] = []
    fit_state_dict({k: v.to(torch.bfloat16) for k, v in state.items()}, mlp(), "half.pt", said.append)
    assert len(said) == 1 and "bfloat16" in said[0] and "upcast" in said[0]


def test_dict_columns_and_targets():
    """Named columns: labels are the targets (int32 -> int64), the rest are keyword inputs; next-token
    takes the input_ids as targets."""
    from landscape.data import Columns
    from landscape.data import check_pair as _check_pair
    from landscape.data import split as _split

    ids, mask, labels = torch.randint(0, 9, (5, 4)), torch.ones(5, 4), torch.arange(5, dtype=torch.int32)
    x, y = _check_pair(_split({"input_ids": ids, "attention_mask": mask, "labels": labels}, "d", Columns()), "d")
    assert set(x) == {"input_ids", "attention_mask"} and y.dtype == torch.int64 and torch.equal(y, labels.long())
    x, y = _split({"input_ids": ids}, "d", Columns(targets_from_inputs=True))
    assert x is ids and y is ids
    x, y = _split({"image": mask, "target": labels}, "d", Columns(input_keys=("image",)))
    assert x is mask and y is labels
    with pytest.raises(LandscapeError, match="target_key='lbl'"):
        _split({"input_ids": ids}, "d", Columns(target_key="lbl"))


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
    r = cli(
        "sweep",
        "--model",
        f"{tmp_path / 'net.py'}:make",
        "--checkpoint",
        tmp_path / "ddp.pt",
        "--data",
        sample("mlp")["data"],
        "--x",
        "-1:1:3",
        "--samples",
        "50",
        "-o",
        tmp_path / "o.h5",
    )
    assert r.code == 0, r.err
    assert "stripped the 'module.' prefix" in r.err


FACTORY_ARGS_PY = """
import torch
import torch.nn as nn


def data(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g)


def scaled(output, target, scale=1.0):
    return scale * torch.nn.functional.cross_entropy(output, target)
"""


def test_factory_data_and_loss_take_literal_arguments_in_the_option(tmp_path, cli):
    """A torchvision or timm model fine-tuned to 10 classes needed a file of one's own to build it;
    now `--model 'torchvision.models:resnet18(num_classes=10)'` does, with literals only."""
    from landscape.io.spec import split_call

    (tmp_path / "bits.py").write_text(FACTORY_ARGS_PY)
    torch.manual_seed(0)
    torch.save(torch.nn.Linear(4, 3).state_dict(), tmp_path / "lin.pt")
    bits = tmp_path / "bits.py"
    base = ("sweep", "--checkpoint", tmp_path / "lin.pt", "--data", f"{bits}:data(24, seed=3)", "--x", "-1:1:3")
    losses = []
    for scale in (1.0, 2.5):
        out = tmp_path / f"s{scale}.h5"
        r = cli(*base, "--model", "torch.nn:Linear(4, 3)", "--loss", f"{bits}:scaled(scale={scale})", "-o", out)
        assert r.code == 0, r.err
        with h5py.File(out, "r") as f:
            losses.append(f["sweep/loss"][()])
            assert f.attrs["samples"] == 24
    np.testing.assert_allclose(losses[1], 2.5 * losses[0], rtol=1e-6)

    bad = {
        "torch.nn:Linear(4, int('3'))": "int('3') is not a Python literal",
        "torch.nn:Linear(4, 3": "the arguments in parentheses do not parse",
        "torch.nn:Linear(**kw)": "**kwargs cannot be given",
        "torch.nn:Linear(4, 3).eval()": "expected NAME(literal, ..., key=literal, ...)",
        "torch.nn:Linear(4, 5)": "shape mismatch for weight: checkpoint (3, 4), model (5, 4) (a factory's arguments",
    }
    for spec, want in bad.items():
        r = cli(*base, "--model", spec, "-o", tmp_path / "bad.h5")
        (line,) = r.errors
        assert r.code == 2 and want in line and not (tmp_path / "bad.h5").exists(), (spec, r.err)
    assert split_call("net.py:make(tag='a:b', sizes=(1, 2))", "--model") == (
        "net.py:make",
        (),
        {"tag": "a:b", "sizes": (1, 2)},
    )
    assert split_call("C:/runs/net.py:make", "--model") == ("C:/runs/net.py:make", (), {})
    shown = " ".join(cli("sweep", "--help").out.replace("│", " ").split())  # --help teaches the form
    assert "as in MODULE:FACTORY(num_classes=10)" in shown and "'torchvision.models:resnet18(num_classes=10)'" in shown


def test_resume_refuses_other_load_options(cli, tmp_path):
    """--params (like --checkpoint-key and --prefix) fixes the numbers: a resume with another one is refused."""
    out = tmp_path / "s.h5"
    r = cli("sweep", "--sample", "mlp", "--params", r"^0\.", "--x", "-1:1:3", "-o", out)
    assert r.code == 0 and "left out" in r.err, r.err
    assert "load_options" in cli("info", out).out
    r = cli("sweep", "--sample", "mlp", "--x", "-1:1:3", "-o", out, "--resume")
    assert r.code == 2 and "load_options" in r.err, r.err


def test_a_model_file_with_a_dataclass_imports(tmp_path):
    """A user's file that defines a @dataclass (a config) imports: dataclass looks its module up in sys.modules."""
    from landscape.io.spec import resolve_callable

    (tmp_path / "cfg_net.py").write_text(
        "from __future__ import annotations\n"
        "from dataclasses import dataclass\n"
        "import torch.nn as nn\n"
        "@dataclass(frozen=True)\n"
        "class Config:\n"
        "    width: int = 16\n"
        "def make() -> nn.Module:\n"
        "    return nn.Linear(4, Config().width)\n"
    )
    model = resolve_callable(f"{tmp_path / 'cfg_net.py'}:make", "--model")()
    assert model.out_features == 16
    (tmp_path / "broken.py").write_text("raise RuntimeError('no')\n")
    with pytest.raises(LandscapeError, match="importing .*broken.py failed: RuntimeError: no"):
        resolve_callable(f"{tmp_path / 'broken.py'}:make", "--model")
    import sys

    assert not [m for m in sys.modules.values() if getattr(m, "__file__", None) == str(tmp_path / "broken.py")]
