"""Spatial stream: one token per ROI (its whole series), pre-LN transformer over ROIs."""

from __future__ import annotations

import torch
from torch import nn

from bsym.models.layers import GradientPositionalEncoding, TransformerEncoder

SPATIAL_POSITIONS = ("learnable", "gradient")


class SpatialStream(nn.Module):
    """ROI tokens ``Linear(T -> d)``, a positional encoding, a transformer, a masked-ROI head.

    Parameters
    ----------
    n_rois, n_timepoints, dim, layers, heads, mlp_dim : int
    dropout : float
    position : {"learnable", "gradient"}
        A learned (R, d) table added to the tokens, or ``LayerNorm(x + a * Linear(G))``
        with ``G`` (R, n_gradients) the connectivity gradients of the training
        cohort's group FC (set with :meth:`set_gradients`).
    n_gradients : int
    """

    def __init__(self, n_rois, n_timepoints, dim, layers, heads, mlp_dim, dropout=0.0,
                 position="learnable", n_gradients=10):
        super().__init__()
        self.position_kind = position
        self.embed = nn.Linear(n_timepoints, dim)
        self.mask_token = nn.Parameter(torch.zeros(dim))
        if position == "learnable":
            self.position = nn.Parameter(torch.randn(n_rois, dim) * 0.02)
        else:
            self.position = GradientPositionalEncoding(n_gradients, dim)
            self.register_buffer("gradients", torch.zeros(n_rois, n_gradients))
            self.register_buffer("gradients_set", torch.tensor(False))
        self.encoder = TransformerEncoder(dim, layers, heads, mlp_dim, dropout)
        self.head = nn.Linear(dim, n_timepoints)

    def set_gradients(self, gradients):
        """Store the (R, n_gradients) connectivity gradients (saved in the state dict)."""
        if self.position_kind != "gradient":
            raise ValueError("this model uses a learnable spatial position; build it with "
                             "spatial_position='gradient' to use connectivity gradients")
        g = torch.as_tensor(gradients, dtype=self.gradients.dtype)
        if g.shape != self.gradients.shape:
            raise ValueError(f"gradients must have shape {tuple(self.gradients.shape)} (ROIs x "
                             f"gradients), got {tuple(g.shape)}")
        if not torch.isfinite(g).all():
            raise ValueError("gradients contain NaN or Inf")
        self.gradients.copy_(g)
        self.gradients_set.fill_(True)

    def encoding(self):
        """The spatial positional encoding (R, d) (also added to the Perceiver queries)."""
        if self.position_kind == "learnable":
            return self.position
        if not bool(self.gradients_set):
            raise RuntimeError(
                "spatial_position='gradient' needs the group-FC gradients of the training "
                "cohort: model.set_gradients(fc_gradients(group_fc(train_series))) "
                "(bsym.models.gradients)")
        return self.position.encoding(self.gradients)

    def forward(self, x, roi_mask=None, need_weights=False):
        """ROI embeddings (B, R, d) of ``x`` (B, R, T); masked ROIs get the mask token."""
        tokens = self.embed(x)
        if roi_mask is not None:
            tokens = torch.where(roi_mask[..., None], self.mask_token.to(tokens.dtype), tokens)
        if self.position_kind == "learnable":
            tokens = tokens + self.position
        else:
            self.encoding()
            tokens = self.position(tokens, self.gradients)
        return self.encoder(tokens, need_weights=need_weights)
