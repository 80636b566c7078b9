"""The names the command line offers as choices (strategies, normalizations, curvatures, ...),
kept apart from the modules that implement them so that `--help` and the file commands need no
torch. Each implementing module takes its names from here; a test checks they agree."""

from __future__ import annotations

STRATEGIES = (
    "loop", "vmap", "firstlayer", "firstlayer-vmap", "fused", "firstlayer-fused", "mlp", "compiled",
)  # fmt: skip
NORMS = ("filter", "layer", "model", "none")
IGNORES = ("biasbn", "none")
WHICH = ("largest", "both")
CURVATURES = ("hessian", "ggn", "fisher")
CURVATURE_TITLES = {"hessian": "Hessian", "ggn": "GGN", "fisher": "empirical Fisher"}
METHODS = ("double-backward-cached", "double-backward", "forward-over-reverse")
EXACT_TRACE = "exact: the trace of the whole matrix, from one product per parameter"
