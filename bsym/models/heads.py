"""Shared pieces of the supervised baselines: FC in torch, inputs, heads and losses.

Every supervised baseline (BNT, BrainNetCNN, BrainGNN, the vanilla transformer)
reads one ROI x ROI matrix per sample, functional connectivity computed here from
``batch["bold"]`` or the structural matrix ``batch["sc"]``, and maps it to a
graph-level *readout* vector, which a small head turns into class logits or a
regression value. :class:`SupervisedModel` holds what they share: input checks, the
task (cross-entropy or MSE), ``predict`` / ``predict_proba`` and ``embed``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from bsym.models.base import BrainModel, Embeddings
from bsym.models.layers import check_choice, check_float, check_int

TASKS = ("classification", "regression")
INPUTS = ("fc", "sc")
HEAD_ACTIVATIONS = {"leaky_relu": nn.LeakyReLU, "relu": nn.ReLU, "gelu": nn.GELU}


def pearson_fc(bold, eps=1e-8):
    """Pearson correlation between ROI series, per sample (differentiable).

    Parameters
    ----------
    bold : Tensor, shape (B, R, T)
    eps : float
        A ROI whose centred series has a norm below ``eps`` is treated as constant.

    Returns
    -------
    Tensor, shape (B, R, R)
        Correlations with ones on the diagonal; a constant ROI correlates 0 with
        every other ROI (as :func:`bsym.data.features.fc_matrix`).
    """
    if bold.dim() != 3 or bold.shape[-1] < 2:
        raise ValueError(f"expected bold of shape (batch, ROIs, time) with time >= 2, "
                         f"received shape {tuple(bold.shape)}")
    x = bold - bold.mean(dim=-1, keepdim=True)
    sq = x.pow(2).sum(dim=-1, keepdim=True)
    active = sq > eps * eps
    x = torch.where(active, x / sq.clamp_min(eps * eps).sqrt(), torch.zeros_like(x))
    r = (x @ x.transpose(1, 2)).clamp(-1.0, 1.0)
    eye = torch.eye(r.shape[-1], dtype=torch.bool, device=r.device)
    return r.masked_fill(eye, 1.0)


def head_mlp(*dims, activation="leaky_relu", dropout=0.0, batch_norm=False):
    """``Linear`` layers ``dims[0] -> ... -> dims[-1]``; activation (and optional
    BatchNorm, dropout) after every layer but the last."""
    layers = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers.append(HEAD_ACTIVATIONS[activation]())
            if batch_norm:
                layers.append(nn.BatchNorm1d(b))
            if dropout:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def check_widths(name, values, minimum=1):
    """A tuple of ints >= ``minimum`` (a list or tuple of them), or a ValueError."""
    if isinstance(values, int) and not isinstance(values, bool):
        values = (values,)
    if not isinstance(values, (list, tuple)):
        raise ValueError(f"{name} must be a list of ints, got {values!r}")
    return tuple(check_int(f"{name}[{i}]", v, minimum) for i, v in enumerate(values))


def check_heads(n_rois, heads):
    """``heads`` if it divides ``n_rois`` (the token width of FC-row transformers)."""
    check_int("heads", heads)
    if n_rois % heads:
        divisors = [d for d in range(1, min(n_rois, 64) + 1) if n_rois % d == 0]
        raise ValueError(f"heads ({heads}) must divide n_rois ({n_rois}): the tokens are FC "
                         f"rows, so the width is n_rois; divisors of {n_rois}: "
                         f"{', '.join(map(str, divisors))}")
    return heads


class SupervisedModel(BrainModel):
    """Base of the supervised baselines: input matrix -> readout -> head.

    Subclasses call :meth:`_init_supervised` first, build ``self.head`` (readout ->
    ``n_outputs``) and implement :meth:`encode_matrix`.

    Attributes
    ----------
    task : {"classification", "regression"}
    n_classes : int or None
    n_outputs : int
        ``n_classes``, or 1 for regression.
    input : {"fc", "sc"}
    target_loc, target_scale : Tensor (buffers)
        Regression targets are standardised as ``(y - loc) / scale`` inside the loss
        and predictions mapped back; set them from the training targets with
        :meth:`set_target_scaling` (default 0 and 1: no scaling).
    """

    objective = "supervised"

    def _init_supervised(self, n_rois, task, n_classes, input):
        self.n_rois = check_int("n_rois", n_rois, 2)
        self.task = check_choice("task", task, TASKS)
        if self.task == "classification":
            self.n_classes = check_int("n_classes", n_classes, 2)
            self.n_outputs = self.n_classes
        else:  # n_classes is ignored, so a classification preset can be switched over
            self.n_classes = None
            self.n_outputs = 1
        self.input = check_choice("input", input, INPUTS)
        self.register_buffer("target_loc", torch.zeros(()))
        self.register_buffer("target_scale", torch.ones(()))

    # -- inputs ---------------------------------------------------------------------------
    def _reference(self):
        return next(self.parameters())

    def connectivity(self, batch):
        """The input matrix (B, R, R): FC of ``batch["bold"]`` or ``batch["sc"]``."""
        ref = self._reference()
        if self.input == "fc":
            if "bold" not in batch:
                raise ValueError(f"input='fc' needs batch['bold'] (B, {self.n_rois}, T); the "
                                 f"batch has {sorted(batch)}")
            x = torch.as_tensor(batch["bold"])
            if x.dim() != 3 or x.shape[1] != self.n_rois or x.shape[2] < 2:
                raise ValueError(f"batch['bold'] must be (batch, ROIs, time points) = (B, "
                                 f"{self.n_rois}, T >= 2) for this model (n_rois="
                                 f"{self.n_rois}); received shape {tuple(x.shape)}")
            return pearson_fc(x.to(device=ref.device, dtype=ref.dtype))
        if batch.get("sc") is None:
            raise ValueError("input='sc' needs batch['sc'] (load it with WindowDataset(..., "
                             f"with_sc=True) from a store with SC); the batch has {sorted(batch)}")
        a = torch.as_tensor(batch["sc"])
        if a.dim() != 3 or tuple(a.shape[1:]) != (self.n_rois, self.n_rois):
            raise ValueError(f"batch['sc'] must be (batch, ROIs, ROIs) = (B, {self.n_rois}, "
                             f"{self.n_rois}) for this model (n_rois={self.n_rois}); received "
                             f"shape {tuple(a.shape)}")
        return a.to(device=ref.device, dtype=ref.dtype)

    # -- the model ------------------------------------------------------------------------
    def encode_matrix(self, matrix):
        """``(readout (B, D), roi embeddings (B, R, D') or None, aux dict)``."""
        raise NotImplementedError

    def forward(self, batch):
        """Class logits (B, n_classes) or standardised regression outputs (B, 1)."""
        return self.head(self.encode_matrix(self.connectivity(batch))[0])

    def embed(self, batch):
        """``Embeddings(subject=readout the head receives (B, D), roi=(B, R, D') or None)``."""
        readout, roi, _ = self.encode_matrix(self.connectivity(batch))
        return Embeddings(subject=readout, roi=roi)

    def regularisation(self, aux, y):
        """Extra loss terms of the model (a scalar; none by default)."""
        return None

    # -- task -----------------------------------------------------------------------------
    def set_target_scaling(self, loc, scale):
        """Standardise regression targets by ``(y - loc) / scale`` (training-set values)."""
        if self.task != "regression":
            raise ValueError("target scaling applies to regression models only")
        loc, scale = float(loc), float(scale)
        if not (math.isfinite(loc) and math.isfinite(scale) and scale > 0):
            raise ValueError(f"expected a finite loc and a positive scale, got {loc}, {scale}")
        self.target_loc.fill_(loc)
        self.target_scale.fill_(scale)

    def _targets(self, y, n, device):
        y = torch.as_tensor(y, device=device)
        if y.dim() != 1 or y.shape[0] != n:
            raise ValueError(f"expected targets of shape ({n},), received shape {tuple(y.shape)}")
        if self.task == "regression":
            if not (y.is_floating_point() or y.dtype in (torch.int32, torch.int64)):
                raise ValueError(f"regression targets must be numbers, received dtype {y.dtype}")
            return (y.to(self.target_loc.dtype) - self.target_loc) / self.target_scale
        if y.is_floating_point():
            if not torch.equal(y, y.round()):
                raise ValueError("classification targets must be class indices; received "
                                 "non-integer values (use task='regression' for a continuous "
                                 "label)")
        y = y.long()
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.n_classes):
            raise ValueError(f"class indices must lie in [0, {self.n_classes}); received values "
                             f"from {int(y.min())} to {int(y.max())}")
        return y

    def task_loss(self, outputs, y):
        """Cross-entropy (classification) or MSE on the standardised target (regression)."""
        y = self._targets(y, outputs.shape[0], outputs.device)
        if self.task == "classification":
            return F.cross_entropy(outputs.float(), y)
        return F.mse_loss(outputs[:, 0].float(), y.float())

    def supervised_loss(self, batch, y):
        """Task loss of predicting ``y`` (B,), plus the model's regularisers."""
        readout, _, aux = self.encode_matrix(self.connectivity(batch))
        loss = self.task_loss(self.head(readout), y)
        extra = self.regularisation(aux, y)
        return loss if extra is None else loss + extra

    @torch.no_grad()
    def predict(self, batch):
        """Class indices (B,) or regression values (B,) in the target's units."""
        out = self(batch)
        if self.task == "classification":
            return out.argmax(dim=-1)
        return out[:, 0] * self.target_scale + self.target_loc

    @torch.no_grad()
    def predict_proba(self, batch):
        """Class probabilities (B, n_classes)."""
        if self.task != "classification":
            raise ValueError("predict_proba needs task='classification'")
        return torch.softmax(self(batch).float(), dim=-1)


def check_dropout(value, name="dropout"):
    return check_float(name, value, 0.0, 1.0, high_open=True)
