"""Train on each outer training fold, stop early on an inner validation split, test once.

The loop that fine-tuning (a pretrained encoder plus a linear head, protocol
``finetune``) and the supervised baselines (trained from scratch, protocol
``supervised``) share, and the inner-fold objective of hyper-parameter sweeps.

Training goes through the shared loop, :func:`bsym.train.engine.train`, in supervised mode.
Windows are the training samples; a subject's prediction is the mean of its windows'
outputs. Regression targets are z-scored with the training subjects' mean and SD.

Early stopping: the split file's first inner fold gives a validation set inside the outer
training fold (its subjects are not trained on). Every ``eval_every`` steps the engine
computes the validation loss; :class:`EarlyStopping` keeps the best weights and stops the
run after ``patience`` validations without improvement. The best weights are tested once
on the outer test fold.

A model factory ``make_model(target)`` receives a :class:`Target` (classes, class weights or
z-scoring of the fold) and returns a supervised :class:`~bsym.models.base.BrainModel` whose
``forward`` gives class logits or the z-scored prediction and whose ``supervised_loss``
takes the labels the engine passes (raw numeric values, or class indices of string labels).
An optional ``prepare(model, fit_set, val_set, label, config)`` runs on the fresh model
before anything is validated (fine-tuning's linear-probe initialisation); the columns it
returns go into the fold's row.

Every row records what the tested model predicted: ``n_test_windows``, and for classes
``pred_counts`` (test subjects per predicted class), ``n_pred_classes`` and
``single_class`` (every test subject given one class); for regression ``pred_sd`` (SD of
the predictions, label units).
"""

from __future__ import annotations

import copy
import functools
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from bsym.evaluate import EvaluationError
from bsym.evaluate.config import FoldTraining
from bsym.evaluate.loop import run_units
from bsym.evaluate.probe import (
    CLASSIFICATION_METRICS,
    REGRESSION_METRICS,
    classification_scores,
    encode_labels,
    regression_scores,
)
from bsym.evaluate.results import provenance

BATCH_ONLY = ("scan", "subject", "start", "labels")


#: The former name of :class:`FoldTraining`.
TrainingConfig = FoldTraining


@dataclass(frozen=True)
class Target:
    """What a fold's model predicts.

    task : {"classification", "regression"}
    n_outputs : int
        Number of classes, or 1.
    class_values : tuple of float or None
        Numeric class values when the engine passes raw numeric labels (the model maps
        them to indices); None for string classes (the engine passes indices).
    mean, sd : float
        z-scoring of a regression target (training subjects); 0 and 1 otherwise.
    class_weights : tuple of float or None
        Per class (index order), inverse to the training subjects' class frequencies,
        ``n / (n_classes * n_c)`` (mean 1 over subjects); None for regression.
    """

    task: str
    n_outputs: int
    class_values: tuple | None = None
    mean: float = 0.0
    sd: float = 1.0
    class_weights: tuple | None = None


def class_index(y, class_values):
    """Class indices of labels ``y``: numeric values looked up in ``class_values`` (sorted),
    or ``y`` itself when the engine already passed indices."""
    if class_values is not None and len(class_values):
        values = torch.as_tensor(class_values, dtype=torch.float64, device=y.device)
        index = torch.searchsorted(values, y.to(torch.float64).contiguous())
        return index.clamp(max=len(values) - 1).long()
    return y.long()


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


class WindowSource:
    """Windows of a cohort's scans as a fold needs them.

    Parameters
    ----------
    cohort : Cohort
    settings : dict
        ``window``, ``target_tr``, ``cleaning`` (SignalCleaning options), ``sc_transform``,
        optionally ``stride`` and ``max_windows``.
    scaler : RobustScaler, optional
        A fixed scaler (a pretrained checkpoint's); None fits one on each fold's training
        scans.
    """

    def __init__(self, cohort, settings, scaler=None):
        self.cohort = cohort
        self.settings = dict(settings)
        self.scaler = scaler
        self.scans_of = cohort.subjects.groupby("subject")["scan"].apply(list)

    def windows(self, subjects, label=None, scaler=None, every_window=False):
        """Windows of these subjects' scans (all of them with ``every_window``, else at most
        ``settings["max_windows"]`` per scan)."""
        from bsym.data.dataset import WindowDataset
        from bsym.data.preprocess import SignalCleaning

        s = self.settings
        scans = [scan for subject in subjects for scan in self.scans_of[subject]]
        return WindowDataset(self.cohort, s["window"], scans=scans, scaler=scaler,
                             stride=s.get("stride"),
                             max_windows=None if every_window else s.get("max_windows"),
                             labels=[label] if label else (), target_tr=s.get("target_tr"),
                             cleaning=SignalCleaning(**(s.get("cleaning") or {})),
                             sc_transform=s.get("sc_transform", "log1p"))

    def split(self, fit, val, label):
        """``(fit_set, val_set, scaler)``: the scaler is fixed or fitted on ``fit``."""
        from bsym.data.preprocess import RobustScaler

        fit_set = self.windows(fit, label, self.scaler)
        scaler = self.scaler or fit_set.fit_scaler(RobustScaler())
        return fit_set, self.windows(val, label, scaler), scaler


class LabelledCohort:
    """One label of a cohort, one value per subject, and the fold's :class:`Target`."""

    def __init__(self, cohort, label, task):
        cohort.require(labels=[label])
        table = cohort.subjects
        per_subject = table.groupby("subject")[label]
        if (per_subject.nunique() > 1).any():
            raise EvaluationError(f"label {label!r} varies within subjects; training predicts "
                                  "one value per subject (use the linear probe at "
                                  "level='scan')")
        self.label, self.task = label, task
        self.values = per_subject.first()
        _, self.classes = encode_labels(table[label], task)
        numeric = pd.api.types.is_numeric_dtype(table[label]) and \
            not pd.api.types.is_bool_dtype(table[label])
        self.class_values = (tuple(sorted(float(v) for v in table[label].unique()))
                             if task == "classification" and numeric else None)

    def target(self, subjects, where):
        values = self.values.loc[list(subjects)]
        if self.task == "classification":
            present, expected = set(values.unique()), set(self.values.unique())
            if present != expected:
                raise EvaluationError(f"{where}: the training subjects hold classes "
                                      f"{sorted(map(str, present))}; expected all of "
                                      f"{sorted(map(str, expected))}")
            index, _ = encode_labels(values, "classification")  # every class is present
            counts = np.bincount(index, minlength=len(self.classes))
            weights = len(values) / (len(self.classes) * counts)
            return Target("classification", len(self.classes), self.class_values,
                          class_weights=tuple(float(w) for w in weights))
        values = values.astype(float)
        sd = float(values.std(ddof=0))
        if sd == 0:
            raise EvaluationError(f"{where}: the target is constant in training")
        return Target("regression", 1, None, float(values.mean()), sd)

    def score(self, pooled, target):
        """Scores of subject-pooled outputs (a frame indexed by subject), with what was
        predicted (see the module docstring)."""
        truth = self.values.loc[pooled.index]
        if self.task == "classification":
            logits = torch.as_tensor(np.array(pooled.to_numpy(), dtype=np.float64))
            proba = torch.softmax(logits, dim=1).numpy()
            if self.class_values is not None:
                lookup = {v: i for i, v in enumerate(self.class_values)}
                y_true = np.array([lookup[float(v)] for v in truth])
            else:
                lookup = {c: i for i, c in enumerate(self.classes)}
                y_true = np.array([lookup[str(v)] for v in truth])
            scores = classification_scores(y_true, proba, len(self.classes))
            counts = np.bincount(proba.argmax(axis=1), minlength=len(self.classes))
            return {**scores, "pred_counts": ";".join(f"{c}={int(n)}" for c, n in
                                                      zip(self.classes, counts)),
                    "n_pred_classes": int((counts > 0).sum()),
                    "single_class": bool((counts > 0).sum() < 2)}
        pred = pooled.to_numpy()[:, 0] * target.sd + target.mean
        scores = regression_scores(truth.astype(float).to_numpy(), pred, target.mean, target.sd)
        return {**scores, "pred_sd": float(np.std(pred))}

    #: Columns :meth:`score` adds beside the metrics.
    PREDICTION_COLUMNS = {"classification": ("pred_counts", "n_pred_classes", "single_class"),
                          "regression": ("pred_sd",)}

    @property
    def metrics(self):
        return CLASSIFICATION_METRICS if self.task == "classification" else REGRESSION_METRICS


@torch.no_grad()
def predict_windows(model, dataset, batch_size, device):
    """``(outputs (N, K), subjects (N,))`` of every window, in order."""
    from torch.utils.data import DataLoader

    from bsym.train.engine import to_device

    model.eval()
    outputs, subjects = [], []
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        subjects.extend(batch["subject"])
        batch = to_device({k: v for k, v in batch.items() if k not in BATCH_ONLY}, device)
        outputs.append(model(batch).float().cpu())
    return torch.cat(outputs).numpy(), np.asarray(subjects)


def fit_early_stopped(make_model, target, fit_set, val_set, label, config, prepare=None):
    """Train ``make_model(target)`` on ``fit_set``, early-stopped on ``val_set``.

    ``prepare(model, fit_set, val_set, label, config)`` (optional) runs on the fresh model
    before its step-0 validation and returns a dict of row columns.

    Returns ``(model with the best weights, EarlyStopping, prepare's columns)``.
    """
    from bsym.train.devices import select_device
    from bsym.train.engine import TrainConfig, evaluate_loss, train

    device = select_device(config.device)
    torch.manual_seed(config.seed)
    model = make_model(target).to(device)
    info = dict(prepare(model, fit_set, val_set, label, config) or {}) if prepare else {}
    stopper = EarlyStopping(patience=config.patience)
    train_config = TrainConfig(steps=config.max_steps, batch_size=config.batch_size,
                               lr=config.lr, weight_decay=config.weight_decay,
                               warmup_steps=min(config.warmup_steps, config.max_steps),
                               seed=config.seed, device=str(device), label=label,
                               progress=False, log_every=max(config.max_steps, 1),
                               eval_every=config.eval_every)
    # the untrained (or prepared) model is the first candidate
    stopper.update(model, 0, evaluate_loss(model, val_set, batch_size=config.batch_size,
                                           seed=config.seed, label=label))
    train(model, fit_set, train_config, val_dataset=val_set, callbacks=[stopper])
    model.load_state_dict(stopper.best_state)
    return model, stopper, info


def _fit_val_test(fold):
    if not fold.inner:
        raise EvaluationError(f"fold {fold.name} has no inner folds; early stopping needs a "
                              "validation split inside the training fold")
    val = sorted(fold.inner[0][1])
    fit = [s for s in fold.train if s not in set(val)]
    return fit, val, list(fold.test)


def train_test_folds(make_model, source, labelled, splits, *, config, base, chash,
                     folds=None, results=None, force=False, progress=True,
                     row_extra=None, desc="train", prepare=None):
    """Train and test a fresh model on every (chosen) outer fold.

    Parameters
    ----------
    make_model : callable
        ``make_model(target, fold_index)`` -> a supervised BrainModel (see module docstring).
    source : WindowSource
    labelled : LabelledCohort
    splits : Splits
    config : FoldTraining or callable
        The settings, or ``config(fold_index)`` -> settings (e.g. per-fold sweep results).
    base : dict
        Key columns of the rows (model, view, dataset, task, protocol, seed).
    chash : str or callable
        Config hash, or ``chash(fold_index)``.
    folds : sequence of int, optional
    results : ResultTable, optional
        Current rows are reused unless ``force``; each fold's row is appended when done.
    row_extra : dict, optional
        Columns added to every row.
    prepare : callable, optional
        ``prepare(model, fit_set, val_set, label, config)`` -> row columns, run on each
        fold's fresh model before training (see :func:`fit_early_stopped`).

    Returns
    -------
    rows, computed : list of dict
        Every chosen fold's row, and those computed now.
    """
    from tqdm.auto import tqdm

    chosen = range(len(splits)) if folds is None else [int(f) for f in folds]
    run = _FoldTrainingRun(make_model, source, labelled, splits, base, chash,
                           row_extra or {}, prepare)
    # one fold a batch: each row is saved when its fold is done; the settings of a fold
    # are read when its turn comes
    batches = ([(index, config(index) if callable(config) else config)] for index in chosen)
    with tqdm(total=len(chosen), desc=desc, unit="fold", disable=not progress) as bar:
        return run_units(batches, run.keys, run.rows, results=results, force=force, bar=bar)


@dataclass
class _FoldTrainingRun:
    """The key and the row of one outer fold, ``(fold index, settings)``."""

    make_model: object
    source: WindowSource
    labelled: LabelledCohort
    splits: object
    base: dict
    chash: object
    row_extra: dict
    prepare: object

    def keys(self, unit):
        index, _ = unit
        return [{**self.base, "fold": self.splits[index].index,
                 "config_hash": self.chash(index) if callable(self.chash) else self.chash,
                 "manifest_hash": self.source.cohort.manifest_hash,
                 "split_hash": self.splits.sha256}]

    def rows(self, unit, keys):
        """Train on the fold's fit subjects, early-stopped on its validation subjects, and
        score the best weights once on its test subjects."""
        index, settings = unit
        fold = self.splits[index]
        started = time.perf_counter()
        fit, val, test = _fit_val_test(fold)
        labelled = self.labelled
        target = labelled.target(fit, f"fold {fold.name}")
        fit_set, val_set, scaler = self.source.split(fit, val, labelled.label)
        model, stopper, prepared = fit_early_stopped(
            functools.partial(self.make_model, fold_index=index), target, fit_set, val_set,
            labelled.label, settings, prepare=self.prepare)
        pooled, n_windows = pooled_test_outputs(model, self.source, test, scaler,
                                                settings.batch_size)
        scores = labelled.score(pooled, target)
        return [{**keys[0], "repeat": fold.repeat, "task_type": labelled.task,
                 **{m: scores[m] for m in labelled.metrics},
                 **{c: scores[c] for c in labelled.PREDICTION_COLUMNS[labelled.task]},
                 "n_test_windows": n_windows,
                 # the outer training fold, as for every protocol (paired tests need equal
                 # splits); n_fit of its subjects were trained on, n_val stopped the training
                 "n_train": len(fold.train), "n_fit": len(fit), "n_val": len(val),
                 "n_test": len(pooled), "best_step": stopper.best_step,
                 "best_val_loss": stopper.best_loss, "stopped_early": stopper.stopped,
                 "runtime_s": time.perf_counter() - started, "test_site": fold.test_site,
                 **prepared, **self.row_extra, **provenance()}]


def pooled_test_outputs(model, source, test, scaler, batch_size):
    """``(outputs per test subject, n_windows)``: the model's outputs on every window of the
    ``test`` subjects' scans (as in the embeddings a probe reads; training and validation
    read at most ``max_windows`` per scan), averaged per subject (sorted)."""
    device = next(model.parameters()).device
    test_set = source.windows(test, scaler=scaler, every_window=True)
    outputs, subjects = predict_windows(model, test_set, batch_size, device)
    frame = pd.DataFrame(outputs)
    frame["subject"] = subjects
    return frame.groupby("subject", sort=True).mean(), len(subjects)


def inner_validation(make_model, source, labelled, fold, config, report=None, prepare=None):
    """Mean best validation loss over the inner folds of one outer fold.

    Each inner fold trains on its training part and is early-stopped and scored on its
    validation part; the outer test subjects are never read. ``report(loss, step)`` is
    called after each inner fold (a sweep's pruning hook); ``prepare`` as in
    :func:`fit_early_stopped`.
    """
    losses = []
    for step, (train, val) in enumerate(fold.inner):
        train = list(train)
        target = labelled.target(train, f"fold {fold.name}, inner fold {step}")
        fit_set, val_set, _ = source.split(train, list(val), labelled.label)
        _, stopper, _ = fit_early_stopped(make_model, target, fit_set, val_set,
                                          labelled.label, config, prepare=prepare)
        losses.append(stopper.best_loss)
        if report is not None:
            report(float(np.mean(losses)), step)
    return float(np.mean(losses))
