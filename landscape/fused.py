"""A leaner forward pass for sweeps: the model's graph with BatchNorm folded into the layer before it.

A sweep runs the same model on the whole data set once per grid point, with new weights each time.
`fuse_for_inference` traces the model with torch.fx and rewrites the graph, sharing every parameter
and buffer with the original (weights written in place are seen by both):

- a Conv/Linear whose only user (shape checks aside) is an eval-mode BatchNorm with running
  statistics (a BatchNorm module, or `F.batch_norm` on one's own tensors: timm's BatchNormAct2d) becomes one
  layer whose weight and bias are folded from the live parameters at every call,
  BN(layer(x; W, b)) = layer(x; W s, (b - mean) s + beta) with s = gamma / sqrt(var + eps):
  one pass over the activations instead of two, and no stale copy of any weight;
- a ReLU whose input is such a layer's (or a Conv/Linear/BatchNorm's) fresh output, read by
  nothing else, runs in place.

On a convolutional model the data then also goes channels-last (`channels_last_input`), which
oneDNN's convolutions prefer, and each folded 2-D convolution, or (`lay_out`) one with no
BatchNorm to fold, runs in the memory layout timed fastest on its input (`choose_conv_layouts`). On
the bundled BatchNorm CNN (2 CPU cores) the three together made a forward pass over the data about
1.5x faster (median of 12 interleaved runs: 10.9 -> 7.0 ms).
The values differ from the model's only by rounding; the caller checks them against it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import fx

from landscape.layers import computes_stock
from landscape.model_io import symbolic_trace

LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
RELUS = (F.relu, torch.relu)


class _InLayout(nn.Module):
    """A layer whose 2-D convolution runs in its `layout` (see `LAYOUTS`; None: as its input comes),
    which `choose_conv_layouts` sets by timing."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer
        self.layout: str | None = None
        self.timing_repeats = 0  # > 0: the next call times every layout that applies and keeps the fastest

    def conv2d(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        layer: Any = self.layer
        if self.timing_repeats:
            self.layout = _fastest_layout(layer, x, weight, bias, self.timing_repeats)
        return conv2d_in_layout(layer, x, weight, bias, self.layout)


class FoldedNorm(_InLayout):
    """A Conv/Linear layer followed by an eval-mode BatchNorm, run as one layer.

    The folded weight and bias are formed from the live parameters and running statistics at each
    call (a few small tensor ops), so points of a sweep written into either module are always used.
    """

    def __init__(self, layer: nn.Module, norm: nn.Module) -> None:
        super().__init__(layer)
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layer: Any = self.layer
        scale, shift = norm_affine(self.norm)
        bias = shift if layer.bias is None else layer.bias * scale + shift
        weight = layer.weight * scale.view(-1, *([1] * (layer.weight.dim() - 1)))
        if isinstance(layer, nn.Linear):
            return F.linear(x, weight, bias)
        if not isinstance(layer, nn.Conv2d):
            return layer._conv_forward(x, weight, bias)
        return self.conv2d(x, weight, bias)


class LaidOutConv(_InLayout):
    """A stock 2-D convolution with no BatchNorm to fold (GroupNorm or LayerNorm after it, or nothing),
    run in its timed layout: on 2 CPU cores a timm ResNet-18 with GroupNorm ran its forward pass 1.16x
    as fast (214 to 185 ms, 512 images 3x32x32), a timm ConvNeXt-atto 1.55x (116 to 75 ms, 256)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layer: Any = self.layer
        return self.conv2d(x, layer.weight, layer.bias)


LAYOUTS = ("channels_last", "contiguous", "matmul")
"""How a 2-D convolution can run: oneDNN (CPU) is fastest in channels-last order on most shapes, but
not on all: on ResNet-18's 2x2 maps with 256 channels, contiguous order took half the time (8.5 vs
16 ms at 512 images, 2 cores), and a 3x3 convolution of a 1x1 map with padding 1 is a matrix product
with the kernel's centre (1.4 ms against 4.1). On MobileNetV3-small's 1x1 maps a depthwise 5x5
convolution took 200-300 ms in either order (1024 images): as a scale per channel, well under 1 ms."""

LAYOUT_MARGIN = 0.9  # another layout replaces channels-last (the data's own) only when this much faster


def conv2d_in_layout(
    conv: nn.Conv2d, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, layout: str | None
) -> torch.Tensor:
    """`conv`'s output for `weight` and `bias`, its input put in `layout` first (None: as it is)."""
    if layout == "matmul":
        pad: Any = conv.padding  # `_one_tap` checked: two ints, the tap at the padding's offset
        tap = weight[:, :, pad[0], pad[1]]  # [out channels, in channels per group]
        n, groups = x.shape[0], conv.groups
        if groups == 1:
            out = x.flatten(1) @ tap.T if bias is None else torch.addmm(bias, x.flatten(1), tap.T)
            return out.view(n, -1, 1, 1)
        per_group = x.reshape(n, groups, -1)  # [n, g, in/g]
        taps = tap.reshape(groups, -1, tap.shape[1])  # [g, out/g, in/g]
        if taps.shape[2] == 1:  # depthwise: each output channel scales its one input channel
            grouped = per_group * taps[:, :, 0]
        else:
            grouped = torch.einsum("ngi,goi->ngo", per_group, taps)
        out = grouped.reshape(n, -1)
        return (out if bias is None else out + bias).view(n, -1, 1, 1)
    if layout is not None:
        x = x.contiguous(memory_format=torch.channels_last if layout == "channels_last" else torch.contiguous_format)
    return conv._conv_forward(x, weight, bias)


def _one_tap(conv: nn.Conv2d, x: torch.Tensor) -> bool:
    """Whether the convolution of `x` is one matrix product (per group; for a depthwise one, a scale per
    channel): a 1x1 input map, a 1x1 output, one kernel tap on the input (the one at the padding's
    offset), no dilation, zero padding."""
    if x.dim() != 4 or x.shape[2:] != (1, 1) or conv.padding_mode != "zeros":
        return False
    if isinstance(conv.padding, str) or conv.dilation != (1, 1):
        return False
    sizes = [(1 + 2 * p - k) // s + 1 for p, k, s in zip(conv.padding, conv.kernel_size, conv.stride)]
    return sizes == [1, 1] and all(p < k for p, k in zip(conv.padding, conv.kernel_size))


def _fastest_layout(
    conv: nn.Conv2d, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, repeats: int
) -> str:
    """The layout in which this convolution of `x` ran fastest (least of up to `repeats` interleaved runs
    each; a layout over twice the fastest's time is not run again: a pathological kernel, 300 ms
    against 0.1, costs one run); channels-last unless another was under LAYOUT_MARGIN of its time.
    A one-tap convolution is the matrix product, untimed: it does the conv's work less the taps that
    meet padding, and it was the fastest on every shape timed (1.1x to 120x, 2 cores), while timing
    the conv's own kernels on it cost a timm EfficientNet-B0 probe 0.3 s (a run's 1%)."""
    if _one_tap(conv, x):
        return "matmul"
    candidates = ["channels_last", "contiguous"]
    best = dict.fromkeys(candidates, float("inf"))
    for _ in range(repeats):
        for layout in candidates:
            if math.isfinite(best[layout]) and best[layout] > 2 * min(best.values()):
                continue
            start = time.perf_counter()
            conv2d_in_layout(conv, x, weight, bias, layout)
            best[layout] = min(best[layout], time.perf_counter() - start)
    fastest = min(best, key=best.__getitem__)
    return fastest if best[fastest] < LAYOUT_MARGIN * best["channels_last"] else "channels_last"


def _convs_in_layout(graph: nn.Module) -> list[_InLayout]:
    """The graph's 2-D convolutions that run in a layout: folded, or laid out alone (`LaidOutConv`)."""
    return [m for m in graph.modules() if isinstance(m, _InLayout) and isinstance(m.layer, nn.Conv2d)]


LAYOUT_LETTERS = {"channels_last": "L", "contiguous": "C", "matmul": "M"}
"""A layout as a results file keeps it: a letter per convolution in a layout (folded ones, then those laid
out alone), in the graph's module order (`Pick.layouts`)."""


def conv_layouts(graph: nn.Module) -> str:
    """The layouts of the graph's 2-D convolutions in a layout as letters; "" when none was set."""
    convs = _convs_in_layout(graph)
    if not convs or any(m.layout is None for m in convs):
        return ""
    return "".join(LAYOUT_LETTERS[str(m.layout)] for m in convs)


def set_conv_layouts(graph: nn.Module, letters: str) -> bool:
    """Give the graph's 2-D convolutions in a layout the layouts `letters` names (a resumed run's, to compute
    its points as the run before did); False, nothing set, when they do not fit this graph."""
    convs = _convs_in_layout(graph)
    names = {letter: layout for layout, letter in LAYOUT_LETTERS.items()}
    if len(letters) != len(convs) or any(c not in names for c in letters):
        return False
    for m, letter in zip(convs, letters):
        m.layout = names[letter]
    return True


def choose_conv_layouts(
    graph: nn.Module, x: torch.Tensor, repeats: int = 2, known: dict[nn.Module, str] | None = None
) -> str:
    """Run `graph` once on `x` (no gradient), each 2-D convolution in a layout timing its layouts on its own
    input and keeping the fastest for the calls that follow; returns them as `conv_layouts` does.
    `known` ({convolution module: layout}) holds the layouts timed for another graph of the same
    model on the same data (the probe builds two): those are used untimed, and the new ones added.
    On the CPU only: elsewhere (CUDA) the timings would need synchronizing and the data's layout is kept."""
    convs = _convs_in_layout(graph)
    if not convs or x.device.type != "cpu":
        return ""
    known = {} if known is None else known
    for m in convs:
        m.layout = known.get(m.layer)
        m.timing_repeats = repeats if m.layout is None else 0
    try:
        if any(m.timing_repeats for m in convs):
            with torch.no_grad():
                graph(x)
    finally:
        for m in convs:
            m.timing_repeats = 0
    known.update({m.layer: m.layout for m in convs if m.layout is not None})
    return conv_layouts(graph)


def norm_affine(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (scale, shift) of an eval-mode BatchNorm with running statistics: BN(y) = y * scale + shift."""
    norm: Any = module
    scale = torch.rsqrt(norm.running_var + norm.eps)
    if norm.weight is not None:
        scale = scale * norm.weight
    shift = -norm.running_mean * scale
    if norm.bias is not None:
        shift = shift + norm.bias
    return scale, shift


def _foldable(layer: nn.Module, norm: nn.Module) -> bool:
    out = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
    return (
        computes_stock(layer)
        and not norm.training
        and norm.running_mean is not None
        and norm.running_var is not None
        and norm.num_features == out
        and any(isinstance(layer, kind) and isinstance(norm, bn) for kind, bn in _NORM_OF)
    )


def _norm_and_input(
    node: fx.Node, module_of: Callable[[fx.Node], nn.Module | None], owners: dict[str, nn.Module]
) -> tuple[nn.Module, fx.Node] | None:
    """(the BatchNorm module, its input node) where `node` computes an eval-mode BatchNorm from a
    module's own statistics, weight and bias: a call of a stock BatchNorm module, or a call of
    `F.batch_norm` that reads them, as a norm module traced through does (timm's BatchNormAct2d in
    its EfficientNets, MobileNets and RegNets, whose activation follows as a module of its own). `owners`:
    the model's modules by name; None where it does not."""
    if node.op == "call_module":
        norm, src = module_of(node), node.args[0] if len(node.args) == 1 and not node.kwargs else None
        return (norm, src) if isinstance(src, fx.Node) and isinstance(norm, NORMS) and computes_stock(norm) else None
    if node.op != "call_function" or node.target is not F.batch_norm:
        return None
    call = dict(zip(_BATCH_NORM_ARGS, node.args)) | dict(node.kwargs)
    src = call.get("input")
    if call.get("training", False) is not False or not isinstance(src, fx.Node):
        return None
    read_from = {str(a.target).rpartition(".")[0] for a in node.all_input_nodes if a.op == "get_attr"}
    owner = read_from.pop() if len(read_from) == 1 else ""
    norm = owners.get(owner) if owner else None
    if not isinstance(norm, NORMS) or call.get("eps", 1e-5) != norm.eps:
        return None
    for key in ("running_mean", "running_var", "weight", "bias"):
        arg = call.get(key)
        read = isinstance(arg, fx.Node) and arg.op == "get_attr" and arg.target == f"{owner}.{key}"
        if not (read or (arg is None and getattr(norm, key) is None)):
            return None
    return norm, src


_BATCH_NORM_ARGS = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")
"""`F.batch_norm`'s parameters in order."""


def _reads_shape(node: fx.Node) -> bool:
    """Whether `node` reads only its input's shape (`x.ndim`, `x.shape`): a folded layer's output has the same."""
    return node.op == "call_function" and node.target is getattr and node.args[1:] in (("ndim",), ("shape",))


_NORM_OF = (
    (nn.Linear, nn.BatchNorm1d),
    (nn.Conv1d, nn.BatchNorm1d),
    (nn.Conv2d, nn.BatchNorm2d),
    (nn.Conv3d, nn.BatchNorm3d),
)
"""Each layer kind with the BatchNorm that normalizes its output channels (dimension 1)."""


def fuse_for_inference(
    model: nn.Module, keep: frozenset[nn.Module] = frozenset(), fold: bool = True
) -> fx.GraphModule | None:
    """The model's forward with BatchNorms folded (unless `fold` is False) and ReLUs in place; None
    when fx cannot trace it or there is nothing to rewrite. Modules in `keep` are not folded."""
    traced = trace(model)
    return traced if isinstance(traced, fx.GraphModule) and rewrite_for_inference(traced, model, keep, fold) else None


def trace(model: nn.Module) -> fx.GraphModule | str:
    """The model's graph traced by torch.fx (`model_io.symbolic_trace`), or why it cannot be traced (one line)."""
    try:
        return symbolic_trace(model)
    except Exception as exc:  # data-dependent control flow, unpacked shapes, ...: the model is used as it is
        first = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ""
        return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def rewrite_for_inference(
    traced: fx.GraphModule,
    model: nn.Module,
    keep: frozenset[nn.Module] = frozenset(),
    fold: bool = True,
    lay_out: bool = False,
) -> bool:
    """Fold BatchNorms (unless `fold` is False) and run ReLUs in place, in `traced`'s graph of `model`,
    and with `lay_out` put each 2-D convolution left unfolded in a layout of its own (`LaidOutConv`,
    timed by `choose_conv_layouts`) where there are LAID_OUT_LEAST or more; whether anything changed.
    Modules in `keep` are neither folded nor laid out.

    Folding changes the rounding (one product W*s instead of two passes over the activations):
    below float32 (bfloat16 weights) that moves the outputs by more than rounding, so callers pass
    fold=False there."""
    modules = dict(traced.named_modules())
    owners = dict(model.named_modules())  # a traced-through norm's module: the graph holds only its tensors
    graph = traced.graph
    changed = False

    def module_of(node: fx.Node) -> nn.Module | None:
        return modules.get(str(node.target)) if node.op == "call_module" else None

    for node in list(graph.nodes) if fold else []:  # BatchNorm folded into the layer that feeds it alone
        found = _norm_and_input(node, module_of, owners)
        if found is None:
            continue
        norm, src = found
        layer = module_of(src)
        if not isinstance(layer, LAYERS) or layer in keep or not _foldable(layer, norm):
            continue
        if any(user is not node and not _reads_shape(user) for user in src.users):
            continue
        name = f"folded_{len([n for n in modules if n.startswith('folded_')])}"
        modules[name] = FoldedNorm(layer, norm)
        folded = _call_after(traced, src, name, modules[name], src.args, src.kwargs)
        src.replace_all_uses_with(folded)  # the norm's input, and shape checks (timm's `x.ndim == 4`)
        node.replace_all_uses_with(folded)
        reads = [a for a in node.all_input_nodes if a.op == "get_attr"]
        graph.erase_node(node)
        graph.erase_node(src)
        for attr in reads:  # a functional norm's statistics and weights, now read by the folded layer
            if not attr.users:
                graph.erase_node(attr)
        changed = True

    fresh = LAYERS + NORMS + (FoldedNorm,)
    for node in list(graph.nodes):  # a ReLU that alone reads a fresh output may overwrite it
        is_relu = isinstance(module_of(node), nn.ReLU) or (
            node.op == "call_function" and node.target in RELUS and not node.kwargs.get("inplace", False)
        )
        if not is_relu or not node.args or not isinstance(node.args[0], fx.Node):
            continue
        src = node.args[0]
        if not isinstance(module_of(src), fresh) or len(src.users) != 1:
            continue
        with graph.inserting_after(node):
            inplace = graph.call_function(torch.relu_, (src,))
        node.replace_all_uses_with(inplace)
        graph.erase_node(node)
        changed = True

    if lay_out:
        changed = _lay_out_convs(traced, modules, keep) or changed

    if changed:
        graph.lint()
        traced.recompile()
        traced.eval()
    return changed


LAID_OUT_LEAST = 2  # convolutions laid out alone only where there are this many: a ViT's one patch
# convolution is no reason to build and probe the fused strategies


def _lay_out_convs(traced: fx.GraphModule, modules: dict[str, nn.Module], keep: frozenset[nn.Module]) -> bool:
    """`rewrite_for_inference`'s `lay_out`: each stock 2-D convolution module the graph calls (not in
    `keep`) in a `LaidOutConv`, where there are LAID_OUT_LEAST or more; whether there were."""
    graph = traced.graph
    nodes = [
        node
        for node in graph.nodes
        if node.op == "call_module"
        and isinstance(layer := modules.get(str(node.target)), nn.Conv2d)
        and layer not in keep
        and computes_stock(layer)
        and len(node.args) == 1
        and not node.kwargs
    ]
    if len(nodes) < LAID_OUT_LEAST:
        return False
    for count, node in enumerate(nodes):
        laid_out = _call_after(traced, node, f"laid_out_{count}", LaidOutConv(modules[str(node.target)]), node.args)
        node.replace_all_uses_with(laid_out)
        graph.erase_node(node)
    return True


def _call_after(
    traced: fx.GraphModule,
    after: fx.Node,
    name: str,
    module: nn.Module,
    args: tuple[Any, ...],
    kwargs: dict[str, Any] | None = None,
) -> fx.Node:
    """A call of `module`, added to `traced` as `name`, inserted after the node `after`."""
    traced.add_submodule(name, module)
    with traced.graph.inserting_after(after):
        return traced.graph.call_module(name, args, kwargs)


def has_conv2d(model: nn.Module) -> bool:
    """Whether channels-last data can help (oneDNN and cuDNN 2-D convolutions prefer it)."""
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def channels_last_input(x: torch.Tensor) -> torch.Tensor:
    """4-D floating data in channels-last memory order (the same values); other data unchanged."""
    if x.dim() == 4 and torch.is_floating_point(x):
        return x.contiguous(memory_format=torch.channels_last)
    return x
