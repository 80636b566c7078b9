"""Permutation alignment of two networks by weight matching (Ainsworth et al. 2023, "Git Re-Basin").

Permuting a layer's hidden units (the rows of the layer that makes them, the columns of every
layer that reads them, the BatchNorm entries between) leaves the network's function unchanged, so
two trained copies of one architecture can be far apart in weights yet the same up to such a
permutation. Weight matching finds, for every group of units that must move together, the
permutation of B's units that maximizes sum_i <W_A[i], W_B[perm[i]]> over all weights touching the
group, one group at a time (a linear assignment, scipy) until no group changes.

The groups are read from the model's graph (torch.fx, with the shapes of one example input):
a Linear or Conv makes a new group of units, BatchNorm, LayerNorm, activations, pooling and
dropout keep it, a depthwise convolution keeps it, a flatten keeps it with each unit spanning its
spatial positions, and a residual addition (or an elementwise product) joins the groups of its
operands into one. Anything else (the model's inputs and outputs, concatenation, reshapes,
attention, parameters read directly, modules called twice) fixes the groups it touches, which are
then not permuted: the result is always a pure relabelling, never a change of function.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
from torch import fx

from landscape.errors import LandscapeError
from landscape.layers import AFFINE_LAYERS, BATCHNORMS, computes_stock
from landscape.model_io import symbolic_trace

State = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class Member:
    """One axis of one state entry that a group's permutation reorders; `repeat` entries per unit
    (a convolution's map flattened into a Linear layer's inputs)."""

    name: str
    axis: int
    repeat: int = 1
    parameter: bool = True


@dataclass(frozen=True)
class UnitGroup:
    """Units that one permutation moves together, and every axis it reorders."""

    label: str
    size: int
    members: tuple[Member, ...]


@dataclass(frozen=True)
class PermutationSpec:
    groups: tuple[UnitGroup, ...]

    @property
    def units(self) -> int:
        return sum(g.size for g in self.groups)


# --------------------------------------------------------------------------- reading the graph

FIXED = 0  # the space of tensors whose feature axis may not be permuted

_ELEMENTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid, nn.Tanh,
    nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus, nn.Softsign, nn.Tanhshrink,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Identity,
)  # fmt: skip
_POOL_MODULES = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
)  # fmt: skip
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_ELEMENTWISE_FUNCTIONS = {
    torch.relu, torch.nn.functional.relu, torch.nn.functional.relu6, torch.nn.functional.gelu,
    torch.nn.functional.silu, torch.nn.functional.leaky_relu, torch.nn.functional.elu, torch.nn.functional.hardswish,
    torch.nn.functional.hardsigmoid, torch.nn.functional.mish, torch.sigmoid, torch.tanh, torch.nn.functional.dropout,
    torch.nn.functional.sigmoid, torch.nn.functional.tanh,
}  # fmt: skip
_ELEMENTWISE_METHODS = {"relu", "relu_", "sigmoid", "tanh", "contiguous", "clone", "detach"}
_POOL_FUNCTIONS = {
    torch.nn.functional.max_pool1d, torch.nn.functional.max_pool2d, torch.nn.functional.avg_pool1d,
    torch.nn.functional.avg_pool2d, torch.nn.functional.adaptive_avg_pool1d, torch.nn.functional.adaptive_avg_pool2d,
    torch.nn.functional.adaptive_max_pool2d,
}  # fmt: skip
_JOINING = {operator.add, operator.iadd, operator.mul, operator.imul, operator.sub, torch.add, torch.mul, torch.sub}
_JOINING_METHODS = {"add", "add_", "mul", "mul_", "sub"}
_FLATTENING = {torch.flatten, torch.reshape}
_FLATTENING_METHODS = {"flatten", "view", "reshape"}
_NON_TENSOR_METHODS = {"size", "dim", "numel"}


@dataclass
class _Feat:
    """Where a tensor's units are: the space (union-find id), the axis holding them, entries per unit."""

    space: int
    axis: int
    repeat: int = 1


@dataclass
class _Spaces:
    parent: list[int] = field(default_factory=lambda: [FIXED])
    size: list[int] = field(default_factory=lambda: [0])
    label: list[str] = field(default_factory=lambda: ["fixed"])
    members: list[list[Member]] = field(default_factory=lambda: [[]])

    def new(self, size: int, label: str) -> int:
        self.parent.append(len(self.parent))
        self.size.append(size)
        self.label.append(label)
        self.members.append([])
        return len(self.parent) - 1

    def find(self, s: int) -> int:
        while self.parent[s] != s:
            self.parent[s] = self.parent[self.parent[s]]
            s = self.parent[s]
        return s

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if FIXED in (ra, rb) or self.size[ra] != self.size[rb]:
            self.parent[ra] = self.parent[rb] = FIXED
            return
        root, child = min(ra, rb), max(ra, rb)
        self.parent[child] = root

    def fix(self, s: int) -> None:
        self.union(s, FIXED)


def _shape(node: Any) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _nodes_in(value: Any) -> list[fx.Node]:
    found: list[fx.Node] = []

    def note(n: fx.Node) -> fx.Node:
        found.append(n)
        return n

    fx.node.map_arg(value, note)
    return found


class _GraphReader:
    def __init__(self, model: nn.Module, example: Any) -> None:
        self.model = model
        try:
            self.traced = symbolic_trace(model)
        except Exception as exc:  # noqa: BLE001 - any tracing failure means: no alignment for this model
            raise LandscapeError(
                f"align: torch.fx cannot trace the model ({type(exc).__name__}: {str(exc).splitlines()[0][:160]}); "
                "permutation alignment needs a traceable MLP, CNN or ResNet"
            ) from None
        from torch.fx.passes.shape_prop import ShapeProp

        inputs = self._placeholder_values(example)
        try:
            with torch.no_grad():
                ShapeProp(self.traced).propagate(*inputs)
        except Exception as exc:  # noqa: BLE001 - the traced graph does not run: no shapes to follow
            raise LandscapeError(
                f"align: the model's torch.fx graph does not run on the data ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:160]}); permutation alignment needs a traceable MLP, CNN or ResNet"
            ) from None
        self.modules = dict(self.traced.named_modules())
        self.calls = _module_call_counts(self.traced.graph)
        self.spaces = _Spaces()
        self.feat: dict[fx.Node, _Feat] = {}

    def _placeholder_values(self, example: Any) -> list[Any]:
        names = [n.target for n in self.traced.graph.nodes if n.op == "placeholder"]
        if isinstance(example, Mapping):
            missing = [n for n in names if n not in example]
            if missing:
                raise LandscapeError(f"align: the model's inputs {missing} are not in the data")
            return [example[n] for n in names]
        return [example, *([None] * (len(names) - 1))]

    # -- helpers

    def fix_all(self, node: fx.Node) -> None:
        for arg in _nodes_in((node.args, node.kwargs)):
            if arg in self.feat:
                self.spaces.fix(self.feat[arg].space)

    def add(self, space: int, name: str, axis: int, repeat: int = 1, parameter: bool = True) -> None:
        self.spaces.members[space].append(Member(name, axis, repeat, parameter))

    def _input(self, node: fx.Node) -> _Feat | None:
        arg = node.args[0] if node.args else None
        return self.feat.get(arg) if isinstance(arg, fx.Node) else None

    def keep(self, node: fx.Node, axis_one: bool = False) -> None:
        """The output's units are the input's (an elementwise op; with `axis_one`, a pooling over the map)."""
        f = self._input(node)
        shape, in_shape = _shape(node), _shape(node.args[0]) if node.args else None
        if f is None or shape is None or in_shape is None:
            self.fix_all(node)
            return
        pooled = f.axis == 1 and f.repeat == 1 and len(shape) == len(in_shape)
        if not (pooled if axis_one else shape == in_shape):
            self.fix_all(node)
            return
        self.feat[node] = f
        self.fix_all_but(node, node.args[0])

    def fix_all_but(self, node: fx.Node, kept: Any) -> None:
        for arg in _nodes_in((node.args[1:], node.kwargs)):
            if arg is not kept and arg in self.feat:
                self.spaces.fix(self.feat[arg].space)

    # -- one node

    def read(self) -> PermutationSpec:
        for node in self.traced.graph.nodes:
            if node.op == "placeholder" or node.op == "get_attr":
                if _shape(node) is not None:
                    self.feat[node] = _Feat(FIXED, 0)
            elif node.op == "output":
                self.fix_all(node)
            elif node.op == "call_module":
                self._module(node)
            elif node.op == "call_function":
                self._function(node)
            elif node.op == "call_method":
                self._method(node)
        return self._spec()

    def _module(self, node: fx.Node) -> None:
        name = str(node.target)
        mod = self.modules[name]
        f = self._input(node)
        own = [k for k, _ in mod.named_parameters(recurse=False)] + [k for k, _ in mod.named_buffers(recurse=False)]
        if self.calls[name] > 1 and own:
            self.fix_all(node)  # a module called twice: its units would need one permutation for two inputs
            return
        prefix = f"{name}." if name else ""
        if isinstance(mod, AFFINE_LAYERS + BATCHNORMS) and not computes_stock(mod):
            self.fix_all(node)  # a subclass, hook or parametrization: its weights may not be the unit's rows
            return
        if isinstance(mod, nn.Linear):
            if f is not None and f.axis == len(_shape(node.args[0]) or ()) - 1:
                self.add(f.space, prefix + "weight", 1, f.repeat)
            elif f is not None:
                self.spaces.fix(f.space)
            s = self.spaces.new(mod.out_features, name)
            self.add(s, prefix + "weight", 0)
            if mod.bias is not None:
                self.add(s, prefix + "bias", 0)
            out = _shape(node)
            self.feat[node] = _Feat(s, len(out) - 1 if out else 0)
        elif isinstance(mod, _CONVS):
            depthwise = mod.groups == mod.in_channels == mod.out_channels
            if mod.groups == 1:
                if f is not None and f.axis == 1 and f.repeat == 1:
                    self.add(f.space, prefix + "weight", 1)
                elif f is not None:
                    self.spaces.fix(f.space)
                s = self.spaces.new(mod.out_channels, name)
            elif depthwise and f is not None and f.axis == 1 and f.repeat == 1:
                s = f.space
            else:
                self.fix_all(node)
                return
            self.add(s, prefix + "weight", 0)
            if mod.bias is not None:
                self.add(s, prefix + "bias", 0)
            self.feat[node] = _Feat(s, 1)
        elif isinstance(mod, _BATCHNORMS):
            if f is None or f.axis != 1 or f.repeat != 1:
                self.fix_all(node)
                return
            for key in ("weight", "bias"):
                if getattr(mod, key, None) is not None:
                    self.add(f.space, prefix + key, 0)
            for key in ("running_mean", "running_var"):
                if getattr(mod, key, None) is not None:
                    self.add(f.space, prefix + key, 0, parameter=False)
            self.feat[node] = f
        elif isinstance(mod, nn.LayerNorm):
            in_shape = _shape(node.args[0])
            if (
                f is None
                or in_shape is None
                or len(mod.normalized_shape) != 1
                or f.axis != len(in_shape) - 1
                or f.repeat != 1
            ):
                self.fix_all(node)
                return
            for key in ("weight", "bias"):
                if getattr(mod, key, None) is not None:
                    self.add(f.space, prefix + key, 0)
            self.feat[node] = f
        elif isinstance(mod, nn.PReLU) and mod.num_parameters == 1:
            self.keep(node)
        elif isinstance(mod, _ELEMENTWISE_MODULES):
            self.keep(node)
        elif isinstance(mod, _POOL_MODULES):
            self.keep(node, axis_one=True)
        elif isinstance(mod, nn.Flatten):
            self._flatten(node)
        else:
            self.fix_all(node)

    def _function(self, node: fx.Node) -> None:
        fn = node.target
        if fn in _ELEMENTWISE_FUNCTIONS:
            self.keep(node)
        elif fn in _POOL_FUNCTIONS:
            self.keep(node, axis_one=True)
        elif fn in _JOINING:
            self._join(node)
        elif fn in _FLATTENING:
            self._flatten(node)
        elif fn is torch.nn.functional.batch_norm:
            self._batch_norm(node)
        elif fn is operator.getitem or fn is getattr:
            if _shape(node) is not None:  # an indexed tensor: its units are not followed
                self.fix_all(node)
        else:
            self.fix_all(node)

    def _method(self, node: fx.Node) -> None:
        name = str(node.target)
        if name in _NON_TENSOR_METHODS:
            return
        if name in _ELEMENTWISE_METHODS:
            self.keep(node)
        elif name in _JOINING_METHODS:
            self._join(node)
        elif name in _FLATTENING_METHODS:
            self._flatten(node)
        elif name == "mean":
            self._mean(node)
        else:
            self.fix_all(node)

    def _join(self, node: fx.Node) -> None:
        """a + b, a * b: the units of both operands are paired entry by entry, so they move together."""
        out = _shape(node)
        tensors = [a for a in node.args[:2] if isinstance(a, fx.Node) and _shape(a) is not None]
        if out is None or not tensors or any(a not in self.feat for a in tensors):
            self.fix_all(node)
            return
        feats = [self.feat[a] for a in tensors]
        from_end = {len(_shape(a) or ()) - f.axis for a, f in zip(tensors, feats, strict=True)}
        repeats = {f.repeat for f in feats}
        sizes = {(_shape(a) or ())[f.axis] for a, f in zip(tensors, feats, strict=True)}
        if len(from_end) != 1 or len(repeats) != 1 or len(sizes) != 1:
            self.fix_all(node)
            return
        for f in feats[1:]:
            self.spaces.union(feats[0].space, f.space)
        self.feat[node] = _Feat(feats[0].space, len(out) - from_end.pop(), repeats.pop())

    def _batch_norm(self, node: fx.Node) -> None:
        """F.batch_norm on the module's own tensors (timm's BatchNormAct2d calls it from its forward)."""
        import inspect

        bound = inspect.signature(torch.nn.functional.batch_norm).bind(*node.args, **node.kwargs).arguments
        f = self._input(node)
        stats = {k: bound.get(k) for k in ("running_mean", "running_var", "weight", "bias")}
        if (
            f is None
            or f.axis != 1
            or f.repeat != 1
            or any(v is not None and not (isinstance(v, fx.Node) and v.op == "get_attr") for v in stats.values())
        ):
            self.fix_all(node)
            return
        for key, v in stats.items():
            if isinstance(v, fx.Node):
                self.add(f.space, str(v.target), 0, parameter=key in ("weight", "bias"))
        self.feat[node] = f

    def _flatten(self, node: fx.Node) -> None:
        f = self._input(node)
        shape, in_shape = _shape(node), _shape(node.args[0]) if node.args else None
        if f is None or shape is None or in_shape is None:
            self.fix_all(node)
            return
        if shape == in_shape:
            self.feat[node] = f
        elif f.axis == 1 and len(shape) == 2 and shape[0] == in_shape[0] and shape[1] == math.prod(in_shape[1:]):
            self.feat[node] = _Feat(f.space, 1, f.repeat * math.prod(in_shape[2:]))
        else:
            self.fix_all(node)

    def _mean(self, node: fx.Node) -> None:
        """x.mean(dims) over the map (global average pooling written as a mean)."""
        f = self._input(node)
        shape, in_shape = _shape(node), _shape(node.args[0])
        given = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        listed = [given] if isinstance(given, int) else list(given) if isinstance(given, (list, tuple)) else None
        if f is None or shape is None or in_shape is None or f.repeat != 1 or listed is None:
            self.fix_all(node)
            return
        if not all(isinstance(d, int) for d in listed):
            self.fix_all(node)
            return
        dims = [int(d) % len(in_shape) for d in listed]
        if f.axis in dims:
            self.fix_all(node)
            return
        keepdim = bool(node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False))
        axis = f.axis if keepdim else f.axis - sum(d < f.axis for d in dims)
        self.feat[node] = _Feat(f.space, axis)

    # -- the groups

    def _spec(self) -> PermutationSpec:
        sp = self.spaces
        # a state entry's axis reordered by two spaces: they must be one permutation
        seen: dict[tuple[str, int], tuple[int, int]] = {}
        for s in range(1, len(sp.parent)):
            for m in sp.members[s]:
                key = (m.name, m.axis)
                if key in seen:
                    other, repeat = seen[key]
                    if repeat == m.repeat:
                        sp.union(other, s)
                    else:
                        sp.fix(other)
                        sp.fix(s)
                else:
                    seen[key] = (s, m.repeat)
        roots: dict[int, list[Member]] = {}
        labels: dict[int, str] = {}
        for s in range(1, len(sp.parent)):
            r = sp.find(s)
            if r == FIXED:
                continue
            roots.setdefault(r, [])
            labels.setdefault(r, sp.label[s])
            for m in sp.members[s]:
                if m not in roots[r]:
                    roots[r].append(m)
        groups = tuple(
            UnitGroup(labels[r], sp.size[r], tuple(members))
            for r, members in roots.items()
            if sp.size[r] > 1 and any(m.parameter for m in members)
        )
        return PermutationSpec(groups)


def _module_call_counts(graph: fx.Graph) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            counts[str(node.target)] = counts.get(str(node.target), 0) + 1
    return counts


def permutation_spec(model: nn.Module, example: Any) -> PermutationSpec:
    """The groups of units of `model` that can be permuted without changing its function, read from its
    graph run on `example` (a batch of inputs: a tensor, or a dict of keyword tensors)."""
    spec = _GraphReader(model, example).read()
    state = model.state_dict()
    for g in spec.groups:
        for m in g.members:
            if m.name not in state or state[m.name].shape[m.axis] != g.size * m.repeat:
                raise LandscapeError(f"align: internal check failed for {m.name} (axis {m.axis}, {g.size} units)")
    return spec


# --------------------------------------------------------------------------- permuting and matching


def _unit_index(perm: torch.Tensor, repeat: int) -> torch.Tensor:
    if repeat == 1:
        return perm
    return (perm[:, None] * repeat + torch.arange(repeat)).reshape(-1)


def permute_state(spec: PermutationSpec, perms: Sequence[torch.Tensor], state: State) -> dict[str, torch.Tensor]:
    """`state` with each group's units reordered: unit i of the result is unit perms[g][i] of `state`."""
    out = dict(state)
    for g, perm in zip(spec.groups, perms, strict=True):
        for m in g.members:
            t = out[m.name]
            out[m.name] = t.index_select(m.axis, _unit_index(perm.to(t.device), m.repeat))
    return out


def random_permutations(spec: PermutationSpec, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randperm(g.size, generator=gen) for g in spec.groups]


@dataclass(frozen=True)
class Matching:
    """Weight matching's permutations (one per group, for B) and how the match went."""

    perms: list[torch.Tensor]
    iterations: int
    moved: int  # units whose index changed

    @property
    def identity(self) -> bool:
        return self.moved == 0


def weight_matching(spec: PermutationSpec, a: State, b: State, *, max_iterations: int = 100, seed: int = 0) -> Matching:
    """Permutations of B's units that maximize sum over the parameters of <A, permuted B>, by coordinate
    ascent over the groups (in a seeded random order each round) until a round changes nothing."""
    from scipy.optimize import linear_sum_assignment

    perms = [torch.arange(g.size) for g in spec.groups]
    touching: dict[str, list[tuple[int, Member]]] = {}
    for gi, g in enumerate(spec.groups):
        for m in g.members:
            touching.setdefault(m.name, []).append((gi, m))

    def match(gi: int, settled: set[int] | None) -> bool:
        """Group gi's best permutation given the others'; with `settled`, on the weights whose other
        axes belong to settled groups only (the first pass). True when it changed."""
        g = spec.groups[gi]
        cost = torch.zeros(g.size, g.size, dtype=torch.float64)
        for m in g.members:
            others = [(ogi, o) for ogi, o in touching[m.name] if ogi != gi]
            if not m.parameter or (settled is not None and any(ogi not in settled for ogi, _ in others)):
                continue
            wa = a[m.name].detach().to("cpu", torch.float64)
            wb = b[m.name].detach().to("cpu", torch.float64)
            for ogi, o in others:
                wb = wb.index_select(o.axis, _unit_index(perms[ogi], o.repeat))
            cost += wa.movedim(m.axis, 0).reshape(g.size, -1) @ wb.movedim(m.axis, 0).reshape(g.size, -1).T
        _, cols = linear_sum_assignment(cost.numpy(), maximize=True)
        new = torch.as_tensor(cols, dtype=torch.long)
        rows = torch.arange(g.size)
        old_score, new_score = float(cost[rows, perms[gi]].sum()), float(cost[rows, new].sum())
        if new_score > old_score + 1e-12 * max(abs(old_score), 1.0):
            perms[gi] = new
            return True
        return False

    # First pass from the input to the output (groups are in graph order): each group matched on the
    # weights that also touch only groups matched before it, so a feed-forward chain of exact copies
    # is recovered in one pass; from a start at the identity, coordinate ascent stalls in a local
    # optimum on deep nets (MobileNetV3: a third of the best objective).
    settled: set[int] = set()
    for gi in range(len(spec.groups)):
        match(gi, settled)
        settled.add(gi)
    gen = torch.Generator().manual_seed(seed)
    rounds = 0
    for rounds in range(1, max_iterations + 1):  # noqa: B007 - the count is reported
        changed = False
        for gi in torch.randperm(len(spec.groups), generator=gen).tolist():
            changed |= match(gi, None)
        if not changed:
            break
    moved = sum(int((p != torch.arange(len(p))).sum()) for p in perms)
    return Matching(perms, rounds, moved)


def state_distance(a: State, b: State, names: Sequence[str]) -> float:
    """Euclidean distance between two states over the named entries."""
    total = 0.0
    for k in names:
        total += float((a[k].detach().double() - b[k].detach().double()).pow(2).sum())
    return math.sqrt(total)
