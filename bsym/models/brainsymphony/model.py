"""BrainSymphony behind the bsym model interface."""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F

from bsym.models import masking, pretext
from bsym.models.base import BrainModel, Embeddings
from bsym.models.brainsymphony.context import ContextConv
from bsym.models.brainsymphony.fusion import FusionGate
from bsym.models.brainsymphony.perceiver import ATTENTION_IMPLS, Perceiver
from bsym.models.brainsymphony.signed_graph import (
    SC_POSITIONS,
    STRUCTURES,
    EdgeHead,
    SignedGraphTransformer,
)
from bsym.models.brainsymphony.spatial import SPATIAL_POSITIONS, SpatialStream
from bsym.models.brainsymphony.temporal import TemporalStream
from bsym.models.layers import check_choice, check_float, check_int

BRANCHES = ("both", "fmri", "sc")
STAGES = ("encoders", "perceiver", "joint")
_SAME_SIZE_INT = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _sc_runs(adjacency):
    """Runs of bitwise-identical consecutive matrices in ``adjacency`` (B, R, R).

    Returns
    -------
    first : LongTensor (n_runs,)
        The sample that starts each run.
    run : LongTensor (B,)
        Each sample's run.
    """
    bits = adjacency.view(_SAME_SIZE_INT[adjacency.element_size()]).flatten(1)
    starts = torch.ones(len(bits), dtype=torch.bool, device=bits.device)
    starts[1:] = (bits[1:] != bits[:-1]).any(dim=1)
    return starts.nonzero().squeeze(1), starts.cumsum(0) - 1


class BrainSymphony(BrainModel):
    """BrainSymphony (Khajehnejad et al. 2025): fMRI streams + Perceiver, signed graph SC, gate.

    fMRI branch: a spatial stream (ROI tokens), a temporal stream (time tokens) and
    a per-ROI convolution, distilled by a Perceiver whose R latents are the fMRI
    ROI embeddings. SC branch: a signed graph transformer on the rows of the SC
    matrix, pretrained by masked-edge regression with the masked edges removed
    from its input. Fusion: a per-ROI, per-channel sigmoid gate.

    Parameters
    ----------
    n_rois, n_timepoints : int
        ROIs R and window length T the model is built for (inputs must match).
    dim, layers, heads, mlp_dim : int
        Width, depth, heads and MLP width of the spatial and temporal streams.
    dropout : float
        Residual dropout (there is no attention-weight dropout).
    branches : {"both", "fmri", "sc"}
        Which branches to build: the fusion model, or one modality.
    spatial_position : {"learnable", "gradient"}
        Spatial positional encoding; "gradient" needs :meth:`set_gradients`.
    n_gradients : int
        Connectivity gradients used by the "gradient" encoding.
    context_channels, context_kernel : int
        The per-ROI convolution (odd kernel).
    perceiver_heads, perceiver_layers : int
        Cross-attention heads and latent transformer depth.
    perceiver_mlp : int, optional
        Latent transformer MLP width (default ``4 * dim``).
    sc_layers, sc_heads, sc_mlp : int, optional
        Signed graph transformer depth, heads, MLP width (default: the stream values).
    sc_position : {"learnable", "laplacian"}
    sc_position_dim : int
        Laplacian eigenvectors used by the "laplacian" encoding.
    sc_structure : {"first_hop", "multi_hop", "diffusion"}
        Structure matrix W of the signed attention.
    sc_hops : int
    sc_theta : float
        Diffusion decay.
    edge_hidden : int
        Hidden width of the masked-edge MLP (then ``edge_hidden // 4``, then 1).
    mask_ratio : float
        Fraction of ROIs, of time points and of cells masked for fMRI pretraining.
    edge_mask_ratio : float
        Fraction of ROI pairs masked for SC pretraining.
    attention : {"auto", "factorised", "fused", "sdpa", "naive"}
        Perceiver cross-attention implementation (all exact; see
        :mod:`~bsym.models.brainsymphony.perceiver`). "fused" (opt-in) uses C++
        CPU kernels compiled on first use for the Perceiver and for the SC
        branch's signed attention (:mod:`~bsym.models.brainsymphony.fused`); on
        other devices, or where they cannot be built (with a warning), the model
        runs the default kernels.
    chunk_elements : int
        Logits held at once by the factorised cross-attention.

    Notes
    -----
    Parameter counts at the ``paper`` preset (R = 450, T = 200) against the paper's
    3.6M (fMRI), 2M (SC) and 5.6M (fusion): 3.25M, 1.90M and 5.19M (`bsym models
    params brainsymphony --preset paper`). The fMRI branch follows the public code
    (which itself counts 3.2M) plus the two masked-token heads of the encoder
    stage; the cell-token projection is the single ``Linear([e | tau | c])`` of the
    paper instead of the public code's three projections followed by a fourth.
    For SC the public configuration (6 layers) gives 1.50M, 25% short of the
    stated 2M, and the paper does not give the depth that produced 2M: the
    ``paper`` preset uses 8 signed layers (``sc_layers=6`` reproduces the public
    code). Design choices where the paper is silent: pre-LN layers with a final
    LayerNorm everywhere (the public SC layers are post-LN); a residual around the
    Perceiver cross-attention; masked cells read as 0 (the robust-scaled median)
    instead of a learned scalar, so that the convolution stays linear in the data;
    no LayerNorm on the cell tokens (it would prevent the factorisation).
    """

    objective = "self_supervised"

    def __init__(self, n_rois=16, n_timepoints=32, dim=32, layers=2, heads=2, mlp_dim=64,
                 dropout=0.0, branches="both", spatial_position="learnable", n_gradients=10,
                 context_channels=64, context_kernel=5, perceiver_heads=2, perceiver_layers=2,
                 perceiver_mlp=None, sc_layers=None, sc_heads=None, sc_mlp=None,
                 sc_position="learnable", sc_position_dim=16, sc_structure="first_hop",
                 sc_hops=2, sc_theta=0.1, edge_hidden=512, mask_ratio=0.15,
                 edge_mask_ratio=0.2, attention="auto", chunk_elements=1 << 21):
        super().__init__()
        self.n_rois = check_int("n_rois", n_rois, 2)
        self.n_timepoints = check_int("n_timepoints", n_timepoints, 2)
        self.dim = check_int("dim", dim)
        for name, value in (("layers", layers), ("heads", heads), ("mlp_dim", mlp_dim),
                            ("n_gradients", n_gradients), ("context_channels", context_channels),
                            ("perceiver_heads", perceiver_heads),
                            ("perceiver_layers", perceiver_layers), ("sc_hops", sc_hops),
                            ("sc_position_dim", sc_position_dim), ("edge_hidden", edge_hidden),
                            ("chunk_elements", chunk_elements)):
            check_int(name, value)
        check_int("perceiver_layers", perceiver_layers, 0)
        if check_int("context_kernel", context_kernel) % 2 == 0:
            raise ValueError(f"context_kernel must be odd (time length is kept), got "
                             f"{context_kernel}")
        check_float("dropout", dropout, 0.0, 1.0, high_open=True)
        check_float("mask_ratio", mask_ratio, 0.0, 1.0, low_open=True, high_open=True)
        check_float("edge_mask_ratio", edge_mask_ratio, 0.0, 1.0, low_open=True, high_open=True)
        check_float("sc_theta", sc_theta, 0.0, 1.0, low_open=True, high_open=True)
        self.branches = check_choice("branches", branches, BRANCHES)
        check_choice("spatial_position", spatial_position, SPATIAL_POSITIONS)
        check_choice("sc_position", sc_position, SC_POSITIONS)
        check_choice("sc_structure", sc_structure, STRUCTURES)
        check_choice("attention", attention, ATTENTION_IMPLS)
        sc_layers = layers if sc_layers is None else check_int("sc_layers", sc_layers)
        sc_heads = heads if sc_heads is None else check_int("sc_heads", sc_heads)
        sc_mlp = mlp_dim if sc_mlp is None else check_int("sc_mlp", sc_mlp)
        perceiver_mlp = 4 * dim if perceiver_mlp is None else check_int("perceiver_mlp",
                                                                          perceiver_mlp)
        for name, h in (("heads", heads), ("perceiver_heads", perceiver_heads),
                        ("sc_heads", sc_heads)):
            if dim % h:
                raise ValueError(f"dim ({dim}) must be divisible by {name} ({h})")
        self.mask_ratio, self.edge_mask_ratio = float(mask_ratio), float(edge_mask_ratio)

        if self.has_fmri:
            self.spatial = SpatialStream(n_rois, n_timepoints, dim, layers, heads, mlp_dim,
                                         dropout, spatial_position, n_gradients)
            self.temporal = TemporalStream(n_rois, n_timepoints, dim, layers, heads, mlp_dim,
                                           dropout)
            self.context = ContextConv(context_channels, context_kernel)
            self.perceiver = Perceiver(n_rois, n_timepoints, dim, context_channels,
                                       perceiver_heads, perceiver_layers, perceiver_mlp,
                                       dropout, attention, chunk_elements)
        if self.has_sc:
            self.sc = SignedGraphTransformer(n_rois, dim, sc_layers, sc_heads, sc_mlp, dropout,
                                             sc_position, sc_position_dim, sc_structure,
                                             sc_hops, sc_theta, fused=attention == "fused")
            self.edge_head = EdgeHead(dim, edge_hidden)
        if self.branches == "both":
            self.gate = FusionGate(dim)

    # -- structure ----------------------------------------------------------------------
    @property
    def has_fmri(self):
        return self.branches in ("both", "fmri")

    @property
    def has_sc(self):
        return self.branches in ("both", "sc")

    def stages(self):
        """("encoders", "perceiver", "joint"), or ("encoders",) for the SC branch alone.

        encoders: each stream by its own masked reconstruction and the SC encoder
        by masked-edge regression; perceiver: the Perceiver reconstructs masked
        cells from frozen encoders; joint: everything, the gate included, with
        both objectives computed from the fused embeddings.
        """
        return ("encoders",) if self.branches == "sc" else STAGES

    def _stage(self, stage):
        if stage is None:
            return self.stages()[-1]
        if stage not in self.stages():
            raise ValueError(f"unknown stage {stage!r} for branches={self.branches!r}; "
                             f"stages: {', '.join(self.stages())}")
        return stage

    def stage_parameters(self, stage):
        """Parameters trained in ``stage`` (see :meth:`stages`).

        The joint stage trains everything except the heads only the encoder stage
        uses (masked-ROI, masked-time and masked-cell decoders), so every
        parameter it lists receives a gradient.
        """
        stage = self._stage(stage)
        if stage == "joint":
            unused = set()
            if self.has_fmri:
                for head in (self.spatial.head, self.temporal.head, self.context.decoder):
                    unused.update(id(p) for p in head.parameters())
            return [p for p in self.parameters() if p.requires_grad and id(p) not in unused]
        if stage == "perceiver":
            return [p for p in self.perceiver.parameters() if p.requires_grad]
        names = ("spatial", "temporal", "context", "sc", "edge_head")
        return [p for n in names if hasattr(self, n) for p in getattr(self, n).parameters()
                if p.requires_grad]

    def param_counts(self):
        """Parameters per component ("branch.part") and in total."""
        parts = {"fmri.spatial": "spatial", "fmri.temporal": "temporal",
                 "fmri.context": "context", "fmri.perceiver": "perceiver",
                 "sc.encoder": "sc", "sc.edge_head": "edge_head", "fusion.gate": "gate"}
        counts = {key: sum(p.numel() for p in getattr(self, attr).parameters())
                  for key, attr in parts.items() if hasattr(self, attr)}
        counts["total"] = sum(p.numel() for p in self.parameters())
        return counts

    def set_gradients(self, gradients):
        """Connectivity gradients (R, n_gradients) for ``spatial_position='gradient'``.

        Compute them on the training cohort only, e.g.
        ``fc_gradients(group_fc(train.iter_series()), n_gradients)``.
        """
        if not self.has_fmri:
            raise ValueError("the SC branch alone has no spatial positional encoding")
        self.spatial.set_gradients(gradients)

    # -- inputs -------------------------------------------------------------------------
    def _like(self, tensor):
        ref = next(self.parameters())
        return tensor.to(device=ref.device, dtype=ref.dtype)

    def _bold(self, batch):
        if "bold" not in batch:
            raise ValueError(f"the fMRI branch needs batch['bold'] (B, {self.n_rois}, "
                             f"{self.n_timepoints}); the batch has {sorted(batch)}")
        x = torch.as_tensor(batch["bold"])
        if x.dim() != 3 or tuple(x.shape[1:]) != (self.n_rois, self.n_timepoints):
            raise ValueError(
                f"batch['bold'] must be (batch, ROIs, time points) = (B, {self.n_rois}, "
                f"{self.n_timepoints}) for this model (n_rois={self.n_rois}, n_timepoints="
                f"{self.n_timepoints}); received shape {tuple(x.shape)}")
        return self._like(x)

    def _sc_input(self, batch, required):
        if "sc" not in batch or batch["sc"] is None:
            if required:
                raise ValueError(f"{required}, but the batch has no 'sc' matrix (load it with "
                                 "WindowDataset(..., with_sc=True) from a store with SC)")
            return None
        a = torch.as_tensor(batch["sc"])
        if a.dim() != 3 or tuple(a.shape[1:]) != (self.n_rois, self.n_rois):
            raise ValueError(f"batch['sc'] must be (batch, ROIs, ROIs) = (B, {self.n_rois}, "
                             f"{self.n_rois}) for this model (n_rois={self.n_rois}); received "
                             f"shape {tuple(a.shape)}")
        return self._like(a)

    def _inputs(self, batch, need_sc=None):
        x = self._bold(batch) if self.has_fmri else None
        required = need_sc or ("the SC branch (branches='sc') needs SC"
                               if self.branches == "sc" else None)
        a = self._sc_input(batch, required) if self.has_sc else None
        if x is not None and a is not None and a.shape[0] != x.shape[0]:
            raise ValueError(f"batch['bold'] has {x.shape[0]} samples but batch['sc'] has "
                             f"{a.shape[0]}")
        return x, a

    # -- encoders -----------------------------------------------------------------------
    def _fmri_latents(self, x, masks=None, frozen=False, need_weights=False):
        """Perceiver latents (B, R, d), with encoders under no_grad when ``frozen``."""
        roi = time = None
        if masks is not None:
            x = masking.apply_mask(x, masks["union"])
            roi, time = masks["roi"], masks["time"]
        with torch.no_grad() if frozen else nullcontext():
            roi_emb, spatial_maps = self.spatial(x, roi, need_weights=need_weights)
            time_emb, _ = self.temporal(x, time)
            position = self.spatial.encoding()
        conv_w, conv_b = self.context.weight, self.context.conv.bias
        if frozen:  # parameters used as tensors are not covered by no_grad
            conv_w, conv_b, position = conv_w.detach(), conv_b.detach(), position.detach()
        latents, weights, latent_maps = self.perceiver(roi_emb, time_emb, x, conv_w, conv_b,
                                                       position, need_weights=need_weights)
        return latents, (spatial_maps, weights, latent_maps)

    def encode_fmri(self, x):
        """fMRI ROI embeddings (B, R, d) of ``x`` (B, R, T): the Perceiver latents."""
        return self._fmri_latents(x)[0]

    def reconstruct_fmri(self, batch, masks):
        """Reconstruction (B, R, T) of ``batch["bold"]`` with ``masks`` hidden.

        ``masks`` is a :func:`bsym.models.masking.fmri_masks` dict; the Perceiver
        path of the perceiver/joint stages, fused with SC when the model and the
        batch have it.
        """
        x, a = self._inputs(batch)
        if x is None:
            raise ValueError("reconstruct_fmri needs the fMRI branch (branches='fmri' or 'both')")
        latents, _ = self._fmri_latents(x, masks)
        if a is not None and self.branches == "both":
            latents, _ = self.gate(latents, self.encode_sc(a))
        return self.perceiver.reconstruct(latents)

    def encode_sc(self, adjacency):
        """SC ROI embeddings (B, R, d) of ``adjacency`` (B, R, R)."""
        return self.sc(adjacency)[0]

    def _encode_sc_shared(self, adjacency, need_weights=False):
        """``self.sc(adjacency, need_weights)``; on CPU, in eval mode without gradients, each
        run of identical consecutive matrices (a scan's windows share their subject's SC) is
        encoded once: there the encoder's output for a sample does not depend on the rest of
        the batch, bit for bit (on CUDA the kernels may change with the batch size).
        """
        if (self.training or torch.is_grad_enabled() or adjacency.device.type != "cpu"
                or torch.compiler.is_compiling()):
            return self.sc(adjacency, need_weights)
        first, run = _sc_runs(adjacency)
        if len(first) == len(adjacency):
            return self.sc(adjacency, need_weights)
        h, maps = self.sc(adjacency[first], need_weights)
        return h[run], None if maps is None else [m[run] for m in maps]

    def embed(self, batch):
        """Views ``fmri``, ``sc`` and ``fusion`` (those the model and batch allow).

        A fusion model given a batch without SC returns the ``fmri`` view only.
        Each view is ``Embeddings(subject=(B, d) mean over ROIs, roi=(B, R, d))``.
        """
        x, a = self._inputs(batch)
        views = {}
        if x is not None:
            views["fmri"] = self.encode_fmri(x)
        if a is not None:
            views["sc"] = self._encode_sc_shared(a)[0]
        if "fmri" in views and "sc" in views:
            views["fusion"] = self.gate(views["fmri"], views["sc"])[0]
        return {name: Embeddings(subject=e.mean(dim=1), roi=e) for name, e in views.items()}

    @torch.no_grad()
    def attention(self, batch):
        """Attention maps (weights computed explicitly; for evaluation).

        Returns
        -------
        dict of Tensor
            ``spatial`` (layers, B, heads, R, R): ROI-to-ROI attention of the
            spatial stream; ``perceiver_roi`` (B, heads, R, R): each latent's
            cross-attention summed over time (rows sum to 1); ``perceiver_time``
            (B, heads, R, T): summed over ROIs; ``latent`` (layers, B, heads, R, R);
            with SC, ``sc`` (layers, B, heads, R, R) signed weights; with both,
            ``gate`` (B, R, d).
        """
        x, a = self._inputs(batch)
        maps = {}
        if x is not None:
            latents, (spatial, cross, latent) = self._fmri_latents(x, need_weights=True)
            maps["spatial"] = torch.stack(spatial)
            maps["perceiver_roi"], maps["perceiver_time"] = cross
            if latent:
                maps["latent"] = torch.stack(latent)
        if a is not None:
            h, sc_maps = self._encode_sc_shared(a, need_weights=True)
            maps["sc"] = torch.stack(sc_maps)
            if x is not None:
                maps["gate"] = self.gate(latents, h)[1]
        return maps

    # -- objectives ---------------------------------------------------------------------
    def predict_masked_edges(self, adjacency, mask, embeddings=None):
        """Masked-edge regression: predictions and targets on the masked pairs.

        The masked edges are removed from the input (zeroed in the node features,
        in W and in any Laplacian encoding) so the targets never reach the encoder.

        Parameters
        ----------
        adjacency : Tensor (B, R, R)
        mask : bool Tensor (B, R, R)
            True on hidden edges (see :func:`bsym.models.masking.edge_mask`).
        embeddings : Tensor (B, R, d), optional
            Node embeddings to decode (e.g. fused ones); by default the SC
            encoder's embeddings of the masked input.

        Returns
        -------
        pred, target : Tensor (n_pairs,)
            For a symmetric matrix each unordered pair appears once (i < j).
        """
        if embeddings is None:
            embeddings = self.encode_sc(masking.remove_edges(adjacency, mask))
        b, i, j = self._edge_pairs(adjacency, mask)
        return self.edge_head(embeddings, b, i, j), adjacency[b, i, j]

    @staticmethod
    def _edge_pairs(adjacency, mask):
        """(b, i, j) of the hidden pairs: i < j only when matrix and mask are symmetric."""
        pairs = mask
        if torch.equal(mask, mask.transpose(1, 2)) and torch.equal(adjacency,
                                                                   adjacency.transpose(1, 2)):
            pairs = mask & torch.ones_like(mask[0]).triu(1)
        return pairs.nonzero(as_tuple=True)

    def _edge_mask(self, a, generator):
        symmetric = torch.equal(a, a.transpose(1, 2))
        return masking.edge_mask(a.shape[0], self.n_rois, self.edge_mask_ratio, generator,
                                 a.device, symmetric=symmetric)

    def pretrain_losses(self, batch, *, generator=None, stage=None):
        """Every loss term of one batch (dict of scalars, ``loss`` their sum).

        See :meth:`pretrain_loss`.
        """
        stage = self._stage(stage)
        fusing = self.branches == "both"
        need_sc = (f"pretraining the fusion model (stage {stage!r}) needs SC; for fMRI "
                   "only, build it with branches='fmri'") if fusing and stage != "perceiver" \
            else None
        x, a = self._inputs(batch, need_sc=need_sc)
        terms = {}
        if x is not None:
            masks = masking.fmri_masks(x.shape[0], self.n_rois, self.n_timepoints,
                                       self.mask_ratio, generator, x.device)
        if a is not None and stage != "perceiver":
            hidden = self._edge_mask(a, generator)
            a_in = masking.remove_edges(a, hidden)
        if stage == "encoders":
            if x is not None:
                terms.update(self._encoder_terms(x, masks))
            if a is not None:
                pred, target = self.predict_masked_edges(a, hidden)
                terms["sc_edges"] = F.mse_loss(pred, target)
        else:
            latents, _ = self._fmri_latents(x, masks, frozen=stage == "perceiver")
            if stage == "joint" and a is not None:
                latents, _ = self.gate(latents, self.encode_sc(a_in))
                pred, target = self.predict_masked_edges(a, hidden, embeddings=latents)
                terms["sc_edges"] = F.mse_loss(pred, target)
            recon = self.perceiver.reconstruct(latents)
            union = masks["union"]
            terms["fmri_cells"] = F.mse_loss(recon[union], x[union])
        terms["loss"] = sum(terms.values())
        return terms

    def pretrain_loss(self, batch, *, generator=None, stage=None):
        """Self-supervised loss of one batch (a scalar).

        Parameters
        ----------
        batch : dict
            ``bold`` (B, R, T) and, for the SC branch, ``sc`` (B, R, R).
        generator : torch.Generator, optional
            Draws the masks (``mask_ratio`` of ROIs, of time points and of cells;
            ``edge_mask_ratio`` of ROI pairs).
        stage : {"encoders", "perceiver", "joint"}, optional
            Default: the last stage of :meth:`stages`.

            * encoders: masked-ROI reconstruction by the spatial stream,
              masked-time reconstruction by the temporal stream, masked-cell
              reconstruction by the context decoder (each on its masked entries
              only) and masked-edge regression of SC;
            * perceiver: all three masks at once, the Perceiver reconstructs the
              masked cells from frozen encoders;
            * joint: as perceiver with every part trained and, in the fusion
              model, both objectives decoded from the fused embeddings.
        """
        return self.pretrain_losses(batch, generator=generator, stage=stage)["loss"]

    @torch.no_grad()
    def pretext_predictions(self, batch, *, generator=None, stage=None):
        """Held-out pretext predictions beside trivial baselines, per view.

        Draws the pretraining masks (fMRI masks first, then the edge mask) and decodes
        each objective as ``stage`` last trained it. ``joint``: in the fusion model both
        objectives are decoded from the fused embeddings; earlier stages: the Perceiver
        reconstructs from the fMRI latents and the edge head reads the SC encoder.

        Returns
        -------
        dict
            ``fmri``: masked cells (baselines ``window_mean``, ``roi_mean``,
            ``interpolation``); ``sc``: masked edges (baselines ``mean_edge``,
            ``node_mean``); ``fusion``: both. Each a tuple of
            :class:`~bsym.models.pretext.PretextPrediction`.
        """
        stage = self._stage(stage)
        fused = self.branches == "both" and stage == "joint"
        need_sc = "the fusion model's pretext task needs SC" if self.branches == "both" else None
        x, a = self._inputs(batch, need_sc=need_sc)
        masks = masking.fmri_masks(x.shape[0], self.n_rois, self.n_timepoints, self.mask_ratio,
                                   generator, x.device) if x is not None else None
        hidden = self._edge_mask(a, generator) if a is not None else None
        sc_emb = self.encode_sc(masking.remove_edges(a, hidden)) if a is not None else None
        views = {}
        if x is not None:
            latents, _ = self._fmri_latents(x, masks)
            if fused:
                latents, _ = self.gate(latents, sc_emb)
            views["fmri"] = (pretext.masked_series_prediction(
                "fmri_masked_cells", x, masks["union"], self.perceiver.reconstruct(latents)),)
        if a is not None:
            views["sc"] = (self._edge_pretext(a, hidden, latents if fused else sc_emb),)
        if len(views) == 2:
            views["fusion"] = views["fmri"] + views["sc"]
        return views

    def _edge_pretext(self, adjacency, hidden, embeddings):
        b, i, j = self._edge_pairs(adjacency, hidden)
        baselines = pretext.edge_baselines(adjacency, hidden)
        return pretext.PretextPrediction(
            "sc_masked_edges", adjacency[b, i, j], self.edge_head(embeddings, b, i, j),
            {name: value[b, i, j] for name, value in baselines.items()})

    def _encoder_terms(self, x, masks):
        roi, time, cell = masks["roi"], masks["time"], masks["cell"]
        roi_emb, _ = self.spatial(x, roi)
        time_emb, _ = self.temporal(x, time)
        spatial = self.spatial.head(roi_emb)                             # (B, R, T)
        temporal = self.temporal.head(time_emb)                          # (B, T, R)
        context = self.context.reconstruct(masking.apply_mask(x, cell), cell)
        return {"fmri_rois": F.mse_loss(spatial[roi], x[roi]),
                "fmri_times": F.mse_loss(temporal[time], x.transpose(1, 2)[time]),
                "fmri_context": F.mse_loss(context, x[cell])}
