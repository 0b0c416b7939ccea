"""Shared building blocks: pre-LN transformer, positional encodings, MLPs.

Used by BrainSymphony and reusable by the baselines. Attention goes through
:func:`torch.nn.functional.scaled_dot_product_attention` (fused kernels on CUDA
and CPU) unless the caller asks for the weights.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU}


def check_int(name, value, minimum=1):
    """``value`` as an int >= ``minimum``, or a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def check_float(name, value, low=0.0, high=1.0, *, low_open=False, high_open=False):
    """``value`` as a float in [low, high] (ends optionally open), or a ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    value = float(value)
    below = value <= low if low_open else value < low
    above = value >= high if high_open else value > high
    if below or above or not math.isfinite(value):
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ValueError(f"{name} must lie in {interval}, got {value!r}")
    return value


def check_choice(name, value, choices):
    """``value`` if it is one of ``choices``, else a ValueError listing them."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def sinusoidal_positions(n, dim, *, base=10000.0, dtype=torch.float32, device=None):
    """Fixed sine/cosine position table of shape (n, dim) (Vaswani et al.)."""
    position = torch.arange(n, dtype=torch.float64, device=device)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float64, device=device)
                     * (-math.log(base) / dim))
    table = torch.zeros(n, dim, dtype=torch.float64, device=device)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq[: dim // 2])
    return table.to(dtype)


class GradientPositionalEncoding(nn.Module):
    """``LayerNorm(x + a * Linear(G))`` with a learnable scalar ``a`` (starts at 0.1).

    ``G`` (n_tokens, n_gradients) holds one row of coordinates per token, e.g. the
    first connectivity gradients of the group FC per ROI.
    """

    def __init__(self, n_gradients, dim, alpha=0.1):
        super().__init__()
        self.proj = nn.Linear(n_gradients, dim)
        self.alpha = nn.Parameter(torch.tensor(float(alpha)))
        self.norm = nn.LayerNorm(dim)

    def encoding(self, gradients):
        """The additive term ``a * Linear(G)``: (n_tokens, dim)."""
        return self.alpha * self.proj(gradients)

    def forward(self, x, gradients):
        return self.norm(x + self.encoding(gradients))


class MultiHeadAttention(nn.Module):
    """Multi-head self-attention; fused SDPA unless the weights are requested."""

    def __init__(self, dim, heads, dropout=0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.dropout = dropout

    def forward(self, x, need_weights=False):
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if need_weights:
            weights = torch.softmax((q @ k.transpose(-1, -2)) / math.sqrt(self.head_dim), -1)
            y = weights @ v
        else:
            weights = None
            y = F.scaled_dot_product_attention(
                q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(b, n, d)), weights


class MLP(nn.Sequential):
    """Linear layers with an activation between them: ``dims[0] -> ... -> dims[-1]``."""

    def __init__(self, *dims, activation="gelu", dropout=0.0):
        layers = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(dims) - 2:
                layers.append(ACTIVATIONS[activation]())
                if dropout:
                    layers.append(nn.Dropout(dropout))
        super().__init__(*layers)


class TransformerBlock(nn.Module):
    """Pre-LN block: ``x + Attn(LN(x))`` then ``x + MLP(LN(x))``."""

    def __init__(self, dim, heads, mlp_dim, dropout=0.0, activation="gelu"):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = MultiHeadAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_dim, dim, activation=activation)
        self.drop = nn.Dropout(dropout)

    def forward(self, x, need_weights=False):
        y, weights = self.attn(self.norm1(x), need_weights=need_weights)
        x = x + self.drop(y)
        return x + self.drop(self.mlp(self.norm2(x))), weights


class TransformerEncoder(nn.Module):
    """A stack of pre-LN blocks followed by a final LayerNorm."""

    def __init__(self, dim, layers, heads, mlp_dim, dropout=0.0, activation="gelu"):
        super().__init__()
        self.blocks = nn.ModuleList(TransformerBlock(dim, heads, mlp_dim, dropout, activation)
                                    for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x, need_weights=False):
        """Encoded tokens, and the per-layer weights (B, H, N, N) when requested."""
        maps = []
        for block in self.blocks:
            x, weights = block(x, need_weights=need_weights)
            maps.append(weights)
        return self.norm(x), (maps if need_weights else None)
