"""Brain-JEPA: joint-embedding prediction over ROI x time patches.

Dong, Li, Wu, Nguyen, Chong, Ji, Tong, Chen & Zhou (2024). *Brain-JEPA: Brain
dynamics foundation model with gradient positioning and spatiotemporal
masking.* NeurIPS 2024.

The window (R ROIs x T points; 450 x 160 in the paper, Schaefer-400 + Tian-III at
TR ~2 s) is cut into ROI x 16-point patches, each embedded linearly. Positions
are ``[sin-cos(time patch) | Linear(G_roi)]`` with ``G`` the first 30 connectivity
gradients of the group FC (the "brain gradient positioning"; the projected half
is min-max scaled to [-1, 1] as in the public code). A context encoder (ViT)
sees an observation block; a narrower predictor, given the context tokens and
mask tokens at the target positions, predicts what an EMA target encoder makes
of the target tokens (its output layer-normalised without affine parameters).

Spatiotemporal masking (one observation block, three target regions):

* observation: ``obs_scale`` of the ROIs over a contiguous ``obs_scale`` of the
  time patches;
* alpha (cross-ROI): ``alpha_roi_scale`` of all ROIs over a sub-span of the
  observation's time; those ROIs leave the observation (overlapped sampling);
* beta (cross-time) and gamma (double-cross), on each side: up to
  ``side_time_scale`` of the time patches drawn among the ``side_patches``
  outermost ones (3 of 10 in the paper), which leave the observation; beta takes
  ``side_roi_scale`` of the observed ROIs there, gamma the same fraction of the
  unobserved ROIs.

Registered as ``"brainjepa"``; presets ``tiny``, ``vits``, ``vitb`` (and ``paper``,
the same as ``vitb``, the paper's main model). Encoder
parameters at 450 ROIs x 160 points (10 patches per ROI): ``vits`` 21.3M (ViT-S,
published 22M), ``vitb`` 85.1M (ViT-B, published 86M); the predictors (6 layers,
192 / 384 wide) and the EMA target copy come on top (``param_counts``).

Facts from the paper and its public code (``Eric-LRL/Brain-JEPA``, config
``ukb_vitb_ep300.yaml``): patch 16, 30 gradients, predictor depth 6 and width
384 for ViT-B with the encoder's number of heads, EMA momentum rising linearly
from 0.996 to 1.0 over training, smooth-L1 loss in the code (the paper writes
L2: ``loss="mse"``), mask scales observation (0.84, 1), alpha ROIs (0.45, 0.6) x
time (0.2, 0.6), beta/gamma ROIs (0.15, 0.3) x time (0, 0.4).

Deviations
----------
* Beta draws its ROIs among the observed ROIs and gamma among the others, as the
  paper defines the regions; the public collator's index bookkeeping does not
  follow that definition exactly.
* Samples of a batch keep equal token counts by a random subset down to the
  batch minimum (the public collator keeps the first indices).
* ``position="learnable"`` (a learned ROI table in place of ``Linear(G)``) is
  offered for cohorts without a group FC; the ``tiny`` preset uses it so that it
  runs without :meth:`BrainJEPA.set_gradients`.
* No stochastic depth; weight-decay schedule and LR schedule belong to the
  engine.
* The ``tiny`` preset (32 wide, 4 time patches, a few hundred CPU steps) departs
  from the published initialisation and shape, which are made for ViT widths and
  ~10^5 steps; the published presets keep them:

  - ``patch_embed_std=0.25`` (``1 / sqrt(16)``) in place of 0.02. At 0.02 a
    16-point patch enters its token at ~0.05 of the input scale against ~0.5 for
    the position (a 16 x 16 x 3 image patch enters I-JEPA's at ~0.55): the
    layer-normalised tokens of the random target encoder were 98% shared constant
    and time code and 2% data, so its embeddings carried nothing.
  - ``roi_position_std=0.5`` for the encoder's learnable ROI table in place of 0.02:
    the table stands in for the gradient half, which is min-max scaled to
    [-1, 1]; at 0.02 the tokens carried no ROI identity. The predictor's table
    stays at 0.02.
  - ``predictor_dim=32`` (the encoder's width) in place of half of it: a 16-wide
    predictor (two 8-wide heads) did not learn to use the context within the
    budget, and the context encoder collapsed to one constant token within ~100
    steps (its EMA target followed within a few hundred).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from bsym.models.base import BrainModel, Embeddings
from bsym.models.brainlm import bold_input, check_heads, gather_tokens
from bsym.models.ema import ema_momentum, ema_update_
from bsym.models.layers import (
    TransformerEncoder,
    check_choice,
    check_float,
    check_int,
    sinusoidal_positions,
)
from bsym.models.registry import ModelSpec

POSITIONS = ("gradient", "learnable")
LOSSES = ("smooth_l1", "mse")
EMBED_ENCODERS = ("target", "context")


def init_vit_(module, layers):
    """Normal (std 0.02) linear weights, zero biases, residual outputs / sqrt(2 l).

    The public code truncates at +-2 in absolute units, 100 std away: a plain normal.
    """
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    for i, block in enumerate(layers.blocks):
        scale = math.sqrt(2.0 * (i + 1))
        block.attn.out.weight.data.div_(scale)
        block.mlp[-1].weight.data.div_(scale)


# -- model parts -------------------------------------------------------------------------
class GradientTimePosition(nn.Module):
    """Positions (R*P, dim): ``[sin-cos of the time patch | ROI coordinate]`` (ROI-major).

    The ROI half is ``Linear(G)`` of the connectivity gradients, min-max scaled to
    [-1, 1] (``position="gradient"``), or a learned table (``"learnable"``) drawn
    from a normal of standard deviation ``table_std``.
    """

    def __init__(self, n_rois, n_patches, dim, position, n_gradients, table_std=0.02):
        super().__init__()
        self.n_rois, self.n_patches, self.kind = n_rois, n_patches, position
        half = dim // 2
        self.register_buffer("time", sinusoidal_positions(n_patches, dim - half),
                             persistent=False)
        if position == "gradient":
            self.proj = nn.Linear(n_gradients, half)
        else:
            self.table = nn.Parameter(torch.randn(n_rois, half) * table_std)

    def forward(self, gradients=None):
        if self.kind == "gradient":
            g = self.proj(gradients)
            g = 2.0 * (g - g.min()) / (g.max() - g.min()).clamp_min(1e-6) - 1.0
        else:
            g = self.table
        r, p = self.n_rois, self.n_patches
        out = torch.cat([self.time[None].expand(r, p, -1), g[:, None].expand(r, p, -1)], dim=-1)
        return out.reshape(r * p, -1)


class JEPAEncoder(nn.Module):
    """ViT over ROI x time patches: ``Linear(patch) + position``, pre-LN blocks, final LN.

    ``patch_embed_std`` is the standard deviation of the patch-embedding weights (the
    other linear layers: 0.02, :func:`init_vit_`); ``roi_position_std`` that of a
    learnable ROI table.
    """

    def __init__(self, n_rois, n_patches, patch_size, dim, layers, heads, mlp_dim, position,
                 n_gradients, patch_embed_std=0.02, roi_position_std=0.02):
        super().__init__()
        self.patch_embed = nn.Linear(patch_size, dim)
        self.position = GradientTimePosition(n_rois, n_patches, dim, position, n_gradients,
                                             roi_position_std)
        self.transformer = TransformerEncoder(dim, layers, heads, mlp_dim)
        init_vit_(self, self.transformer)
        self.patch_embed.weight.data.mul_(patch_embed_std / 0.02)  # no extra random draw

    def embed_tokens(self, patches, gradients, keep=None):
        x = self.patch_embed(patches) + self.position(gradients)
        return x if keep is None else gather_tokens(x, keep)

    def forward(self, patches, gradients, keep=None):
        """Encoded tokens (B, n, dim) of ``patches`` (B, R*P, patch); ``keep`` selects (B, n)."""
        return self.transformer(self.embed_tokens(patches, gradients, keep))[0]


class JEPAPredictor(nn.Module):
    """Narrow ViT: context tokens + mask tokens at the targets -> target representations."""

    def __init__(self, n_rois, n_patches, dim, pred_dim, layers, heads, position, n_gradients):
        super().__init__()
        self.embed = nn.Linear(dim, pred_dim)
        self.mask_token = nn.Parameter(torch.zeros(pred_dim))
        self.position = GradientTimePosition(n_rois, n_patches, pred_dim, position, n_gradients)
        self.transformer = TransformerEncoder(pred_dim, layers, heads, 4 * pred_dim)
        self.proj = nn.Linear(pred_dim, dim)
        init_vit_(self, self.transformer)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, context, context_index, target_index, gradients):
        position = self.position(gradients)
        x = self.embed(context) + position[context_index]
        t = self.mask_token.to(x.dtype) + position[target_index]
        h, _ = self.transformer(torch.cat([x, t], dim=1))
        return self.proj(h[:, context_index.shape[1]:])


# -- masking -----------------------------------------------------------------------------
def _draw(shape, generator):
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(shape, generator=generator, device=device).cpu()


def _lerp(scale, u):
    return scale[0] + float(u) * (scale[1] - scale[0])


def spatiotemporal_masks(batch_size, n_rois, n_patches, generator=None, device=None, *,
                         obs_scale=(0.84, 1.0), alpha_roi_scale=(0.45, 0.6),
                         alpha_time_scale=(0.2, 0.6), side_roi_scale=(0.15, 0.3),
                         side_time_scale=(0.0, 0.4), side_patches=None):
    """Brain-JEPA's observation block and cross-ROI / cross-time / double-cross targets.

    Every draw comes from ``generator`` (one call per kind of draw), so a seed
    fixes the masks. Fractions are of all ROIs / time patches unless stated.

    Returns
    -------
    dict
        ``observation``, ``alpha``, ``beta``, ``gamma`` (B, R, P) boolean grids
        (before subsampling); ``context`` (B, n_ctx) and ``target`` (B, n_tgt)
        ROI-major token indices (``r * P + p``), subsampled at random to the
        smallest count in the batch and sorted.
    """
    r, p, b = n_rois, n_patches, batch_size
    if r < 2 or p < 3:
        raise ValueError(f"spatiotemporal masking needs at least 2 ROIs and 3 time patches, "
                         f"got {r} x {p}")
    edge = side_patches if side_patches is not None else max(1, min(round(0.3 * p),
                                                                     (p - 1) // 2))
    scalars = _draw((b, 10), generator)
    roi_orders = _draw((b, 6, r), generator).argsort(dim=-1)
    side_orders = _draw((b, 2, edge), generator).argsort(dim=-1)
    subsample = _draw((b, 2, r * p), generator)
    grids = {k: torch.zeros(b, r, p, dtype=torch.bool)
             for k in ("observation", "alpha", "beta", "gamma")}
    for i in range(b):
        u = scalars[i]
        h_obs = min(max(int(r * _lerp(obs_scale, u[0])), 1), r)
        w_obs = min(max(int(p * _lerp(obs_scale, u[1])), 1), p - 1)
        t0 = min(int(u[2] * (p - w_obs + 1)), p - w_obs)
        observed = torch.zeros(r, dtype=torch.bool)
        observed[roi_orders[i, 0, :h_obs]] = True
        h_alpha = min(max(int(r * _lerp(alpha_roi_scale, u[3])), 1), r - 1)
        w_alpha = min(max(int(p * _lerp(alpha_time_scale, u[4])), 1), w_obs)
        ta = t0 + min(int(u[5] * (w_obs - w_alpha + 1)), w_obs - w_alpha)
        alpha_rois = roi_orders[i, 1, :h_alpha]
        grids["alpha"][i, alpha_rois, ta:ta + w_alpha] = True
        observed[alpha_rois] = False
        times = torch.zeros(p, dtype=torch.bool)
        times[t0:t0 + w_obs] = True
        for side in (0, 1):
            w_side = min(max(int(p * _lerp(side_time_scale, u[6 + side])), 0), edge)
            if w_side == 0:
                continue
            columns = torch.arange(edge) if side == 0 else torch.arange(p - edge, p)
            columns = columns[side_orders[i, side, :w_side]]
            frac = _lerp(side_roi_scale, u[8 + side])
            for region, pool, order in (("beta", observed, roi_orders[i, 2 + 2 * side]),
                                        ("gamma", ~observed, roi_orders[i, 3 + 2 * side])):
                rois = order[pool[order]][:int(int(pool.sum()) * frac)]
                grids[region][i, rois[:, None], columns[None, :]] = True
            times[columns] = False
        grids["observation"][i] = observed[:, None] & times[None, :]
        if not grids["observation"][i].any():
            raise ValueError("the mask scales left an empty observation block; widen "
                             "obs_scale or narrow alpha_roi_scale / side_time_scale")
    target = grids["alpha"] | grids["beta"] | grids["gamma"]
    out = {k: v.to(device) if device is not None else v for k, v in grids.items()}
    for name, grid, column in (("context", grids["observation"], 0), ("target", target, 1)):
        flat = grid.reshape(b, r * p)
        n = int(flat.sum(1).min())
        score = torch.where(flat, subsample[:, column], torch.full_like(subsample[:, column], 2.0))
        index = score.argsort(dim=1)[:, :n].sort(dim=1).values
        out[name] = index.to(device) if device is not None else index
    return out


# -- the model ---------------------------------------------------------------------------
class BrainJEPA(BrainModel):
    """Brain-JEPA (Dong et al., NeurIPS 2024): context encoder, predictor, EMA target encoder.

    Parameters
    ----------
    n_rois, n_timepoints : int
        Input size R x T (``n_timepoints`` a multiple of ``patch_size``, at least
        3 patches).
    patch_size : int
        Time points per patch (16).
    dim, layers, heads, mlp_dim : int
        Encoder (ViT-S: 384, 12, 6, 1536; ViT-B: 768, 12, 12, 3072).
    predictor_dim, predictor_layers : int
        Predictor width and depth (it uses ``predictor_heads``, default ``heads``).
    predictor_heads : int, optional
    position : {"gradient", "learnable"}
        ROI half of the positions: ``Linear`` of connectivity gradients (set with
        :meth:`set_gradients`) or a learned table.
    n_gradients : int
        Gradients used (30).
    loss : {"smooth_l1", "mse"}
        Smooth L1 as the public code, or the paper's L2.
    ema_start, ema_end : float
        Target momentum, linear from start to end over training
        (:meth:`after_optimizer_step`).
    obs_scale, alpha_roi_scale, alpha_time_scale, side_roi_scale, side_time_scale : list
        ``[low, high]`` fractions of the masking (see :func:`spatiotemporal_masks`).
    side_patches : int, optional
        Outermost time patches on each side from which beta / gamma take their
        time (default ``round(0.3 * P)`` within ``[1, (P - 1) // 2]``: 3 of 10).
    embed_encoder : {"target", "context"}
        Encoder behind :meth:`embed` and :meth:`attention`: the EMA target (the
        paper's downstream choice) or the trained context encoder (use it to
        fine-tune through ``embed``; the target has no gradient).
    patch_embed_std : float
        Standard deviation of the patch-embedding weights at initialisation: 0.02 as
        every linear layer of the public code, or about ``1 / sqrt(patch_size)`` so that
        a patch's content enters the tokens at the scale of its position (the ``tiny``
        preset; see the module's deviations).
    roi_position_std : float
        Standard deviation of the encoder's learnable ROI table (``position="learnable"``)
        at initialisation; the predictor's table starts at 0.02.
    """

    objective = "self_supervised"

    def __init__(self, n_rois=16, n_timepoints=64, patch_size=16, dim=32, layers=2, heads=2,
                 mlp_dim=128, predictor_dim=16, predictor_layers=1, predictor_heads=None,
                 position="gradient", n_gradients=30, loss="smooth_l1", ema_start=0.996,
                 ema_end=1.0, obs_scale=(0.84, 1.0), alpha_roi_scale=(0.45, 0.6),
                 alpha_time_scale=(0.2, 0.6), side_roi_scale=(0.15, 0.3),
                 side_time_scale=(0.0, 0.4), side_patches=None, embed_encoder="target",
                 patch_embed_std=0.02, roi_position_std=0.02):
        super().__init__()
        self.n_rois = check_int("n_rois", n_rois, 2)
        self.n_timepoints = check_int("n_timepoints", n_timepoints)
        self.patch_size = check_int("patch_size", patch_size)
        for name, value in (("dim", dim), ("layers", layers), ("heads", heads),
                            ("mlp_dim", mlp_dim), ("predictor_dim", predictor_dim),
                            ("predictor_layers", predictor_layers)):
            check_int(name, value)
        predictor_heads = heads if predictor_heads is None else check_int("predictor_heads",
                                                                          predictor_heads)
        if n_timepoints % patch_size or n_timepoints // patch_size < 3:
            raise ValueError(
                f"n_timepoints ({n_timepoints}) must be a multiple of patch_size ({patch_size}) "
                f"with at least 3 patches: Brain-JEPA cuts each ROI's series into "
                f"{patch_size}-point patches and masks across time; use a window of "
                f"{max(3, n_timepoints // patch_size) * patch_size}")
        check_heads("encoder", dim, heads)
        check_heads("predictor", predictor_dim, predictor_heads)
        for name, value in (("dim", dim), ("predictor_dim", predictor_dim)):
            if value < 2:
                raise ValueError(f"{name} must be >= 2 (half time, half ROI position), got "
                                 f"{value}")
        self.position = check_choice("position", position, POSITIONS)
        self.n_gradients = check_int("n_gradients", n_gradients)
        self.loss = check_choice("loss", loss, LOSSES)
        self.embed_encoder = check_choice("embed_encoder", embed_encoder, EMBED_ENCODERS)
        self.ema_start = check_float("ema_start", ema_start, 0.0, 1.0)
        self.ema_end = check_float("ema_end", ema_end, 0.0, 1.0)
        for name, value in (("patch_embed_std", patch_embed_std),
                            ("roi_position_std", roi_position_std)):
            check_float(name, value, 0.0, math.inf, low_open=True)
        self.mask_scales = {}
        for name, value in (("obs_scale", obs_scale), ("alpha_roi_scale", alpha_roi_scale),
                            ("alpha_time_scale", alpha_time_scale),
                            ("side_roi_scale", side_roi_scale),
                            ("side_time_scale", side_time_scale)):
            pair = tuple(value) if isinstance(value, (list, tuple)) else (value,)
            if len(pair) != 2:
                raise ValueError(f"{name} must be [low, high], got {value!r}")
            low, high = (check_float(name, v) for v in pair)
            if low > high:
                raise ValueError(f"{name} must be [low, high] with low <= high, got {value!r}")
            self.mask_scales[name] = (low, high)
        self.n_patches = n_timepoints // patch_size
        if side_patches is not None:
            check_int("side_patches", side_patches)
            if 2 * side_patches >= self.n_patches:
                raise ValueError(f"side_patches ({side_patches}) must leave time patches "
                                 f"between the two sides ({self.n_patches} in all)")
        self.side_patches = side_patches
        self.n_tokens = n_rois * self.n_patches

        args = (n_rois, self.n_patches)
        self.context_encoder = JEPAEncoder(*args, patch_size, dim, layers, heads, mlp_dim,
                                           position, n_gradients, float(patch_embed_std),
                                           float(roi_position_std))
        self.predictor = JEPAPredictor(*args, dim, predictor_dim, predictor_layers,
                                       predictor_heads, position, n_gradients)
        self.target_encoder = copy.deepcopy(self.context_encoder).requires_grad_(False)
        if position == "gradient":
            self.register_buffer("gradients", torch.zeros(n_rois, n_gradients))
            self.register_buffer("gradients_set", torch.tensor(False))

    # -- structure ----------------------------------------------------------------------
    def stage_parameters(self, stage):
        """The context encoder and the predictor (the EMA target is never trained)."""
        modules = (self.context_encoder, self.predictor)
        return [p for m in modules for p in m.parameters() if p.requires_grad]

    def param_counts(self):
        """``encoder`` (the published ViT size), ``predictor``, ``target_encoder``, ``total``."""
        counts = {name: sum(p.numel() for p in getattr(self, attr).parameters())
                  for name, attr in (("encoder", "context_encoder"), ("predictor", "predictor"),
                                     ("target_encoder", "target_encoder"))}
        counts["total"] = sum(p.numel() for p in self.parameters())
        return counts

    @property
    def needs_gradients(self):
        """True while ``position="gradient"`` waits for :meth:`set_gradients`."""
        return self.position == "gradient" and not bool(self.gradients_set)

    def set_gradients(self, gradients):
        """Connectivity gradients (R, n_gradients) of the training cohort's group FC.

        E.g. ``fc_gradients(group_fc(train.iter_series()), model.n_gradients)``
        (:mod:`bsym.models.gradients`); saved in the state dict.
        """
        if self.position != "gradient":
            raise ValueError("this model uses learnable ROI positions; build it with "
                             "position='gradient' to use connectivity gradients")
        g = torch.as_tensor(gradients, dtype=self.gradients.dtype)
        if tuple(g.shape) != tuple(self.gradients.shape):
            raise ValueError(f"gradients must have shape {tuple(self.gradients.shape)} (ROIs x "
                             f"gradients), got {tuple(g.shape)}")
        if not torch.isfinite(g).all():
            raise ValueError("gradients contain NaN or Inf")
        self.gradients.copy_(g)
        self.gradients_set.fill_(True)

    def _gradients(self):
        if self.position != "gradient":
            return None
        if not bool(self.gradients_set):
            raise RuntimeError(
                "position='gradient' needs the group-FC connectivity gradients of the training "
                "cohort: model.set_gradients(fc_gradients(group_fc(train_series), "
                f"{self.n_gradients})) (bsym.models.gradients), or build the model with "
                "position='learnable'")
        return self.gradients

    def _patches(self, x):
        return x.reshape(x.shape[0], self.n_tokens, self.patch_size)

    # -- objective ----------------------------------------------------------------------
    def draw_masks(self, batch_size, generator=None, device=None):
        """Masks of one batch (:func:`spatiotemporal_masks` with this model's scales)."""
        return spatiotemporal_masks(batch_size, self.n_rois, self.n_patches, generator, device,
                                    side_patches=self.side_patches, **self.mask_scales)

    def pretrain_loss(self, batch, *, generator=None, stage=None):
        """Distance between predicted and target-encoder representations of the targets."""
        x = bold_input(self, batch)
        g = self._gradients()
        patches = self._patches(x)
        masks = self.draw_masks(x.shape[0], generator, x.device)
        with torch.no_grad():
            h = self.target_encoder(patches, g)
            h = gather_tokens(F.layer_norm(h, (h.shape[-1],)), masks["target"])
        z = self.context_encoder(patches, g, keep=masks["context"])
        z = self.predictor(z, masks["context"], masks["target"], g)
        if self.loss == "mse":
            return F.mse_loss(z, h)
        return F.smooth_l1_loss(z, h)

    @torch.no_grad()
    def after_optimizer_step(self, step, total_steps=None):
        """EMA update of the target encoder; call after every optimizer step.

        Parameters
        ----------
        step : int
            Optimizer steps completed so far in the run (1 after the first).
        total_steps : int, optional
            Optimizer steps of the whole run; without it the momentum stays at
            ``ema_start``.

        Returns
        -------
        float
            The momentum used.
        """
        m = ema_momentum(step, total_steps, self.ema_start, self.ema_end, "linear")
        ema_update_(self.target_encoder, self.context_encoder, m)
        return m

    @torch.no_grad()
    def pretext_predictions(self, batch, *, generator=None, stage=None):
        """Predicted target-encoder latents of the target patches beside trivial baselines.

        Draws the pretraining masks; the targets are the layer-normalised target-encoder
        latents of the target patches (as in :meth:`pretrain_loss`). The baselines read
        the target encoder's latents of the context patches encoded alone (so no hidden
        patch reaches them): ``context_mean``, their mean per sample, and ``roi_mean``,
        the mean over the context patches of the target's ROI (``context_mean`` where
        that ROI has none). A collapsed encoder makes this task trivially easy: read it
        with the embedding health. Returns ``{"default": (PretextPrediction,)}``.
        """
        from bsym.models.pretext import PretextPrediction, grouped_mean

        x = bold_input(self, batch)
        g = self._gradients()
        patches = self._patches(x)
        masks = self.draw_masks(x.shape[0], generator, x.device)
        context, target = masks["context"], masks["target"]
        h = self.target_encoder(patches, g)
        h = gather_tokens(F.layer_norm(h, (h.shape[-1],)), target)
        z = self.predictor(self.context_encoder(patches, g, keep=context), context, target, g)
        seen = self.target_encoder(patches, g, keep=context)
        seen = F.layer_norm(seen, (seen.shape[-1],))
        context_mean = seen.mean(dim=1, keepdim=True).expand_as(h)
        roi_mean = grouped_mean(seen, context // self.n_patches, self.n_rois,
                                target // self.n_patches, context_mean)
        baselines = {"context_mean": context_mean.flatten(), "roi_mean": roi_mean.flatten()}
        return {"default": (PretextPrediction("target_latents", h.flatten(), z.flatten(),
                                              baselines),)}

    # -- evaluation ---------------------------------------------------------------------
    def _encoder(self):
        return self.target_encoder if self.embed_encoder == "target" else self.context_encoder

    def embed(self, batch):
        """Average-pooled tokens of the target encoder (``embed_encoder``).

        ``Embeddings(subject=(B, dim) mean over all tokens, roi=(B, R, dim) mean
        over each ROI's time patches)``.
        """
        x = bold_input(self, batch)
        h = self._encoder()(self._patches(x), self._gradients())
        roi = h.reshape(x.shape[0], self.n_rois, self.n_patches, -1).mean(dim=2)
        return Embeddings(subject=h.mean(dim=1), roi=roi)

    @torch.no_grad()
    def attention(self, batch):
        """ROI-to-ROI attention of the embedding encoder, layer by layer.

        Returns
        -------
        dict of Tensor
            ``roi`` (layers, B, heads, R, R): for each ROI, the mean over its
            patches of the attention paid to another ROI's patches (summed); rows
            sum to 1.
        """
        x = bold_input(self, batch)
        encoder = self._encoder()
        b, r, p = x.shape[0], self.n_rois, self.n_patches
        h = encoder.embed_tokens(self._patches(x), self._gradients())
        maps = []
        for block in encoder.transformer.blocks:
            h, w = block(h, need_weights=True)
            maps.append(w.reshape(b, w.shape[1], r, p, r, p).sum(-1).mean(-2))
        return {"roi": torch.stack(maps)}


PRESETS = {
    # CPU-seconds per step; learnable ROI positions so it runs without group-FC gradients.
    # Scaled so that it is neither born collapsed nor collapses in a few hundred steps:
    # unit-gain patch embedding (1 / sqrt(16)), an ROI table of the gradient half's
    # magnitude, a predictor as wide as the encoder (module docstring, deviations).
    "tiny": dict(n_rois=16, n_timepoints=64, patch_size=16, dim=32, layers=2, heads=2,
                 mlp_dim=128, predictor_dim=32, predictor_layers=1, position="learnable",
                 n_gradients=4, patch_embed_std=0.25, roi_position_std=0.5),
    # The paper: 450 ROIs (Schaefer-400 + Tian-III) x 160 points at TR ~2 s, patch 16.
    "vits": dict(n_rois=450, n_timepoints=160, patch_size=16, dim=384, layers=12, heads=6,
                 mlp_dim=1536, predictor_dim=192, predictor_layers=6, position="gradient",
                 n_gradients=30),
    "vitb": dict(n_rois=450, n_timepoints=160, patch_size=16, dim=768, layers=12, heads=12,
                 mlp_dim=3072, predictor_dim=384, predictor_layers=6, position="gradient",
                 n_gradients=30),
}
# The paper's main model (configs/ukb_vitb_ep300.yaml), under the name every model shares.
PRESETS["paper"] = dict(PRESETS["vitb"])

SPEC = ModelSpec(
    name="brainjepa",
    factory=BrainJEPA,
    presets=PRESETS,
    description="Brain-JEPA (Dong et al. 2024): JEPA over ROI x 16-point patches, gradient "
                "positioning, spatiotemporal masking, EMA target (self-supervised)",
)

__all__ = ["LOSSES", "POSITIONS", "PRESETS", "SPEC", "BrainJEPA", "spatiotemporal_masks"]
