"""BrainNetCNN (Kawahara, Brown, Miller, Booth, Chau, Grunau, Zwicker & Hamarneh,
NeuroImage 2017).

Registered as ``"brainnetcnn"``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from bsym.models.heads import SupervisedModel, check_dropout, check_widths
from bsym.models.layers import check_float, check_int
from bsym.models.registry import ModelSpec


class EdgeToEdge(nn.Module):
    """Cross-shaped filter: ``out[i, j] = sum_k w_row[k] A[i, k] + w_col[k] A[k, j] + b``.

    One (1 x R) and one (R x 1) convolution per output channel, broadcast back to R x R.
    """

    def __init__(self, in_channels, out_channels, n_rois):
        super().__init__()
        self.row = nn.Conv2d(in_channels, out_channels, (1, n_rois))
        self.col = nn.Conv2d(in_channels, out_channels, (n_rois, 1), bias=False)

    def forward(self, x):
        return self.row(x) + self.col(x)  # (B, C, R, 1) + (B, C, 1, R) -> (B, C, R, R)


class BrainNetCNN(SupervisedModel):
    """BrainNetCNN (Kawahara et al. 2017): E2E, E2N and N2G filters on a connectome.

    The input matrix (FC from ``batch["bold"]`` or ``batch["sc"]``) passes edge-to-edge
    layers (cross-shaped filters), an edge-to-node layer (a 1 x R filter: one value
    per ROI and channel), a node-to-graph layer (an R x 1 filter over the node
    responses) and fully connected layers, with leaky ReLU (slope 0.33) after each and
    dropout after the N2G and hidden fully connected layers.

    Parameters
    ----------
    n_rois : int
    task : {"classification", "regression"}
    n_classes : int
        Classes (classification only).
    input : {"fc", "sc"}
    e2e_channels : list of int
        Filters of each E2E layer.
    e2n_channels, n2g_channels : int
        Filters of the E2N and N2G layers.
    hidden : list of int
        Widths of the hidden fully connected layers.
    dropout : float
    negative_slope : float
        Leaky ReLU slope.

    Notes
    -----
    Presets at R = 450: ``paper`` uses the filter counts of the BNT authors' public
    baseline, which the BrainSymphony comparison (~2M) matches: E2E 32 and 64, E2N 1,
    N2G 256, FC 128 and 30: 2.05M parameters. ``kawahara`` uses the counts of the
    original paper as we read it (E2E 32 and 32, E2N 64, N2G 256, FC 128 and 30):
    9.28M at 450 ROIs (its N2G layer alone holds 64 x 256 x 450 weights; the paper
    had 90 ROIs).

    Deviations: one bias per E2E filter (the public PyTorch baselines have two, one of
    them redundant); no activation on the output layer; the optimiser, weight decay and
    (for the original) the Caffe-specific learning-rate multipliers are the engine's.
    """

    def __init__(self, n_rois=16, task="classification", n_classes=2, input="fc",
                 e2e_channels=(32, 64), e2n_channels=1, n2g_channels=256, hidden=(128, 30),
                 dropout=0.5, negative_slope=0.33):
        super().__init__()
        self._init_supervised(n_rois, task, n_classes, input)
        e2e_channels = check_widths("e2e_channels", e2e_channels)
        check_int("e2n_channels", e2n_channels)
        check_int("n2g_channels", n2g_channels)
        hidden = check_widths("hidden", hidden) if hidden else ()
        self.dropout = check_dropout(dropout)
        self.negative_slope = check_float("negative_slope", negative_slope, 0.0, 1.0)
        r = self.n_rois
        channels = (1, *e2e_channels)
        self.e2e = nn.ModuleList(EdgeToEdge(a, b, r) for a, b in zip(channels[:-1],
                                                                       channels[1:]))
        self.e2n = nn.Conv2d(channels[-1], e2n_channels, (1, r))
        self.n2g = nn.Conv2d(e2n_channels, n2g_channels, (r, 1))
        widths = (n2g_channels, *hidden)
        self.dense = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.head = nn.Linear(widths[-1], self.n_outputs)

    def _act(self, x):
        return F.leaky_relu(x, self.negative_slope)

    def _drop(self, x):
        return F.dropout(x, self.dropout, self.training)

    def encode_matrix(self, matrix):
        """Readout = the hidden layers' output; ROI embeddings = the E2N responses."""
        x = matrix.unsqueeze(1)
        for layer in self.e2e:
            x = self._act(layer(x))
        nodes = self._act(self.e2n(x))                              # (B, C, R, 1)
        x = self._drop(self._act(self.n2g(nodes))).flatten(1)      # (B, n2g)
        for layer in self.dense:
            x = self._drop(self._act(layer(x)))
        return x, nodes.squeeze(-1).transpose(1, 2), {}


PRESETS = {
    "tiny": dict(n_rois=16, task="classification", n_classes=2, input="fc",
                 e2e_channels=(8, 8), e2n_channels=8, n2g_channels=32, hidden=(16,),
                 dropout=0.0),
    "paper": dict(n_rois=450, task="classification", n_classes=2, input="fc",
                  e2e_channels=(32, 64), e2n_channels=1, n2g_channels=256, hidden=(128, 30),
                  dropout=0.5),
    "kawahara": dict(n_rois=450, task="classification", n_classes=2, input="fc",
                     e2e_channels=(32, 32), e2n_channels=64, n2g_channels=256,
                     hidden=(128, 30), dropout=0.5),
}

SPEC = ModelSpec(
    name="brainnetcnn",
    factory=BrainNetCNN,
    presets=PRESETS,
    description="BrainNetCNN (Kawahara et al. 2017): edge-to-edge, edge-to-node and "
                "node-to-graph filters on FC or SC (supervised)",
)
