"""Real library models through the CLI, as the README's "Your model" section runs them.

Each model is built here with random weights (no downloads) from torchvision, timm, Hugging Face
transformers and Lightning, saved the way its library saves it, and run through `sweep`,
`hessian` and `roughness`. Every number is checked against an independent computation: the
library's own loss (Hugging Face `.loss`, `F.cross_entropy`) on a model loaded by the library's
own loader (`from_pretrained`, `load_state_dict`), with the direction added by name, and the exact
Hessian of a parameter block (`torch.func.hessian` + `eigh`, float64).
"""

from __future__ import annotations

import copy
import functools
import math
import textwrap
import warnings
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

LossAt = Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor]  # (truth model, params to swap in) -> loss


def _import(name: str):
    """The library, or a skip that prints why (e.g. a torchvision wheel built for another torch)."""
    try:
        return pytest.importorskip(name)
    except ImportError as exc:  # importorskip only covers ModuleNotFoundError
        pytest.skip(f"{name} does not import beside torch {torch.__version__}: {exc}")


def _layout(path: Path) -> tuple[list[str], list[tuple[int, ...]]]:
    with h5py.File(path, "r") as f:
        table = f["axes/layout"][()] if "axes/layout" in f else f["hessian/layout"][()]
    names = [r[0].decode() if isinstance(r[0], bytes) else str(r[0]) for r in table]
    shapes = [
        tuple(int(s) for s in (r[1].decode() if isinstance(r[1], bytes) else str(r[1])).split(",") if s) for r in table
    ]
    return names, shapes


def _unflatten(flat: np.ndarray, names: list[str], shapes: list[tuple[int, ...]]) -> dict[str, torch.Tensor]:
    out, at = {}, 0
    for name, shape in zip(names, shapes):
        n = math.prod(shape)
        out[name] = torch.as_tensor(flat[at : at + n], dtype=torch.float64).view(shape)
        at += n
    return out


def check_sweep(path: Path, truth: nn.Module, loss_at: LossAt, rel: float = 2e-5) -> None:
    """Every stored point equals the library's loss at theta + x d (d added to the named parameters)."""
    names, shapes = _layout(path)
    with h5py.File(path, "r") as f:
        d = _unflatten(f["axes/x"][()], names, shapes)
        xs, stored = f["sweep/coords/x"][()], f["sweep/loss"][()]
        assert bool(f.attrs["complete"])
    params = dict(truth.named_parameters())
    assert set(names) <= set(params)
    for xv, got in zip(xs, stored):
        want = float(loss_at(truth, {n: params[n].detach() + xv * d[n] for n in names}))
        assert got == pytest.approx(want, rel=rel, abs=1e-7), (xv, got, want)


def exact_top(truth: nn.Module, loss_at: LossAt, names: list[str], k: int) -> np.ndarray:
    """The top-k eigenvalues of the exact Hessian of the loss in the parameters `names` (float64)."""
    h = exact_block(truth, loss_at, names)
    return np.sort(np.linalg.eigvalsh(h.numpy()))[::-1][:k]


def exact_block(truth: nn.Module, loss_at: LossAt, names: list[str]) -> torch.Tensor:
    """The exact Hessian of the loss in the parameters `names`, at the truth model's own values."""
    params = dict(truth.named_parameters())
    shapes = [params[n].shape for n in names]
    u0 = torch.cat([params[n].detach().reshape(-1) for n in names])

    def f(u: torch.Tensor) -> torch.Tensor:
        parts, at = {}, 0
        for n, s in zip(names, shapes):
            parts[n] = u[at : at + math.prod(s)].view(s)
            at += math.prod(s)
        return loss_at(truth, parts)

    with sdpa_kernel([SDPBackend.MATH]):
        return torch.func.hessian(f)(u0).detach()


def check_hessian(path: Path, truth: nn.Module, loss_at: LossAt, k: int, rel: float = 1e-4) -> list[str]:
    names, _ = _layout(path)
    with h5py.File(path, "r") as f:
        got = f["hessian/eigenvalues"][()]
    want = exact_top(truth, loss_at, names, k)
    np.testing.assert_allclose(got, want, rtol=rel, atol=rel * abs(want[0]))
    return names


def check_roughness(path: Path, truth: nn.Module, loss_at: LossAt, rel: float = 2e-5) -> None:
    """The profiles' centres are the library's loss at the checkpoint; T_j is the formula on the profiles."""
    with h5py.File(path, "r") as f:
        g = f["roughness"]
        loss, alphas, t = g["loss"][()], g["alphas"][()], g["total_variation"][()]
        center = g.attrs["loss_center"]
    want = float(loss_at(truth, {}))
    mid = int(np.argmin(np.abs(alphas)))
    assert alphas[mid] == 0
    np.testing.assert_allclose(loss[:, mid], want, rtol=rel)
    assert center == pytest.approx(want, rel=rel)
    span = alphas[-1]
    tv = np.abs(np.diff(loss, axis=1)).sum(axis=1) / (2 * span * (loss.max(axis=1) - loss.min(axis=1)))
    np.testing.assert_allclose(t, tv, rtol=1e-9)


def run_all(cli, tmp: Path, load: list[str], truth: nn.Module, loss_at: LossAt, block: str, k: int = 2) -> None:
    """sweep, hessian (on the parameters `block` matches) and roughness through the CLI, each checked."""
    r = cli("sweep", *load, "--x", "-1:1:3", "-o", tmp / "s.h5")
    assert r.code == 0, r.err
    check_sweep(tmp / "s.h5", truth, loss_at)
    r = cli("hessian", *load, "--params", block, "--top-k", str(k), "-o", tmp / "h.h5")
    assert r.code == 0, r.err
    check_hessian(tmp / "h.h5", truth, loss_at, k)
    r = cli(
        "roughness",
        *load,
        "--directions",
        "3",
        "--steps",
        "4",
        "--span",
        "0.2",
        "--dtype",
        "float32",
        "-o",
        tmp / "r.h5",
    )
    assert r.code == 0, r.err
    check_roughness(tmp / "r.h5", truth, loss_at)


# --------------------------------------------------------------------------- Hugging Face


def test_gpt2_save_pretrained_next_token(cli, tmp_path):
    """A causal LM saved by save_pretrained (lm_head tied to the embedding, left out of the file),
    loaded as a model directory, with the built-in next-token loss; the Hessian of a LayerNorm before
    the attention needs attention's double backward."""
    transformers = _import("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=2, n_head=2, n_embd=32, vocab_size=64, n_positions=16, eos_token_id=0, bos_token_id=0
    )
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path / "gpt2")
    ids = torch.randint(0, 64, (8, 12))
    mask = torch.ones_like(ids)
    torch.save({"input_ids": ids, "attention_mask": mask}, tmp_path / "tokens.pt")
    truth = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "gpt2").double().eval()
    assert truth.lm_head.weight is truth.transformer.wte.weight

    def loss_at(model, params):
        return functional_call(model, params, (), {"input_ids": ids, "attention_mask": mask, "labels": ids}).loss

    load = ["--checkpoint", tmp_path / "gpt2", "--data", tmp_path / "tokens.pt", "--loss", "next-token"]
    r = cli("sweep", *load, "--x", "0:0:1", "-o", tmp_path / "c.h5")
    assert r.code == 0 and "reading its .logits" in r.err and "GPT2LMHeadModel" in r.err, r.err
    run_all(cli, tmp_path, load, truth, loss_at, block=r"h\.0\.ln_1")


def test_bert_dict_dataloader_and_sharded_checkpoint(cli, tmp_path):
    """A sequence classifier whose data is a DataLoader of HF-style dict batches (labels int32), its
    checkpoint saved in shards (an index file and several safetensors)."""
    transformers = _import("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=2,
        intermediate_size=48,
        vocab_size=64,
        max_position_embeddings=32,
        num_labels=3,
    )
    transformers.BertForSequenceClassification(config).save_pretrained(tmp_path / "bert", max_shard_size="40KB")
    assert (tmp_path / "bert" / "model.safetensors.index.json").is_file()
    ids, labels = torch.randint(0, 64, (12, 10)), torch.randint(0, 3, (12,), dtype=torch.int32)
    mask = torch.ones_like(ids)
    mask[:4, 7:] = 0  # padded rows
    (tmp_path / "data.py").write_text(
        textwrap.dedent(
            """
        import torch
        from torch.utils.data import DataLoader, Dataset

        class Rows(Dataset):
            def __init__(self, d): self.d = d
            def __len__(self): return len(self.d["labels"])
            def __getitem__(self, i): return {k: v[i] for k, v in self.d.items()}

        def loader():
            return DataLoader(Rows(torch.load("%s")), batch_size=5)
    """
            % (tmp_path / "rows.pt")
        )
    )
    torch.save({"input_ids": ids, "attention_mask": mask, "labels": labels}, tmp_path / "rows.pt")
    truth = transformers.BertForSequenceClassification.from_pretrained(tmp_path / "bert").double().eval()

    def loss_at(model, params):
        return functional_call(
            model, params, (), {"input_ids": ids, "attention_mask": mask, "labels": labels.long()}
        ).loss

    load = ["--checkpoint", tmp_path / "bert", "--data", f"{tmp_path / 'data.py'}:loader"]
    run_all(cli, tmp_path, load, truth, loss_at, block=r"embeddings\.LayerNorm|classifier\.bias")
    # the empirical Fisher over keyword inputs: (1/N) sum_i g_i g_i^T from each sample's own HF loss
    r = cli(
        "hessian",
        *load,
        "--curvature",
        "fisher",
        "--params",
        r"classifier\.bias",
        "--top-k",
        "2",
        "-o",
        tmp_path / "f.h5",
    )
    assert r.code == 0, r.err
    bias = truth.classifier.bias
    grads = []
    for i in range(len(labels)):
        one = truth(input_ids=ids[i : i + 1], attention_mask=mask[i : i + 1], labels=labels[i : i + 1].long()).loss
        grads.append(torch.autograd.grad(one, bias)[0])
    g = torch.stack(grads)
    want = np.sort(np.linalg.eigvalsh((g.T @ g / len(labels)).numpy()))[::-1][:2]
    with h5py.File(tmp_path / "f.h5", "r") as f:
        np.testing.assert_allclose(f["hessian/eigenvalues"][()], want, rtol=1e-4)


def test_hf_vision_model_whose_library_renames_keys_on_load(cli, tmp_path):
    """transformers 5 saves some models (ViT) under older key names than it builds them with and
    renames them in from_pretrained: a model directory is read by the library's own loader. The data
    is one named column (pixel_values), passed positionally."""
    transformers = _import("transformers")
    torch.manual_seed(0)
    config = transformers.ViTConfig(
        image_size=16,
        patch_size=4,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=48,
        num_labels=5,
    )
    transformers.ViTForImageClassification(config).save_pretrained(tmp_path / "vit")
    x, y = torch.randn(10, 3, 16, 16), torch.randint(0, 5, (10,))
    torch.save({"pixel_values": x, "labels": y}, tmp_path / "pixels.pt")
    truth = transformers.ViTForImageClassification.from_pretrained(tmp_path / "vit").double().eval()

    def loss_at(model, params):
        return functional_call(model, params, (), {"pixel_values": x.double(), "labels": y}).loss

    load = ["--checkpoint", tmp_path / "vit", "--data", tmp_path / "pixels.pt"]
    run_all(cli, tmp_path, load, truth, loss_at, block=r"layernorm\.|classifier\.bias")


# --------------------------------------------------------------------------- torchvision, timm


def _images(tmp_path: Path, n: int = 16, classes: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-shaped arrays as they ship: float images, uint8 labels."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, 3, 32, 32, generator=gen)
    y = torch.randint(0, classes, (n,), generator=gen)
    np.savez(tmp_path / "images.npz", x=x.numpy(), y=y.numpy().astype(np.uint8))
    return x, y


def test_torchvision_resnet18_fine_tuned_head(cli, tmp_path):
    """torchvision's ResNet-18 with everything frozen but the head (fine-tuning), saved as the CIFAR
    training scripts do ({"net": DataParallel state_dict, "acc", "epoch"}): the landscape is over the
    trainable parameters only."""
    torchvision = _import("torchvision")
    (tmp_path / "models.py").write_text(
        textwrap.dedent("""
        import torchvision

        def resnet():
            return torchvision.models.resnet18(num_classes=10)

        def finetune():
            m = resnet()
            for name, p in m.named_parameters():
                p.requires_grad_(name in ("layer4.1.bn2.bias", "fc.bias"))
            return m
    """)
    )
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10).eval()
    with torch.no_grad():  # BatchNorm statistics that are not the defaults
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    torch.save(
        {"net": {f"module.{k}": v for k, v in net.state_dict().items()}, "acc": 93.1, "epoch": 200},
        tmp_path / "ckpt.pth",
    )
    x, y = _images(tmp_path)
    truth = copy.deepcopy(net).double()

    def loss_at(model, params):
        return F.cross_entropy(functional_call(model, params, (x.double(),)), y)

    load = [
        "--model",
        f"{tmp_path / 'models.py'}:finetune",
        "--checkpoint",
        tmp_path / "ckpt.pth",
        "--data",
        tmp_path / "images.npz",
    ]
    r = cli("hessian", *load, "--top-k", "2", "-o", tmp_path / "h.h5")
    assert r.code == 0, r.err
    assert "stripped the 'module.' prefix" in r.err and "read the weights under 'net'" in r.err
    assert "are frozen (requires_grad=False) and left out" in r.err
    names = check_hessian(tmp_path / "h.h5", truth, loss_at, 2)
    assert names == ["layer4.1.bn2.bias", "fc.bias"]
    r = cli("sweep", *load, "--x", "-1:1:3", "-o", tmp_path / "s.h5")
    assert r.code == 0, r.err
    check_sweep(tmp_path / "s.h5", truth, loss_at)
    # all parameters (the factory without frozen ones): every strategy agrees with the direct loss
    load[1] = f"{tmp_path / 'models.py'}:resnet"
    r = cli("roughness", *load, "--directions", "2", "--steps", "4", "--span", "0.2", "-o", tmp_path / "r.h5")
    assert r.code == 0, r.err
    check_roughness(tmp_path / "r.h5", truth, loss_at)


def test_timm_vit_train_script_checkpoint(cli, tmp_path):
    """timm's ViT (patch 4, 32x32) in the layout of timm's train script (state_dict and state_dict_ema):
    ambiguous until --checkpoint-key picks one; its attention runs through F.scaled_dot_product_attention."""
    timm = _import("timm")
    (tmp_path / "models.py").write_text(
        textwrap.dedent("""
        import timm

        def vit():
            return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=32,
                                     patch_size=4, embed_dim=32, depth=2, num_heads=2)
    """)
    )
    torch.manual_seed(0)
    make = {
        "pretrained": False,
        "num_classes": 10,
        "img_size": 32,
        "patch_size": 4,
        "embed_dim": 32,
        "depth": 2,
        "num_heads": 2,
    }
    net, ema = (
        timm.create_model("vit_tiny_patch16_224", **make).eval(),
        timm.create_model("vit_tiny_patch16_224", **make).eval(),
    )
    torch.save(
        {"epoch": 3, "arch": "vit", "state_dict": net.state_dict(), "state_dict_ema": ema.state_dict()},
        tmp_path / "last.pth.tar",
    )
    x, y = _images(tmp_path)
    load = [
        "--model",
        f"{tmp_path / 'models.py'}:vit",
        "--checkpoint",
        tmp_path / "last.pth.tar",
        "--data",
        tmp_path / "images.npz",
    ]
    r = cli("sweep", *load, "-o", tmp_path / "a.h5")
    assert r.code == 2 and "more than once" in r.err and "--checkpoint-key" in r.err and "Traceback" not in r.err, r.err
    truth = copy.deepcopy(ema).double()

    def loss_at(model, params):
        return F.cross_entropy(functional_call(model, params, (x.double(),)), y)

    run_all(cli, tmp_path, [*load, "--checkpoint-key", "state_dict_ema"], truth, loss_at, block=r"blocks\.0\.norm1")


# --------------------------------------------------------------------------- Lightning, torch.compile


def test_lightning_checkpoint_with_ema_and_loss_weights(cli, tmp_path):
    """A checkpoint written by Trainer.fit of a LightningModule holding the net, a loss with a weight
    buffer and an EMA copy of the net: the prefix must be picked (--prefix net.), the rest is ignored."""
    lightning = _import("lightning")
    (tmp_path / "lit.py").write_text(
        textwrap.dedent("""
        import copy
        import lightning as L
        import torch
        import torch.nn as nn

        def net():
            return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(128, 10))

        class Classifier(L.LightningModule):
            def __init__(self):
                super().__init__()
                self.net = net()
                self.ema = copy.deepcopy(self.net)
                self.criterion = nn.CrossEntropyLoss(weight=torch.linspace(0.5, 1.5, 10))

            def training_step(self, batch, i):
                x, y = batch
                return self.criterion(self.net(x), y)

            def configure_optimizers(self):
                return torch.optim.SGD(self.net.parameters(), lr=0.05)
    """)
    )
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("lit_for_test", tmp_path / "lit.py")
    lit = importlib.util.module_from_spec(spec)
    sys.modules["lit_for_test"] = lit
    spec.loader.exec_module(lit)
    x, y = _images(tmp_path, n=32)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    torch.manual_seed(0)
    trainer = lightning.Trainer(
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        default_root_dir=tmp_path,
    )
    module = lit.Classifier()
    trainer.fit(module, data)
    trainer.save_checkpoint(tmp_path / "epoch=0.ckpt")
    load = [
        "--model",
        f"{tmp_path / 'lit.py'}:net",
        "--checkpoint",
        tmp_path / "epoch=0.ckpt",
        "--data",
        tmp_path / "images.npz",
    ]
    r = cli("sweep", *load, "-o", tmp_path / "a.h5")
    assert r.code == 2 and "--prefix" in r.err and "'net.'" in r.err and "'ema.'" in r.err, r.err
    truth = copy.deepcopy(module.net).double().eval()

    def loss_at(model, params):
        return F.cross_entropy(functional_call(model, params, (x.double(),)), y)

    r = cli("sweep", *load, "--prefix", "net.", "--x", "0:0:1", "-o", tmp_path / "c.h5")
    assert r.code == 0 and "stripped the 'net.' prefix" in r.err and "ignored 10 other tensors" in r.err, r.err
    run_all(cli, tmp_path, [*load, "--prefix", "net."], truth, loss_at, block=r"^5\.")


@pytest.mark.parametrize("layout", ["_orig_mod.", "module._orig_mod.", "inner"])
def test_compiled_state_dicts(cli, tmp_path, layout):
    """torch.compile'd models' state_dicts (whole model, under DDP, or one compiled submodule)."""
    torchvision = _import("torchvision")
    torch.manual_seed(0)
    net = torchvision.ops.MLP(3 * 32 * 32, [16, 10])
    flat = nn.Sequential(nn.Flatten(), net)
    if layout == "inner":
        outer = nn.Sequential(nn.Flatten(), torch.compile(net))
        state = outer.state_dict()
        assert any("._orig_mod." in k for k in state)
    else:
        state = {layout + k: v for k, v in flat.state_dict().items()}
        if layout == "_orig_mod.":
            assert set(torch.compile(flat).state_dict()) == set(state)
    torch.save(state, tmp_path / "compiled.pt")
    (tmp_path / "models.py").write_text(
        "import torch.nn as nn, torchvision\n"
        "def mlp():\n    return nn.Sequential(nn.Flatten(), torchvision.ops.MLP(3 * 32 * 32, [16, 10]))\n"
    )
    x, y = _images(tmp_path)
    r = cli(
        "sweep",
        "--model",
        f"{tmp_path / 'models.py'}:mlp",
        "--checkpoint",
        tmp_path / "compiled.pt",
        "--data",
        tmp_path / "images.npz",
        "--x",
        "-1:1:3",
        "-o",
        tmp_path / "s.h5",
    )
    assert r.code == 0 and "_orig_mod." in r.err, r.err
    truth = copy.deepcopy(flat).double().eval()
    check_sweep(tmp_path / "s.h5", truth, lambda m, p: F.cross_entropy(functional_call(m, p, (x.double(),)), y))


# --------------------------------------------------------------------------- outputs and data as people have them


class _Structured(nn.Module):
    """A torchvision model whose forward returns a tuple, a dict or a ModelOutput-like object."""

    def __init__(self, kind: str):
        super().__init__()
        import torchvision

        self.body = torchvision.ops.MLP(6, [12, 3], activation_layer=nn.Tanh)
        self.kind = kind

    def forward(self, x):
        logits = self.body(x)
        feats = logits.tanh()
        if self.kind == "tuple":
            return logits, feats
        if self.kind == "dict":
            return {"logits": logits, "features": feats}
        return _Output(logits, feats)


class _Output(dict):
    """Like a Hugging Face ModelOutput: a dict whose entries are also attributes."""

    def __init__(self, logits, features):
        super().__init__(logits=logits, features=features)
        self.logits, self.features = logits, features


@pytest.mark.parametrize("kind", ["tuple", "dict", "object"])
def test_structured_outputs_every_strategy_and_curvature(kind):
    """The built-in losses read the logits of any output; every sweep strategy and every curvature
    product gives the plain model's numbers."""
    _import("torchvision")
    from landscape.curvature.operators import CURVATURES, CurvatureOperator
    from landscape.directions import random_directions
    from landscape.losses import cross_entropy
    from landscape.problem import make_problem
    from landscape.strategies import STRATEGIES, NotApplicable, build_strategy

    torch.manual_seed(0)
    model = _Structured(kind)
    plain = copy.deepcopy(model.body)
    x, y = torch.randn(40, 6), torch.randint(0, 3, (40,))
    said: list[str] = []
    problem = make_problem(
        model, model.state_dict(), x, y, cross_entropy, device=torch.device("cpu"), dtype=torch.float64, say=said.append
    )
    assert any("reading its" in s for s in said), said
    dirs = random_directions(1, problem.theta, problem.layout, seed=0)
    coords = torch.tensor([[-0.5], [0.0], [0.7]], dtype=torch.float64)
    d = problem.layout.unflatten(dirs[0])
    want = []
    for c in coords[:, 0]:
        params = {n.removeprefix("body."): p + c * d[n] for n, p in problem.layout.unflatten(problem.theta).items()}
        want.append(float(F.cross_entropy(functional_call(plain.double(), params, (x.double(),)), y)))
    ran = []
    for name in (n for n in STRATEGIES if n != "compiled"):  # its compile takes tens of seconds: test_sweep's own test
        try:
            strat = build_strategy(name, problem, dirs)
        except NotApplicable:
            continue
        ran.append(name)
        got = strat.evaluate(coords)
        strat.close()
        np.testing.assert_allclose(got.loss.numpy(), want, rtol=1e-10, err_msg=name)
    assert {"loop", "vmap", "firstlayer"} <= set(ran)
    plain_problem = make_problem(
        copy.deepcopy(model.body),
        model.body.state_dict(),
        x,
        y,
        cross_entropy,
        device=torch.device("cpu"),
        dtype=torch.float64,
    )
    v = torch.randn(2, problem.layout.size, dtype=torch.float64)
    for curvature in CURVATURES:
        got = CurvatureOperator(problem, curvature=curvature).matmat(v)
        ref = CurvatureOperator(plain_problem, curvature=curvature).matmat(v)
        torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-12, msg=curvature)


def test_structured_output_reaches_a_users_loss_as_it_is(cli, tmp_path):
    """A user's --loss gets the tuple itself; a GGN of a user loss on a tuple says what to do."""
    (tmp_path / "m.py").write_text(
        textwrap.dedent("""
        import torch, torch.nn as nn, torch.nn.functional as F, torchvision

        class Two(nn.Module):
            def __init__(self):
                super().__init__()
                self.body = torchvision.ops.MLP(6, [12, 3])
            def forward(self, x):
                out = self.body(x)
                return out, out.pow(2).mean()

        def make():
            return Two()

        def loss(output, target):
            logits, penalty = output
            return F.cross_entropy(logits, target) + 0.1 * penalty

        def data():
            g = torch.Generator().manual_seed(0)
            return torch.randn(30, 6, generator=g), torch.randint(0, 3, (30,), generator=g)
    """)
    )
    _import("torchvision")
    torch.manual_seed(0)
    torch.save(
        __import__("landscape.io.spec", fromlist=["x"])
        .resolve_callable(f"{tmp_path / 'm.py'}:make", "--model")()
        .state_dict(),
        tmp_path / "w.pt",
    )
    load = [
        "--model",
        f"{tmp_path / 'm.py'}:make",
        "--checkpoint",
        tmp_path / "w.pt",
        "--data",
        f"{tmp_path / 'm.py'}:data",
        "--loss",
        f"{tmp_path / 'm.py'}:loss",
    ]
    r = cli("sweep", *load, "--x", "-1:1:3", "-o", tmp_path / "s.h5")
    assert r.code == 0, r.err
    r = cli("hessian", *load, "--top-k", "1", "-o", tmp_path / "h.h5")
    assert r.code == 0, r.err
    r = cli("hessian", *load, "--top-k", "1", "--curvature", "ggn", "-o", tmp_path / "g.h5")
    assert r.code == 2 and "needs the model's output as one tensor" in r.err and "Traceback" not in r.err, r.err
    assert not (tmp_path / "g.h5").exists()


def test_pil_dataset_is_refused_with_a_hint_and_a_transform_fixes_it(cli, tmp_path):
    """torchvision's FakeData without a transform yields PIL images: one line saying what to pass."""
    _import("torchvision")
    (tmp_path / "d.py").write_text(
        textwrap.dedent("""
        import torchvision

        def pil():
            return torchvision.datasets.FakeData(size=8, image_size=(3, 8, 8), num_classes=4)

        def tensors():
            return torchvision.datasets.FakeData(size=8, image_size=(3, 8, 8), num_classes=4,
                                                 transform=torchvision.transforms.ToTensor())
    """)
    )
    (tmp_path / "m.py").write_text(
        "import torch.nn as nn\ndef make():\n    return nn.Sequential(nn.Flatten(), nn.Linear(192, 4))\n"
    )
    torch.manual_seed(0)
    torch.save(nn.Sequential(nn.Flatten(), nn.Linear(192, 4)).state_dict(), tmp_path / "w.pt")
    base = ["--model", f"{tmp_path / 'm.py'}:make", "--checkpoint", tmp_path / "w.pt", "--x", "-1:1:3"]
    r = cli("sweep", *base, "--data", f"{tmp_path / 'd.py'}:pil", "-o", tmp_path / "a.h5")
    assert r.code == 2 and "PIL images" in r.err and "ToTensor" in r.err and "Traceback" not in r.err, r.err
    r = cli("sweep", *base, "--data", f"{tmp_path / 'd.py'}:tensors", "-o", tmp_path / "b.h5")
    assert r.code == 0, r.err


def test_input_and_target_keys_name_the_columns(cli, tmp_path):
    """--input-key and --target-key pick the columns of dict data (an extra column is left alone);
    the stored values are the direct loss of the torchvision model on those columns."""
    torchvision = _import("torchvision")
    (tmp_path / "m.py").write_text("import torchvision\ndef make():\n    return torchvision.ops.MLP(6, [12, 4])\n")
    torch.manual_seed(0)
    net = torchvision.ops.MLP(6, [12, 4]).eval()
    torch.save(net.state_dict(), tmp_path / "w.pt")
    x, y = torch.randn(20, 6), torch.randint(0, 4, (20,), dtype=torch.int32)
    torch.save({"features": x, "class_id": y, "sample_id": torch.arange(20)}, tmp_path / "cols.pt")
    load = ["--model", f"{tmp_path / 'm.py'}:make", "--checkpoint", tmp_path / "w.pt", "--data", tmp_path / "cols.pt"]
    r = cli("sweep", *load, "--x", "-1:1:3", "-o", tmp_path / "a.h5")
    assert r.code == 2 and "--target-key" in r.err and "Traceback" not in r.err, (
        r.err
    )  # no column says it is the targets
    r = cli(
        "sweep", *load, "--input-key", "features", "--target-key", "class_id", "--x", "-1:1:3", "-o", tmp_path / "s.h5"
    )
    assert r.code == 0, r.err
    truth = copy.deepcopy(net).double()
    check_sweep(tmp_path / "s.h5", truth, lambda m, p: F.cross_entropy(functional_call(m, p, (x.double(),)), y.long()))


def test_mobilenet_v3_hessian_through_hardsigmoid_against_finite_differences():
    """torchvision's MobileNetV3 gates its squeeze-excite blocks with hardsigmoid, whose backward PyTorch
    cannot differentiate again: every Hessian product failed. Each curvature forward now runs it as
    relu6(x + 3) / 6; the products must equal central differences of gradients taken through the
    model's own hardsigmoid (first derivatives only), and `hessian` must find an eigenpair that holds."""
    torchvision = _import("torchvision")
    import landscape as ls
    from landscape.curvature.operators import CurvatureOperator

    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small(num_classes=5).double().eval()
    for m in model.modules():  # running statistics off their defaults, as a trained model has them
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    x, y = torch.randn(4, 3, 32, 32, dtype=torch.float64), torch.randint(0, 5, (4,))
    # the landscape over the first block (its squeeze-excite gate included); the forward runs the whole model
    problem = ls.Problem(model, (x, y), "cross-entropy", dtype=torch.float64, params=r"features\.1\.")
    names = problem.layout.names
    assert any("fc2" in n for n in names)  # the gate's input layer: its Hessian goes through hardsigmoid twice

    def gradient(flat: torch.Tensor) -> torch.Tensor:
        params = {n: t.requires_grad_() for n, t in problem.layout.unflatten(flat.clone()).items()}
        loss = F.cross_entropy(functional_call(model, params, (x,)), y)
        return torch.cat([g.flatten() for g in torch.autograd.grad(loss, [params[n] for n in names])])

    def by_differences(v: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
        return (gradient(problem.theta + eps * v) - gradient(problem.theta - eps * v)) / (2 * eps)

    v = torch.randn(2, problem.layout.size, dtype=torch.float64)
    got = CurvatureOperator(problem).matmat(v)
    for i in range(2):
        want = by_differences(v[i])
        assert float((got[i] - want).norm()) < 1e-5 * float(want.norm())
    result = ls.hessian(problem, top_k=1)
    assert result.model.eigen is not None and result.model.eigen.eigenvectors is not None
    value, vector = float(result.model.eigen.eigenvalues[0]), result.model.eigen.eigenvectors[0].double()
    hv = by_differences(vector)
    assert float(vector @ hv) == pytest.approx(value, rel=1e-5)
    assert float((hv - value * vector).norm()) < 1e-3 * abs(value)


class _TakesIds(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb, self.head = torch.nn.Embedding(20, 8), torch.nn.Linear(8, 3)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.emb(input_ids).mean(1))


@pytest.mark.parametrize("stream", [False, True])
def test_columns_the_forward_takes_no_argument_for_are_left_out(stream):
    """A data set's extra column (an `idx`) went to the model: "forward() got an unexpected keyword argument
    'idx'". As the Hugging Face Trainer does, such columns are now left out, and that is said."""
    import landscape as ls

    torch.manual_seed(0)
    cols = {"input_ids": torch.randint(0, 20, (16, 5)), "attention_mask": torch.ones(16, 5, dtype=torch.long)}
    cols |= {"idx": torch.arange(16), "labels": torch.randint(0, 3, (16,))}
    rows = torch.utils.data.StackDataset(**cols)  # a map-style Dataset of dict rows
    model, said = _TakesIds(), []
    problem = ls.Problem(model, rows if stream else cols, stream=stream, say=said.append)
    assert (
        "the model's forward takes no 'idx': left out of its inputs (--input-key or input_keys passes named ones)"
        in said
    )
    sweep = ls.sweep(problem, ls.random_axes(problem, 1), x=(0, 0, 1))
    assert sweep.loss[0] == pytest.approx(float(F.cross_entropy(model(cols["input_ids"]), cols["labels"])), rel=1e-6)


def test_transformer_encoder_fused_kernel_under_every_strategy_without_pytorchs_warning():
    """`nn.TransformerEncoder` runs its fused inference kernel in no-grad passes, which has no vmap
    batching rule: vmap loops over the points and PyTorch warned "There is a performance drop ..." on
    every sweep's probe. The values must still be the model's, and the warning (the probe times that
    cost) is not the user's to read."""
    from landscape.directions import random_directions
    from landscape.losses import cross_entropy
    from landscape.problem import make_problem

    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.1, batch_first=True)
    model = nn.Sequential(nn.TransformerEncoder(layer, 2, enable_nested_tensor=False), nn.Flatten(), nn.Linear(80, 3))
    model.eval()
    x, y = torch.randn(12, 5, 16), torch.randint(0, 3, (12,))
    problem = make_problem(
        model, model.state_dict(), x, y, cross_entropy, device=torch.device("cpu"), dtype=torch.float32
    )
    dirs = random_directions(1, problem.theta, problem.layout, seed=0)
    coords = torch.tensor([[-0.5], [0.0], [0.7]])
    d, theta = problem.layout.unflatten(dirs[0]), problem.layout.unflatten(problem.theta)
    truth = copy.deepcopy(model).double()
    want = []
    for c in coords[:, 0].tolist():  # with gradients on: PyTorch's unfused layers, in float64
        params = {n: (p + c * d[n]).double().requires_grad_() for n, p in theta.items()}
        want.append(F.cross_entropy(functional_call(truth, params, (x.double(),)), y).item())
    ran = _each_strategy(problem, dirs, coords)
    for name, (loss, caught) in ran.items():
        np.testing.assert_allclose(loss, want, rtol=2e-5, err_msg=name)
        assert not [m for m in caught if "performance drop" in m], name
    assert {"loop", "vmap"} <= set(ran)


def _each_strategy(problem, dirs: torch.Tensor, coords: torch.Tensor) -> dict[str, tuple[np.ndarray, list[str]]]:
    """Every strategy that applies (but `compiled`), by name: its losses at `coords` and the warnings it raised."""
    from landscape.strategies import STRATEGIES, NotApplicable, build_strategy

    ran = {}
    for name in (n for n in STRATEGIES if n != "compiled"):
        try:
            strat = build_strategy(name, problem, dirs)
        except NotApplicable:
            continue
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            got = strat.evaluate(coords)
        strat.close()
        ran[name] = (got.loss.numpy(), [str(w.message) for w in caught])
    return ran


def _loss_of(x: torch.Tensor, y: torch.Tensor) -> LossAt:
    """The cross-entropy of a classifier's logits on (x, y), with `params` swapped into the model."""
    from landscape.model_io import logits_of

    return lambda model, params: F.cross_entropy(logits_of(functional_call(model, params, (x,))), y)


def _tiny_levit(library: str) -> nn.Module:
    """A small LeViT on 64x64 images (attention biases gathered from a parameter)."""
    if library == "timm":
        levit = _import("timm.models.levit")
        return levit.Levit(img_size=64, num_classes=10, embed_dim=(32, 48), key_dim=8, depth=(1, 1), num_heads=(2, 3))
    transformers = _import("transformers")
    config = transformers.LevitConfig(
        image_size=64, hidden_sizes=[32, 48, 64], num_attention_heads=[2, 3, 4], depths=[1, 1, 1],
        key_dim=[8, 8, 8], mlp_ratio=[2, 2, 2], attention_ratio=[2, 2, 2], num_labels=10, initializer_range=0.3,
    )  # fmt: skip
    return transformers.LevitForImageClassification(config)


@pytest.mark.parametrize("library", ["timm", "transformers"])
def test_attention_biases_cached_in_eval_mode_are_gathered_again_at_every_point(library):
    """timm's and Hugging Face's LeViT gather their attention biases from a parameter at their first
    eval-mode pass and reuse them until `train()` is called. Every point, product and gradient must
    use the biases of its own weights (truth: a new instance of the model loaded with them), and the
    model handed back must give what it gave before."""
    from landscape.curvature.operators import CurvatureOperator
    from landscape.directions import random_directions
    from landscape.losses import cross_entropy
    from landscape.model_io import logits_of
    from landscape.problem import make_problem

    torch.manual_seed(0)
    model = _tiny_levit(library).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "attention_biases" in name:
                p.normal_()  # trained biases are not the initial zeros
    x, y = torch.randn(6, 3, 64, 64), torch.randint(0, 10, (6,))
    with torch.no_grad():
        before = logits_of(model(x))  # fills the caches, as a user's own evaluation would
    state = {k: v.clone() for k, v in model.state_dict().items()}
    problem = make_problem(model, state, x, y, cross_entropy, device=torch.device("cpu"), dtype=torch.float32)
    dirs = random_directions(1, problem.theta, problem.layout, seed=0)
    d = problem.layout.unflatten(dirs[0])
    assert any("attention_biases" in n and bool(v.abs().sum() > 0) for n, v in d.items())

    def fresh(params: dict[str, torch.Tensor]) -> nn.Module:
        other = _tiny_levit(library)
        other.load_state_dict({**state, **params})
        return other.eval()

    coords = torch.tensor([[-0.5], [0.0], [0.7]])
    want = []
    for c in coords[:, 0].tolist():
        with torch.no_grad():
            truth = fresh({n: state[n] + c * d[n] for n in d})
            want.append(F.cross_entropy(logits_of(truth(x)), y).item())
    ran = _each_strategy(problem, dirs, coords)
    for name, (loss, _) in ran.items():
        np.testing.assert_allclose(loss, want, rtol=2e-5, err_msg=name)
    assert {"loop", "vmap"} <= set(ran)

    with torch.no_grad():
        assert torch.equal(logits_of(model(x)), before)

    biases = [n for n in d if "attention_biases" in n]  # their Hessian block, in float64: 0 with stale biases
    problem64 = make_problem(model, state, x, y, cross_entropy, device=torch.device("cpu"), dtype=torch.float64)
    op = CurvatureOperator(problem64, names=biases)
    size = sum(state[n].numel() for n in biases)
    got_h = op.matmat(torch.eye(size, dtype=torch.float64))
    op.close()
    want_h = exact_block(fresh({}).double(), _loss_of(x.double(), y), biases)
    scale = float(want_h.abs().max())
    assert scale > 1e-8  # the biases curve the loss
    np.testing.assert_allclose(got_h.numpy(), want_h.numpy(), rtol=1e-6, atol=1e-6 * scale)


def _wav2vec2() -> nn.Module:
    """Hugging Face Wav2Vec2 on raw audio: a convolutional feature encoder, a weight-normed positional
    convolution (a `parametrizations.weight` pair of parameters), a transformer layer, a pooled head."""
    transformers = _import("transformers")
    config = transformers.Wav2Vec2Config(
        vocab_size=32, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        conv_dim=(16, 16), conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2, num_labels=10,
    )  # fmt: skip
    return transformers.Wav2Vec2ForSequenceClassification(config)


def _swin() -> nn.Module:
    """Hugging Face Swin: shifted windows, relative position bias tables indexed by a buffer."""
    transformers = _import("transformers")
    config = transformers.SwinConfig(
        image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=4, num_labels=10
    )
    return transformers.SwinForImageClassification(config)


def _googlenet() -> nn.Module:
    """torchvision GoogLeNet (inception blocks: four branches concatenated, BatchNorm after every convolution)."""
    return _import("torchvision").models.googlenet(num_classes=10, aux_logits=False, init_weights=True)


def _timm_efficientnet() -> nn.Module:
    """timm's EfficientNet-B0: its BatchNorms are BatchNormAct2d (norm, dropout and activation in one
    module, computed by `F.batch_norm` on its own statistics), with trained-looking statistics."""
    model = _import("timm").create_model("efficientnet_b0", pretrained=False, num_classes=10)
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))
                m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=gen))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=gen))
    return model


def _timm_resnet_gn() -> nn.Module:
    """timm's ResNet-10-T (a deep stem of three convolutions) with GroupNorm: nothing to fold, its
    convolutions laid out alone (1x1 maps in layer4 at 32x32 inputs: matrix products)."""
    timm = _import("timm")
    from timm.layers import GroupNorm

    return timm.create_model(
        "resnet10t", pretrained=False, num_classes=10, norm_layer=functools.partial(GroupNorm, num_groups=8)
    )


def _timm_convnext() -> nn.Module:
    """timm's ConvNeXt-atto: a patchify stem, 7x7 depthwise convolutions, LayerNorm2d, GELU, layer scale."""
    return _import("timm").create_model("convnext_atto", pretrained=False, num_classes=10)


@pytest.mark.parametrize(
    "build, inputs, must",
    [
        (_wav2vec2, lambda: torch.randn(4, 1600), {"loop", "vmap"}),
        (_swin, lambda: torch.randn(4, 3, 32, 32), {"loop", "vmap"}),
        (_googlenet, lambda: torch.randn(2, 3, 32, 32), {"loop", "vmap", "fused", "firstlayer-fused"}),
        (_timm_efficientnet, lambda: torch.randn(2, 3, 32, 32), {"loop", "vmap", "fused", "firstlayer-fused"}),
        (_timm_resnet_gn, lambda: torch.randn(2, 3, 32, 32), {"loop", "vmap", "fused", "firstlayer-fused"}),
        (_timm_convnext, lambda: torch.randn(2, 3, 32, 32), {"loop", "vmap", "fused", "firstlayer-fused"}),
    ],
    ids=["wav2vec2", "swin", "googlenet", "timm-efficientnet", "timm-resnet-gn", "timm-convnext"],
)
def test_library_models_under_every_strategy_and_their_curvature(build, inputs, must):
    """Every sweep strategy that applies equals a fresh instance of the model loaded with theta + c d
    (`must`: those that have to apply; timm's BatchNormAct2d is folded by the fused ones, and convolutions
    with no BatchNorm after them, GroupNorm's and ConvNeXt's, are laid out alone by them), and a
    Hessian block (a mid-model parameter of at most 64 entries and the head's bias) equals
    `torch.func.hessian` on a fresh instance, in float64."""
    from landscape.curvature.operators import CurvatureOperator
    from landscape.directions import random_directions
    from landscape.losses import cross_entropy
    from landscape.model_io import logits_of
    from landscape.problem import make_problem

    torch.manual_seed(0)
    model = build().eval()
    pristine = copy.deepcopy(model)
    x = inputs()
    y = torch.randint(0, 10, (len(x),))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    problem = make_problem(model, state, x, y, cross_entropy, device=torch.device("cpu"), dtype=torch.float32)
    dirs = random_directions(1, problem.theta, problem.layout, seed=0)
    d = problem.layout.unflatten(dirs[0])
    coords = torch.tensor([[-0.5], [0.0], [0.7]])
    want = []
    for c in coords[:, 0].tolist():
        truth = copy.deepcopy(pristine)
        truth.load_state_dict({**state, **{n: state[n] + c * d[n] for n in d}})
        with torch.no_grad():
            want.append(F.cross_entropy(logits_of(truth(x)), y).item())
    ran = _each_strategy(problem, dirs, coords)
    for name, (loss, _) in ran.items():
        np.testing.assert_allclose(loss, want, rtol=2e-5, err_msg=name)
    assert must <= set(ran)

    names = [n for n, _ in model.named_parameters()]
    small = [n for n in names if state[n].numel() <= 64]
    block = sorted({small[len(small) // 2], names[-1]}, key=names.index)
    problem64 = make_problem(model, state, x, y, cross_entropy, device=torch.device("cpu"), dtype=torch.float64)
    op = CurvatureOperator(problem64, names=block)
    size = sum(state[n].numel() for n in block)
    got = op.matmat(torch.eye(size, dtype=torch.float64))
    op.close()
    want_h = exact_block(copy.deepcopy(pristine).double(), _loss_of(x.double(), y), block)
    scale = float(want_h.abs().max())
    assert scale > 1e-3
    np.testing.assert_allclose(got.numpy(), want_h.numpy(), rtol=1e-7, atol=1e-10 * scale)
