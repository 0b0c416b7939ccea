"""The interface every model implements, BrainSymphony and baselines alike.

A *batch* is what :class:`bsym.data.dataset.WindowDataset` yields after collation:
``batch["bold"]`` (B, R, T) float32 robust-scaled time series, ``batch["sc"]``
(B, R, R) log1p structural connectivity when the store has it, and
``batch["labels"]`` (name -> (B,) values) when labels were requested.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn


class Embeddings(NamedTuple):
    """Embeddings of one batch.

    subject : Tensor (B, D)
        One vector per sample (mean over ROI or token embeddings unless the model
        has a better-defined summary).
    roi : Tensor (B, R, D) or None
        One vector per ROI, where the model has them.
    """

    subject: torch.Tensor
    roi: torch.Tensor | None = None


class BrainModel(nn.Module):
    """Base class: the model interface.

    Subclasses set :attr:`objective` and implement the matching loss and
    :meth:`embed`. Constructor arguments are plain values (ints, floats,
    strings, bools) so a model is rebuilt exactly from ``self.config``.

    Attributes
    ----------
    name : str
        Registry name (set by :func:`bsym.models.build`).
    preset : str or None
        Preset it was built from.
    config : dict
        The full keyword arguments it was constructed with.
    objective : {"self_supervised", "supervised", "none"}

    Models with an EMA target network also define
    ``after_optimizer_step(step, total_steps)``; the training engine calls it
    once per optimizer step (``step`` counts completed steps over all stages),
    before any checkpoint is written.
    """

    objective = "self_supervised"
    name = None
    preset = None

    def pretrain_loss(self, batch, *, generator=None, stage=None):
        """Self-supervised loss of one batch (a scalar tensor).

        ``generator`` (a :class:`torch.Generator`) draws masks reproducibly;
        ``stage`` names a step of a staged schedule (model-specific).
        """
        raise NotImplementedError(f"{type(self).__name__} has no self-supervised objective")

    def supervised_loss(self, batch, y):
        """Loss of predicting ``y`` (B,) from the batch (a scalar tensor)."""
        raise NotImplementedError(f"{type(self).__name__} has no supervised objective")

    def embed(self, batch):
        """:class:`Embeddings`, or a dict of named views (e.g. fmri, sc, fusion)."""
        raise NotImplementedError

    def attention(self, batch):
        """Attention weights, for models that have attention to show."""
        raise NotImplementedError(f"{type(self).__name__} has no attention maps")

    def stages(self):
        """Names of the pretraining stages in order (one stage unless staged)."""
        return ("all",)

    def stage_parameters(self, stage):
        """Parameters trained in ``stage`` (default all)."""
        return [p for p in self.parameters() if p.requires_grad]

    def param_counts(self) -> dict:
        """Trainable parameters per top-level component and in total."""
        counts = {name: sum(p.numel() for p in child.parameters())
                  for name, child in self.named_children()}
        counts = {k: v for k, v in counts.items() if v}
        direct = sum(p.numel() for n, p in self.named_parameters(recurse=False))
        if direct:
            counts["(own)"] = direct
        counts["total"] = sum(p.numel() for p in self.parameters())
        return counts
