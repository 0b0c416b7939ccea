"""A tiny registered test model, ``"toy-mae"``, for the training-engine tests.

It stays out of the package so that ``bsym models list`` never shows it; importing this
module registers it. Importable by name (tests/ is on sys.path under pytest), so spawned
DDP workers and subprocesses can use it too. Synthetic stores: :mod:`bsym.testing`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bsym.models import BrainModel, Embeddings, ModelSpec, register


class ToyMAE(BrainModel):
    """Masked-ROI reconstruction: ``mask_rois`` ROIs per sample are zeroed and rebuilt.

    Each sample masks the same number of ROIs, so the batch-mean loss is the mean of
    equal-sized micro-batch means (gradient accumulation is exact). ``staged=True``
    gives two stages: ``encoder`` (encoder + ROI mixer) then ``decoder``.
    """

    def __init__(self, n_rois=8, n_timepoints=20, width=16, mask_rois=2, staged=False,
                 n_classes=1):
        super().__init__()
        self.n_rois, self.n_timepoints, self.mask_rois = n_rois, n_timepoints, mask_rois
        self.staged = staged
        self.encoder = nn.Linear(n_timepoints, width)
        self.mixer = nn.Linear(n_rois, n_rois)
        self.decoder = nn.Linear(width, n_timepoints)
        self.head = nn.Linear(width, n_classes)

    def _encode(self, bold):
        h = F.gelu(self.encoder(bold))                             # B, R, W
        return h + self.mixer(h.transpose(1, 2)).transpose(1, 2)   # mix across ROIs

    def pretrain_loss(self, batch, *, generator=None, stage=None):
        x = batch["bold"]
        b, r, _ = x.shape
        scores = torch.rand(b, r, generator=generator, device=x.device)
        masked = torch.zeros(b, r, dtype=torch.bool, device=x.device)
        masked.scatter_(1, scores.argsort(dim=1)[:, :self.mask_rois], True)
        rec = self.decoder(self._encode(x.masked_fill(masked[..., None], 0.0)))
        return ((rec - x) ** 2)[masked].mean()

    def supervised_loss(self, batch, y):
        out = self.head(self._encode(batch["bold"]).mean(dim=1))
        if y.is_floating_point():
            return F.mse_loss(out.squeeze(-1), y)
        return F.cross_entropy(out, y)

    def embed(self, batch):
        roi = self._encode(batch["bold"])
        return Embeddings(subject=roi.mean(dim=1), roi=roi)

    def stages(self):
        return ("encoder", "decoder") if self.staged else ("all",)

    def stage_parameters(self, stage):
        if stage == "encoder":
            return [*self.encoder.parameters(), *self.mixer.parameters()]
        if stage == "decoder":
            return list(self.decoder.parameters())
        return super().stage_parameters(stage)


SPEC = register(ModelSpec(
    name="toy-mae", factory=ToyMAE, description="test model: masked ROI reconstruction",
    presets={"tiny": {"n_rois": 8, "n_timepoints": 20, "width": 16},
             "staged": {"n_rois": 8, "n_timepoints": 20, "width": 16, "staged": True}}))


def make_model(preset="tiny", seed=0, **overrides):
    """A seeded toy model built through the registry."""
    from bsym.models import build

    torch.manual_seed(seed)
    return build("toy-mae", preset=preset, **overrides)


def pretrain_toy(cohort, window, run_dir):
    """A toy model pretrained for 4 steps on ``cohort`` (scaler kept): its ``final.pt``."""
    from bsym.data.dataset import WindowDataset
    from bsym.data.preprocess import RobustScaler
    from bsym.train.engine import TrainConfig, train

    dataset = WindowDataset(cohort, window)
    scaler = dataset.fit_scaler(RobustScaler())
    result = train(make_model(), dataset,
                   TrainConfig(steps=4, batch_size=8, warmup_steps=0, progress=False,
                               device="cpu"),
                   run_dir, extra={"scaler": scaler.state_dict()})
    return result.final_path
