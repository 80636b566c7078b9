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
BASIS_DTYPES = ("auto", "float64", "float32")
STORE_DTYPES = (
    "float32",
    "bfloat16",
    "float64",
)  # stored directions and eigenvectors (bfloat16: as uint16 bits)  # the Lanczos basis: auto is float64 while it fits 2 GiB
CURVATURES = ("hessian", "ggn", "fisher")
CURVATURE_TITLES = {"hessian": "Hessian", "ggn": "GGN", "fisher": "empirical Fisher"}
METHODS = ("double-backward-cached", "double-backward", "forward-over-reverse")
CHUNK_SECONDS = 2.0  # a sweep hands its points to the sink (the CLI: writes them) after about this much work
EXACT_TRACE = "exact: the trace of the whole matrix, from one product per parameter"
