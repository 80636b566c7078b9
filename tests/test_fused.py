"""The fused forward pass (BatchNorm folded, ReLU in place) against the model itself, in float64."""

from __future__ import annotations

import pytest
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


def test_a_one_tap_convolution_is_the_matrix_product_with_its_tap():
    """A 1x1 map convolved to a 1x1 output reads one kernel tap: the one at the padding's offset."""
    from landscape.fused import _one_tap, conv2d_in_layout

    gen = torch.Generator().manual_seed(1)
    x = torch.randn(5, 6, 1, 1, generator=gen, dtype=torch.float64)
    for kernel, padding, stride, bias in [(3, 1, 1, True), (3, 1, 2, False), (1, 0, 1, True), (5, 2, 1, True), ((3, 5), (1, 2), 1, True)]:  # fmt: skip
        conv = nn.Conv2d(6, 7, kernel, stride, padding, bias=bias).double()
        assert _one_tap(conv, x), (kernel, padding, stride)
        want = conv(x)
        got = conv2d_in_layout(conv, x, conv.weight, conv.bias, "matmul")
        assert got.shape == want.shape == (5, 7, 1, 1)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert not _one_tap(nn.Conv2d(6, 7, 3, padding=1), torch.randn(5, 6, 2, 2))  # four output positions
    for groups, out in [(2, 4), (6, 6), (6, 12)]:  # grouped, depthwise, depthwise with a multiplier of 2
        conv = nn.Conv2d(6, out, 5, padding=2, groups=groups).double()
        assert _one_tap(conv, x)
        torch.testing.assert_close(
            conv2d_in_layout(conv, x, conv.weight, conv.bias, "matmul"), conv(x), rtol=1e-12, atol=1e-12
        )
    assert not _one_tap(nn.Conv2d(6, 7, 3, padding=1, dilation=2), x)
    assert not _one_tap(nn.Conv2d(6, 7, 3, padding=1, padding_mode="circular"), x)
    assert not _one_tap(nn.Conv2d(6, 7, 3, padding=1), torch.randn(5, 6, 1, 1, 1))


@pytest.mark.parametrize(
    ("name", "folded", "taps"),
    [("resnet18", 20, 3), ("mobilenet_v3_small", 34, 8)],  # every conv of either has its BatchNorm
)
def test_layouts_timed_on_torchvision_models_give_their_outputs_in_every_layout(name, folded, taps):
    """On 32x32 images ResNet-18 has 8x8 to 1x1 maps (layer4's 3x3 convolutions of 1x1 maps are one
    tap), MobileNetV3-small 16x16 to 1x1 (two of its 1x1-map convolutions are depthwise 5x5): every
    folded conv gets a layout from its own timing, and whichever layouts are chosen (or forced), the
    outputs are the model's."""
    import torchvision

    from landscape.fused import (
        LAYOUT_LETTERS,
        LAYOUTS,
        _one_tap,
        channels_last_input,
        choose_conv_layouts,
        conv_layouts,
        set_conv_layouts,
    )

    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(num_classes=10).double().eval()
    _randomize(model, torch.Generator().manual_seed(2))
    for m in model.modules():  # random BN scales blow the activations up 20 layers deep: keep them near 1
        if isinstance(m, nn.BatchNorm2d):
            m.running_var.fill_(1.0)
            m.weight.data.uniform_(0.5, 1.0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.mul_(1.0 / (m.weight[0].numel() ** 0.5))
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    fused = fuse_for_inference(model)
    convs = {n: m for n, m in fused.named_modules() if isinstance(m, FoldedNorm)}
    assert len(convs) == folded
    chosen = choose_conv_layouts(fused, channels_last_input(x), repeats=1)
    assert len(chosen) == len(convs) and set(chosen) <= set(LAYOUT_LETTERS.values())
    assert conv_layouts(fused) == chosen and set_conv_layouts(fused, chosen) and not set_conv_layouts(fused, chosen[1:])
    with torch.no_grad():
        want = model(x)
        torch.testing.assert_close(fused(channels_last_input(x)), want, rtol=1e-9, atol=1e-9)
        inputs: dict[str, torch.Tensor] = {}
        hooks = [m.register_forward_pre_hook(lambda mod, a, n=n: inputs.setdefault(n, a[0])) for n, m in convs.items()]
        fused(x)
        for h in hooks:
            h.remove()
        one_tap = {n for n, m in convs.items() if _one_tap(m.layer, inputs[n])}
        assert len(one_tap) == taps
        for layout in LAYOUTS:
            for n, m in convs.items():
                m.layout = layout if layout != "matmul" or n in one_tap else None
            torch.testing.assert_close(fused(x), want, rtol=1e-9, atol=1e-9)


def test_layouts_timed_for_one_graph_are_reused_by_another_of_the_same_model(monkeypatch):
    """The probe builds `fused` and `firstlayer-fused`: the second graph takes the first's timed layouts."""
    import landscape.fused as fused_module

    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3), nn.BatchNorm2d(4)).eval()  # fmt: skip
    x = torch.randn(16, 3, 6, 6)
    known: dict[nn.Module, str] = {}
    first = fused_module.choose_conv_layouts(fuse_for_inference(model), x, known=known)
    assert len(first) == 2 and set(known) == {model[0], model[3]}

    def not_again(*args, **kw):
        raise AssertionError("timed again")

    monkeypatch.setattr(fused_module, "_fastest_layout", not_again)
    second = fuse_for_inference(model)
    assert fused_module.choose_conv_layouts(second, x, known=known) == first
    with torch.no_grad():
        torch.testing.assert_close(second(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("seconds", "want", "runs"),
    [
        ({"channels_last": 0.03, "contiguous": 0.01}, "contiguous", {"channels_last": 1, "contiguous": 2}),
        ({"channels_last": 0.02, "contiguous": 0.0185}, "channels_last", {"channels_last": 2, "contiguous": 2}),
        ({"channels_last": 0.005, "contiguous": 0.02}, "channels_last", {"channels_last": 2, "contiguous": 1}),
    ],
)  # fmt: skip
def test_the_fastest_layout_is_kept_and_far_slower_ones_run_once(monkeypatch, seconds, want, runs):
    """Channels-last stays unless another layout is clearly faster (10%); a layout over twice the
    fastest's time is not timed again (MobileNet's 300 ms depthwise kernels). A one-tap convolution
    is the matrix product, nothing timed."""
    import time

    import landscape.fused as fused_module

    ran: dict[str, int] = dict.fromkeys(seconds, 0)

    def pretend(conv, x, weight, bias, layout):
        ran[layout] += 1
        time.sleep(seconds[layout])

    monkeypatch.setattr(fused_module, "conv2d_in_layout", pretend)
    conv = nn.Conv2d(4, 4, 3, padding=1)
    assert fused_module._fastest_layout(conv, torch.randn(2, 4, 2, 2), conv.weight, conv.bias, 2) == want
    assert ran == runs
    ran = dict.fromkeys(seconds, 0)
    for one_tap in (nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 5, padding=2, groups=4), nn.Conv2d(4, 8, 1)):
        x = torch.randn(2, 4, 1, 1)
        assert fused_module._fastest_layout(one_tap, x, one_tap.weight, one_tap.bias, 2) == "matmul"
    assert not any(ran.values())


def test_convolutions_without_a_norm_to_fold_are_laid_out_alone():
    """GroupNorm after each convolution: nothing folds, but each 2-D convolution (not one in `keep`) runs in
    a layout of its own, timed, giving the model's outputs; a lone convolution (a ViT's patches) is left."""
    from torch import fx

    from landscape.fused import LaidOutConv, choose_conv_layouts, rewrite_for_inference, trace

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.GroupNorm(2, 8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Conv2d(8, 16, 3, padding=1), nn.Flatten(), nn.Linear(16, 4),
    ).eval().double()  # fmt: skip
    x = torch.randn(5, 3, 8, 8, dtype=torch.float64)
    traced = trace(model)
    keep = frozenset([model[0]])
    assert isinstance(traced, fx.GraphModule) and rewrite_for_inference(traced, model, keep, lay_out=True)
    laid = [m for m in traced.modules() if isinstance(m, LaidOutConv)]
    assert [m.layer for m in laid] == [model[3], model[7]]
    assert choose_conv_layouts(traced, x.contiguous(memory_format=torch.channels_last))[-1] == "M"  # a 1x1 map
    with torch.no_grad():
        torch.testing.assert_close(traced(x), model(x), rtol=1e-12, atol=1e-12)
    patches = nn.Sequential(nn.Conv2d(3, 4, 4, stride=4), nn.Flatten())
    lone = trace(patches)
    assert isinstance(lone, fx.GraphModule) and not rewrite_for_inference(lone, patches, lay_out=True)


class _UntraceableConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        h = self.bn(self.conv(x))
        if h.mean() > 0:  # data-dependent control flow
            h = F.relu(h)
        return h.flatten(1)[:, :10]


def test_the_fused_strategies_say_why_they_do_not_apply():
    """A timm ViT traces, but has nothing to rewrite (LayerNorm, GELU, a patch convolution): the reason
    must say that, not that fx cannot trace it; a model fx cannot trace says so, with fx's error."""
    timm = pytest.importorskip("timm")
    from landscape.problem import Problem
    from landscape.strategies.base import NotApplicable
    from landscape.strategies.fusedgraph import FusedStrategy, _fused_graph

    torch.manual_seed(0)
    vit = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=32, patch_size=8, depth=1
    )
    data = (torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,)))
    assert FusedStrategy.rules_out(Problem(vit, data)) is None  # a 2-D convolution: the modules cannot tell
    with pytest.raises(NotApplicable, match=r"^nothing to rewrite: no BatchNorm to fold .*, no ReLU, and under 2 2-D"):
        _fused_graph(Problem(vit, data))
    with pytest.raises(NotApplicable, match=r"^torch\.fx cannot trace the model \(TraceError: .+\)$"):
        _fused_graph(Problem(_UntraceableConv().eval(), (torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,)))))


class _FunctionalNorm(nn.Module):
    """A convolution and a BatchNorm's statistics applied by `F.batch_norm` (as timm's BatchNormAct2d
    does), at `eps` (the module's own, or another)."""

    def __init__(self, eps: float) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4).eval()
        self.eps = eps

    def forward(self, x):
        h = self.conv(x)
        torch._assert(h.ndim == 4, "4D")  # reads the shape only (timm checks it): the folded output has the same
        bn = self.bn
        return F.silu(F.batch_norm(h, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.1, self.eps))


def test_batch_norm_called_as_a_function_on_a_modules_own_statistics_is_folded():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(5, 3, 6, 6, generator=gen, dtype=torch.float64)
    for eps, folds in [(1e-5, True), (1e-3, False)]:  # another eps is not the module's norm: left as it is
        model = _FunctionalNorm(eps).double().eval()
        fused = fuse_for_inference(model)
        assert (fused is not None and _folded(fused) == 1) is folds
        for _ in range(2):
            _randomize(model, gen)
            with torch.no_grad():
                assert fused is None or torch.allclose(fused(x), model(x), rtol=1e-12, atol=1e-12)
    train = _FunctionalNorm(1e-5).double()
    train.bn.train()  # batch statistics: not foldable, whatever the call says
    assert fuse_for_inference(train) is None
