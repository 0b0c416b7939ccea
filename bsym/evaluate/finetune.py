"""Fine-tuning: the pretrained encoder plus a linear head, trained on each outer train fold.

:class:`FineTuneModel` is a :class:`~bsym.models.base.BrainModel` that wraps the encoder's
``embed`` and adds a linear head (cross-entropy for classes, MSE on the z-scored target).
The fold loop, early stopping and scoring are :mod:`bsym.evaluate.foldtrain`'s, shared
with the supervised baselines.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from bsym.evaluate import EvaluationError
from bsym.evaluate.foldtrain import (
    BATCH_ONLY,
    EarlyStopping,
    LabelledCohort,
    TrainingConfig,
    WindowSource,
    class_index,
    train_test_folds,
)
from bsym.evaluate.results import config_hash, log_evaluation, provenance
from bsym.evaluate.splits import check_not_pretrained_on, infer_task
from bsym.io import file_sha256
from bsym.models.base import BrainModel, Embeddings

__all__ = ["EarlyStopping", "FineTuneConfig", "FineTuneModel", "fine_tune"]


@dataclass
class FineTuneConfig(TrainingConfig):
    """Settings of fine-tuning: :class:`~bsym.evaluate.foldtrain.TrainingConfig` plus

    Parameters
    ----------
    view : str, optional
        Embedding view of a multi-view encoder (default: ``fusion`` or the only one).
    freeze_encoder : bool
        Train the head only (a linear probe trained by gradient descent).
    max_windows : int, optional
        At most this many of the checkpoint's windows per scan (evenly spread) in training
        and validation (default all); the test always uses every window.
    """

    view: str | None = None
    freeze_encoder: bool = False
    max_windows: int | None = None


def subject_embedding(encoder, batch, view=None, *, with_name=False):
    """The encoder's subject embedding of a batch (of ``view`` for a multi-view encoder:
    default ``fusion`` or the only view); with ``with_name``, ``(view, tensor)``."""
    out = encoder.embed(batch)
    if isinstance(out, Embeddings):
        name, tensor = "default", out.subject
    elif isinstance(out, dict) and out:
        if view is None:
            view = "fusion" if "fusion" in out else next(iter(out)) if len(out) == 1 else None
        if view is None or view not in out:
            raise EvaluationError(f"the encoder gives views {sorted(out)}; choose one with "
                                  "view=")
        name, tensor = view, out[view].subject
    else:
        raise EvaluationError(f"encoder.embed returned {type(out).__name__}; expected "
                              "Embeddings or a dict of them")
    return (name, tensor) if with_name else tensor


class FineTuneModel(BrainModel):
    """A pretrained encoder with a linear head on its subject embedding.

    Parameters
    ----------
    encoder : BrainModel
    n_outputs : int
        Number of classes, or 1 for regression.
    width : int
        Size of the encoder's subject embedding (see :func:`embedding_width`).
    task : {"classification", "regression"}
    view : str, optional
        View of a multi-view encoder.
    class_values : sequence of float, optional
        Numeric class values, when the engine passes raw numeric labels (mapped to
        indices here); None when it passes indices (string classes).
    target_mean, target_sd : float
        Regression targets are z-scored with these.
    """

    objective = "supervised"

    def __init__(self, encoder, n_outputs, width, *, task="classification", view=None,
                 class_values=None, target_mean=0.0, target_sd=1.0):
        super().__init__()
        self.encoder = encoder
        self.task = task
        self.view = view
        self.head = nn.Linear(int(width), int(n_outputs))
        values = torch.as_tensor(class_values if class_values is not None else [],
                                 dtype=torch.float64)
        self.register_buffer("class_values", values, persistent=False)
        self.target_mean, self.target_sd = float(target_mean), float(target_sd)
        enc_config = dict(getattr(encoder, "config", None) or {})
        self.name = f"finetune-{getattr(encoder, 'name', None) or type(encoder).__name__}"
        self.preset = getattr(encoder, "preset", None)
        self.config = {"n_rois": enc_config.get("n_rois"),
                       "n_timepoints": enc_config.get("n_timepoints"),
                       "encoder": getattr(encoder, "name", None), "encoder_config": enc_config,
                       "n_outputs": int(n_outputs), "task": task, "view": view}

    def _subject(self, batch):
        return subject_embedding(self.encoder, batch, self.view)

    def forward(self, batch):
        return self.head(self._subject(batch))

    def _target(self, y):
        if self.task == "regression":
            return (y.double() - self.target_mean).float() / self.target_sd
        return class_index(y, self.class_values)

    def supervised_loss(self, batch, y):
        out = self(batch)
        target = self._target(y)
        if self.task == "regression":
            return F.mse_loss(out.squeeze(-1), target)
        return F.cross_entropy(out, target)

    def embed(self, batch):
        return self.encoder.embed(batch)

    def attention(self, batch):
        return self.encoder.attention(batch)


@torch.no_grad()
def embedding_width(encoder, dataset, view=None):
    """``(view, width)``: the view used and the size of the encoder's subject embedding,
    from one sample of ``dataset``."""
    from torch.utils.data import DataLoader

    batch = next(iter(DataLoader(dataset, batch_size=1)))
    batch = {k: v for k, v in batch.items() if k not in BATCH_ONLY}
    was_training = encoder.training
    encoder.eval()
    try:
        name, tensor = subject_embedding(encoder, batch, view, with_name=True)
        return name, int(tensor.shape[-1])
    finally:
        encoder.train(was_training)


def fine_tune(checkpoint, cohort, splits, label, *, config=None, folds=None, task=None,
              model=None, dataset=None, results=None, tracker=None, force=False,
              allow_pretrained_subjects=False, progress=True) -> pd.DataFrame:
    """Fine-tune a pretrained checkpoint on every (chosen) fold of a split file.

    Parameters
    ----------
    checkpoint : str or Path
        Pretrained weights (``final.pt``); a fresh copy is loaded for every fold.
    cohort : Cohort
    splits : Splits
    label : str
    config : FineTuneConfig, optional
    folds : sequence of int, optional
    task : {"classification", "regression"}, optional
    model, dataset : str, optional
        Names in the result rows.
    results : ResultTable, optional
        Per-fold rows (protocol ``finetune``); current rows are not recomputed unless
        ``force``.
    tracker : Tracker, optional
    force, progress : bool
    allow_pretrained_subjects : bool
        Fine-tune and test on subjects the encoder was pretrained on (refused by default).

    Returns
    -------
    DataFrame
        One row per fold, with ``best_step`` and ``stopped_early``.
    """
    from bsym.data.preprocess import RobustScaler
    from bsym.evaluate.embeddings import _checkpoint_settings
    from bsym.train.checkpoint import load_checkpoint, load_trained

    config = config or FineTuneConfig()
    splits.check_cohort(cohort)
    ckpt = load_checkpoint(checkpoint)
    if not allow_pretrained_subjects:
        check_not_pretrained_on((ckpt.get("extra") or {}).get("train_subjects"),
                                (ckpt.get("data") or {}).get("manifest_hash"), cohort,
                                splits.subjects, f"fine-tuning of {checkpoint}")
    settings = {**_checkpoint_settings(ckpt), "max_windows": config.max_windows}
    state = (ckpt.get("extra") or {}).get("scaler")
    source = WindowSource(cohort, settings,
                          RobustScaler.from_state_dict(state) if state else None)
    sha = file_sha256(checkpoint)
    task = task or infer_task(cohort.subjects[label])
    labelled = LabelledCohort(cohort, label, task)
    model_name = model or ckpt["model"]["name"]
    dataset = dataset or cohort.path.name
    chash = config_hash({"finetune": config.to_dict(), "checkpoint_sha256": sha, "task": task})
    probe_encoder, _ = load_trained(checkpoint)  # which view, how wide
    first = cohort.subjects["subject"].iloc[:1].tolist()
    view, width = embedding_width(probe_encoder, source.windows(first, scaler=source.scaler),
                                  config.view)
    del probe_encoder

    def make_model(target, fold_index):
        encoder, _ = load_trained(checkpoint)
        if config.freeze_encoder:
            for p in encoder.parameters():
                p.requires_grad_(False)
        return FineTuneModel(encoder, target.n_outputs, width, task=target.task,
                             view=None if view == "default" else view,
                             class_values=target.class_values, target_mean=target.mean,
                             target_sd=target.sd)

    base = {"model": model_name, "view": view, "dataset": dataset,
            "task": label, "protocol": "finetune", "seed": splits.seed}
    rows, computed = train_test_folds(make_model, source, labelled, splits, config=config,
                                      base=base, chash=chash, folds=folds, results=results,
                                      force=force, progress=progress, desc=f"finetune {label}",
                                      row_extra={"checkpoint_sha256": sha})
    log_evaluation(tracker, computed, run_name=f"finetune-{model_name}-{label}",
                   tags={**base, "bsym.version": provenance()["bsym_version"]},
                   params={"finetune": config.to_dict(), "split_hash": splits.sha256,
                           "checkpoint_sha256": sha},
                   metrics=labelled.metrics)
    return pd.DataFrame(rows)
