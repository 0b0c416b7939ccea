"""Fine-tuning: the pretrained encoder plus a linear head, trained on each outer train fold.

:class:`FineTuneModel` is a :class:`~bsym.models.base.BrainModel` that wraps the encoder's
``embed`` and adds a linear head (class-weighted cross-entropy for classes, MSE on the
z-scored target). The fold loop, early stopping and scoring are
:mod:`bsym.evaluate.foldtrain`'s, shared with the supervised baselines.

LP-FT (Kumar et al. 2022, "Fine-Tuning can Distort Pretrained Features"), the default:
on each fold the head is first fitted as a linear probe on the frozen encoder's window
embeddings of the fit subjects (:func:`linear_probe_head`: standardisation plus a
class-balanced logistic regression, or ridge on the z-scored target, its penalty chosen
by the validation subjects' loss), the standardisation folded into the head's weight and
bias. Encoder and head are then trained together, the encoder at ``encoder_lr_scale`` times
the head's learning rate. The probe-initialised model is the first early-stopping
candidate, so fine-tuning replaces it only where it lowers the validation loss.

Why: a pretrained subject embedding is mostly a vector shared by every subject (on the
default simulated cohort each dimension's mean is ~6x its SD across subjects). A freshly
initialised head (weights ~1/sqrt(width)) turns that shared part into a logit offset
(0.3-0.7 between two classes) far larger than the spread across subjects (0.02-0.04),
so every subject gets the same class, or the same value. 60 AdamW steps at 3e-4 move a
weight or bias by < 0.01: too little to undo the offset or to reach the weights of
order 1/SD that read the differences, and early stopping may even keep step 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from bsym.evaluate import EvaluationError
from bsym.evaluate.foldtrain import (
    BATCH_ONLY,
    EarlyStopping,
    FoldTraining,
    LabelledCohort,
    WindowSource,
    class_index,
    train_test_folds,
)
from bsym.evaluate.probe import default_alphas, default_cs
from bsym.evaluate.results import config_hash, log_computed
from bsym.evaluate.splits import check_not_pretrained_on, infer_task
from bsym.io import file_sha256
from bsym.models.base import BrainModel, Embeddings

__all__ = ["EarlyStopping", "FineTuneConfig", "FineTuneModel", "fine_tune",
           "linear_probe_head"]


@dataclass
class FineTuneConfig(FoldTraining):
    """Settings of fine-tuning: :class:`~bsym.evaluate.foldtrain.FoldTraining` plus

    Parameters
    ----------
    view : str, optional
        Embedding view of a multi-view encoder (default: ``fusion`` or the only one).
    freeze_encoder : bool
        Train the head only (a linear probe trained by gradient descent).
    max_windows : int, optional
        At most this many of the checkpoint's windows per scan (evenly spread) in training,
        validation and the probe initialisation (default all); the test always uses every
        window.
    lp_init : bool
        Initialise the head with a linear probe of the frozen encoder (LP-FT).
    encoder_lr_scale : float
        The encoder's learning rate as a fraction of ``lr`` (the head's), default 0.1.
    class_balanced : bool
        Weight classes inverse to the fit subjects' class frequencies (the loss and the
        probe initialisation).
    lp_cs, lp_alphas : tuple of float
        Inverse penalties (logistic regression) and ridge penalties the probe
        initialisation tries; the one of lowest validation loss (per subject, of its mean
        output) is kept.
    """

    view: str | None = None
    freeze_encoder: bool = False
    max_windows: int | None = None
    lp_init: bool = True
    encoder_lr_scale: float = 0.1
    class_balanced: bool = True
    lp_cs: tuple = field(default_factory=default_cs)
    lp_alphas: tuple = field(default_factory=default_alphas)

    def __post_init__(self):
        self.lp_cs = tuple(float(c) for c in self.lp_cs)
        self.lp_alphas = tuple(float(a) for a in self.lp_alphas)
        if not self.lp_cs or not self.lp_alphas or min(self.lp_cs + self.lp_alphas) <= 0:
            raise EvaluationError(f"lp_cs and lp_alphas must be non-empty and positive; "
                                  f"received {self.lp_cs} and {self.lp_alphas}")
        if not self.encoder_lr_scale > 0:
            raise EvaluationError(f"encoder_lr_scale must be > 0 (use freeze_encoder to keep "
                                  f"the encoder fixed); received {self.encoder_lr_scale}")


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
    class_weights : sequence of float, optional
        Cross-entropy weight of each class (index order): the loss is the mean of
        ``class_weights[y] * cross_entropy``. None weighs classes equally.
    encoder_lr_scale : float
        The encoder's update of each optimizer step is scaled by this (with AdamW the same
        as a learning rate of ``encoder_lr_scale * lr`` for the encoder).
    """

    objective = "supervised"

    def __init__(self, encoder, n_outputs, width, *, task="classification", view=None,
                 class_values=None, target_mean=0.0, target_sd=1.0, class_weights=None,
                 encoder_lr_scale=1.0):
        super().__init__()
        self.encoder = encoder
        self.task = task
        self.view = view
        self.head = nn.Linear(int(width), int(n_outputs))
        values = torch.as_tensor(class_values if class_values is not None else [],
                                 dtype=torch.float64)
        self.register_buffer("class_values", values, persistent=False)
        if class_weights is not None and len(class_weights) != int(n_outputs):
            raise EvaluationError(f"class_weights gives {len(class_weights)} weights; expected "
                                  f"one per class ({int(n_outputs)})")
        weights = torch.as_tensor(class_weights if class_weights is not None else [],
                                  dtype=torch.float32)
        self.register_buffer("class_weights", weights, persistent=False)
        self.target_mean, self.target_sd = float(target_mean), float(target_sd)
        self.encoder_lr_scale = float(encoder_lr_scale)
        self._anchor = None  # the encoder's weights before the latest optimizer step
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
        if self.training and self.encoder_lr_scale != 1.0 and self._anchor is None:
            # the first training step: remember the weights its update starts from
            self._anchor = [(p, p.detach().clone()) for p in self.encoder.parameters()
                            if p.requires_grad]
        out = self(batch)
        target = self._target(y)
        if self.task == "regression":
            return F.mse_loss(out.squeeze(-1), target)
        if not len(self.class_weights):
            return F.cross_entropy(out, target)
        # the mean of weighted terms (not normalised by the batch's weights), so that a
        # sample-weighted mean over batches is the mean over all samples
        losses = F.cross_entropy(out, target, reduction="none")
        return (self.class_weights.to(losses.dtype)[target] * losses).mean()

    def train(self, mode=True):
        self._anchor = None  # taken again at the next training step
        return super().train(mode)

    @torch.no_grad()
    def after_optimizer_step(self, step, total_steps):
        """Scale the encoder's update of this step by ``encoder_lr_scale`` (the engine calls
        this after each optimizer step)."""
        for param, before in self._anchor or ():
            param.sub_(before).mul_(self.encoder_lr_scale).add_(before)
            before.copy_(param)

    @torch.no_grad()
    def set_head(self, weight, bias):
        """Set the head to ``weight`` (n_outputs, width) and ``bias`` (n_outputs,)."""
        weight = torch.as_tensor(np.asarray(weight), dtype=self.head.weight.dtype)
        bias = torch.as_tensor(np.asarray(bias), dtype=self.head.bias.dtype)
        if weight.shape != self.head.weight.shape or bias.shape != self.head.bias.shape:
            raise EvaluationError(f"head of shape {tuple(self.head.weight.shape)} and bias "
                                  f"{tuple(self.head.bias.shape)} expected; received "
                                  f"{tuple(weight.shape)} and {tuple(bias.shape)}")
        self.head.weight.copy_(weight)
        self.head.bias.copy_(bias)

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


@torch.no_grad()
def window_embeddings(model, dataset, label, batch_size, classes=None):
    """``(x, y, subjects)``: the frozen encoder's subject embedding of every window of
    ``dataset`` (float64, eval mode), the training target of each (class index, or the
    z-scored value) and its subject; ``classes`` are the string classes in index order
    (None for numeric labels)."""
    from torch.utils.data import DataLoader

    from bsym.train.engine import to_device

    device = next(model.parameters()).device
    lookup = {c: i for i, c in enumerate(classes)} if classes is not None else None
    was_training = model.training
    model.eval()
    xs, ys, subjects = [], [], []
    try:
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            subjects.extend(batch["subject"])
            values = batch["labels"][label]
            if lookup is not None:
                y = torch.tensor([lookup[str(v.item() if isinstance(v, torch.Tensor) else v)]
                                  for v in values])
            else:
                y = model._target(torch.as_tensor(values).to(device))
            inputs = to_device({k: v for k, v in batch.items() if k not in BATCH_ONLY}, device)
            xs.append(model._subject(inputs).double().cpu())
            ys.append(y.cpu())
    finally:
        model.train(was_training)
    return torch.cat(xs).numpy(), torch.cat(ys).numpy(), np.asarray(subjects)


def _loss(task, y, out, weights):
    """Mean loss as the model computes it: class-weighted cross-entropy of logits, or MSE."""
    if task == "regression":
        return float(np.mean((np.asarray(out).reshape(-1) - y) ** 2))
    out = out - out.max(axis=1, keepdims=True)
    log_p = out - np.log(np.exp(out).sum(axis=1, keepdims=True))
    w = weights[y] if weights is not None else np.ones(len(y))
    return float(-np.mean(w * log_p[np.arange(len(y)), y]))


def linear_probe_head(x_fit, y_fit, x_val, y_val, *, task, n_outputs, cs, alphas,
                      class_weights=None, val_groups=None, max_iter=5000):
    """A linear probe as a head on raw embeddings (the LP step of LP-FT).

    Standardisation (fit rows) plus logistic regression (``class_weight="balanced"`` when
    ``class_weights`` is given) or ridge on the z-scored target, for each penalty of the
    grid; the one of lowest validation loss is kept, its standardisation folded into one
    affine map. With ``val_groups`` (the subject of each validation row) the loss is the
    subjects' (of their mean output, as the test is scored), else the rows'.

    Parameters
    ----------
    x_fit, x_val : array, shape (n, width)
        Window embeddings.
    y_fit, y_val : array
        Class indices, or z-scored targets.
    task : {"classification", "regression"}
    n_outputs : int
    cs, alphas : sequence of float
        Inverse penalties of the logistic regression, ridge penalties.
    class_weights : array, optional
        Per class (index order): weights of the validation loss.
    val_groups : array, optional
        Subject of each validation row.

    Returns
    -------
    weight : array (n_outputs, width)
    bias : array (n_outputs,)
    info : dict
        ``lp_param`` (the penalty kept), ``lp_val_loss`` (its loss per validation row, the
        loss early stopping reads at step 0) and, with ``val_groups``,
        ``lp_val_subject_loss`` (what chose it).
    """
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x_fit)
    z_fit, z_val = scaler.transform(x_fit), scaler.transform(x_val)
    weights = None if class_weights is None else np.asarray(class_weights, dtype=np.float64)
    y_val = y_val.astype(int) if task == "classification" else y_val.astype(np.float64)
    if val_groups is not None:
        first = pd.Series(np.arange(len(y_val))).groupby(np.asarray(val_groups)).first()
        y_groups = y_val[first.to_numpy()]
    best = None
    for param in (cs if task == "classification" else alphas):
        coef, intercept = _fit_head(task, param, z_fit, y_fit, n_outputs,
                                    balanced=weights is not None, max_iter=max_iter)
        out = z_val @ coef.T + intercept
        info = {"lp_param": float(param), "lp_val_loss": _loss(task, y_val, out, weights)}
        if val_groups is not None:
            pooled = pd.DataFrame(out).groupby(np.asarray(val_groups)).mean()
            info["lp_val_subject_loss"] = _loss(task, y_groups, pooled.to_numpy(), weights)
        chosen = info.get("lp_val_subject_loss", info["lp_val_loss"])
        if best is None or chosen < best[0] - 1e-12:
            best = (chosen, info, coef, intercept)
    _, info, coef, intercept = best
    weight = coef / scaler.scale_
    bias = intercept - weight @ scaler.mean_
    return weight, bias, info


def _fit_head(task, param, z_fit, y_fit, n_outputs, *, balanced, max_iter):
    """``(coef (n_outputs, width), intercept (n_outputs,))`` of a logistic regression
    (``C=param``; two classes as one logit split symmetrically) or a ridge
    (``alpha=param``) on standardised features."""
    import warnings

    from sklearn.linear_model import LogisticRegression, Ridge

    if task != "classification":
        fitted = Ridge(alpha=param).fit(z_fit, y_fit)
        return fitted.coef_.reshape(1, -1), np.atleast_1d(fitted.intercept_)
    fitted = LogisticRegression(C=param, max_iter=max_iter,
                                class_weight="balanced" if balanced else None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence at the weakest penalties
        fitted.fit(z_fit, y_fit.astype(int))
    coef, intercept = fitted.coef_, fitted.intercept_
    if fitted.classes_.tolist() != list(range(n_outputs)):
        raise EvaluationError(f"the probe's fit windows hold classes "
                              f"{fitted.classes_.tolist()}; expected all of "
                              f"{list(range(n_outputs))}")
    if n_outputs == 2:  # one logit of class 1 against 0, split symmetrically
        coef = np.vstack([-coef / 2, coef / 2])
        intercept = np.r_[-intercept / 2, intercept / 2]
    return coef, intercept


def probe_initialise(config):
    """The ``prepare`` step of the fold loop: fit the head as a linear probe of the frozen
    encoder (see :func:`linear_probe_head`) and return the row columns."""
    from bsym.train.engine import label_classes

    def prepare(model, fit_set, val_set, label, settings):
        classes = label_classes(fit_set, label) if model.task == "classification" else None
        x_fit, y_fit, _ = window_embeddings(model, fit_set, label, settings.batch_size, classes)
        x_val, y_val, val_subjects = window_embeddings(model, val_set, label,
                                                       settings.batch_size, classes)
        weights = model.class_weights.cpu().numpy() if len(model.class_weights) else None
        weight, bias, info = linear_probe_head(
            x_fit, y_fit, x_val, y_val, task=model.task, n_outputs=model.head.out_features,
            cs=config.lp_cs, alphas=config.lp_alphas, class_weights=weights,
            val_groups=val_subjects)
        model.set_head(weight, bias)
        return info

    return prepare


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
        One row per fold, with ``best_step`` (0: the probe-initialised head was kept),
        ``stopped_early``, ``lp_init`` and, with it, ``lp_param`` and ``lp_val_loss``.
    """
    config = config or FineTuneConfig()
    splits.check_cohort(cohort).check_task(label, task, cohort)
    ckpt, source = _checkpoint_windows(checkpoint, cohort, splits, config.max_windows,
                                       allow_pretrained_subjects)
    sha = file_sha256(checkpoint)
    labelled = LabelledCohort(cohort, label, task or infer_task(cohort.subjects[label]))
    chash = config_hash({"finetune": config.to_dict(), "checkpoint_sha256": sha,
                         "task": labelled.task})
    view, width = _encoder_view(checkpoint, cohort, source, config.view)
    base = {"model": model or ckpt["model"]["name"], "view": view,
            "dataset": dataset or cohort.path.name, "task": label, "protocol": "finetune",
            "seed": splits.seed}
    rows, computed = train_test_folds(_model_factory(checkpoint, config, view, width), source,
                                      labelled, splits, config=config, base=base, chash=chash,
                                      folds=folds, results=results, force=force,
                                      progress=progress, desc=f"finetune {label}",
                                      row_extra={"checkpoint_sha256": sha,
                                                 "lp_init": bool(config.lp_init)},
                                      prepare=probe_initialise(config) if config.lp_init
                                      else None)
    log_computed(tracker, rows, computed, tags=base,
                 params={"finetune": config.to_dict(), "split_hash": splits.sha256,
                         "checkpoint_sha256": sha},
                 metrics=labelled.metrics)
    return pd.DataFrame(rows)


def _checkpoint_windows(checkpoint, cohort, splits, max_windows, allow_pretrained_subjects):
    """``(checkpoint, WindowSource)``: the checkpoint, checked against the store (and, unless
    allowed, against the split's subjects), and windows made as in its pretraining."""
    from bsym.data.preprocess import RobustScaler
    from bsym.evaluate.embeddings import _checkpoint_settings
    from bsym.train.checkpoint import check_fits_store, load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    check_fits_store(ckpt, checkpoint, cohort)
    if not allow_pretrained_subjects:
        check_not_pretrained_on((ckpt.get("extra") or {}).get("train_subjects"),
                                (ckpt.get("data") or {}).get("manifest_hash"), cohort,
                                splits.subjects, f"fine-tuning of {checkpoint}")
    settings = {**_checkpoint_settings(ckpt), "max_windows": max_windows}
    state = (ckpt.get("extra") or {}).get("scaler")
    return ckpt, WindowSource(cohort, settings,
                              RobustScaler.from_state_dict(state) if state else None)


def _encoder_view(checkpoint, cohort, source, view):
    """``(view, width)`` of the checkpoint's encoder, from one window of the first subject."""
    from bsym.train.checkpoint import load_trained

    encoder, _ = load_trained(checkpoint)
    first = cohort.subjects["subject"].iloc[:1].tolist()
    return embedding_width(encoder, source.windows(first, scaler=source.scaler), view)


def _model_factory(checkpoint, config, view, width):
    """``make_model(target, fold_index)`` for the fold loop: a fresh copy of the pretrained
    encoder (frozen with ``freeze_encoder``) with a linear head."""
    from bsym.train.checkpoint import load_trained

    def make_model(target, fold_index):
        encoder, _ = load_trained(checkpoint)
        if config.freeze_encoder:
            for p in encoder.parameters():
                p.requires_grad_(False)
        return FineTuneModel(encoder, target.n_outputs, width, task=target.task,
                             view=None if view == "default" else view,
                             class_values=target.class_values, target_mean=target.mean,
                             target_sd=target.sd,
                             class_weights=target.class_weights if config.class_balanced
                             else None,
                             encoder_lr_scale=config.encoder_lr_scale)

    return make_model
