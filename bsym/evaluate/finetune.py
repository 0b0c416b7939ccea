"""Fine-tuning: the pretrained encoder plus a linear head, trained on each outer train fold.

Training goes through the shared loop, :func:`bsym.train.engine.train`, in supervised mode:
:class:`FineTuneModel` is a :class:`~bsym.models.base.BrainModel` that wraps the encoder's
``embed`` and adds a linear head (cross-entropy for classes, MSE on the target z-scored
with the training subjects' mean and SD). Windows are the training samples; a subject's
prediction is the mean of its windows' outputs.

Early stopping: the split file's first inner fold gives a validation set inside the
outer training fold (its subjects are not trained on). Every ``eval_every`` steps the
engine computes the validation loss; an :class:`EarlyStopping` callback keeps the best
weights and stops the run after ``patience`` validations without improvement. The best
weights are tested once on the outer test fold.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from bsym.evaluate import EvaluationError
from bsym.evaluate.probe import (
    CLASSIFICATION_METRICS,
    REGRESSION_METRICS,
    classification_scores,
    regression_scores,
)
from bsym.evaluate.results import config_hash, log_evaluation, provenance
from bsym.evaluate.splits import infer_task
from bsym.io import file_sha256
from bsym.models.base import BrainModel, Embeddings


@dataclass
class FineTuneConfig:
    """Settings of fine-tuning.

    Parameters
    ----------
    max_steps : int
        Optimizer steps at most.
    batch_size : int
    lr : float
        Peak learning rate (AdamW, warm-up then cosine, as in the engine).
    weight_decay : float
    warmup_steps : int
    eval_every : int
        Validation loss every this many steps.
    patience : int
        Stop after this many validations without improvement.
    view : str, optional
        Embedding view of a multi-view encoder (default: ``fusion`` or the only one).
    freeze_encoder : bool
        Train the head only (a linear probe trained by gradient descent).
    device : str
    seed : int
    """

    max_steps: int = 500
    batch_size: int = 16
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup_steps: int = 20
    eval_every: int = 25
    patience: int = 4
    view: str | None = None
    freeze_encoder: bool = False
    device: str = "auto"
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


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
        if len(self.class_values):
            index = torch.searchsorted(self.class_values.to(y.device),
                                       y.to(torch.float64).contiguous())
            return index.clamp(max=len(self.class_values) - 1).long()
        return y.long()

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
    batch = {k: v for k, v in batch.items() if k not in ("scan", "subject", "start", "labels")}
    was_training = encoder.training
    encoder.eval()
    try:
        name, tensor = subject_embedding(encoder, batch, view, with_name=True)
        return name, int(tensor.shape[-1])
    finally:
        encoder.train(was_training)


class EarlyStopping:
    """An engine callback: keeps the weights of the best validation loss, stops on patience.

    The engine computes the validation loss (``TrainConfig.eval_every``) and
    passes it in :class:`~bsym.train.engine.StepInfo`; returning True stops the run.

    Parameters
    ----------
    patience : int
        Validations without improvement before stopping.
    """

    def __init__(self, *, patience):
        self.patience = int(patience)
        self.best_loss, self.best_step, self.best_state = float("inf"), 0, None
        self.history = []
        self.stopped = False

    def __call__(self, info):
        if info.val_loss is None:
            return False
        return self.update(info.model, info.step, info.val_loss)

    def update(self, model, step, loss):
        """Record one validation; returns True when patience has run out."""
        self.history.append({"step": int(step), "val_loss": float(loss)})
        if loss < self.best_loss - 1e-9:
            self.best_loss, self.best_step = float(loss), int(step)
            self.best_state = copy.deepcopy({k: v.detach().cpu().clone()
                                             for k, v in model.state_dict().items()})
            return False
        since_best = sum(h["step"] > self.best_step for h in self.history)
        self.stopped = since_best >= self.patience
        return self.stopped


def _windows(cohort, scans, settings, scaler, label=None):
    from bsym.data.dataset import WindowDataset
    from bsym.data.preprocess import SignalCleaning

    return WindowDataset(cohort, settings["window"], scans=scans, scaler=scaler,
                         labels=[label] if label else (), target_tr=settings["target_tr"],
                         cleaning=SignalCleaning(**settings["cleaning"]),
                         sc_transform=settings["sc_transform"])


@torch.no_grad()
def _predict(model, dataset, batch_size, device):
    from torch.utils.data import DataLoader

    from bsym.train.engine import to_device

    model.eval()
    outputs, subjects = [], []
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        subjects.extend(batch["subject"])
        batch = to_device({k: v for k, v in batch.items()
                           if k not in ("scan", "subject", "start", "labels")}, device)
        outputs.append(model(batch).float().cpu())
    return torch.cat(outputs).numpy(), np.asarray(subjects)


def fine_tune(checkpoint, cohort, splits, label, *, config=None, folds=None, task=None,
              model=None, dataset=None, results=None, tracker=None, force=False,
              progress=True) -> pd.DataFrame:
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

    Returns
    -------
    DataFrame
        One row per fold, with ``best_step`` and ``stopped_early``.
    """
    from tqdm.auto import tqdm

    from bsym.data.preprocess import RobustScaler
    from bsym.evaluate.embeddings import _checkpoint_settings
    from bsym.evaluate.probe import encode_labels
    from bsym.train.checkpoint import load_checkpoint, load_trained
    from bsym.train.devices import select_device
    from bsym.train.engine import TrainConfig, evaluate_loss, label_classes, train

    config = config or FineTuneConfig()
    cohort.require(labels=[label])
    splits.check_cohort(cohort)
    ckpt = load_checkpoint(checkpoint)
    settings = _checkpoint_settings(ckpt)
    state = (ckpt.get("extra") or {}).get("scaler")
    scaler = RobustScaler.from_state_dict(state) if state else None
    sha = file_sha256(checkpoint)
    task = task or infer_task(cohort.subjects[label])
    table = cohort.subjects
    per_subject = table.groupby("subject")[label]
    if (per_subject.nunique() > 1).any():
        raise EvaluationError(f"label {label!r} varies within subjects; fine-tuning predicts "
                              "one value per subject (use the linear probe at level='scan')")
    _, classes = encode_labels(table[label], task)
    model_name = model or ckpt["model"]["name"]
    dataset = dataset or cohort.path.name
    device = select_device(config.device)
    chash = config_hash({"finetune": config.to_dict(), "checkpoint_sha256": sha, "task": task})
    probe_encoder, _ = load_trained(checkpoint)  # which view, how wide
    view, width = embedding_width(probe_encoder, _windows(cohort, table["scan"].iloc[:1].tolist(),
                                                          settings, scaler), config.view)
    del probe_encoder
    base = {"model": model_name, "view": view, "dataset": dataset,
            "task": label, "protocol": "finetune", "seed": splits.seed}
    chosen = range(len(splits)) if folds is None else [int(f) for f in folds]
    scans_of = table.groupby("subject")["scan"].apply(list)
    rows, computed = [], []
    for index in tqdm(chosen, desc=f"finetune {label}", unit="fold", disable=not progress):
        fold = splits[index]
        key = {**base, "fold": fold.index, "config_hash": chash,
               "manifest_hash": cohort.manifest_hash, "split_hash": splits.sha256}
        if results is not None and not force and results.is_done(key):
            rows.append(results.find(key))
            continue
        started = time.perf_counter()
        if not fold.inner:
            raise EvaluationError(f"fold {fold.name} has no inner folds; early stopping needs a "
                                  "validation split inside the training fold")
        val_subjects = set(fold.inner[0][1])
        fit_subjects = [s for s in fold.train if s not in val_subjects]
        fit_set = _windows(cohort, sum((scans_of[s] for s in fit_subjects), []), settings,
                           scaler, label)
        val_set = _windows(cohort, sum((scans_of[s] for s in sorted(val_subjects)), []),
                           settings, scaler, label)
        test_set = _windows(cohort, sum((scans_of[s] for s in fold.test), []), settings, scaler)

        torch.manual_seed(config.seed)
        encoder, _ = load_trained(checkpoint)
        if config.freeze_encoder:
            for p in encoder.parameters():
                p.requires_grad_(False)
        fit_values = per_subject.first().loc[fit_subjects]
        engine_classes = label_classes(fit_set, label) if task == "classification" else None
        class_values = None
        if task == "classification" and engine_classes is None:
            class_values = sorted(float(v) for v in table[label].unique())
        n_outputs = len(classes) if task == "classification" else 1
        if task == "classification" and engine_classes is not None and \
                engine_classes != classes:
            raise EvaluationError(f"fold {fold.name}: the training windows hold classes "
                                  f"{engine_classes}; expected all of {classes}")
        mean = float(fit_values.astype(float).mean()) if task == "regression" else 0.0
        sd = float(fit_values.astype(float).std(ddof=0)) if task == "regression" else 1.0
        if task == "regression" and sd == 0:
            raise EvaluationError(f"fold {fold.name}: the target is constant in training")
        wrapper = FineTuneModel(encoder, n_outputs, width, task=task,
                                view=None if view == "default" else view,
                                class_values=class_values, target_mean=mean, target_sd=sd)
        stopper = EarlyStopping(patience=config.patience)
        train_config = TrainConfig(steps=config.max_steps, batch_size=config.batch_size,
                                   lr=config.lr, weight_decay=config.weight_decay,
                                   warmup_steps=config.warmup_steps, seed=config.seed,
                                   device=str(device), label=label, progress=False,
                                   log_every=max(config.max_steps, 1),
                                   eval_every=config.eval_every)
        # the untrained head is the first candidate
        stopper.update(wrapper.to(device), 0,
                       evaluate_loss(wrapper, val_set, batch_size=config.batch_size,
                                     seed=config.seed, label=label))
        train(wrapper, fit_set, train_config, val_dataset=val_set, callbacks=[stopper])
        wrapper.load_state_dict(stopper.best_state)
        outputs, subjects = _predict(wrapper.to(device), test_set, config.batch_size, device)
        frame = pd.DataFrame(outputs)
        frame["subject"] = subjects
        pooled = frame.groupby("subject", sort=True).mean()
        truth = per_subject.first().loc[pooled.index]
        if task == "classification":
            logits = torch.as_tensor(np.array(pooled.to_numpy(), dtype=np.float64))
            proba = torch.softmax(logits, dim=1).numpy()
            lookup = {c: i for i, c in enumerate(classes)}
            y_true = np.array([lookup[str(v)] for v in truth])
            scores = classification_scores(y_true, proba, len(classes))
            metrics = CLASSIFICATION_METRICS
        else:
            pred = pooled.to_numpy()[:, 0] * sd + mean
            scores = regression_scores(truth.astype(float).to_numpy(), pred, mean, sd)
            metrics = REGRESSION_METRICS
        row = {**key, "repeat": fold.repeat, "task_type": task,
               **{m: scores[m] for m in metrics}, "n_train": len(fit_subjects),
               "n_val": len(val_subjects), "n_test": len(pooled),
               "best_step": stopper.best_step, "best_val_loss": stopper.best_loss,
               "stopped_early": stopper.stopped, "runtime_s": time.perf_counter() - started,
               "checkpoint_sha256": sha, "test_site": fold.test_site, **provenance()}
        if results is not None:
            results.append([row])
        rows.append(row)
        computed.append(row)
    log_evaluation(tracker, computed, run_name=f"finetune-{model_name}-{label}",
                   tags={**base, "bsym.version": provenance()["bsym_version"]},
                   params={"finetune": config.to_dict(), "split_hash": splits.sha256,
                           "checkpoint_sha256": sha},
                   metrics=CLASSIFICATION_METRICS if task == "classification"
                   else REGRESSION_METRICS)
    return pd.DataFrame(rows)
