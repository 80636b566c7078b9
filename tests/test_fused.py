"""The fused forward pass (BatchNorm folded, ReLU in place) against the model itself, in float64."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from landscape.fused import FoldedNorm, fuse_for_inference


def _randomize(model: nn.Module, gen: torch.Generator) -> None:
    """New values for every parameter and running statistic, written in place (as a sweep does)."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype))
        for name, b in model.named_buffers():
            if name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=gen, dtype=b.dtype) + 0.5)
            elif name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=gen, dtype=b.dtype))


def _folded(gm) -> int:
    return sum(isinstance(m, FoldedNorm) for m in gm.modules())


def _inplace_relus(gm) -> int:
    return sum(n.op == "call_function" and n.target is torch.relu_ for n in gm.graph.nodes)


def test_conv_and_linear_batchnorm_folded_from_live_weights():
    gen = torch.Generator().manual_seed(0)
    model = (
        nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1, bias=False),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.Conv2d(4, 5, 3),
            nn.BatchNorm2d(5, affine=False),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(5 * 4 * 4, 6),
            nn.BatchNorm1d(6),
            nn.ReLU(),
            nn.Linear(6, 2),
        )
        .double()
        .eval()
    )
    fused = fuse_for_inference(model)
    assert fused is not None and _folded(fused) == 3 and _inplace_relus(fused) == 3
    unfolded = fuse_for_inference(model, fold=False)  # bfloat16 runs: ReLUs in place, BatchNorm kept
    assert unfolded is not None and _folded(unfolded) == 0 and _inplace_relus(unfolded) == 3
    x = torch.randn(7, 3, 6, 6, generator=gen, dtype=torch.float64)
    for _ in range(3):  # weights and statistics changed after fusing are used: nothing was copied
        _randomize(model, gen)
        with torch.no_grad():
            assert torch.allclose(fused(x), model(x), rtol=1e-12, atol=1e-12)
            assert torch.equal(unfolded(x), model(x))


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        h = self.lin(x)
        return F.relu(h) + h + F.relu(x)  # h is read twice; x is the caller's data: neither may be overwritten


def test_relu_in_place_only_on_fresh_unshared_outputs():
    model = _Residual().double().eval()
    assert fuse_for_inference(model) is None  # nothing safe to rewrite
    x = torch.randn(5, 4, dtype=torch.float64)
    seq = nn.Sequential(nn.ReLU(), nn.Linear(4, 3), nn.ReLU()).double().eval()  # the first ReLU reads x itself
    fused = fuse_for_inference(seq)
    assert fused is not None and _inplace_relus(fused) == 1
    before = x.clone()
    with torch.no_grad():
        assert torch.equal(fused(x), seq(x))
    assert torch.equal(x, before)


class _Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            return F.relu(self.lin(x))
        return self.lin(x)


def test_untraceable_or_train_mode_models_are_left_alone():
    assert fuse_for_inference(_Untraceable()) is None
    bn_train = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))  # train mode: batch statistics, not foldable
    assert fuse_for_inference(bn_train) is None
