"""Model factories for the bundled sample checkpoints.

Every factory takes no arguments and returns a fresh float32 ``nn.Module``.
The checkpoints next to this file are raw ``state_dict``s of these modules.
"""

from __future__ import annotations

import math

import torch
from torch import nn

# Synthetic sequence task used by the transformer sample (see train.py).
VOCAB = 8
SEQ_LEN = 8
D_MODEL = 16
N_HEADS = 2
N_CLASSES_SEQ = VOCAB  # "which token occurs most often"


def mlp() -> nn.Sequential:
    """MLP for 8x8 digits, input x float [N, 64] -> logits [N, 10]."""
    return nn.Sequential(
        nn.Linear(64, 32),
        nn.ReLU(),
        nn.Linear(32, 10),
    )


def cnn() -> nn.Sequential:
    """Small CNN with BatchNorm for 8x8 digits, input x float [N, 1, 8, 8] -> logits [N, 10]."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 2 * 2, 10),
    )


class SelfAttention(nn.Module):
    """Multi-head self-attention from plain Linear layers (vmap/functional_call/double-backward friendly)."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        assert d_model % n_heads == 0
        self.n_heads = n_heads
        self.d_head = d_model // n_heads
        self.q = nn.Linear(d_model, d_model)
        self.k = nn.Linear(d_model, d_model)
        self.v = nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        n, t, d = h.shape

        def split(z: torch.Tensor) -> torch.Tensor:
            return z.reshape(n, t, self.n_heads, self.d_head).transpose(1, 2)  # [N, H, T, Dh]

        q, k, v = split(self.q(h)), split(self.k(h)), split(self.v(h))
        att = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(self.d_head), dim=-1)
        z = (att @ v).transpose(1, 2).reshape(n, t, d)
        return self.out(z)


class TinyTransformer(nn.Module):
    """One pre-LN transformer block + mean pooling; x LongTensor [N, T] token ids -> logits [N, classes]."""

    def __init__(
        self,
        vocab: int = VOCAB,
        seq_len: int = SEQ_LEN,
        d_model: int = D_MODEL,
        n_heads: int = N_HEADS,
        d_mlp: int = 16,
        n_classes: int = N_CLASSES_SEQ,
    ) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, d_model)
        self.pos = nn.Parameter(0.1 * torch.randn(seq_len, d_model))
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = SelfAttention(d_model, n_heads)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, d_mlp), nn.ReLU(), nn.Linear(d_mlp, d_model))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.tok(x) + self.pos[: x.shape[-1]]
        h = h + self.attn(self.ln1(h))
        h = h + self.mlp(self.ln2(h))
        return self.head(self.ln_f(h).mean(dim=1))


def transformer() -> TinyTransformer:
    """Tiny transformer classifier for the synthetic 'most frequent token' task."""
    return TinyTransformer()


def linreg() -> nn.Linear:
    """Linear regression y = x w + b, x float [N, 10] -> y float [N, 1]; use MSE loss."""
    return nn.Linear(10, 1)
