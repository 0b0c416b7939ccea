"""A vanilla transformer over connectivity rows (the baseline of the BrainSymphony and
BNT comparisons).

Registered as ``"transformer"``.
"""

from __future__ import annotations

import torch
from torch import nn

from bsym.models.heads import (
    SupervisedModel,
    check_dropout,
    check_heads,
    check_widths,
    head_mlp,
)
from bsym.models.layers import TransformerEncoder, check_choice, check_int
from bsym.models.registry import ModelSpec

READOUTS = ("mean", "concat")


class VanillaTransformer(SupervisedModel):
    """Transformer encoder over the rows of the connectivity matrix, readout, MLP head.

    Each ROI is a token whose features are its row of the FC (computed per sample from
    ``batch["bold"]``) or SC matrix, so the width is ``n_rois``; there is no positional
    encoding (a row already identifies its ROI). Readout ``"mean"`` averages the ROI
    tokens; ``"concat"`` reduces each token to ``reduce_dim`` values (Linear +
    LeakyReLU) and concatenates them. The head is an MLP with LeakyReLU.

    Parameters
    ----------
    n_rois : int
    task : {"classification", "regression"}
    n_classes : int
        Classes (classification only).
    input : {"fc", "sc"}
    layers, heads, mlp_dim : int
        Depth, heads (must divide ``n_rois``) and feed-forward width.
    dropout : float
        Residual dropout.
    readout : {"mean", "concat"}
    reduce_dim : int
        Values per ROI for the ``"concat"`` readout.
    head_hidden : list of int
        Hidden widths of the prediction MLP.

    Notes
    -----
    The ~4.4M of the BrainSymphony comparison is the configuration of the BNT authors'
    public transformer baseline: 2 layers, feed-forward 1024, concatenation readout
    (8 values per ROI), MLP 256-32. The ``paper`` preset uses it: 4.41M parameters at
    450 ROIs. With mean pooling instead (``readout="mean"``) the same encoder has
    3.59M. Deviations: pre-LN blocks with a final LayerNorm (:mod:`bsym.models.layers`;
    the public code uses PyTorch's post-LN layers), 5 heads at 450 ROIs (4 do not
    divide 450).
    """

    def __init__(self, n_rois=16, task="classification", n_classes=2, input="fc", layers=2,
                 heads=4, mlp_dim=64, dropout=0.1, readout="mean", reduce_dim=8,
                 head_hidden=(256, 32)):
        super().__init__()
        self._init_supervised(n_rois, task, n_classes, input)
        check_int("layers", layers)
        check_heads(self.n_rois, heads)
        check_int("mlp_dim", mlp_dim)
        check_dropout(dropout)
        self.readout_kind = check_choice("readout", readout, READOUTS)
        check_int("reduce_dim", reduce_dim)
        head_hidden = check_widths("head_hidden", head_hidden)
        r = self.n_rois
        self.encoder = TransformerEncoder(r, layers, heads, mlp_dim, dropout, activation="relu")
        if self.readout_kind == "concat":
            self.reduce = nn.Sequential(nn.Linear(r, reduce_dim), nn.LeakyReLU())
            width = r * reduce_dim
        else:
            width = r
        self.head = head_mlp(width, *head_hidden, self.n_outputs)

    def encode_matrix(self, matrix, need_weights=False):
        nodes, maps = self.encoder(matrix, need_weights=need_weights)
        if self.readout_kind == "concat":
            readout = self.reduce(nodes).flatten(1)
        else:
            readout = nodes.mean(dim=1)
        return readout, nodes, {"maps": maps}

    @torch.no_grad()
    def attention(self, batch):
        """``layers`` (L, B, heads, R, R): self-attention weights of every layer."""
        _, _, aux = self.encode_matrix(self.connectivity(batch), need_weights=True)
        return {"layers": torch.stack(aux["maps"])}


PRESETS = {
    "tiny": dict(n_rois=16, task="classification", n_classes=2, input="fc", layers=2, heads=4,
                 mlp_dim=64, dropout=0.0, readout="mean", head_hidden=(32, 16)),
    "paper": dict(n_rois=450, task="classification", n_classes=2, input="fc", layers=2,
                  heads=5, mlp_dim=1024, dropout=0.1, readout="concat", reduce_dim=8,
                  head_hidden=(256, 32)),
}

SPEC = ModelSpec(
    name="transformer",
    factory=VanillaTransformer,
    presets=PRESETS,
    description="Vanilla transformer over FC (or SC) rows, mean or concatenation readout "
                "(supervised)",
)
