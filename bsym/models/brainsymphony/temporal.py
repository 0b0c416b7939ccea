"""Temporal stream: one token per time point (the R-vector), transformer over time."""

from __future__ import annotations

import torch
from torch import nn

from bsym.models.layers import TransformerEncoder, sinusoidal_positions


class TemporalStream(nn.Module):
    """Time tokens ``Linear(R -> d)`` + sinusoidal positions, a transformer, a masked-time head."""

    def __init__(self, n_rois, n_timepoints, dim, layers, heads, mlp_dim, dropout=0.0):
        super().__init__()
        self.embed = nn.Linear(n_rois, dim)
        self.mask_token = nn.Parameter(torch.zeros(dim))
        self.register_buffer("position", sinusoidal_positions(n_timepoints, dim),
                             persistent=False)
        self.encoder = TransformerEncoder(dim, layers, heads, mlp_dim, dropout)
        self.head = nn.Linear(dim, n_rois)

    def forward(self, x, time_mask=None, need_weights=False):
        """Time embeddings (B, T, d) of ``x`` (B, R, T); masked times get the mask token."""
        tokens = self.embed(x.transpose(1, 2))
        if time_mask is not None:
            tokens = torch.where(time_mask[..., None], self.mask_token.to(tokens.dtype), tokens)
        return self.encoder(tokens + self.position.to(tokens.dtype), need_weights=need_weights)
