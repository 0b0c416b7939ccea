"""Adaptive fusion gate of the fMRI and SC ROI embeddings."""

from __future__ import annotations

import torch
from torch import nn


class FusionGate(nn.Module):
    """``g = sigmoid(W [E_f | E_s] + b)`` per ROI and channel; ``E = g E_f + (1 - g) E_s``."""

    def __init__(self, dim):
        super().__init__()
        self.gate = nn.Linear(2 * dim, dim)

    def forward(self, fmri, sc):
        """Fused embeddings (B, R, d) and the gate (B, R, d)."""
        g = torch.sigmoid(self.gate(torch.cat([fmri, sc], dim=-1)))
        return sc + g * (fmri - sc), g
