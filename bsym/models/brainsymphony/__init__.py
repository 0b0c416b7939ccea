"""BrainSymphony: fMRI streams distilled by a Perceiver, a signed graph transformer for SC,
and an adaptive fusion gate (Khajehnejad, Habibollahi, Stoliker & Razi, 2025).

Registered as ``"brainsymphony"``; build with
``bsym.models.build("brainsymphony", preset="tiny" | "paper", **overrides)``.
"""

from bsym.models.brainsymphony.model import BRANCHES, STAGES, BrainSymphony
from bsym.models.registry import ModelSpec

PRESETS = {
    # CPU-seconds per step: tests, laptops. n_rois / n_timepoints are meant to be overridden.
    "tiny": dict(n_rois=16, n_timepoints=32, dim=32, layers=2, heads=2, mlp_dim=64,
                 dropout=0.0, context_channels=16, perceiver_heads=2, perceiver_layers=1,
                 perceiver_mlp=64, sc_layers=2, sc_heads=2, sc_mlp=64, edge_hidden=64),
    # The paper: 450 ROIs (Schaefer-400 + Tian-S3), 200 time points, width 128, 6 layers,
    # 4 heads, MLP 512; Perceiver with 2 heads and 2 latent layers (public code).
    "paper": dict(n_rois=450, n_timepoints=200, dim=128, layers=6, heads=4, mlp_dim=512,
                  dropout=0.1, context_channels=64, perceiver_heads=2, perceiver_layers=2,
                  perceiver_mlp=512, sc_layers=8, sc_heads=4, sc_mlp=512, edge_hidden=512),
}

SPEC = ModelSpec(
    name="brainsymphony",
    factory=BrainSymphony,
    presets=PRESETS,
    description="BrainSymphony: fMRI spatial/temporal streams + Perceiver, signed graph "
                "transformer on SC, adaptive fusion gate (self-supervised)",
)

__all__ = ["BRANCHES", "PRESETS", "SPEC", "STAGES", "BrainSymphony"]
