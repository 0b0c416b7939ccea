"""Masks for self-supervised pretraining: pure tensor functions.

Every function draws from an explicit :class:`torch.Generator` (or the global
one when ``generator`` is None) and masks an exact number of items per sample,
so the same seed gives the same masks on any device. Masks are boolean with
``True`` meaning *masked* (hidden from the model, and a target of the loss).
"""

from __future__ import annotations

import torch


def n_masked(n, ratio):
    """How many of ``n`` items a ratio masks: ``round(ratio * n)``, at least 1."""
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"mask ratio must lie in (0, 1), got {ratio!r}")
    return min(n, max(1, round(ratio * n)))


def _uniform(shape, generator, device):
    gen_device = generator.device if generator is not None else torch.device("cpu")
    u = torch.rand(shape, generator=generator, device=gen_device)
    return u.to(device) if device is not None else u


def random_subset(batch, n, ratio, generator=None, device=None):
    """(batch, n) boolean mask with exactly ``n_masked(n, ratio)`` True per row."""
    k = n_masked(n, ratio)
    order = _uniform((batch, n), generator, device).argsort(dim=1)
    mask = torch.zeros(batch, n, dtype=torch.bool, device=order.device)
    return mask.scatter_(1, order[:, :k], True)


def roi_mask(batch, n_rois, ratio=0.15, generator=None, device=None):
    """Whole ROIs hidden: (batch, n_rois)."""
    return random_subset(batch, n_rois, ratio, generator, device)


def time_mask(batch, n_timepoints, ratio=0.15, generator=None, device=None):
    """Whole time points hidden: (batch, n_timepoints)."""
    return random_subset(batch, n_timepoints, ratio, generator, device)


def cell_mask(batch, n_rois, n_timepoints, ratio=0.15, generator=None, device=None):
    """Single (ROI, time) cells hidden: (batch, n_rois, n_timepoints)."""
    flat = random_subset(batch, n_rois * n_timepoints, ratio, generator, device)
    return flat.view(batch, n_rois, n_timepoints)


def fmri_masks(batch, n_rois, n_timepoints, ratio=0.15, generator=None, device=None):
    """ROI, time and cell masks drawn together, and their union over cells.

    Returns
    -------
    dict
        ``roi`` (B, R), ``time`` (B, T), ``cell`` (B, R, T) and ``union`` (B, R, T):
        a cell is in the union when its ROI, its time point or itself is masked.
    """
    roi = roi_mask(batch, n_rois, ratio, generator, device)
    time = time_mask(batch, n_timepoints, ratio, generator, device)
    cell = cell_mask(batch, n_rois, n_timepoints, ratio, generator, device)
    union = cell | roi[:, :, None] | time[:, None, :]
    return {"roi": roi, "time": time, "cell": cell, "union": union}


def edge_mask(batch, n_rois, ratio=0.2, generator=None, device=None, symmetric=True):
    """Edges to hide from a connectivity matrix: (batch, R, R), diagonal never masked.

    With ``symmetric`` the draw is over unordered pairs ``i < j`` and both (i, j)
    and (j, i) are masked, so a symmetric matrix cannot reveal a hidden edge
    through its mirror. Otherwise ordered off-diagonal pairs are drawn.
    """
    if n_rois < 2:
        raise ValueError(f"edge masking needs at least 2 ROIs, got {n_rois}")
    if symmetric:
        i, j = torch.triu_indices(n_rois, n_rois, offset=1)
    else:
        off = ~torch.eye(n_rois, dtype=torch.bool)
        i, j = off.nonzero(as_tuple=True)
    chosen = random_subset(batch, i.numel(), ratio, generator, device)
    flat = torch.zeros(batch, n_rois * n_rois, dtype=torch.bool, device=chosen.device)
    index = (i * n_rois + j).to(chosen.device)
    flat[:, index] = chosen
    mask = flat.view(batch, n_rois, n_rois)
    return mask | mask.transpose(1, 2) if symmetric else mask


def apply_mask(x, mask, fill=0.0):
    """``x`` with masked entries replaced by ``fill`` (a number or a tensor)."""
    return torch.where(mask, torch.as_tensor(fill, dtype=x.dtype, device=x.device), x)


def remove_edges(adjacency, mask):
    """``adjacency`` with masked edges set to zero (absent)."""
    return adjacency.masked_fill(mask, 0.0)
