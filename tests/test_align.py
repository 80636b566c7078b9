"""Permutation alignment (weight matching, Git Re-Basin): on library models built here with random
weights, a random permutation of the units the graph allows leaves the function unchanged, and
weight matching undoes it exactly; on two independently trained MLPs it lowers the barrier."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
from conftest import trained_pair

import landscape as ls
from landscape.alignment import permutation_spec, permute_state, random_permutations, weight_matching
from landscape.errors import LandscapeError
from landscape.io.checkpoint import read_state_dict
from landscape.io.samples import sample


def _randomized(model: nn.Module) -> nn.Module:
    """float64, eval mode, BatchNorm statistics and affine weights away from their init (1 and 0 carry no
    information to match on, and would hide a permutation that forgets them)."""
    model = model.double().eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                mod.running_mean.copy_(torch.randn(mod.running_mean.shape, generator=gen, dtype=torch.float64))
                mod.running_var.copy_(torch.rand(mod.running_var.shape, generator=gen, dtype=torch.float64) + 0.5)
                mod.weight.copy_(torch.rand(mod.weight.shape, generator=gen, dtype=torch.float64) + 0.5)
                mod.bias.copy_(torch.randn(mod.bias.shape, generator=gen, dtype=torch.float64))
    return model


def _library_model(name: str) -> tuple[nn.Module, torch.Tensor]:
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    if name == "mlp":
        return nn.Sequential(
            nn.Flatten(), nn.Linear(48, 32), nn.GELU(), nn.Linear(32, 24), nn.Tanh(), nn.Linear(24, 5)
        ), x[:, :, :4, :4]
    tv = pytest.importorskip("torchvision")
    if name == "resnet18":
        return tv.models.resnet18(num_classes=10), x
    if name == "mobilenet_v3_small":
        return tv.models.mobilenet_v3_small(num_classes=10), x
    if name == "vit":
        from torchvision.models.vision_transformer import VisionTransformer

        return VisionTransformer(
            image_size=32, patch_size=4, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=10
        ), x
    timm = pytest.importorskip("timm")
    return timm.create_model(name, num_classes=10), x


# expected groups: the MLP's two hidden layers; ResNet-18's 8 inner units + 4 residual streams;
# a ViT's residual stream meets a concatenated class token (fixed) but each block's MLP hidden units
# are free (2 blocks)
GROUPS = {"mlp": 2, "resnet18": 12, "vit": 2}


@pytest.mark.parametrize("name", ["mlp", "resnet18", "mobilenet_v3_small", "vit", "regnetx_002"])
def test_a_random_permutation_keeps_the_function_and_matching_undoes_it(name):
    model, x = _library_model(name)
    model = _randomized(model)
    spec = permutation_spec(model, x)
    if name in GROUPS:
        assert len(spec.groups) == GROUPS[name]
    assert spec.groups, "no group found to permute"
    a = {k: v.clone() for k, v in model.state_dict().items()}
    b = permute_state(spec, random_permutations(spec, seed=3), a)
    moved = [k for k in a if a[k].is_floating_point() and not torch.equal(a[k], b[k])]
    assert len(moved) >= len(spec.groups)  # the permutation really moved weights
    with torch.no_grad():
        want = model(x)
        model.load_state_dict(b)
        got = model(x)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    found = weight_matching(spec, a, b)
    back = permute_state(spec, found.perms, b)
    for k in a:
        assert torch.equal(back[k], a[k]), k


def test_units_used_any_other_way_stay_in_place():
    class Branches(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(6, 8), nn.Linear(6, 8)
            self.shared = nn.Linear(8, 8)
            self.free = nn.Linear(8, 16)
            self.head = nn.Linear(16 + 16, 3)

        def forward(self, x):
            h = torch.cat([self.a(x), self.b(x)], dim=1)  # concatenated: a's and b's units fixed
            u, v = h[:, :8], h[:, 8:]
            s = self.shared(torch.relu(u)) + self.shared(torch.relu(v))  # called twice: fixed
            f = torch.relu(self.free(s))  # read by a Linear only: free
            return self.head(torch.cat([f, f], dim=1))  # ...but concatenated into the head: fixed

    model = Branches().double().eval()
    spec = permutation_spec(model, torch.randn(3, 6, dtype=torch.float64))
    assert spec.groups == ()

    class Free(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.head = nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 3)

        def forward(self, x):
            h = torch.relu(self.a(x))
            return self.head(h + torch.sigmoid(self.b(h)) * h)  # residual and gate join a's and b's units

    spec = permutation_spec(Free().double().eval(), torch.randn(3, 6, dtype=torch.float64))
    assert [(g.label, g.size) for g in spec.groups] == [("a", 8)]
    assert {m.name for m in spec.groups[0].members} == {"a.weight", "a.bias", "b.weight", "b.bias", "head.weight"}

    # a layer whose weight is computed (weight norm, in a pre-hook or a parametrization) fixes its units
    # and its inputs' (it said "internal check failed for 2.weight"); the layers before still align
    for norm in (nn.utils.weight_norm, nn.utils.parametrizations.weight_norm):
        with warnings.catch_warnings(action="ignore", category=FutureWarning):
            normed = norm(nn.Linear(8, 8))
        layers = nn.Sequential(
            nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), normed, nn.ReLU(), nn.Linear(8, 3)
        )
        spec = permutation_spec(layers.double().eval(), torch.randn(3, 6, dtype=torch.float64))
        assert [(g.label, g.size) for g in spec.groups] == [("0", 8)]


def test_path_align_barrier_is_zero_for_a_permuted_copy_and_lower_for_independent_runs():
    (a, b), x, y = trained_pair(
        lambda: nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))
    )
    problem = ls.Problem(a, (x, y))
    spec = permutation_spec(a, x[:2])
    copy = permute_state(spec, random_permutations(spec, seed=5), a.state_dict())
    same = ls.path(problem, copy, points=5, align=True)
    assert same["barrier_unaligned"] > 0.1  # the permuted copy is far from A in weights...
    assert same.barrier == pytest.approx(0, abs=1e-6)  # ...and the same network once aligned
    np.testing.assert_allclose(same.arrays["loss"], same.arrays["loss"][0], atol=1e-6)
    runs = ls.path(problem, b.state_dict(), points=11, align=True)
    # Git Re-Basin's effect: measured 0.447 -> 0.035 on these two runs
    assert runs.barrier < 0.25 * runs["barrier_unaligned"]
    assert runs.settings["align"] is True
    names = [trace.name for trace in runs.plot(backend="plotly").data]
    assert any(n.startswith("before alignment (barrier") for n in names) and "loss, aligned" in names
    labels = [text.get_text() for text in runs.plot().axes[0].get_legend().get_texts()]
    assert any(label.startswith("before alignment") for label in labels)
    aligned = ls.align(problem, b.state_dict())
    assert aligned.distance_after < 0.9 * aligned.distance_before
    with torch.no_grad():
        want = b(x)
        b.load_state_dict(aligned.state)
        torch.testing.assert_close(b(x), want, rtol=1e-5, atol=1e-5)


MODEL_PY = """
import torch.nn as nn

def make():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10))
"""


def test_cli_align_writes_a_checkpoint_that_computes_b(cli, tmp_path):
    (tmp_path / "net.py").write_text(MODEL_PY)
    ns = {}
    exec(MODEL_PY, ns)
    torch.manual_seed(1)
    a, b = ns["make"](), ns["make"]()
    torch.save(a.state_dict(), tmp_path / "a.pt")
    torch.save({"model": b.state_dict()}, tmp_path / "b.pt")
    common = ["--model", f"{tmp_path}/net.py:make", "--data", sample("mlp")["data"]]
    for out in ("b_aligned.pt", "b_aligned.safetensors"):
        r = cli("align", tmp_path / "a.pt", tmp_path / "b.pt", *common, "-o", tmp_path / out)
        assert r.code == 0, r.err
        assert "2 groups of units (64 units)" in r.out
        state = read_state_dict(tmp_path / out)
        data = np.load(sample("mlp")["data"])
        x = torch.tensor(data["x"]).float()
        with torch.no_grad():
            want = b(x)
            c = ns["make"]()
            c.load_state_dict(state)
            torch.testing.assert_close(c(x), want, rtol=1e-5, atol=1e-5)
        assert not torch.equal(state["1.weight"], b.state_dict()["1.weight"])
    r = cli("align", tmp_path / "a.pt", *common, "-o", tmp_path / "one.pt")
    assert r.code == 2 and "name two checkpoints" in r.err and not (tmp_path / "one.pt").exists()
    r = cli("align", tmp_path / "a.pt", tmp_path / "b.pt", *common, "-o", tmp_path / "b.pt", "--force")
    assert r.code == 2 and "b.pt" in r.err
    r = cli("path", tmp_path / "a.pt", tmp_path / "b.pt", *common, "--align", "--points", "5", "-o", tmp_path / "p.h5")
    assert r.code == 0, r.err
    assert "barrier before alignment" in r.out
    r = cli("metrics", tmp_path / "p.h5")
    assert "barrier_unaligned" in r.out


def test_a_model_fx_cannot_trace_is_refused_in_one_line(cli, tmp_path):
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(64, 10)

        def forward(self, x):
            return self.lin(x) if x.sum() > 0 else -self.lin(x)

    problem = ls.Problem(Branchy(), (torch.randn(8, 64), torch.randint(0, 10, (8,))))
    with pytest.raises(LandscapeError, match="torch.fx cannot trace the model"):
        ls.align(problem, Branchy().state_dict())
