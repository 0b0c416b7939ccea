"""Pretraining a registered model on a cohort store: :func:`pretrain`.

What ``bsym pretrain`` runs: windows of the pretraining scans, the robust scaler fitted on
them, the model built from the registry, the run trained by :func:`bsym.train.train`, and
the provenance every checkpoint records beside the weights (the scaler, the store, the
pretraining subjects that the evaluation commands refuse to probe).

Importing this module loads neither torch nor pandas (the command line reads its
defaults); they load when :func:`pretrain` runs.
"""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

from bsym.errors import UsageError
from bsym.train.config import TrainConfig

DEFAULT_PRESET = "tiny"
#: Random window starts, drawn anew every epoch: all of a scan is reachable.
DEFAULT_SAMPLING = "random"


def pretrain(model, data, out_dir, *, preset=DEFAULT_PRESET, model_args=None, config=None,
             window=None, stride=None, max_windows=None, window_sampling=DEFAULT_SAMPLING,
             target_tr=None, subjects_file=None, val_subjects_file=None, budget=None,
             resume=False, tracker=None):
    """Pretrain a registered model on a cohort store; the run goes to ``out_dir``.

    Fits the robust scaler on the pretraining scans, builds the model (its initial weights
    follow ``config.seed``) and trains it, staged where the model is. Every checkpoint's
    ``extra`` records the scaler, the store (``data_path``) and the pretraining subjects
    (``train_subjects``), so that embeddings use the same scaling and the evaluation
    commands refuse to probe the encoder on the subjects it was pretrained on.

    Parameters
    ----------
    model : str
        Registered model name (``bsym models list``).
    data : str or Path
        Cohort store directory.
    out_dir : str or Path
        Run directory (``final.pt``, ``run.json``, ``checkpoints/``, ``snapshots/``): new
        or empty, or with ``resume`` a run directory of bsym; any other folder is refused
        before any work starts.
    preset : str
        Model preset.
    model_args : dict, optional
        Model constructor overrides.
    config : TrainConfig, optional
        Training settings (default ``TrainConfig()``); not modified.
    window : int, optional
        Window length in time points (default: the preset's ``n_timepoints``).
    stride, max_windows, target_tr : optional
        Windowing of the scans (:class:`~bsym.data.dataset.WindowDataset`).
    window_sampling : {"random", "grid"}
        Window starts of the training set: random, drawn anew every epoch, or a fixed grid.
    subjects_file : str or Path, optional
        Text file of the pretraining subject ids, one a line (default: every subject not
        in ``val_subjects_file``).
    val_subjects_file : str or Path, optional
        Subject ids whose validation loss is tracked (default: none).
    budget : tuple, optional
        ``("timepoints", N)`` or ``("flops", F)``: instead of ``config.steps``, as many
        steps as it takes to see N window time points, or as F training FLOPs buy.
    resume : bool
        Continue the run in ``out_dir`` (see :func:`bsym.train.train`).
    tracker : Tracker, optional
        MLflow tracker (default: none).

    Returns
    -------
    TrainResult

    Raises
    ------
    UsageError
        Unknown model or preset, no window length, validation subjects among the
        pretraining ones, or model arguments, settings or a budget the model cannot take.
    CohortError
        A subject file is missing or empty, or names subjects not in the store.
    RunExistsError, CheckpointError, BsymError
        As :func:`bsym.train.train`.
    """
    from bsym.data import open_cohort
    from bsym.train.devices import seed_everything
    from bsym.train.engine import check_run_dir, train

    config = config if config is not None else TrainConfig()
    model_args = dict(model_args or {})
    check_run_dir(out_dir, resume=resume)  # before any work: never into a user's folder
    spec, preset_args = _model_spec(model, preset, model_args)
    window = window or preset_args.get("n_timepoints")
    if not window:
        raise UsageError(f"model {model!r} does not name a window length (n_timepoints); "
                         "give --window")
    cohort = open_cohort(data)
    train_set, val_set = _datasets(
        cohort, window, subjects_file, val_subjects_file, sampling=window_sampling,
        seed=config.seed, stride=stride, max_windows=max_windows, target_tr=target_tr)
    overrides = {**model_args, **_model_overrides(spec, preset_args, cohort.n_rois, int(window))}
    seed_everything(config.seed)  # the initial weights follow the seed
    built, config, request = _build(model, preset, overrides, config, budget, train_set,
                                    int(window))
    extra = _provenance(data, subjects_file, val_subjects_file, train_set, val_set, request)
    return train(built, train_set, config, out_dir, val_dataset=val_set, resume=resume,
                 tracker=tracker, extra=extra, run_name=f"pretrain-{model}-{preset}")


def read_subject_ids(path, what):
    """Subject ids of a text file (one a line, ``#`` comments); ``what`` names the option in
    errors."""
    from bsym.data import CohortError

    file = Path(path)
    if not file.is_file():
        raise CohortError(f"{what} file not found", file=file, fix="give a text file of "
                          "subject ids, one a line")
    ids = [line.split("#", 1)[0].strip() for line in file.read_text().splitlines()]
    ids = list(dict.fromkeys(i for i in ids if i))
    if not ids:
        raise CohortError(f"{what} file lists no subject", file=file,
                          fix="one subject id a line")
    return ids


def _model_spec(name, preset, model_args):
    """The registry entry of ``name`` and its preset's arguments with ``model_args``."""
    from bsym.models import get_spec

    try:
        spec = get_spec(name)
    except KeyError as err:
        raise UsageError(err.args[0]) from None
    if preset not in spec.presets:
        raise UsageError(f"model {name!r} has no preset {preset!r}; presets: "
                         f"{', '.join(sorted(spec.presets))}")
    return spec, {**spec.presets[preset], **model_args}


def _scans_of(cohort, path, what):
    from bsym.data import CohortError

    if path is None:
        return None
    ids = read_subject_ids(path, what)
    table = cohort.subjects
    unknown = sorted(set(ids) - set(table["subject"].astype(str)))
    if unknown:
        raise CohortError(f"{len(unknown)} subject(s) of the {what} file are not in the store "
                          f"{cohort.path}: {', '.join(unknown[:5])}", file=path,
                          fix="list subject ids of this store")
    return table.loc[table["subject"].astype(str).isin(ids), "scan"].tolist()


def _datasets(cohort, window, subjects_file, val_subjects_file, *, sampling, seed,
              **window_args):
    """The training windows (the scaler fitted on them) and the validation windows or None."""
    from bsym.data.dataset import WindowDataset
    from bsym.data.preprocess import RobustScaler

    scans = _scans_of(cohort, subjects_file, "--subjects-file")
    val_scans = _scans_of(cohort, val_subjects_file, "--val-subjects-file")
    if val_scans and scans is not None and set(val_scans) & set(scans):
        raise UsageError("--val-subjects-file and --subjects-file share subjects; validation "
                         "subjects must be held out")
    if val_scans and scans is None:
        scans = [s for s in cohort.scans if s not in set(val_scans)]
    train_set = WindowDataset(cohort, window, scans=scans, sampling=sampling, seed=seed,
                              **window_args)
    scaler = train_set.fit_scaler(RobustScaler())
    val_set = None
    if val_scans:
        val_set = WindowDataset(cohort, window, scans=val_scans, scaler=scaler, **window_args)
    return train_set, val_set


def _model_overrides(spec, preset, n_rois, window):
    """The store's ROI count and the window, for a model whose constructor takes them."""
    try:
        accepted = inspect.signature(spec.factory).parameters
    except (TypeError, ValueError):
        accepted = {}
    takes_any = any(p.kind is p.VAR_KEYWORD for p in accepted.values())
    overrides = {}
    for key, value in (("n_rois", n_rois), ("n_timepoints", window)):
        if key in accepted or key in preset or takes_any:
            overrides[key] = value
    return overrides


def _build(name, preset, overrides, config, budget, train_set, window):
    """``(model, config, budget request)``: with a budget, the config runs its steps."""
    from bsym.models import build

    try:
        model = build(name, preset=preset, **overrides)
        request = _budget_request(budget, model, train_set, window, config)
    except (TypeError, ValueError) as err:
        raise UsageError(str(err)) from None
    if request is not None:
        config = dataclasses.replace(config, steps=request["steps"], stage_steps=None)
    return model, config, request


def _budget_request(budget, model, train_set, window, config):
    """``{"unit", "amount", "steps"}`` of a ``(unit, amount)`` budget, or None."""
    from bsym.train.budget import measure_step_flops, steps_for_budget

    if budget is None:
        return None
    unit, amount = budget
    per_step = config.batch_size * config.accumulate
    stages = [str(s) for s in model.stages()]
    flops = None
    if unit == "flops":
        flops = measure_step_flops(model, train_set, batch_size=per_step, stages=stages)
    steps = steps_for_budget(unit, amount, batch_size=per_step, window=window,
                             flops_per_step=flops, n_stages=len(stages))
    return {"unit": unit, "amount": float(amount), "steps": steps}


def _provenance(data, subjects_file, val_subjects_file, train_set, val_set, budget):
    """What every checkpoint of the run records beside the weights (its ``extra``)."""
    return {"scaler": train_set.scaler.state_dict(), "data_path": str(Path(data).resolve()),
            "subjects_file": None if subjects_file is None else str(subjects_file),
            "val_subjects_file": None if val_subjects_file is None else str(val_subjects_file),
            "train_subjects": sorted(train_set.table["subject"].astype(str).unique()),
            "n_train_scans": len(train_set.table),
            "n_val_scans": len(val_set.table) if val_set is not None else 0,
            "budget_request": budget}
