"""BrainLM: a masked autoencoder over ROI x time patches.

Ortega Caro, Fonseca, Rizvi, Rosati, Averill, Cross, Mittal, Zappala, Dhodapkar,
Abdallah & van Dijk (2024). *BrainLM: A foundation model for brain activity
recordings.* ICLR 2024.

Each ROI's series is cut into patches of ``patch_size`` time points (20 in the
paper: a 424-ROI x 200-point window gives 4,240 tokens); a patch is embedded by
one linear layer, and a spatial embedding of its ROI plus a sine/cosine
embedding of its patch index are added. A random ``mask_ratio`` of the tokens is
hidden; a CLS token and the visible tokens go through the encoder; a lighter
decoder receives the encoded tokens and a shared mask token at every hidden
position (with its own spatial and temporal embeddings) and a two-layer head
(LeakyReLU 0.1) reconstructs every patch. The loss is the MSE on the masked
patches only.

Registered as ``"brainlm"``; presets ``tiny``, ``legacy`` (~13M) and ``paper``
(~111M). Parameter counts (``bsym models params brainlm --preset P``), at the
paper's input of 424 ROIs (AAL-424) x 200 time points (the count barely depends
on it: only the two learnable ROI tables scale with the number of ROIs):

* ``legacy``: width 512, 4 encoder layers, 4 heads, MLP 1024; decoder 512 wide,
  2 layers, 4 heads, MLP 1024 (the released ``old_13M`` checkpoint's
  configuration, mask ratio 0.2): 13.5M against the published 13M. The
  ``2023-06-06`` configuration shipped in the public repository (width 256)
  would give only ~5M, so it is not the 13M model.
* ``paper``: a ViT-B encoder (768 wide, 12 layers, 12 heads, MLP 3072) and the
  standard MAE decoder (512 wide, 8 layers, 16 heads, MLP 2048), mask ratio
  0.75: 111.4M against the published 111M.

Deviations from the public code
-------------------------------
* Exact softmax attention in pre-LN blocks (:mod:`bsym.models.layers`); the 13M
  model used Nystromformer (post-LN, 64 landmarks) layers.
* The released 111M checkpoint treats the window as a padded 3-channel image cut
  into 16 x 16 pixel patches (HF ``ViTMAEForPreTraining``); the ``paper`` preset
  keeps the paper's ROI x 20-point tokens with that model's widths.
* The spatial embedding is a learnable table per ROI by default; the paper
  projects each ROI's MNI coordinates linearly, available with
  ``spatial_position="coordinates"`` and :meth:`BrainLM.set_coordinates`
  (standardised per axis).
* No dropout on the positional encodings; masks hide an exact
  ``round(mask_ratio * R * P)`` tokens per sample.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bsym.models import masking, pretext
from bsym.models.base import BrainModel, Embeddings
from bsym.models.layers import (
    TransformerEncoder,
    check_choice,
    check_float,
    check_int,
    sinusoidal_positions,
)
from bsym.models.registry import ModelSpec

SPATIAL_POSITIONS = ("learnable", "coordinates")


def bold_input(model, batch):
    """``batch["bold"]`` checked against ``model.n_rois`` / ``model.n_timepoints``.

    Returns the tensor on the model's device and dtype; raises a ValueError
    naming the expected and the received shape.
    """
    name = type(model).__name__
    expected = f"(batch, ROIs, time points) = (B, {model.n_rois}, {model.n_timepoints})"
    if "bold" not in batch:
        raise ValueError(f"{name} needs batch['bold'] of shape {expected}; the batch has "
                         f"{sorted(batch)}")
    x = torch.as_tensor(batch["bold"])
    if x.dim() != 3 or tuple(x.shape[1:]) != (model.n_rois, model.n_timepoints) \
            or x.shape[0] < 1:
        raise ValueError(f"{name} (n_rois={model.n_rois}, n_timepoints={model.n_timepoints}) "
                         f"expects batch['bold'] of shape {expected}; received shape "
                         f"{tuple(x.shape)}")
    ref = next(model.parameters())
    return x.to(device=ref.device, dtype=ref.dtype)


def check_heads(name, dim, heads):
    """ValueError unless ``heads`` divides the width ``dim``."""
    if dim % heads:
        raise ValueError(f"{name}: the width {dim} must be divisible by the number of heads "
                         f"{heads}")


def gather_tokens(x, index):
    """Rows ``index`` (B, n) of ``x`` (B, N, d): (B, n, d)."""
    return torch.gather(x, 1, index[..., None].expand(-1, -1, x.shape[-1]))


class SpatialEmbedding(nn.Module):
    """One vector per ROI: a learnable table, or a linear map of its coordinates."""

    def __init__(self, n_rois, dim, kind):
        super().__init__()
        self.kind = kind
        if kind == "learnable":
            self.table = nn.Parameter(torch.randn(n_rois, dim) * 0.02)
        else:
            self.proj = nn.Linear(3, dim)

    def forward(self, coordinates=None):
        return self.table if self.kind == "learnable" else self.proj(coordinates)


class BrainLM(BrainModel):
    """BrainLM (Ortega Caro et al., ICLR 2024): MAE over ROI x time patches.

    Parameters
    ----------
    n_rois, n_timepoints : int
        Input size R x T (``n_timepoints`` a multiple of ``patch_size``).
    patch_size : int
        Time points per token (20 in the paper).
    dim, layers, heads, mlp_dim : int
        Encoder width, depth, heads and MLP width.
    decoder_dim, decoder_layers, decoder_heads, decoder_mlp_dim : int
        The lighter decoder.
    mask_ratio : float in (0, 1)
        Fraction of tokens hidden per sample (the paper trains 0.2, 0.75, 0.9).
    dropout : float
        Residual dropout in both transformers.
    spatial_position : {"learnable", "coordinates"}
        ROI embedding: a learnable table, or ``Linear(xyz)`` of ROI coordinates
        given with :meth:`set_coordinates`.

    Notes
    -----
    :meth:`embed` runs the encoder on every token (no masking): the subject
    embedding is the CLS token (the paper's summary for clinical prediction),
    the ROI embedding the mean of each ROI's patch tokens.
    """

    objective = "self_supervised"

    def __init__(self, n_rois=16, n_timepoints=40, patch_size=20, dim=32, layers=2, heads=2,
                 mlp_dim=64, decoder_dim=32, decoder_layers=1, decoder_heads=2,
                 decoder_mlp_dim=64, mask_ratio=0.75, dropout=0.0,
                 spatial_position="learnable"):
        super().__init__()
        self.n_rois = check_int("n_rois", n_rois)
        self.n_timepoints = check_int("n_timepoints", n_timepoints)
        self.patch_size = check_int("patch_size", patch_size)
        for name, value in (("dim", dim), ("layers", layers), ("heads", heads),
                            ("mlp_dim", mlp_dim), ("decoder_dim", decoder_dim),
                            ("decoder_heads", decoder_heads),
                            ("decoder_mlp_dim", decoder_mlp_dim)):
            check_int(name, value)
        check_int("decoder_layers", decoder_layers, 0)
        if n_timepoints % patch_size:
            raise ValueError(
                f"n_timepoints ({n_timepoints}) must be a multiple of patch_size ({patch_size}): "
                f"BrainLM cuts each ROI's series into patches of {patch_size} time points; use "
                f"a window of {max(1, n_timepoints // patch_size) * patch_size} or "
                f"{(n_timepoints // patch_size + 1) * patch_size}")
        check_heads("encoder", dim, heads)
        check_heads("decoder", decoder_dim, decoder_heads)
        if decoder_dim < 2:
            raise ValueError(f"decoder_dim must be >= 2 (the head halves it), got {decoder_dim}")
        self.mask_ratio = check_float("mask_ratio", mask_ratio, 0.0, 1.0, low_open=True,
                                      high_open=True)
        check_float("dropout", dropout, 0.0, 1.0, high_open=True)
        self.spatial_position = check_choice("spatial_position", spatial_position,
                                             SPATIAL_POSITIONS)
        self.n_patches = n_timepoints // patch_size
        self.n_tokens = n_rois * self.n_patches
        if masking.n_masked(self.n_tokens, self.mask_ratio) >= self.n_tokens:
            raise ValueError(f"mask_ratio {mask_ratio} hides all {self.n_tokens} tokens; "
                             "lower it or use more ROIs / time points")

        self.patch_embed = nn.Linear(patch_size, dim)
        self.cls_token = nn.Parameter(torch.randn(dim) * 0.02)
        self.spatial = SpatialEmbedding(n_rois, dim, spatial_position)
        self.encoder = TransformerEncoder(dim, layers, heads, mlp_dim, dropout)
        self.decoder_embed = nn.Linear(dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.randn(decoder_dim) * 0.02)
        self.decoder_spatial = SpatialEmbedding(n_rois, decoder_dim, spatial_position)
        self.decoder = TransformerEncoder(decoder_dim, decoder_layers, decoder_heads,
                                          decoder_mlp_dim, dropout)
        self.head = nn.Sequential(nn.Linear(decoder_dim, decoder_dim // 2), nn.LeakyReLU(0.1),
                                  nn.Linear(decoder_dim // 2, patch_size))
        self.register_buffer("time_position", sinusoidal_positions(self.n_patches, dim),
                             persistent=False)
        self.register_buffer("decoder_time_position",
                             sinusoidal_positions(self.n_patches, decoder_dim), persistent=False)
        if spatial_position == "coordinates":
            self.register_buffer("coordinates", torch.zeros(n_rois, 3))
            self.register_buffer("coordinates_set", torch.tensor(False))
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    # -- structure ----------------------------------------------------------------------
    def param_counts(self):
        """Parameters of the encoder side, the decoder side and in total."""
        def count(*modules):
            return sum(p.numel() for m in modules for p in m.parameters())

        return {"encoder": count(self.patch_embed, self.spatial, self.encoder)
                + self.cls_token.numel(),
                "decoder": count(self.decoder_embed, self.decoder_spatial, self.decoder,
                                 self.head) + self.mask_token.numel(),
                "total": sum(p.numel() for p in self.parameters())}

    def set_coordinates(self, coordinates):
        """ROI coordinates (R, 3), e.g. MNI mm, for ``spatial_position="coordinates"``.

        They are standardised per axis before the linear map (and saved in the
        state dict).
        """
        if self.spatial_position != "coordinates":
            raise ValueError("this model uses a learnable spatial embedding; build it with "
                             "spatial_position='coordinates' to use ROI coordinates")
        xyz = torch.as_tensor(coordinates, dtype=self.coordinates.dtype)
        if tuple(xyz.shape) != (self.n_rois, 3):
            raise ValueError(f"coordinates must have shape ({self.n_rois}, 3) (ROIs x xyz), "
                             f"got {tuple(xyz.shape)}")
        if not torch.isfinite(xyz).all():
            raise ValueError("coordinates contain NaN or Inf")
        xyz = (xyz - xyz.mean(0)) / xyz.std(0).clamp_min(1e-6) if self.n_rois > 1 else xyz * 0
        self.coordinates.copy_(xyz)
        self.coordinates_set.fill_(True)

    def _coordinates(self):
        if self.spatial_position == "learnable":
            return None
        if not bool(self.coordinates_set):
            raise RuntimeError("spatial_position='coordinates' needs the ROI coordinates: "
                               "model.set_coordinates(xyz) with xyz of shape (n_rois, 3), "
                               "e.g. from the cohort's rois table")
        return self.coordinates

    # -- encoder / decoder --------------------------------------------------------------
    def tokens(self, x):
        """Embedded tokens (B, R*P, dim) with positions, and raw patches (B, R*P, patch).

        Tokens are ROI-major: token ``r * P + p`` is patch ``p`` of ROI ``r``.
        """
        b = x.shape[0]
        patches = x.reshape(b, self.n_rois, self.n_patches, self.patch_size)
        position = self.spatial(self._coordinates())[:, None, :] + self.time_position[None]
        tokens = self.patch_embed(patches) + position
        return tokens.reshape(b, self.n_tokens, -1), patches.reshape(b, self.n_tokens, -1)

    def _with_cls(self, tokens):
        cls = self.cls_token.to(tokens.dtype).expand(tokens.shape[0], 1, -1)
        return torch.cat([cls, tokens], dim=1)

    def encode(self, x, keep=None):
        """Encoder output (B, 1 + n, dim), CLS first; ``keep`` (B, n) selects visible tokens."""
        tokens, _ = self.tokens(x)
        return self._encode(tokens, keep)

    def _encode(self, tokens, keep=None):
        if keep is not None:
            tokens = gather_tokens(tokens, keep)
        return self.encoder(self._with_cls(tokens))[0]

    def decode(self, encoded, keep):
        """Reconstructed patches (B, R*P, patch) from the encoded visible tokens."""
        y = self.decoder_embed(encoded)
        cls, visible = y[:, :1], y[:, 1:]
        b, d = y.shape[0], y.shape[-1]
        full = self.mask_token.to(y.dtype).expand(b, self.n_tokens, d)
        full = full.scatter(1, keep[..., None].expand(-1, -1, d), visible)
        position = self.decoder_spatial(self._coordinates())[:, None, :] \
            + self.decoder_time_position[None]
        full = full + position.reshape(self.n_tokens, d)
        h, _ = self.decoder(torch.cat([cls, full], dim=1))
        return self.head(h[:, 1:])

    def draw_mask(self, batch_size, generator=None, device=None):
        """(B, R*P) boolean mask, True on hidden tokens (exactly ``round(ratio * R * P)``)."""
        return masking.random_subset(batch_size, self.n_tokens, self.mask_ratio, generator,
                                     device)

    # -- interface ----------------------------------------------------------------------
    def pretrain_loss(self, batch, *, generator=None, stage=None):
        """MSE between the reconstructed and the true masked patches (a scalar)."""
        x = bold_input(self, batch)
        tokens, patches = self.tokens(x)
        mask = self.draw_mask(x.shape[0], generator, x.device)
        n_keep = self.n_tokens - int(mask[0].sum())
        keep = torch.argsort(mask.to(torch.int8), dim=1, stable=True)[:, :n_keep]
        prediction = self.decode(self._encode(tokens, keep), keep)
        return F.mse_loss(prediction[mask], patches[mask])

    @torch.no_grad()
    def pretext_predictions(self, batch, *, generator=None, stage=None):
        """Masked patch reconstruction beside trivial baselines (view ``default``).

        Draws the pretraining token mask; the hidden cells are those of the masked
        patches, the baselines (``window_mean``, ``roi_mean``, ``interpolation``) read
        the visible patches only. Returns ``{"default": (PretextPrediction,)}``
        (:mod:`bsym.models.pretext`).
        """
        x = bold_input(self, batch)
        tokens, _ = self.tokens(x)
        mask = self.draw_mask(x.shape[0], generator, x.device)
        n_keep = self.n_tokens - int(mask[0].sum())
        keep = torch.argsort(mask.to(torch.int8), dim=1, stable=True)[:, :n_keep]
        reconstruction = self.decode(self._encode(tokens, keep), keep).reshape(x.shape)
        hidden = mask[..., None].expand(-1, -1, self.patch_size).reshape(x.shape)
        return {"default": (pretext.masked_series_prediction("masked_patches", x, hidden,
                                                             reconstruction),)}

    def embed(self, batch):
        """``Embeddings(subject=CLS (B, dim), roi=mean of each ROI's tokens (B, R, dim))``."""
        x = bold_input(self, batch)
        h = self.encode(x)
        roi = h[:, 1:].reshape(x.shape[0], self.n_rois, self.n_patches, -1).mean(dim=2)
        return Embeddings(subject=h[:, 0], roi=roi)

    @torch.no_grad()
    def attention(self, batch):
        """Encoder attention, aggregated to ROIs layer by layer (full token maps are large).

        Returns
        -------
        dict of Tensor
            ``cls_roi`` (layers, B, heads, R): attention of the CLS token to each
            ROI (summed over its patches); ``roi`` (layers, B, heads, R, R): each
            ROI's patches' mean attention to another ROI's patches (summed).
        """
        x = bold_input(self, batch)
        b, r, p = x.shape[0], self.n_rois, self.n_patches
        h = self._with_cls(self.tokens(x)[0])
        cls_maps, roi_maps = [], []
        for block in self.encoder.blocks:
            h, w = block(h, need_weights=True)
            heads = w.shape[1]
            cls_maps.append(w[:, :, 0, 1:].reshape(b, heads, r, p).sum(-1))
            tokens = w[:, :, 1:, 1:].reshape(b, heads, r, p, r, p)
            roi_maps.append(tokens.sum(-1).mean(-2))
        return {"cls_roi": torch.stack(cls_maps), "roi": torch.stack(roi_maps)}


PRESETS = {
    # CPU-seconds per step (tests, laptop); n_rois / n_timepoints are meant to be overridden.
    "tiny": dict(n_rois=16, n_timepoints=40, patch_size=20, dim=32, layers=2, heads=2,
                 mlp_dim=64, decoder_dim=32, decoder_layers=1, decoder_heads=2,
                 decoder_mlp_dim=64, mask_ratio=0.75),
    # The released 13M model (HF vandijklab/brainlm, old_13M): AAL-424 x 200, mask 0.2.
    "legacy": dict(n_rois=424, n_timepoints=200, patch_size=20, dim=512, layers=4, heads=4,
                   mlp_dim=1024, decoder_dim=512, decoder_layers=2, decoder_heads=4,
                   decoder_mlp_dim=1024, mask_ratio=0.2),
    # 111M: ViT-B encoder + MAE decoder at 424 x 200.
    "paper": dict(n_rois=424, n_timepoints=200, patch_size=20, dim=768, layers=12, heads=12,
                  mlp_dim=3072, decoder_dim=512, decoder_layers=8, decoder_heads=16,
                  decoder_mlp_dim=2048, mask_ratio=0.75),
}

SPEC = ModelSpec(
    name="brainlm",
    factory=BrainLM,
    presets=PRESETS,
    description="BrainLM (Ortega Caro et al. 2024): masked autoencoder over ROI x 20-point "
                "patches (self-supervised)",
)

__all__ = ["PRESETS", "SPATIAL_POSITIONS", "SPEC", "BrainLM", "bold_input"]
