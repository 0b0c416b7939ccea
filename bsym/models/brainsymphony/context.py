"""Context model: a per-ROI 1-D convolution over time, and its masked-cell decoder."""

from __future__ import annotations

from torch import nn

from bsym.models.brainsymphony.perceiver import conv_windows
from bsym.models.layers import MLP


class ContextConv(nn.Module):
    """``Conv1d(1 -> channels, kernel)`` over each ROI's series (a feature per cell).

    The convolution is linear, so the Perceiver consumes it through its weights
    (see :mod:`~bsym.models.brainsymphony.perceiver`) and never needs the
    (B, R, T, channels) feature tensor; :meth:`forward` builds it for tests and
    inspection. The decoder (channels -> 32 -> 8 -> 1) reconstructs masked cells
    in the encoder pretraining stage, evaluated on the masked cells only.
    """

    def __init__(self, channels=64, kernel=5):
        super().__init__()
        self.conv = nn.Conv1d(1, channels, kernel, padding=kernel // 2)
        self.decoder = MLP(channels, 32, 8, 1)

    @property
    def weight(self):
        """(channels, kernel) weight of the convolution."""
        return self.conv.weight[:, 0, :]

    def forward(self, x):
        """Features (B, R, T, channels) of ``x`` (B, R, T)."""
        b, r, t = x.shape
        return self.conv(x.reshape(b * r, 1, t)).view(b, r, -1, t).transpose(2, 3)

    def reconstruct(self, x, mask):
        """Predicted values (n,) of the cells where ``mask`` (B, R, T) is True.

        ``x`` is the input with those cells hidden.
        """
        windows = conv_windows(x, self.conv.kernel_size[0])[mask]
        return self.decoder(windows @ self.weight.T + self.conv.bias).squeeze(-1)
