"""The supervised protocol: a baseline trained from scratch on each outer training fold.

BNT, BrainNetCNN, BrainGNN and the vanilla transformer have no pretraining: a fresh model
from the registry is trained on each outer train fold, early-stopped on the fold's first
inner validation split and tested once on its test fold, on the same split file as every
other model (protocol ``supervised``). The fold loop is :mod:`bsym.evaluate.foldtrain`'s.

Hyper-parameters may differ per fold (a sweep chooses them on each fold's inner folds):
``params`` maps a fold index to ``{"lr": ..., "model.dropout": ...}``; names starting with
``model.`` are model arguments, the rest :class:`FoldTraining` fields.
"""

from __future__ import annotations

import dataclasses
import inspect

import pandas as pd

from bsym.evaluate import EvaluationError
from bsym.evaluate.foldtrain import (
    FoldTraining,
    LabelledCohort,
    WindowSource,
    class_index,
    inner_validation,
    train_test_folds,
)
from bsym.evaluate.results import config_hash, log_computed
from bsym.evaluate.splits import infer_task
from bsym.models.base import BrainModel

MODEL_PREFIX = "model."


class SupervisedTask(BrainModel):
    """A supervised baseline whose numeric class labels are mapped to class indices.

    ``forward`` is the baseline's (class logits, or the z-scored prediction: regression
    targets are standardised by the baseline's own target scaling, set from the fold).
    """

    objective = "supervised"

    def __init__(self, model, class_values=None):
        super().__init__()
        self.model = model
        self.class_values = class_values
        self.name, self.preset, self.config = model.name, model.preset, model.config

    def forward(self, batch):
        return self.model(batch)

    def supervised_loss(self, batch, y):
        if self.model.task == "classification":
            y = class_index(y, self.class_values)
        return self.model.supervised_loss(batch, y)

    def embed(self, batch):
        return self.model.embed(batch)

    def attention(self, batch):
        return self.model.attention(batch)


def split_params(params):
    """``(training fields, model arguments)`` of one set of hyper-parameters."""
    fields = {f.name for f in dataclasses.fields(FoldTraining)}
    training, model = {}, {}
    for name, value in (params or {}).items():
        if name.startswith(MODEL_PREFIX):
            model[name[len(MODEL_PREFIX):]] = value
        elif name in fields:
            training[name] = value
        else:
            raise EvaluationError(f"unknown hyper-parameter {name!r}: expected a training "
                                  f"setting ({', '.join(sorted(fields))}) or a model argument "
                                  f"written '{MODEL_PREFIX}NAME'")
    return training, model


class SupervisedBaseline:
    """How to build one registered supervised model for a cohort and task.

    Parameters
    ----------
    name : str
        Registry name (``bnt``, ``brainnetcnn``, ``braingnn``, ``transformer``).
    preset : str
    model_args : dict, optional
        Overrides of the preset (``n_rois``, ``task`` and ``n_classes`` are set from the data).
    """

    def __init__(self, name, preset="tiny", model_args=None):
        from bsym.models import get_spec

        try:
            self.spec = get_spec(name)
        except KeyError as err:
            raise EvaluationError(err.args[0]) from None
        if preset not in self.spec.presets:
            raise EvaluationError(f"model {name!r} has no preset {preset!r}; presets: "
                                  f"{', '.join(sorted(self.spec.presets))}")
        self.name, self.preset = name, preset
        self.model_args = dict(model_args or {})
        accepted = inspect.signature(self.spec.factory).parameters
        if "task" not in accepted and "task" not in self.spec.presets[preset]:
            raise EvaluationError(f"model {name!r} is not a supervised baseline (it takes no "
                                  "task); use `bsym pretrain` and `bsym finetune` or "
                                  "`bsym probe`")

    def factory(self, n_rois, model_args=None):
        """``make_model(target)`` for the fold loop."""
        from bsym.models import build

        def make_model(target, fold_index=None):
            args = {**self.model_args, **(model_args or {}), "n_rois": n_rois,
                    "task": target.task}
            if target.task == "classification":
                args["n_classes"] = target.n_outputs
            model = build(self.name, preset=self.preset, **args)
            if getattr(model, "objective", None) != "supervised":
                raise EvaluationError(f"model {self.name!r} has objective "
                                      f"{model.objective!r}; the supervised protocol trains "
                                      "supervised models")
            if target.task == "regression":
                model.set_target_scaling(target.mean, target.sd)
            return SupervisedTask(model, target.class_values)

        return make_model


def _prepare(name, preset, model_args, cohort, splits, label, task, window, target_tr,
             max_windows):
    """``(baseline, labelled cohort, window source)`` after checking the inputs."""
    baseline = SupervisedBaseline(name, preset, model_args)
    splits.check_cohort(cohort).check_task(label, task, cohort)
    labelled = LabelledCohort(cohort, label, task or infer_task(cohort.subjects[label]))
    tr = set(cohort.subjects["tr"].round(6))
    if target_tr is None and len(tr) > 1:
        raise EvaluationError(f"the cohort mixes TRs {sorted(tr)}; give target_tr so every "
                              "model sees one sampling rate")
    settings = {"window": int(window), "target_tr": target_tr, "max_windows": max_windows}
    return baseline, labelled, WindowSource(cohort, settings)


def train_supervised(name, cohort, splits, label, *, preset="tiny", model_args=None,
                     config=None, params=None, window=200, target_tr=None, max_windows=None,
                     task=None, dataset=None, folds=None, results=None, tracker=None,
                     force=False, progress=True) -> pd.DataFrame:
    """Train and test a supervised baseline on every (chosen) fold of a split file.

    Parameters
    ----------
    name, preset, model_args
        The baseline (see :class:`SupervisedBaseline`).
    cohort : Cohort
    splits : Splits
    label : str
    config : FoldTraining, optional
    params : dict, optional
        Per-fold hyper-parameters ``{fold index: {name: value}}`` (a sweep's choice),
        applied over ``config`` and ``model_args``.
    window : int
        Window length in time points (at ``target_tr``); a subject's prediction is the
        mean over its windows.
    target_tr : float, optional
    max_windows : int, optional
        Windows per scan at most.
    results : ResultTable, optional
        Per-fold rows (protocol ``supervised``); current rows are reused unless ``force``.

    Returns
    -------
    DataFrame
        One row per fold.
    """
    config = config or FoldTraining()
    baseline, labelled, source = _prepare(name, preset, model_args, cohort, splits, label,
                                          task, window, target_tr, max_windows)
    per_fold = FoldParams(params)

    def make_model(target, fold_index):
        return baseline.factory(cohort.n_rois, per_fold.split(fold_index)[1])(target)

    def chash(index):
        return config_hash({"supervised": config.to_dict(), "model": name, "preset": preset,
                            "model_args": baseline.model_args, "data": source.settings,
                            "params": per_fold.params.get(index), "task": labelled.task})

    base = {"model": name, "view": "default", "dataset": dataset or cohort.path.name,
            "task": label, "protocol": "supervised", "seed": splits.seed}
    rows, computed = train_test_folds(make_model, source, labelled, splits,
                                      config=lambda index: per_fold.training(config, index),
                                      base=base, chash=chash, folds=folds, results=results,
                                      force=force, progress=progress, desc=f"{name} {label}",
                                      row_extra={"preset": preset})
    log_computed(tracker, rows, computed, tags=base,
                 params={"training": config.to_dict(), "preset": preset,
                         "model_args": baseline.model_args, "split_hash": splits.sha256},
                 metrics=labelled.metrics)
    return pd.DataFrame(rows)


class FoldParams:
    """Per-fold hyper-parameters (a sweep's choice per outer fold).

    Parameters
    ----------
    params : dict, optional
        ``{fold index: {name: value}}``; empty or None: no fold has any.
    """

    def __init__(self, params=None):
        self.params = {int(k): v for k, v in (params or {}).items()}

    def split(self, index):
        """``(training fields, model arguments)`` of fold ``index`` (see :func:`split_params`)."""
        if self.params and index not in self.params:
            raise EvaluationError(f"the hyper-parameters name folds {sorted(self.params)}; fold "
                                  f"{index} has none (sweep every fold that is evaluated)")
        return split_params(self.params.get(index))

    def training(self, config, index):
        """``config`` with fold ``index``'s training fields."""
        return dataclasses.replace(config, **self.split(index)[0])


def supervised_objective(name, cohort, splits, label, fold_index, *, preset="tiny",
                         model_args=None, config=None, window=200, target_tr=None,
                         max_windows=None, task=None):
    """A sweep objective: ``objective(params, report) -> mean inner validation loss`` of one
    outer fold (its test subjects are never read)."""
    config = config or FoldTraining()
    baseline, labelled, source = _prepare(name, preset, model_args, cohort, splits, label,
                                          task, window, target_tr, max_windows)
    fold = splits[int(fold_index)]

    def objective(params, report=None):
        training, args = split_params(params)
        return inner_validation(baseline.factory(cohort.n_rois, args), source, labelled, fold,
                                dataclasses.replace(config, **training), report)

    return objective
