"""BrainMass: a transformer over FC rows, masked-ROI modelling and BYOL alignment.

Yang, Ye, et al. (2024). *BrainMass: Advancing brain network analysis for
diagnosis with large-scale self-supervised learning.* IEEE Transactions on
Medical Imaging.

Each token is one row of a functional connectivity matrix (token width = number
of ROIs), plus a fixed sine/cosine ROI position; a transformer encodes the rows.
The FC is computed inside the model (Pearson correlation of ``batch["bold"]``).
Pretraining sums three losses:

* **latent representation alignment** (BYOL): two pseudo-FC matrices of the same
  window, each from a random subset of its time points (80% kept, the public
  configuration ``mask_per``) or from a random contiguous crop
  (``view="crop"``); an online network (encoder, per-token ``Linear(width, 8)`` +
  LeakyReLU, flattened, then a BatchNorm MLP projector) and a predictor are
  pulled towards an EMA target network's projection of the other view,
  ``2 - 2 cos``, symmetrised;
* **masked ROI modelling** (MRM): ``mrm_ratio`` of the rows (5 of 100) replaced
  by a learned mask row and regressed by an MLP (MSE), weight 2;
* **masked ROI classification** (MRC): ``mrc_ratio`` of the rows (10 of 100)
  masked and each prediction matched to its own row among the sample's masked
  rows (InfoNCE), weight 0.1.

Registered as ``"brainmass"``; presets ``tiny`` and ``paper``. At the ``paper``
preset (100 ROIs, Schaefer-100 as the public code; 16 layers, 10 heads, MLP 2048,
readout 8 per ROI, projection 1024) the online network (encoder + readout +
projector) has 10.2M parameters, the published ~10M; the predictor, the MRM/MRC
heads and the EMA target come on top (``param_counts``). The count does not
depend on the window length.

Facts from the public code (``podismine/BrainMass``: ``byol_trainer.py``,
``utils.py``, ``config/normal_sch1.yaml``): ``nn.TransformerEncoderLayer``
(post-LN, ReLU, dropout 0.1) with ``d_model`` = number of ROIs; projector
``MLPHead(8R, 16R, 1024)`` and predictor ``MLPHead(1024, 2048, 1024)`` (Linear,
BatchNorm, ReLU, Linear); target momentum 0.996 (constant); losses
``byol + 0.1 * nce + 2 * mse``; pseudo-FC views by dropping 20% of time points.

Deviations
----------
* Pre-LN blocks with a final LayerNorm (:mod:`bsym.models.layers`) instead of
  post-LN layers.
* One input path for every objective: FC rows + ROI positions (the public code
  adds positions, and two unused CLS/distillation tokens, only in the masked
  paths).
* ``hide_masked_columns`` (default): a masked ROI's column is zeroed in the
  visible rows too, since FC is symmetric and the public code leaves the hidden
  row readable there.
* ``dim`` may project rows to another width when the number of heads does not
  divide the number of ROIs (default: width = ROIs, as the paper).
* MRC masks at least 2 rows (a contrast needs two).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from bsym.models import masking, pretext
from bsym.models.base import BrainModel, Embeddings
from bsym.models.brainlm import bold_input
from bsym.models.ema import ema_momentum, ema_update_
from bsym.models.layers import (
    TransformerEncoder,
    check_choice,
    check_float,
    check_int,
    sinusoidal_positions,
)
from bsym.models.registry import ModelSpec

VIEWS = ("subsample", "crop")


def _uniform(shape, generator, device):
    gen_device = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(shape, generator=generator, device=gen_device).to(device)


def pearson(x, eps=1e-8):
    """Correlation matrices (B, R, R) of series (B, R, T); a constant ROI correlates 0.

    Computed in float32 even under autocast.
    """
    with torch.autocast(x.device.type, enabled=False):
        x = x.float()
        x = x - x.mean(dim=-1, keepdim=True)
        x = x / x.norm(dim=-1, keepdim=True).clamp_min(eps)
        return (x @ x.transpose(1, 2)).clamp(-1.0, 1.0)


class MLPHead(nn.Sequential):
    """``Linear -> BatchNorm1d -> ReLU -> Linear`` (BYOL projector / predictor)."""

    def __init__(self, in_dim, hidden, out_dim):
        super().__init__(nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                         nn.Linear(hidden, out_dim))


class OnlineNetwork(nn.Module):
    """FC rows -> tokens -> transformer; readout ``Linear(width, k)`` per ROI -> projector."""

    def __init__(self, n_rois, width, layers, heads, mlp_dim, dropout, readout_dim,
                 projection_hidden, projection_dim, project_input):
        super().__init__()
        self.input = nn.Linear(n_rois, width) if project_input else nn.Identity()
        self.encoder = TransformerEncoder(width, layers, heads, mlp_dim, dropout,
                                          activation="relu")
        self.readout = nn.Sequential(nn.Linear(width, readout_dim), nn.LeakyReLU())
        self.projector = MLPHead(n_rois * readout_dim, projection_hidden, projection_dim)

    def tokens(self, fc, position, need_weights=False):
        return self.encoder(self.input(fc) + position, need_weights=need_weights)

    def summary(self, tokens):
        """Flattened readout (B, R * readout_dim): the paper's downstream feature."""
        return self.readout(tokens).flatten(1)

    def forward(self, fc, position):
        return self.projector(self.summary(self.tokens(fc, position)[0]))


class BrainMass(BrainModel):
    """BrainMass (Yang et al., IEEE TMI 2024): FC-row transformer, MRM + MRC + BYOL.

    Parameters
    ----------
    n_rois, n_timepoints : int
        Input size R x T of ``batch["bold"]`` (the FC is computed inside).
    dim : int, optional
        Token width; default R (the FC row itself, as the paper). Set it when
        ``heads`` does not divide R.
    layers, heads, mlp_dim : int
        Transformer depth, heads, MLP width.
    dropout : float
    readout_dim : int
        Per-ROI readout width (8): the subject feature is R * readout_dim wide.
    projection_dim : int
        BYOL projection size (1024).
    projection_hidden, predictor_hidden : int, optional
        Hidden widths of projector (default ``2 * R * readout_dim``) and predictor
        (default ``2 * projection_dim``).
    view : {"subsample", "crop"}
        Pseudo-FC views: a random subset of time points, or a random contiguous crop.
    view_fraction : float in (0, 1]
        Fraction of the window's time points each view keeps (0.8).
    mrm_ratio, mrc_ratio : float in (0, 1)
        Fractions of rows masked for MRM (0.05) and MRC (0.10).
    byol_weight, mrm_weight, mrc_weight : float
        Loss weights (1, 2, 0.1); 0 switches a term off.
    hide_masked_columns : bool
        Also zero the masked ROIs' columns in the visible rows (no leak through
        symmetry).
    ema_momentum : float
        Target momentum (0.996).
    ema_final : float, optional
        If given, the momentum rises from ``ema_momentum`` to it along a cosine
        over training (BYOL); by default it is constant (the public code).
    """

    objective = "self_supervised"

    def __init__(self, n_rois=16, n_timepoints=40, dim=None, layers=2, heads=4, mlp_dim=64,
                 dropout=0.0, readout_dim=8, projection_dim=32, projection_hidden=None,
                 predictor_hidden=None, view="subsample", view_fraction=0.8, mrm_ratio=0.05,
                 mrc_ratio=0.10, byol_weight=1.0, mrm_weight=2.0, mrc_weight=0.1,
                 hide_masked_columns=True, ema_momentum=0.996, ema_final=None):
        super().__init__()
        self.n_rois = check_int("n_rois", n_rois, 2)
        self.n_timepoints = check_int("n_timepoints", n_timepoints, 3)
        width = self.n_rois if dim is None else check_int("dim", dim)
        for name, value in (("layers", layers), ("heads", heads), ("mlp_dim", mlp_dim),
                            ("readout_dim", readout_dim), ("projection_dim", projection_dim)):
            check_int(name, value)
        if width % heads:
            raise ValueError(f"the token width {width} ({'n_rois' if dim is None else 'dim'}) "
                             f"must be divisible by heads ({heads}); choose heads dividing "
                             f"{width} or set dim= to project the FC rows to another width")
        projection_hidden = 2 * n_rois * readout_dim if projection_hidden is None else \
            check_int("projection_hidden", projection_hidden)
        predictor_hidden = 2 * projection_dim if predictor_hidden is None else \
            check_int("predictor_hidden", predictor_hidden)
        check_float("dropout", dropout, 0.0, 1.0, high_open=True)
        self.view = check_choice("view", view, VIEWS)
        self.view_fraction = check_float("view_fraction", view_fraction, 0.0, 1.0,
                                         low_open=True)
        self.view_length = max(1, round(self.view_fraction * n_timepoints))
        if self.view_length < 3:
            raise ValueError(f"each pseudo-FC view keeps {self.view_length} time point(s) "
                             f"(view_fraction {view_fraction} of {n_timepoints}); a correlation "
                             "needs at least 3: raise view_fraction or use a longer window")
        self.mrm_ratio = check_float("mrm_ratio", mrm_ratio, 0.0, 1.0, low_open=True,
                                     high_open=True)
        self.mrc_ratio = check_float("mrc_ratio", mrc_ratio, 0.0, 1.0, low_open=True,
                                     high_open=True)
        self.weights = {"byol": check_float("byol_weight", byol_weight, 0.0, 1e6),
                        "mrm": check_float("mrm_weight", mrm_weight, 0.0, 1e6),
                        "mrc": check_float("mrc_weight", mrc_weight, 0.0, 1e6)}
        if not any(self.weights.values()):
            raise ValueError("at least one of byol_weight, mrm_weight, mrc_weight must be > 0")
        if not isinstance(hide_masked_columns, bool):
            raise ValueError(f"hide_masked_columns must be a bool, got {hide_masked_columns!r}")
        self.hide_masked_columns = hide_masked_columns
        self.ema_start = check_float("ema_momentum", ema_momentum, 0.0, 1.0)
        self.ema_end = self.ema_start if ema_final is None else check_float(
            "ema_final", ema_final, 0.0, 1.0)
        self.width = width

        self.online = OnlineNetwork(n_rois, width, layers, heads, mlp_dim, dropout, readout_dim,
                                    projection_hidden, projection_dim, dim is not None)
        self.predictor = MLPHead(projection_dim, predictor_hidden, projection_dim)
        self.mask_row = nn.Parameter(torch.randn(n_rois) / math.sqrt(n_rois))  # xavier
        self.mrm_head = nn.Sequential(nn.Linear(width, mlp_dim), nn.LeakyReLU(),
                                      nn.Linear(mlp_dim, n_rois))
        self.mrc_head = nn.Sequential(nn.Linear(width, mlp_dim), nn.LeakyReLU(),
                                      nn.Linear(mlp_dim, n_rois))
        self.target = copy.deepcopy(self.online).requires_grad_(False)
        self.register_buffer("position", sinusoidal_positions(n_rois, width), persistent=False)

    # -- structure ----------------------------------------------------------------------
    def stage_parameters(self, stage):
        """Everything but the EMA target network."""
        target = {id(p) for p in self.target.parameters()}
        return [p for p in self.parameters() if p.requires_grad and id(p) not in target]

    def param_counts(self):
        """Components and total; the published ~10M is the ``online.*`` subtotal."""
        def count(*modules):
            return sum(p.numel() for m in modules for p in m.parameters())

        online = self.online
        counts = {"online.encoder": count(online.input, online.encoder),
                  "online.readout": count(online.readout),
                  "online.projector": count(online.projector),
                  "predictor": count(self.predictor),
                  "heads": count(self.mrm_head, self.mrc_head) + self.mask_row.numel(),
                  "target": count(self.target)}
        counts["total"] = sum(p.numel() for p in self.parameters())
        return counts

    # -- inputs -------------------------------------------------------------------------
    def views(self, x, generator=None):
        """Two pseudo-FC matrices (B, R, R) of each window, from random time subsets / crops."""
        b, t, k = x.shape[0], self.n_timepoints, self.view_length
        out = []
        for _ in range(2):
            u = _uniform((b, t), generator, x.device)
            if self.view == "subsample":
                index = u.argsort(dim=1)[:, :k]
            else:
                start = (u[:, 0] * (t - k + 1)).long().clamp_max(t - k)
                index = start[:, None] + torch.arange(k, device=x.device)
            out.append(pearson(torch.gather(x, 2, index[:, None, :].expand(-1, self.n_rois,
                                                                           -1))))
        return out

    def masked_input(self, fc, rows):
        """``fc`` with the ``rows`` (B, R) replaced by the mask row (and their columns hidden)."""
        out = torch.where(rows[:, :, None], self.mask_row.to(fc.dtype), fc)
        if self.hide_masked_columns:
            out = out.masked_fill(rows[:, None, :] & ~rows[:, :, None], 0.0)
        return out

    # -- objective ----------------------------------------------------------------------
    @staticmethod
    def byol_distance(p, z):
        """``2 - 2 cos(p, z)`` per sample."""
        return 2.0 - 2.0 * (F.normalize(p, dim=-1) * F.normalize(z, dim=-1)).sum(dim=-1)

    def pretrain_losses(self, batch, *, generator=None, stage=None):
        """Every loss term of one batch (dict of scalars; ``loss`` is their weighted sum)."""
        x = bold_input(self, batch)
        b = x.shape[0]
        if self.training and b < 2 and self.weights["byol"]:
            raise ValueError("BrainMass's BYOL projector uses BatchNorm: training needs "
                             f"batches of at least 2 samples, got {b}")
        v1, v2 = self.views(x, generator)
        terms = {}
        if self.weights["byol"]:
            p1 = self.predictor(self.online(v1, self.position))
            p2 = self.predictor(self.online(v2, self.position))
            with torch.no_grad():
                z1, z2 = self.target(v1, self.position), self.target(v2, self.position)
            terms["byol"] = (self.byol_distance(p1, z2) + self.byol_distance(p2, z1)).mean()
        if self.weights["mrm"]:
            rows = masking.random_subset(b, self.n_rois, self.mrm_ratio, generator, x.device)
            h, _ = self.online.tokens(self.masked_input(v1, rows), self.position)
            terms["mrm"] = F.mse_loss(self.mrm_head(h[rows]), v1[rows])
        if self.weights["mrc"]:
            k = max(2, masking.n_masked(self.n_rois, self.mrc_ratio))
            rows = masking.random_subset(b, self.n_rois, k / self.n_rois, generator, x.device)
            k = int(rows[0].sum())
            h, _ = self.online.tokens(self.masked_input(v1, rows), self.position)
            pred = self.mrc_head(h[rows]).view(b, k, self.n_rois)
            true = v1[rows].view(b, k, self.n_rois).detach()
            logits = true @ pred.transpose(1, 2)
            labels = torch.arange(k, device=x.device).repeat(b)
            terms["mrc"] = F.cross_entropy(logits.reshape(b * k, k), labels)
        terms["loss"] = sum(self.weights[name] * value for name, value in terms.items())
        return terms

    def pretrain_loss(self, batch, *, generator=None, stage=None):
        """``byol_weight * BYOL + mrm_weight * MRM + mrc_weight * MRC`` (a scalar)."""
        return self.pretrain_losses(batch, generator=generator, stage=stage)["loss"]

    @torch.no_grad()
    def pretext_predictions(self, batch, *, generator=None, stage=None):
        """Masked ROI modelling beside trivial baselines (view ``default``).

        Draws the first pseudo-FC view and the MRM rows as :meth:`pretrain_losses` does
        and scores the off-diagonal entries of the masked rows (the diagonal is 1 by
        construction). Baselines read the visible entries (unmasked rows, and unmasked
        columns with ``hide_masked_columns``): ``column_mean``, the mean of column j
        over the visible rows (the sample's visible mean where column j is hidden), and
        ``visible_mean``. Returns ``{"default": (PretextPrediction,)}``.
        """
        if not self.weights["mrm"]:
            raise ValueError("this BrainMass was built with mrm_weight=0: its masked ROI "
                             "modelling head is untrained, so it has no reconstruction pretext")
        x = bold_input(self, batch)
        fc, _ = self.views(x, generator)
        rows = masking.random_subset(x.shape[0], self.n_rois, self.mrm_ratio, generator,
                                     x.device)
        h, _ = self.online.tokens(self.masked_input(fc, rows), self.position)
        eye = torch.eye(self.n_rois, dtype=torch.bool, device=x.device)
        hidden = rows[:, :, None] & ~eye
        visible = ~rows[:, :, None] & ~eye
        if self.hide_masked_columns:
            visible = visible & ~rows[:, None, :]
        baselines = {"column_mean": pretext.row_mean(fc.transpose(1, 2),
                                                     visible.transpose(1, 2)).transpose(1, 2),
                     "visible_mean": pretext.sample_mean(fc, visible).expand_as(fc)}
        return {"default": (pretext.PretextPrediction(
            "fc_masked_rows", fc[hidden], self.mrm_head(h)[hidden],
            {name: value[hidden] for name, value in baselines.items()}),)}

    @torch.no_grad()
    def after_optimizer_step(self, step, total_steps=None):
        """EMA update of the target network; call after every optimizer step.

        Parameters
        ----------
        step : int
            Optimizer steps completed so far in the run (1 after the first).
        total_steps : int, optional
            Optimizer steps of the whole run (used only with ``ema_final``).

        Returns
        -------
        float
            The momentum used.
        """
        m = ema_momentum(step, total_steps, self.ema_start, self.ema_end, "cosine")
        ema_update_(self.target, self.online, m)
        return m

    # -- evaluation ---------------------------------------------------------------------
    def embed(self, batch):
        """Online encoder on the window's FC.

        ``Embeddings(subject=(B, R * readout_dim) flattened readout, the paper's
        downstream feature; roi=(B, R, width) encoded FC rows)``.
        """
        x = bold_input(self, batch)
        h, _ = self.online.tokens(pearson(x), self.position)
        return Embeddings(subject=self.online.summary(h), roi=h)

    @torch.no_grad()
    def attention(self, batch):
        """``{"roi": (layers, B, heads, R, R)}``: ROI-to-ROI attention of the online encoder."""
        x = bold_input(self, batch)
        _, maps = self.online.tokens(pearson(x), self.position, need_weights=True)
        return {"roi": torch.stack(maps)}


PRESETS = {
    # CPU-seconds per step; n_rois / n_timepoints are meant to be overridden.
    "tiny": dict(n_rois=16, n_timepoints=40, layers=2, heads=4, mlp_dim=64, dropout=0.0,
                 readout_dim=8, projection_dim=32),
    # The public configuration: Schaefer-100, 16 layers, 10 heads, MLP 2048, projection 1024.
    "paper": dict(n_rois=100, n_timepoints=200, layers=16, heads=10, mlp_dim=2048,
                  dropout=0.1, readout_dim=8, projection_dim=1024),
}

SPEC = ModelSpec(
    name="brainmass",
    factory=BrainMass,
    presets=PRESETS,
    description="BrainMass (Yang et al. 2024): transformer over FC rows, masked-ROI modelling "
                "+ BYOL alignment of pseudo-FC views (self-supervised)",
)

__all__ = ["PRESETS", "SPEC", "VIEWS", "BrainMass", "pearson"]
