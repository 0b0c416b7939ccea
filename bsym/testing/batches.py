"""One model batch in memory, shaped as :class:`~bsym.data.dataset.WindowDataset` yields it."""

from __future__ import annotations

import math


def toy_batch(n_samples=3, n_rois=8, n_timepoints=20, *, sc=True, seed=0):
    """A collated batch of windows whose ROIs mix three shared rhythms, and their SC.

    Parameters
    ----------
    n_samples, n_rois, n_timepoints : int
        Batch size B, ROIs R and window length T.
    sc : bool
        Include ``"sc"``.
    seed : int
        Seed of a private :class:`torch.Generator` (the global RNG is not touched).

    Returns
    -------
    dict
        ``"bold"``: float32 tensor (B, R, T), a random ROI mixing of three sinusoids
        per sample plus 10% noise; ``"sc"``: float32 tensor (B, R, R), log1p of
        symmetric non-negative weights, about 40% of them zero, empty diagonal;
        ``"subject"`` and ``"scan"``: lists of B ids.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(n_timepoints, dtype=torch.float32)
    freqs = 0.02 + 0.1 * torch.rand(n_samples, 3, 1, generator=gen)
    phases = 2 * math.pi * torch.rand(n_samples, 3, 1, generator=gen)
    latent = torch.sin(2 * math.pi * freqs * t + phases)                    # (B, 3, T)
    mixing = torch.randn(n_rois, 3, generator=gen)
    bold = mixing @ latent + 0.1 * torch.randn(n_samples, n_rois, n_timepoints, generator=gen)
    subjects = [f"sub-{i:02d}" for i in range(n_samples)]
    batch = {"bold": bold, "subject": subjects, "scan": [f"{s}_ses-1" for s in subjects]}
    if sc:
        a = torch.rand(n_samples, n_rois, n_rois, generator=gen)
        a = (a + a.transpose(1, 2)) / 2
        a = torch.where(a > 0.45, torch.log1p(10 * a), torch.zeros(()))
        a.diagonal(dim1=1, dim2=2).zero_()
        batch["sc"] = a
    return batch
