"""Which of a model's layers compute what torch's own classes do, so the fast paths may compute it themselves.

The fast paths (`firstlayer`, `mlp`, BatchNorm folding, permutation alignment) replace a Linear, Conv
or BatchNorm call by their own arithmetic on its weights. That is only right when the module's output
is the stock one: a subclass that overrides `forward` (a scaled or quantized Linear), a forward
replaced on the instance (accelerate's device hooks), forward hooks or pre-hooks (old-style
`torch.nn.utils.weight_norm`, which recomputes `weight` in a pre-hook) all compute something else,
and firstlayer's cache gave a loss 16 apart from the loop's on such a Linear before this check.
"""

from __future__ import annotations

import torch.nn as nn
from torch.nn.utils import parametrize

AFFINE_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
BATCHNORMS: tuple[type[nn.Module], ...] = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
STOCK_LAYERS = AFFINE_LAYERS + BATCHNORMS + (nn.LayerNorm,)


def computes_stock(module: nn.Module) -> bool:
    """Whether the module is a Linear, Conv, BatchNorm or LayerNorm whose output is its torch class's from its
    own `weight` and `bias` parameters (not computed by a parametrization such as weight norm)."""
    base = next((cls for cls in STOCK_LAYERS if isinstance(module, cls)), None)
    if base is None or "forward" in vars(module) or module._forward_hooks or module._forward_pre_hooks:
        return False
    if parametrize.is_parametrized(module):
        return False
    kind = type(module)
    return all(getattr(kind, f) is getattr(base, f) for f in ("forward", "_conv_forward") if hasattr(base, f))


def linear_in_own_weights(module: nn.Module) -> bool:
    """Whether the module is a stock Linear or Conv with a weight: its output is linear in its parameters."""
    own = {name for name, _ in module.named_parameters(recurse=False)}
    plain = "weight" in own and own <= {"weight", "bias"}
    return plain and computes_stock(module) and isinstance(module, AFFINE_LAYERS)
